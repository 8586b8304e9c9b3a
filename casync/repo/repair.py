"""Repair: replace the blocks ``fsck`` finds missing or damaged with verified copies.

A block's CID names its bytes, so any copy that hashes to the CID is *the* block, whoever
sent it: a peer, another repository, an IPFS node.  :func:`repair` asks a source for every
block ``fsck`` reports missing or hash-mismatched, checks each copy, and stores it with
:meth:`PackBlockStore.replace` (appended to a pack; the index entry is repointed in one
LMDB transaction after the pack is fsynced, so a crash leaves the damaged entry, never a
half-written one).  A damaged directory or commit hides what lies below it, so ``fsck``
runs again after each round until it is clean or a round fixes nothing.  A block that
decodes wrongly although its hash matches cannot be fixed by a copy and is left to report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from casync.errors import CorruptBlock
from casync.model.cid import Cid, cid_str, verify_block
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.fsck import FsckReport
from casync.repo.repository import Repository

__all__ = ["BlockSource", "RepairReport", "repair"]

BlockSource = Callable[[list[Cid]], Iterable[tuple[Cid, bytes]]]
"""Given CIDs, yields ``(cid, bytes)`` for those it has (in any order; the rest left out)."""


@dataclass
class RepairReport:
    repaired: list[Cid] = field(default_factory=list)
    rounds: int = 0
    fsck: FsckReport = field(default_factory=FsckReport)  # the last check, after the repair

    @property
    def ok(self) -> bool:
        return self.fsck.ok

    @property
    def unrepaired(self) -> list[Cid]:
        """Blocks still missing or damaged: the source had no good copy."""
        return self.fsck.damaged

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "repaired": [cid_str(c) for c in self.repaired], "rounds": self.rounds,
                "unrepaired": [cid_str(c) for c in self.unrepaired], "fsck": self.fsck.to_json()}


def repair(repo: Repository, source: BlockSource, progress: Progress = NULL_PROGRESS,
           max_rounds: int = 1000) -> RepairReport:
    """Fetch every block ``fsck`` reports missing or damaged from ``source`` and store it
    in place (see the module docstring).  Each block is asked for once."""
    report = RepairReport()
    asked: set[Cid] = set()
    while True:
        report.fsck = repo.fsck(progress)
        todo = [c for c in report.fsck.damaged if c not in asked]
        if not todo or report.rounds >= max_rounds:
            return report
        report.rounds += 1
        asked.update(todo)
        report.repaired += _store_copies(repo, source, todo, progress)


def _store_copies(repo: Repository, source: BlockSource, todo: list[Cid], progress: Progress) -> list[Cid]:
    wanted, got = set(todo), []
    progress.start("fetching good copies", None)
    with repo.store.writer_lock():
        try:
            for cid, data in source(todo):
                if cid not in wanted:
                    continue  # nobody asked for it: a source that sends more is ignored
                try:
                    verify_block(cid, data, "repair source")
                except CorruptBlock:
                    continue  # that copy is no better; the block stays reported
                wanted.discard(cid)
                repo.blocks.replace(cid, data)
                got.append(cid)
                progress.advance(len(data))
        finally:
            progress.finish()
            repo.blocks.flush()  # what arrived is verified: keep it even if the source broke off
    return got
