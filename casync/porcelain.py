"""Porcelain: what the CLI does to a repository and its working tree, as functions over the one
:class:`~casync.repo.repository.Repository` (Dulwich's shape: one repository object, porcelain over
plumbing).  Each is the Python form of a command; the CLI calls the same functions.

>>> from casync import Repository, porcelain
>>> repo = Repository.init("site-data", replica="edge-1")       # doctest: +SKIP
>>> porcelain.commit(repo, "first readings")                     # doctest: +SKIP
'bafy...'
>>> porcelain.merge(repo, "origin/main", policy="lww")           # doctest: +SKIP

Revisions are strings (``HEAD``, ``main``, ``HEAD~2``, a CID or CID prefix); commit
identifiers returned to callers are text CIDs.  Plumbing (transactions, reads, log, diff, fsck,
refs) is on :class:`Repository` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from casync.errors import StateRefused
from casync.model.cid import cid_str
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import LogEntry, Repository
from casync.worktree import status as _status

if TYPE_CHECKING:
    from casync.merge.threeway import ResolverFn
    from casync.store.retry import RetryPolicy
    from casync.transports.ipfs.imports import ImportResult
    from casync.trees.unixfs import Entry
    from casync.worktree.merging import MergeOutcome, OpenConflict

# The merge engine, edits, tags, path history and checkout are imported by the functions that
# use them: 'casync status' and 'casync log' never load them (start-up is most of a small
# command's time; tests/test_startup.py names what status must not import).

__all__ = ["checkout", "commit", "conflicts", "create_tag", "delete_tag", "import_dag", "list_tags", "merge",
           "path_log", "remove", "resolve_conflict", "restore", "status", "worktree_entries"]


def commit(repo: Repository, message: str, author: str | None = None, allow_empty: bool = False,
           progress: Progress = NULL_PROGRESS, sign: bool | None = None) -> str:
    """Snapshot the whole working tree (``casync commit``); the new commit's CID.  ``sign``
    signs it with this replica's key (default: config ``sign``).

    Raises :class:`casync.errors.NothingToCommit` when nothing changed, and
    :class:`casync.errors.StateRefused` while a merge is stopped for conflicts (its
    commit is ``merge --continue``, which records both parents).
    """
    from casync.worktree import checkout as _checkout
    from casync.worktree.state import merge_in_progress  # (not merging: the merge engine is ~7 ms to import)

    if merge_in_progress(repo):
        raise StateRefused("a merge is in progress: a plain commit would drop its second parent",
                           hint="finish it with 'casync merge --continue', or 'casync merge --abort'")
    return cid_str(_checkout.commit_worktree(repo, message, author, allow_empty, progress, sign=sign))


def import_dag(repo: Repository, cid: str, path: str | None = None, message: str | None = None, *,
               remote: str | None = None, api: str | None = None, progress: Progress = NULL_PROGRESS,
               retry: RetryPolicy | None = None, wait: float = 60.0) -> ImportResult:
    """Commit the UnixFS DAG ``cid`` that someone added to IPFS (``casync import``): as the
    whole tree, or at ``path`` with the rest of HEAD's tree kept; its blocks come from the
    IPFS node ``api`` or ``remote`` (default: the default remote), each one verified.  The
    tree CID is ``cid`` itself (nothing is re-chunked); ``casync checkout`` brings the files.
    """
    from casync.model.cid import parse_cid
    from casync.store.retry import DEFAULT_RETRY
    from casync.transports.ipfs.imports import import_dag as _import
    from casync.transports.ipfs.imports import node_url
    from casync.transports.ipfs.records import connect
    from casync.worktree.merging import merge_state

    if merge_state(repo) is not None:
        raise StateRefused("a merge is in progress: an import would drop its second parent",
                           hint="finish it with 'casync merge --continue', or 'casync merge --abort'")
    root = parse_cid(cid)
    with connect(node_url(repo, remote, api), retry=retry or DEFAULT_RETRY, wait=wait) as node:
        return _import(repo, node, root, path=path, message=message, progress=progress, wait=wait)


def status(repo: Repository, progress: Progress = NULL_PROGRESS) -> _status.Status:
    """New, modified and deleted paths since HEAD (``casync status``)."""
    return _status.status(repo, progress)


def checkout(repo: Repository, rev: str, force: bool = False, progress: Progress = NULL_PROGRESS) -> str:
    """Make the working tree ``rev`` (``casync checkout``); refuses to clobber edits unless ``force``."""
    from casync.worktree import checkout as _checkout

    return cid_str(_checkout.checkout(repo, rev, force, progress))


def restore(repo: Repository, paths: list[str], source: str = "HEAD",
            progress: Progress = NULL_PROGRESS) -> list[str]:
    """Put ``paths`` back as ``source`` has them (``casync restore``); the paths written."""
    from casync.worktree.edit import restore as _restore

    return _restore(repo, source, paths, progress)


def remove(repo: Repository, paths: list[str], cached: bool = False, recursive: bool = False) -> list[str]:
    """Stop tracking ``paths``: delete them, or with ``cached`` keep them on disk (``casync rm``)."""
    from casync.worktree.edit import remove as _remove

    return _remove(repo, paths, cached, recursive)


def worktree_entries(repo: Repository, progress: Progress = NULL_PROGRESS) -> dict[str, Entry]:
    """What the working tree holds now, as tree entries (hashes files; stores nothing)."""
    from casync.worktree import checkout as _checkout

    return _checkout.worktree_entries(repo, progress)


def merge(repo: Repository, rev: str, policy: str | None = None, message: str | None = None,
          resolver: ResolverFn | None = None, resolvers: Mapping[str, ResolverFn] | None = None,
          progress: Progress = NULL_PROGRESS) -> MergeOutcome:
    """Merge ``rev`` into the current branch (``casync merge``).

    ``resolver(path, base, ours, theirs) -> bytes | None`` decides every path both
    sides changed (policy ``custom:api``); ``resolvers`` registers named ones for
    ``custom:NAME`` rules in the config.
    """
    from casync.worktree import merging as _merging

    named = dict(resolvers or {})
    if resolver is not None:
        named["api"] = resolver
        policy = policy or "custom:api"
    return _merging.merge(repo, rev, policy, message, named, progress)


def conflicts(repo: Repository) -> list[OpenConflict]:
    """Unresolved conflicts: a stopped merge's and sibling versions in HEAD (``casync conflicts``)."""
    from casync.worktree.merging import list_conflicts

    return list_conflicts(repo)


def resolve_conflict(repo: Repository, path: str, pick: str | None = None, data: bytes | None = None) -> str:
    """Settle the conflict at ``path`` (``casync resolve``); what was chosen."""
    from casync.worktree.merging import resolve_conflict as _resolve

    return _resolve(repo, path, pick, data)


def path_log(repo: Repository, paths: str | list[str], rev: str = "HEAD",
             limit: int | None = None) -> list[LogEntry]:
    """The commits reachable from ``rev`` that changed a file or directory of ``paths``
    (repository-relative), newest first: ``casync log REV -- PATH``."""
    from casync.repo.pathlog import path_log as _path_log

    return _path_log(repo, rev, [paths] if isinstance(paths, str) else paths, limit)


def list_tags(repo: Repository) -> dict[str, str]:
    """Tag name -> commit CID (``casync tag``)."""
    from casync.repo import tags as _tags

    return {n: cid_str(c) for n, c in _tags.list_tags(repo).items()}


def create_tag(repo: Repository, name: str, rev: str = "HEAD", force: bool = False) -> str:
    """Tag ``rev`` as ``name`` (an existing tag is a RefConflict unless ``force``); the commit CID."""
    from casync.repo import tags as _tags

    target = repo.resolve(rev)
    _tags.create_tag(repo, name, target, force=force)
    return cid_str(target)


def delete_tag(repo: Repository, name: str) -> str:
    """Delete tag ``name``; the commit it named."""
    from casync.repo import tags as _tags

    return cid_str(_tags.delete_tag(repo, name))
