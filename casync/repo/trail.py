"""``casync audit --trail``: who changed what, from the DAG alone.

Per commit reachable from a revision, newest first (the order of ``log``): its replica, author,
time, signature (signer, key id, validity against the trusted keys) and the paths it changed
relative to its first parent (:func:`casync.trees.walk.changed_paths`, the walk that skips
identical subtrees, as ``show`` compares with the first parent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casync.model.cid import Cid, cid_str
from casync.model.commit import Commit
from casync.model.signing import Verdict
from casync.repo.repository import Repository
from casync.repo.signatures import Verifier, signature_json
from casync.trees.walk import changed_paths

__all__ = ["TrailEntry", "trail"]


@dataclass(frozen=True)
class TrailEntry:
    cid: Cid
    commit: Commit
    verdict: Verdict
    paths: list[str]

    def to_json(self) -> dict[str, Any]:
        c = self.commit
        return {"cid": cid_str(self.cid), "replica": c.replica, "author": c.author,
                "time": {"wall_ms": c.time.wall_ms, "logical": c.time.logical},
                "parents": [cid_str(p) for p in c.parents], "message": c.message,
                "signature": signature_json(self.verdict, c), "paths": self.paths}


def trail(repo: Repository, rev: str = "HEAD", limit: int | None = None) -> list[TrailEntry]:
    """The audit trail of ``rev``'s history, newest first (at most ``limit`` commits)."""
    verifier = Verifier(repo)
    graph = repo.graph
    out: list[TrailEntry] = []
    for cid, commit in graph.walk([repo.resolve(rev)]):
        if limit is not None and len(out) >= limit:
            break
        base = graph.node(commit.parents[0]).tree if commit.parents else None
        paths = sorted(changed_paths(repo.blocks.get, base, commit.tree))
        out.append(TrailEntry(cid, commit, verifier.verdict(commit), paths))
    return out
