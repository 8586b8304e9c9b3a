"""Reachability labels: answer "is A an ancestor of B?" without walking, most of the time.

A paint walk for a merge base visits every commit above the base; when the base is far
below one tip (a replica that diverged near the root of a long history) that is the whole
history.  Each commit in the commit-graph table therefore carries labels that give cheap,
*sound* answers, and "don't know" otherwise (callers then walk):

* ``rank``: the position in which commits entered this table, parents always first, and
  ``low``: the lowest rank among the commit and all its ancestors.  If A is an ancestor
  of B then ``rank(A) < rank(B)`` and ``low(A) >= low(B)``; so either inequality failing
  proves A is *not* an ancestor (a negative cut, as in GRAIL interval labels).  New
  commits are sources of the DAG, so appending never changes an existing label.
* ``spans``: a few disjoint rank intervals covering the ranks of the commit and all its
  ancestors (at most :data:`MAX_SPANS`; when there would be more, the closest two merge, so
  the cover only grows).  If A is an ancestor of B, A's rank lies in one of B's spans: a
  negative cut where ``low`` is too coarse, e.g. for a branch that forked from the root and
  entered the table before the history it is compared with (its ranks sit in a gap of the
  history's spans).  ``None`` for labels written before spans existed (and their
  descendants): the cut is then not made.
* ``depth`` (first-parent steps to a root) and ``skip`` (the first-parent ancestor at
  depth :func:`skip_depth`): jumping along skip pointers finds B's first-parent ancestor
  at any depth in O(log n) steps, so "A is on B's first-parent chain" is cheap to prove
  (a positive cut).  Merge bases usually are: the main line is the first-parent chain.

Labels are local to one repository (ranks depend on arrival order) and never leave it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from casync.model.cid import Cid

__all__ = ["MAX_SPANS", "Reach", "first_parent_ancestor", "label", "merge_spans", "skip_depth"]

MAX_SPANS = 8


@dataclass(frozen=True, slots=True)
class Reach:
    rank: int
    low: int
    depth: int
    skip: Cid  # b"" for a root
    spans: tuple[int, ...] | None = None  # (lo, hi, lo, hi, ...), ascending, disjoint

    def maybe_ancestor_of(self, other: Reach) -> bool:
        """False proves this commit is not an ancestor of ``other`` (True proves nothing).
        (Depth gives no cut: an ancestor through a second parent can be deeper.)"""
        if not (self.rank <= other.rank and self.low >= other.low):
            return False
        spans = other.spans
        if spans is None:
            return True
        i = bisect.bisect_right(spans, self.rank)  # odd: inside [spans[i-1], spans[i]]
        return i % 2 == 1 or (i > 0 and spans[i - 1] == self.rank)


def merge_spans(parts: Sequence[tuple[int, ...]], rank: int, limit: int = MAX_SPANS) -> tuple[int, ...]:
    """The spans of a commit of ``rank`` whose parents have spans ``parts``: their union with
    the rank, adjacent or overlapping intervals joined, then the two closest intervals
    joined while there are more than ``limit`` (a cover only ever grows: still sound)."""
    pairs = sorted([(rank, rank)] + [(p[i], p[i + 1]) for p in parts for i in range(0, len(p), 2)])
    out: list[list[int]] = []
    for lo, hi in pairs:
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    while len(out) > limit:
        gap = min(range(len(out) - 1), key=lambda i: out[i + 1][0] - out[i][1])
        out[gap][1] = out[gap + 1][1]
        del out[gap + 1]
    return tuple(x for pair in out for x in pair)


def skip_depth(depth: int) -> int:
    """Where a commit at ``depth`` points its skip pointer: clearing low bits of the
    depth spaces pointers so that any depth is reached in O(log n) jumps (the scheme of
    Bitcoin's block index)."""
    if depth < 2:
        return 0

    def clear_lowest_bit(n: int) -> int:
        return n & (n - 1)

    if depth & 1:
        return clear_lowest_bit(clear_lowest_bit(depth - 1)) + 1
    return clear_lowest_bit(depth)


def first_parent_ancestor(start: Cid, depth: int, reach_of: Callable[[Cid], Reach | None],
                          first_parent: Callable[[Cid], Cid | None]) -> Cid | None:
    """The first-parent ancestor of ``start`` at ``depth`` (``start`` itself at its own
    depth); None if labels are missing on the way or ``depth`` is out of range."""
    cur = start
    r = reach_of(cur)
    if r is None or depth > r.depth or depth < 0:
        return None
    while r.depth > depth:
        if r.skip and skip_depth(r.depth) >= depth:
            nxt: Cid | None = r.skip
        else:
            nxt = first_parent(cur)
        if nxt is None:
            return None
        cur = nxt
        r = reach_of(cur)
        if r is None:
            return None
    return cur


def label(cid_parents: list[tuple[Cid, tuple[Cid, ...]]], reach_of: Callable[[Cid], Reach | None],
          first_parent: Callable[[Cid], Cid | None], next_rank: int) -> tuple[dict[Cid, Reach], int]:
    """Labels for commits given parents first (``cid_parents`` in that order), each of
    whose parents is labelled already (``reach_of``) or earlier in the list; a commit
    with an unlabelled parent stays unlabelled.  Returns the labels and the next rank."""
    out: dict[Cid, Reach] = {}

    def reach(c: Cid) -> Reach | None:
        return out.get(c) or reach_of(c)

    for cid, parents in cid_parents:
        preach = [reach(p) for p in parents]
        if any(r is None for r in preach):
            continue
        known = [r for r in preach if r is not None]
        if not parents:
            out[cid] = Reach(next_rank, next_rank, 0, b"", (next_rank, next_rank))
        else:
            depth = known[0].depth + 1
            target = skip_depth(depth)
            skip = first_parent_ancestor(parents[0], target, reach, first_parent) or b""
            parts = [r.spans for r in known if r.spans is not None]
            spans = merge_spans(parts, next_rank) if len(parts) == len(known) else None
            out[cid] = Reach(next_rank, min(next_rank, *(r.low for r in known)), depth, skip, spans)
        next_rank += 1
    return out, next_rank
