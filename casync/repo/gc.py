"""Garbage collection: mark every block a root reaches, sweep the rest, rewrite packs.

Safe beside a process that commits (docs/design.md §8.1): the packs gc may rewrite are
*sealed* first (under the writer lock, briefly: new batches go to a new pack number), so
blocks written after gc started are never touched; marking and copying run without the
lock; the final swap takes the writer lock, marks again from the roots of that moment
(only what the first mark did not reach is walked, so this is short), copies any block a
commit made reachable meanwhile, and changes the index in one LMDB transaction.  Only
then are the old packs deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casync.errors import BlockNotFound, CasyncError, StateRefused
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec, cid_str, is_cid, is_empty_block, parse_cid
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import FORGOTTEN_PREFIX
from casync.store.repack import TMP_SUFFIX, PackRewriter, PackUse, pack_numbers, pack_usage, swap_index
from casync.trees.paths import outside_cids
from casync.trees.unixfs import validated_links

if TYPE_CHECKING:
    from casync.repo.repository import Repository

__all__ = ["DEFAULT_PRUNE", "GcReport", "cids_in_json", "gc", "gc_roots", "mark"]

DEFAULT_PRUNE = "2w"
"""Reflog entries younger than this keep their commits (git's default, two weeks)."""



@dataclass
class GcReport:
    """What gc found and did (``dry_run``: what it would do).  Bytes are pack-file bytes;
    ``pack_bytes_after`` includes what other processes wrote while gc ran."""

    dry_run: bool
    roots: int = 0
    reachable_blocks: int = 0
    swept_blocks: int = 0
    swept_bytes: int = 0
    packs_before: int = 0
    packs_after: int = 0
    packs_rewritten: int = 0
    packs_deleted: int = 0
    packs_kept: int = 0
    pack_bytes_before: int = 0
    pack_bytes_after: int = 0
    reflog_expired: int = 0
    late_copies: int = 0
    forgotten_commits: int = 0
    reclaimed_bytes: int = 0  # the packs gc deleted minus the packs it wrote (others' writes meanwhile aside)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "roots": self.roots, "reachable_blocks": self.reachable_blocks,
                "swept_blocks": self.swept_blocks, "swept_bytes": self.swept_bytes,
                "packs_before": self.packs_before, "packs_after": self.packs_after,
                "packs_rewritten": self.packs_rewritten, "packs_deleted": self.packs_deleted,
                "packs_kept": self.packs_kept, "pack_bytes_before": self.pack_bytes_before,
                "pack_bytes_after": self.pack_bytes_after, "reclaimed_bytes": self.reclaimed_bytes,
                "reflog_expired": self.reflog_expired, "late_copies": self.late_copies,
                "forgotten_commits": self.forgotten_commits}


# --- roots and marking ------------------------------------------------------------------------


def cids_in_json(value: Any) -> Iterator[Cid]:
    """Every string in a JSON value that is a text CID (merge state, worktree, push-pending)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and len(v) > 40 and v[0] == "b":
            with contextlib.suppress(CasyncError, ValueError, KeyError):
                yield parse_cid(v)


def _meta_cids(key: bytes, value: bytes) -> Iterator[Cid]:
    """The blocks a ``meta`` value names.  Read generically, so a meta key added later that
    names a block in any of the two ways meta values do (binary CID, or text CIDs inside
    JSON) is a root without gc knowing it: the safe direction."""
    if key.startswith(FORGOTTEN_PREFIX):
        return  # the commit itself is reached from the refs; its tree is not a root
    if value.startswith(b"detached:"):
        value = value[len(b"detached:"):]
    if 30 <= len(value) <= 80 and is_cid(value):
        yield value
        return
    if value[:1] in (b"{", b"["):
        with contextlib.suppress(ValueError):
            yield from cids_in_json(json.loads(value))


def gc_roots(repo: Repository, cutoff_ms: int | None) -> dict[Cid, str]:
    """Every block something names, with why: refs (branches, tags, remote heads, partial
    fetches, tag conflicts), HEAD, reflog entries after ``cutoff_ms`` (None: all),
    every meta value naming a block (stat cache tree and commit, the checked-out tree,
    a stopped merge, pending IPFS pushes) and every file in the stat cache."""
    roots: dict[Cid, str] = {}
    for name, cid in repo.refs.list_refs().items():
        roots.setdefault(cid, f"ref {name}")
    head = repo.head()
    if head is not None:
        roots.setdefault(head, "HEAD")
    for key, raw in repo.store.items("reflog"):
        entry = json.loads(raw)
        if cutoff_ms is None or entry["time_ms"] > cutoff_ms:
            name = key.split(b"\x00")[0].decode()
            for side in ("old", "new"):
                if entry.get(side):
                    roots.setdefault(parse_cid(entry[side]), f"reflog of {name}")
    for key, value in repo.store.items("meta"):
        for cid in _meta_cids(key, value):
            roots.setdefault(cid, f"meta {key.decode(errors='replace')}")
    for path, stat in repo.store.load_stat_cache().items():
        roots.setdefault(stat[6], f"stat cache {path}")
    return roots


def _forgotten(repo: Repository) -> set[Cid]:
    return {key[len(FORGOTTEN_PREFIX):] for key, _ in repo.store.items("meta", FORGOTTEN_PREFIX)}


def mark(repo: Repository, roots: dict[Cid, str], marked: set[Cid], progress: Progress = NULL_PROGRESS,
         forgotten: frozenset[Cid] | set[Cid] = frozenset()) -> set[Cid]:
    """Add to ``marked`` every block the roots reach; return the ones added.

    ``marked`` is closed downwards (a marked block's links are marked), so a block already
    in it is not walked again: a second mark from later roots visits only what is new.  A
    forgotten commit's tree is not followed (its parents are).  A missing or undecodable
    block that may link to others stops gc: what it links to cannot be known, so nothing
    may be swept."""
    added: set[Cid] = set()
    partial = repo.partial
    unfetched: set[Cid] = set()  # a partial clone's entries outside its paths: never held, link to nothing held
    if partial is not None:  # trees named directly (the checked-out one, a stopped merge's) as well as commits'
        for root, why in roots.items():
            if cid_codec(root) == DAG_PB and not why.startswith("stat cache"):  # (those are files)
                with contextlib.suppress(CasyncError):
                    unfetched |= outside_cids(repo.blocks.get, root, partial)
    stack = [(cid, why) for cid, why in roots.items() if cid not in marked]
    while stack:
        cid, why = stack.pop()
        if cid in marked:
            continue
        marked.add(cid)
        added.add(cid)
        progress.advance(1)
        if cid_codec(cid) == RAW:
            continue
        try:
            block = repo.blocks.get(cid)
        except BlockNotFound:
            if is_empty_block(cid) or cid in unfetched:
                continue
            raise StateRefused(f"gc stopped: block {cid_str(cid)} ({why}) is missing, so what it links to "
                               "is unknown; nothing was deleted",
                               hint="run 'casync fsck' (and 'casync fsck --repair REMOTE')") from None
        except CasyncError as exc:
            raise StateRefused(f"gc stopped: block {cid_str(cid)} ({why}) cannot be read: {exc}; nothing was "
                               "deleted", hint="run 'casync fsck' (and 'casync fsck --repair REMOTE')") from None
        links = validated_links(cid, block)
        if partial is not None and cid_codec(cid) == DAG_CBOR and links:
            with contextlib.suppress(CasyncError):  # a missing directory on the way stops gc below
                unfetched |= outside_cids(repo.blocks.get, links[0], partial)
        if cid in forgotten:
            links = links[1:]  # a commit's links are [tree, *parents]
        where = cid_str(cid)
        stack.extend((link, f"linked from {where}") for link in links)
    return added


# --- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_lock(repo: Repository) -> Iterator[None]:
    """One gc at a time (``.casync/gc.lock``); a second one is refused, not queued."""
    fd = os.open(repo.store.root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateRefused("another 'casync gc' is running in this repository",
                               hint="wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _pack_bytes(repo: Repository) -> tuple[int, int]:
    numbers = pack_numbers(repo.store.pack_dir)
    total = 0
    for n in numbers:
        with contextlib.suppress(FileNotFoundError):
            total += (repo.store.pack_dir / f"{n:08d}.pack").stat().st_size
    return len(numbers), total


def _seal(repo: Repository) -> set[int]:
    """Under the writer lock: cut killed writes, point ``pack_current`` past every pack on
    disk; return the packs that now receive no more writes (gc's to rewrite)."""
    store = repo.store
    with store.writer_lock():
        store.blocks.reclaim_tail()
        numbers = pack_numbers(store.pack_dir)
        current = int(store.get("meta", b"pack_current") or b"1")
        store.put("meta", b"pack_current", str(max([current, *numbers]) + 1).encode())
        return set(numbers)


def _plan(uses: Iterable[PackUse], marked: set[Cid]) -> tuple[list[PackUse], list[PackUse], list[PackUse]]:
    """(packs kept as they are, packs to rewrite, packs to delete whole)."""
    keep, rewrite, delete = [], [], []
    for use in sorted(uses, key=lambda u: u.number):
        live = [r for r in use.records if r[0] in marked]
        if not live:
            delete.append(use)
        elif len(live) == len(use.records) and use.size == use.used_bytes():
            keep.append(use)
        else:
            rewrite.append(use)
    return keep, rewrite, delete


def _expire_reflog(repo: Repository, cutoff_ms: int | None, report: GcReport) -> Any:
    log = repo.store.db("reflog")

    def fn(txn: Any) -> None:
        if cutoff_ms is None:
            return
        old = [bytes(k) for k, v in txn.cursor(db=log) if json.loads(bytes(v))["time_ms"] <= cutoff_ms]
        for key in old:
            txn.delete(key, db=log)
        report.reflog_expired = len(old)

    return fn


def gc(repo: Repository, *, prune_ms: int | None = None, dry_run: bool = False,
       progress: Progress = NULL_PROGRESS, now_ms: int | None = None) -> GcReport:
    """Collect garbage.  ``prune_ms``: reflog entries older than this (from now) no longer
    keep their commits and are expired (None: every entry keeps its commits)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff = None if prune_ms is None else now - prune_ms
    report = GcReport(dry_run=dry_run)
    store = repo.store
    with _gc_lock(repo):
        for stale in store.pack_dir.glob(f"*{TMP_SUFFIX}"):
            stale.unlink()  # a gc killed before its swap (we hold the gc lock: not a live one's)
        report.packs_before, report.pack_bytes_before = _pack_bytes(repo)
        sealed = set(pack_numbers(store.pack_dir)) if dry_run else _seal(repo)
        forgotten = _forgotten(repo)
        report.forgotten_commits = len(forgotten)
        roots = gc_roots(repo, cutoff)
        report.roots = len(roots)
        marked: set[Cid] = set()
        progress.start("marking reachable blocks", None)
        mark(repo, roots, marked, progress, forgotten)
        progress.finish()
        keep, rewrite, delete = _plan(pack_usage(store, sealed).values(), marked)
        report.packs_kept = len(keep)
        if dry_run:
            _fill_dry(report, keep, rewrite, delete, marked, len(marked))
            return report
        rewriter = PackRewriter(store.pack_dir, store.blocks.rotate_bytes)
        try:
            _copy_live(rewriter, rewrite, marked, progress)
            _swap(repo, rewriter, rewrite, delete, marked, forgotten, cutoff, report)
        except BaseException:
            rewriter.discard()
            raise
        report.reachable_blocks = len(marked)
        report.packs_after, report.pack_bytes_after = _pack_bytes(repo)
    return report


def _copy_live(rewriter: PackRewriter, rewrite: list[PackUse], marked: set[Cid], progress: Progress) -> None:
    live = [(use.number, r) for use in rewrite for r in use.records if r[0] in marked]
    progress.start("rewriting packs", sum(r[2] for _, r in live))
    for number, (cid, offset, length) in live:
        rewriter.copy(cid, number, offset, length)
        progress.advance(length)
    progress.finish()


def _swap(repo: Repository, rewriter: PackRewriter, rewrite: list[PackUse], delete: list[PackUse],
          marked: set[Cid], forgotten: set[Cid], cutoff: int | None, report: GcReport) -> None:
    """Under the writer lock: mark again, copy what became reachable, install, swap, delete."""
    from casync.store.packfile import record_size

    store = repo.store
    with store.writer_lock():
        late = mark(repo, gc_roots(repo, cutoff), marked, NULL_PROGRESS, forgotten | _forgotten(repo))
        where = {r[0]: (use.number, r) for use in (*rewrite, *delete) for r in use.records}
        for cid in late:
            if cid in where and cid not in rewriter.placed:
                number, (_, offset, length) = where[cid]
                rewriter.copy(cid, number, offset, length)
                report.late_copies += 1
        ends = rewriter.finish()
        current = int(store.get("meta", b"pack_current") or b"1")
        first = max([current, *pack_numbers(store.pack_dir)]) + 1
        numbers = rewriter.install(first)
        moves = {}
        drops = {}
        for cid, (number, (_, offset, length)) in where.items():
            placed = rewriter.placed.get(cid)
            if placed is not None:
                moves[cid] = ((number, offset), (numbers[placed[0]], placed[1], placed[2]))
            else:
                drops[cid] = (number, offset)
                report.swept_bytes += record_size(cid, length)
        gone = [use.number for use in (*rewrite, *delete)]
        _, report.swept_blocks = swap_index(store, moves, drops, dict(zip(numbers, ends, strict=True)), gone,
                                            first + len(numbers), also=_expire_reflog(repo, cutoff, report))
        for number in gone:
            path = store.pack_dir / f"{number:08d}.pack"
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                report.reclaimed_bytes += size
        report.reclaimed_bytes -= sum(ends)
        report.packs_rewritten, report.packs_deleted = len(rewrite), len(delete)


def _fill_dry(report: GcReport, keep: list[PackUse], rewrite: list[PackUse], delete: list[PackUse],
              marked: set[Cid], reachable: int) -> None:
    from casync.store.packfile import record_size

    report.reachable_blocks = reachable
    after = sum(u.size for u in keep)
    for use in rewrite:
        after += sum(record_size(c, n) for c, _, n in use.records if c in marked)
    if rewrite:
        after += 16  # one magic per output pack (at least one)
    for use in (*rewrite, *delete):
        for cid, _, length in use.records:
            if cid not in marked:
                report.swept_blocks += 1
                report.swept_bytes += record_size(cid, length)
    report.packs_rewritten, report.packs_deleted = len(rewrite), len(delete)
    report.packs_after = len(keep) + (1 if rewrite else 0)
    report.pack_bytes_after = after + (report.pack_bytes_before - sum(u.size for u in (*keep, *rewrite, *delete)))
    report.reclaimed_bytes = report.pack_bytes_before - report.pack_bytes_after
