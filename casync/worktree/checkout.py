"""Working-directory operations: snapshot (commit) and checkout.

The stat cache makes unchanged files free: a file whose (mtime, ctime, size, inode,
mode) match the cache is not re-read.  Files modified within the last
:data:`RACY_NS` of a cache write are never cached ("racily clean", as git calls it),
so an edit in the same timestamp tick as a commit is not missed.  Moving the files
between two stored trees reads and writes in proportion to what differs
(:func:`move_worktree`); ``status`` lives in :mod:`casync.worktree.status`.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_mod
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from casync.errors import NothingToCommit, StorageFull, UsageError, WorktreeDirty
from casync.model.cid import Cid, short
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.store.lmdb import StatEntry
from casync.store.memory import MemoryBlockStore
from casync.trees.ingest import FileWriter
from casync.trees.paths import grafted, outside_entries
from casync.trees.unixfs import (
    Entry,
    diff_flat,
    directories_of,
    read_symlink,
)
from casync.trees.walk import EntryLookup, changed_paths
from casync.worktree import state as workstate
from casync.worktree.content import check_room
from casync.worktree.disk import (
    WorktreeWriter,
    remove_stale_temps,
)
from casync.worktree.snapshot import RACY_NS, Snapshotter, stat_key, untrusted
from casync.worktree.status import Status, ignore_rules, scan_worktree, status
from casync.worktree.stream import stream_snapshot

__all__ = ["RACY_NS", "TreeDelta", "apply_changes", "checkout", "commit_worktree", "disk_entries", "refresh_cache",
           "move_worktree", "tree_delta", "untracked_in_replaced_dirs", "update_worktree", "worktree_entries"]


def commit_worktree(repo: Repository, message: str, author: str | None = None, allow_empty: bool = False,
                    progress: Progress = NULL_PROGRESS, extra_parents: tuple[Cid, ...] = (),
                    merged_tree: Cid | None = None, sign: bool | None = None) -> Cid:
    """Snapshot the whole working tree (new, changed, deleted files) as a commit on HEAD
    (``sign``: see :meth:`Repository.make_commit`).
    ``merged_tree``: the tree a stopped merge wrote; its paths are tracked (an ignore
    rule must not drop a file the merge brought in).  Without it, outside a partial clone,
    the tree is streamed directory by directory (:mod:`casync.worktree.stream`)."""
    repo.require_worktree("commit")
    if not message:
        raise UsageError("empty commit message", hint="pass -m MESSAGE")
    with repo.store.writer_lock(), contextlib.ExitStack() as cleanup:
        workstate.require_current(repo, "committing")
        head = repo.head()
        head_tree = repo.tree_of(head) if head is not None else None
        try:
            if merged_tree is None and repo.partial is None:
                pending = workstate.untracks(repo)
                streamed = cleanup.enter_context(stream_snapshot(
                    repo, ignore_rules(repo, head_tree, pending), pending, workstate.checked_out(repo).tree, progress))
                tree, nfiles, skipped = streamed.tree, streamed.files, streamed.skipped
                save: Callable[[Cid, Cid], None] = streamed.save_cache
            else:
                tree, nfiles, skipped, save = _snapshot_whole(repo, head_tree, merged_tree, progress)
            remove_stale_temps(repo.root, skipped)  # a killed checkout's (never stored: disk.TEMP_NAME)
            if not nfiles and head is None and not allow_empty:
                repo.blocks.discard()
                raise NothingToCommit("nothing to commit: the working tree is empty",
                                      hint="add files first, or pass --allow-empty")
            if head is not None and tree == head_tree and not allow_empty:
                repo.blocks.discard()
                save(tree, head)
                workstate.record(repo, tree, head)
                raise NothingToCommit(f"nothing to commit: the working tree matches {short(head)}")
            workstate.intend_commit(repo, tree, head)
            cid = repo.commit_tree(tree, message, author=author, extra_parents=extra_parents, sign=sign)
        except BaseException:
            repo.blocks.discard()
            raise
        # the commit is in: a disk that fills now costs only the cache, and the intent above
        # tells the next command which tree the files hold
        with contextlib.suppress(StorageFull):
            save(tree, cid)
            workstate.record(repo, tree, cid)
            workstate.clear_untracks(repo)
        return cid


def _snapshot_whole(repo: Repository, head_tree: Cid | None, merged_tree: Cid | None, progress: Progress
                    ) -> tuple[Cid, int, list[str], Callable[[Cid, Cid], None]]:
    """The whole-tree snapshot (a stopped merge's commit, a partial clone): every file's
    entry in one map, then the tree; ``merged_tree``'s paths are tracked as well."""
    snap = Snapshotter(repo, repo.new_file_writer(), progress, _lazy_flat(repo, workstate.checked_out(repo).tree))
    tracked: Callable[[str, bool], bool] | None = None
    if merged_tree is not None:
        pending = workstate.untracks(repo)
        trees = [workstate.TreePaths(repo, t, pending) for t in (head_tree, merged_tree)]

        def in_either(path: str, is_dir: bool) -> bool:
            return any(t(path, is_dir) for t in trees)
        tracked = in_either
    files, skipped, _ = scan_worktree(repo, head_tree, tracked=tracked)
    total = sum(st.st_size for p, st in files.items() if (snap.cached(p) or (None,))[:5] != stat_key(st))
    progress.start("hashing", total)
    out: dict[str, Entry] = {}
    for path in sorted(files):
        entry = snap.entry(path, files[path])
        if entry is not None:
            out[path] = entry
    progress.finish()
    tree = _build(repo, _with_unfetched(repo, out, merged_tree if merged_tree is not None else head_tree))

    def save(tree: Cid, commit: Cid) -> None:
        repo.store.save_stat_cache(snap.new_cache, tree, commit)
    return tree, len(out), skipped, save


def _lazy_flat(repo: Repository, tree: Cid | None) -> Callable[[str], Entry | None]:
    """``flatten_tree(tree).get``, flattened only when a file is read (not on a clean tree)."""
    flat: dict[str, Entry] | None = None

    def get(path: str) -> Entry | None:
        nonlocal flat
        if flat is None:
            flat = repo.flatten(tree) if tree is not None else {}
        return flat.get(path)
    return get


def _with_unfetched(repo: Repository, files: dict[str, Entry], base: Cid | None) -> dict[str, Entry]:
    """In a partial clone, ``files`` (the working tree: its paths only) plus ``base``'s entries
    outside those paths, linked unchanged: a commit here never drops what it did not fetch."""
    partial = repo.partial
    if partial is None:
        return files
    return grafted(files, outside_entries(repo.blocks.get, base, partial) if base is not None else {}, partial)


def _build(repo: Repository, files: dict[str, Entry]) -> Cid:
    from casync.trees.unixfs import build_tree

    return build_tree(repo.blocks, files, repo.hash_name).cid


def worktree_entries(repo: Repository, progress: Progress = NULL_PROGRESS) -> dict[str, Entry]:
    """``{path: Entry}`` for the working tree as it is now (nothing is stored)."""
    scratch = FileWriter(MemoryBlockStore(), repo.new_file_writer().chunker, repo.hash_name)
    snap = Snapshotter(repo, scratch, progress)
    files, _, _ = scan_worktree(repo, workstate.checked_out(repo).tree)
    out = {}
    for path in sorted(files):
        entry = snap.entry(path, files[path])
        if entry is not None:
            out[path] = entry
    return out


def disk_entries(repo: Repository, paths: Iterable[str]) -> dict[str, Entry]:
    """``{path: Entry}`` for just ``paths`` as they are on disk (missing ones left out),
    hashed into a throwaway store."""
    scratch = FileWriter(MemoryBlockStore(), repo.new_file_writer().chunker, repo.hash_name)
    snap = Snapshotter(repo, scratch, NULL_PROGRESS)
    out: dict[str, Entry] = {}
    for path in sorted(paths):
        try:
            st = os.lstat(repo.root / path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISLNK(st.st_mode):
            entry = snap.entry(path, st)
            if entry is not None:
                out[path] = entry
    return out


def apply_changes(repo: Repository, old: dict[str, Entry], new: dict[str, Entry], paths: Iterable[str] | None = None,
           progress: Progress = NULL_PROGRESS) -> None:
    """Make the working tree go from ``old`` to ``new`` (restricted to ``paths`` if given)."""
    writer = WorktreeWriter(repo.root)
    changes = diff_flat(old, new)
    if paths is not None:
        wanted = set(paths)
        changes = [c for c in changes if c.path in wanted]
    check_room(repo, repo.root, changes)  # before anything is removed or written
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
        workstate.refuse_mid_merge(repo, "checkout")
        reason = f"checkout: moving to {rev}"
        if head is not None and target == head and not force and workstate.moved_since_checkout(repo) is None:
            if branch is not None:
                repo.set_head(branch, reason=reason)
            elif rev != "HEAD":
                repo.set_head(None, target, reason=reason)
            return target
        # from what the files hold: HEAD's tree, or an older one if HEAD moved without them
        state = workstate.checked_out(repo)
        try:
            move_worktree(repo, state.tree, repo.tree_of(target), f"checkout of {rev}", force=force,
                          progress=progress, can_force=True, commit=target)
        except WorktreeDirty as exc:
            if state.commit is None or workstate.moved_since_checkout(repo) is None:
                raise
            at = short(state.commit)  # the edits cannot be committed where they are
            raise WorktreeDirty(exc.message, hint=f"keep them on a branch at the commit the files are at: 'casync "
                                f"branch NAME {at}', 'casync switch NAME', commit, then merge; or pass --force "
                                "to discard them") from None
        if branch is not None:
            repo.set_head(branch, reason=reason)
        else:
            repo.set_head(None, target, reason=reason)
        return target


@dataclass(frozen=True)
class TreeDelta:
    """Two trees' entries at the paths that differ between them and at given extra paths (the
    working tree's uncommitted changes): all :func:`update_worktree` looks at, read in
    proportion to the change rather than the tree."""

    old_tree: Cid | None
    new_tree: Cid
    old: dict[str, Entry]
    new: dict[str, Entry]


def tree_delta(repo: Repository, old_tree: Cid | None, new_tree: Cid, also: Iterable[str] = ()) -> TreeDelta:
    """The :class:`TreeDelta` from ``old_tree`` to ``new_tree`` with the paths ``also``
    (in a partial clone, within its paths)."""
    partial = repo.partial
    keep = partial.holds if partial is not None else None
    paths = changed_paths(repo.blocks.get, old_tree, new_tree, keep=keep) | {
        p for p in also if keep is None or keep(p)}
    at_old, at_new = EntryLookup(repo.blocks, old_tree), EntryLookup(repo.blocks, new_tree)
    old: dict[str, Entry] = {}
    new: dict[str, Entry] = {}
    for path in paths:
        if (a := at_old(path)) is not None:
            old[path] = a
        if (b := at_new(path)) is not None:
            new[path] = b
    return TreeDelta(old_tree, new_tree, old, new)


def move_worktree(repo: Repository, old_tree: Cid | None, new_tree: Cid, what: str, force: bool = False,
                  progress: Progress = NULL_PROGRESS, dry_run: bool = False, st: Status | None = None,
                  can_force: bool = False, commit: Cid | None = None) -> Status:
    """:func:`update_worktree` from the stored tree ``old_tree`` (the one checked out) to
    ``new_tree``, reading both in proportion to what differs (and to the uncommitted changes)."""
    if repo.bare:
        return Status(branch=repo.current_branch(), head=repo.head())
    st = st if st is not None else status(repo, progress)
    delta = tree_delta(repo, old_tree, new_tree, st.paths())
    return update_worktree(repo, delta.old, delta.new, new_tree, what, force, progress, dry_run, st, can_force,
                           commit, delta)


def update_worktree(repo: Repository, old: dict[str, Entry], new: dict[str, Entry], new_tree: Cid | None,
                    what: str, force: bool = False, progress: Progress = NULL_PROGRESS,
                    dry_run: bool = False, st: Status | None = None, can_force: bool = False,
                    commit: Cid | None = None, delta: TreeDelta | None = None) -> Status:
    """Move the working tree from ``old`` (the tree it was checked out at) to ``new``.

    Uncommitted changes on paths this touches make it refuse with :class:`WorktreeDirty`
    (unless ``force``); with ``dry_run`` it only checks.  ``new_tree`` is the tree CID
    ``new`` was read from (None for an uncommitted tree), recorded for the stat cache.
    ``st`` is the working tree's status against ``old`` when the caller already has it
    (e.g. from a dry run before moving HEAD).  ``can_force``: the command offers --force
    (the refusal's hint says so only then).  ``commit`` is the commit ``new_tree`` is from,
    recorded with it (see :mod:`casync.worktree.state`).  ``delta``: ``old`` and ``new`` are
    its maps (only the changed and dirty paths, ``st`` the status they were read with); the
    stat cache is then moved, not rewritten, when it described ``delta.old_tree``.  Returns
    that status.
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
    # refused before anything is written (or a ref moves), not half-way by the writer; and
    # first, so the checks below never look through a symlink
    WorktreeWriter(repo.root).check_parents(sorted(p for p in touched if p in new),
                                            {p for p in touched if p in old and p not in new})
    if not force:
        in_the_way = {p for p in st.added if p in new_dirs}
        in_the_way |= untracked_in_replaced_dirs(repo, old, new, touched)
        # an ignored (so unlisted) file where the update creates a path is a user's file too:
        # overwriting it would lose it (git treats ignored files as expendable; a data store does not)
        dirty_touch = (dirty & touched) | in_the_way | _unlisted_files_at(repo, touched - set(old) - dirty, new)
        # a file already gone that the update removes loses nothing (an interrupted run of it did that)
        dirty_touch -= {p for p in st.deleted if p not in new}
        if dirty_touch - in_the_way:  # a file that already holds what the update writes loses nothing
            ready = {p: e for p, e in disk_entries(repo, dirty_touch - in_the_way).items() if p in new}
            dirty_touch -= set(ready) - {c.path for c in diff_flat(ready, {p: new[p] for p in ready})}
        if dirty_touch:
            listed = ", ".join(sorted(dirty_touch)[:5]) + (" ..." if len(dirty_touch) > 5 else "")
            raise WorktreeDirty(f"{what} would overwrite uncommitted changes in: {listed}",
                                hint="commit them first, or pass --force to discard them" if can_force
                                else "commit them (or move them away) first")
    if dry_run:
        return st
    remove_stale_temps(repo.root, st.skipped)  # a killed checkout's (never stored: disk.TEMP_NAME)
    apply_changes(repo, old, new, touched, progress)
    keep_dirty = set() if force else dirty - touched
    if force:  # every local change is discarded, 'rm --cached' ones too
        workstate.clear_untracks(repo)
    if new_tree is None:
        repo.store.save_stat_cache({}, None)
    else:
        if delta is None or not _move_cache(repo, delta, touched, keep_dirty, commit):
            refresh_cache(repo, new if delta is None else repo.flatten(new_tree), new_tree, stale=keep_dirty)
        workstate.record(repo, new_tree, commit)
    return st


def _move_cache(repo: Repository, delta: TreeDelta, touched: set[str], keep_dirty: set[str],
                commit: Cid | None) -> bool:
    """The stat cache of ``delta.old_tree`` made the cache of ``delta.new_tree``: entries for
    the files just written (racy ones untrusted, as :func:`refresh_cache` does) and for the
    dirty files kept (untrusted), the removed paths dropped; every other file is the same
    in both trees, and so is its entry.  False when the cache did not describe the old tree."""
    now = time.time_ns()
    entries: dict[str, StatEntry] = {}
    for path in touched | keep_dirty:
        entry = delta.new.get(path)
        if entry is None:
            continue
        try:
            st = os.lstat(repo.root / path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if (st is None or path in keep_dirty or st.st_mtime_ns >= now - RACY_NS
                or st.st_ctime_ns >= now - RACY_NS):
            entries[path] = untrusted(entry)
        else:
            entries[path] = (*stat_key(st), entry.tsize, entry.cid)
    removed = {p for p in touched if p not in delta.new}
    return repo.store.move_stat_cache(delta.old_tree, delta.new_tree, commit, removed, entries)


def _unlisted_files_at(repo: Repository, paths: set[str], new: dict[str, Entry]) -> set[str]:
    """Of ``paths`` the update creates, those where a file (or link) the status did not list
    already exists: ignored files, which status does not report."""
    return {p for p in paths if p in new and os.path.lexists(repo.root / p)
            and not os.path.isdir(repo.root / p)}


def untracked_in_replaced_dirs(repo: Repository, old: dict[str, Entry], new: dict[str, Entry],
                                touched: set[str]) -> set[str]:
    """Untracked files, ignored ones included, inside directories the update replaces
    with a file or symlink: writing it would delete them with the directory."""
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
                if is_dir:
                    stack.append(rel)
                elif rel not in old:
                    out.add(rel)
    return out


def refresh_cache(repo: Repository, entries: dict[str, Entry], tree: Cid, stale: set[str] | None = None) -> None:
    """After writing ``tree`` (whose files are ``entries``) out, record stat data so the
    next status reads nothing; ``stale`` paths (uncommitted edits kept) are not trusted."""
    now = time.time_ns()
    cache: dict[str, StatEntry] = {}
    for path, entry in entries.items():
        try:
            st = os.lstat(repo.root / path)
        except FileNotFoundError:
            st = None
        if (st is None or (stale and path in stale) or st.st_mtime_ns >= now - RACY_NS
                or st.st_ctime_ns >= now - RACY_NS):
            cache[path] = untrusted(entry)
        else:
            cache[path] = (*stat_key(st), entry.tsize, entry.cid)
    repo.store.save_stat_cache(cache, tree)
