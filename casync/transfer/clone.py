"""One clone procedure for every kind of remote (IPFS node, ``casync serve``, a path, a
bundle file): where it writes, how it resumes, and what a failure leaves.

:class:`CloneTarget` is the destination.  A clone marks its new repository
(``meta/clone_pending``: the source URL and branch) from ``init`` until the checkout is
done.  If the transfer breaks (a network error, Ctrl-C, a full disk), the directory and
every verified block in it stay and the error's hint says so; running the same
``casync clone`` again finds the mark, reopens the repository and fetches only what is
still missing (every fetch path stops at blocks already held), then checks out over
whatever a broken-off checkout left.  A first run's errors that a retry cannot fix (no
such repository or branch, a replica id already taken, a damaged block) remove what the
clone wrote, and only that: its ``.casync`` directory and the paths its checkout began to
write (the directory itself if the clone made it); a resumed run never deletes anything.
A repository someone went on using by hand (a branch, a commit) is no longer resumed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from casync.errors import CasyncError, RemoteError, UsageError
from casync.model.cid import Cid, cid_str, parse_cid
from casync.model.names import REPO_DIR, TEMP_NAME
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.create import unfinished_init
from casync.repo.repository import Repository
from casync.worktree.checkout import update_worktree

__all__ = ["CloneInterrupted", "CloneTarget", "clear_pending", "is_resumable_failure", "kept_hint", "mark_pending",
           "refuse_replica_in_use", "replicas_in_history", "reopen_pending"]

_KEY = b"clone_pending"


def _pending_value(url: str, branch: str | None, checkout: tuple[str, Cid] | None = None) -> bytes:
    state: dict[str, Any] = {"url": url, "branch": branch}
    if checkout is not None:
        state["checkout"] = [checkout[0], cid_str(checkout[1])]
    return json.dumps(state).encode()


def mark_pending(repo: Repository, url: str, branch: str | None, checkout: tuple[str, Cid] | None = None) -> None:
    """``checkout``: the branch and commit the checkout is about to set, so that a clone
    killed after that (before :func:`clear_pending`) is still recognised as its own."""
    repo.store.put("meta", _KEY, _pending_value(url, branch, checkout))


def clear_pending(repo: Repository) -> None:
    repo.store.write(lambda txn: txn.delete(_KEY, db=repo.store.db("meta")))


def reopen_pending(root: Path, url: str) -> tuple[Repository, dict[str, Any]] | None:
    """The interrupted clone of ``url`` at ``root``, reopened; None when ``root`` is free
    (missing or empty).  Anything else there is a usage error naming it."""
    if not root.exists() or (root.is_dir() and _free(root)):
        return None
    if not (root / REPO_DIR).is_dir():
        raise UsageError(f"destination {root} exists and is not an empty directory")
    repo = Repository.open(root, search_parents=False)
    raw = repo.store.get("meta", _KEY)
    state = json.loads(raw) if raw else None
    heads = repo.refs.list_refs("heads/")
    checkout = state.get("checkout") if state is not None else None
    own = checkout is not None and heads == {f"heads/{checkout[0]}": parse_cid(checkout[1])}
    used = not own and (repo.head() is not None or bool(heads))
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


def _free(root: Path) -> bool:
    """``root`` holds nothing but what a killed ``init`` left: casync's temporary names
    (``casync.model.names.TEMP_NAME``) and a ``.casync`` without config; init replaces those."""
    for entry in root.iterdir():
        if TEMP_NAME.fullmatch(entry.name):
            continue
        if entry.name == REPO_DIR and unfinished_init(entry):
            continue
        return False
    return True


def is_resumable_failure(exc: BaseException) -> bool:
    """A failure a retry may get past: the link, not the data."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, RemoteError):
        return exc.transient
    return isinstance(exc, OSError) and not isinstance(exc, CasyncError)


class CloneInterrupted(KeyboardInterrupt):
    """Ctrl-C during a clone, with the hint that says the partial clone is kept."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


def kept_hint(root: Path, exc: BaseException) -> BaseException:
    """``exc`` with a hint that the partial clone was kept and how to resume it (Ctrl-C
    becomes a :class:`CloneInterrupted` that carries it)."""
    resume = f"the partial clone in {root} is kept: run the same 'casync clone' again to resume"
    if isinstance(exc, CasyncError):
        exc.hint = f"{exc.hint}; {resume}" if exc.hint else resume
    elif isinstance(exc, KeyboardInterrupt) and not isinstance(exc, CloneInterrupted):
        return CloneInterrupted(resume)
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


class CloneTarget:
    """The directory a clone writes into, resumed or new; use it as a context manager
    around the whole clone, so that every failure is handled by one rule (module doc)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.created = not root.exists()
        resumed = reopen_pending(root, url)  # a usage error if root holds anything else
        self.resumed = resumed is not None
        self.repo: Repository | None = resumed[0] if resumed else None
        self.state: dict[str, Any] = resumed[1] if resumed else {}
        self._written: set[str] = set()  # top-level names a checkout began to write
        self._branch: str | None = None  # the branch asked for (None: the source's default)

    def __enter__(self) -> CloneTarget:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        if self.repo is not None:
            self.repo.close()
            self.repo = None
            if self.resumed or is_resumable_failure(exc):
                kept = kept_hint(self.root, exc)
                if kept is not exc:
                    raise kept from None
                return  # re-raised as it is, its hint extended
        self._remove()

    def open(self, *, repository_id: str, replica: str | None, hash: str, chunker: str,
             branch: str | None) -> Repository:
        """The resumed repository (checked against the source), or a new one, marked pending."""
        if self.repo is not None:
            if self.repo.repo_id != repository_id:
                raise UsageError(f"{self.root} holds an interrupted clone of another repository",
                                 hint="choose another directory")
            self.refuse_other_replica(replica)
            return self.repo
        self._branch = branch
        self.repo = Repository.init(self.root, replica=replica, hash=hash, chunker=chunker,
                                    repository_id=repository_id, branch=branch or "main",
                                    clone_pending=_pending_value(self.url, branch))
        return self.repo

    def record_paths(self, paths: tuple[str, ...]) -> None:
        """A partial clone (``clone --path``): its paths go into config ``partial_paths`` before
        anything is fetched, so every fetch keeps to them; a resumed clone keeps the first run's
        (other paths given on resume are refused)."""
        repo = self._open_repo()
        held = repo.partial.paths if repo.partial is not None else ()
        if self.resumed:
            if paths and tuple(paths) != held:
                raise UsageError(f"{self.root} holds an interrupted clone of {', '.join(held) or 'every path'}",
                                 hint="resume it with the same --path options, or choose another directory")
            return
        if paths:
            repo.set_config("partial_paths", list(paths))

    def refuse_other_replica(self, replica: str | None) -> None:
        """A resumed clone stays the replica it began as (checked before the source is contacted)."""
        if self.repo is not None and replica is not None and replica != self.repo.replica:
            raise UsageError(f"{self.root} holds an interrupted clone as replica {self.repo.replica}, not {replica}",
                             hint="resume it without --replica (or with that one), or choose another directory")

    def checkout(self, tip: Cid, branch: str, reason: str, progress: Progress = NULL_PROGRESS) -> None:
        """Check ``tip`` out as ``branch`` (over what a broken-off checkout wrote, if resumed)."""
        repo = self._open_repo()
        new = repo.flat_tree(tip)
        self._written.update(path.split("/", 1)[0] for path in new)
        mark_pending(repo, self.url, self.state.get("branch") if self.resumed else self._branch, (branch, tip))
        with repo.store.writer_lock():  # as every checkout: no other writer moves files or refs meanwhile
            update_worktree(repo, {}, new, repo.tree_of(tip), "clone", force=self.resumed, progress=progress,
                            commit=tip)
            repo.update_branch(branch, repo.refs.get_ref(f"heads/{branch}"), tip, reason)
            repo.set_head(branch)

    def finish(self) -> Repository:
        """The clone is complete: no longer pending."""
        repo = self._open_repo()
        clear_pending(repo)
        return repo

    def _open_repo(self) -> Repository:
        if self.repo is None:
            raise UsageError("clone target is not open")
        return self.repo

    def _remove(self) -> None:
        """Undo a failed first run: what the clone wrote, nothing else."""
        if not self.root.exists():
            return
        for name in [REPO_DIR, *sorted(self._written)]:
            path = self.root / name
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        if self.created:
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only if empty: anything else there is not ours
