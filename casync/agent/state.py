"""What the agent remembers about each peer between rounds: when it last synced, how often it
failed in a row, and when it may be tried again (exponential backoff with a cap)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casync.agent.snapshot import PeerStatus

__all__ = ["PeerState", "Target", "backoff_delay"]


@dataclass(frozen=True)
class Target:
    """Someone the agent syncs with: a peer (agent / ``casync serve``), its master, or an IPFS node."""

    name: str
    url: str
    kind: str                   # "peer" | "master" | "ipfs"
    region: str | None = None
    token_file: Path | None = None
    timeout: float = 30.0
    origin: str = "static"      # "static" | "kubernetes" | "gossip"


def backoff_delay(failures: int, interval: float, cap: float) -> float:
    """The wait before the next try after ``failures`` failures in a row: the interval,
    doubled per failure after the first, never above ``cap``."""
    if failures <= 0:
        return interval
    return float(min(cap, interval * 2 ** (failures - 1)))


@dataclass
class PeerState:
    target: Target
    started: float                    # when the agent started watching it (lag before a first sync)
    last_success: float | None = None
    last_attempt: float | None = None
    consecutive_failures: int = 0
    failures_total: int = 0
    last_error: str | None = None
    next_try: float = 0.0             # monotonic-free: wall clock, like every time here
    running: bool = False
    overdue_logged: bool = False
    identity: dict[str, Any] | None = None  # the site entry of its /v1/peers answer (name, url, region)

    def lag(self, now: float) -> float:
        return now - (self.last_success if self.last_success is not None else self.started)

    def overdue(self, now: float, max_delay: float) -> bool:
        return self.lag(now) > max_delay

    def succeeded(self, now: float, interval: float) -> None:
        self.last_success = self.last_attempt = now
        self.consecutive_failures = 0
        self.last_error = None
        self.next_try = now + interval * 0.5  # the next round takes it; a round is never skipped
        self.overdue_logged = False

    def failed(self, now: float, error: str, interval: float, cap: float) -> float:
        self.last_attempt = now
        self.consecutive_failures += 1
        self.failures_total += 1
        self.last_error = error
        delay = backoff_delay(self.consecutive_failures, interval, cap)
        self.next_try = now + delay * 0.9  # a hair early: the tick that falls due tries it
        return delay

    def status(self, now: float, max_delay: float) -> PeerStatus:
        return PeerStatus(self.target.name, self.target.url, self.target.region, self.target.kind,
                          self.last_success, self.last_attempt,
                          now - self.last_success if self.last_success is not None else None,
                          self.consecutive_failures, self.failures_total, self.last_error,
                          self.overdue(now, max_delay))
