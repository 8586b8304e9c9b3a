"""What goes over the wire: the blocks a peer lacks, and how received blocks are checked.

Sender: for each missing commit, oldest first, the blocks of its tree that none of its
parents' trees hold at the same path (a parallel walk, so unchanged subtrees and the
unchanged leaves of an edited file are never sent), in post-order (children before the
nodes that link to them), then the commit block itself.  A directory or multi-chunk file
at a path its parents lack is skipped whole when the receiver already holds it anywhere
(the commits it holds are the parents outside the transfer): moving or copying data
costs a few directory blocks, not its bytes.

Receiver: every block is hash-verified (by the CAR reader), every link of a received
block must point to a block held before the transfer or received earlier in it, and at
each commit boundary every block received since the previous commit must be reachable
from the new commit — so blocks nobody asked for, a truncated stream or a lying peer
are rejected.  Blocks are flushed at commit boundaries (every few MiB), so an
interrupted transfer keeps whole commits and a restart sends only what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from casync.dag import tree_entry_cids, validated_links
from casync.errors import InvalidObject
from casync.ids import DAG_CBOR, DAG_PB, Cid, cid_codec, cid_str
from casync.objects import UNIXFS_DIRECTORY, decode_commit, decode_pbnode, decode_unixfs
from casync.repo import Repository

__all__ = ["MissingLink", "PackReceiver", "TransferStats", "blocks_for_commits"]

FLUSH_BYTES = 8 << 20


class MissingLink(InvalidObject):
    """A received block links to a block neither held nor received before it."""


class _TreeDiff:
    """Blocks of a new tree that old trees at the same paths do not already hold, nor the
    receiver anywhere else (a file or directory moved or copied to a new path)."""

    def __init__(self, repo: Repository, sent: set[Cid], held_trees: list[Cid]) -> None:
        self.repo = repo
        self.sent = sent
        self._held_trees = held_trees
        self._held: set[Cid] | None = None

    def receiver_holds(self, cid: Cid) -> bool:
        """``cid`` is a directory or file root in a tree the receiver holds.  The index is
        built on first use only, i.e. when a transfer meets a new path at all."""
        if self._held is None:
            self._held = tree_entry_cids(self.repo.blocks.get, self._held_trees)
        return cid in self._held

    def _node(self, cid: Cid) -> tuple[bytes, bool, list[tuple[bytes | None, Cid]]]:
        block = self.repo.blocks.get(cid)
        if cid_codec(cid) != DAG_PB:
            return block, False, []
        node = decode_pbnode(block)
        is_dir = node.data is not None and decode_unixfs(node.data).type == UNIXFS_DIRECTORY
        return block, is_dir, [(link.name, link.cid) for link in node.links]

    def _all_cids(self, roots: Iterable[Cid]) -> set[Cid]:
        """Every block CID of the old versions of a file (internal nodes read, leaves not)."""
        out: set[Cid] = set()
        stack = list(roots)
        while stack:
            cid = stack.pop()
            if cid in out:
                continue
            out.add(cid)
            if cid_codec(cid) == DAG_PB:
                stack.extend(link.cid for link in decode_pbnode(self.repo.blocks.get(cid)).links)
        return out

    def walk(self, new: Cid, old: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        if new in old or new in self.sent:
            return
        block, is_dir, links = self._node(new)
        if is_dir:
            old_links: dict[bytes | None, list[Cid]] = {}
            for o in old:
                try:
                    _b, o_is_dir, o_links = self._node(o)
                except Exception:
                    continue
                if o_is_dir:
                    for name, cid in o_links:
                        old_links.setdefault(name, []).append(cid)
            for name, child in links:
                same_path = old_links.get(name, [])
                if not same_path and cid_codec(child) == DAG_PB and self.receiver_holds(child):
                    continue  # moved or copied: the receiver has it under another name
                yield from self.walk(child, same_path)
        else:
            known = self._all_cids(old)
            yield from self._file_blocks(new, known)
            return
        self.sent.add(new)
        yield new, block

    def _file_blocks(self, cid: Cid, known: set[Cid]) -> Iterator[tuple[Cid, bytes]]:
        if cid in known or cid in self.sent:
            return
        block = self.repo.blocks.get(cid)
        if cid_codec(cid) == DAG_PB:
            for link in decode_pbnode(block).links:
                yield from self._file_blocks(link.cid, known)
        self.sent.add(cid)
        yield cid, block


def blocks_for_commits(repo: Repository, commits: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
    """The stream a peer needs to go from its common commits to holding ``commits``
    (oldest first, as :meth:`CommitGraph.missing` returns them)."""
    sent: set[Cid] = set()
    new = set(commits)
    held = {repo.graph.node(p).tree for c in commits for p in repo.graph.node(c).parents if p not in new}
    diff = _TreeDiff(repo, sent, sorted(held))
    for cid in commits:
        commit = repo.graph.get(cid)
        old_trees = []
        for p in commit.parents:
            try:
                old_trees.append(repo.graph.get(p).tree)
            except Exception:
                continue
        yield from diff.walk(commit.tree, old_trees)
        sent.add(cid)
        yield cid, repo.blocks.get(cid)


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

    def __init__(self, repo: Repository, wants: Iterable[Cid] | None = None, flush_bytes: int = FLUSH_BYTES) -> None:
        self.repo = repo
        self.wants = set(wants) if wants is not None else None
        self.stats = TransferStats()
        self._received: set[Cid] = set()
        self._since_commit: set[Cid] = set()  # received, not yet reachable from a commit
        self._dangling_commits: set[Cid] = set()  # received commits no later commit names
        self._unflushed = 0
        self._flush_bytes = flush_bytes
        self.last_flushed_commit: Cid | None = None
        self._unflushed_commits: list[Cid] = []

    def _present(self, cid: Cid) -> bool:
        return cid in self._received or self.repo.blocks.has(cid)

    def add(self, cid: Cid, block: bytes) -> None:
        """One verified block (the CAR reader checked its hash)."""
        self.stats.blocks += 1
        self.stats.bytes += len(block)
        links = validated_links(cid, block)
        for child in links:
            if not self._present(child):
                raise MissingLink(f"block {cid_str(cid)} links to {cid_str(child)}, which was neither held "
                                    f"nor sent before it (incomplete or out-of-order stream)")
            self._since_commit.discard(child)
            self._dangling_commits.discard(child)
        if cid_codec(cid) == DAG_CBOR:  # checked above: safe to index for graph walks
            self.repo.graph.remember(cid, decode_commit(block, cid))
        if self.repo.blocks.put(cid, block):
            self.stats.new_blocks += 1
            self.stats.new_bytes += len(block)
            self._unflushed += len(block)
        self._received.add(cid)
        if cid_codec(cid) == DAG_CBOR:
            if self._since_commit:
                stray = next(iter(self._since_commit))
                raise InvalidObject(f"block {cid_str(stray)} was sent but no commit needs it")
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

    def finish(self) -> TransferStats:
        if self._since_commit:
            stray = next(iter(self._since_commit))
            raise InvalidObject(f"block {cid_str(stray)} was sent but no commit needs it (truncated stream?)")
        if self.wants is not None:
            extra = self._dangling_commits - self.wants
            if extra:
                raise InvalidObject(f"commit {cid_str(next(iter(extra)))} was sent but not asked for")
            missing = [w for w in self.wants if not self._present(w)]
            if missing:
                raise InvalidObject(f"commit {cid_str(missing[0])} was asked for but not sent")
        self.repo.blocks.flush()
        return self.stats

    def abort(self) -> None:
        self.repo.blocks.discard()
        self.repo.graph.forget(self._unflushed_commits)
        self._unflushed_commits = []
