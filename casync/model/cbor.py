"""A strict DAG-CBOR codec for the data model casync's own blocks use.

Why not only the ``dag_cbor`` package: it builds a validated ``multiformats.CID`` for every
link (``typing_validation`` runs on each), so decoding one commit costs about 0.5 ms, and
reading history (log, graph walks, sync, verification of received commits) decodes
commits all the time.  This module handles exactly the kinds casync writes — maps with
text keys, lists, text, byte strings, integers, booleans, null and links (tag 42) — and
is about ten times faster.  ``dag_cbor`` stays as the reference: the tests check that
both produce the same bytes.

Decoding is *strict*: only the canonical DAG-CBOR form is accepted (minimal-length
heads, definite lengths, map keys unique and in length-then-bytewise order, UTF-8 text,
tag 42 only, no floats or undefined, no trailing bytes), so one value has exactly one
encoding and a block that decodes is canonical with no re-encode to compare.
"""

from __future__ import annotations

import struct
from typing import Any

from casync.errors import InvalidObject
from casync.model.cid import is_cid

__all__ = ["Link", "decode", "encode"]

MAX_DEPTH = 32


class Link(bytes):
    """A link (CBOR tag 42) to the binary CID it holds; a plain ``bytes`` is a byte string."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Link({bytes(self).hex()})"


# --- encoding ------------------------------------------------------------------------------------

_HEADS = [bytes((i,)) for i in range(24)]


def _head(major: int, value: int) -> bytes:
    m = major << 5
    if value < 24:
        return bytes((m | value,))
    if value < 0x100:
        return bytes((m | 24, value))
    if value < 0x10000:
        return bytes((m | 25,)) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes((m | 26,)) + struct.pack(">I", value)
    if value < 0x10000000000000000:
        return bytes((m | 27,)) + struct.pack(">Q", value)
    raise ValueError(f"integer {value} does not fit DAG-CBOR's 64 bits")


def _map_key(item: tuple[bytes, Any]) -> tuple[int, bytes]:
    return len(item[0]), item[0]


def _encode(obj: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    # bool before int: True is an int in Python
    if obj is True or obj is False:
        out.append(b"\xf5" if obj else b"\xf4")
    elif obj is None:
        out.append(b"\xf6")
    elif isinstance(obj, int):
        if 0 <= obj < 24:
            out.append(_HEADS[obj])
        else:
            out.append(_head(0, obj) if obj >= 0 else _head(1, -1 - obj))
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        out += (_head(3, len(raw)), raw)
    elif isinstance(obj, Link):
        if not is_cid(bytes(obj)):
            raise ValueError(f"link holds no valid CID: {bytes(obj).hex()}")
        out += (b"\xd8\x2a", _head(2, len(obj) + 1), b"\x00", bytes(obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        out += (_head(2, len(raw)), raw)
    elif isinstance(obj, (list, tuple)):
        out.append(_head(4, len(obj)))
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"map key {k!r} is not a string")
            items.append((k.encode("utf-8"), v))
        items.sort(key=_map_key)
        out.append(_head(5, len(items)))
        for k, v in items:
            out += (_head(3, len(k)), k)
            _encode(v, out, depth + 1)
    else:
        raise ValueError(f"cannot encode {type(obj).__name__} as DAG-CBOR")


def encode(obj: Any) -> bytes:
    """Canonical DAG-CBOR bytes of ``obj`` (links as :class:`Link`)."""
    out: list[bytes] = []
    _encode(obj, out, 0)
    return b"".join(out)


# --- decoding ------------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, why: str) -> InvalidObject:
        return InvalidObject(f"not canonical DAG-CBOR: {why} at byte {self.pos}")

    def head(self) -> tuple[int, int]:
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise self.fail("truncated")
        ib = data[pos]
        major, ai = ib >> 5, ib & 31
        if ai < 24:
            self.pos = pos + 1
            return major, ai
        if ai > 27:
            raise self.fail("indefinite length or reserved head" if ai == 31 else "reserved head")
        if major == 7:
            raise self.fail("floats and simple values other than false/true/null are not allowed")
        size = 1 << (ai - 24)
        end = pos + 1 + size
        if end > len(data):
            raise self.fail("truncated")
        value = int.from_bytes(data[pos + 1 : end], "big")
        if value < (24 if size == 1 else 1 << (4 * size)):
            raise self.fail("integer or length not in its shortest form")
        self.pos = end
        return major, value

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.fail("truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def text(self, n: int) -> str:
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("text is not UTF-8") from None

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail("nested too deeply")
        major, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            return self.text(arg)
        if major == 4:
            if arg > len(self.data) - self.pos:
                raise self.fail("truncated")
            return [self.value(depth + 1) for _ in range(arg)]
        if major == 5:
            if arg > len(self.data) - self.pos:
                raise self.fail("truncated")
            out: dict[str, Any] = {}
            prev: bytes | None = None
            for _ in range(arg):
                kmajor, klen = self.head()
                if kmajor != 3:
                    raise self.fail("map key is not a string")
                raw = self.take(klen)
                if prev is not None and (len(prev), prev) >= (len(raw), raw):
                    raise self.fail("map keys repeated or not in canonical order")
                prev = raw
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.fail("map key is not UTF-8") from None
                out[key] = self.value(depth + 1)
            return out
        if major == 6:
            if arg != 42:
                raise self.fail(f"tag {arg} (only 42, a link, is allowed)")
            bmajor, blen = self.head()
            if bmajor != 2:
                raise self.fail("a link must hold a byte string")
            raw = self.take(blen)
            if not raw.startswith(b"\x00") or not is_cid(raw[1:]):
                raise self.fail("a link must hold 0x00 and a valid binary CID")
            return Link(raw[1:])
        # major 7 with a direct value
        if arg == 20:
            return False
        if arg == 21:
            return True
        if arg == 22:
            return None
        raise self.fail(f"simple value {arg} is not allowed")


def decode(data: bytes | memoryview) -> Any:
    """The value ``data`` encodes; :class:`InvalidObject` unless it is exactly one
    canonical DAG-CBOR value."""
    reader = _Reader(bytes(data))
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise reader.fail("trailing bytes")
    return value
