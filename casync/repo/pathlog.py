"""History of one path: the commits that changed a file or directory (``log -- PATH``).

A commit changed PATH when the CID at PATH in its tree (None when absent) differs from
the CID at PATH in every parent's tree; for a merge that means it took neither side's
version as it was (a merge that kept one side's version changed nothing there, as in
git's default history simplification).  Only the directories along PATH are read, one
lookup per distinct directory CID: no tree is flattened or diffed, and unchanged
subtrees share their answers across commits.
"""

from __future__ import annotations

from casync.model.cid import DAG_PB, Cid, cid_codec
from casync.model.names import split_path
from casync.model.objects import UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD, decode_pbnode, decode_unixfs
from casync.repo.repository import FORGOTTEN_PREFIX, LogEntry, Repository
from casync.trees.unixfs import find_entry

_DIR_TYPES = (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD)

__all__ = ["path_log"]


class _PathLookup:
    """CID at a fixed path in any tree, memoised per tree and per (directory, name)."""

    def __init__(self, repo: Repository, parts: tuple[str, ...]) -> None:
        self._repo = repo
        self._parts = parts
        self._by_tree: dict[Cid, Cid | None] = {}
        self._children: dict[tuple[Cid, str], Cid | None] = {}

    def _child(self, directory: Cid, name: str) -> Cid | None:
        key = (directory, name)
        if key not in self._children:
            found = None  # stays None where a file stands in for a directory
            if cid_codec(directory) == DAG_PB:
                node = decode_pbnode(self._repo.blocks.get(directory))
                if node.data is not None and decode_unixfs(node.data).type in _DIR_TYPES:
                    link = find_entry(self._repo.blocks.get, directory, name)
                    found = link.cid if link is not None else None
            self._children[key] = found
        return self._children[key]

    def at(self, tree: Cid) -> Cid | None:
        if tree not in self._by_tree:
            cid: Cid | None = tree
            for part in self._parts:
                if cid is None:
                    break
                cid = self._child(cid, part)
            self._by_tree[tree] = cid
        return self._by_tree[tree]


def path_log(repo: Repository, rev: str, paths: list[str], limit: int | None = None) -> list[LogEntry]:
    """The commits reachable from ``rev`` that changed any of ``paths``, newest first."""
    lookups = [_PathLookup(repo, split_path(p)) for p in paths]
    graph = repo.graph
    forgotten = {k[len(FORGOTTEN_PREFIX):] for k, _ in repo.store.items("meta", FORGOTTEN_PREFIX)}
    out: list[LogEntry] = []
    for cid, node in graph.walk_nodes([repo.resolve(rev)]):
        if limit is not None and len(out) >= limit:
            break
        if cid in forgotten:
            continue  # its tree is gone (retention): what it changed is no longer known
        # against forgotten parents nothing can be compared: the oldest kept commit
        # counts as the one that brought the path, as a root commit does
        parents = [graph.node(p).tree for p in node.parents if p not in forgotten]
        if any(_changed(lookup, node.tree, parents) for lookup in lookups):
            out.append(LogEntry(cid, repo.load_commit(cid)))
    return out


def _changed(lookup: _PathLookup, tree: Cid, parent_trees: list[Cid]) -> bool:
    here = lookup.at(tree)
    if not parent_trees:
        return here is not None
    return all(lookup.at(t) != here for t in parent_trees)
