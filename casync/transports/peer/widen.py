"""``casync fetch --path P`` / ``--all-paths``: widen a partial clone.

A partial clone (``clone --path``) holds, for every commit, what lies inside its paths.  To
add a path, the history of that path is fetched as a clone of it would be (every commit's
subtree there, against no haves: the commits are held, their blocks at the new path are
not), then the path is recorded in config ``partial_paths`` and its files are checked out.
``--all-paths`` does the same for everything outside, and the repository is whole again.
Until the transfer has completed nothing is recorded, so an interrupted widening is just
run again.  It fetches from one remote: commits that came only from another remote (and
are not in this one's history) are widened by running it against that remote too (a path
already recorded is fetched again, so this always works; ``fsck`` lists what is missing).
"""

from __future__ import annotations

from casync.errors import UsageError
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.transports.peer.exchange import FetchResult, fetch_from
from casync.transports.peer.protocol import Peer
from casync.trees.paths import PathFilter, flatten_within, normalize_paths
from casync.trees.unixfs import flatten_tree
from casync.worktree import state as workstate
from casync.worktree.checkout import update_worktree
from casync.worktree.status import status

__all__ = ["widen_from"]


def widen_from(repo: Repository, peer: Peer, remote: str, add: tuple[str, ...],
               progress: Progress = NULL_PROGRESS) -> tuple[FetchResult, tuple[str, ...]]:
    """Fetch ``add`` (``()``: every path) from ``peer`` into this partial clone, record it,
    and check its files out; returns the fetch and the paths now held (``()``: all)."""
    held = repo.partial
    if held is None:
        raise UsageError("this repository is not a partial clone: it holds every path already",
                         hint="run 'casync fetch' without --path / --all-paths")
    new = normalize_paths(add) if add else ()
    result = fetch_from(repo, peer, remote, progress, widen=new)
    after = normalize_paths((*held.paths, *new)) if new else ()
    with repo.store.writer_lock():
        checked = workstate.checked_out(repo)
        if repo.bare or checked.tree is None:
            repo.set_config("partial_paths", list(after) if after else None)
            return result, after
        st = status(repo)  # against the old paths: the new ones are not on disk yet
        old = repo.flatten(checked.tree)
        files = flatten_within(repo.blocks, checked.tree, PathFilter(after)) if after else \
            flatten_tree(repo.blocks, checked.tree)
        # a file of the user's where the new paths' files go: refused before anything is recorded
        # (the blocks stay; run it again once it is moved)
        update_worktree(repo, old, files, checked.tree, "widening the clone", st=st, dry_run=True)
        repo.set_config("partial_paths", list(after) if after else None)
        update_worktree(repo, old, files, checked.tree, "widening the clone", progress=progress, st=st,
                        commit=checked.commit)
    return result, after
