"""The stat cache (``statcache`` DB and its ``meta`` keys): what each file's lstat was when
it was last hashed, so unchanged files are never read again (docs/design.md §10.2)."""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from casync.model.cid import Cid
from casync.store.env import LmdbEnv

__all__ = ["STAT_KEY", "STAT_KEY_SIZE", "StatCache", "StatEntry", "StatReader", "StatSpool", "stat_entry",
           "stat_records_digest"]

_STAT = struct.Struct("<qqqQIQ")  # mtime_ns, ctime_ns, size, inode, st_mode, tsize
STAT_KEY = struct.Struct("<qqqQI")  # the part compared against a fresh lstat
STAT_KEY_SIZE = STAT_KEY.size

StatEntry = tuple[int, int, int, int, int, int, Cid]
"""(mtime_ns, ctime_ns, size, inode, st_mode, tsize, cid) of a file when it was last hashed."""


def stat_entry(value: bytes) -> StatEntry:
    """A stat cache value (the packed stat data, then the CID) as a :data:`StatEntry`."""
    return (*_STAT.unpack_from(value), value[_STAT.size:])


def stat_records_digest(records: bytes | bytearray) -> bytes:
    """blake3 of canonical stat records (path, NUL, packed stat key; sorted by path)."""
    import blake3

    return bytes(blake3.blake3(records).digest())


_SPOOL_BATCH = 65_536  # records a transaction (each syncs): bounds the batch (~15 MiB) and dirty pages (~7 MiB)
_LEN = struct.Struct("<HH")  # key length, value length of one spooled record


class StatSpool:
    """A new stat cache being collected, in path order, in a temporary file (not in
    memory: a commit of 1,000,000 files would hold ~250 MiB of Python tuples), with its
    digest computed as records arrive.  Written out by :meth:`StatCache.save_stat_spool`
    once the commit it describes is in."""

    def __init__(self, directory: Path) -> None:
        import tempfile  # commit-only: status and the read commands start without it (and shutil)

        import blake3

        self._file = tempfile.TemporaryFile(dir=directory, prefix="statspool-")  # noqa: SIM115 (closed by close())
        self._digest = blake3.blake3()
        self._last: bytes | None = None
        self.count = 0

    def add(self, path: str, entry: StatEntry) -> None:
        """Append ``path``'s entry; paths must come in increasing UTF-8 byte order."""
        key = path.encode("utf-8", "surrogateescape")
        if self._last is not None and key <= self._last:
            raise ValueError(f"stat spool out of order: {path!r} after {self._last!r}")
        self._last = key
        m, c, s, i, mode, tsize, cid = entry
        value = _STAT.pack(m, c, s, i, mode, tsize) + cid
        self._file.write(_LEN.pack(len(key), len(value)) + key + value)
        self._digest.update(key + b"\0" + value[:STAT_KEY_SIZE])
        self.count += 1

    def digest(self) -> bytes:
        return bytes(self._digest.digest())

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        f = self._file
        f.flush()
        f.seek(0)
        while head := f.read(_LEN.size):
            klen, vlen = _LEN.unpack(head)
            body = f.read(klen + vlen)
            yield body[:klen], body[klen:]

    def close(self) -> None:
        self._file.close()


class StatReader:
    """``reader(path)``: the stat cache's entry for ``path``, through one read transaction
    that :meth:`renew` moves to the newest data (a read transaction held open pins every
    page written meanwhile: a long commit's flushes would grow the file by a copy each)."""

    def __init__(self, env: Any, db: Any) -> None:
        self._env = env
        self._db = db
        self._txn = env.begin()

    def __call__(self, path: str) -> StatEntry | None:
        v = self._txn.get(path.encode("utf-8", "surrogateescape"), db=self._db)
        return None if v is None else stat_entry(v)

    def renew(self) -> None:
        self._txn.abort()
        self._txn = self._env.begin()

    def close(self) -> None:
        self._txn.abort()


class StatCache(LmdbEnv):
    """Stat-cache reads and wholesale replacement."""

    def load_stat_cache(self) -> dict[str, StatEntry]:
        with self.env.begin() as txn:
            return {key.decode("utf-8", "surrogateescape"): stat_entry(value)
                    for key, value in txn.cursor(db=self._dbs["statcache"]).iternext()}

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

    @contextlib.contextmanager
    def stat_cache_records(self) -> Iterator[Iterator[tuple[bytes, bytes]]]:
        """The cache's (path, packed value) records in UTF-8 path order, through one read
        transaction (status merges them with a walk's records without loading the cache)."""
        with self.env.begin() as txn:
            yield txn.cursor(db=self._dbs["statcache"]).iternext()

    def refresh_stat_cache_digest(self) -> None:
        """Recompute the digest from the cache itself (caches written before the digest
        existed have none).  Caller holds the writer lock."""
        self.write(self._put_digest)

    def _put_digest(self, txn: Any) -> None:
        txn.put(b"statcache_digest", self._digest(txn), db=self._dbs["meta"])

    def _digest(self, txn: Any) -> bytes:
        import blake3

        digest = blake3.blake3()  # fed record by record: nothing a file is held
        for key, value in txn.cursor(db=self._dbs["statcache"]).iternext():
            digest.update(key + b"\0" + value[:STAT_KEY_SIZE])
        return bytes(digest.digest())

    def move_stat_cache(self, old_tree: Cid | None, new_tree: Cid, commit: Cid | None, removed: set[str],
                        entries: dict[str, StatEntry]) -> bool:
        """After the working tree moved from ``old_tree`` to ``new_tree``: drop the entries of
        ``removed`` paths and write ``entries`` (every file the move wrote, and those it kept
        dirty), in one transaction, so the cache describes ``new_tree`` without a write of
        every file's entry.  False (nothing written) unless the cache described ``old_tree``
        completely: then the caller writes a whole new cache.  Caller holds the writer lock."""
        db, meta = self._dbs["statcache"], self._dbs["meta"]

        def fn(txn: Any) -> bool:
            if (old_tree is None or txn.get(b"statcache_tree", db=meta) != old_tree
                    or txn.get(b"statcache_complete", db=meta) is None):
                return False
            for path in removed:
                txn.delete(path.encode("utf-8", "surrogateescape"), db=db)
            for path, (m, c, s, i, mode, tsize, cid) in entries.items():
                txn.put(path.encode("utf-8", "surrogateescape"), _STAT.pack(m, c, s, i, mode, tsize) + cid, db=db)
            self._put_cache_meta(txn, self._digest(txn), new_tree, commit)
            return True
        return bool(self.write(fn))

    def update_stat_cache(self, entries: dict[str, StatEntry], tree: Cid) -> bool:
        """Give files of ``tree`` new stat data (touched, content unchanged: each entry's CID is
        the tree's), keeping the cache's description of ``tree``.  Does nothing (False) when
        the cache no longer describes ``tree`` (a commit or checkout came in between).  Caller
        holds the writer lock."""
        db, meta = self._dbs["statcache"], self._dbs["meta"]

        def fn(txn: Any) -> bool:
            if txn.get(b"statcache_tree", db=meta) != tree:
                return False
            for path, (m, c, s, i, mode, tsize, cid) in entries.items():
                key = path.encode("utf-8", "surrogateescape")
                if txn.get(key, db=db) is not None:  # (never adds a file: the cache names the tree's)
                    txn.put(key, _STAT.pack(m, c, s, i, mode, tsize) + cid, db=db)
            self._put_digest(txn)
            return True
        return bool(self.write(fn))

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

    @contextlib.contextmanager
    def stat_cache_reader(self) -> Iterator[StatReader]:
        """Point lookups in the stat cache (a streamed commit asks about each file as it
        reaches it instead of loading the cache)."""
        reader = StatReader(self.env, self._dbs["statcache"])
        try:
            yield reader
        finally:
            reader.close()

    def save_stat_spool(self, spool: StatSpool, tree: Cid | None, commit: Cid | None = None) -> None:
        """Replace the stat cache with ``spool``'s records (as :meth:`save_stat_cache`), in
        transactions of at most ``_SPOOL_BATCH`` records.  The first drops the old cache and
        its meta keys and the last writes them, so a cache cut short by a kill describes no
        tree (and every entry it holds is one this commit stored)."""
        db = self._dbs["statcache"]
        records = spool.records()
        first, last = True, False
        while not last:
            batch = list(itertools.islice(records, _SPOOL_BATCH))
            last = len(batch) < _SPOOL_BATCH

            def fn(txn: Any, batch: list[tuple[bytes, bytes]] = batch, first: bool = first, last: bool = last
                   ) -> None:
                if first:
                    txn.drop(db, delete=False)
                    txn.delete(b"statcache_digest", db=self._dbs["meta"])
                    txn.delete(b"statcache_tree", db=self._dbs["meta"])
                    txn.delete(b"statcache_commit", db=self._dbs["meta"])
                for key, value in batch:
                    txn.put(key, value, db=db, append=True)
                if last:
                    self._put_cache_meta(txn, spool.digest(), tree, commit)
            self.write(fn)
            self.release_map()
            first = False

    def _put_cache_meta(self, txn: Any, digest: bytes, tree: Cid | None, commit: Cid | None) -> None:
        txn.put(b"statcache_digest", digest, db=self._dbs["meta"])
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
            self._put_cache_meta(txn, stat_records_digest(records), tree, commit)
        self.write(fn)
