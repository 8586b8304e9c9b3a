"""CAR v1 (Content Addressable aRchive) encoding and strict decoding.  Pure, no I/O of
its own: the writer appends to any binary stream, the reader consumes one.

Format (https://ipld.io/specs/transport/car/carv1/)::

    varint(len(header)) header            header = DAG-CBOR {"roots": [CID...], "version": 1}
    varint(len(cid) + len(data)) cid data  repeated, one section per block

casync uses CARs to upload many blocks per HTTP request (Kubo's ``dag/import``) and for
bundles.  The decoder is strict because CARs come from elsewhere: minimal varints, a
canonical header, CIDv1 (or CIDv0) with a supported codec and hash, blocks no larger than a limit,
and every block hash-checked against its CID (a mismatch names the CID).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from casync.errors import BadVarint, InvalidObject
from casync.model import cbor
from casync.model.cbor import Link
from casync.model.cid import Cid, read_varint, varint, verify_block
from casync.model.objects import MAX_BLOCK_SIZE

__all__ = [
    "TruncatedCar",
    "MAX_HEADER_SIZE",
    "CarWriter",
    "decode_car",
    "car_parts",
    "encode_car",
    "encode_header",
    "iter_car",
    "read_header",
    "section_size",
]

class TruncatedCar(InvalidObject):
    """The stream ended inside a CAR: usually a transfer cut short, worth retrying."""


MAX_HEADER_SIZE = 1 << 20
"""A header longer than this is rejected (it only lists root CIDs)."""


def encode_header(roots: Sequence[Cid]) -> bytes:
    """The length-prefixed CAR v1 header for ``roots`` (may be empty)."""
    return _header(tuple(roots))


@functools.lru_cache(maxsize=256)
def _header(roots: tuple[Cid, ...]) -> bytes:
    header = cbor.encode({"version": 1, "roots": [Link(r) for r in roots]})
    return varint(len(header)) + header


_header(())  # the header of every upload batch, encoded once at import


def _section_head(cid: Cid, data: bytes | memoryview) -> bytes:
    """What precedes a block's bytes in its section: the length prefix and the CID."""
    return varint(len(cid) + len(data)) + cid


def section_size(cid: Cid, data: bytes | memoryview) -> int:
    """Bytes one block takes in a CAR (length prefix included)."""
    return len(_section_head(cid, data)) + len(data)


def car_parts(roots: Sequence[Cid], blocks: Iterable[tuple[Cid, bytes | memoryview]]) -> list[bytes | memoryview]:
    """A CAR v1 as a list of byte strings whose concatenation is the archive: the header,
    then per block its length prefix with the CID, and the block's own bytes (not copied).
    For writing with ``writelines``-style I/O or as a streamed HTTP body."""
    out: list[bytes | memoryview] = [encode_header(roots)]
    for cid, data in blocks:
        out.append(_section_head(cid, data))
        out.append(data)
    return out


def encode_car(roots: Sequence[Cid], blocks: Iterable[tuple[Cid, bytes | memoryview]]) -> bytes:
    """A whole CAR v1 in memory (for small archives; use :class:`CarWriter` to stream)."""
    return b"".join(car_parts(roots, blocks))


class CarWriter:
    """Streams a CAR v1 to ``out``: the header on construction, then one section per :meth:`add`."""

    def __init__(self, out: BinaryIO, roots: Sequence[Cid] = ()) -> None:
        self._out = out
        header = encode_header(roots)
        out.write(header)
        self.size = len(header)
        self.blocks = 0

    def add(self, cid: Cid, data: bytes | memoryview) -> None:
        head = _section_head(cid, data)
        self._out.write(head)
        self._out.write(data)
        self.size += len(head) + len(data)
        self.blocks += 1


# --- decoding ------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.offset = 0

    def exact(self, n: int, what: str) -> bytes:
        data = self._stream.read(n)
        if data is None or len(data) != n:
            raise TruncatedCar(f"CAR truncated in {what} at byte {self.offset}")
        self.offset += n
        return data

    def varint(self, what: str, eof_ok: bool = False) -> int | None:
        """A section or header length: the bytes up to the first without the continuation
        bit (at most 10, the longest 64-bit varint), decoded by the one varint reader."""
        read = self._stream.read
        buf = read(1)
        if not buf:
            if eof_ok:
                return None
            raise TruncatedCar(f"CAR truncated in {what} length at byte {self.offset}")
        while buf[-1] & 0x80 and len(buf) < 10:
            b = read(1)
            if not b:
                raise TruncatedCar(f"CAR truncated in {what} length at byte {self.offset + len(buf)}")
            buf += b
        self.offset += len(buf)
        try:
            return read_varint(buf, 0)[0]
        except BadVarint as exc:
            raise BadVarint(f"CAR: {exc.message} in {what} length at byte {self.offset}") from None


def _split_cid(section: bytes, offset: int) -> int:
    """Length of the CID at the start of ``section`` (strictly parsed): a CIDv1, or a CIDv0
    (a dag-pb block a DAG from ``ipfs add`` links to by its sha2-256 multihash)."""
    if section[:1] == b"\x12":
        if section[1:2] != b"\x20" or len(section) < 34:
            raise InvalidObject(f"CAR: malformed CIDv0 at byte {offset}")
        return 34
    try:
        version, pos = read_varint(section, 0)
        if version != 1:
            raise InvalidObject(f"CAR: unsupported CID version {version} at byte {offset}")
        _codec, pos = read_varint(section, pos)
        _hash, pos = read_varint(section, pos)
        digest_len, pos = read_varint(section, pos)
    except BadVarint as exc:
        raise BadVarint(f"CAR: {exc.message} in the CID at byte {offset}") from None
    if digest_len > 64:
        raise InvalidObject(f"CAR: implausible digest length {digest_len} at byte {offset}")
    pos += digest_len
    if pos > len(section):
        raise InvalidObject(f"CAR: truncated CID in the section at byte {offset}")
    return pos


def read_header(stream: BinaryIO) -> list[Cid]:
    """Read and validate the header; return the roots.  ``stream`` is left at the first block."""
    return _read_header(_Reader(stream))


def _read_header(reader: _Reader) -> list[Cid]:
    length = reader.varint("header")
    assert length is not None
    if length == 0 or length > MAX_HEADER_SIZE:
        raise InvalidObject(f"CAR header length {length} is out of range")
    raw = reader.exact(length, "header")
    try:
        header = cbor.decode(raw)  # strict: only the canonical encoding decodes
    except InvalidObject as exc:
        raise InvalidObject(f"CAR header: {exc.message}") from None
    if not isinstance(header, dict) or set(header) != {"version", "roots"}:
        raise InvalidObject("CAR header must be a map with exactly 'version' and 'roots'")
    if header["version"] != 1:
        raise InvalidObject(f"unsupported CAR version {header['version']!r} (expected 1)")
    roots = header["roots"]
    if not isinstance(roots, list):
        raise InvalidObject("CAR header 'roots' is not a list")
    if not all(isinstance(r, Link) for r in roots):
        raise InvalidObject("CAR header 'roots' holds something that is not a CID")
    return [bytes(r) for r in roots]


def iter_car(stream: BinaryIO, *, max_block_size: int = MAX_BLOCK_SIZE,
             verify: bool = True) -> Iterator[tuple[Cid, bytes]]:
    """Yield ``(cid, data)`` for every block section after the header (read it first
    with :func:`read_header`).  Each block is hash-verified unless ``verify`` is false."""
    reader = _Reader(stream)
    while True:
        start = reader.offset
        length = reader.varint("section", eof_ok=True)
        if length is None:
            return
        if length == 0:
            raise InvalidObject(f"CAR: empty section at byte {start}")
        if length > max_block_size + 128:
            raise InvalidObject(f"CAR: section of {length} bytes at byte {start} exceeds the block size limit")
        section = reader.exact(length, "section")
        split = _split_cid(section, start)
        cid, data = section[:split], section[split:]
        if len(data) > max_block_size:
            raise InvalidObject(f"CAR: block at byte {start} is {len(data)} bytes (limit {max_block_size})")
        if verify:
            verify_block(cid, data, "CAR")
        yield cid, data


def decode_car(data: bytes, *, max_block_size: int = MAX_BLOCK_SIZE,
               verify: bool = True) -> tuple[list[Cid], list[tuple[Cid, bytes]]]:
    """Roots and blocks of a whole in-memory CAR."""
    import io

    stream = io.BytesIO(data)
    roots = read_header(stream)
    return roots, list(iter_car(stream, max_block_size=max_block_size, verify=verify))
