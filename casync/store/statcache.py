"""The stat cache (``statcache`` DB and its ``meta`` keys): what each file's lstat was when
it was last hashed, so unchanged files are never read again (docs/design.md §10.2)."""

from __future__ import annotations

import struct
from typing import Any

from casync.model.cid import Cid
from casync.store.env import LmdbEnv

__all__ = ["STAT_KEY", "STAT_KEY_SIZE", "StatCache", "StatEntry", "stat_records_digest"]

_STAT = struct.Struct("<qqqQIQ")  # mtime_ns, ctime_ns, size, inode, st_mode, tsize
STAT_KEY = struct.Struct("<qqqQI")  # the part compared against a fresh lstat
STAT_KEY_SIZE = STAT_KEY.size

StatEntry = tuple[int, int, int, int, int, int, Cid]
"""(mtime_ns, ctime_ns, size, inode, st_mode, tsize, cid) of a file when it was last hashed."""


def stat_records_digest(records: bytes | bytearray) -> bytes:
    """blake3 of canonical stat records (path, NUL, packed stat key; sorted by path)."""
    import blake3

    return bytes(blake3.blake3(records).digest())


class StatCache(LmdbEnv):
    """Stat-cache reads and wholesale replacement."""

    def load_stat_cache(self) -> dict[str, StatEntry]:
        out: dict[str, StatEntry] = {}
        size = _STAT.size
        with self.env.begin(buffers=True) as txn:
            for key, value in txn.cursor(db=self._dbs["statcache"]):
                v = bytes(value)
                out[bytes(key).decode("utf-8", "surrogateescape")] = (*_STAT.unpack_from(v), v[size:])
        return out

    def load_stat_cache_raw(self) -> dict[str, bytes]:
        """``{path: packed value}``: the first :data:`STAT_KEY_SIZE` bytes are the packed
        stat key, so an unchanged-tree check compares bytes without unpacking."""
        with self.env.begin() as txn:
            return {k.decode("utf-8", "surrogateescape"): v
                    for k, v in txn.cursor(db=self._dbs["statcache"]).iternext()}

    def stat_cache_digest(self) -> bytes | None:
        """The digest of the stat cache's records in the form ``worktree.native_stat_records``
        produces, so an unchanged tree is recognised without loading the cache."""
        return self.get("meta", b"statcache_digest")

    def refresh_stat_cache_digest(self) -> None:
        """Recompute the digest from the cache itself (caches written before the digest
        existed have none).  Caller holds the writer lock."""
        def fn(txn: Any) -> None:
            records = bytearray()  # compact: ~60 bytes a file, no object per piece
            for key, value in txn.cursor(db=self._dbs["statcache"]).iternext():
                records += key
                records += b"\0"
                records += value[:STAT_KEY_SIZE]
            txn.put(b"statcache_digest", stat_records_digest(records), db=self._dbs["meta"])
        self.write(fn)

    def stat_cache_complete(self) -> bool:
        """Whether the cache, when it describes a tree, names every file of it (as every
        write since casync knew ignore rules only for untracked files does)."""
        return self.get("meta", b"statcache_complete") is not None

    def stat_cache_tracks(self, path: str, is_dir: bool) -> bool:
        """Does the stat cache name ``path`` (a directory: a file under it)?  When it
        describes a tree (``statcache_tree``) it names every file of that tree."""
        key = path.encode("utf-8", "surrogateescape") + (b"/" if is_dir else b"")
        with self.env.begin() as txn:
            if not is_dir:
                return txn.get(key, db=self._dbs["statcache"]) is not None
            cur = txn.cursor(db=self._dbs["statcache"])
            return bool(cur.set_range(key)) and bytes(cur.key()).startswith(key)

    def save_stat_cache(self, entries: dict[str, StatEntry], tree: Cid | None, commit: Cid | None = None) -> None:
        """Replace the stat cache; ``tree`` is the tree whose files it describes exactly —
        ``entries`` then name every file of it, an untrusted one with ``st_mode`` 0 — (and
        ``commit`` a commit with that tree, so status can skip decoding HEAD)."""
        def fn(txn: Any) -> None:
            db = self._dbs["statcache"]
            txn.drop(db, delete=False)
            encoded = sorted((p.encode("utf-8", "surrogateescape"), e) for p, e in entries.items())
            records = bytearray()
            for key, (m, c, s, i, mode, tsize, cid) in encoded:
                value = _STAT.pack(m, c, s, i, mode, tsize)
                txn.put(key, value + cid, db=db, append=True)
                records += key
                records += b"\0"
                records += value[:STAT_KEY_SIZE]
            txn.put(b"statcache_digest", stat_records_digest(records), db=self._dbs["meta"])
            if tree is None:
                txn.delete(b"statcache_tree", db=self._dbs["meta"])
            else:
                txn.put(b"statcache_tree", tree, db=self._dbs["meta"])
            # caches of older versions describing a tree could leave out racy files
            txn.put(b"statcache_complete", b"1", db=self._dbs["meta"])
            if commit is None or tree is None:
                txn.delete(b"statcache_commit", db=self._dbs["meta"])
            else:
                txn.put(b"statcache_commit", commit, db=self._dbs["meta"])
        self.write(fn)
