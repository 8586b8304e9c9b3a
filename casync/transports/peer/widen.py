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
from casync.transports.peer.exchange import FetchResult, Peer, fetch_from
from casync.trees.paths import normalize_paths
from casync.worktree import state as workstate
from casync.worktree.checkout import status, update_worktree

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
        st = status(repo) if not repo.bare else None  # against the old paths: the new ones are not on disk yet
        old = repo.flatten(checked.tree) if checked.tree is not None else {}
        repo.set_config("partial_paths", list(after) if after else None)
        if checked.tree is not None and st is not None:
            update_worktree(repo, old, repo.flatten(checked.tree), checked.tree, "widening the clone",
                            progress=progress, st=st, commit=checked.commit)
    return result, after
