"""JSON from elsewhere (a peer's request or reply, a head record), parsed so that only
:class:`InvalidObject` escapes: malformed text, bytes that are not UTF-8, and nesting so
deep that the parser would exhaust the stack (``[[[[...`` 100,000 deep raises
``RecursionError`` in :func:`json.loads`) are all the same refusal.  Pure, no I/O."""

from __future__ import annotations

import json
import re
from typing import Any

from casync.errors import InvalidObject

__all__ = ["MAX_JSON_DEPTH", "content_length", "loads"]

MAX_JSON_DEPTH = 32
"""Deepest nesting a protocol message may use (the deepest casync writes is 3)."""

_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() also takes '²' and '٣'


def loads(data: bytes | str, what: str = "message") -> Any:
    """``json.loads(data)``, refusing anything nested deeper than :data:`MAX_JSON_DEPTH`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(raw) > MAX_JSON_DEPTH:
        raise InvalidObject(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidObject(f"{what} is not valid JSON") from None


def _depth(raw: bytes) -> int:
    """The deepest nesting of ``raw`` outside strings (stops counting past the limit)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def content_length(value: str | None) -> int:
    """A ``Content-Length`` header's value: ASCII digits only (absent: 0)."""
    if not value:
        return 0
    if not _DIGITS.fullmatch(value):
        raise InvalidObject(f"Content-Length {value[:20]!r} is not a number")
    return int(value)
