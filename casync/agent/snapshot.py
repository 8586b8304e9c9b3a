"""What the agent knows about its site at one moment: the one value the status page, ``/readyz``
and the JSON status render, so each shows the same facts.  Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AgentSnapshot", "CommitSummary", "PeerStatus"]


@dataclass(frozen=True)
class PeerStatus:
    """One sync peer (or IPFS remote) as this site last saw it.  Times are Unix seconds."""

    name: str
    url: str
    region: str | None
    kind: str                     # "peer" | "ipfs" | "master"
    last_success: float | None    # end of the last sync that succeeded
    last_attempt: float | None
    lag_seconds: float | None     # now - last_success (None: never synced)
    consecutive_failures: int
    failures_total: int
    last_error: str | None        # one line, for people
    overdue: bool                 # not synced within max_sync_delay


@dataclass(frozen=True)
class CommitSummary:
    """A recent commit on the synced branch."""

    cid: str
    message: str
    replica: str
    time: float                   # the commit's wall-clock time (HLC physical part), Unix seconds


@dataclass(frozen=True)
class AgentSnapshot:
    """This site and everything an operator looks at first."""

    site: str                     # this replica's id
    region: str | None
    role: str                     # "peer" | "replica"
    branch: str
    head: str | None              # CID of the branch head, None before the first commit
    started: float
    now: float
    sync_interval: float          # seconds
    max_sync_delay: float         # seconds
    peers: tuple[PeerStatus, ...]
    unresolved_conflicts: int
    recent_commits: tuple[CommitSummary, ...]
    rounds: int                   # sync rounds completed since start
