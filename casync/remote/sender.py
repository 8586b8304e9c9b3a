"""Push: upload the blocks a remote lacks, pin the new head, then publish the head record.

What to send.  Everything the remote's published heads reach is already on the node
(closure invariant: a record is written only after its DAG is uploaded and pinned).
So the walk starts at the new head and stops at commits reachable from any remote head
we hold locally (a generation-ordered paint walk, as git's negotiation).  For each new
commit, its tree is compared path by path with its parents' trees: an entry equal to
the parent's is skipped whole, because the parent's blocks are either on the remote or
sent in this same push (by induction over the new commits).  In a changed file, the
leaves shared with the parent's version of that file (e.g. every chunk but one after an
insertion with content-defined chunking) are skipped too.  A directory or multi-chunk
file at a path the parents lack is skipped whole when a tree the remote holds has it
anywhere (moved or copied data).  Only interior nodes are read for this; raw leaves are
read once, when uploaded.

How.  Blocks go up as CAR v1 batches through ``dag/import`` (unpinned), then the head is
pinned recursively (``pin/update`` from this replica's previous head when nothing else
names it, else ``pin/add``), and only then is the head record rewritten.  A push that
dies midway leaves the record unchanged; a marker in the local store makes the next
push ask the node which of the blocks it still lacks, so a re-run uploads only those.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from casync.dag import tree_entry_cids
from casync.errors import InvalidObject, RemoteError, StateRefused, UsageError
from casync.ids import DAG_PB, RAW, Cid, cid_codec, cid_str, compute_cid
from casync.objects import UNIXFS_DIRECTORY, decode_pbnode, decode_unixfs
from casync.progress import NULL_PROGRESS, Progress
from casync.remote.config import Remote, get_remote
from casync.remote.records import BranchHead, HeadRecord, RemoteNode, connect
from casync.remote.util import remote_lock
from casync.repo import Repository
from casync.store.ipfs import DEFAULT_BATCH_BYTES, DEFAULT_RETRY, RetryPolicy
from casync.tags import tags_reaching

__all__ = ["PushResult", "all_blocks", "missing_blocks", "push"]

_HAS_CHUNK = 512


@dataclass
class PushResult:
    remote: str
    url: str
    branch: str
    replica: str
    head: Cid
    old: Cid | None
    up_to_date: bool = False
    blocks_sent: int = 0
    bytes_sent: int = 0
    batches: int = 0
    candidates: int = 0
    resumed: bool = False
    skipped_present: int = 0
    blocks_min: int | None = None
    bytes_min: int | None = None
    seq: int = 0
    index: Cid | None = None
    seconds: float = 0.0
    tags: dict[str, Cid] = field(default_factory=dict)  # the tags this replica's record publishes

    def to_json(self) -> dict[str, Any]:
        return {
            "tags": {n: cid_str(c) for n, c in self.tags.items()},
            "remote": self.remote, "url": self.url, "branch": self.branch, "replica": self.replica,
            "head": cid_str(self.head), "old": cid_str(self.old) if self.old else None,
            "up_to_date": self.up_to_date, "blocks_sent": self.blocks_sent, "bytes_sent": self.bytes_sent,
            "blocks_min": self.blocks_min, "bytes_min": self.bytes_min, "batches": self.batches,
            "resumed": self.resumed, "skipped_present": self.skipped_present, "seq": self.seq,
            "index": cid_str(self.index) if self.index else None, "seconds": round(self.seconds, 3),
        }


# --- what to send ----------------------------------------------------------------------------------


def new_commits(repo: Repository, head: Cid, known: Iterable[Cid]) -> list[Cid]:
    """Commits reachable from ``head`` but not from any of ``known`` (all held locally)."""
    graph = repo.graph
    flags: dict[Cid, int] = {}
    heap: list[tuple[int, Cid]] = []
    new, old = 1, 2
    only_new = 0  # queued commits reached from head alone: the walk ends at zero

    def mark(cid: Cid, flag: int) -> None:
        nonlocal only_new
        prev = flags.get(cid, 0)
        if prev | flag != prev:
            if prev == 0:
                heapq.heappush(heap, (-graph.node(cid).generation, cid))
            only_new += (prev | flag == new) - (prev == new)
            flags[cid] = prev | flag

    mark(head, new)
    for k in known:
        mark(k, old)
    out = []
    while only_new:
        _, cid = heapq.heappop(heap)
        f = flags[cid]
        if f == new:
            only_new -= 1
            out.append(cid)
        for p in graph.node(cid).parents:
            mark(p, f)
    return out


class _Walker:
    """Path-aligned tree diff collecting (cid, size) of blocks not covered by parents."""

    def __init__(self, repo: Repository, held_trees: list[Cid] | None = None) -> None:
        self.get = repo.blocks.get
        self.seen: set[Cid] = set()
        self.out: list[tuple[Cid, int]] = []
        self._file_sets: dict[Cid, set[Cid]] = {}
        self._held_trees = held_trees or []
        self._held: set[Cid] | None = None

    def remote_holds(self, cid: Cid) -> bool:
        """``cid`` is a directory or file root somewhere in a tree the remote holds (built
        on first use: only pushes that add paths pay for it)."""
        if self._held is None:
            self._held = tree_entry_cids(self.get, self._held_trees)
        return cid in self._held

    def commit(self, cid: Cid, repo: Repository) -> None:
        if cid in self.seen:
            return
        self.seen.add(cid)
        block = self.get(cid)
        self.out.append((cid, len(block)))
        commit = repo.load_commit(cid)
        olds = [repo.load_commit(p).tree for p in commit.parents]
        self.node(commit.tree, 0, olds)

    def node(self, cid: Cid, size: int, olds: list[Cid]) -> None:
        empty: set[Cid] = set()
        stack: list[tuple[Cid, int, list[Cid], set[Cid]]] = [(cid, size, olds, empty)]
        while stack:
            cid, size, olds, covered = stack.pop()
            if cid in self.seen or cid in olds or cid in covered:
                continue
            self.seen.add(cid)
            codec = cid_codec(cid)
            if codec == RAW:
                self.out.append((cid, size))
                continue
            if codec != DAG_PB:
                raise InvalidObject(f"tree node {cid_str(cid)} has unexpected codec {codec:#x}")
            block = self.get(cid)
            self.out.append((cid, len(block)))
            node = decode_pbnode(block)
            if _is_dir(node.data):
                old_maps = [m for m in (self._dir_map(o) for o in olds if cid_codec(o) == DAG_PB) if m]
                for link in node.links:
                    name = link.name or b""
                    same = [m[name] for m in old_maps if name in m]
                    if not same and cid_codec(link.cid) == DAG_PB and self.remote_holds(link.cid):
                        continue  # moved or copied: already on the remote under another path
                    stack.append((link.cid, link.tsize or 0, same, empty))
            else:
                # inside a changed file: blocks of the parents' version of it are covered
                if olds:
                    covered = set(covered)
                    for o in olds:
                        covered |= self._file_set(o)
                for link in node.links:
                    stack.append((link.cid, link.tsize or 0, [], covered))

    def _dir_map(self, cid: Cid) -> dict[bytes, Cid] | None:
        node = decode_pbnode(self.get(cid))
        if not _is_dir(node.data):
            return None
        return {link.name or b"": link.cid for link in node.links}

    def _file_set(self, cid: Cid) -> set[Cid]:
        """CIDs of a file DAG's interior nodes and of everything they link to (leaves not read)."""
        cached = self._file_sets.get(cid)
        if cached is not None:
            return cached
        out = {cid}
        if cid_codec(cid) == DAG_PB:
            stack = [cid]
            while stack:
                node = decode_pbnode(self.get(stack.pop()))
                if _is_dir(node.data):
                    break
                for link in node.links:
                    if link.cid not in out:
                        out.add(link.cid)
                        if cid_codec(link.cid) == DAG_PB:
                            stack.append(link.cid)
        if len(self._file_sets) > 1024:
            self._file_sets.clear()
        self._file_sets[cid] = out
        return out


def _is_dir(data: bytes | None) -> bool:
    return data is not None and decode_unixfs(data).type == UNIXFS_DIRECTORY


def missing_blocks(repo: Repository, head: Cid, known: Iterable[Cid]) -> list[tuple[Cid, int]]:
    """(cid, size) of every block to send so that the remote holding ``known``'s closures
    holds ``head``'s closure (see the module docstring)."""
    commits = new_commits(repo, head, known)
    new = set(commits)
    held = {repo.graph.node(p).tree for c in commits for p in repo.graph.node(c).parents if p not in new}
    walker = _Walker(repo, sorted(held))
    for cid in commits:
        walker.commit(cid, repo)
    return walker.out


def all_blocks(repo: Repository, heads: Iterable[Cid]) -> dict[Cid, int]:
    """Every block reachable from ``heads`` (history included) with its size."""
    walker = _Walker(repo)
    for head in heads:
        for cid in new_commits(repo, head, []):
            walker.commit(cid, repo)
    return dict(walker.out)


# --- the push ----------------------------------------------------------------------------------------


_PENDING_KEY = b"push-pending/"


def _pending(repo: Repository, remote: str) -> dict[str, Any] | None:
    raw = repo.store.get("meta", _PENDING_KEY + remote.encode())
    return json.loads(raw) if raw else None


def _set_pending(repo: Repository, remote: str, value: dict[str, Any] | None) -> None:
    key = _PENDING_KEY + remote.encode()
    if value is None:
        repo.store.write(lambda txn: txn.delete(key, db=repo.store.db("meta")))
    else:
        repo.store.put("meta", key, json.dumps(value).encode())


def push(repo: Repository, remote_name: str | None = None, branch: str | None = None, *,
         force: bool = False, progress: Progress = NULL_PROGRESS, batch_bytes: int = DEFAULT_BATCH_BYTES,
         measure: bool = False, retry: RetryPolicy = DEFAULT_RETRY,
         on_batch: Callable[[int, int], None] | None = None) -> PushResult:
    """Push ``branch`` (default: the current one) to the remote; see the module docstring."""
    remote = get_remote(repo, remote_name).require_ipfs()
    if branch is None:
        branch = repo.current_branch()
        if branch is None:
            raise StateRefused("HEAD is detached; name the branch to push", hint="casync push REMOTE BRANCH")
    head = repo.refs.get_ref(f"heads/{branch}")
    if head is None:
        raise UsageError(f"branch {branch!r} has no commits to push")
    t0 = time.monotonic()
    with remote_lock(repo), connect(remote.url, retry=retry) as node:
        result = _push(repo, remote, node, branch, head, force, progress, batch_bytes, measure, on_batch)
    result.seconds = time.monotonic() - t0
    return result


def _push(repo: Repository, remote: Remote, node: RemoteNode, branch: str, head: Cid, force: bool,
          progress: Progress, batch_bytes: int, measure: bool,
          on_batch: Callable[[int, int], None] | None) -> PushResult:
    records = node.records(repo.repo_id, errors=[])
    mine = records.get(repo.replica)
    old = mine.heads[branch].commit if mine and branch in mine.heads else None
    result = PushResult(remote.name, remote.url.text, branch, repo.replica, head, old)
    if mine is not None and mine.hash != repo.hash_name:
        raise RemoteError(f"replica {repo.replica} published {mine.hash} CIDs at {remote.url.text}, "
                          f"but this repository uses {repo.hash_name}")
    if old is not None and not force and (not repo.blocks.has(old) or not repo.graph.is_ancestor(old, head)):
        raise RemoteError(f"push rejected: {remote.name} has {cid_str(old)} for {repo.replica}/{branch}, "
                          f"which is not an ancestor of {cid_str(head)}",
                          hint="pass --force to replace it (its history stays only where it is pinned "
                               "or referenced elsewhere)")
    if old == head and node.client.is_pinned(head) and not _tags_changed(repo, mine):
        result.up_to_date, result.seq = True, mine.seq if mine else 0
        result.tags = dict(mine.tags) if mine else {}
        result.blocks_min = result.bytes_min = 0  # nothing was missing
        result.index = node.index_cid(repo.repo_id)
        _track(repo, remote.name, branch, head)
        return result
    known = [h.commit for r in records.values() for h in r.heads.values()]
    known = [c for c in dict.fromkeys(known) if repo.blocks.has(c)]
    pending = _pending(repo, remote.name)
    result.resumed = pending is not None
    candidates = missing_blocks(repo, head, known)
    result.candidates = len(candidates)
    _set_pending(repo, remote.name, {"head": cid_str(head), "url": remote.url.text, "time_ms": int(time.time() * 1000)})
    def confirmed(blocks: int, size: int) -> None:  # progress counts what the node took
        progress.advance(size)
        if on_batch is not None:
            on_batch(blocks, size)

    store = node.block_store(batch_bytes=batch_bytes, check_remote_on_put=False, on_batch=confirmed)
    progress.start(f"pushing to {remote.name}", sum(size for _, size in candidates))
    try:
        empty = compute_cid(RAW, b"", repo.hash_name)
        if repo.blocks.has(empty):
            # a node that got its blocks by bitswap lacks it (bitswap never sends a zero-length
            # block), and pinning would wait for it forever: every push carries it (37 bytes)
            store.stage(empty, b"")
        for chunk in _chunks(candidates, _HAS_CHUNK):
            present = store.has_many(c for c, _ in chunk) if result.resumed else set()
            result.skipped_present += len(present)
            for cid, size in chunk:
                if cid in present:
                    progress.advance(size)
                    continue
                store.stage(cid, repo.blocks.get(cid))
        store.flush()
    finally:
        result.blocks_sent, result.bytes_sent, result.batches = store.sent_blocks, store.sent_bytes, store.batches
        store.discard()
        progress.finish()
    # pin, then publish (closure invariant).  The node walks the whole DAG to pin it; the
    # --json measure (local reads only) runs meanwhile.
    others = {h.commit for r in records.values() for b, h in r.heads.items()
              if not (r.replica == repo.replica and b == branch)}
    pinning = node.client.submit(_pin, node, old, head, old not in others)
    try:
        if measure:
            mins = all_blocks(repo, [head])
            for c in all_blocks(repo, known):
                mins.pop(c, None)
            result.blocks_min, result.bytes_min = len(mins), sum(mins.values())
    except BaseException:
        futures.wait([pinning])  # no request outlives the push
        raise
    pinning.result()
    commit = repo.load_commit(head)
    entry = BranchHead(head, commit.generation, dict(commit.clock))
    if mine is None:
        mine = HeadRecord(repo.repo_id, repo.replica, 0, 0, repo.hash_name, repo.chunker_name, {})
    record = mine.with_head(branch, entry)
    record = record.with_tags(tags_reaching(repo, [h.commit for h in record.heads.values()]))
    node.publish(record)
    _set_pending(repo, remote.name, None)
    result.seq, result.tags = record.seq, dict(record.tags)
    result.index = node.index_cid(repo.repo_id)
    _track(repo, remote.name, branch, head)
    return result


def _tags_changed(repo: Repository, mine: HeadRecord | None) -> bool:
    """Whether this replica's record would publish other tags than it does (then an
    up-to-date branch is published again, to carry them)."""
    heads = [h.commit for h in mine.heads.values()] if mine else []
    return tags_reaching(repo, heads) != dict(mine.tags if mine else {})


def _pin(node: RemoteNode, old: Cid | None, head: Cid, unpin_old: bool) -> None:
    """Pin ``head`` recursively: ``pin/update`` from this replica's previous head when that
    one is pinned (only the difference is walked), else ``pin/add``."""
    if node.client.is_pinned(head):
        # pinned already (another branch, another replica, or a head this replica pulled):
        # pin/update would refuse "'to' cid was already recursively pinned"
        if old is not None and old != head and unpin_old and node.client.is_pinned(old):
            node.client.pin_rm(old)
    elif old is not None and old != head and node.client.is_pinned(old):
        node.client.pin_update(old, head, unpin=unpin_old)
    else:
        node.client.pin_add(head)


def _track(repo: Repository, remote: str, branch: str, head: Cid) -> None:
    """Move this replica's remote-tracking ref to what the remote now publishes."""
    ref = f"remotes/{remote}/{repo.replica}/{branch}"
    current = repo.refs.get_ref(ref)
    if current != head:
        repo.refs.cas_ref(ref, current, head, f"push {remote}")


def _chunks(items: list[tuple[Cid, int]], n: int) -> Iterator[list[tuple[Cid, int]]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]

