"""What the repository itself tells an operator: the last audit, the head, the conflicts waiting
for a person and the recent commits (read once a round; the last three only when the head moved,
since listing conflicts reads the head's tree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casync.agent.snapshot import CommitSummary
from casync.model.cid import cid_str
from casync.repo.repository import Repository

__all__ = ["RECENT_COMMITS", "RepoStatus", "read_status"]

RECENT_COMMITS = 10


@dataclass(frozen=True)
class RepoStatus:
    audit: dict[str, Any] | None = None
    head: str | None = None
    conflicts: int = 0
    recent: tuple[CommitSummary, ...] = ()


def read_status(path: Path, last: RepoStatus) -> RepoStatus:
    """The status of the repository at ``path``; ``last`` is reused while the head is the same."""
    from casync.worktree import merging as merger
    repo = Repository.open(path, search_parents=False)
    try:
        audit = repo.last_audit()
        head = repo.head()
        shown = cid_str(head) if head is not None else None
        if shown == last.head:
            return RepoStatus(audit, last.head, last.conflicts, last.recent)
        if head is None:
            return RepoStatus(audit)
        recent = tuple(CommitSummary(cid_str(e.cid), e.commit.message, e.commit.replica,
                                     e.commit.time.wall_ms / 1000.0) for e in repo.log(limit=RECENT_COMMITS))
        return RepoStatus(audit, shown, len(merger.list_conflicts(repo)), recent)
    finally:
        repo.close()
