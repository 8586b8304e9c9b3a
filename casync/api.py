"""The Python API for applications: :class:`Repository` with working-tree porcelain.

>>> from casync import Repository
>>> repo = Repository.init("site-data", replica="edge-1")       # doctest: +SKIP
>>> with repo.transaction(branch="main", message="reading") as tx:  # doctest: +SKIP
...     tx.write("sensors/t1.json", b'{"t": 21.5}')
>>> repo.read("sensors/t1.json")                                 # doctest: +SKIP
b'{"t": 21.5}'

Revisions are strings (``HEAD``, ``main``, ``HEAD~2``, a CID or CID prefix); commit
identifiers returned to callers are text CIDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from casync.errors import CasyncError, StateRefused
from casync.model.cid import cid_str
from casync.repo import repository as _repo
from casync.trees.unixfs import Entry, TreeChange
from casync.worktree import checkout as workdir

if TYPE_CHECKING:
    from casync.merge.threeway import ResolverFn
    from casync.worktree import merging as merger
    from casync.worktree.merging import MergeOutcome
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import FsckReport, LogEntry, Transaction
from casync.worktree.checkout import Status

__all__ = ["CasyncError", "Entry", "FsckReport", "LogEntry", "Repository", "Status", "Transaction",
           "TreeChange"]


class Repository(_repo.Repository):
    """A repository with its working tree: everything the CLI can do, as methods."""

    def commit(self, message: str, author: str | None = None, allow_empty: bool = False,
               progress: Progress = NULL_PROGRESS) -> str:
        """Snapshot the whole working tree; return the new commit's CID.

        Raises :class:`casync.errors.NothingToCommit` when nothing changed, and
        :class:`casync.errors.StateRefused` while a merge is stopped for conflicts (its
        commit is ``merge --continue``, which records both parents).
        """
        from casync.worktree import merging as merger
        if merger.merge_state(self) is not None:
            raise StateRefused("a merge is in progress: a plain commit would drop its second parent",
                               hint="finish it with 'casync merge --continue', or 'casync merge --abort'")
        return cid_str(workdir.commit_worktree(self, message, author, allow_empty, progress))

    def status(self, progress: Progress = NULL_PROGRESS) -> Status:
        return workdir.status(self, progress)

    def checkout(self, rev: str, force: bool = False, progress: Progress = NULL_PROGRESS) -> str:
        return cid_str(workdir.checkout(self, rev, force, progress))

    def restore(self, paths: list[str], source: str = "HEAD", progress: Progress = NULL_PROGRESS) -> list[str]:
        from casync.worktree import edit as workedit
        return workedit.restore(self, source, paths, progress)

    def remove(self, paths: list[str], cached: bool = False, recursive: bool = False) -> list[str]:
        """Stop tracking ``paths``: delete them, or with ``cached`` keep them on disk (``casync rm``)."""
        from casync.worktree import edit as workedit
        return workedit.remove(self, paths, cached, recursive)

    def worktree_entries(self, progress: Progress = NULL_PROGRESS) -> dict[str, Entry]:
        """What the working tree holds now, as tree entries (hashes files; stores nothing)."""
        return workdir.worktree_entries(self, progress)

    def merge(self, rev: str, policy: str | None = None, message: str | None = None,
              resolver: ResolverFn | None = None, resolvers: Mapping[str, ResolverFn] | None = None,
              progress: Progress = NULL_PROGRESS) -> MergeOutcome:
        """Merge ``rev`` into the current branch.

        ``resolver(path, base, ours, theirs) -> bytes | None`` decides every path both
        sides changed (policy ``custom:api``); ``resolvers`` registers named ones for
        ``custom:NAME`` rules in the config.
        """
        from casync.worktree import merging as merger
        named = dict(resolvers or {})
        if resolver is not None:
            named["api"] = resolver
            policy = policy or "custom:api"
        return merger.merge(self, rev, policy, message, named, progress)

    def conflicts(self) -> list[merger.OpenConflict]:
        from casync.worktree import merging as merger
        return merger.list_conflicts(self)

    def resolve_conflict(self, path: str, pick: str | None = None, data: bytes | None = None) -> str:
        from casync.worktree import merging as merger
        return merger.resolve_conflict(self, path, pick, data)

    def resolve_cid(self, rev: str) -> str:
        """The text CID of the commit ``rev`` names."""
        return cid_str(self.resolve(rev))

    def path_log(self, paths: str | list[str], rev: str = "HEAD", limit: int | None = None) -> list[LogEntry]:
        """The commits reachable from ``rev`` that changed a file or directory of ``paths``
        (repository-relative), newest first: ``casync log REV -- PATH``."""
        from casync.repo.pathlog import path_log

        return path_log(self, rev, [paths] if isinstance(paths, str) else paths, limit)

    def tags(self) -> dict[str, str]:
        """Tag name -> commit CID."""
        from casync.repo import tags
        return {n: cid_str(c) for n, c in tags.list_tags(self).items()}

    def tag(self, name: str, rev: str = "HEAD", force: bool = False) -> str:
        """Tag ``rev`` as ``name`` (an existing tag is a RefConflict unless ``force``); the commit CID."""
        from casync.repo import tags
        target = self.resolve(rev)
        tags.create_tag(self, name, target, force=force)
        return cid_str(target)

    def delete_tag(self, name: str) -> str:
        from casync.repo import tags
        return cid_str(tags.delete_tag(self, name))
