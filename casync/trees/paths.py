"""Partial repositories: the paths a clone fetched (``clone --path``), and how a tree splits
along them.  Pure logic over a ``get(cid) -> bytes`` callable; the one place that says which
entries of a tree a partial repository holds, shared by the walker that sends blocks
(:class:`casync.trees.walk.TreeWalker`), the receiver's checks, checkout, commit, merge and
fsck.

Relative to the paths, an entry of a tree is

- *inside* (at or under one of them): held whole, like in a full clone;
- *on the way* (a proper prefix of one of them): a directory is held as a node only, its
  entries classified in turn; a file there is held whole (it is what the tree has at the path);
- *outside* (anything else): never fetched.  Its CID is known from the directory that links
  to it, so a commit made here carries it over unchanged (:func:`outside_entries`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from casync.errors import InvalidObject, InvalidPath, StateRefused, UsageError
from casync.model.cid import DAG_PB, Cid, cid_codec
from casync.model.names import split_path
from casync.model.objects import UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD, decode_pbnode, decode_unixfs
from casync.store.base import BlockStore
from casync.trees.unixfs import Entry, flatten_tree, list_dir

__all__ = ["INSIDE", "ON_THE_WAY", "OUTSIDE", "PathFilter", "Where", "flatten_within", "grafted", "merged_outside",
           "normalize_paths", "parse_requested_paths", "outside_cids", "outside_entries"]

GetBlock = Callable[[Cid], bytes]
Where = Literal["inside", "on the way", "outside"]
INSIDE: Where = "inside"
ON_THE_WAY: Where = "on the way"
OUTSIDE: Where = "outside"


MAX_REQUESTED_PATHS = 64


def parse_requested_paths(value: object) -> tuple[str, ...]:
    """A fetch request's ``paths`` (a partial clone's, from a peer): a short list of
    repository paths, normalized (malformed -> InvalidObject)."""
    if not isinstance(value, list) or len(value) > MAX_REQUESTED_PATHS or not all(isinstance(p, str) for p in value):
        raise InvalidObject(f"paths must be a list of at most {MAX_REQUESTED_PATHS} strings")
    try:
        return normalize_paths(value, "requested path")
    except UsageError as exc:
        raise InvalidObject(exc.message) from None


def normalize_paths(paths: Iterable[str], what: str = "--path") -> tuple[str, ...]:
    """Sorted, normalized (``a/b``), without one under another; ``..``, absolute paths, bad
    names and the root itself are usage errors."""
    out: set[str] = set()
    for raw in paths:
        if not isinstance(raw, str):
            raise UsageError(f"{what} must be a path, not {raw!r}")
        parts = split_path(raw, what)
        if not parts:
            raise InvalidPath(f"{what} {raw!r} names the whole tree", hint="leave --path out to clone everything")
        out.add("/".join(parts))
    return tuple(sorted(p for p in out if not any(p.startswith(q + "/") for q in out)))


class PathFilter:
    """The paths of a partial repository, and where a path lies relative to them."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = normalize_paths(paths)
        if not self.paths:
            raise UsageError("a partial repository needs at least one path")

    def __repr__(self) -> str:
        return f"PathFilter({list(self.paths)!r})"

    def where(self, path: str) -> Where:
        if any(path == p or path.startswith(p + "/") for p in self.paths):
            return INSIDE
        if path == "" or any(p.startswith(path + "/") for p in self.paths):
            return ON_THE_WAY
        return OUTSIDE

    def holds(self, path: str) -> bool:
        """A file or symlink at ``path`` is fetched (checked out, committed from the working tree)."""
        return self.where(path) != OUTSIDE

    def covers(self, other: Iterable[str]) -> bool:
        """Every path of ``other`` lies inside these paths."""
        return all(self.where(p) == INSIDE for p in normalize_paths(other))


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _is_dir(get: GetBlock, cid: Cid) -> bool:
    if cid_codec(cid) != DAG_PB:
        return False
    node = decode_pbnode(get(cid))
    return node.data is not None and decode_unixfs(node.data).type in (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD)


def outside_entries(get: GetBlock, tree: Cid, paths: PathFilter) -> dict[str, tuple[Cid, int]]:
    """``{path: (cid, tsize)}`` of every entry outside ``paths``, read from the directories
    on the way (which a partial repository holds); nothing outside is read."""
    out: dict[str, tuple[Cid, int]] = {}
    stack = [("", tree)]
    while stack:
        base, cid = stack.pop()
        for link in list_dir(get, cid):  # plain or HAMT-sharded
            path = _join(base, link.name)
            where = paths.where(path)
            if where == OUTSIDE:
                out[path] = (link.cid, link.tsize)
            elif where == ON_THE_WAY and _is_dir(get, link.cid):
                stack.append((path, link.cid))
    return out


def outside_cids(get: GetBlock, tree: Cid, paths: PathFilter) -> set[Cid]:
    """The CIDs a partial repository may lack under ``tree`` (see :func:`outside_entries`)."""
    return {cid for cid, _ in outside_entries(get, tree, paths).values()}


def flatten_within(store: BlockStore, tree: Cid, paths: PathFilter, prefix: str = "") -> dict[str, Entry]:
    """``flatten_tree`` of what ``paths`` hold: files and symlinks not outside them (``tree``
    lies at ``prefix``)."""
    return flatten_tree(store, tree, prefix, keep=lambda path: paths.where(path) != OUTSIDE)


def merged_outside(get: GetBlock, paths: PathFilter, base: Cid | None, ours: Cid, theirs: Cid
                   ) -> dict[str, tuple[Cid, int]]:
    """The outside entries of a merge of ``ours`` and ``theirs`` (trees): per path, the side
    that changed it since ``base``.  Both changing one (differently) needs blocks this
    partial repository never fetched: a :class:`StateRefused` that names the path."""
    b = outside_entries(get, base, paths) if base is not None else {}
    o, t = outside_entries(get, ours, paths), outside_entries(get, theirs, paths)
    out: dict[str, tuple[Cid, int]] = {}
    for path in sorted(o.keys() | t.keys()):
        mine, other, old = o.get(path), t.get(path), b.get(path)
        if mine != other and other != old and mine != old:
            raise StateRefused(f"this merge needs {path!r}, which both sides changed, and this partial clone "
                               f"does not hold it (only {', '.join(paths.paths)})",
                               hint=f"fetch it first with 'casync fetch --path {path}', then merge again")
        pick = other if mine == old else mine
        if pick is not None:
            out[path] = pick
    return out


def grafted(files: Mapping[str, Entry], outside: Mapping[str, tuple[Cid, int]], paths: PathFilter
            ) -> dict[str, Entry]:
    """``files`` plus the outside entries, as :func:`casync.trees.unixfs.build_tree` links
    them (by CID, never read); a file in ``files`` at an outside path is refused (it
    would replace or sit beside data this clone never fetched)."""
    for path in files:
        if not paths.holds(path):
            top = path.split("/", 1)[0]
            raise UsageError(f"{path!r} lies outside the paths this partial clone holds ({', '.join(paths.paths)})",
                             hint=f"move it under one of them, or widen the clone: 'casync fetch --path {top}'")
    out = dict(files)
    out.update({p: Entry(cid, "file", tsize) for p, (cid, tsize) in outside.items()})
    return out
