"""Resumable clones: over a slow, flaky link an interrupted first copy must not be lost.

A clone marks its new repository (``meta/clone_pending``: the source URL and branch) from
``init`` until the checkout is done.  If the transfer breaks (a network error, Ctrl-C),
the directory and every verified block in it stay; running the same ``casync clone``
again finds the mark, reopens the repository and fetches only what is still missing
(both fetch paths stop at blocks already held), then checks out over whatever a broken-off
checkout left.  A first run's errors that a retry cannot fix (no such repository, a
replica id already taken) remove the directory; a resumed run never deletes anything.
A repository someone went on using by hand (a branch, a commit) is no longer resumed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from casync.errors import CasyncError, RemoteError, UsageError
from casync.ids import Cid
from casync.repo import Repository
from casync.validate import REPO_DIR

__all__ = ["clear_pending", "is_resumable_failure", "kept_hint", "mark_pending", "refuse_replica_in_use",
           "replicas_in_history", "reopen_pending"]

_KEY = b"clone_pending"


def mark_pending(repo: Repository, url: str, branch: str | None) -> None:
    repo.store.put("meta", _KEY, json.dumps({"url": url, "branch": branch}).encode())


def clear_pending(repo: Repository) -> None:
    repo.store.write(lambda txn: txn.delete(_KEY, db=repo.store.db("meta")))


def reopen_pending(root: Path, url: str) -> tuple[Repository, dict[str, Any]] | None:
    """The interrupted clone of ``url`` at ``root``, reopened; None when ``root`` is free
    (missing or empty).  Anything else there is a usage error naming it."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    if not (root / REPO_DIR).is_dir():
        raise UsageError(f"destination {root} exists and is not an empty directory")
    repo = Repository.open(root, search_parents=False)
    raw = repo.store.get("meta", _KEY)
    state = json.loads(raw) if raw else None
    used = repo.head() is not None or bool(repo.refs.list_refs("heads/"))
    if state is not None and used:
        clear_pending(repo)  # someone went on by hand (pull, commit): it is a repository now
        state = None
    if state is None or state.get("url") != url:
        repo.close()
        what = f"an interrupted clone of {state['url']}" if state else "a repository"
        raise UsageError(f"destination {root} already holds {what}",
                         hint="choose another directory" if state is None else
                         "resume it with that URL, or choose another directory")
    return repo, state


def is_resumable_failure(exc: BaseException) -> bool:
    """A failure a retry may get past: the link, not the data."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, RemoteError):
        return exc.transient
    return isinstance(exc, OSError) and not isinstance(exc, CasyncError)


def kept_hint(root: Path, exc: BaseException) -> BaseException:
    """``exc`` with a hint that the partial clone was kept and how to resume it."""
    resume = f"the partial clone in {root} is kept: run the same 'casync clone' again to resume"
    if isinstance(exc, CasyncError):
        exc.hint = f"{exc.hint}; {resume}" if exc.hint else resume
    return exc


def replicas_in_history(repo: Repository, heads: Iterable[Cid]) -> set[str]:
    """Every replica that committed in the history of ``heads``: a commit's clock joins
    its parents', so the heads' clocks name them all (one read per head)."""
    out: set[str] = set()
    for head in heads:
        commit = repo.load_commit(head)
        out.update(commit.clock)
        out.add(commit.replica)
    return out


def refuse_replica_in_use(replica: str, in_use: Iterable[str], repo_id: str, *, chosen: bool) -> None:
    """A clone is a new replica.  With an id the source's history or replicas already use,
    two sites would stamp identical vector clocks on concurrent commits (``fsck`` reports
    it), so every clone (IPFS, peer, path, bundle) refuses it, before and after fetching."""
    if replica not in set(in_use):
        return
    if chosen:
        raise UsageError(f"replica {replica!r} is already in use in repository {repo_id}",
                         hint="each clone needs its own replica id: choose another --replica, or leave "
                              "it out for a new one")
    raise UsageError(f"replica id {replica} is already used in repository {repo_id}",  # vanishingly unlikely
                     hint="run the clone again (a new id is drawn)")
