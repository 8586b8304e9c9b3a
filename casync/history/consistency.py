"""A commit's fields checked against its parents: generation, vector clock, HLC time.

Pure.  ``fsck`` refuses the first problem; ``audit`` reports each one as a finding.
The rules (docs/design.md §5, §12): ``generation`` = 1 + the parents' maximum; the clock is
at least each parent's entry by entry, and the commit's own replica counts exactly one more
than the parents' maximum; its time is later than every parent's; and (audit only) its
wall time is not further ahead of the auditing clock than the skew tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence

from casync.errors import InvalidObject
from casync.history import clock as vclock
from casync.model.cid import Cid, cid_str
from casync.model.commit import Commit

__all__ = ["check_derived", "future_problem", "parent_problems"]


def parent_problems(commit: Commit, parents: Sequence[Commit]) -> list[tuple[str, str]]:
    """(kind, detail) for each rule ``commit`` breaks against ``parents``: kinds
    ``generation``, ``clock`` and ``time``."""
    out: list[tuple[str, str]] = []
    expected_gen = 1 + max((c.generation for c in parents), default=0)
    if commit.generation != expected_gen:
        out.append(("generation", f"generation {commit.generation}, expected {expected_gen}"))
    joined = vclock.join(c.clock for c in parents)
    behind = sorted(r for r, n in joined.items() if commit.clock.get(r, 0) < n)
    if behind:
        out.append(("clock", f"clock goes backwards for replica {behind[0]!r}"))
    own, before = commit.clock.get(commit.replica, 0), joined.get(commit.replica, 0)
    if own != before + 1:
        out.append(("clock", f"clock does not count its own commit once: {commit.replica}={own}, "
                             f"parents' maximum {before}"))
    latest = max((c.time for c in parents), default=None)
    if latest is not None and not commit.time > latest:
        # every casync commit's hybrid-logical time exceeds its parents' (hlc_next):
        # last-write-wins merges rely on it
        out.append(("time", f"time {commit.time.wall_ms}.{commit.time.logical} is not after its parent's "
                            f"{latest.wall_ms}.{latest.logical}"))
    return out


def check_derived(cid: Cid, commit: Commit, parents: Sequence[Commit]) -> None:
    """Raise :class:`InvalidObject` (naming ``cid``) unless the fields a commit derives from its
    parents agree with them (:func:`parent_problems`).  Run on receipt, before anything is stored,
    and by fsck; ``casync audit`` lists every problem instead."""
    problems = parent_problems(commit, parents)
    if problems:
        raise InvalidObject(f"commit {cid_str(cid)}: {problems[0][1]}")


def future_problem(commit: Commit, now_ms: int, tolerance_ms: int) -> str | None:
    """Why ``commit``'s time lies too far in the future (None if it does not): a site whose
    clock runs ahead would otherwise win every last-write-wins merge until real time catches up."""
    ahead = commit.time.wall_ms - now_ms
    if ahead > tolerance_ms:
        return f"time {commit.time.wall_ms} is {ahead} ms ahead of this clock (tolerance {tolerance_ms} ms)"
    return None
