"""``fsck``: check every block reachable from every ref and HEAD of a repository.

Present, hash-valid, decodable; every commit's generation, clock and hybrid-logical time
consistent with its parents'; no commit stamped with this repository's own replica id that was
not made here (later than the last commit made here, meta ``hlc_last``: another site commits
under this id).  Two commits with one (replica, counter) stamp are a *note*, not damage: one
replica committing on two branches gives them, as do two sites sharing an id.
Commits retention forgot (§8.2) are followed through their parents, not their tree; in a
partial clone the entries outside its paths count as *unfetched*, not missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casync.errors import BlockNotFound, CasyncError, CorruptBlock
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str
from casync.model.commit import Commit, HybridTime, decode_commit
from casync.progress import NULL_PROGRESS, Progress
from casync.trees.paths import outside_cids
from casync.trees.unixfs import validated_links

if TYPE_CHECKING:
    from casync.repo.repository import Repository

__all__ = ["FsckReport", "fsck"]


@dataclass
class FsckReport:
    checked: int = 0
    missing: dict[str, str] = field(default_factory=dict)  # cid -> where it was needed
    corrupt: dict[str, str] = field(default_factory=dict)  # cid -> reason
    refs: dict[str, str] = field(default_factory=dict)
    pack_bytes: int = 0
    reclaimable_bytes: int = 0
    unfetched: int = 0  # a partial clone's entries outside its paths (never fetched: not damage)
    # "replica:counter" -> the different commits stamped with it: commits on two branches of one
    # replica, or two sites sharing a replica id (a note: it does not make the check fail)
    reused_stamps: dict[str, list[str]] = field(default_factory=dict)
    # cid -> why: stamped with this repository's replica id but not made here
    foreign: dict[str, str] = field(default_factory=dict)
    own_replica: str | None = field(default=None, repr=False)
    last_local: HybridTime | None = field(default=None, repr=False)  # the last commit made here
    _stamps: dict[tuple[str, int], Cid] = field(default_factory=dict, repr=False)
    damaged: list[Cid] = field(default_factory=list, repr=False)  # missing or hash-mismatched: refetchable

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt and not self.foreign

    def stamp(self, cid: Cid, commit: Commit) -> None:
        """Note ``commit``'s (replica, own counter), and whether it claims this repository's
        replica id without being made here: every commit made here is at most ``hlc_last``
        (times only grow here), so a later one is another site's (or a copy restored from an
        older backup, whose next commits would reuse stamps)."""
        key = (commit.replica, commit.clock.get(commit.replica, 0))
        first = self._stamps.setdefault(key, cid)
        if first != cid:
            same = self.reused_stamps.setdefault(f"{key[0]}:{key[1]}", [cid_str(first)])
            same.append(cid_str(cid))
        if self.own_replica is not None and commit.replica == self.own_replica and (
                self.last_local is None or commit.time > self.last_local):
            t = commit.time
            last = (f"{self.last_local.wall_ms}.{self.last_local.logical}" if self.last_local is not None
                    else "none was")
            self.foreign[cid_str(cid)] = (f"stamped with this repository's replica id {commit.replica!r} at "
                                          f"{t.wall_ms}.{t.logical}, later than the last commit made here "
                                          f"({last})")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "missing": self.missing,
                "corrupt": self.corrupt, "foreign": self.foreign, "reused_stamps": self.reused_stamps,
                "refs": self.refs,
                "pack_bytes": self.pack_bytes, "reclaimable_bytes": self.reclaimable_bytes,
                "unfetched": self.unfetched}


def fsck(repo: Repository, progress: Progress = NULL_PROGRESS) -> FsckReport:
    """Check every block reachable from every ref and HEAD (see the module docstring)."""
    report = FsckReport(own_replica=repo.replica, last_local=repo.last_local_time())
    roots: dict[str, Cid] = dict(repo.refs.list_refs())
    head = repo.head()
    if head is not None:
        roots["HEAD"] = head
    report.refs = {k: cid_str(v) for k, v in roots.items()}
    walk = _Walk(repo, report, progress, repo.forgotten_commits())
    progress.start("checking blocks", None)
    for name, root in roots.items():
        walk.run(root, name)
    progress.finish()
    total, used = repo.blocks.pack_bytes()
    report.pack_bytes = total
    report.reclaimable_bytes = total - used
    return report


class _Walk:
    """One check's walk: each block once, across every root."""

    def __init__(self, repo: Repository, report: FsckReport, progress: Progress, forgotten: set[Cid]) -> None:
        self.repo, self.report, self.progress, self.forgotten = repo, report, progress, forgotten
        self.seen: set[Cid] = set()
        self.unfetched: set[Cid] = set()

    def run(self, root: Cid, name: str) -> None:
        repo, report = self.repo, self.report
        stack: list[tuple[Cid, str]] = [(root, name)]
        while stack:
            cid, where = stack.pop()
            if cid in self.seen:
                continue
            self.seen.add(cid)
            report.checked += 1
            try:
                block = repo.blocks.get(cid)
                self.progress.advance(len(block))  # bytes, like every other progress report
            except BlockNotFound:
                if cid in self.unfetched:
                    report.unfetched += 1  # outside a partial clone's paths: never fetched, not lost
                    continue
                report.missing[cid_str(cid)] = where
                report.damaged.append(cid)
                continue
            except CorruptBlock:
                report.corrupt[cid_str(cid)] = f"bytes do not match the CID (needed by {where})"
                report.damaged.append(cid)
                continue
            try:
                children = validated_links(cid, block)
                if cid_codec(cid) == DAG_CBOR:
                    commit = decode_commit(block, cid)
                    report.stamp(cid, commit)
                    repo.check_commit_against_parents(cid, commit)
                    self.unfetched |= self._allowed_missing(commit.tree)
            except CasyncError as exc:
                report.corrupt[cid_str(cid)] = str(exc)
                continue
            if cid in self.forgotten:
                children = children[1:]  # retention forgot its tree (§8.2); its parents stay
            stack.extend((child, cid_str(cid)) for child in children)

    def _allowed_missing(self, tree: Cid) -> set[Cid]:
        """In a partial clone: the entries of ``tree`` outside its paths (read from the
        directories on the way; one of those missing is reported when the walk reaches it)."""
        partial = self.repo.partial
        if partial is None:
            return set()
        try:
            return outside_cids(self.repo.blocks.get, tree, partial)
        except CasyncError:
            return set()
