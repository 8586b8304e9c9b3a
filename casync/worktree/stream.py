"""The streamed snapshot: ``commit`` walks the working tree one directory at a time.

Directories are listed in the order their files' paths sort as UTF-8 bytes (a
subdirectory sorts as its name plus ``/``), each file's entry is made as the walk reaches
it (:class:`casync.worktree.snapshot.Snapshotter`) and a directory's node is written as
soon as its last child is done, children first, from a stack of open directories.  What
is held at once is the stack (the depth times the widest directory), not the tree: the
stat cache is read by point lookups, the new one is spooled to a file in path order
(:class:`casync.store.statcache.StatSpool`), the committed tree is read one directory at
a time, and new blocks are flushed to the store every :data:`FLUSH_BLOCKS`.  The tree is
the same, CID for CID, as the whole-tree build (:func:`casync.trees.unixfs.build_tree`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from casync.model.cid import Cid
from casync.model.objects import DirLink
from casync.progress import Progress
from casync.repo.repository import Repository
from casync.store.lmdb import StatEntry
from casync.store.statcache import StatReader, StatSpool
from casync.trees.unixfs import Entry, entry_for, find_entry, list_dir, write_directory
from casync.worktree.disk import FileStat, Ignore, directory_entries
from casync.worktree.snapshot import Snapshotter

__all__ = ["FLUSH_BLOCKS", "RELEASE_FILES", "Streamed", "list_directory", "stream_snapshot"]

FLUSH_BLOCKS = 131_072
"""New blocks between two flushes of the store: the pack store indexes a pending block
in memory (~220 bytes) until its flush, and a flush rewrites the index pages its new
entries land on (random keys: most of them), so a flush costs the index's size.  Blocks flushed by a commit that then
fails are unreferenced, as any a failed push leaves, and ``gc`` reclaims them."""

RELEASE_FILES = 16_384
"""Files between two releases of the store's resident map pages (``LmdbEnv.release_map``)."""

Child = tuple[str, "FileStat | None"]
"""A directory's child as the walk holds it: its name and, for a file or symlink, its lstat
(None for a subdirectory)."""


@dataclass
class Streamed:
    """A streamed snapshot: the tree, how many files it holds, what the walk skipped."""

    tree: Cid
    files: int
    skipped: list[str]
    spool: StatSpool
    repo: Repository = field(repr=False)

    def save_cache(self, tree: Cid, commit: Cid) -> None:
        self.repo.store.save_stat_spool(self.spool, tree, commit)


def list_directory(rel: str, abs_dir: str, ignore: Ignore, skipped: list[str], exclude: set[str]) -> list[Child]:
    """``rel``'s children as :func:`casync.worktree.disk.scan` keeps them (same rules,
    same ``skipped`` lines), in UTF-8 path order; ``exclude``: files left out."""
    keyed: list[tuple[bytes, str, FileStat | None]] = []
    for name, path, st in directory_entries(rel, abs_dir, ignore, skipped):
        if st is None:
            keyed.append((name.encode("utf-8") + b"/", name, None))
        elif path not in exclude:
            keyed.append((name.encode("utf-8"), name, st))
    keyed.sort(key=lambda k: k[0])
    return [(name, st) for _, name, st in keyed]


class _Committed:
    """``expected(path)``: the checked-out tree's entry at ``path``, read one directory at a
    time (only when a file must be hashed) and only the last directory kept."""

    def __init__(self, repo: Repository, tree: Cid | None) -> None:
        self._repo = repo
        self._tree = tree
        self._dir: str | None = None
        self._links: dict[str, DirLink] = {}

    def __call__(self, path: str) -> Entry | None:
        if self._tree is None:
            return None
        directory, _, name = path.rpartition("/")
        if directory != self._dir:
            self._dir, self._links = directory, self._listing(directory)
        link = self._links.get(name)
        return entry_for(self._repo.blocks, link.cid, link.tsize) if link is not None else None

    def _listing(self, directory: str) -> dict[str, DirLink]:
        get = self._repo.blocks.get
        assert self._tree is not None
        cid = self._tree
        for part in directory.split("/") if directory else ():
            link = find_entry(get, cid, part)
            if link is None or entry_for(self._repo.blocks, link.cid, link.tsize).kind != "dir":
                return {}
            cid = link.cid
        return {link.name: link for link in list_dir(get, cid)}


class _Spooling(Snapshotter):
    """A snapshotter whose new cache entries go to a spool (in walk order, which is path order)."""

    def __init__(self, repo: Repository, progress: Progress, expected: Callable[[str], Entry | None],
                 cached: StatReader, spool: StatSpool) -> None:
        super().__init__(repo, repo.new_file_writer(), progress, expected, cached)
        self.spool = spool

    def remember(self, path: str, record: StatEntry, hashed: bool) -> None:
        self.spool.add(path, record)


@contextlib.contextmanager
def stream_snapshot(repo: Repository, ignore: Ignore, exclude: set[str], checked_out: Cid | None,
                    progress: Progress) -> Iterator[Streamed]:
    """Walk and store the working tree (see the module doc); the spool is deleted on exit."""
    spool = StatSpool(repo.store.root)
    try:
        with contextlib.ExitStack() as reading:
            cached = reading.enter_context(repo.store.stat_cache_reader())
            snap = _Spooling(repo, progress, _Committed(repo, checked_out), cached, spool)
            progress.start("hashing", None)
            tree, files, skipped = _walk(repo, snap, ignore, exclude, cached.renew)
            progress.finish()
        yield Streamed(tree, files, skipped, spool, repo)
    finally:
        spool.close()


def _walk(repo: Repository, snap: Snapshotter, ignore: Ignore, exclude: set[str],
          flushed: Callable[[], None]) -> tuple[Cid, int, list[str]]:
    """The walk itself; ``flushed`` is called after each flush of the store."""
    root = str(repo.root)
    skipped: list[str] = []
    # an open directory: its path, its children still to visit, the links made so far
    stack: list[tuple[str, Iterator[Child], list[DirLink]]] = [
        ("", iter(list_directory("", root, ignore, skipped, exclude)), [])]
    files = 0
    flushed_at = 0
    writer = snap.writer
    while True:
        rel, children, links = stack[-1]
        for name, st in children:
            path = f"{rel}/{name}" if rel else name
            if st is None:
                sub = list_directory(path, os.path.join(root, path), ignore, skipped, exclude)
                stack.append((path, iter(sub), []))
                break
            entry = snap.entry(path, st)
            if entry is not None:
                links.append(DirLink(name, entry.cid, entry.tsize))
                files += 1
            if files and files % RELEASE_FILES == 0 and entry is not None:
                repo.store.release_map()  # the index pages the dedupe lookups touched
            if writer.new_blocks - flushed_at >= FLUSH_BLOCKS:
                repo.blocks.flush()
                flushed_at = writer.new_blocks
                flushed()
                repo.store.release_map()
        else:
            stack.pop()
            if not stack:
                return write_directory(repo.blocks, links, repo.hash_name, "/").cid, files, skipped
            if links:  # a directory with no file below it is not in the tree (as in build_tree)
                made = write_directory(repo.blocks, links, repo.hash_name, rel)
                stack[-1][2].append(DirLink(rel.rpartition("/")[2], made.cid, made.tsize))
