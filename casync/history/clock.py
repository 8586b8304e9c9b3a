"""Vector clocks and the hybrid logical clock.  Pure functions, no I/O.

A commit's vector clock counts, per replica, the commits that replica made in the
commit's history: the element-wise max of the parents' clocks with the committing
replica's entry incremented.  Comparing two clocks tells causality cheaply
(before / after / equal / concurrent); ancestry proper is still verified on the DAG.

The hybrid logical clock (HLC) gives every commit a ``(wall_ms, logical)`` time that
never goes backwards on a replica, even when its wall clock does, and that is always
later than the times of the commit's parents.  Last-write-wins compares HLC times,
then replica priority, then replica id, so every replica computes the same winner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum

from casync.model.commit import MAX_LOGICAL, HybridTime

__all__ = ["Order", "compare", "hlc_next", "join", "tick"]


class Order(str, Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def compare(a: Mapping[str, int], b: Mapping[str, int]) -> Order:
    """How clock ``a`` relates to clock ``b``."""
    a_bigger = b_bigger = False
    for key in a.keys() | b.keys():
        x, y = a.get(key, 0), b.get(key, 0)
        if x > y:
            a_bigger = True
        elif y > x:
            b_bigger = True
        if a_bigger and b_bigger:
            return Order.CONCURRENT
    if a_bigger:
        return Order.AFTER
    if b_bigger:
        return Order.BEFORE
    return Order.EQUAL


def join(clocks: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Element-wise maximum."""
    out: dict[str, int] = {}
    for clock in clocks:
        for key, value in clock.items():
            if value > out.get(key, 0):
                out[key] = value
    return out


def tick(parents: Iterable[Mapping[str, int]], replica: str) -> dict[str, int]:
    """The clock of a new commit by ``replica`` on top of ``parents``."""
    out = join(parents)
    out[replica] = out.get(replica, 0) + 1
    return dict(sorted(out.items()))


def hlc_next(now_ms: int, last: HybridTime | None, parents: Iterable[HybridTime] = ()) -> HybridTime:
    """The next HLC reading after ``last`` (this replica's previous) and all ``parents``.

    If the wall clock is ahead of everything seen, use it with logical 0; otherwise keep
    the largest wall time seen and bump the logical counter.
    """
    seen = [t for t in (last, *parents) if t is not None]
    top = max(seen, default=HybridTime(0, 0))
    if now_ms > top.wall_ms:
        return HybridTime(now_ms, 0)
    if top.logical >= MAX_LOGICAL:  # the counter is full: carry into the wall time
        return HybridTime(top.wall_ms + 1, 0)
    return HybridTime(top.wall_ms, top.logical + 1)


