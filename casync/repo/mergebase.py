"""What a three-way merge needs to know of the histories and trees: the merge base (a virtual one
for criss-cross histories), the paths each side wrote since it, and when each side last
wrote a path.  The decisions themselves are :mod:`casync.merge.threeway`'s (pure).  The
trees are read only where base, ours and theirs are not all equal, and the result is ours'
tree with the merge's changes (docs/design.md §14 step 7), so a merge costs what the sides
changed, not the size of the tree.

Criss-cross histories have several best common ancestors.  As git's ``recursive``
strategy does, they are merged into one *virtual* base: the first two bases are merged,
the result with the third, and so on; each of these merges finds its own merge bases
(recursively) and runs under the same policy rules as the outer merge, so it reproduces
the merges the histories already hold and the outer merge sees only what changed since.
A virtual merge cannot stop for a person: a path the ``manual`` policy would leave open
gets a marker content that no side holds (git keeps conflict markers), so the outer
merge sees both sides' versions as changes and reports the conflict again instead of
silently taking one.  The asymmetric ``ours``/``theirs`` policies take the bases in
their fixed order (newest generation first, then CID).
"""

from __future__ import annotations

import heapq
import io
import json
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from casync.merge.renames import find_renames
from casync.merge.threeway import MergeInput, MergeResult, PolicyRules, ResolverFn, Side, Write, lww_winner, merge_trees
from casync.model.cid import DAG_PB, Cid, cid_codec, cid_str
from casync.model.objects import DirLink, decode_pbnode, entry_key, same_entry
from casync.repo.repository import Repository
from casync.trees.unixfs import Entry, directories_of, entry_for, flatten_tree, read_dir, update_tree
from casync.trees.walk import EntryLookup, changed_paths

__all__ = ["DEFAULT_PRIORITY", "MAX_DEPTH", "MergeSide", "SideMerge", "merge_sides", "real_side"]

DEFAULT_PRIORITY = 100
MAX_DEPTH = 8  # virtual bases nested deeper than this fall back to the newest base


@dataclass(frozen=True)
class MergeSide:
    """One side of a merge: a commit, or a virtual merge of merge bases (``cid`` None)
    whose history is its parents' histories plus itself.  ``tree`` is its tree (a virtual
    side's is stored: its first parent's tree with the virtual merge's changes), read only
    at the paths a merge looks at; ``merged`` are the paths where a virtual side may differ
    from its first parent (everywhere else it is that parent)."""

    tree: Cid | None
    heads: tuple[Cid, ...]  # the real commits whose histories this side includes
    cid: Cid | None = None
    parents: tuple[MergeSide, ...] = field(default=())
    merged: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SideMerge:
    """A three-way merge of two sides.  ``result.tree`` holds the merged entries only at the
    paths where the sides (or the base) differ, and the conflict siblings; ``changes`` is the
    merged tree as edits of ours' tree (None: delete), what ``update_tree`` applies."""

    result: MergeResult
    bases: list[Cid]
    changes: dict[str, Entry | None]
    paths: frozenset[str]  # every path looked at: where ours, theirs and the base are not all equal


def real_side(repo: Repository, cid: Cid) -> MergeSide:
    return MergeSide(repo.tree_of(cid), (cid,), cid)


class _History:
    """Lookups over the repository's commits, cached for one merge (and its virtual ones)."""

    def __init__(self, repo: Repository, priorities: Mapping[str, int]) -> None:
        self.repo = repo
        self.priorities = priorities
        self._entries: dict[tuple[Cid, str], Entry | None] = {}
        self._touched: dict[tuple[Cid, tuple[Cid, ...]], frozenset[str]] = {}
        self._chunks: dict[Cid, frozenset[Cid]] = {}
        self._json: dict[Cid, Any] = {}
        self._dirs: dict[Cid, dict[str, DirLink]] = {}
        self._kinds: dict[Cid, Entry] = {}
        self._sides: dict[Cid, MergeSide] = {}
        self._lookups: dict[Cid | None, EntryLookup] = {}
        # virtual bases by (bases, depth): criss-cross histories (replicas that sync with
        # each other) reach the same sets of bases again and again, so without this the
        # recursion is exponential in the number of criss-crosses
        self.virtual: dict[tuple[tuple[Cid, ...], int], MergeSide | None] = {}

    def side(self, cid: Cid) -> MergeSide:
        """:func:`real_side`, each commit's tree flattened once per merge."""
        if cid not in self._sides:
            self._sides[cid] = real_side(self.repo, cid)
        return self._sides[cid]

    def at(self, side: MergeSide | None, path: str) -> Entry | None:
        """The file or symlink ``side`` has at ``path`` (None: nothing, or a directory)."""
        if side is None:
            return None
        lookup = self._lookups.get(side.tree)
        if lookup is None:
            lookup = self._lookups[side.tree] = EntryLookup(self.repo.blocks, side.tree)
        return lookup(path)

    def entries(self, side: MergeSide | None, paths: frozenset[str]) -> dict[str, Entry]:
        """``side``'s files at ``paths``: its flat tree, as far as a merge over them needs it."""
        return {p: e for p in sorted(paths) if (e := self.at(side, p)) is not None}

    def entry(self, commit: Cid, path: str) -> Entry | None:
        key = (commit, path)
        if key not in self._entries:
            self._entries[key] = self._lookup(self.repo.graph.node(commit).tree, path.split("/"))
        return self._entries[key]

    def entry_in(self, tree: Cid | None, path: str) -> Entry | None:
        """What ``tree`` has at ``path``, a directory too."""
        return self._lookup(tree, path.split("/")) if tree is not None else None

    def _lookup(self, root: Cid, parts: list[str]) -> Entry | None:
        """:func:`casync.trees.unixfs.lookup` with the directories decoded once per merge (a merge
        asks for many paths of the same few trees)."""
        entry = Entry(root, "dir", 0)
        for part in parts:
            if entry.kind != "dir":
                return None
            listing = self._dirs.get(entry.cid)
            if listing is None:
                listing = self._dirs[entry.cid] = {link.name: link for link in read_dir(self.repo.blocks, entry.cid)}
            link = listing.get(part)
            if link is None:
                return None
            entry = self._kinds.get(link.cid) or self._kinds.setdefault(
                link.cid, entry_for(self.repo.blocks, link.cid, link.tsize))
        return entry

    def _write(self, cid: Cid) -> Write:
        node = self.repo.graph.node(cid)
        return Write(node.time, node.replica, self.priorities.get(node.replica, DEFAULT_PRIORITY))

    def last_write(self, side: MergeSide, path: str) -> Write:
        """When ``side`` wrote its version of ``path``."""
        return self._last(side, path, entry_key)

    def last_key_write(self, side: MergeSide, path: str, keys: tuple[str, ...]) -> Write:
        """When ``side`` wrote its value of one key of the JSON file at ``path``."""
        return self._last(side, path, lambda entry: self._key_value(entry, keys))

    def _last(self, side: MergeSide, path: str, version: Callable[[Entry | None], Hashable]) -> Write:
        """The write of ``side``'s ``version`` of ``path``: the newest commit in its history
        whose version differs from all its parents'.  A virtual side that took a parent's
        version has that parent's write; one that made a new one (a json merge) counts as
        written when the latest of its parents' writes was."""
        if side.cid is None:
            here = version(self.at(side, path))
            for parent in side.parents:
                if version(self.at(parent, path)) == here:
                    return self._last(parent, path, version)
            a, b = (self._last(p, path, version) for p in side.parents)
            return a if lww_winner(a, b, 0) == "ours" else b
        target = version(self.entry(side.cid, path))
        # Several commits may have produced this version (two deletes, one before the base and
        # one since): the write is the latest of them (lww order), not the first met in
        # generation order.  It may predate the merge base (a side can carry an old version
        # that won an earlier merge), so the search goes down the history newest first, but
        # never below a producer, nor past the point where every commit left is older than
        # the best write found (a commit is always later than its parents, §5).
        graph = self.repo.graph
        best: Write | None = None
        start = graph.node(side.cid)
        todo = [(-start.time.wall_ms, -start.time.logical, side.cid)]
        seen = {side.cid}
        while todo:
            _w, _l, cid = heapq.heappop(todo)
            node = graph.node(cid)
            if best is not None and (node.time.wall_ms, node.time.logical) < (best.time.wall_ms, best.time.logical):
                break
            if version(self.entry(cid, path)) == target and all(version(self.entry(p, path)) != target
                                                                for p in node.parents):
                write = self._write(cid)
                if best is None or lww_winner(write, best, 0) == "ours":
                    best = write
                continue
            for p in node.parents:
                if p not in seen:
                    seen.add(p)
                    t = graph.node(p).time
                    heapq.heappush(todo, (-t.wall_ms, -t.logical, p))
        return best if best is not None else self._write(side.cid)

    def _key_value(self, entry: Entry | None, keys: tuple[str, ...]) -> Hashable:
        if entry is None:
            return ("absent",)
        if entry.cid not in self._json:
            try:
                self._json[entry.cid] = json.loads(b"".join(self.repo.iter_file(entry.cid)))
            except (ValueError, UnicodeDecodeError):
                self._json[entry.cid] = None
        value: Any = self._json[entry.cid]
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return ("absent",)
            value = value[key]
        return ("value", json.dumps(value, sort_keys=True))

    def touched(self, side: MergeSide, bases: tuple[Cid, ...]) -> frozenset[str]:
        """Paths written by commits between ``bases`` and ``side``: a plain commit writes
        what differs from its parent; a merge (a virtual one too) writes only what differs
        from every parent."""
        if side.cid is not None:
            key = (side.cid, bases)
            if key not in self._touched:
                self._touched[key] = self._commit_touched(side.cid, bases)
            return self._touched[key]
        out: set[str] = set()
        for parent in side.parents:
            out |= self.touched(parent, bases)
        a, b = side.parents  # outside ``merged`` the side is its first parent: nothing written there
        out |= {path for path in side.merged
                if not same_entry(here := self.at(side, path), self.at(a, path))
                and not same_entry(here, self.at(b, path))}
        return frozenset(out)

    def _commit_touched(self, head: Cid, bases: tuple[Cid, ...]) -> frozenset[str]:
        graph = self.repo.graph
        out: set[str] = set()
        partial = self.repo.partial
        keep = partial.holds if partial is not None else None  # a partial clone holds only its paths
        for cid in graph.missing([head], bases):  # exactly the commits since the bases
            node = graph.node(cid)
            if not node.parents:
                out |= changed_paths(self.repo.blocks.get, None, node.tree, keep=keep)
                continue
            per_parent = [changed_paths(self.repo.blocks.get, graph.node(p).tree, node.tree, keep=keep)
                          for p in node.parents]
            out |= set.intersection(*per_parent)
        return frozenset(out)

    def chunks(self, entry: Entry) -> frozenset[Cid]:
        """The leaf blocks (chunks) of a file, for rename detection."""
        if entry.cid not in self._chunks:
            leaves: set[Cid] = set()
            todo = [entry.cid]
            while todo:
                cid = todo.pop()
                if cid_codec(cid) != DAG_PB:
                    leaves.add(cid)
                    continue
                links = decode_pbnode(self.repo.blocks.get(cid)).links
                if not links:
                    leaves.add(cid)  # a file whose bytes sit in the node itself
                todo.extend(link.cid for link in links)
            self._chunks[entry.cid] = frozenset(leaves)
        return self._chunks[entry.cid]

    def merge_bases(self, a: MergeSide, b: MergeSide) -> tuple[Cid, ...]:
        """The best common ancestors of two sides' histories: the maximal ones among the
        merge bases of every pair of their real heads, newest generation first."""
        graph = self.repo.graph
        found = {base for x in a.heads for y in b.heads for base in graph.merge_bases(x, y)}
        best = [c for c in found if not any(o != c and graph.is_ancestor(c, o) for o in found)]
        return tuple(sorted(best, key=lambda c: (-graph.node(c).generation, c)))


def merge_sides(repo: Repository, ours: MergeSide, theirs: MergeSide, rules: PolicyRules,
                resolvers: Mapping[str, ResolverFn], priorities: Mapping[str, int]) -> SideMerge:
    """The three-way merge of two sides, over their (possibly virtual) merge base."""
    return _merge(_History(repo, priorities), ours, theirs, rules, resolvers, 0)


def _merge(hist: _History, ours: MergeSide, theirs: MergeSide, rules: PolicyRules,
           resolvers: Mapping[str, ResolverFn], depth: int) -> SideMerge:
    """The merge reads the three trees only where they are not all equal (``paths``: what
    changed since the base on either side, equal subtrees skipped by CID).  Everywhere else
    base, ours and theirs agree and the merge keeps ours, so the path-by-path merge below sees
    exactly what it would see of the whole flat trees: every rename, clash and sibling of the
    merge involves only such paths (a rename's old and new paths changed on a side; a file
    where the other side has a directory differs from the base on one side)."""
    repo = hist.repo
    bases = hist.merge_bases(ours, theirs)
    base = _virtual_base(hist, bases, rules, resolvers, depth)
    partial = repo.partial
    keep = partial.holds if partial is not None else None
    base_tree = base.tree if base is not None else None
    empty: set[str] = set()
    paths = frozenset(changed_paths(repo.blocks.get, base_tree, ours.tree, keep=keep, empty_dirs=empty)
                      | changed_paths(repo.blocks.get, base_tree, theirs.tree, keep=keep, empty_dirs=empty))
    base_flat, ours_flat, theirs_flat = (hist.entries(side, paths) for side in (base, ours, theirs))
    flats = {"ours": ours_flat, "theirs": theirs_flat}
    touched_o, touched_t = hist.touched(ours, bases), hist.touched(theirs, bases)
    writes: dict[tuple[str, Side], Write] = {}
    renames = find_renames(base_flat, ours_flat, theirs_flat, hist.chunks)
    settled = set()  # paths the renames settle: the path-by-path merge needs no writes for them
    for carry in renames.carries:
        renamer, other = (ours, theirs) if carry.renamer == "ours" else (theirs, ours)
        settled |= {carry.old, carry.new}
        if not same_entry(flats[carry.renamer][carry.new], base_flat[carry.old]):  # renamed and edited: conflict
            writes[(carry.new, carry.renamer)] = hist.last_write(renamer, carry.new)
            writes[(carry.new, "theirs" if carry.renamer == "ours" else "ours")] = hist.last_write(other, carry.old)
    settled |= {c.old for c in renames.conflicts if c.kind == "rename/modify"}
    # a file on one side where the other has a directory: the file moves to a sibling named
    # after the replica that wrote it, so every replica must know who that was
    dirs_ours, dirs_theirs = directories_of(ours_flat), directories_of(theirs_flat)
    clashes = {p for p in theirs_flat if p in dirs_ours} | {p for p in ours_flat if p in dirs_theirs}
    for path in (set(ours_flat) | set(theirs_flat) | set(base_flat)) - settled:
        b, o, t = base_flat.get(path), ours_flat.get(path), theirs_flat.get(path)
        if same_entry(o, t):
            continue
        both = path in touched_o and path in touched_t
        if both or (not same_entry(b, o) and not same_entry(b, t)) or path in clashes:
            writes[(path, "ours")] = hist.last_write(ours, path)
            writes[(path, "theirs")] = hist.last_write(theirs, path)

    def load(entry: Entry) -> bytes:
        return b"".join(repo.iter_file(entry.cid))

    def key_write(path: str, side: Side, keys: tuple[str, ...]) -> Write:
        return hist.last_key_write(ours if side == "ours" else theirs, path, keys)

    def key_changed(path: str, side: Side, keys: tuple[str, ...]) -> bool:
        """A side wrote a key since the base when its value's write is not the base's own."""
        if base is None:
            return True
        return key_write(path, side, keys) != hist.last_key_write(base, path, keys)

    result = merge_trees(MergeInput(base_flat, ours_flat, theirs_flat, writes, rules, load,
                                    lambda data: _store(repo, data), resolvers, touched_o, touched_t, renames,
                                    key_write, key_changed,
                                    lambda p: hist.at(ours, p) is not None or hist.at(theirs, p) is not None))
    changes: dict[str, Entry | None] = {}
    for path in sorted(paths | result.tree.keys()):
        merged, mine = result.tree.get(path), ours_flat.get(path) if path in paths else hist.at(ours, path)
        if merged != mine:
            changes[path] = merged
    changes.update(_dropped_empty_dirs(hist, ours, empty, changes))
    return SideMerge(result, list(bases), changes, paths)


def _dropped_empty_dirs(hist: _History, ours: MergeSide, empty: set[str],
                        changes: Mapping[str, Entry | None]) -> dict[str, None]:
    """Ours' empty directories where a side changed something (added, removed or emptied
    one), removed: a merge of flat trees has no empty directories, and keeping ours' would
    make two replicas merging the same heads in opposite directions build different trees
    (and merge again, forever).  One the merge writes a file into stays, of course."""
    out: dict[str, None] = {}
    for path in sorted(empty):
        entry = hist.entry_in(ours.tree, path)
        if entry is None or entry.kind != "dir" or read_dir(hist.repo.blocks, entry.cid):
            continue
        if not any(p.startswith(path + "/") for p in changes):
            out[path] = None
    return out


def _store(repo: Repository, data: bytes) -> Entry:
    return repo.new_file_writer().write(io.BytesIO(data))


def _virtual_base(hist: _History, bases: tuple[Cid, ...], rules: PolicyRules,
                  resolvers: Mapping[str, ResolverFn], depth: int) -> MergeSide | None:
    key = (bases, depth)
    if key not in hist.virtual:
        hist.virtual[key] = _fold_bases(hist, bases, rules, resolvers, depth)
    return hist.virtual[key]


def _fold_bases(hist: _History, bases: tuple[Cid, ...], rules: PolicyRules,
                resolvers: Mapping[str, ResolverFn], depth: int) -> MergeSide | None:
    if not bases:
        return None
    acc = hist.side(bases[0])
    if depth >= MAX_DEPTH:
        return acc
    for cid in bases[1:]:
        other = hist.side(cid)
        sub = _merge(hist, acc, other, rules, resolvers, depth + 1)
        changes = dict(sub.changes)
        for c in sub.result.conflicts:  # what 'manual' leaves to a person: a marker no side holds
            if c.kind == "file/directory":
                continue
            if c.sibling is not None:
                changes[c.sibling] = None
            if _directory_after(hist, acc.tree, c.path, changes):
                continue  # a tree cannot hold a file where it has a directory (update_tree would drop the rest)
            changes[c.path] = _marker(hist.repo, c.path, c.ours, c.theirs)
        tree = update_tree(hist.repo.blocks, acc.tree, changes, hist.repo.hash_name).cid if changes else acc.tree
        acc = MergeSide(tree, acc.heads + other.heads, None, (acc, other), frozenset(changes) | sub.paths)
    return acc


def _directory_after(hist: _History, tree: Cid | None, path: str, changes: Mapping[str, Entry | None]) -> bool:
    """Whether ``tree`` with ``changes`` has a directory at ``path`` (a file below it)."""
    if any(p.startswith(path + "/") and e is not None for p, e in changes.items()):
        return True
    entry = hist.entry_in(tree, path)
    if entry is None or entry.kind != "dir":
        return False
    below = flatten_tree(hist.repo.blocks, entry.cid, path)
    return any(changes.get(p, e) is not None for p, e in below.items())


def _marker(repo: Repository, path: str, ours: Entry | None, theirs: Entry | None) -> Entry:
    def name(e: Entry | None) -> str:
        return cid_str(e.cid) if e is not None else "deleted"

    text = f"casync: {path} conflicts in a virtual merge base: {name(ours)} / {name(theirs)}\n"
    return _store(repo, text.encode())

