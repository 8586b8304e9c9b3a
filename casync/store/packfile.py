"""The pack file format: ``packs/NNNNNNNN.pack`` records and the ``index`` values that locate them.

A pack is a 16-byte magic (:data:`PACK_MAGIC`), then records ``varint(len(cid)) cid
varint(len(data)) data`` (docs/design.md §7.2).  Packs are self-describing, so the index
can be rebuilt from them.  The layout is here, apart from the store that appends and reads
(:mod:`casync.store.packs`), because gc's rewriting (:mod:`casync.store.repack`), fsck's
parse and the tests read and write it too.  No LMDB here: files and bytes only.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from casync.errors import BadVarint, CasyncError
from casync.model.cid import Cid, read_varint, varint

__all__ = ["PACK_MAGIC", "PackRecord", "decode_location", "encode_location", "pack_problems", "record_header",
           "record_size", "scan_pack"]

_LOC = struct.Struct("<IQI")  # pack number, data offset, data length
PACK_MAGIC = b"CASYNCPACK\x00\x00\x00\x00\x00\x01"  # 16 bytes: name + format version 1
_MAX_HEADER = 160  # varint + a CID (at most 128 bytes here) + varint


def encode_location(pack: int, offset: int, length: int) -> bytes:
    """An ``index`` value: pack number, offset of the block data, data length (§7.1)."""
    return _LOC.pack(pack, offset, length)


def decode_location(raw: bytes) -> tuple[int, int, int]:
    pack, offset, length = _LOC.unpack(raw)
    return pack, offset, length


def record_header(cid: Cid, length: int) -> bytes:
    """The bytes before a record's data: ``varint(len(cid)) cid varint(length)``."""
    return varint(len(cid)) + cid + varint(length)


def record_size(cid: Cid, length: int) -> int:
    """Bytes one record takes in a pack: its header and its data."""
    return len(varint(len(cid))) + len(cid) + len(varint(length)) + length


@dataclass(frozen=True)
class PackRecord:
    """One record of a pack file: its CID, where its data starts, and the data's length."""

    cid: Cid
    offset: int
    length: int


def scan_pack(path: Path) -> tuple[list[PackRecord], int]:
    """Parse a pack file from start to end: (its records, where parsing stopped).

    The second value equals the file's length exactly when the pack is parseable end to
    end; a torn record (a killed append) stops the scan at its start.  Streams the file
    (block data is skipped, not read)."""
    records: list[PackRecord] = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(PACK_MAGIC)) != PACK_MAGIC:
            return records, 0
        pos = len(PACK_MAGIC)
        while pos < size:
            head = f.read(min(96, size - pos))  # two varints and a CID fit in 96 bytes
            try:
                cid_len, at = read_varint(head, 0)
                cid = head[at:at + cid_len]
                data_len, at = read_varint(head, at + cid_len)
            except (CasyncError, IndexError):
                break
            if len(cid) != cid_len or pos + at + data_len > size:
                break
            records.append(PackRecord(cid, pos + at, data_len))
            pos += at + data_len
            f.seek(pos)
    return records, pos


def pack_problems(path: Path, number: int, indexed: dict[int, Cid]) -> list[tuple[int, int, str, Cid | None]]:
    """Problems parsing one pack (see :meth:`casync.store.packs.PackBlockStore.scan_packs`): reads each record
    header, jumps over its data (a pack is never held in memory).  ``indexed`` maps the data
    offsets the index names in this pack to their CIDs; what the parse does not reach stays."""
    out: list[tuple[int, int, str, Cid | None]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if os.pread(fd, len(PACK_MAGIC), 0) != PACK_MAGIC:
            return [(number, 0, "bad pack magic", None)]
        pos = len(PACK_MAGIC)
        while pos < size:
            head = os.pread(fd, _MAX_HEADER, pos)
            try:
                n, at = read_varint(head, 0, "pack record")
                cid = head[at : at + n]
                length, at = read_varint(head, at + n, "pack record")
            except BadVarint as exc:
                return [*out, (number, pos, f"unparseable record header ({exc.message})", None)]
            data_at = pos + at
            if n < 4 or n > 128 or len(cid) != n or data_at + length > size:
                return [*out, (number, pos, "unparseable record header (lengths past the record or the pack)", None)]
            expected = indexed.pop(data_at, None)
            if expected is not None and expected != cid:
                out.append((number, pos, "the record header names another CID than the index", expected))
            pos = data_at + length
    finally:
        os.close(fd)
    return out
