"""Framed CAR replies (``casync-frames/1``): a fetch's CAR cut into frames, each sent as it
is or zstd-compressed, chosen per frame.

One zstd stream over the whole CAR (the reply older clients get) costs the server a
compression pass over every byte even when the bytes are random (file contents usually
are: already compressed media, archives), and the client a decompression pass; on
loopback that, not the link, bounded a clone.  A client that sends
``X-Casync-Frames: 1`` gets instead ``Content-Type:`` :data:`FRAMES_TYPE` and a body of
frames::

    kind (1 byte: 0 stored, 1 zstd)  length (4 bytes, big-endian)  payload

The payloads, in order (a zstd payload decompressed), are the CAR, byte for byte: the
client reads it with the same strict CAR reader, so every block is still hash-checked
against its CID and every receiving check still runs.  A stored payload is at most
:data:`MAX_FRAME` bytes, and so is a zstd payload decompressed (its frame must declare
its size; a frame that expands past the bound is refused, as is a truncated one).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import zstandard

from casync.errors import InvalidObject
from casync.model.car import TruncatedCar, car_parts
from casync.model.cid import Cid

__all__ = ["FRAMES_HEADER", "FRAMES_TYPE", "MAX_FRAME", "FrameReader", "frame_batches"]

FRAMES_HEADER = "X-Casync-Frames"
"""Request header (value ``1``) by which a client asks for a framed reply."""
FRAMES_TYPE = "application/vnd.casync.car-frames; version=1"
MAX_FRAME = 8 << 20
"""Most bytes of CAR one frame carries (a batch of blocks is about 1 MiB; one block <= 1 MiB)."""
FRAME_TARGET = 2 << 20  # a frame holds blocks up to this many bytes (or one larger block)
STORED, ZSTD = 0, 1
_HEAD = struct.Struct(">BI")
_SAMPLE = 16 << 10  # bytes of a batch compressed to decide whether compressing it is worth it
_LARGE = 64 << 10  # a block this big is yielded on its own, not copied into a joined piece
_WORTH = 0.9  # compress a batch only if its sample shrinks below this fraction


def _worth_compressing(parts: list[bytes | memoryview], cctx: zstandard.ZstdCompressor) -> bool:
    """Whether zstd shrinks a sample of the batch: the middle of its largest block (random
    bytes do not shrink), or its first bytes when every block is small."""
    big = max(parts, key=len)
    if len(big) >= _SAMPLE:
        mid = (len(big) - _SAMPLE) // 2
        sample = bytes(memoryview(big)[mid : mid + _SAMPLE])
    else:
        sample = b"".join(parts)[: 4 * _SAMPLE]
    return len(sample) >= 64 and len(cctx.compress(sample)) < _WORTH * len(sample)


def frame_batches(roots: list[Cid], batches: Iterable[list[tuple[Cid, bytes]]], level: int = 3
                  ) -> Iterator[bytes]:
    """The framed reply: the CAR header and each batch of blocks as one frame (stored, or
    zstd when a sample of it compresses); pieces are yielded without joining a stored batch."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    first = True
    for batch in _within_frames(batches):
        parts = car_parts(roots, batch) if first else car_parts([], batch)[1:]
        first = False
        size = sum(len(p) for p in parts)
        if size == 0:
            continue
        if _worth_compressing(parts, cctx):
            packed = cctx.compress(b"".join(parts))
            yield _HEAD.pack(ZSTD, len(packed)) + packed
        else:
            yield from _pieces(_HEAD.pack(STORED, size), parts)
    if first:  # no block at all: the header alone
        header = car_parts(roots, [])[0]
        yield _HEAD.pack(STORED, len(header)) + bytes(header)


def _within_frames(batches: Iterable[list[tuple[Cid, bytes]]]) -> Iterator[list[tuple[Cid, bytes]]]:
    """``batches`` cut so that no frame's CAR sections pass :data:`FRAME_TARGET` bytes but for
    a single block (at most ``MAX_BLOCK_SIZE``): a ``/v1/blocks`` answer is one batch of up to
    1024 blocks, and a fetch batch of tiny blocks is mostly section heads; every frame stays
    under :data:`MAX_FRAME`."""
    for batch in batches:
        group: list[tuple[Cid, bytes]] = []
        size = 0
        for item in batch:
            cost = len(item[0]) + len(item[1]) + 10  # its section in the CAR, length prefix included
            if group and size + cost > FRAME_TARGET:
                yield group
                group, size = [], 0
            group.append(item)
            size += cost
        if group:
            yield group


def _pieces(head: bytes, parts: list[bytes | memoryview]) -> Iterator[bytes]:
    """``head`` and ``parts`` as few pieces as possible without copying a large block: each
    piece costs waitress a lock and a wake-up of its event loop (small blocks are joined)."""
    pending: list[bytes | memoryview] = [head]
    for part in parts:
        if len(part) >= _LARGE:
            if pending:
                yield b"".join(pending)
                pending = []
            yield part if isinstance(part, bytes) else bytes(part)
        else:
            pending.append(part)
    if pending:
        yield b"".join(pending)


class FrameReader(io.RawIOBase):
    """The CAR inside a framed reply, as a raw stream (wrap it in a ``BufferedReader``)."""

    def __init__(self, stream: Any, where: str) -> None:
        self._stream = stream
        self._where = where
        self._stored = 0  # bytes of the current stored frame still to read
        self._buf = memoryview(b"")  # the rest of the current decompressed frame
        self._dctx = zstandard.ZstdDecompressor()

    def readable(self) -> bool:
        return True

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            piece = self._stream.read(n - len(out))
            if not piece:
                break
            out += piece
        return bytes(out)

    def _next_frame(self) -> bool:
        """Read the next frame's head (and a zstd payload); False at the end of the reply."""
        head = self._exact(_HEAD.size)
        if not head:
            return False
        if len(head) < _HEAD.size:
            raise TruncatedCar(f"framed reply from {self._where} ends inside a frame header")
        kind, length = _HEAD.unpack(head)
        if kind == STORED:
            if length > MAX_FRAME:
                raise InvalidObject(f"framed reply from {self._where}: a frame of {length} bytes "
                                    f"(at most {MAX_FRAME})")
            self._stored = length
            return True
        if kind != ZSTD:
            raise InvalidObject(f"framed reply from {self._where}: unknown frame kind {kind}")
        if length > MAX_FRAME:
            raise InvalidObject(f"framed reply from {self._where}: a zstd frame of {length} bytes")
        payload = self._exact(length)
        if len(payload) < length:
            raise TruncatedCar(f"framed reply from {self._where} ends inside a frame")
        try:
            declared = zstandard.frame_content_size(payload)
            if declared < 0 or declared > MAX_FRAME:
                raise InvalidObject(f"framed reply from {self._where}: a zstd frame without its size "
                                    f"or over {MAX_FRAME} bytes")
            self._buf = memoryview(self._dctx.decompress(payload, max_output_size=MAX_FRAME))
        except zstandard.ZstdError as exc:
            raise InvalidObject(f"framed reply from {self._where}: corrupt zstd frame ({exc})") from None
        return True

    def readinto(self, b: Any) -> int:
        want = len(b)
        while True:
            if self._buf:
                n = min(want, len(self._buf))
                b[:n] = self._buf[:n]
                self._buf = self._buf[n:]
                return n
            if self._stored:
                n = self._stream.readinto(memoryview(b)[: min(want, self._stored)])
                if not n:
                    raise TruncatedCar(f"framed reply from {self._where} ends inside a frame")
                self._stored -= n
                return int(n)
            if not self._next_frame():
                return 0

