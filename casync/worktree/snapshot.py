"""Turning working-tree files into tree entries, reusing the stat cache (docs/design.md §10.2).

Shared by ``commit`` (whole-tree and streamed, :mod:`casync.worktree.stream`), ``status``
and the single-path readers in :mod:`casync.worktree.checkout`.  A file whose (mtime,
ctime, size, inode, mode) match the cache is not re-read; files modified within the last
:data:`RACY_NS` of the snapshot's start are never trusted ("racily clean", as git says).
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from collections.abc import Callable

from casync.errors import UnstableFile
from casync.progress import Progress
from casync.repo.repository import Repository
from casync.store.lmdb import StatEntry
from casync.trees.ingest import FileWriter
from casync.trees.unixfs import Entry, Kind, read_symlink, write_symlink
from casync.worktree.content import same_content
from casync.worktree.disk import FileStat

__all__ = ["MAX_RETRIES", "RACY_NS", "CacheLookup", "Snapshotter", "stat_key", "untrusted"]

RACY_NS = 1_000_000_000
MAX_RETRIES = 3

CacheLookup = Callable[[str], "StatEntry | None"]
"""The stat cache's entry for a path (None when it has none)."""


def stat_key(st: FileStat | os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


def untrusted(entry: Entry) -> StatEntry:
    """A cache entry that names a tracked file but never matches an lstat (st_mode 0: no
    file has it), so the file is hashed again: racily clean, or with uncommitted edits.
    With it, a cache that describes a tree names every file of it (see status)."""
    return (0, 0, 0, 0, 0, entry.tsize, entry.cid)


class Snapshotter:
    """Turns working-tree files into entries, reusing the stat cache, writing blocks to
    ``writer.store`` (the repository, or a throwaway store for a dry run).

    ``cached`` looks a path up in the stat cache (default: the whole cache loaded once);
    :meth:`remember` records each file's new cache entry (default: in ``new_cache``)."""

    def __init__(self, repo: Repository, writer: FileWriter, progress: Progress,
                 expected: Callable[[str], Entry | None] | None = None,
                 cached: CacheLookup | None = None) -> None:
        self.repo = repo
        self.writer = writer
        self.expected = expected  # the committed entry at a path: kept when the bytes are its
        self.progress = progress
        if cached is None:
            self.cache = repo.store.load_stat_cache()
            cached = self.cache.get
        self.cached = cached
        self.new_cache: dict[str, StatEntry] = {}
        self.hashed: set[str] = set()  # paths read and hashed (not taken from the cache)
        self.now_ns = time.time_ns()
        self.root = str(repo.root)

    def entry(self, path: str, st: FileStat | os.stat_result) -> Entry | None:
        """The entry for ``path`` (None if it vanished).  Re-reads until stable."""
        cached = self.cached(path)
        key = stat_key(st)
        if cached is not None and cached[:5] == key:
            mode = st.st_mode
            kind: Kind = "symlink" if stat_mod.S_ISLNK(mode) else "file"
            entry = Entry(cached[6], kind, cached[5], kind == "file" and bool(mode & stat_mod.S_IXUSR))
            self._remember(path, st, entry)
            return entry
        committed = self.expected(path) if self.expected is not None else None
        if (committed is not None and committed.kind == "file" and stat_mod.S_ISREG(st.st_mode)
                and committed.executable == bool(st.st_mode & stat_mod.S_IXUSR)
                and same_content(self.repo, committed, os.path.join(self.root, path), st)):
            self._remember(path, st, committed)  # its bytes, whatever layout it was committed in
            return committed
        if (committed is not None and committed.kind == "symlink" and stat_mod.S_ISLNK(st.st_mode)
                and _same_target(self.repo, committed, os.path.join(self.root, path))):
            self._remember(path, st, committed)  # its target, however the node was encoded (an import)
            return committed
        for _attempt in range(MAX_RETRIES):
            try:
                entry, st_after = self._read(path, st)
            except FileNotFoundError:
                return None
            if st_after is not None and stat_key(st_after)[:3] == key[:3] and st_after.st_size == st.st_size:
                self._remember(path, st_after, entry, hashed=True)
                return entry
            try:
                st = os.lstat(os.path.join(self.root, path))
            except FileNotFoundError:
                return None
            key = stat_key(st)
        raise UnstableFile(f"file {path} kept changing while it was being committed",
                           hint="stop the process writing it, or add it to .casyncignore, and retry")

    def _read(self, path: str, st: FileStat | os.stat_result) -> tuple[Entry, os.stat_result | None]:
        abs_path = os.path.join(self.root, path)
        if stat_mod.S_ISLNK(st.st_mode):
            target = os.readlink(abs_path)
            after = os.lstat(abs_path)
            return write_symlink(self.writer.store, target, self.repo.hash_name), after
        fd = os.open(abs_path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb", buffering=0) as f:
            before = os.fstat(fd)
            if (before.st_size, before.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                return Entry(b"", "file", 0), None  # changed between scan and open: retry
            entry = self.writer.write(f, bool(before.st_mode & stat_mod.S_IXUSR), self.progress.advance)
            after = os.fstat(fd)
        return entry, after

    def _remember(self, path: str, st: FileStat | os.stat_result, entry: Entry, hashed: bool = False) -> None:
        racy = st.st_mtime_ns >= self.now_ns - RACY_NS or st.st_ctime_ns >= self.now_ns - RACY_NS
        self.remember(path, untrusted(entry) if racy else (*stat_key(st), entry.tsize, entry.cid), hashed)

    def remember(self, path: str, record: StatEntry, hashed: bool) -> None:
        """Where a file's new cache entry goes (``hashed``: read, not taken from the cache or
        the committed tree); a streamed commit spools it instead."""
        self.new_cache[path] = record
        if hashed:
            self.hashed.add(path)


def _same_target(repo: Repository, committed: Entry, abs_path: str) -> bool:
    try:
        return os.readlink(abs_path) == read_symlink(repo.blocks, committed.cid)
    except OSError:
        return False
