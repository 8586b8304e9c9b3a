"""The shared LMDB environment under ``.casync/db`` and its transaction helpers.

py-lmdb allows one ``Environment`` per path per process, so environments are shared and
refcounted here; every table module (refs, packs' index, stat cache, commit graph) goes
through :class:`LmdbEnv` for its transactions, which grows the map when it fills.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from casync.errors import StorageError, StorageFull

_MADV_DONTNEED = 4  # <sys/mman.h> on Linux

__all__ = ["DB_NAMES", "DISK_FULL", "INITIAL_MAP_SIZE", "MAX_MAP_SIZE", "NEARLY_FULL_BYTES", "LmdbEnv",
           "disk_nearly_full"]

INITIAL_MAP_SIZE = 1 << 32
MAX_MAP_SIZE = 1 << 40
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DB_NAMES = ("index", "refs", "reflog", "config", "meta", "statcache", "commitgraph", "commitreach")

_T = TypeVar("_T")
_ENVS: dict[str, list[Any]] = {}  # realpath -> [env, refcount, {db name: handle}]
_ENVS_LOCK = threading.Lock()


NEARLY_FULL_BYTES = 1 << 20
"""Free space below which an EIO from LMDB is read as a full disk (a short write)."""


def disk_nearly_full(path: Path) -> bool:
    """The file system holding ``path`` has less than :data:`NEARLY_FULL_BYTES` free for
    this user (an EIO there is a short write, not a failing disk)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES


def _open_env(path: Path, create: bool, map_size: int) -> tuple[Any, dict[str, Any]]:
    """py-lmdb allows one Environment per path per process: share it, refcounted.

    Named databases are opened once per environment, under the registry lock: opening
    them runs a write transaction, and concurrent ones from several threads deadlock.
    """
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        held = _ENVS.get(key)
        if held is not None:
            held[1] += 1
            return held[0], held[2]
        if not os.path.exists(os.path.join(key, "lock.mdb")) and disk_nearly_full(path):
            # LMDB maps its new lock file: on a full disk touching it is a SIGBUS, not an error
            raise StorageFull(f"disk full: cannot create the store at {key}",
                              hint=f"free disk space (at least {NEARLY_FULL_BYTES >> 20} MiB) and retry; "
                                   "nothing was written")
        try:
            env = lmdb.open(key, map_size=map_size, max_dbs=16, subdir=True, create=create,
                            readahead=False)
            dbs = {name: env.open_db(name.encode()) for name in DB_NAMES}
        except lmdb.Error as exc:
            code = getattr(exc, "code", 0)
            if code in DISK_FULL or (code == errno.EIO and disk_nearly_full(path)):
                raise StorageFull(f"disk full opening the store at {key} ({exc})",
                                  hint="free disk space and retry; nothing was committed") from None
            raise StorageError(f"cannot open the store at {key}: {exc}",
                               hint="check permissions and free disk space") from None
        _ENVS[key] = [env, 1, dbs]
        return env, dbs


def _close_env(env: Any) -> None:
    with _ENVS_LOCK:
        for key, held in list(_ENVS.items()):
            if held[0] is env:
                held[1] -= 1
                if held[1] == 0:
                    del _ENVS[key]
                    env.close()
                return


class LmdbEnv:
    """The environment of one ``.casync`` directory: named DBs, reads, and writes that
    grow the map instead of failing when it is full.

    ``map_size`` (the first map; it doubles when full, up to ``max_map_size``) is a
    parameter so tests can reach map growth and a map that may not grow with small stores.
    """

    def __init__(self, root: Path, *, create: bool = False, map_size: int = INITIAL_MAP_SIZE,
                 max_map_size: int = MAX_MAP_SIZE) -> None:
        self.root = root
        self.max_map_size = max_map_size
        self.db_path = root / "db"
        self.pack_dir = root / "packs"
        if create:
            self.db_path.mkdir(parents=True, exist_ok=True)
            self.pack_dir.mkdir(parents=True, exist_ok=True)
        self.env: Any = None
        self.env, self._dbs = _open_env(self.db_path, create, map_size)

    def release_map(self) -> None:
        """Drop this process's resident pages of the LMDB file map (Linux; elsewhere a no-op).

        The map is shared and read-only (LMDB writes with ``pwrite``), so a dropped page
        only faults back in from the page cache when read again; but every page a long
        write session looked at stays counted in the process's RSS until then: a commit
        of 1,000,000 files touches the whole block index (~100 MiB).  Called between the
        batches of such a session (:mod:`casync.worktree.stream`)."""
        target = " " + os.path.realpath(self.db_path / "data.mdb")
        try:
            with open("/proc/self/maps") as maps:
                ranges = [line.split(None, 1)[0] for line in maps if line.rstrip("\n").endswith(target)]
        except OSError:
            return
        if not ranges:
            return
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for span in ranges:
            start, end = (int(x, 16) for x in span.split("-"))
            madvise(start, end - start, _MADV_DONTNEED)

    def db(self, name: str) -> Any:
        return self._dbs[name]

    def write(self, fn: Callable[[Any], _T]) -> _T:
        """Run ``fn(txn)`` in a write transaction; grow the map and retry when it is full."""
        for _attempt in range(8):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                size = self.env.info()["map_size"]
                if size >= self.max_map_size:
                    raise StorageFull(f"LMDB map at {self.db_path} is full ({size} bytes); nothing was written",
                                      hint="'casync gc --prune now' frees the index entries of unreachable "
                                           "blocks (LMDB re-uses their pages); 'casync clone' into a new "
                                           "directory makes a fresh index of the reachable history") from None
                self.env.set_mapsize(min(size * 2, self.max_map_size))
            except lmdb.DiskError as exc:
                raise StorageFull(f"cannot write {self.db_path}: {exc}", hint="free disk space and retry") from None
            except lmdb.Error as exc:
                # py-lmdb reports I/O failures as a plain Error whose ``code`` is the errno;
                # LMDB turns a short write (the disk filled mid-write) into EIO
                if exc.code in DISK_FULL or (exc.code == errno.EIO and disk_nearly_full(self.db_path)):
                    raise StorageFull(f"disk full writing {self.db_path} ({exc})",
                                      hint="free disk space and retry; nothing was committed") from None
                if exc.code > 0:  # an errno (LMDB's own codes are negative: those are bugs)
                    raise StorageError(f"cannot write {self.db_path}: {exc.reason}; nothing was committed",
                                       hint="check the disk (dmesg) and the file system, then retry") from None
                raise
        raise StorageFull(f"LMDB map at {self.db_path} could not grow", hint="free disk space and retry")

    def get(self, db: str, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(key, db=self._dbs[db])
            return bytes(value) if value is not None else None

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.write(lambda txn: txn.put(key, value, db=self._dbs[db]))

    def items(self, db: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._dbs[db])
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out.append((bytes(key), bytes(value)))
        return out

    def items_count(self, db: str) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._dbs[db])["entries"])

    def end_write_session(self) -> None:
        """Called when the writer lock is released; the store drops its per-session state."""

    def close_env(self) -> None:
        if self.env is not None:
            _close_env(self.env)
            self.env = None
