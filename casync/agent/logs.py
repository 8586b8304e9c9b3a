"""Structured logs: one event per line, as JSON (``--log-format json``, for a log pipeline)
or as ``time level event key=value`` text (for a person at a terminal)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, TextIO

__all__ = ["AgentLog"]


class AgentLog:
    """Thread-safe event writer: every line is whole, whichever thread writes it."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.json = fmt == "json"
        self.stream = stream
        self._lock = threading.Lock()

    def event(self, level: str, event: str, message: str, **fields: Any) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        if self.json:
            line = json.dumps({"ts": stamp, "level": level, "event": event, "msg": message, **fields},
                              default=str, sort_keys=False)
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"{stamp} {level:7} {event}: {message}" + (f" ({extra})" if extra else "")
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def info(self, event: str, message: str, **fields: Any) -> None:
        self.event("info", event, message, **fields)

    def warning(self, event: str, message: str, **fields: Any) -> None:
        self.event("warning", event, message, **fields)

    def error(self, event: str, message: str, **fields: Any) -> None:
        self.event("error", event, message, **fields)
