"""Pack files: block bytes appended to ``packs/NNNNNNNN.pack``, located by the ``index`` DB.

Why not block bytes in LMDB?  Measured on our machines (docs/design.md): LMDB with
default flags writes big values at 0.15–0.2 GB/s (overflow pages, copy-on-write);
``writemap=True`` reaches 1.2 GB/s but turns a full disk into SIGBUS instead of an
error.  Appending to a pack file and fsyncing runs at ~1.5 GB/s and a full disk is a
clean ``ENOSPC``.

Durability order (the closure invariant): block bytes are appended and fsynced, then
their index entries are committed in one LMDB transaction, and only after that may a
ref name them.  A crash between the two leaves unreferenced bytes at the end of a pack,
never a ref to a missing block; the next writer truncates the pack back to the end
recorded with the last committed batch (``meta`` key ``pack_end/N``; for a pack no batch
was committed into yet, the end of its last indexed record), and so does the next open of
the store when no writer holds the lock, so packs stay parseable from start to end.
``casync fsck`` reports pack bytes no index entry uses (deleted blocks) as reclaimable;
``casync gc`` (``store.repack``) reclaims them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from casync.errors import BlockNotFound, CasyncError, CorruptBlock, StorageError, StorageFull
from casync.model.cid import Cid, cid_str, verify_block
from casync.store.env import DISK_FULL as _DISK_FULL
from casync.store.env import LmdbEnv
from casync.store.packfile import (
    PACK_MAGIC,
    decode_location,
    encode_location,
    pack_problems,
    record_header,
    record_size,
)

__all__ = ["PACK_ROTATE_BYTES", "SYNC_AHEAD_BYTES", "PackBlockStore"]

PACK_ROTATE_BYTES = 1 << 30
SYNC_AHEAD_BYTES = 64 << 20


class _PackMissing(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


class PackBlockStore:
    """Blocks appended to ``packs/NNNNNNNN.pack``, located through the LMDB ``index`` DB.

    The records' layout is :mod:`casync.store.packfile`'s.  A pack ``rotate_bytes`` long is
    closed for a new one (a parameter so tests can reach rotation).
    """

    def __init__(self, store: LmdbEnv, *, rotate_bytes: int = PACK_ROTATE_BYTES) -> None:
        self._store = store
        self._rotate_bytes = rotate_bytes
        self._pending: dict[Cid, tuple[int, int, int]] = {}
        self._replacing: set[Cid] = set()  # pending entries that repoint an existing index entry
        self._writer: Any = None
        self._writer_no = 0
        self._writer_durable = 0
        self._writer_pos = 0
        self._readers: dict[int, int] = {}
        self._lock = threading.RLock()
        self._put_txn: Any = None  # one read snapshot per write session, for dedupe checks
        self._unsynced = 0
        self._syncer: threading.Thread | None = None

    @property
    def rotate_bytes(self) -> int:
        """The length at which a pack is closed for a new one (gc's output packs use it too)."""
        return self._rotate_bytes

    # --- reading ---------------------------------------------------------------------------

    def _location(self, cid: Cid) -> tuple[int, int, int] | None:
        loc = self._pending.get(cid)
        if loc is not None:
            return loc
        raw = self._store.get("index", cid)
        if raw is None:
            return None
        pack, offset, length = decode_location(raw)
        return pack, offset, length

    def _reader(self, pack: int) -> int:
        fd = self._readers.get(pack)
        if fd is None:
            path = self._store.pack_dir / f"{pack:08d}.pack"
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise _PackMissing(path) from None
            self._drop_deleted_readers()
            self._readers[pack] = fd
        return fd

    def _drop_deleted_readers(self) -> None:
        """Close descriptors of packs gc deleted: a long-running reader (serve, agent) would
        otherwise keep their disk space allocated.  Checked when a pack is first opened,
        which is what a reader does after gc moved the blocks it reads to new packs."""
        for number, fd in list(self._readers.items()):
            if not (self._store.pack_dir / f"{number:08d}.pack").exists():
                os.close(fd)
                del self._readers[number]

    def get(self, cid: Cid, *, verify: bool = True) -> bytes:
        """``cid``'s bytes, hash-checked unless ``verify`` is false (for a reader whose
        receiver checks every block's hash itself, as Kubo's ``dag/import`` does for push)."""
        with self._lock:
            loc = self._location(cid)
            if loc is None:
                raise BlockNotFound(cid_str(cid), "local store")
            pack, offset, length = loc
            if self._writer is not None and pack == self._writer_no:
                self._writer.flush()
            try:
                data = os.pread(self._reader(pack), length, offset)
            except _PackMissing as exc:
                # gc may have rewritten the pack between reading the entry and opening the
                # file (§8.1): the entry read now points at the new copy
                moved = self._location(cid)
                if moved is None or moved[0] == pack:
                    raise BlockNotFound(cid_str(cid),
                                        f"local store (pack file {exc.path.name} is missing)") from None
                pack, offset, length = moved
                try:
                    data = os.pread(self._reader(pack), length, offset)
                except _PackMissing as again:
                    raise BlockNotFound(cid_str(cid),
                                        f"local store (pack file {again.path.name} is missing)") from None
        if len(data) != length:
            raise CorruptBlock(cid_str(cid), "local store (truncated pack)")
        if verify:
            verify_block(cid, data, "local store")
        return data

    def has(self, cid: Cid) -> bool:
        return cid in self._pending or self._store.get("index", cid) is not None

    def has_many(self, cids: Iterable[Cid]) -> set[Cid]:
        out: set[Cid] = set()
        db = self._store.db("index")
        with self._store.env.begin() as txn:
            for cid in cids:
                if cid in self._pending or txn.get(cid, db=db) is not None:
                    out.add(cid)
        return out

    def iter_cids(self) -> Iterator[Cid]:
        with self._store.env.begin() as txn:
            keys = [bytes(k) for k in txn.cursor(db=self._store.db("index")).iternext(values=False)]
        yield from keys
        yield from list(self._pending)

    def sizes(self, cids: Iterable[Cid]) -> dict[Cid, int]:
        """The data length of each of ``cids`` that is indexed (absent ones are left out)."""
        out: dict[Cid, int] = {}
        db = self._store.db("index")
        with self._store.env.begin() as txn:
            for cid in cids:
                loc = self._pending.get(cid)
                if loc is not None:
                    out[cid] = loc[2]
                    continue
                raw = txn.get(cid, db=db)
                if raw is not None:
                    out[cid] = decode_location(bytes(raw))[2]
        return out

    def record_problem(self, cid: Cid) -> str | None:
        """Whether the pack record holding ``cid`` is intact around its data: the header just
        before the data must read ``varint(len(cid)) cid varint(len(data))`` (a flipped byte
        there leaves the data readable through the index but the pack unparseable)."""
        with self._lock:
            loc = self._location(cid)
            if loc is None:
                return "not indexed"
            pack, offset, length = loc
            header = record_header(cid, length)
            if offset < len(PACK_MAGIC) + len(header):
                return f"pack {pack:08d}: index offset {offset} leaves no room for the record header"
            if self._writer is not None and pack == self._writer_no:
                self._writer.flush()
            try:
                found = os.pread(self._reader(pack), len(header), offset - len(header))
            except _PackMissing as exc:
                return f"pack file {exc.path.name} is missing"
        if found != header:
            return f"pack {pack:08d}: the record header at offset {offset - len(header)} is damaged"
        return None

    def scan_packs(self) -> list[tuple[int, int, str, Cid | None]]:
        """Parse every pack from start to end (magic, then records): (pack, offset, problem,
        CID or None) for each place a pack stops parsing, a record header disagrees with the
        index, or indexed data is not where a parsed record's data is."""
        by_pack: dict[int, dict[int, Cid]] = {}
        with self._store.env.begin() as txn:
            for k, v in txn.cursor(db=self._store.db("index")):
                pack, offset, _length = decode_location(bytes(v))
                by_pack.setdefault(pack, {})[offset] = bytes(k)
        problems: list[tuple[int, int, str, Cid | None]] = []
        with self._lock:
            if self._writer is not None:
                self._writer.flush()
            for path in sorted(self._store.pack_dir.glob("*.pack")):
                try:
                    number = int(path.stem)
                except ValueError:
                    continue
                left = by_pack.pop(number, {})
                problems += pack_problems(path, number, left)
                problems += [(number, off, "indexed data that no parsed record holds", cid)
                             for off, cid in sorted(left.items())]
        problems += [(number, off, "indexed in a pack file that does not exist", cid)
                     for number, left in sorted(by_pack.items()) for off, cid in sorted(left.items())]
        return problems

    def pack_bytes(self) -> tuple[int, int]:
        """(bytes in pack files, bytes the indexed records and pack headers occupy)."""
        packs = list(self._store.pack_dir.glob("*.pack"))
        total = sum(p.stat().st_size for p in packs)
        used = len(PACK_MAGIC) * len(packs)
        with self._store.env.begin() as txn:
            for k, v in txn.cursor(db=self._store.db("index")):
                length = decode_location(bytes(v))[2]
                used += record_size(k, length)
        return total, used

    # --- writing ---------------------------------------------------------------------------

    def _open_writer(self) -> None:
        meta = self._store.get("meta", b"pack_current")
        number = int(meta) if meta else 1
        path = self._store.pack_dir / f"{number:08d}.pack"
        self._cut_tail(number)
        if path.exists() and path.stat().st_size >= self._rotate_bytes:
            number += 1
            path = self._store.pack_dir / f"{number:08d}.pack"
            self._cut_tail(number)
        if meta is None or int(meta) != number:
            self._store.put("meta", b"pack_current", str(number).encode())
        f = open(path, "ab")  # noqa: SIM115 - kept open across puts, closed in close()
        if f.tell() == 0:
            f.write(PACK_MAGIC)
        self._writer, self._writer_no = f, number
        self._writer_pos = f.tell()
        self._writer_durable = self._writer_pos

    def committed_end(self, number: int) -> int:
        """Where pack ``number``'s last committed batch ends: ``pack_end/N``, or, for a pack
        no batch was committed into yet (or one written before ``pack_end`` existed), the
        end of the last record the index names in it, at least the magic."""
        durable = self._store.get("meta", b"pack_end/%d" % number)
        if durable is not None:
            return int(durable)
        end = len(PACK_MAGIC)
        with self._store.env.begin() as txn:
            for value in txn.cursor(db=self._store.db("index")).iternext(keys=False):
                pack, offset, length = decode_location(bytes(value))
                if pack == number:
                    end = max(end, offset + length)
        return end

    def _cut_tail(self, number: int) -> int:
        """Cut pack ``number`` back to its committed end; return the bytes cut.

        Bytes past it are a killed or failed batch (torn or whole records no index entry
        names); left there, the next batch would be appended after them and the pack would
        hold torn records in its middle.  Only a writer (under the writer lock) calls this."""
        path = self._store.pack_dir / f"{number:08d}.pack"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        end = self.committed_end(number)
        if size < len(PACK_MAGIC):
            end = 0  # not even the magic got written: start the pack again
        if size <= end:
            return 0
        os.truncate(path, end)
        return size - end

    def reclaim_tail(self) -> int:
        """Cut the current pack (and an orphan after it) back to what was committed.

        Called when a store is opened and the writer lock is free (the next writer does the
        same in :meth:`_open_writer`), so killed writes hold no space past the next open."""
        with self._lock:
            if self._writer is not None or self._pending:
                return 0
            meta = self._store.get("meta", b"pack_current")
            number = int(meta) if meta else 1
            return self._cut_tail(number) + self._cut_tail(number + 1)

    def _held(self, cid: Cid) -> bool:
        if cid in self._pending:
            return True
        if self._put_txn is None:
            self._put_txn = self._store.env.begin()
        return self._put_txn.get(cid, db=self._store.db("index")) is not None

    def end_session(self) -> None:
        """Drop the read snapshot used by :meth:`put` (called when the writer lock is released)."""
        with self._lock:
            if self._put_txn is not None:
                self._put_txn.abort()
                self._put_txn = None

    def _background_sync(self) -> None:
        """Start writing dirty pages out while hashing goes on, so the final fsync is short."""
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._writer.flush()
        fd = self._writer.fileno()

        def run() -> None:
            with contextlib.suppress(OSError):  # the final fdatasync reports errors
                os.fdatasync(fd)

        self._syncer = threading.Thread(target=run, name="casync-pack-sync", daemon=True)
        self._syncer.start()
        self._unsynced = 0

    def _join_syncer(self) -> None:
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None

    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        with self._lock:
            if self._held(cid):
                return False
            self._append(cid, data)
            return True

    def replace(self, cid: Cid, data: bytes | memoryview) -> None:
        """Store a good copy of a block held damaged (or whose pack is gone), for repair.

        Nothing is overwritten: the copy is appended to the current pack like any new block
        and, at :meth:`flush`, the index entry is repointed to it in the same LMDB
        transaction as the batch (after the pack is fsynced).  A crash before that leaves
        the old entry, so the block is still reported damaged and can be repaired again;
        the old bytes become reclaimable (``fsck`` counts them)."""
        verify_block(cid, data, "repair source")
        with self._lock:
            self._append(cid, data)
            self._replacing.add(cid)

    def _append(self, cid: Cid, data: bytes | memoryview) -> None:
        """Write one record to the current pack; indexed at :meth:`flush` (caller holds the lock)."""
        if self._writer is None:
            self._open_writer()
        header = record_header(cid, len(data))
        try:
            self._writer.write(header)
            self._writer.write(data)
        except OSError as exc:
            self._abort_writes()
            if exc.errno in _DISK_FULL:
                raise StorageFull(f"disk full writing pack {self._writer_no:08d}",
                                  hint="free disk space and retry; nothing was committed") from None
            raise StorageError(f"cannot write pack {self._writer_no:08d} in {self._store.pack_dir}: "
                               f"{exc.strerror or exc}; nothing was committed",
                               hint="check the disk (dmesg) and the file system, then retry") from None
        offset = self._writer_pos + len(header)
        self._pending[cid] = (self._writer_no, offset, len(data))
        self._writer_pos = offset + len(data)
        self._unsynced += len(data)
        if self._unsynced >= SYNC_AHEAD_BYTES:
            self._background_sync()

    def _abort_writes(self) -> None:
        """Forget unflushed blocks and cut the pack back to its last durable length."""
        self._pending.clear()
        self._replacing.clear()
        self._join_syncer()
        self.end_session()
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            with contextlib.suppress(OSError):
                os.truncate(self._store.pack_dir / f"{self._writer_no:08d}.pack", self._writer_durable)
            self._writer = None

    def flush(self) -> None:
        """fsync the pack, then commit the index entries in one LMDB transaction."""
        with self._lock:
            if not self._pending:
                return
            try:
                self._writer.flush()
                self._join_syncer()
                os.fdatasync(self._writer.fileno())
            except OSError as exc:
                self._abort_writes()
                if exc.errno in _DISK_FULL:
                    raise StorageFull("disk full syncing pack", hint="free disk space and retry") from None
                raise StorageError(f"cannot sync pack {self._writer_no:08d} in {self._store.pack_dir}: "
                                   f"{exc.strerror or exc}; nothing was committed",
                                   hint="check the disk (dmesg) and the file system, then retry") from None
            pending = sorted(self._pending.items())
            db = self._store.db("index")

            end = self._writer_pos
            meta_db = self._store.db("meta")
            replacing = set(self._replacing)

            def fn(txn: Any) -> None:
                for cid, loc in pending:
                    txn.put(cid, encode_location(*loc), db=db, overwrite=cid in replacing)
                txn.put(b"pack_end/%d" % self._writer_no, str(end).encode(), db=meta_db)

            try:
                self._store.write(fn)
            except CasyncError:
                self._abort_writes()
                raise
            self._pending.clear()
            self._replacing.clear()
            self.end_session()
            self._unsynced = 0
            # Close after every durable batch: the next batch re-reads the pack's length,
            # so another writer (process or object) appending meanwhile cannot skew offsets.
            self._writer.close()
            self._writer = None
            if self._writer_pos >= self._rotate_bytes:
                self._store.put("meta", b"pack_current", str(self._writer_no + 1).encode())

    def discard(self) -> None:
        """Drop blocks put since the last flush (a failed commit)."""
        with self._lock:
            self._abort_writes()

    def delete(self, cid: Cid) -> None:
        """Forget a block.  Its bytes stay in the pack until a repack reclaims them."""
        with self._lock:
            self._pending.pop(cid, None)
            self._store.write(lambda txn: txn.delete(cid, db=self._store.db("index")))

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self.discard()
            self.end_session()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()

