"""Linux inotify through ctypes on libc (inotify_init1, inotify_add_watch): the monitor
daemon's only adapter to the kernel, so casync needs no extra dependency for it."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["IN_ATTRIB", "IN_CREATE", "IN_DELETE", "IN_DELETE_SELF", "IN_IGNORED", "IN_ISDIR", "IN_MOVED_FROM",
           "IN_MOVED_TO", "IN_MOVE_SELF", "IN_Q_OVERFLOW", "WATCH_MASK", "Event", "Inotify", "max_user_watches"]

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ISDIR = 0x01000000, 0x02000000, 0x04000000, 0x40000000
# every event that can change what a walk finds: not access, open or close-without-write
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Event(NamedTuple):
    wd: int
    mask: int
    name: str


def max_user_watches() -> int | None:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class Inotify:
    """One non-blocking inotify instance; ``read`` returns what is queued (empty: nothing)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(self._libc, "inotify_init1"):
            raise OSError(errno.ENOSYS, "inotify is not available on this system (Linux only)")
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd

    def add_watch(self, path: str, mask: int = WATCH_MASK) -> int:
        """The watch descriptor for ``path`` (the same one again for an inode already watched)."""
        wd: int = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def read(self) -> list[Event]:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return []
            raise
        return list(_parse(data))

    def close(self) -> None:
        os.close(self.fd)


def _parse(data: bytes) -> Iterator[Event]:
    at = 0
    while at + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        name = data[at:at + length].split(b"\0", 1)[0]
        at += length
        yield Event(wd, mask, os.fsdecode(name))
