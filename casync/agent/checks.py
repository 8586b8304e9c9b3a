"""The checks every part of ``casync.toml`` shares: each failure is a :class:`UsageError` naming the
key, the value and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from casync.errors import UsageError
from casync.model.names import is_replica_name

__all__ = ["NAME", "bad", "choice", "parse_duration", "replica_id", "string", "table"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)


def bad(key: str, value: Any, allowed: str) -> UsageError:
    return UsageError(f"casync.toml: {key} = {_shown(value)}: {allowed}",
                      hint="see docs/configuration.md for every key and its allowed values")


def parse_duration(key: str, value: Any) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``: a unit is required, so a
    bare number never means a surprise unit."""
    allowed = 'must be a duration such as "500ms", "30s", "5m" or "1h30m" (units ms, s, m, h, d)'
    if not isinstance(value, str) or not value.strip():
        raise bad(key, value, allowed)
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            raise bad(key, value, allowed)
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise bad(key, value, allowed)
    return total


def table(raw: Mapping[str, Any], key: str, fields: tuple[str, ...]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise bad(key, value, f"must be a table with keys {', '.join(fields)}")
    for name in value:
        if name not in fields:
            raise bad(f"{key}.{name}", value[name], f"unknown key (allowed: {', '.join(fields)})")
    return value


def string(key: str, value: Any, allowed: str = "must be a non-empty string") -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(key, value, allowed)
    return value


def choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise bad(key, value, "must be one of " + ", ".join(repr(c) for c in choices))
    return str(value)


def replica_id(key: str, value: Any) -> str:
    if not isinstance(value, str) or not is_replica_name(value):
        raise bad(key, value, "must be a replica id: 1-64 letters, digits, '.', '_' or '-'")
    return value
