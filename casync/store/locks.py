"""The single-writer lock: an exclusive ``flock`` on ``.casync/lock`` (processes) plus a
re-entrant thread lock (threads); readers never take it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from casync.store.env import INITIAL_MAP_SIZE, MAX_MAP_SIZE, LmdbEnv

__all__ = ["WriterLock", "process_gone"]


def process_gone(pid: int) -> bool:
    """No process ``pid`` runs on this host (a temporary name it left may be removed).
    Conservative: a process of another user counts as running, and so does this one."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class WriterLock(LmdbEnv):
    """``writer_lock`` / ``try_writer_lock`` of the store."""

    def __init__(self, root: Path, *, create: bool = False, map_size: int = INITIAL_MAP_SIZE,
                 max_map_size: int = MAX_MAP_SIZE) -> None:
        super().__init__(root, create=create, map_size=map_size, max_map_size=max_map_size)
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._thread_lock = threading.RLock()  # flock excludes processes; this, threads

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive across processes (flock) and threads, re-entrant within a thread."""
        self._thread_lock.acquire()
        if self._lock_depth == 0:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                self._thread_lock.release()
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self.end_write_session()
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
            self._thread_lock.release()

    @contextlib.contextmanager
    def try_writer_lock(self) -> Iterator[bool]:
        """Take the writer lock only if it is free; yields whether it was taken."""
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        if self._lock_depth:
            try:
                yield True
            finally:
                self._thread_lock.release()
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._thread_lock.release()
            yield False
            return
        self._lock_fd, self._lock_depth = fd, 1
        try:
            yield True
        finally:
            self.end_write_session()
            self._lock_depth = 0
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._thread_lock.release()
