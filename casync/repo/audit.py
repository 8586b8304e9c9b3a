"""``casync audit``: everything a snapshot's DAG promises, checked, with the paths damage touches.

From one commit (or any block) every reachable block is visited once: present; read and
hash-checked (interior nodes and commits always; raw leaves with ``deep``, or a seeded random
share with ``sample_pct``, like restic's ``check --read-data-subset``); dag-pb, UnixFS and
commit structure valid and canonical (:mod:`casync.model.canonical`); directory names valid;
every commit consistent with its parents and not from the future
(:mod:`casync.history.consistency`); no (replica, counter) stamp on two commits; signatures
valid against the trusted keys.  ``deep`` also checks the pack records around every block and
parses every pack end to end.  A second walk maps each damaged block to the tree paths that
use it.  :func:`record_audit` stores the outcome (meta key ``audit_last``) for the agent.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from casync.errors import BlockNotFound, CasyncError, CorruptBlock
from casync.history.consistency import future_problem, parent_problems
from casync.model.canonical import canonical_problem
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec, cid_str
from casync.model.commit import Commit, decode_commit
from casync.model.objects import UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD, decode_pbnode, decode_unixfs
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.fsck import FsckReport
from casync.repo.repository import Repository
from casync.repo.signatures import Verifier
from casync.settings import audit_skew_ms
from casync.settings import require_signed as settings_require_signed
from casync.trees.paths import outside_cids
from casync.trees.unixfs import validated_links

__all__ = ["AUDIT_META_KEY", "AuditOptions", "AuditReport", "Extra", "Finding", "audit", "last_audit", "paths_using",
           "record_audit"]

AUDIT_META_KEY = b"audit_last"
_DIR_TYPES = (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD)
_MAX_PATHS = 20  # per finding: enough to act on, bounded for a block every file shares


@dataclass
class Finding:
    """One problem: its kind, the block it is about (None for a pack-level one), what is
    wrong, and the tree paths that use the block."""

    kind: str
    cid: Cid | None
    detail: str
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "cid": cid_str(self.cid) if self.cid is not None else None,
                "paths": self.paths, "detail": self.detail}


@dataclass(frozen=True)
class AuditOptions:
    deep: bool = False
    sample_pct: float = 0.0
    seed: int | None = None
    require_signed: bool | None = None  # None: config require_signed
    now_ms: int | None = None  # the clock future times are judged by (None: now)


@dataclass
class AuditReport:
    root: Cid
    commits: int = 0
    blocks: int = 0
    bytes: int = 0
    read: int = 0  # blocks whose bytes were read and hash-checked
    seed: int | None = None
    signatures: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)  # worth knowing, not damage (``ok`` stays)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, kind: str, cid: Cid | None, detail: str) -> None:
        self.findings.append(Finding(kind, cid, detail))

    def to_json(self) -> dict[str, Any]:
        return {"root": cid_str(self.root), "ok": self.ok, "commits": self.commits, "blocks": self.blocks,
                "bytes": self.bytes, "read": self.read, "seed": self.seed, "signatures": self.signatures,
                "findings": [f.to_json() for f in self.findings], "notes": [f.to_json() for f in self.notes]}


Extra = Callable[[AuditReport, set[Cid]], None]
"""A further check over the reached blocks (``audit --remote``), run before paths are mapped."""


def audit(repo: Repository, root: Cid, options: AuditOptions = AuditOptions(),
          progress: Progress = NULL_PROGRESS, extra: Extra | None = None) -> AuditReport:
    """Audit the DAG below ``root`` (a commit: its whole history; or a tree or file)."""
    return _Auditor(repo, root, options, progress).run(extra)


class _Auditor:
    def __init__(self, repo: Repository, root: Cid, options: AuditOptions, progress: Progress) -> None:
        self.repo = repo
        self.options = options
        self.progress = progress
        self.report = AuditReport(root)
        self.verifier = Verifier(repo)
        self.require_signed = (options.require_signed if options.require_signed is not None
                               else settings_require_signed(repo.config))
        self.now_ms = options.now_ms if options.now_ms is not None else int(time.time() * 1000)
        self.skew_ms = audit_skew_ms(repo.config)
        # its stamp(): one (replica, counter) on two commits; this replica id's commits not made here
        self.stamps = FsckReport(own_replica=repo.replica, last_local=repo.last_local_time())
        self.seen: set[Cid] = set()
        self.leaves: list[Cid] = []
        self.trees: list[Cid] = []  # the commits' trees (or the root itself), for the path walk
        self.partial = repo.partial
        self.unfetched: set[Cid] = set()  # a partial clone's entries outside its paths: absent by design

    def run(self, extra: Extra | None = None) -> AuditReport:
        root = self.report.root
        if cid_codec(root) != DAG_CBOR:
            self.trees.append(root)
        self.progress.start("auditing", None)
        self._walk(root)
        self._leaves()
        if self.options.deep:
            self._packs()
        self.progress.finish()
        for stamp, cids in self.stamps.reused_stamps.items():
            for text in cids[1:]:
                cid = next(c for c in self.seen if cid_str(c) == text)
                self.report.notes.append(Finding("reused-stamp", cid, f"replica:counter {stamp} also stamps "
                                                 f"{cids[0]} (commits on two branches of one replica, or two "
                                                 "sites sharing a replica id)"))
        for text, why in self.stamps.foreign.items():
            self.report.add("foreign-commit", next(c for c in self.seen if cid_str(c) == text), why)
        if extra is not None:
            extra(self.report, self.seen)
        damaged = {f.cid for f in self.report.findings if f.cid is not None and cid_codec(f.cid) != DAG_CBOR}
        if damaged:
            uses = paths_using(self.repo, self.trees, damaged)
            for finding in self.report.findings:
                if finding.cid in uses:
                    finding.paths = uses[finding.cid][:_MAX_PATHS]
        return self.report

    def _walk(self, root: Cid) -> None:
        report = self.report
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in self.seen:
                continue
            self.seen.add(cid)
            report.blocks += 1
            if cid_codec(cid) == RAW:
                self.leaves.append(cid)
                continue
            try:
                block = self.repo.blocks.get(cid)
            except BlockNotFound as exc:
                if cid not in self.unfetched:
                    report.add("missing", cid, exc.message)
                continue
            except CorruptBlock:
                report.add("corrupt", cid, "the stored bytes do not hash to the CID")
                continue
            report.bytes += len(block)
            report.read += 1
            self.progress.advance(len(block))
            try:
                links = validated_links(cid, block)
            except CasyncError as exc:
                report.add("invalid", cid, exc.message)
                continue
            problem = canonical_problem(cid, block)
            if problem is not None:
                report.add("non-canonical", cid, problem)
            if cid_codec(cid) == DAG_CBOR:
                commit = decode_commit(block, cid)
                self.trees.append(commit.tree)
                if self.partial is not None:
                    with contextlib.suppress(CasyncError):  # a missing directory is reported by the walk
                        self.unfetched |= outside_cids(self.repo.blocks.get, commit.tree, self.partial)
                self._commit(cid, commit)
            stack.extend(reversed(links))

    def _commit(self, cid: Cid, commit: Commit) -> None:
        report = self.report
        report.commits += 1
        self.stamps.stamp(cid, commit)
        try:
            parents = [self.repo.graph.get(p) for p in commit.parents]
        except CasyncError:
            parents = None  # a missing or broken parent is its own finding
        if parents is not None:
            for kind, detail in parent_problems(commit, parents):
                report.add(kind, cid, detail)
        future = future_problem(commit, self.now_ms, self.skew_ms)
        if future is not None:
            report.add("future", cid, future)
        verdict = self.verifier.verdict(commit)
        report.signatures[verdict.status] = report.signatures.get(verdict.status, 0) + 1
        if verdict.status == "invalid":
            report.add("bad-signature", cid, f"the signature does not verify under any key trusted for "
                                             f"replica {commit.replica}")
        elif self.require_signed and not verdict.ok:
            why = "not signed" if verdict.status == "unsigned" else f"signed, but no key of replica " \
                                                                    f"{commit.replica} is trusted"
            report.add(verdict.status, cid, f"{why}, and signed history is required")

    def _leaves(self) -> None:
        report = self.report
        sizes = self.repo.blocks.sizes(self.leaves)
        for cid in self.leaves:
            if cid not in sizes and cid not in self.unfetched:
                report.add("missing", cid, f"block {cid_str(cid)} is not in the local store")
        report.bytes += sum(sizes.values())
        present = sorted(sizes)
        if self.options.deep:
            chosen = present
        elif self.options.sample_pct > 0 and present:
            seed = self.options.seed if self.options.seed is not None else random.SystemRandom().randrange(1 << 32)
            report.seed = seed
            count = min(len(present), math.ceil(len(present) * self.options.sample_pct / 100))
            chosen = sorted(random.Random(seed).sample(present, count))
        else:
            chosen = []
        for cid in chosen:
            try:
                data = self.repo.blocks.get(cid)
            except BlockNotFound as exc:
                report.add("missing", cid, exc.message)
                continue
            except CorruptBlock:
                report.add("corrupt", cid, "the stored bytes do not hash to the CID")
                continue
            report.read += 1
            self.progress.advance(len(data))

    def _packs(self) -> None:
        blocks = self.repo.blocks
        broken = {f.cid for f in self.report.findings if f.kind == "missing"}
        for cid in sorted(self.seen - broken):
            problem = blocks.record_problem(cid)
            if problem is not None:
                self.report.add("pack-record", cid, problem)
        named = {f.cid for f in self.report.findings if f.kind in ("pack-record", "missing")}
        for pack, offset, detail, named_cid in blocks.scan_packs():
            if named_cid is None or named_cid not in named:
                self.report.add("pack", named_cid, f"pack {pack:08d} at offset {offset}: {detail}")


def paths_using(repo: Repository, trees: Iterable[Cid], wanted: set[Cid]) -> dict[Cid, list[str]]:
    """The tree paths at which ``trees`` use each block of ``wanted`` (``/`` for a tree's root),
    sorted.  Each (node, path) pair is visited once, so trees sharing subtrees cost little;
    a node that cannot be read is skipped (it is a finding of its own)."""
    out: dict[Cid, set[str]] = {}
    visited: set[tuple[Cid, str]] = set()
    stack = [(t, "") for t in dict.fromkeys(trees)]
    while stack:
        cid, path = stack.pop()
        if (cid, path) in visited:
            continue
        visited.add((cid, path))
        if cid in wanted:
            out.setdefault(cid, set()).add(path or "/")
        if cid_codec(cid) != DAG_PB:
            continue
        try:
            node = decode_pbnode(repo.blocks.get(cid))
            kind = decode_unixfs(node.data).type if node.data is not None else None
        except CasyncError:
            continue
        for link in node.links:
            raw = link.name or b""
            if kind == UNIXFS_HAMT_SHARD:  # a shard's links: "XX" + name, or "XX" for a sub-shard
                raw = raw[2:]
            name = raw.decode("utf-8", "replace")
            stack.append((link.cid, f"{path}/{name}".lstrip("/") if kind in _DIR_TYPES and name else path))
    return {cid: sorted(paths) for cid, paths in out.items()}


def record_audit(repo: Repository, ok: bool, findings: int, when: float, kind: str = "audit") -> None:
    """Store an audit's outcome as meta key ``audit_last`` (JSON ``{ok, findings, time, kind}``,
    ``time`` in Unix seconds), which the agent exports as ``audit_last_result``."""
    value = {"ok": bool(ok), "findings": int(findings), "time": float(when), "kind": kind}
    repo.store.put("meta", AUDIT_META_KEY, json.dumps(value, sort_keys=True).encode())


def last_audit(repo: Repository) -> dict[str, Any] | None:
    """The outcome :func:`record_audit` stored last, or None."""
    return repo.last_audit()  # one reader for fsck's and audit's records
