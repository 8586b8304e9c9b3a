"""What the working tree was checked out from, and which paths it tracks.

HEAD's branch can move without the working tree: a Python transaction, a push or a sync
into the checked-out branch of a non-bare repository.  The files on disk then still
hold the tree they were checked out at, and a snapshot of them committed on the new
tip would silently revert what moved the branch.  So every operation that writes the
working tree records here the tree (and, when known, the commit) it left on disk (meta
key ``worktree``); ``commit`` and ``merge`` refuse while HEAD's tree differs from it,
and ``status`` and ``checkout`` compare the disk with it, not with HEAD.

*Tracked* means "in the tree the working tree was checked out at" (casync has no
index), minus the paths ``rm --cached`` marked (meta key ``untrack``) until the next
commit.  Ignore rules apply to untracked paths only, as in git.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from casync.errors import StateRefused, WorktreeDirty
from casync.model.cid import Cid, cid_str, parse_cid, short
from casync.repo.repository import Repository
from casync.trees.unixfs import entry_for, read_dir

__all__ = ["MERGE_STATE_KEY", "CheckedOut", "TreePaths", "checked_out", "clear_untracks", "intend_commit",
           "intend_move", "interrupted_move", "merge_in_progress", "move_branch_then_files", "moved_since_checkout",
           "record", "refuse_mid_merge", "require_current", "untracks"]

_KEY = b"worktree"
_UNTRACK_KEY = b"untrack"
_INTENT_KEY = b"worktree_commit"  # a commit of the working tree under way (intend_commit)
_MOVE_KEY = b"worktree_move"  # a merge moving the branch, the files to follow (intend_move)
MERGE_STATE_KEY = b"merge_state"  # written by casync.worktree.merging while a merge is stopped


@dataclass(frozen=True, slots=True)
class CheckedOut:
    """The tree on disk (None: an empty tree) and the commit it came from, if known."""

    tree: Cid | None
    commit: Cid | None


def record(repo: Repository, tree: Cid | None, commit: Cid | None) -> None:
    """The working tree now holds ``tree`` (from ``commit``).  Caller holds the writer lock."""
    if repo.bare:
        return
    value = json.dumps({"tree": cid_str(tree) if tree else None, "commit": cid_str(commit) if commit else None})
    meta = repo.store.db("meta")

    def fn(txn: Any) -> None:
        txn.put(_KEY, value.encode(), db=meta)
        txn.delete(_INTENT_KEY, db=meta)
        txn.delete(_MOVE_KEY, db=meta)
    repo.store.write(fn)


def intend_move(repo: Repository, to: Cid) -> None:
    """HEAD's branch is about to move to ``to`` and the files to follow (a merge): a process
    killed in between leaves :func:`interrupted_move` to say so, and the files are finished
    by the next merge instead of refused as a moved branch."""
    if not repo.bare:
        repo.store.put("meta", _MOVE_KEY, cid_str(to).encode())


def move_branch_then_files(repo: Repository, branch: str | None, old: Cid | None, new: Cid, reason: str,
                           files: Callable[[], object]) -> None:
    """Move HEAD (``branch``, or a detached HEAD) from ``old`` to ``new``, then the files
    (``files``, an update checked by a dry run before this).  The update checks the working
    tree again: a file the user wrote since the dry run, where the update writes, makes it
    refuse (:class:`WorktreeDirty`) before a file is written.  The branch then goes back to
    ``old``, so the refusal leaves branch and files where they were and the next pull or
    push tries again; without that the branch stayed moved and the user's next commit was
    refused as one on a moved branch.  A strong branch stays moved (other replicas may
    already have seen its head in etcd); its files follow at the next merge, as after a
    killed one (:func:`interrupted_move`)."""
    intend_move(repo, new)
    if branch is not None:
        repo.update_branch(branch, old, new, reason)
    else:
        repo.set_head(None, new, reason=reason)
    try:
        files()
    except WorktreeDirty:
        if branch is None or not repo.is_strong(branch):
            if branch is not None:
                repo.update_branch(branch, new, old, f"{reason}: undone, the working tree changed meanwhile")
            elif old is not None:
                repo.set_head(None, old, reason=f"{reason}: undone, the working tree changed meanwhile")
            repo.store.write(lambda txn: txn.delete(_MOVE_KEY, db=repo.store.db("meta")))
        raise


def interrupted_move(repo: Repository) -> Cid | None:
    """HEAD, when :func:`intend_move` announced it and the files did not follow yet."""
    raw = repo.store.get("meta", _MOVE_KEY)
    if raw is None or repo.head() != parse_cid(raw.decode()) or moved_since_checkout(repo) is None:
        return None
    return repo.head()


def intend_commit(repo: Repository, tree: Cid, parent: Cid | None) -> None:
    """A commit of the working tree's ``tree`` on ``parent`` is about to move HEAD's branch.
    If the process dies (or the disk fills) after the branch moved and before
    :func:`record`, :func:`checked_out` still knows the files hold that commit's tree."""
    if repo.bare:
        return
    value = {"tree": cid_str(tree), "parent": cid_str(parent) if parent else None}
    repo.store.put("meta", _INTENT_KEY, json.dumps(value).encode())


def _landed_intent(repo: Repository) -> CheckedOut | None:
    """HEAD, when it is the commit :func:`intend_commit` announced (its tree, on its parent)."""
    raw = repo.store.get("meta", _INTENT_KEY)
    head = repo.head() if raw is not None else None
    if raw is None or head is None:
        return None
    intent = json.loads(raw)
    commit = repo.load_commit(head)
    parent = parse_cid(intent["parent"]) if intent["parent"] else None
    if cid_str(commit.tree) != intent["tree"] or (commit.parents[0] if commit.parents else None) != parent:
        return None
    return CheckedOut(commit.tree, head)


def checked_out(repo: Repository) -> CheckedOut:
    """What the working tree holds; a repository written before this record existed is
    taken to be at HEAD."""
    landed = _landed_intent(repo)
    if landed is not None:
        return landed
    raw = repo.store.get("meta", _KEY)
    if raw is None:
        head = repo.head()
        return CheckedOut(repo.tree_of(head) if head is not None else None, head)
    value = json.loads(raw)
    return CheckedOut(parse_cid(value["tree"]) if value["tree"] else None,
                      parse_cid(value["commit"]) if value["commit"] else None)


def moved_since_checkout(repo: Repository) -> CheckedOut | None:
    """The checkout the working tree still holds when HEAD has moved to another tree
    since (None when they agree, and always in a bare repository)."""
    if repo.bare:
        return None
    state = checked_out(repo)
    head = repo.head()
    if head is not None and state.commit == head:
        return None  # the usual case, decided without decoding a commit
    head_tree = repo.tree_of(head) if head is not None else None
    return None if head_tree == state.tree else state


def require_current(repo: Repository, what: str) -> None:
    """Refuse ``what`` while HEAD's branch has moved past the working tree."""
    state = moved_since_checkout(repo)
    if state is None:
        return
    branch = repo.current_branch()
    where = f"branch {branch}" if branch else "HEAD"
    at = f"commit {short(state.commit)}" if state.commit else \
        f"tree {short(state.tree)}" if state.tree else "an empty tree"
    update = f"bring the files up to date with 'casync checkout {branch or 'HEAD'}' (uncommitted edits are kept)"
    raise WorktreeDirty(f"{where} moved since the working tree was checked out (the files are still at {at}); "
                        f"{what} now would revert that move",
                        hint=f"give up the stopped merge ('casync merge --abort'), {update}, and merge again"
                        if merge_in_progress(repo) else f"{update}, then retry")


def merge_in_progress(repo: Repository) -> bool:
    return repo.store.get("meta", MERGE_STATE_KEY) is not None


def refuse_mid_merge(repo: Repository, what: str) -> None:
    """Refuse ``what`` while a merge is stopped: it would carry the half-done merge to
    another commit (``--continue`` would commit it there, ``--abort`` reset to it)."""
    if merge_in_progress(repo):
        raise StateRefused(f"a merge is in progress: {what} now would carry it to another commit",
                           hint="finish it with 'casync merge --continue', or give it up with 'casync merge --abort'")


def untracks(repo: Repository) -> set[str]:
    """Paths ``rm --cached`` took out of tracking, until the next commit records it."""
    raw = repo.store.get("meta", _UNTRACK_KEY)
    return set(json.loads(raw)) if raw else set()


def add_untracks(repo: Repository, paths: set[str]) -> None:
    repo.store.put("meta", _UNTRACK_KEY, json.dumps(sorted(untracks(repo) | paths)).encode())


def clear_untracks(repo: Repository) -> None:
    if repo.store.get("meta", _UNTRACK_KEY) is not None:
        repo.store.write(lambda txn: txn.delete(_UNTRACK_KEY, db=repo.store.db("meta")))


class TreePaths:
    """``tracked(path, is_dir)``: does the checked-out tree hold ``path``, minus the
    paths ``rm --cached`` untracked?  Directories are read lazily and memoised, so a
    walk asks the store only about paths an ignore rule matches."""

    def __init__(self, repo: Repository, tree: Cid | None, untracked: set[str] | None = None) -> None:
        self._repo = repo
        self._tree = tree
        self._listings: dict[str, dict[str, Cid] | None] = {}
        self._untracked = untracked or set()

    def _listing(self, directory: str) -> dict[str, Cid] | None:
        if directory not in self._listings:
            if directory:
                parent, _, name = directory.rpartition("/")
                above = self._listing(parent)
                cid = above.get(name) if above else None
                if cid is not None and entry_for(self._repo.blocks, cid, 0).kind != "dir":
                    cid = None
            else:
                cid = self._tree
            self._listings[directory] = ({link.name: link.cid for link in read_dir(self._repo.blocks, cid)}
                                         if cid is not None else None)
        return self._listings[directory]

    def __call__(self, path: str, is_dir: bool) -> bool:
        partial = self._repo.partial
        if path in self._untracked or (partial is not None and not partial.holds(path)):
            return False  # (a partial clone holds nothing outside its paths)
        parent, _, name = path.rpartition("/")
        listing = self._listing(parent)
        return listing is not None and name in listing
