"""In-memory block and ref stores: real backends (not mocks), used by unit tests and
by applications that want a scratch repository."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from casync.errors import BlockNotFound
from casync.model.cid import Cid, cid_str
from casync.store.base import RefLogEntry, ref_moved

__all__ = ["MemoryBlockStore", "MemoryRefStore"]


class MemoryBlockStore:
    def __init__(self) -> None:
        self._blocks: dict[Cid, bytes] = {}
        self._lock = threading.Lock()

    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        with self._lock:
            if cid in self._blocks:
                return False
            self._blocks[cid] = bytes(data)
            return True

    def get(self, cid: Cid) -> bytes:
        try:
            return self._blocks[cid]
        except KeyError:
            raise BlockNotFound(cid_str(cid), "memory store") from None

    def has(self, cid: Cid) -> bool:
        return cid in self._blocks

    def has_many(self, cids: Iterable[Cid]) -> set[Cid]:
        return {c for c in cids if c in self._blocks}

    def delete(self, cid: Cid) -> None:
        with self._lock:
            self._blocks.pop(cid, None)

    def iter_cids(self) -> Iterator[Cid]:
        return iter(list(self._blocks))

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class MemoryRefStore:
    def __init__(self) -> None:
        self._refs: dict[str, Cid] = {}
        self._log: list[RefLogEntry] = []
        self._lock = threading.Lock()

    def get_ref(self, name: str) -> Cid | None:
        return self._refs.get(name)

    def list_refs(self, prefix: str = "") -> dict[str, Cid]:
        return {k: v for k, v in sorted(self._refs.items()) if k.startswith(prefix)}

    def cas_ref(self, name: str, old: Cid | None, new: Cid | None, reason: str) -> None:
        with self._lock:
            current = self._refs.get(name)
            if current != old:
                raise ref_moved(name, old, current)
            if new is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = new
            self._log.append(RefLogEntry(name, old, new, int(time.time() * 1000), reason))

    def reflog(self, name: str) -> list[RefLogEntry]:
        return [e for e in self._log if e.ref == name]
