"""Working-directory operations: snapshot (commit), status, checkout and restore.

The stat cache makes unchanged files free: a file whose (mtime, ctime, size, inode,
mode) match the cache is not re-read.  Files modified within the last
:data:`RACY_NS` of a cache write are never cached ("racily clean", as git calls it),
so an edit in the same timestamp tick as a commit is not missed.  When the cache is
known to describe exactly HEAD's tree, ``status`` on an unchanged tree reads no tree
blocks at all.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from casync.dag import Entry, FileWriter, Kind, diff_flat, directories_of, flatten_tree, read_symlink, write_symlink
from casync.errors import CasyncError, NothingToCommit, UsageError, WorktreeDirty
from casync.ids import Cid, cid_str
from casync.progress import NULL_PROGRESS, Progress
from casync.repo import Repository
from casync.store.lmdb import STAT_KEY, STAT_KEY_SIZE, StatEntry, stat_records_digest
from casync.store.memory import MemoryBlockStore
from casync.worktree import FileStat, Ignore, WorktreeWriter, native_stat_records, scan

__all__ = ["RACY_NS", "Status", "checkout", "commit_worktree", "restore", "status", "update_worktree",
           "worktree_entries"]

RACY_NS = 1_000_000_000
MAX_RETRIES = 3


@dataclass
class Status:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    branch: str | None = None
    head: Cid | None = None

    @property
    def clean(self) -> bool:
        return not (self.added or self.modified or self.deleted)

    def paths(self) -> set[str]:
        return {*self.added, *self.modified, *self.deleted}

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "head": cid_str(self.head) if self.head else None, "clean": self.clean,
                "added": self.added, "modified": self.modified, "deleted": self.deleted,
                "skipped": self.skipped}


def _stat_key(st: FileStat | os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


class _Snapshotter:
    """Turns working-tree files into entries, reusing the stat cache, writing blocks to
    ``writer.store`` (the repository, or a throwaway store for a dry run)."""

    def __init__(self, repo: Repository, writer: FileWriter, progress: Progress) -> None:
        self.repo = repo
        self.writer = writer
        self.progress = progress
        self.cache = repo.store.load_stat_cache()
        self.new_cache: dict[str, StatEntry] = {}
        self.hashed: set[str] = set()  # paths read and hashed (not taken from the cache)
        self.now_ns = time.time_ns()
        self.root = str(repo.root)

    def entry(self, path: str, st: FileStat | os.stat_result) -> Entry | None:
        """The entry for ``path`` (None if it vanished).  Re-reads until stable."""
        cached = self.cache.get(path)
        key = _stat_key(st)
        if cached is not None and cached[:5] == key:
            mode = st.st_mode
            kind: Kind = "symlink" if stat_mod.S_ISLNK(mode) else "file"
            entry = Entry(cached[6], kind, cached[5], kind == "file" and bool(mode & stat_mod.S_IXUSR))
            self._remember(path, st, entry)
            return entry
        for _attempt in range(MAX_RETRIES):
            try:
                entry, st_after = self._read(path, st)
            except FileNotFoundError:
                return None
            if st_after is not None and _stat_key(st_after)[:3] == key[:3] and st_after.st_size == st.st_size:
                self.hashed.add(path)
                self._remember(path, st_after, entry)
                return entry
            try:
                st = os.lstat(os.path.join(self.root, path))
            except FileNotFoundError:
                return None
            key = _stat_key(st)
        raise CasyncError(f"file {path} kept changing while it was being committed",
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

    def _remember(self, path: str, st: FileStat | os.stat_result, entry: Entry) -> None:
        if st.st_mtime_ns >= self.now_ns - RACY_NS or st.st_ctime_ns >= self.now_ns - RACY_NS:
            return  # racily clean: hash it again next time
        self.new_cache[path] = (*_stat_key(st), entry.tsize, entry.cid)

    def snapshot(self) -> tuple[dict[str, Entry], list[str]]:
        ignore = Ignore.load(self.repo.root)
        files, skipped = scan(self.repo.root, ignore)
        total = sum(st.st_size for p, st in files.items() if self.cache.get(p, (None,))[:5] != _stat_key(st))
        self.progress.start("hashing", total)
        out: dict[str, Entry] = {}
        for path in sorted(files):
            entry = self.entry(path, files[path])
            if entry is not None:
                out[path] = entry
        self.progress.finish()
        return out, skipped


def commit_worktree(repo: Repository, message: str, author: str | None = None, allow_empty: bool = False,
                    progress: Progress = NULL_PROGRESS, extra_parents: tuple[Cid, ...] = ()) -> Cid:
    """Snapshot the whole working tree (new, changed, deleted files) as a commit on HEAD."""
    repo.require_worktree("commit")
    if not message:
        raise UsageError("empty commit message", hint="pass -m MESSAGE")
    with repo.store.writer_lock():
        head = repo.head()
        snap = _Snapshotter(repo, repo.new_file_writer(), progress)
        try:
            files, _skipped = snap.snapshot()
            tree = _build(repo, files)
            if not files and head is None and not allow_empty:
                repo.blocks.discard()
                raise NothingToCommit("nothing to commit: the working tree is empty",
                                      hint="add files first, or pass --allow-empty")
            if head is not None and tree == repo.tree_of(head) and not allow_empty:
                repo.blocks.discard()
                repo.store.save_stat_cache(snap.new_cache, tree, head)
                raise NothingToCommit(f"nothing to commit: the working tree matches {cid_str(head)[:12]}")
            cid = repo.commit_tree(tree, message, author=author, extra_parents=extra_parents)
        except BaseException:
            repo.blocks.discard()
            raise
        repo.store.save_stat_cache(snap.new_cache, tree, cid)
        return cid


def _build(repo: Repository, files: dict[str, Entry]) -> Cid:
    from casync.dag import build_tree

    return build_tree(repo.blocks, files, repo.hash_name).cid


def status(repo: Repository, progress: Progress = NULL_PROGRESS) -> Status:
    """Compare the working tree with HEAD without storing anything."""
    repo.require_worktree("status")
    head = repo.head()
    result = Status(branch=repo.current_branch(), head=head)
    ignore = Ignore.load(repo.root)
    if head is not None and _cache_describes(repo, head):
        native = native_stat_records(repo.root, ignore)
        if native is not None and stat_records_digest(native[0]) == repo.store.stat_cache_digest():
            result.skipped = native[1]
            return result
    files, result.skipped = scan(repo.root, ignore)
    if head is not None and _unchanged_since_cache(repo, head, files):
        if repo.store.stat_cache_digest() is None:
            with repo.store.try_writer_lock() as locked:
                if locked:
                    repo.store.refresh_stat_cache_digest()
        return result
    scratch = FileWriter(MemoryBlockStore(), repo.new_file_writer().chunker, repo.hash_name)
    snap = _Snapshotter(repo, scratch, progress)
    head_tree = repo.tree_of(head) if head is not None else None
    committed = flatten_tree(repo.blocks, head_tree) if head_tree is not None else {}
    current: dict[str, Entry] = {}
    progress.start("checking the working tree", None)  # files not in the stat cache are hashed
    for path in sorted(files):
        entry = snap.entry(path, files[path])
        if entry is not None:
            current[path] = entry
    progress.finish()
    for change in diff_flat(committed, current):
        getattr(result, change.status).append(change.path)
    # Files hashed here went to a throwaway store: caching their CIDs would let the next
    # commit trust entries whose blocks the repository never got.  Keep only entries whose
    # content the repository holds (unchanged files, or content already committed).
    cache = {p: e for p, e in snap.new_cache.items() if p not in snap.hashed or repo.blocks.has(e[6])}
    _save_cache_opportunistically(repo, cache, head_tree if result.clean else None,
                                  head if result.clean else None)
    return result


def _cache_describes(repo: Repository, head: Cid) -> bool:
    """The stat cache was written for exactly ``head``'s tree."""
    if repo.store.get("meta", b"statcache_commit") == head:
        return True
    cache_tree = repo.store.get("meta", b"statcache_tree")
    return cache_tree is not None and cache_tree == repo.tree_of(head)


def _unchanged_since_cache(repo: Repository, head: Cid, files: dict[str, FileStat]) -> bool:
    """The fast path: the stat cache describes HEAD's tree exactly and every file's
    lstat matches its entry byte for byte.  Reads no tree blocks, hashes nothing.
    (With the native walk, ``status`` first tries the same test as one digest comparison.)"""
    if not _cache_describes(repo, head):
        return False
    raw = repo.store.load_stat_cache_raw()
    if len(raw) != len(files):
        return False
    pack = STAT_KEY.pack
    for path, st in files.items():
        value = raw.get(path)
        if value is None or value[:STAT_KEY_SIZE] != pack(st.st_mtime_ns, st.st_ctime_ns, st.st_size,
                                                          st.st_ino, st.st_mode):
            return False
    return True


def _save_cache_opportunistically(repo: Repository, cache: dict[str, StatEntry], tree: Cid | None,
                                  commit: Cid | None) -> None:
    """Like ``git status``, refresh the stat cache when no writer is busy (never wait)."""
    with repo.store.try_writer_lock() as locked:
        if locked:
            repo.store.save_stat_cache(cache, tree, commit)


def worktree_entries(repo: Repository, progress: Progress = NULL_PROGRESS) -> dict[str, Entry]:
    """``{path: Entry}`` for the working tree as it is now (nothing is stored)."""
    scratch = FileWriter(MemoryBlockStore(), repo.new_file_writer().chunker, repo.hash_name)
    snap = _Snapshotter(repo, scratch, progress)
    files, _ = scan(repo.root, Ignore.load(repo.root))
    out = {}
    for path in sorted(files):
        entry = snap.entry(path, files[path])
        if entry is not None:
            out[path] = entry
    return out


def _apply(repo: Repository, old: dict[str, Entry], new: dict[str, Entry], paths: Iterable[str] | None = None,
           progress: Progress = NULL_PROGRESS) -> None:
    """Make the working tree go from ``old`` to ``new`` (restricted to ``paths`` if given)."""
    writer = WorktreeWriter(repo.root)
    changes = diff_flat(old, new)
    if paths is not None:
        wanted = set(paths)
        changes = [c for c in changes if c.path in wanted]
    progress.start("checking out", sum(c.new.tsize for c in changes if c.new is not None))
    for change in changes:
        if change.new is None:
            writer.remove(change.path)
    for change in changes:
        e = change.new
        if e is None:
            continue
        if e.kind == "symlink":
            writer.write_symlink(change.path, read_symlink(repo.blocks, e.cid))
        else:
            writer.write_file(change.path, _counting(repo.iter_file(e.cid), progress), e.executable)
    progress.finish()


def _counting(chunks: Iterable[bytes], progress: Progress) -> Iterable[bytes]:
    for chunk in chunks:
        progress.advance(len(chunk))
        yield chunk


def checkout(repo: Repository, rev: str, force: bool = False, progress: Progress = NULL_PROGRESS) -> Cid:
    """Make the working tree match ``rev``; a branch name switches HEAD to that branch.

    Refuses (unless ``force``) when an uncommitted change would be overwritten or removed;
    changes to paths the checkout does not touch are kept.
    """
    with repo.store.writer_lock():
        target = repo.resolve(rev)
        head = repo.head()
        branch = rev if repo.refs.get_ref(f"heads/{rev}") is not None else None
        if repo.bare:
            repo.set_head(branch, None if branch else target)
            return target
        if head is not None and target == head and not force:
            if branch is not None:
                repo.set_head(branch)
            elif rev != "HEAD":
                repo.set_head(None, target)
            return target
        update_worktree(repo, repo.flat_tree(head), repo.flat_tree(target), repo.tree_of(target),
                        f"checkout of {rev}", force, progress, can_force=True)
        if branch is not None:
            repo.set_head(branch)
        else:
            repo.set_head(None, target)
        return target


def update_worktree(repo: Repository, old: dict[str, Entry], new: dict[str, Entry], new_tree: Cid | None,
                    what: str, force: bool = False, progress: Progress = NULL_PROGRESS,
                    dry_run: bool = False, st: Status | None = None, can_force: bool = False) -> Status:
    """Move the working tree from ``old`` (what HEAD holds) to ``new``.

    Uncommitted changes on paths this touches make it refuse with :class:`WorktreeDirty`
    (unless ``force``); with ``dry_run`` it only checks.  ``new_tree`` is the tree CID
    ``new`` was read from (None for an uncommitted tree), recorded for the stat cache.
    ``st`` is the working tree's status against ``old`` when the caller already has it
    (e.g. from a dry run before moving HEAD).  ``can_force``: the command offers --force
    (the refusal's hint says so only then).  Returns that status.
    """
    if repo.bare:
        return Status(branch=repo.current_branch(), head=repo.head())
    st = st if st is not None else status(repo, progress)
    dirty = st.paths()
    new_dirs = directories_of(new)
    if force:
        # discard local edits to tracked files; untracked files survive unless in the way
        placeholder = Entry(b"", "file", 0)
        current = {p: e for p, e in old.items() if p not in st.deleted}
        for path in st.modified:
            current[path] = placeholder
        for path in st.added:
            if path in new or path in new_dirs:
                current[path] = placeholder
        old = current
    touched = {c.path for c in diff_flat(old, new)}
    if not force:
        in_the_way = {p for p in st.added if p in new_dirs}
        in_the_way |= _untracked_in_replaced_dirs(repo, old, new, touched)
        dirty_touch = (dirty & touched) | in_the_way
        if dirty_touch:
            listed = ", ".join(sorted(dirty_touch)[:5]) + (" ..." if len(dirty_touch) > 5 else "")
            raise WorktreeDirty(f"{what} would overwrite uncommitted changes in: {listed}",
                                hint="commit them first, or pass --force to discard them" if can_force
                                else "commit them (or move them away) first")
    if dry_run:
        return st
    _apply(repo, old, new, touched, progress)
    keep_dirty = set() if force else dirty - touched
    if new_tree is None:
        repo.store.save_stat_cache({}, None)
    else:
        _refresh_cache(repo, {p: e for p, e in new.items() if p not in keep_dirty}, new_tree)
    return st


def _untracked_in_replaced_dirs(repo: Repository, old: dict[str, Entry], new: dict[str, Entry],
                                touched: set[str]) -> set[str]:
    """Files that are neither tracked nor ignored inside directories the update replaces
    with a file or symlink: writing it would delete them with the directory.  (Ignored
    files there are expendable, as in git.)"""
    ignore = Ignore.load(repo.root)
    out: set[str] = set()
    for path in touched:
        if path not in new:
            continue
        try:
            if not stat_mod.S_ISDIR(os.lstat(repo.root / path).st_mode):
                continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        stack = [path]
        while stack:
            rel_dir = stack.pop()
            try:
                entries = list(os.scandir(repo.root / rel_dir))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for de in entries:
                rel = f"{rel_dir}/{de.name}"
                is_dir = de.is_dir(follow_symlinks=False)
                if ignore.ignored(rel, is_dir):
                    continue
                if is_dir:
                    stack.append(rel)
                elif rel not in old:
                    out.add(rel)
    return out


def _refresh_cache(repo: Repository, entries: dict[str, Entry], tree: Cid) -> None:
    """After writing a tree out, record stat data so the next status reads nothing."""
    now = time.time_ns()
    cache: dict[str, StatEntry] = {}
    for path, entry in entries.items():
        try:
            st = os.lstat(repo.root / path)
        except FileNotFoundError:
            continue
        if st.st_mtime_ns >= now - RACY_NS or st.st_ctime_ns >= now - RACY_NS:
            continue
        cache[path] = (*_stat_key(st), entry.tsize, entry.cid)
    repo.store.save_stat_cache(cache, tree)


def restore(repo: Repository, source: str, paths: list[str], progress: Progress = NULL_PROGRESS) -> list[str]:
    """Overwrite ``paths`` (files or directories, repository-relative) with their content in
    ``source``.  Tracked files (in HEAD) under them that ``source`` lacks are removed;
    untracked files are left alone.  Returns the paths written."""
    from casync.validate import split_path

    repo.require_worktree("restore")
    with repo.store.writer_lock():
        target = repo.resolve(source)
        new_all = repo.flat_tree(target)
        tracked = repo.flat_tree(repo.head())
        prefixes = ["/".join(split_path(p)) for p in paths]
        for pre in prefixes:
            exists = (not pre or any(p == pre or p.startswith(pre + "/") for p in new_all)
                      or any(p == pre or p.startswith(pre + "/") for p in tracked))
            if not exists:
                where = "HEAD" if source == "HEAD" else f"{source} nor in HEAD"
                raise UsageError(f"path {pre!r} is not in {where}",
                                 hint="restore brings back committed files; untracked files are not tracked")

        def under(path: str) -> bool:
            return any(not pre or path == pre or path.startswith(pre + "/") for pre in prefixes)

        selected = {p: e for p, e in new_all.items() if under(p)}
        placeholder = Entry(b"", "file", 0)  # forces a rewrite: the disk may differ from HEAD
        old = {p: placeholder for p in tracked if under(p)}
        old.update({p: placeholder for p in selected})
        lost = _untracked_in_replaced_dirs(repo, tracked, selected, set(selected))
        if lost:
            listed = ", ".join(sorted(lost)[:5]) + (" ..." if len(lost) > 5 else "")
            raise WorktreeDirty(f"restore would delete untracked files in a directory it replaces: {listed}",
                                hint="move them away first")
        _apply(repo, old, selected, None, progress)
        cache = repo.store.load_stat_cache()
        for p in old:
            cache.pop(p, None)
        repo.store.save_stat_cache(cache, None)
        return sorted(selected)
