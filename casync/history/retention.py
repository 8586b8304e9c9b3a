"""Retention policies, as restic's ``forget``: which snapshots of a history to keep (pure).

A *snapshot* is a commit with its HLC wall time.  Each policy looks at the snapshots from
the newest to the oldest and keeps some; a snapshot is kept when any policy keeps it:

* ``keep_last N``: the N newest;
* ``keep_daily N`` / ``keep_weekly N`` / ``keep_monthly N``: for the N newest days (ISO
  weeks, months) that have a snapshot, the newest snapshot of each, in UTC, so that every
  replica decides the same;
* ``keep_within D`` (milliseconds): every snapshot at most D older than the newest.

What "forgetting" a commit then means in casync's DAG is the caller's (docs/design.md §8.2).
Also here: :func:`parse_duration` for ``--keep-within`` and ``gc --prune``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from casync.errors import UsageError

__all__ = ["Decision", "Policy", "Snapshot", "decide", "parse_duration"]

_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000, "y": 365 * 86_400_000}
_DURATION = re.compile(r"(\d+)([smhdwy])")


def parse_duration(text: str) -> int:
    """Milliseconds in ``text``: one or more ``<n><unit>`` (s, m, h, d, w, y), e.g. ``2w``,
    ``1d12h``, ``90m``; ``now`` is 0.  A usage error otherwise."""
    spec = text.strip().lower()
    if spec == "now":
        return 0
    pos, total = 0, 0
    for m in _DURATION.finditer(spec):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(spec) or not spec:
        raise UsageError(f"invalid duration {text!r}",
                         hint="use a number and a unit: 30s, 15m, 12h, 14d, 2w, 1y (or combined, 1d12h), or 'now'")
    return total


@dataclass(frozen=True)
class Snapshot:
    """One candidate: an id (a commit CID) and its wall time in milliseconds since 1970."""

    id: Hashable
    wall_ms: int


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_within_ms: int | None = None

    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly
                    or self.keep_within_ms is not None)


@dataclass
class Decision:
    """Kept and forgotten snapshots (newest first) and, per kept one, the rules that kept it."""

    keep: list[Snapshot] = field(default_factory=list)
    forget: list[Snapshot] = field(default_factory=list)
    reasons: dict[Hashable, list[str]] = field(default_factory=dict)


def _day(ms: int) -> tuple[int, ...]:
    t = time.gmtime(ms / 1000)
    return (t.tm_year, t.tm_yday)


def _week(ms: int) -> tuple[int, ...]:
    import datetime

    iso = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isocalendar()
    return (iso[0], iso[1])


def _month(ms: int) -> tuple[int, ...]:
    t = time.gmtime(ms / 1000)
    return (t.tm_year, t.tm_mon)


def decide(snapshots: Sequence[Snapshot], policy: Policy, always_keep: frozenset[Hashable] = frozenset()) -> Decision:
    """Apply ``policy``; ``always_keep`` (branch heads, tags) are kept whatever it says."""
    ordered = sorted(snapshots, key=lambda s: (s.wall_ms, repr(s.id)), reverse=True)
    buckets: list[tuple[str, int, Callable[[int], tuple[int, ...]]]] = [
        ("daily", policy.keep_daily, _day), ("weekly", policy.keep_weekly, _week),
        ("monthly", policy.keep_monthly, _month)]
    left = {name: n for name, n, _ in buckets}
    last_bucket: dict[str, tuple[int, ...] | None] = {name: None for name, _, _ in buckets}
    newest = ordered[0].wall_ms if ordered else 0
    out = Decision()
    for i, snap in enumerate(ordered):
        why = []
        if snap.id in always_keep:
            why.append("ref")
        if i < policy.keep_last:
            why.append("last")
        if policy.keep_within_ms is not None and newest - snap.wall_ms <= policy.keep_within_ms:
            why.append("within")
        for name, _n, bucket_of in buckets:
            bucket = bucket_of(snap.wall_ms)
            if left[name] > 0 and bucket != last_bucket[name]:
                last_bucket[name] = bucket
                left[name] -= 1
                why.append(name)
        if why:
            out.keep.append(snap)
            out.reasons[snap.id] = why
        else:
            out.forget.append(snap)
    return out
