"""What goes over the wire: the blocks a peer lacks, and how received blocks are checked.

Sender: for each missing commit, oldest first, the blocks of its tree that none of its
parents' trees hold at the same path, in post-order, then the commit block itself; the
walk (and its moved/copied-data rule) is :mod:`casync.trees.walk`, shared with IPFS push.

Receiver: every block is hash-verified (by the CAR reader) and checked, on its own and
against what it links to (:mod:`casync.transfer.checks`), every link of a received
block must point to a block held before the transfer or received earlier in it, and at
each commit boundary every block received since the previous commit must be reachable
from the new commit — so blocks nobody asked for, a truncated stream or a lying peer
are rejected.  A partial clone (``paths``) relaxes one rule: a directory on the way to its
paths may link to entries outside them, which are never sent; at the commit that reaches
it, each such link must be one of the tree's outside entries (:mod:`casync.trees.paths`),
so a peer cannot leave out anything inside the paths.  Blocks are flushed at commit boundaries (every few MiB), so an
interrupted transfer keeps whole commits and a restart sends only what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from casync.errors import InvalidObject
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str
from casync.model.objects import UNIXFS_DIRECTORY
from casync.repo.repository import Repository
from casync.transfer.checks import ReceiptChecks
from casync.trees.paths import PathFilter, outside_cids
from casync.trees.walk import commit_blocks

__all__ = ["MissingLink", "MissingWant", "PackReceiver", "StrayBlock", "TransferStats", "UnwantedCommit",
           "blocks_for_commits"]

FLUSH_BYTES = 8 << 20


class MissingLink(InvalidObject):
    """A received block links to a block neither held nor received before it."""


class StrayBlock(InvalidObject):
    """A received block that no commit of the stream reaches (or the stream stopped before it)."""


class UnwantedCommit(InvalidObject):
    """The stream ends with a commit that was not asked for."""


class MissingWant(InvalidObject):
    """A commit that was asked for did not arrive."""


def blocks_for_commits(repo: Repository, commits: list[Cid], paths: PathFilter | None = None
                       ) -> Iterator[tuple[Cid, bytes]]:
    """The stream a peer needs to go from its common commits to holding ``commits``
    (oldest first, as :meth:`CommitGraph.missing` returns them), within ``paths`` if
    given: see :mod:`casync.trees.walk`."""
    get = repo.blocks.get
    for cid, _size, data in commit_blocks(get, repo.graph, commits, paths):
        yield cid, data if data is not None else get(cid)


@dataclass
class TransferStats:
    blocks: int = 0
    bytes: int = 0
    new_blocks: int = 0
    new_bytes: int = 0
    commits: list[Cid] = field(default_factory=list)

    def to_json(self) -> dict[str, int]:
        return {"blocks": self.blocks, "bytes": self.bytes, "new_blocks": self.new_blocks,
                "new_bytes": self.new_bytes, "commits": len(self.commits)}


class PackReceiver:
    """Stores a received block stream after checking it (see the module docstring).

    Call :meth:`add` per block, then :meth:`finish` with the commits that were asked
    for.  On any error call :meth:`abort`: unflushed blocks are dropped and no ref moves.
    """

    def __init__(self, repo: Repository, wants: Iterable[Cid] | None = None, flush_bytes: int = FLUSH_BYTES,
                 paths: PathFilter | None = None) -> None:
        self.repo = repo
        self.paths = paths
        self._absent: dict[Cid, set[Cid]] = {}  # directory -> the links it was received without
        self.wants = set(wants) if wants is not None else None
        self.stats = TransferStats()
        self._received: set[Cid] = set()
        self._since_commit: set[Cid] = set()  # received, not yet reachable from a commit
        self._dangling_commits: set[Cid] = set()  # received commits no later commit names
        self._unflushed = 0
        self._flush_bytes = flush_bytes
        self.last_flushed_commit: Cid | None = None
        self._unflushed_commits: list[Cid] = []
        self.checks = ReceiptChecks(repo)

    def _present(self, cid: Cid) -> bool:
        return cid in self._received or self.repo.blocks.has(cid)

    def add(self, cid: Cid, block: bytes) -> None:
        """One verified block (the CAR reader checked its hash)."""
        self.stats.blocks += 1
        self.stats.bytes += len(block)
        checked = self.checks.check(cid, block)
        tolerate = self.paths is not None and checked.unixfs is not None and checked.unixfs.type == UNIXFS_DIRECTORY
        for child in checked.links:
            if not self._present(child):
                if tolerate:  # checked against the tree's outside entries at the commit
                    self._absent.setdefault(cid, set()).add(child)
                    continue
                raise MissingLink(f"block {cid_str(cid)} links to {cid_str(child)}, which was neither held "
                                    f"nor sent before it (incomplete or out-of-order stream)")
            self._since_commit.discard(child)
            self._dangling_commits.discard(child)
        self.checks.against_children(cid, block, checked)
        if checked.commit is not None:  # checked above: safe to index for graph walks
            self.repo.graph.remember(cid, checked.commit)
        if self.repo.blocks.put(cid, block):
            self.stats.new_blocks += 1
            self.stats.new_bytes += len(block)
            self._unflushed += len(block)
        self._received.add(cid)
        if cid_codec(cid) == DAG_CBOR:
            if self._absent and checked.commit is not None:
                self._check_absent(cid, checked.commit.tree)
            if self._since_commit:
                stray = next(iter(self._since_commit))
                raise StrayBlock(f"block {cid_str(stray)} was sent but no commit needs it")
            self._dangling_commits.add(cid)
            self.stats.commits.append(cid)
            self._unflushed_commits.append(cid)
            if self._unflushed >= self._flush_bytes:
                self.repo.blocks.flush()  # commit boundary: everything so far is closed
                self._unflushed = 0
                self._unflushed_commits = []
                self.last_flushed_commit = cid
        else:
            self._since_commit.add(cid)

    def _check_absent(self, commit: Cid, tree: Cid) -> None:
        """Every link a directory came without lies outside the paths in ``tree``."""
        assert self.paths is not None
        allowed = outside_cids(self.repo.blocks.get, tree, self.paths)
        for directory, absent in self._absent.items():
            for child in absent:
                if child not in allowed and not self._present(child):
                    raise MissingLink(f"block {cid_str(directory)} links to {cid_str(child)}, which lies inside "
                                      f"the fetched paths ({', '.join(self.paths.paths)}) of commit "
                                      f"{cid_str(commit)} but was not sent")
        self._absent.clear()

    def checkpoint(self) -> None:
        """At a commit boundary: make everything received so far durable, so the writer lock
        may be released before the next block (another writer then appends to the pack)."""
        if self._since_commit:
            raise StrayBlock("a checkpoint must fall on a commit boundary")
        self.repo.blocks.flush()
        self._unflushed = 0
        self._unflushed_commits = []
        if self.stats.commits:
            self.last_flushed_commit = self.stats.commits[-1]

    def finish(self) -> TransferStats:
        if self._since_commit:
            stray = next(iter(self._since_commit))
            raise StrayBlock(f"block {cid_str(stray)} was sent but no commit needs it (truncated stream?)")
        if self.wants is not None:
            extra = self._dangling_commits - self.wants
            if extra:
                raise UnwantedCommit(f"commit {cid_str(next(iter(extra)))} was sent but not asked for")
            missing = [w for w in self.wants if not self._present(w)]
            if missing:
                raise MissingWant(f"commit {cid_str(missing[0])} was asked for but not sent")
        self.repo.blocks.flush()
        return self.stats

    def abort(self) -> None:
        self.repo.blocks.discard()
        self.repo.graph.forget(self._unflushed_commits)
        self._unflushed_commits = []
