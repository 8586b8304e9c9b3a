"""The commit graph: history order, ancestry and merge bases.  Pure logic over a
``load(cid) -> Commit`` callable, no I/O of its own.

Generation numbers are stored in every commit (1 + the max over its parents), so a
walk looking for ``a`` below ``b`` stops at generation ``gen(a)``: negative answers
cost O(commits between them), not O(history).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from casync.errors import BlockNotFound, InvalidObject, UnknownRevision
from casync.history.reach import Reach, first_parent_ancestor
from casync.model.cid import Cid
from casync.model.commit import Commit, HybridTime

__all__ = ["CommitGraph", "Node", "NodeCache"]


@dataclass(frozen=True, slots=True)
class Node:
    """What graph walks need of a commit: cheap to store and to load, unlike the commit."""

    generation: int
    time: HybridTime
    parents: tuple[Cid, ...]
    tree: Cid
    replica: str


class NodeCache(Protocol):
    """A persistent (cid -> Node) table; commits are immutable, so entries never go stale."""

    def get_node(self, cid: Cid) -> Node | None: ...

    def get_reach(self, cid: Cid) -> Reach | None:
        """The commit's reachability labels (casync/history/reach.py), if the table has them."""
        ...

    def put_nodes(self, nodes: dict[Cid, Node]) -> dict[Cid, Reach]:
        """Store ``nodes`` and label them where all parents are labelled; returns the
        labels of ``nodes`` (and of unlabelled ancestors it labelled on the way)."""
        ...


class CommitGraph:
    def __init__(self, load: Callable[[Cid], Commit], nodes: NodeCache | None = None) -> None:
        self._load = load
        self._cache: dict[Cid, Commit] = {}
        self._nodes: dict[Cid, Node] = {}
        self._table = nodes
        self._unsaved: dict[Cid, Node] = {}
        self._reaches: dict[Cid, Reach | None] = {}  # loaded only by walks that use labels

    def node(self, cid: Cid) -> Node:
        """Generation, time and parents of a commit: from memory, then the persistent
        table (~5 us), and only then by decoding the commit (~500 us), which is recorded."""
        n = self._nodes.get(cid)
        if n is not None:
            return n
        if self._table is not None:
            n = self._table.get_node(cid)
        if n is None:
            c = self.get(cid)
            n = Node(c.generation, c.time, c.parents, c.tree, c.replica)
            if self._table is not None:
                self._unsaved[cid] = n
                if len(self._unsaved) >= 10_000:
                    self.save()
        if len(self._nodes) > 1_000_000:
            self._nodes.clear()
        self._nodes[cid] = n
        return n

    def remember(self, cid: Cid, commit: Commit) -> None:
        """Record a commit just written or received (no decode needed later)."""
        self._cache[cid] = commit
        n = Node(commit.generation, commit.time, commit.parents, commit.tree, commit.replica)
        self._nodes[cid] = n
        if self._table is not None:
            self._unsaved[cid] = n

    def forget(self, cids: Iterable[Cid]) -> None:
        """Drop commits whose blocks were discarded (an aborted transfer)."""
        for cid in cids:
            self._cache.pop(cid, None)
            self._nodes.pop(cid, None)
            self._unsaved.pop(cid, None)

    def save(self) -> None:
        """Persist nodes learnt by decoding (call when done with a batch of walks)."""
        if self._table is not None and self._unsaved:
            labels = self._table.put_nodes(self._unsaved)
            self._unsaved = {}
            self._reaches.update(labels)

    def get(self, cid: Cid) -> Commit:
        c = self._cache.get(cid)
        if c is None:
            c = self._load(cid)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[cid] = c
        return c

    def walk(self, heads: Iterable[Cid]) -> Iterator[tuple[Cid, Commit]]:
        """Every commit reachable from ``heads``, newest first: descending generation,
        then HLC time, then CID — a topological order every replica agrees on."""
        for cid, _node in self.walk_nodes(heads):
            yield cid, self.get(cid)

    def walk_nodes(self, heads: Iterable[Cid]) -> Iterator[tuple[Cid, Node]]:
        """The order of :meth:`walk`, from the commit-graph table: no commit is decoded."""
        heap: list[tuple[int, int, int, Cid]] = []
        seen: set[Cid] = set()

        def push(cid: Cid) -> None:
            if cid not in seen:
                seen.add(cid)
                n = self.node(cid)
                heapq.heappush(heap, (-n.generation, -n.time.wall_ms, -n.time.logical, cid))

        for h in heads:
            push(h)
        while heap:
            cid = heapq.heappop(heap)[3]
            n = self.node(cid)
            yield cid, n
            for p in n.parents:
                push(p)

    def _reach(self, cid: Cid) -> Reach | None:
        """Labels from the table, read apart from the node: the paint walk never needs them."""
        if cid in self._reaches:
            return self._reaches[cid]
        r = self._table.get_reach(cid) if self._table is not None else None
        if len(self._reaches) > 1_000_000:  # bounded, like the node cache (a long-running serve)
            self._reaches.clear()
        self._reaches[cid] = r
        return r

    def _first_parent(self, cid: Cid) -> Cid | None:
        parents = self.node(cid).parents
        return parents[0] if parents else None

    def labelled_is_ancestor(self, a: Cid, b: Cid) -> bool | None:
        """Is ``a`` an ancestor of ``b``, from reachability labels alone (casync/history/reach.py):
        True or False when they prove it, None when a walk must decide.  O(log n)."""
        if a == b:
            return True
        ra, rb = self._reach(a), self._reach(b)
        if ra is None or rb is None:
            return None
        if self.node(a).generation >= self.node(b).generation or not ra.maybe_ancestor_of(rb):
            return False
        if ra.depth <= rb.depth and first_parent_ancestor(b, ra.depth, self._reach, self._first_parent) == a:
            return True
        return None

    def is_ancestor(self, a: Cid, b: Cid) -> bool:
        """True if ``a`` is ``b`` or reachable from ``b`` through parents."""
        answer = self._search_ancestor(a, b, None)
        assert answer is not None  # an unbounded search always decides
        return answer

    def _search_ancestor(self, a: Cid, b: Cid, budget: list[int] | None) -> bool | None:
        """The labels first; else a DFS from ``b`` that skips commits below ``a``'s
        generation and commits whose labels prove ``a`` is not their ancestor.  None when
        the shared ``budget[0]`` of commit visits runs out."""
        quick = self.labelled_is_ancestor(a, b)
        if quick is not None:
            return quick
        na = self.node(a)
        # label pruning costs a table read per commit: worth it only in the bounded search
        target, ra = na.generation, self._reach(a) if budget is not None else None
        stack, seen = [b], {b}
        while stack:
            cid = stack.pop()
            for p in self.node(cid).parents:
                if p == a:
                    return True
                if p in seen:
                    continue
                seen.add(p)
                n = self.node(p)
                if n.generation <= target:
                    continue
                if ra is not None:
                    rp = self._reach(p)
                    if rp is not None and not ra.maybe_ancestor_of(rp):
                        continue
                if budget is not None:
                    budget[0] -= 1
                    if budget[0] < 0:
                        return None
                stack.append(p)
        return False

    def merge_bases(self, a: Cid, b: Cid) -> list[Cid]:
        """All best common ancestors of ``a`` and ``b`` (none is an ancestor of another).

        Paint-down walk in generation order: commits reached from ``a`` get flag 1,
        from ``b`` flag 2; a commit with both flags is common and its ancestors are
        marked stale.  Stops once only stale commits remain in the queue.
        """
        if a == b:
            return [a]
        quick = self._merge_bases_by_labels(a, b)
        if quick is not None:
            return quick
        flags: dict[Cid, int] = {a: 1, b: 2}
        heap = [(-self.node(a).generation, a), (-self.node(b).generation, b)]
        heapq.heapify(heap)
        results: list[Cid] = []
        stale = 4
        live = 2  # queued commits not (yet) known stale: the walk ends when none is left
        while live:
            _, cid = heapq.heappop(heap)
            f = flags[cid]
            if not f & stale:
                live -= 1
            if f & 3 == 3 and not f & stale:
                results.append(cid)
                f |= stale
                flags[cid] = f
            for p in self.node(cid).parents:
                pf = flags.get(p, 0)
                nf = pf | f
                if nf != pf:
                    if pf == 0:
                        heapq.heappush(heap, (-self.node(p).generation, p))
                        live += not nf & stale
                    elif nf & stale and not pf & stale:
                        live -= 1  # still queued: parents sit below every commit popped so far
                    flags[p] = nf
        # a common ancestor found early can still be an ancestor of one found later
        best = [r for r in results if not any(o != r and self.is_ancestor(r, o) for o in results)]
        return sorted(best, key=lambda c: (-self.node(c).generation, c))

    def _merge_bases_by_labels(self, a: Cid, b: Cid, steps: int = 2048) -> list[Cid] | None:
        """The merge bases found by walking down from the lower tip only, asking whether each
        commit reached is an ancestor of the higher tip (labels, else a label-pruned search);
        None (so the paint
        walk decides) after ``steps`` commit visits, searches included.  When the other
        side's commits arrived after this history (a fetched branch) and the base lies on
        the main line, this costs O(divergence + log n) instead of O(commits above the base).
        """
        hi, lo = (a, b) if self.node(a).generation >= self.node(b).generation else (b, a)
        if self._reach(hi) is None:
            return None
        stale = 1
        flags = {lo: 0}
        heap = [(-self.node(lo).generation, lo)]
        live = 1
        bases: list[Cid] = []
        budget = [steps]
        while live:
            budget[0] -= 1
            if budget[0] < 0:
                return None
            _, cid = heapq.heappop(heap)
            f = flags[cid]
            if not f & stale:
                live -= 1
                answer = self._search_ancestor(cid, hi, budget)
                if answer is None:
                    return None
                if answer:  # common, and the highest on its paths: a best base
                    bases.append(cid)
                    f |= stale
            for p in self.node(cid).parents:
                pf = flags.get(p)
                if pf is None:
                    flags[p] = f
                    heapq.heappush(heap, (-self.node(p).generation, p))
                    live += not f & stale
                elif f & stale and not pf & stale:
                    flags[p] = pf | stale
                    live -= 1  # still queued: parents sit below every commit popped so far
        return sorted(bases, key=lambda c: (-self.node(c).generation, c))

    def missing(self, wants: Iterable[Cid], haves: Iterable[Cid]) -> list[Cid]:
        """Commits reachable from ``wants`` but not from ``haves``, oldest first.

        git's rev-list walk: both sides advance together in generation order; commits
        reached from ``haves`` are "uninteresting" and so are their ancestors.  The walk
        ends when only uninteresting commits are queued, so the cost is proportional to
        the commits between the two sides, not to the whole history.  ``haves`` that
        are not held or not commits are ignored (they are hints from a peer); a damaged
        one raises, as every read of a damaged block does, and so does a store that fails
        (a remote that is down): neither is a reason to send the whole history.
        """
        flags: dict[Cid, bool] = {}  # cid -> uninteresting
        heap: list[tuple[int, Cid]] = []
        interesting = 0  # queued commits not (yet) uninteresting: the walk ends at zero

        def push(cid: Cid, uninteresting: bool) -> None:
            nonlocal interesting
            prev = flags.get(cid)
            if prev is None:
                flags[cid] = uninteresting
                heapq.heappush(heap, (-self.node(cid).generation, cid))
                interesting += not uninteresting
            elif uninteresting and not prev:
                flags[cid] = True
                interesting -= 1  # still queued: parents sit below every commit popped so far

        for h in haves:
            try:
                self.node(h)
            except (BlockNotFound, UnknownRevision, InvalidObject):  # not held, or not a commit
                continue
            push(h, True)
        for w in wants:
            push(w, False)
        out: list[Cid] = []
        while interesting:
            _, cid = heapq.heappop(heap)
            uninteresting = flags[cid]
            if not uninteresting:
                interesting -= 1
                out.append(cid)
            for p in self.node(cid).parents:
                push(p, uninteresting)
        out.reverse()
        return [c for c in out if not flags[c]]

    def sample(self, heads: Iterable[Cid], min_distance: int = 0, max_distance: int = 64) -> list[Cid]:
        """"have" hints for negotiation: first-parent ancestors of each head at distances
        0, 1, 2, 4, 8, ... within ``[min_distance, max_distance]``.  O(log n) CIDs let a
        peer find a common commit within twice the divergence; negotiation widens the
        window round by round, so a short divergence costs one round and a walk of
        ``max_distance`` commits, never the whole history."""
        out: list[Cid] = []
        seen: set[Cid] = set()
        for head in heads:
            cid: Cid | None = head
            distance, next_pick = 0, 0
            while cid is not None and distance <= max_distance:
                if distance == next_pick:
                    if distance >= min_distance and cid not in seen:
                        seen.add(cid)
                        out.append(cid)
                    next_pick = max(1, next_pick * 2)
                parents = self.node(cid).parents
                cid = parents[0] if parents else None
                distance += 1
        return out
