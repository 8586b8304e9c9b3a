"""The checks a block from elsewhere passes against what it links to, before it is stored.

:func:`casync.trees.unixfs.checked_block` checks a block on its own (canonical bytes, every
field in range, names safe).  What it cannot see alone is checked here, once its children
(or a commit's parents) are held or received: a commit's derived fields (generation, clock,
time after its parents: :func:`casync.history.consistency.check_derived`) and its time against
this replica's clock and the configured skew; a file node's block sizes against its
children's real sizes and its depth (:data:`MAX_FILE_DEPTH`); a directory's nesting
(:data:`MAX_TREE_DEPTH`); a HAMT-sharded directory's buckets and depth, from its root,
once whatever links it by name (a directory, a shard's entry, a commit) arrives.  Every
transport's receive path runs it: the peer protocol and bundles through
:class:`casync.transfer.stream.PackReceiver`, IPFS fetch directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from casync.errors import FutureCommit, InvalidObject, LimitExceeded
from casync.history.consistency import check_derived
from casync.model.cid import DAG_PB, RAW, Cid, cid_codec, cid_str
from casync.model.commit import Commit
from casync.model.objects import (
    MAX_FILE_DEPTH,
    MAX_TREE_DEPTH,
    UNIXFS_DIRECTORY,
    UNIXFS_FILE,
    UNIXFS_HAMT_SHARD,
    UNIXFS_RAW,
    decode_pbnode,
    decode_unixfs,
)
from casync.repo.repository import Repository
from casync.settings import limits
from casync.trees.hamt import check_hamt
from casync.trees.unixfs import CheckedBlock, checked_block

__all__ = ["ReceiptChecks"]

_FILE_TYPES = (UNIXFS_FILE, UNIXFS_RAW)


class ReceiptChecks:
    """Per transfer: remembers what it accepted (sizes, depths, commits) so each block is
    checked against its children in O(links), reading a held child only when it was not
    received in the same transfer."""

    def __init__(self, repo: Repository, now_ms: Callable[[], int] | None = None) -> None:
        self.repo = repo
        cfg = limits(repo.config)
        self._max_ahead = cfg.max_future_ms if cfg.future_commits == "refuse" else None
        self._now = now_ms or (lambda: int(time.time() * 1000))
        self._commits: dict[Cid, Commit] = {}
        self._files: dict[Cid, tuple[int, int]] = {}  # file block -> (bytes, depth)
        self._dirs: dict[Cid, int] = {}  # directory received here -> nesting depth
        self._shards: set[Cid] = set()  # HAMT shards received here
        self._hamts: set[Cid] = set()  # HAMT roots checked whole

    def check(self, cid: Cid, block: bytes) -> CheckedBlock:
        """Check ``block`` on its own (see :func:`checked_block`) and return what it links to."""
        return checked_block(cid, block)

    def against_children(self, cid: Cid, block: bytes, checked: CheckedBlock) -> None:
        """The checks that need ``checked.links`` held: call once they all are."""
        if checked.commit is not None:
            self._commit(cid, checked.commit)
            self._hamt_roots([checked.commit.tree])
        elif checked.unixfs is not None:
            if checked.unixfs.type in _FILE_TYPES:
                self._file(cid, block, checked)
            elif checked.unixfs.type == UNIXFS_DIRECTORY:
                self._hamt_roots(checked.links)
                self._dir_depth(cid, checked.links, [])
            elif checked.unixfs.type == UNIXFS_HAMT_SHARD:
                links = decode_pbnode(block).links
                entries = [link.cid for link in links if len(link.name or b"") > 2]
                self._hamt_roots(entries)
                self._dir_depth(cid, entries, [link.cid for link in links if len(link.name or b"") == 2])
                self._shards.add(cid)
        elif cid_codec(cid) == RAW:
            self._files[cid] = (len(block), 0)

    def _dir_depth(self, cid: Cid, entries: list[Cid], sub_shards: list[Cid]) -> None:
        """Nesting depth: a HAMT's shards together count as one directory level."""
        depth = 1 + max([*(self._dirs.get(c, 0) for c in entries),
                         *(self._dirs.get(c, 1) - 1 for c in sub_shards)], default=0)
        if depth > MAX_TREE_DEPTH:
            raise LimitExceeded(f"directory {cid_str(cid)} nests deeper than {MAX_TREE_DEPTH} levels")
        self._dirs[cid] = depth

    def _hamt_roots(self, entries: list[Cid]) -> None:
        for child in entries:
            if child in self._shards and child not in self._hamts:  # a HAMT's root, received here
                check_hamt(self.repo.blocks.get, child, self._shards.__contains__)
                self._hamts.add(child)

    def _commit(self, cid: Cid, commit: Commit) -> None:
        parents = [self._commits.get(p) or self.repo.graph.get(p) for p in commit.parents]
        check_derived(cid, commit, parents)
        if self._max_ahead is not None:
            ahead = commit.time.wall_ms - self._now()
            if ahead > self._max_ahead:
                raise FutureCommit(
                    f"commit {cid_str(cid)} is dated {ahead // 1000} s in the future (at most "
                    f"{self._max_ahead // 1000} s of clock skew is accepted)",
                    hint="fix the clock of the replica that made it; or raise limits.max_future_ms, or set "
                         "limits.future_commits to clamp (its weight in last-write-wins is then capped)")
        self._commits[cid] = commit

    def _file(self, cid: Cid, block: bytes, checked: CheckedBlock) -> None:
        u = checked.unixfs
        assert u is not None
        depth = 0
        for child, claimed in zip(checked.links, u.blocksizes, strict=True):
            size, below = self._file_info(child)
            if size != claimed:
                raise InvalidObject(f"file node {cid_str(cid)} says {cid_str(child)} holds {claimed} bytes, "
                                    f"it holds {size}")
            depth = max(depth, below + 1)
        if depth > MAX_FILE_DEPTH:
            raise LimitExceeded(f"file DAG {cid_str(cid)} is deeper than {MAX_FILE_DEPTH} levels")
        self._files[cid] = (len(u.data or b"") + sum(u.blocksizes), depth)

    def _file_info(self, cid: Cid) -> tuple[int, int]:
        """(bytes, depth) of a file block received here or held before (then read once)."""
        known = self._files.get(cid)
        if known is not None:
            return known
        codec = cid_codec(cid)
        if codec == RAW:
            info = (len(self.repo.blocks.get(cid)), 0)
        elif codec == DAG_PB:
            info = self._held_file_node(cid)
        else:
            raise InvalidObject(f"a file links to {cid_str(cid)}, which is not a file block")
        self._files[cid] = info
        return info

    def _held_file_node(self, root: Cid) -> tuple[int, int]:
        """A held file node's size (as it claims: it was checked when it arrived) and
        depth, walked with an explicit stack over its dag-pb nodes only."""
        stack: list[tuple[Cid, bool, int]] = [(root, False, 1)]
        while stack:
            cid, expanded, level = stack.pop()
            if cid in self._files:
                continue
            node = decode_pbnode(self.repo.blocks.get(cid))
            u = decode_unixfs(node.data or b"")
            if u.type not in _FILE_TYPES:
                raise InvalidObject(f"a file links to {cid_str(cid)}, which is not a file node")
            inner = [link.cid for link in node.links if cid_codec(link.cid) == DAG_PB]
            if not expanded:
                if level > MAX_FILE_DEPTH:
                    raise LimitExceeded(f"file DAG at {cid_str(root)} is deeper than {MAX_FILE_DEPTH} levels")
                stack.append((cid, True, level))
                stack.extend((c, False, level + 1) for c in inner if c not in self._files)
                continue
            depth = 1 + max((self._files[c][1] for c in inner), default=0)
            self._files[cid] = (len(u.data or b"") + sum(u.blocksizes), depth)
        return self._files[root]
