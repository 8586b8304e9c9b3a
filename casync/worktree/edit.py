"""Working-tree edits besides checkout: ``restore``, abandoning a stopped merge, ``rm``.

Both follow the working tree's one rule: nothing a user wrote vanishes.  ``merge
--abort`` resets only the paths the merge wrote and refuses when one of them was edited
since; ``rm`` deletes only files that match what is tracked, and ``rm --cached``
stops tracking a file without touching it.
"""

from __future__ import annotations

from collections.abc import Iterable

from casync.errors import UsageError, WorktreeDirty
from casync.model.cid import Cid
from casync.model.names import split_path
from casync.model.objects import same_entry
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.trees.unixfs import Entry, diff_flat
from casync.worktree import state as workstate
from casync.worktree.checkout import apply_changes, disk_entries, refresh_cache, untracked_in_replaced_dirs
from casync.worktree.disk import WorktreeWriter
from casync.worktree.status import status

__all__ = ["abort_merge_worktree", "remove", "restore"]



def _listed(paths: Iterable[str]) -> str:
    ordered = sorted(paths)
    return ", ".join(ordered[:5]) + (" ..." if len(ordered) > 5 else "")


def abort_merge_worktree(repo: Repository, written_tree: Cid, owned: set[str], resolved: set[str],
                         progress: Progress = NULL_PROGRESS) -> None:
    """Put back, on the paths a stopped merge wrote (``written_tree`` against the tree
    checked out before it) and those ``casync resolve`` wrote (``resolved``), the
    checked-out version; every other path keeps its uncommitted edits, as ``git merge
    --abort`` does.  A path the merge wrote and the user edited since (neither the
    merge's nor the original version) is refused, unless it is in ``owned`` (conflicted
    paths, their siblings and what ``resolve`` wrote: the merge's own work).  Caller holds the writer lock."""
    before_tree = workstate.checked_out(repo).tree
    before = repo.flatten(before_tree) if before_tree is not None else {}
    written = repo.flatten(written_tree)
    merged = {c.path for c in diff_flat(before, written)} | resolved
    disk = disk_entries(repo, merged)
    edited = {p for p in merged - owned
              if not same_entry(disk.get(p), written.get(p)) and not same_entry(disk.get(p), before.get(p))}
    if edited:
        raise WorktreeDirty(f"merge --abort would discard edits made since the merge stopped, to files it "
                            f"changed: {_listed(edited)}",
                            hint="copy them elsewhere, or put back HEAD's version ('casync restore PATH'), "
                            "then abort again; or finish with 'casync merge --continue'")
    st = status(repo)  # before the reset, against the checked-out tree: what stays dirty
    WorktreeWriter(repo.root).check_parents(sorted(p for p in merged if p in before),
                                            {p for p in merged if p in disk and p not in before})
    apply_changes(repo, disk, before, merged, progress)
    if before_tree is not None:
        refresh_cache(repo, before, before_tree, stale=st.paths() - merged)
    else:
        repo.store.save_stat_cache({}, None)


def remove(repo: Repository, paths: list[str], cached: bool = False, recursive: bool = False) -> list[str]:
    """Stop tracking ``paths`` (files, or directories with ``recursive``): delete them
    from disk, or with ``cached`` keep them there and leave them out of the next commit.
    Refuses to delete a file with uncommitted changes.  Returns the files untracked."""
    repo.require_worktree("rm")
    with repo.store.writer_lock():
        state = workstate.checked_out(repo)
        pending = workstate.untracks(repo)
        tracked = {p: e for p, e in (repo.flatten(state.tree) if state.tree else {}).items()
                   if p not in pending}
        chosen: set[str] = set()
        for given in paths:
            pre = "/".join(split_path(given))
            found = {p for p in tracked if not pre or p == pre or p.startswith(pre + "/")}
            if not found:
                raise UsageError(f"path {given!r} is not tracked", hint="'casync status' lists what is")
            if found != {pre} and not recursive:
                raise UsageError(f"{given!r} is a directory", hint="pass -r to remove the tracked files under it")
            chosen |= found
        if cached:
            workstate.add_untracks(repo, chosen)
            repo.store.save_stat_cache(repo.store.load_stat_cache(), None)  # status must look again
            return sorted(chosen)
        disk = disk_entries(repo, chosen)
        edited = {p for p in chosen if p in disk and not same_entry(disk[p], tracked[p])}
        if edited:
            raise WorktreeDirty(f"rm would delete uncommitted changes in: {_listed(edited)}",
                                hint="commit them first, or 'casync rm --cached' to keep the file on disk")
        writer = WorktreeWriter(repo.root)
        for path in sorted(chosen):
            writer.remove(path)
        return sorted(chosen)


def restore(repo: Repository, source: str, paths: list[str], progress: Progress = NULL_PROGRESS) -> list[str]:
    """Overwrite ``paths`` (files or directories, repository-relative) with their content in
    ``source``.  Tracked files (in the checked-out tree) under them that ``source`` lacks
    are removed; untracked files are left alone.  Returns the paths written."""
    repo.require_worktree("restore")
    with repo.store.writer_lock():
        target = repo.resolve(source)
        new_all = repo.flat_tree(target)
        on_disk = workstate.checked_out(repo).tree
        tracked = repo.flatten(on_disk) if on_disk is not None else {}
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
        lost = untracked_in_replaced_dirs(repo, tracked, selected, set(selected))
        if lost:
            listed = ", ".join(sorted(lost)[:5]) + (" ..." if len(lost) > 5 else "")
            raise WorktreeDirty(f"restore would delete untracked files in a directory it replaces: {listed}",
                                hint="move them away first")
        WorktreeWriter(repo.root).check_parents(sorted(selected), {p for p in old if p not in selected})
        apply_changes(repo, old, selected, None, progress)
        cache = repo.store.load_stat_cache()
        for p in old:
            cache.pop(p, None)
        repo.store.save_stat_cache(cache, None)
        return sorted(selected)
