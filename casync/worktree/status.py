"""``status``: what changed in the working tree since the tree it was checked out at.

Cheapest answer first (docs/design.md §10.3):

1. the file-system monitor vouches that nothing changed since the last clean status: no walk;
2. the stat cache describes the checked-out tree and the walk's stat records equal it: one
   digest comparison;
3. the cache describes it but some records differ: the walk's records and the cache's are
   merged in path order, which names the added and deleted files and the files whose stat
   changed; only those are read, each compared with its committed entry (looked up one
   directory at a time), as git's index does.  No tree is flattened;
4. no cache for this tree (after ``restore``, ``rm --cached``, an older casync): the
   checked-out tree is flattened and every file not in the cache is hashed.

Nothing is stored but stat data: files are hashed into a throwaway store.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casync.model.cid import Cid, cid_str
from casync.progress import NULL_PROGRESS, Progress
from casync.store.lmdb import STAT_KEY, STAT_KEY_SIZE, StatEntry, stat_entry, stat_records_digest
from casync.worktree import monitor
from casync.worktree import state as workstate
from casync.worktree.disk import FileStat, Ignore, UntrackedIgnore, native_stat_records, scan

if TYPE_CHECKING:
    from casync.repo.repository import Repository
    from casync.trees.unixfs import Entry
    from casync.worktree.snapshot import Snapshotter

# What only a tree with changes needs (ways 3 and 4: reading files, looking entries up) is
# imported by the functions below that use it; a clean status (ways 1 and 2) never loads it.

__all__ = ["Status", "ignore_rules", "scan_worktree", "status", "tracked_ignored"]


@dataclass
class Status:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    branch: str | None = None
    head: Cid | None = None
    ignored_tracked: list[str] = field(default_factory=list)  # tracked files an ignore rule matches
    checked_out: Cid | None = None  # set when HEAD moved since: the commit the files are still at
    moved: bool = False  # HEAD's tree is no longer the one checked out (a transaction, a push)
    merge_in_progress: bool = False
    partial: tuple[str, ...] = ()  # a partial clone's paths: nothing outside them is on disk or compared
    walked: bool = True  # False: the file-system monitor vouched that nothing changed (no walk)
    monitor: str | None = None  # what the monitor said, or why it was not used (None: not asked)

    @property
    def clean(self) -> bool:
        return not (self.added or self.modified or self.deleted)

    def paths(self) -> set[str]:
        return {*self.added, *self.modified, *self.deleted}

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "head": cid_str(self.head) if self.head else None, "clean": self.clean,
                "added": self.added, "modified": self.modified, "deleted": self.deleted,
                "skipped": self.skipped, "ignored_tracked": self.ignored_tracked, "moved": self.moved,
                "checked_out": cid_str(self.checked_out) if self.checked_out else None,
                "merge_in_progress": self.merge_in_progress, "partial": list(self.partial) or None,
                "walk": self.walked, "monitor": self.monitor}


def status(repo: Repository, progress: Progress = NULL_PROGRESS) -> Status:
    """Compare the working tree with the tree it was checked out at (HEAD's, unless
    HEAD moved since: then ``moved`` is set) without storing anything."""
    repo.require_worktree("status")
    head = repo.head()
    state = workstate.checked_out(repo)
    moved = workstate.moved_since_checkout(repo) is not None
    result = Status(branch=repo.current_branch(), head=head, moved=moved,
                    checked_out=state.commit if moved else None,
                    merge_in_progress=workstate.merge_in_progress(repo),
                    partial=repo.partial.paths if repo.partial is not None else ())
    pending = workstate.untracks(repo)
    # A cache that describes the tree names every file of it with that tree's content (an
    # untrusted one with st_mode 0): which paths are tracked is a point lookup in it, and
    # the walk compared with it is the whole answer (ways 2 and 3).
    tree = state.tree
    described = (tree is not None and not pending and _cache_describes(repo, tree)
                 and repo.store.stat_cache_complete())
    tracked = repo.store.stat_cache_tracks if described else None
    # asked before any walk, so the token covers every change the walk might miss
    asked = monitor.ask(repo) if tree is not None and not pending else None
    if asked is not None and tree is not None:
        result.monitor = asked.why
        known = monitor.known_clean(repo, asked, tree)
        if known is not None:
            result.skipped, result.ignored_tracked = known
            result.walked = False
            return result
    if described and tree is not None:
        ignore = ignore_rules(repo, tree, pending, tracked)
        native = native_stat_records(repo.root, ignore)
        if native is not None:
            records, result.skipped = native
            result.ignored_tracked = sorted(tracked_ignored(ignore))
            if stat_records_digest(records) == repo.store.stat_cache_digest():
                _remember_clean(repo, asked, tree, result)
                return result
            disk = _split_records(records)
        else:
            files, result.skipped = scan(repo.root, ignore)
            result.ignored_tracked = sorted(tracked_ignored(ignore))
            disk = _records_of(files)
        _compare_with_cache(repo, tree, disk, result, progress)
        if result.clean:
            if repo.store.stat_cache_digest() is None:  # a cache written before the digest existed
                with repo.store.try_writer_lock() as locked:
                    if locked:
                        repo.store.refresh_stat_cache_digest()
            _remember_clean(repo, asked, tree, result)
        return result
    files, result.skipped, ignore = scan_worktree(repo, tree, pending)
    result.ignored_tracked = sorted(tracked_ignored(ignore))
    _compare_by_hashing(repo, state, files, result, progress, clean_counts=not pending)
    if result.clean and not pending:
        _remember_clean(repo, asked, tree, result)
    return result


def _compare_with_cache(repo: Repository, tree: Cid, disk: Iterator[tuple[bytes, bytes]], result: Status,
                        progress: Progress) -> None:
    """Way 3: ``disk``'s records (path, packed stat key; in UTF-8 path order) merged with the
    stat cache's.  Memory is bounded by the number of changes, not of files."""
    from casync.model.objects import same_entry
    from casync.store.memory import MemoryBlockStore
    from casync.trees.ingest import FileWriter
    from casync.trees.walk import EntryLookup
    from casync.worktree.snapshot import Snapshotter

    added: list[str] = []
    deleted: list[str] = []
    suspects: dict[str, StatEntry] = {}
    with repo.store.stat_cache_records() as cached:
        d, c = next(disk, None), next(cached, None)
        while d is not None or c is not None:
            if c is None or (d is not None and d[0] < c[0]):
                added.append(_path(d[0]))  # type: ignore[index]  # (c is None: d is not)
                d = next(disk, None)
            elif d is None or d[0] > c[0]:
                deleted.append(_path(c[0]))
                c = next(cached, None)
            else:
                if c[1][:STAT_KEY_SIZE] != d[1]:
                    suspects[_path(d[0])] = stat_entry(c[1])
                d, c = next(disk, None), next(cached, None)
    committed = EntryLookup(repo.blocks, tree)
    modified: list[str] = []
    if suspects:
        scratch = FileWriter(MemoryBlockStore(), repo.new_file_writer().chunker, repo.hash_name)
        snap = Snapshotter(repo, scratch, progress, committed, cached=suspects.get)
        progress.start("checking the working tree", None)  # files whose stat changed are read
        for path in sorted(suspects):
            old = committed(path)
            new = _disk_entry(repo, snap, path)
            if new is None:
                deleted.append(path)
            elif old is None:
                added.append(path)  # (a cache entry the tree lacks: not written by casync)
            elif not same_entry(old, new):
                modified.append(path)
        progress.finish()
        # touched but unchanged files get their new stat data, so the next status reads none
        # of them; an edited file keeps its old entry (it never matches), so the cache still
        # describes the checked-out tree
        fresh = {p: e for p, e in snap.new_cache.items()
                 if e[4] != 0 and (old := committed(p)) is not None and e[6] == old.cid}
        if fresh:
            with repo.store.try_writer_lock() as locked:
                if locked:
                    repo.store.update_stat_cache(fresh, tree)
    result.added, result.modified, result.deleted = sorted(added), sorted(modified), sorted(deleted)


def _disk_entry(repo: Repository, snap: Snapshotter, path: str) -> Entry | None:
    """The entry for the file at ``path`` now (None: gone, or no longer a file or symlink)."""
    try:
        st = os.lstat(repo.root / path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISLNK(st.st_mode)):
        return None
    return snap.entry(path, st)


def _compare_by_hashing(repo: Repository, state: workstate.CheckedOut, files: dict[str, FileStat],
                        result: Status, progress: Progress, clean_counts: bool) -> None:
    """Way 4: the checked-out tree flattened, every file the cache does not vouch for hashed;
    then, like ``git status``, the cache refreshed when no writer is busy (never wait).  It
    describes the tree unless ``rm --cached`` paths are pending (``clean_counts`` False)."""
    from casync.store.memory import MemoryBlockStore
    from casync.trees.ingest import FileWriter
    from casync.trees.unixfs import diff_flat
    from casync.worktree.snapshot import Snapshotter, untrusted

    tree = state.tree
    scratch = FileWriter(MemoryBlockStore(), repo.new_file_writer().chunker, repo.hash_name)
    committed = repo.flatten(tree) if tree is not None else {}
    snap = Snapshotter(repo, scratch, progress, committed.get)
    current: dict[str, Entry] = {}
    progress.start("checking the working tree", None)  # files not in the stat cache are hashed
    for path in sorted(files):
        entry = snap.entry(path, files[path])
        if entry is not None:
            current[path] = entry
    progress.finish()
    for change in diff_flat(committed, current):
        getattr(result, change.status).append(change.path)
    # The cache is written to describe the checked-out tree, clean or not: every file of it
    # named with its committed content — stat data where the file on disk still has that
    # content, an untrusted entry where it was edited or deleted — so the next status
    # takes way 3.  Files hashed here went to a throwaway store: an entry naming their new
    # content would let the next commit trust blocks the repository never got.
    cache: dict[str, StatEntry] = {}
    for path, old in committed.items():
        seen = snap.new_cache.get(path)
        cache[path] = seen if seen is not None and seen[6] == old.cid and seen[5] == old.tsize else untrusted(old)
    describes = tree is not None and clean_counts
    with repo.store.try_writer_lock() as locked:
        if locked:
            repo.store.save_stat_cache(cache, tree if describes else None, state.commit if describes else None)


def _path(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _split_records(records: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(path, packed stat key) of each canonical stat record (``native_stat_records``)."""
    find, pos, end = records.find, 0, len(records)
    while pos < end:
        nul = find(b"\0", pos)
        stop = nul + 1 + STAT_KEY_SIZE
        yield records[pos:nul], records[nul + 1:stop]
        pos = stop


def _records_of(files: dict[str, FileStat]) -> Iterator[tuple[bytes, bytes]]:
    """The same records from a Python walk."""
    pack = STAT_KEY.pack
    for key, path in sorted((p.encode("utf-8", "surrogateescape"), p) for p in files):
        st = files[path]
        yield key, pack(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


def _remember_clean(repo: Repository, asked: monitor.Answer | None, tree: Cid | None, result: Status) -> None:
    if asked is not None and tree is not None:
        monitor.remember(repo, asked, tree, result.skipped, result.ignored_tracked)


def ignore_rules(repo: Repository, tracked_tree: Cid | None, pending: set[str],
                 tracked: Callable[[str, bool], bool] | None = None) -> Ignore:
    """The root ignore rules, applied to paths ``tracked_tree`` does not hold (as in git);
    ``tracked`` answers that question when the caller has a faster way."""
    rules = Ignore.load(repo.root)
    if not rules.rules:
        return rules
    return rules.untracked_only(tracked or workstate.TreePaths(repo, tracked_tree, pending))


def tracked_ignored(ignore: Ignore) -> list[str]:
    """The tracked files an ignore rule matches (kept: a rule never drops a tracked file)."""
    return ignore.tracked_ignored if isinstance(ignore, UntrackedIgnore) else []


def scan_worktree(repo: Repository, tracked_tree: Cid | None, pending: set[str] | None = None,
                  tracked: Callable[[str, bool], bool] | None = None
                  ) -> tuple[dict[str, FileStat], list[str], Ignore]:
    """``scan`` of the working tree with ignore rules for untracked paths, leaving out the
    files ``rm --cached`` untracked (until the next commit records that)."""
    pending = workstate.untracks(repo) if pending is None else pending
    ignore = ignore_rules(repo, tracked_tree, pending, tracked)
    files, skipped = scan(repo.root, ignore)
    for path in pending:
        files.pop(path, None)
    return files, skipped, ignore


def _cache_describes(repo: Repository, tree: Cid) -> bool:
    """The stat cache was written for exactly ``tree`` (the checked-out tree)."""
    return repo.store.get("meta", b"statcache_tree") == tree
