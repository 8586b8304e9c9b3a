"""Content-defined and fixed-size chunking of byte streams.

FastCDC (pyfastcdc, Cython) cuts at content-defined points so an insertion shifts
only the chunks around it; the fixed-size chunker (256 KiB) reproduces
``ipfs add --chunker=size-262144``.  Both read with ``readinto`` into one reusable
buffer, so memory stays bounded whatever the file size.  A chunk's ``data`` is a
memoryview valid only until the next chunk is requested: consume it immediately.

:meth:`Chunker.cut` cuts a whole buffer in one call (the ingest pipeline,
:mod:`casync.trees.ingest`, reads big blocks and carries the uncut tail into the next);
it gives exactly the chunks :meth:`Chunker.chunks` gives for the same bytes, because a
cut never looks more than ``lookahead`` bytes past where its chunk starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from casync.errors import UsageError

__all__ = [
    "CDC_AVG_PARAM",
    "CDC_MAX",
    "CDC_MIN",
    "CHUNKERS",
    "FIXED_SIZE",
    "Chunker",
    "Readable",
    "chunker_for",
]

CDC_MIN = 64 * 1024
CDC_MAX = 1024 * 1024
# pyfastcdc's mean chunk size is avg_size + min_size (cut-point skipping); 192 KiB
# here gives the 256 KiB mean of the design (measured: 273 KiB on random data).
CDC_AVG_PARAM = 192 * 1024
FIXED_SIZE = 256 * 1024
CHUNKERS = ("cdc", "fixed")


class Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


class Chunker(Protocol):
    name: str
    single_chunk_limit: int
    """Inputs up to this size are always exactly one chunk (callers may skip chunking)."""

    lookahead: int
    """A cut depends on at most this many bytes from where its chunk starts (the largest chunk)."""

    def chunks(self, stream: Readable) -> Iterator[memoryview]: ...

    def cut(self, buf: memoryview, final: bool) -> list[int]:
        """Where the chunks starting in ``buf`` end (offsets into ``buf``, increasing).  Unless
        ``final`` (``buf`` ends the input), a chunk is cut only where ``lookahead`` bytes
        follow its start, so the bytes after the last end must be carried into the next call."""
        ...


class FastCDCChunker:
    name = "cdc"
    single_chunk_limit = CDC_MIN
    lookahead = CDC_MAX

    def __init__(self) -> None:
        import pyfastcdc  # Cython; imported on first use to keep CLI start-up short

        self._cdc = pyfastcdc.FastCDC(CDC_AVG_PARAM, min_size=CDC_MIN, max_size=CDC_MAX)

    def chunks(self, stream: Readable) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_stream(stream):  # type: ignore[arg-type]
            yield chunk.data

    def cut(self, buf: memoryview, final: bool) -> list[int]:
        # pyfastcdc's cut looks at min(len(rest), max_size) bytes: with max_size of them left
        # it cuts as it would in the whole stream; with fewer, only at the true end.
        need = 0 if final else CDC_MAX
        size = len(buf)
        ends: list[int] = []
        for chunk in self._cdc.cut_buf(buf):
            if size - chunk.offset < need:
                break
            ends.append(chunk.offset + chunk.length)
        return ends


class FixedChunker:
    name = "fixed"

    def __init__(self, size: int = FIXED_SIZE) -> None:
        self._size = size
        self.single_chunk_limit = size
        self.lookahead = size

    def chunks(self, stream: Readable) -> Iterator[memoryview]:
        buf = bytearray(self._size)
        view = memoryview(buf)
        while True:
            filled = 0
            while filled < self._size:
                n = stream.readinto(view[filled:])
                if not n:
                    break
                filled += n
            if filled:
                yield view[:filled]
            if filled < self._size:
                return

    def cut(self, buf: memoryview, final: bool) -> list[int]:
        size = len(buf)
        ends = list(range(self._size, size + 1, self._size))
        if final and size % self._size:
            ends.append(size)
        return ends


def chunker_for(name: str) -> Chunker:
    if name == "cdc":
        return FastCDCChunker()
    if name == "fixed":
        return FixedChunker()
    raise UsageError(f"unknown chunker {name!r}", hint=f"use one of: {', '.join(CHUNKERS)}")
