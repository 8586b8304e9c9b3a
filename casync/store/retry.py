"""Bounded exponential backoff around any remote call (restic wraps its backends the same
way): one policy and one loop for every transport, Kubo's RPC API and ``casync serve``.

A call is retried only when it raises a :class:`~casync.errors.RemoteError` marked
``transient`` (the link, not the request, failed); everything else goes straight through.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from casync.errors import RemoteError

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RetryPolicy", "retrying"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for transient errors (restic-style).

    ``attempts`` tries in total; the n-th retry waits ``min(initial * factor**n, max_delay)``
    seconds, with up to 20 % random jitter so many clients do not retry in lockstep.
    """

    attempts: int = 5
    initial: float = 0.2
    factor: float = 2.0
    max_delay: float = 4.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay) * (1 + random.random() * 0.2)
            delay *= self.factor


NO_RETRY = RetryPolicy(attempts=1)
DEFAULT_RETRY = RetryPolicy()


def retrying(attempt: Callable[[], T], policy: RetryPolicy, *,
             may_retry: Callable[[], bool] = lambda: True) -> T:
    """``attempt()``, again after each transient :class:`RemoteError` while ``policy`` has
    attempts left and ``may_retry()`` (false once a retry would repeat a side effect, such
    as a request body already sent); the last error says how many attempts were made."""
    delays = policy.delays()
    n = 0
    while True:
        n += 1
        try:
            return attempt()
        except RemoteError as err:
            if not err.transient:
                raise
            delay = next(delays, None) if may_retry() else None
            if delay is None:
                if n > 1:
                    err.message += f" (gave up after {n} attempts)"
                raise
        time.sleep(delay)
