"""Files against committed entries by content, and room for a checkout before it writes.

A committed file need not have the layout casync's chunker would give its bytes (a file
imported from IPFS with another chunker, or one leaf linked 600 times): hashing it again
gives another CID for the same bytes.  :func:`same_content` compares the bytes on disk
with the committed file's, so ``status`` and ``commit`` keep the committed entry and such a
file is clean.  :func:`check_room` refuses, before anything is written, a checkout whose
files exceed the free space or the configured ``limits.max_file_bytes``: deduplication
makes a tiny bundle legally hold a huge file, so its size is checked where it would land.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable
from pathlib import Path

from casync.errors import BlockNotFound, CorruptBlock, InvalidObject, LimitExceeded, StorageFull
from casync.model.cid import RAW, cid_codec, cid_str
from casync.model.objects import MAX_BLOCK_SIZE
from casync.repo.repository import Repository
from casync.settings import limits
from casync.trees.unixfs import Entry, TreeChange, file_size
from casync.worktree.disk import FileStat

__all__ = ["check_room", "entry_size", "same_content"]

_READ = 1 << 20


def entry_size(repo: Repository, entry: Entry) -> int:
    """A file entry's size in bytes, from its root node (checked against its children when
    it arrived), never from a directory link's Tsize, which the sender chose; a raw leaf
    is one block of at most 1 MiB, taken at its Tsize (capped) without reading it."""
    if cid_codec(entry.cid) == RAW:
        return min(entry.tsize, MAX_BLOCK_SIZE)
    return file_size(repo.blocks, entry.cid)


def same_content(repo: Repository, entry: Entry, abs_path: str, st: FileStat | os.stat_result) -> bool:
    """Whether the regular file at ``abs_path`` (lstat ``st``) holds exactly the bytes of the
    committed file ``entry`` and did not change while being read (a committed block that
    is missing or damaged: no, and the caller hashes the file as before)."""
    if entry.kind != "file" or not stat_mod.S_ISREG(st.st_mode):
        return False
    try:
        return _same_bytes(repo, entry, abs_path, st)
    except (OSError, BlockNotFound, CorruptBlock, InvalidObject):
        return False


def _same_bytes(repo: Repository, entry: Entry, abs_path: str, st: FileStat | os.stat_result) -> bool:
    if file_size(repo.blocks, entry.cid) != st.st_size:
        return False
    fd = os.open(abs_path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        before = os.fstat(fd)
        if (before.st_size, before.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return False
        for chunk in repo.iter_file(entry.cid):
            view = memoryview(chunk)
            while view:
                got = f.read(min(len(view), _READ))
                if not got or got != view[: len(got)]:
                    return False
                view = view[len(got):]
        if f.read(1):
            return False
        after = os.fstat(fd)
    return (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_room(repo: Repository, root: Path, changes: Iterable[TreeChange]) -> None:
    """Refuse (before writing) files over ``limits.max_file_bytes``, or more new bytes than
    the file system holding ``root`` has free (what the replaced files free is counted)."""
    limit = limits(repo.config).max_file_bytes
    need = 0
    largest: tuple[int, str, str] = (0, "", "")
    for change in changes:
        if change.old is not None:
            try:
                st = os.lstat(root / change.path)
                if stat_mod.S_ISREG(st.st_mode):
                    need -= st.st_size
            except (FileNotFoundError, NotADirectoryError):
                pass
        new = change.new
        if new is None or new.kind != "file":
            continue
        size = entry_size(repo, new)
        if limit is not None and size > limit:
            raise LimitExceeded(f"file {change.path} ({cid_str(new.cid)}) is {size} bytes, over limits.max_file_bytes "
                                f"({limit})", hint="raise limits.max_file_bytes if the file is wanted")
        need += size
        largest = max(largest, (size, change.path, cid_str(new.cid)))
    if need <= 0:
        return
    fs = os.statvfs(root)  # what shutil.disk_usage reads, without importing shutil (start-up)
    free = fs.f_bavail * fs.f_frsize
    if need > free:
        size, path, cid = largest
        raise StorageFull(f"the checkout needs {need} bytes and {root} has {free} free (the largest file: {path}, "
                          f"{cid}, {size} bytes); nothing was written",
                          hint="free disk space (or check out on a bigger disk), then run it again")
