"""The streamed ``multipart/form-data`` body of a ``dag/import`` upload."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence

__all__ = ["MultipartFile"]


class MultipartFile:
    """A ``multipart/form-data`` body holding one file made of ``parts``, streamed piece by
    piece: it has a length (so requests sends a Content-Length instead of re-framing every
    piece as an HTTP chunk) and can be iterated again when a request is retried.  This is
    the framing ipfshttpclient's ``multipart`` module produces, minus its copies."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        boundary = secrets.token_hex(16)
        self.headers = {"Content-Type": f'multipart/form-data; boundary="{boundary}"'}
        self._parts: list[bytes | memoryview] = [
            (f"--{boundary}\r\n"
             'Content-Disposition: form-data; name="file"; filename="batch.car"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode(),
            *(p for p in parts if len(p)),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
        self._size = sum(len(p) for p in self._parts)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self._parts)
