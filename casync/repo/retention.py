"""Retention: forget old commits' trees by a policy; gc then reclaims (docs/design.md §8.2).

A commit is immutable and names its parents, so no commit can be dropped from the middle
of a history without rewriting every commit after it (new CIDs everywhere, and every
other replica would bring the old ones back at the next sync).  So casync forgets the
*contents*: a forgotten commit keeps its commit block (history, clocks, generations and
ancestry stay whole, and sync still finds common ancestors), but its tree stops being a
root: ``meta`` ``forgotten/<CID>`` says so, gc follows a forgotten commit's parents but
not its tree, and what no kept commit shares is reclaimed.  The decision is the pure
:func:`casync.history.retention.decide`; what this module adds is what must never be
forgotten: every ref's commit (branch heads, tags, remote heads, partial fetches), HEAD,
a stopped merge's other side, and the merge bases of each branch with its remote heads
(the next merge needs their trees).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casync.errors import UnknownRevision
from casync.history.retention import Decision, Policy, Snapshot, decide
from casync.model.cid import Cid, cid_str
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.gc import cids_in_json
from casync.repo.repository import FORGOTTEN_PREFIX

if TYPE_CHECKING:
    from casync.repo.repository import Repository

__all__ = ["RetentionResult", "apply_retention", "protected_commits"]


@dataclass
class RetentionResult:
    dry_run: bool
    branches: dict[str, Decision] = field(default_factory=dict)
    forgotten: list[Cid] = field(default_factory=list)  # newly forgotten, newest first
    already_forgotten: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run,
                "branches": {b: {"keep": [{"commit": cid_str(s.id), "wall_ms": s.wall_ms,  # type: ignore[arg-type]
                                           "reasons": d.reasons[s.id]} for s in d.keep],
                                 "forget": [{"commit": cid_str(s.id), "wall_ms": s.wall_ms}  # type: ignore[arg-type]
                                            for s in d.forget]}
                             for b, d in self.branches.items()},
                "forgotten": [cid_str(c) for c in self.forgotten], "already_forgotten": self.already_forgotten}

    def lines(self) -> list[str]:
        out = []
        verb = "would forget" if self.dry_run else "forgot"
        for branch, d in self.branches.items():
            out.append(f"{branch}: keep {len(d.keep)}, forget {len(d.forget)}")
            for s in d.keep:
                out.append(f"  keep   {cid_str(s.id)}  {','.join(d.reasons[s.id])}")  # type: ignore[arg-type]
        out.append(f"{verb} {len(self.forgotten)} commit(s)"
                   + (f" ({self.already_forgotten} forgotten before)" if self.already_forgotten else ""))
        return out


def protected_commits(repo: Repository) -> set[Cid]:
    """Commits retention never forgets: every ref's, HEAD's, a stopped merge's, and the
    merge bases of each local branch with every remote head."""
    refs = repo.refs.list_refs()
    out = set(refs.values())
    head = repo.head()
    if head is not None:
        out.add(head)
    state = repo.store.get("meta", b"merge_state")
    if state is not None:
        out.update(cids_in_json(json.loads(state)))
    heads = [cid for name, cid in refs.items() if name.startswith("heads/")]
    remotes = {cid for name, cid in refs.items() if name.startswith("remotes/")}
    for ours in heads:
        for theirs in remotes:
            if theirs != ours:
                out.update(repo.graph.merge_bases(ours, theirs))
    return out


def apply_retention(repo: Repository, policy: Policy, branches: list[str] | None = None, *, dry_run: bool = False,
                    progress: Progress = NULL_PROGRESS) -> RetentionResult:
    """Decide per branch (default: every local branch) and record the forgotten commits.

    A commit is forgotten only if every selected branch's decision forgets it and no
    branch left out of the selection reaches it (their histories are not thinned)."""
    local = {name[len("heads/"):]: cid for name, cid in repo.refs.list_refs("heads/").items()}
    chosen = branches if branches is not None else sorted(local)
    for b in chosen:
        if b not in local:
            raise UnknownRevision(f"no branch {b!r}", hint="list branches with 'casync branch'")
    result = RetentionResult(dry_run=dry_run)
    keep_anyway = frozenset(protected_commits(repo))
    kept: set[Cid] = set()
    forget: dict[Cid, int] = {}
    progress.start("deciding retention", None)
    for b in chosen:
        snaps = [Snapshot(cid, commit.time.wall_ms) for cid, commit in repo.graph.walk([local[b]])]
        progress.advance(len(snaps))
        decision = decide(snaps, policy, keep_anyway)
        result.branches[b] = decision
        kept.update(s.id for s in decision.keep)  # type: ignore[misc]
        for s in decision.forget:
            forget[s.id] = s.wall_ms  # type: ignore[index]
    progress.finish()
    others = [cid for name, cid in local.items() if name not in chosen]
    exempt = {cid for cid, _ in repo.graph.walk_nodes(others)} if others else set()
    already = {key[len(FORGOTTEN_PREFIX):] for key, _ in repo.store.items("meta", FORGOTTEN_PREFIX)}
    order = sorted(forget.items(), key=lambda kv: kv[1], reverse=True)
    for cid, _wall in order:
        if cid in kept or cid in exempt:
            continue
        if cid in already:
            result.already_forgotten += 1
            continue
        result.forgotten.append(cid)
    if not dry_run and result.forgotten:
        _record(repo, result.forgotten, chosen)
    return result


def _record(repo: Repository, cids: list[Cid], branches: list[str]) -> None:
    meta = repo.store.db("meta")
    value = json.dumps({"time_ms": int(time.time() * 1000), "branches": branches}).encode()
    with repo.store.writer_lock():
        protected = protected_commits(repo)  # a ref may have moved onto one since the decision

        def fn(txn: Any) -> None:
            for cid in cids:
                if cid not in protected:
                    txn.put(FORGOTTEN_PREFIX + cid, value, db=meta)

        repo.store.write(fn)
