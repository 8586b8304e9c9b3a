"""Root-first block order: the order trustless IPFS clients and streaming CAR verifiers
expect (the trustless gateway's ``dfs`` order, what ``ipfs dag export`` writes).

Each block comes after the block that links to it: a pre-order, depth-first walk from the
roots that follows each block's links in link order (dag-pb: as listed; DAG-CBOR: as
encoded) and sends each block once.  A block the receiver already holds is not sent, and
neither is anything below it.

:func:`dfs_blocks` writes that order over blocks chosen by the one tree walker
(:mod:`casync.trees.walk`: it decides *which* blocks a receiver lacks, this only orders
them), reading each from the store as it goes, so memory holds one link list per level.

:class:`DfsReceiver` checks a stream in that order as it arrives: every block must be the
next one the walk reaches that the receiver does not hold, so a block out of place, a
stray one or a missing one is refused naming the CID.  Blocks are stored bottom-up (a
block once all it links to is held), so the store keeps "held implies complete", and an
interrupted read keeps whole subtrees.  What waits in memory is the path from a root to
the current block: its directories and, on a long history, the commits of that history
(a few hundred bytes each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from casync.errors import LimitExceeded
from casync.model import cbor
from casync.model.cbor import Link
from casync.model.cid import DAG_CBOR, DAG_PB, Cid, cid_codec, cid_str
from casync.model.objects import MAX_FILE_DEPTH, MAX_TREE_DEPTH, decode_pbnode
from casync.repo.repository import Repository
from casync.transfer.checks import ReceiptChecks
from casync.transfer.stream import FLUSH_BYTES, MissingLink, MissingWant, StrayBlock, TransferStats
from casync.trees.unixfs import CheckedBlock

__all__ = ["DfsReceiver", "block_links", "dfs_blocks"]

_MAX_DAG_PB_DEPTH = MAX_TREE_DEPTH + MAX_FILE_DEPTH


def block_links(cid: Cid, block: bytes) -> list[Cid]:
    """What ``block`` links to, in link order (dag-pb: as listed; DAG-CBOR: as encoded,
    i.e. in its canonical key order; raw: nothing)."""
    codec = cid_codec(cid)
    if codec == DAG_PB:
        return [link.cid for link in decode_pbnode(block).links]
    if codec != DAG_CBOR:
        return []
    out: list[Cid] = []
    stack: list[object] = [cbor.decode(block)]
    while stack:
        obj = stack.pop()
        if isinstance(obj, Link):
            out.append(bytes(obj))
        elif isinstance(obj, dict):
            stack.extend(reversed(list(obj.values())))
        elif isinstance(obj, list):
            stack.extend(reversed(obj))
    return out


def dfs_blocks(get: Callable[[Cid], bytes], roots: Sequence[Cid], include: set[Cid]) -> Iterator[tuple[Cid, bytes]]:
    """The blocks of ``include`` reachable from ``roots`` through blocks of ``include``, in
    root-first order, each once.  ``include`` is consumed: what is left afterwards was not
    reachable (a caller's bookkeeping error)."""
    stack: list[Iterator[Cid]] = [iter(roots)]
    while stack:
        cid = next(stack[-1], None)
        if cid is None:
            stack.pop()
            continue
        if cid not in include:
            continue  # held by the receiver (and so is all below it), or sent already
        include.discard(cid)
        block = get(cid)
        yield cid, block
        stack.append(iter(block_links(cid, block)))


@dataclass
class _Frame:
    cid: Cid
    block: bytes
    checked: CheckedBlock
    links: Iterator[Cid]
    depth: int  # dag-pb nesting below the nearest commit


class DfsReceiver:
    """Checks and stores a root-first stream of the DAGs below ``roots`` (see the module
    docstring).  Call :meth:`add` per hash-verified block, then :meth:`finish`; on any
    error :meth:`abort` (unflushed blocks are dropped, no ref moves)."""

    def __init__(self, repo: Repository, roots: Sequence[Cid], flush_bytes: int = FLUSH_BYTES) -> None:
        self.repo = repo
        self.stats = TransferStats()
        self.checks = ReceiptChecks(repo)
        self._roots = iter(roots)
        self._stack: list[_Frame] = []
        self._received: set[Cid] = set()
        self._flush_bytes = flush_bytes
        self._unflushed = 0
        self._unflushed_commits: list[Cid] = []

    def _next(self) -> Cid | None:
        """The next CID the walk reaches (completing the blocks whose links are all done)."""
        while True:
            cid = next(self._stack[-1].links if self._stack else self._roots, None)
            if cid is not None:
                return cid
            if not self._stack:
                return None
            self._complete(self._stack.pop())

    def add(self, cid: Cid, block: bytes) -> None:
        while True:
            want = self._next()
            if want is None:
                raise StrayBlock(f"block {cid_str(cid)} was sent after the whole DAG")
            if want in self._received:
                continue
            if want == cid:
                break
            if self.repo.blocks.has(want):
                continue
            raise MissingLink(f"block {cid_str(cid)} came where {cid_str(want)} belongs (a block missing, or the "
                              "stream is not in root-first order)")
        self.stats.blocks += 1
        self.stats.bytes += len(block)
        checked = self.checks.check(cid, block)
        depth = 0
        if cid_codec(cid) == DAG_PB and self._stack:
            depth = self._stack[-1].depth + 1
            if depth > _MAX_DAG_PB_DEPTH:
                raise LimitExceeded(f"DAG below {cid_str(cid)} nests deeper than {_MAX_DAG_PB_DEPTH} levels")
        self._received.add(cid)
        self._stack.append(_Frame(cid, block, checked, iter(checked.links), depth))

    def _complete(self, frame: _Frame) -> None:
        cid, block, checked = frame.cid, frame.block, frame.checked
        self.checks.against_children(cid, block, checked)  # all it links to is held now
        if checked.commit is not None:
            self.repo.graph.remember(cid, checked.commit)
            self.stats.commits.append(cid)
            self._unflushed_commits.append(cid)
        if self.repo.blocks.put(cid, block):
            self.stats.new_blocks += 1
            self.stats.new_bytes += len(block)
            self._unflushed += len(block)
        if self._unflushed >= self._flush_bytes:
            self.repo.blocks.flush()  # everything stored so far is complete below
            self._unflushed = 0
            self._unflushed_commits = []

    def finish(self) -> TransferStats:
        """After the last block: everything the walk still reaches must be held."""
        while (want := self._next()) is not None:
            if want not in self._received and not self.repo.blocks.has(want):
                raise MissingWant(f"block {cid_str(want)} was not sent (truncated stream?)")
        self.repo.blocks.flush()
        self._unflushed_commits = []
        return self.stats

    def abort(self) -> None:
        self.repo.blocks.discard()
        self.repo.graph.forget(self._unflushed_commits)
        self._unflushed_commits = []
