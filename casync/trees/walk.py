"""Path-aligned tree walks: which blocks of new trees the other side lacks, and which paths
differ between two trees.  Pure logic over a ``get(cid) -> bytes`` callable (every store's
``get`` verifies what it returns); no I/O of its own.

One walker serves every transfer — peer fetch and push, bundles, IPFS push — so the rules
below exist once:

- A new tree is compared path by path with the old trees (a commit's parents' trees, which
  the receiver holds or is sent in the same transfer): an entry equal to an old one at the
  same path is skipped whole.  A HAMT-sharded directory is compared shard by shard: a
  sub-shard is matched with the old one in the same bucket (so a change of one entry
  sends only the shards on its bucket path), an entry by its name.
- In a changed file, the blocks of the old versions of that file at that path (e.g. every
  chunk but one after an insertion with content-defined chunking) are skipped too.  Only
  interior nodes are read for this; raw leaves are read when they are sent.
- A directory or multi-chunk file at a path the old trees lack is skipped whole when a tree
  the receiver holds has it anywhere (:func:`held_entries`): moving or copying data costs a
  few directory blocks, not its bytes.
- With a :class:`~casync.trees.paths.PathFilter` (a partial clone), only what lies inside
  its paths, and the directory nodes on the way to them, are sent; the receiver holds no
  more of the old trees than that either.
- Blocks come out in post-order (children before the nodes that link to them, a commit
  after its tree), each once, so a receiver can check every link as blocks arrive.

A tree block the sender cannot read is an error (:class:`~casync.errors.BlockNotFound`,
:class:`~casync.errors.CorruptBlock`), never a reason to send more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, NamedTuple

from casync.errors import InvalidObject
from casync.history.graph import CommitGraph
from casync.model.cid import DAG_PB, RAW, Cid, cid_codec, cid_str
from casync.model.objects import (
    UNIXFS_DIRECTORY,
    UNIXFS_FILE,
    UNIXFS_HAMT_SHARD,
    UNIXFS_RAW,
    UNIXFS_SYMLINK,
    DirLink,
    Entry,
    PBNode,
    decode_pbnode,
    decode_unixfs,
)
from casync.store.base import BlockStore
from casync.trees.hamt import diff_hamt, find_in_hamt, is_shard_node
from casync.trees.paths import INSIDE, OUTSIDE, PathFilter
from casync.trees.unixfs import TreeChange, diff_flat, entry_for, list_dir, read_dir_block

__all__ = ["Block", "EntryLookup", "TreeWalker", "changed_paths", "commit_blocks", "diff_trees", "held_entries"]

GetBlock = Callable[[Cid], bytes]

_NOTHING: frozenset[Cid] = frozenset()
_FILE_SET_CACHE = 1024
_DIR_MAP_CACHE = 64
_DIR_TYPES = (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD)
_ENTRY_TYPES = (*_DIR_TYPES, UNIXFS_FILE, UNIXFS_RAW, UNIXFS_SYMLINK)
_SHARD_KEY = b"/"  # (no entry name has a "/": a sub-shard's key in a directory map)


class Block(NamedTuple):
    """One block to send: its CID, its size, and its bytes when the walk read them (raw
    leaves are not read: ``data`` is None and ``size`` comes from the link that names it)."""

    cid: Cid
    size: int
    data: bytes | None


def _is_dir(node: PBNode) -> bool:
    """A directory node or a HAMT shard (one of the nodes that make up a directory)."""
    return node.data is not None and decode_unixfs(node.data).type in _DIR_TYPES


def _key(shard: bool, name: bytes) -> bytes:
    """What a directory link is matched by: an entry's name, or a sub-shard's bucket."""
    if not shard:
        return name
    return name[2:] if len(name) > 2 else _SHARD_KEY + name


def held_entries(get: GetBlock, trees: Iterable[Cid], paths: PathFilter | None = None) -> set[Cid]:
    """The trees and every directory and file root at any depth under them: whoever holds
    these trees' closures holds each of these whole (with ``paths``: those inside them).
    Reads directories and the root node of multi-chunk files, never file contents."""
    roots = {t for t in trees if cid_codec(t) == DAG_PB}
    out = set(roots) if paths is None else set()
    stack = [(decode_pbnode(get(t)), None if paths is None else "") for t in roots]
    while stack:
        node, base = stack.pop()
        shard = is_shard_node(node)
        for link in node.links:
            child, where = link.cid, None
            if base is not None and paths is not None:
                key = _key(shard, link.name or b"")
                if key.startswith(_SHARD_KEY):
                    where = base  # a sub-shard: more of the same directory
                else:
                    name = key.decode()
                    path = f"{base}/{name}" if base else name
                    kind = paths.where(path)
                    if kind == OUTSIDE:
                        continue
                    where = None if kind == INSIDE else path
            if child in out and where is None:
                continue
            inner = decode_pbnode(get(child)) if cid_codec(child) == DAG_PB else None
            if inner is not None and _is_dir(inner):
                stack.append((inner, where))
                if where is not None:
                    continue  # a directory on the way: held as a node, not whole
            out.add(child)
    return out


_Visit = tuple[Cid, int, Sequence[Cid], frozenset[Cid] | set[Cid], bytes | None, str | None]
"""A node to walk: CID, size from its link, what the old trees hold at its path, the blocks
of the old versions of the file it is in, (on the second visit, once its children are
out) its bytes, to emit it, and its path when it lies on the way to a partial clone's
paths (None: inside them, or no paths)."""


class TreeWalker:
    """The blocks of new trees that the receiver lacks (see the module docstring).

    ``held_trees`` are trees the receiver holds whole (the parents outside the transfer);
    ``sent`` is shared across every :meth:`tree` and :meth:`commit` call, so a block goes
    out once per transfer.  ``paths``: send only what lies inside them (see the module doc).
    """

    def __init__(self, get: GetBlock, held_trees: Iterable[Cid] = (), paths: PathFilter | None = None) -> None:
        self._get = get
        self._paths = paths
        self._partly: set[tuple[Cid, str]] = set()  # directories on the way, sent as nodes only
        self.sent: set[Cid] = set()
        self._held_trees = sorted(set(held_trees))
        self._held: set[Cid] | None = None
        self._file_sets: dict[Cid, frozenset[Cid]] = {}
        self._dir_maps: dict[tuple[Cid, bool], dict[bytes, Cid] | None] = {}

    def receiver_holds(self, cid: Cid) -> bool:
        """``cid`` is a directory or file root somewhere in a held tree (the index is built
        on first use, i.e. only when a transfer meets a new path at all)."""
        if self._held is None:
            self._held = held_entries(self._get, self._held_trees, self._paths)
        return cid in self._held

    def commit(self, cid: Cid, tree: Cid, parent_trees: Sequence[Cid]) -> Iterator[Block]:
        """The blocks of commit ``cid``'s tree that its parents' trees lack, then the commit."""
        if cid in self.sent:
            return
        yield from self.tree(tree, parent_trees)
        self.sent.add(cid)
        block = self._get(cid)
        yield Block(cid, len(block), block)

    def tree(self, root: Cid, olds: Sequence[Cid]) -> Iterator[Block]:
        """The blocks under ``root`` that neither ``olds`` (at the same paths) nor what was
        sent before hold, in post-order."""
        stack: list[_Visit] = [(root, 0, olds, _NOTHING, None, None if self._paths is None else "")]
        while stack:
            cid, size, olds, covered, done, way = stack.pop()
            if done is not None:
                yield Block(cid, len(done), done)
                continue
            if cid in self.sent or cid in olds or cid in covered or (way is not None and (cid, way) in self._partly):
                continue
            codec = cid_codec(cid)
            if codec == RAW:
                if olds and any(cid_codec(o) == DAG_PB for o in olds) and cid in self._covered(covered, olds):
                    continue  # a file shrunk to one of its old chunks
                self.sent.add(cid)
                yield Block(cid, size, None)
                continue
            if codec != DAG_PB:
                raise InvalidObject(f"tree node {cid_str(cid)} has unexpected codec {codec:#x}")
            block = self._get(cid)
            node = decode_pbnode(block)
            children: list[_Visit] = []
            if _is_dir(node):
                shard = is_shard_node(node)
                old_dirs = [(o, m) for o in olds for m in (self._dir_map(o, not shard),) if m is not None]
                for link in node.links:
                    key = _key(shard, link.name or b"")
                    if key.startswith(_SHARD_KEY):  # a sub-shard: the old one in its bucket, or the old dir
                        inner: str | Literal[False] | None = way  # part of the same directory
                        same = list(dict.fromkeys(m.get(key, o) for o, m in old_dirs))
                    else:
                        inner = self._inner_way(way, key)
                        if inner is False:
                            continue  # outside a partial clone's paths
                        same = [m[key] for _, m in old_dirs if key in m]
                    if not same and cid_codec(link.cid) == DAG_PB and self.receiver_holds(link.cid):
                        continue  # moved or copied: the receiver has it under another path
                    way_in = inner if isinstance(inner, str) else None
                    children.append((link.cid, link.tsize or 0, same, _NOTHING, None, way_in))
                if way is not None:  # on the way: the node, and only the inside of its children
                    self._partly.add((cid, way))
                    stack.append((cid, 0, (), _NOTHING, block, None))
                    stack.extend(reversed(children))
                    continue
            else:
                if olds:  # a changed file: the blocks of its old versions are held
                    covered = self._covered(covered, olds)
                    if cid in covered:
                        continue
                children = [(link.cid, link.tsize or 0, (), covered, None, None) for link in node.links]
            self.sent.add(cid)
            stack.append((cid, 0, (), _NOTHING, block, None))
            stack.extend(reversed(children))

    def _inner_way(self, way: str | None, name: bytes) -> str | Literal[False] | None:
        """For the entry ``name`` of a directory at ``way``: None (inside: all of it), its
        path (on the way to a partial clone's paths), or False (outside: none of it)."""
        if way is None or self._paths is None:
            return None
        text = name.decode()
        path = f"{way}/{text}" if way else text
        kind = self._paths.where(path)
        return False if kind == OUTSIDE else None if kind == INSIDE else path

    def _dir_map(self, cid: Cid, full: bool) -> dict[bytes, Cid] | None:
        """An old directory node's links by :func:`_key`; ``full``: a HAMT's every entry
        (to match a plain directory's names), else one shard's links."""
        if (cid, full) in self._dir_maps:
            return self._dir_maps[(cid, full)]
        out: dict[bytes, Cid] | None = None
        if cid_codec(cid) == DAG_PB:
            node = decode_pbnode(self._get(cid))
            if _is_dir(node):
                shard = is_shard_node(node)
                if shard and full:
                    out = {link.name.encode("utf-8"): link.cid for link in list_dir(self._get, cid, node)}
                else:
                    out = {_key(shard, link.name or b""): link.cid for link in node.links}
        if len(self._dir_maps) >= _DIR_MAP_CACHE:
            self._dir_maps.clear()
        self._dir_maps[(cid, full)] = out
        return out

    def _covered(self, covered: frozenset[Cid] | set[Cid], olds: Sequence[Cid]) -> frozenset[Cid] | set[Cid]:
        if not covered and len(olds) == 1:
            return self._file_set(olds[0])  # the common case: no copy
        out = set(covered)
        for o in olds:
            out |= self._file_set(o)
        return out

    def _file_set(self, cid: Cid) -> frozenset[Cid]:
        """CIDs of a file DAG's interior nodes and of everything they link to (leaves not read)."""
        cached = self._file_sets.get(cid)
        if cached is not None:
            return cached
        out = {cid}
        stack = [cid] if cid_codec(cid) == DAG_PB else []
        while stack:
            node = decode_pbnode(self._get(stack.pop()))
            if _is_dir(node):
                break  # a directory replaced by a file: nothing of it is inside the file
            for link in node.links:
                if link.cid not in out:
                    out.add(link.cid)
                    if cid_codec(link.cid) == DAG_PB:
                        stack.append(link.cid)
        if len(self._file_sets) > _FILE_SET_CACHE:
            self._file_sets.clear()
        frozen = self._file_sets[cid] = frozenset(out)
        return frozen


def commit_blocks(get: GetBlock, graph: CommitGraph, commits: Sequence[Cid], paths: PathFilter | None = None
                  ) -> Iterator[Block]:
    """Every block a receiver holding the parents outside ``commits`` lacks to hold
    ``commits`` (oldest first, as :meth:`CommitGraph.missing` returns them); with ``paths``,
    within them."""
    new = set(commits)
    held = {graph.node(p).tree for c in commits for p in graph.node(c).parents if p not in new}
    walker = TreeWalker(get, held, paths)
    for cid in commits:
        node = graph.node(cid)
        yield from walker.commit(cid, node.tree, [graph.node(p).tree for p in node.parents])


def changed_paths(get: GetBlock, old: Cid | None, new: Cid | None, prefix: str = "",
                  keep: Callable[[str], bool] | None = None, empty_dirs: set[str] | None = None) -> set[str]:
    """Paths of files and symlinks that differ between two trees (either may be None);
    with ``keep`` (a partial clone's ``PathFilter.holds``), only paths it keeps.  With
    ``empty_dirs``, the paths of the empty directories met in either tree where the two
    differ are added to it (a flat tree has no directories, so no file path names them).

    Walks both trees together and skips identical subtrees by CID, so the cost is
    proportional to the change, not to the tree.  Names are validated as they are read.
    An explicit stack, not recursion: a tree from elsewhere may nest deep.
    """
    out: set[str] = set()
    stack: list[tuple[Cid | None, Cid | None, str]] = [(old, new, prefix)]
    while stack:
        old, new, prefix = stack.pop()
        if old == new:
            continue
        old_links, new_links = _named_entries(get, old, new)
        if empty_dirs is not None and prefix and ((old is not None and not old_links)
                                                 or (new is not None and not new_links)):
            empty_dirs.add(prefix[:-1])  # (a HAMT, whose listing here may be partial, is never empty)
        for name in old_links.keys() | new_links.keys():
            a, b = old_links.get(name), new_links.get(name)
            if a == b:
                continue
            path = f"{prefix}{name}"
            if keep is not None and not keep(path):
                continue
            a_dir = a is not None and _is_dir_cid(get, a)
            b_dir = b is not None and _is_dir_cid(get, b)
            if a_dir or b_dir:
                stack.append((a if a_dir else None, b if b_dir else None, path + "/"))
            if (a is not None and not a_dir) or (b is not None and not b_dir):
                out.add(path)
    return out


def diff_trees(store: BlockStore, old: Cid | None, new: Cid | None,
               keep: Callable[[str], bool] | None = None) -> list[TreeChange]:
    """:func:`diff_flat` of two trees, read in time proportional to the change (a
    one-entry change in a directory of a million reads a few shards, not the million);
    with ``keep`` (a partial clone's paths), of the paths it keeps only."""
    at_old, at_new = EntryLookup(store, old), EntryLookup(store, new)
    old_entries: dict[str, Entry] = {}
    new_entries: dict[str, Entry] = {}
    for path in changed_paths(store.get, old, new, keep=keep):
        if (a := at_old(path)) is not None:
            old_entries[path] = a
        if (b := at_new(path)) is not None:
            new_entries[path] = b
    return diff_flat(old_entries, new_entries)


class EntryLookup:
    """``lookup(path)``: the file or symlink entry the tree ``root`` has at ``path`` (None: no
    such path, or a directory there).  Each plain directory on the way is decoded once however
    many paths are asked in it; in a HAMT-sharded one only the name's bucket path is read.  So
    asking about the few paths a change touches reads a few directories, not the tree."""

    def __init__(self, store: BlockStore, root: Cid | None) -> None:
        self._store = store
        self._dirs: dict[str, Cid | None] = {"": root}
        self._plain: dict[Cid, dict[str, DirLink] | None] = {}  # None: a HAMT (asked name by name)

    def __call__(self, path: str) -> Entry | None:
        parent, _, name = path.rpartition("/")
        directory = self._dir(parent)
        link = self._link(directory, name) if directory is not None else None
        if link is None:
            return None
        entry = entry_for(self._store, link.cid, link.tsize)
        return None if entry.kind == "dir" else entry

    def _dir(self, path: str) -> Cid | None:
        if path not in self._dirs:
            parent, _, name = path.rpartition("/")
            above = self._dir(parent)
            link = self._link(above, name) if above is not None else None
            is_dir = link is not None and entry_for(self._store, link.cid, link.tsize).kind == "dir"
            self._dirs[path] = link.cid if link is not None and is_dir else None
        return self._dirs[path]

    def _link(self, directory: Cid, name: str) -> DirLink | None:
        if directory not in self._plain:
            if cid_codec(directory) != DAG_PB:
                raise InvalidObject(f"{cid_str(directory)} is not a directory")
            node = decode_pbnode(self._store.get(directory))
            self._plain[directory] = (None if is_shard_node(node)
                                      else {link.name: link for link in read_dir_block(directory, node)})
        listing = self._plain[directory]
        if listing is not None:
            return listing.get(name)
        leaf = find_in_hamt(self._store.get, directory, name)
        return None if leaf is None else DirLink(*leaf)


def _named_entries(get: GetBlock, old: Cid | None, new: Cid | None) -> tuple[dict[str, Cid], dict[str, Cid]]:
    """Both directories' entries by name; of two HAMTs, only those outside shared shards."""
    nodes = []
    for cid in (old, new):
        if cid is not None and cid_codec(cid) != DAG_PB:
            raise InvalidObject(f"{cid_str(cid)} is not a directory")
        nodes.append(decode_pbnode(get(cid)) if cid is not None else None)
    a, b = nodes
    if old is not None and new is not None and a is not None and b is not None \
            and is_shard_node(a) and is_shard_node(b):
        return diff_hamt(get, old, new)
    return ({link.name: link.cid for link in list_dir(get, old, a)} if old is not None else {},
            {link.name: link.cid for link in list_dir(get, new, b)} if new is not None else {})


def _is_dir_cid(get: GetBlock, cid: Cid) -> bool:
    if cid_codec(cid) == RAW:
        return False
    if cid_codec(cid) != DAG_PB:
        raise InvalidObject(f"tree entry {cid_str(cid)} is neither raw nor dag-pb")
    node = decode_pbnode(get(cid))
    if node.data is None:
        raise InvalidObject(f"dag-pb node {cid_str(cid)} has no UnixFS data")
    kind = decode_unixfs(node.data).type
    if kind not in _ENTRY_TYPES:
        raise InvalidObject(f"UnixFS node {cid_str(cid)} has unsupported type {kind}")
    return kind in _DIR_TYPES
