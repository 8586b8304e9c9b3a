"""Refs and the reflog: every ref change is a compare-and-swap in one LMDB write
transaction (LMDB serialises writers) that also appends the reflog entry."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from casync.model.cid import Cid, cid_str
from casync.store.base import RefLogEntry, ref_moved
from casync.store.env import LmdbEnv

__all__ = ["LmdbRefStore"]


class LmdbRefStore:
    """Refs in the ``refs`` DB; every change is a compare-and-swap inside a write
    transaction (LMDB serialises writers), logged to the ``reflog`` DB."""

    def __init__(self, store: LmdbEnv) -> None:
        self._store = store

    def get_ref(self, name: str) -> Cid | None:
        return self._store.get("refs", name.encode())

    def list_refs(self, prefix: str = "") -> dict[str, Cid]:
        return {k.decode(): v for k, v in self._store.items("refs", prefix.encode())}

    def cas_ref(self, name: str, old: Cid | None, new: Cid | None, reason: str) -> None:
        refs, meta = self._store.db("refs"), self._store.db("meta")
        key = name.encode()

        def fn(txn: Any) -> None:
            current = txn.get(key, db=refs)
            current = bytes(current) if current is not None else None
            if current != old:
                raise ref_moved(name, old, current)
            if new is None:
                txn.delete(key, db=refs)
            else:
                txn.put(key, new, db=refs)
            self._log(txn, key, old, new, reason)
            if bytes(txn.get(b"HEAD", db=meta) or b"heads/main") == key:
                self._log(txn, b"HEAD", old, new, reason)  # HEAD's reflog: every move of HEAD

        self._store.write(fn)

    def set_head(self, value: bytes, reason: str) -> None:
        """Point HEAD (meta ``HEAD``) at ``heads/<branch>`` or ``detached:<CID>``, logging
        the move in HEAD's reflog (ref name ``HEAD``) when the value changes."""
        refs, meta = self._store.db("refs"), self._store.db("meta")

        def target(txn: Any, raw: bytes) -> Cid | None:
            if raw.startswith(b"detached:"):
                return raw[len(b"detached:"):] or None
            found = txn.get(raw, db=refs)
            return bytes(found) if found is not None else None

        def fn(txn: Any) -> None:
            current = bytes(txn.get(b"HEAD", db=meta) or b"heads/main")
            if current == value:
                return
            txn.put(b"HEAD", value, db=meta)
            self._log(txn, b"HEAD", target(txn, current), target(txn, value), reason)

        self._store.write(fn)

    def _log(self, txn: Any, key: bytes, old: Cid | None, new: Cid | None, reason: str) -> None:
        entry = {"old": cid_str(old) if old else None, "new": cid_str(new) if new else None,
                 "time_ms": int(time.time() * 1000), "reason": reason}
        log = self._store.db("reflog")
        cur = txn.cursor(db=log)
        seq = 0
        if cur.set_range(key + b"\x00\xff"):
            pass
        if cur.prev() and bytes(cur.key()).startswith(key + b"\x00"):
            seq = struct.unpack(">Q", bytes(cur.key())[len(key) + 1 :])[0] + 1
        txn.put(key + b"\x00" + struct.pack(">Q", seq), json.dumps(entry).encode(), db=log)

    def reflog(self, name: str) -> list[RefLogEntry]:
        from casync.model.cid import parse_cid

        out = []
        for _k, v in self._store.items("reflog", name.encode() + b"\x00"):
            e = json.loads(v)
            out.append(RefLogEntry(name, parse_cid(e["old"]) if e["old"] else None,
                                   parse_cid(e["new"]) if e["new"] else None, e["time_ms"], e["reason"]))
        return out

