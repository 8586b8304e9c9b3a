"""Rewriting pack files for garbage collection (docs/design.md §8.1).

The store-level half of ``casync gc``: which packs exist and what the index says each one
holds (:func:`pack_usage`), writing the records that stay into new packs under temporary
names (:class:`PackRewriter`), and the one LMDB transaction that repoints and drops index
entries (:func:`swap_index`).  What is reachable is decided above this layer
(``casync.repo.gc``); nothing here deletes a record unless told to, and an index entry is
changed only if it still points where the plan saw it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casync.model.cid import Cid, verify_block
from casync.store.env import LmdbEnv
from casync.store.packfile import PACK_MAGIC, decode_location, encode_location, record_header, record_size
from casync.store.packs import PACK_ROTATE_BYTES

__all__ = ["TMP_SUFFIX", "PackRewriter", "PackUse", "pack_numbers", "pack_usage", "swap_index"]

TMP_SUFFIX = ".pack.gc-tmp"
"""Packs being written by gc: ``packs/gc-<K>.pack.gc-tmp``, renamed to ``NNNNNNNN.pack`` at the swap."""


def pack_numbers(pack_dir: Path) -> list[int]:
    """Numbers of the pack files on disk, ascending (temporary gc files excluded)."""
    out = []
    for p in pack_dir.glob("*.pack"):
        if p.stem.isdigit():
            out.append(int(p.stem))
    return sorted(out)


@dataclass
class PackUse:
    """One pack as the index sees it: its length on disk and the records entries name."""

    number: int
    size: int
    records: list[tuple[Cid, int, int]] = field(default_factory=list)  # (cid, data offset, length)

    def used_bytes(self) -> int:
        return len(PACK_MAGIC) + sum(record_size(c, n) for c, _, n in self.records)


def pack_usage(store: LmdbEnv, numbers: Iterable[int]) -> dict[int, PackUse]:
    """For each pack in ``numbers``: its size and the index entries pointing into it (one
    read snapshot of the index)."""
    uses = {}
    for n in numbers:
        path = store.pack_dir / f"{n:08d}.pack"
        with contextlib.suppress(FileNotFoundError):
            uses[n] = PackUse(n, path.stat().st_size)
    with store.env.begin(buffers=True) as txn:
        for key, value in txn.cursor(db=store.db("index")):
            pack, offset, length = decode_location(bytes(value))
            use = uses.get(pack)
            if use is not None:
                use.records.append((bytes(key), offset, length))
    for use in uses.values():
        use.records.sort(key=lambda r: r[1])
    return uses


class PackRewriter:
    """Copies records into new packs named ``gc-<K>.pack.gc-tmp`` until :meth:`install`.

    Each block is read from its old pack and hash-checked before it is copied (a damaged
    block stops gc: nothing is dropped on the strength of bytes that do not match)."""

    def __init__(self, pack_dir: Path, rotate_bytes: int = PACK_ROTATE_BYTES) -> None:
        self.pack_dir = pack_dir
        self.rotate_bytes = rotate_bytes
        self.placed: dict[Cid, tuple[int, int, int]] = {}  # cid -> (output index, offset, length)
        self._files: list[Path] = []
        self._out: Any = None
        self._pos = 0
        self._readers: dict[int, int] = {}
        self.copied_bytes = 0

    def _next_file(self) -> None:
        self._close_current()
        path = self.pack_dir / f"gc-{len(self._files)}{TMP_SUFFIX}"
        self._out = open(path, "wb")  # noqa: SIM115 - kept open across copies, closed in _close_current
        self._out.write(PACK_MAGIC)
        self._files.append(path)
        self._pos = len(PACK_MAGIC)

    def _close_current(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fdatasync(self._out.fileno())
            self._out.close()
            self._out = None

    def copy(self, cid: Cid, pack: int, offset: int, length: int) -> None:
        """Copy one block from ``pack`` at ``offset`` into the current output pack."""
        if cid in self.placed:
            return
        fd = self._readers.get(pack)
        if fd is None:
            fd = os.open(self.pack_dir / f"{pack:08d}.pack", os.O_RDONLY)
            self._readers[pack] = fd
        data = os.pread(fd, length, offset)
        verify_block(cid, data, f"pack {pack:08d}")
        if self._out is None or self._pos >= self.rotate_bytes:
            self._next_file()
        header = record_header(cid, length)
        self._out.write(header)
        self._out.write(data)
        self.placed[cid] = (len(self._files) - 1, self._pos + len(header), length)
        self._pos += len(header) + length
        self.copied_bytes += length

    def finish(self) -> list[int]:
        """fsync every output pack; their lengths, in order."""
        self._close_current()
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        return [p.stat().st_size for p in self._files]

    def install(self, first: int) -> list[int]:
        """Rename the output packs to ``first``, ``first + 1``, ... (after :meth:`finish`),
        fsync the directory, and return their numbers."""
        numbers = []
        for i, path in enumerate(self._files):
            path.rename(self.pack_dir / f"{first + i:08d}.pack")
            numbers.append(first + i)
        fd = os.open(self.pack_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._files = []
        return numbers

    def discard(self) -> None:
        """Remove the output packs (gc stopped before its swap)."""
        with contextlib.suppress(OSError):
            self._close_current()
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        for path in self._files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._files = []


def swap_index(store: LmdbEnv, moves: dict[Cid, tuple[tuple[int, int], tuple[int, int, int]]],
               drops: dict[Cid, tuple[int, int]], new_ends: dict[int, int], gone_packs: Iterable[int],
               pack_current: int, also: Callable[[Any], None] | None = None) -> tuple[int, int]:
    """One LMDB write transaction: repoint each moved block to its new record, drop each
    swept block's entry, record the new packs' ends, forget the ends of ``gone_packs`` and
    set ``pack_current``; ``also(txn)`` adds its own writes (the reflog expiry).

    ``moves`` maps a CID to ((old pack, old offset), new location); ``drops`` to its old
    (pack, offset).  An entry that no longer points at its old place (a repair repointed
    it meanwhile) is left alone.  Returns (entries moved, entries dropped)."""
    index, meta = store.db("index"), store.db("meta")
    gone = list(gone_packs)

    def fn(txn: Any) -> tuple[int, int]:
        moved = dropped = 0
        for cid, (old, new) in moves.items():
            raw = txn.get(cid, db=index)
            if raw is not None and decode_location(bytes(raw))[:2] == old:
                txn.put(cid, encode_location(*new), db=index)
                moved += 1
        for cid, old in drops.items():
            raw = txn.get(cid, db=index)
            if raw is not None and decode_location(bytes(raw))[:2] == old:
                txn.delete(cid, db=index)
                dropped += 1
        for number, end in new_ends.items():
            txn.put(b"pack_end/%d" % number, str(end).encode(), db=meta)
        for number in gone:
            txn.delete(b"pack_end/%d" % number, db=meta)
        txn.put(b"pack_current", str(pack_current).encode(), db=meta)
        if also is not None:
            also(txn)
        return moved, dropped

    return store.write(fn)
