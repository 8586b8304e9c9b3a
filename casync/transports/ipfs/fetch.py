"""Fetch and pull: bring every replica's published heads (and the blocks they reach)
from a remote into the local store, then fast-forward.

Blocks are requested with bounded concurrency (threads); the walk stops at CIDs the
local store already holds.  Each block is hash-verified, decoded and validated (commit
structure, directory names) before anything is written, and blocks are written
**bottom-up**: a block is put only once every block below it is stored.  So a block the
local store holds always has its whole DAG below it ("held implies complete"), which is
what makes stopping at held CIDs correct and lets an interrupted fetch keep (and flush)
what it got: the re-run resumes where it stopped.

A partial clone (config ``partial_paths``) fetches only what lies inside its paths: a
directory on the way to them is requested, and of its entries only those not outside them
(:class:`casync.trees.paths.PathFilter`, the one rule every transport follows); a held
block then has its DAG complete within the paths.

Refs ``remotes/<remote>/<replica>/<branch>`` move by compare-and-swap only after the
head's DAG is complete and flushed.  A head whose DAG the node cannot supply (a block
missing or corrupt) is reported naming the CID, and its ref is left unchanged.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from casync.errors import BlockNotFound, ConflictError, CorruptBlock, InvalidObject, LimitExceeded, StateRefused
from casync.model.cid import DAG_CBOR, DAG_PB, Cid, cid_codec, cid_str, short
from casync.model.objects import MAX_FILE_DEPTH, MAX_TREE_DEPTH, UNIXFS_DIRECTORY, decode_pbnode
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.repo.signatures import require_signed_history
from casync.repo.tags import TagUpdate, receive_tags
from casync.settings import require_signed as settings_require_signed
from casync.store.base import BlockStore
from casync.store.ipfs import DEFAULT_RETRY, RetryPolicy
from casync.transfer.checks import ReceiptChecks
from casync.transports.config import Remote, get_remote
from casync.transports.ipfs.records import HeadRecord, RemoteNode, connect
from casync.transports.ipfs.util import remote_lock
from casync.trees.paths import ON_THE_WAY, OUTSIDE
from casync.trees.unixfs import CheckedBlock, read_dir_block
from casync.worktree import checkout as workdir

__all__ = ["DagFetcher", "FetchResult", "HeadFailure", "PullResult", "fast_forward_target", "fetch",
           "fetch_from", "pull"]

FLUSH_BYTES = 64 << 20


@dataclass
class HeadFailure:
    replica: str
    branch: str
    commit: Cid
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "branch": self.branch, "commit": cid_str(self.commit),
                "error": self.error}


@dataclass
class FetchResult:
    remote: str
    url: str
    updated: dict[str, tuple[Cid | None, Cid]] = field(default_factory=dict)  # ref -> (old, new)
    unchanged: list[str] = field(default_factory=list)
    failed: list[HeadFailure] = field(default_factory=list)
    invalid_records: list[str] = field(default_factory=list)
    blocks_received: int = 0
    bytes_received: int = 0
    blocks_min: int = 0
    bytes_min: int = 0
    seconds: float = 0.0
    tags: TagUpdate | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.invalid_records

    def to_json(self) -> dict[str, Any]:
        return {
            "remote": self.remote, "url": self.url, "ok": self.ok,
            "updated": {r: {"old": cid_str(o) if o else None, "new": cid_str(n)}
                        for r, (o, n) in self.updated.items()},
            "unchanged": self.unchanged, "failed": [f.to_json() for f in self.failed],
            "invalid_records": self.invalid_records,
            "blocks_received": self.blocks_received, "bytes_received": self.bytes_received,
            "tags": self.tags.to_json() if self.tags is not None else None,
            "blocks_min": self.blocks_min, "bytes_min": self.bytes_min, "seconds": round(self.seconds, 3),
        }


class DagFetcher:
    """Copies DAGs from ``source`` into ``repo.blocks`` bottom-up with ``concurrency`` threads."""

    def __init__(self, repo: Repository, source: BlockStore, *, concurrency: int = 8,
                 progress: Progress = NULL_PROGRESS) -> None:
        self.repo = repo
        self.paths = repo.partial  # a partial clone: only what lies inside its paths
        self.source = source
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.blocks_received = 0
        self.bytes_received = 0
        self.blocks_stored = 0
        self.bytes_stored = 0
        self._unflushed = 0
        self._pool: cf.ThreadPoolExecutor | None = None
        self.checks = ReceiptChecks(repo)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def fetch(self, root: Cid) -> None:
        """Make ``root``'s whole DAG local; raise (naming the CID) if a block cannot be had."""
        if self.repo.blocks.has(root):
            return
        with self.repo.store.writer_lock():
            try:
                self._run(root)
            except InvalidObject:
                self.repo.blocks.discard()  # a hostile DAG: keep nothing of it unflushed
                raise
            finally:
                self.repo.blocks.flush()  # what was stored is complete below: keep it
                self._unflushed = 0

    def _run(self, root: Cid) -> None:
        waiting: dict[Cid, list[Any]] = {}  # cid -> [block, children still missing, checked]
        level: dict[Cid, int] = {root: 0}  # dag-pb nesting below the nearest commit, as requested
        way: dict[Cid, str] = {}  # a partial clone's directories on the way to its paths -> their path
        parents_of: dict[Cid, list[Cid]] = {}
        requested: set[Cid] = {root}
        stored: set[Cid] = set()
        queue: list[Cid] = [root]
        inflight: dict[cf.Future[bytes], Cid] = {}
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="casync-fetch")
        pool = self._pool
        try:
            while queue or inflight:
                while queue and len(inflight) < self.concurrency * 2:
                    cid = queue.pop()
                    inflight[pool.submit(self.source.get, cid)] = cid
                done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    cid = inflight.pop(fut)
                    block = fut.result()  # raises BlockNotFound / CorruptBlock / RemoteError
                    self.blocks_received += 1
                    self.bytes_received += len(block)
                    self.progress.advance(len(block))
                    need = []
                    checked = self.checks.check(cid, block)
                    below = level.pop(cid, 0) + 1 if cid_codec(cid) == DAG_PB else 0
                    if below > MAX_TREE_DEPTH + MAX_FILE_DEPTH:
                        raise LimitExceeded(f"DAG below {cid_str(cid)} nests deeper than "
                                            f"{MAX_TREE_DEPTH + MAX_FILE_DEPTH} levels")
                    links = self._within(cid, block, checked, way) if self.paths is not None else checked.links
                    children = [c for c in dict.fromkeys(links) if c not in stored]
                    unseen = [c for c in children if c not in requested]
                    held = self.repo.blocks.has_many(unseen) if unseen else set()  # one read txn
                    for child in children:
                        if child in held:
                            continue
                        need.append(child)
                        parents_of.setdefault(child, []).append(cid)
                        if child not in requested:
                            requested.add(child)
                            level[child] = below
                            queue.append(child)
                    if need:
                        waiting[cid] = [block, len(need), checked]
                    else:
                        self._complete(cid, block, checked, waiting, parents_of, stored)
        finally:
            for fut in inflight:  # after an error: let nothing in flight outlive this fetch
                fut.cancel()
            cf.wait(list(inflight))
        if waiting:  # cannot happen unless the bookkeeping is wrong
            raise InvalidObject(f"fetch of {cid_str(root)} ended with {len(waiting)} incomplete nodes")

    def _within(self, cid: Cid, block: bytes, checked: CheckedBlock, way: dict[Cid, str]) -> list[Cid]:
        """The links of ``cid`` a partial clone holds: a commit's tree is on the way (path ""),
        and of a directory on the way only the entries not outside the paths."""
        assert self.paths is not None
        if checked.commit is not None:
            way[checked.commit.tree] = ""
            return checked.links
        base = way.pop(cid, None)
        if base is None or checked.unixfs is None or checked.unixfs.type != UNIXFS_DIRECTORY:
            return checked.links  # inside the paths (or a file on the way): all of it
        out = []
        for link in read_dir_block(cid, decode_pbnode(block)):
            path = f"{base}/{link.name}" if base else link.name
            where = self.paths.where(path)
            if where == OUTSIDE:
                continue
            if where == ON_THE_WAY:
                way[link.cid] = path
            out.append(link.cid)
        return out

    def _complete(self, cid: Cid, block: bytes, checked: CheckedBlock, waiting: dict[Cid, list[Any]],
                  parents_of: dict[Cid, list[Cid]], stored: set[Cid]) -> None:
        stack = [(cid, block, checked)]
        while stack:
            c, b, ch = stack.pop()
            self.checks.against_children(c, b, ch)  # every child is held now
            if self.repo.blocks.put(c, b):
                self.blocks_stored += 1
                self.bytes_stored += len(b)
                self._unflushed += len(b)
            stored.add(c)
            for parent in parents_of.pop(c, []):
                entry = waiting[parent]
                entry[1] -= 1
                if entry[1] == 0:
                    del waiting[parent]
                    stack.append((parent, entry[0], entry[2]))
        if self._unflushed >= FLUSH_BYTES:
            self.repo.blocks.flush()
            self._unflushed = 0


def _heads(records: dict[str, HeadRecord]) -> Iterator[tuple[str, str, Cid]]:
    for replica in sorted(records):
        for branch, head in sorted(records[replica].heads.items()):
            yield replica, branch, head.commit


def fetch(repo: Repository, remote_name: str | None = None, *, progress: Progress = NULL_PROGRESS,
          concurrency: int = 8, wait: float = 60.0, retry: RetryPolicy = DEFAULT_RETRY,
          require_signed: bool | None = None) -> FetchResult:
    """Fetch every replica's published heads from the remote (see the module docstring);
    ``require_signed`` (default: config ``require_signed``): a head whose new history holds a
    commit without a valid trusted signature is not taken (a failed head, no ref moved)."""
    remote = get_remote(repo, remote_name).require_ipfs()
    t0 = time.monotonic()
    with remote_lock(repo), connect(remote.url, retry=retry, wait=wait) as node:
        result = fetch_from(repo, remote, node, progress=progress, concurrency=concurrency, wait=wait,
                            require_signed=require_signed)
    result.seconds = time.monotonic() - t0
    return result


def fetch_from(repo: Repository, remote: Remote, node: RemoteNode, *, progress: Progress = NULL_PROGRESS,
               concurrency: int = 8, wait: float = 60.0, require_signed: bool | None = None) -> FetchResult:
    result = FetchResult(remote.name, remote.url.text)
    signed = require_signed if require_signed is not None else settings_require_signed(repo.config)
    known = [c for c in repo.refs.list_refs().values() if cid_codec(c) == DAG_CBOR]
    records = node.records(repo.repo_id, errors=result.invalid_records)
    for replica, rec in list(records.items()):
        if rec.hash != repo.hash_name:
            result.invalid_records.append(f"replica {replica} publishes {rec.hash} CIDs; this repository uses "
                                          f"{repo.hash_name}")
            del records[replica]
    store = node.block_store(wait=wait)
    fetcher = DagFetcher(repo, store, concurrency=concurrency, progress=progress)
    progress.start(f"fetching from {remote.name}", None)
    try:
        for replica, branch, commit in _heads(records):
            ref = f"remotes/{remote.name}/{replica}/{branch}"
            current = repo.refs.get_ref(ref)
            if current == commit and repo.blocks.has(commit):
                result.unchanged.append(ref)
                continue
            try:
                fetcher.fetch(commit)
                if signed:
                    require_signed_history(repo, [commit], known, f"{remote.name} ({replica}/{branch})")
            except (BlockNotFound, CorruptBlock, InvalidObject) as exc:
                result.failed.append(HeadFailure(replica, branch, commit, str(exc)))
                continue
            repo.refs.cas_ref(ref, current, commit, f"fetch {remote.name}: {replica}/{branch}")
            result.updated[ref] = (current, commit)
    finally:
        fetcher.close()
        progress.finish()
        store.discard()
        result.blocks_received, result.bytes_received = fetcher.blocks_received, fetcher.bytes_received
        result.blocks_min, result.bytes_min = fetcher.blocks_stored, fetcher.bytes_stored
    result.tags = receive_record_tags(repo, remote.name, records)
    return result


def receive_record_tags(repo: Repository, remote: str, records: dict[str, HeadRecord]) -> TagUpdate:
    """Apply the tags every replica publishes (see :func:`casync.repo.tags.receive_tags`); a
    conflict is kept per publishing replica, as ``tag-conflicts/<remote>@<replica>/<name>``.
    Only tags on heads that were fetched whole are set (closure)."""
    update = TagUpdate(remote)
    for replica in sorted(records):
        if records[replica].tags:
            update.merge(receive_tags(repo, records[replica].tags, f"{remote}@{replica}"))
    return update


# --- pull -------------------------------------------------------------------------------------------


@dataclass
class PullResult:
    fetch: FetchResult
    branch: str
    old: Cid | None
    new: Cid | None
    up_to_date: bool
    merged: list[Cid] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)  # merger.MergeOutcome of each merge

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "old": cid_str(self.old) if self.old else None,
                "new": cid_str(self.new) if self.new else None, "up_to_date": self.up_to_date,
                "merged": [cid_str(c) for c in self.merged], "fetch": self.fetch.to_json(),
                "merges": [o.to_json() for o in self.outcomes]}


def fast_forward_target(repo: Repository, local: Cid | None, heads: list[Cid]) -> Cid | None:
    """The head every other head and ``local`` lead to (None if nothing is new);
    raise ConflictError when histories diverged."""
    graph = repo.graph
    news = [h for h in dict.fromkeys(heads) if local is None or not graph.is_ancestor(h, local)]
    if not news:
        return None
    for cand in news:
        if all(graph.is_ancestor(o, cand) for o in news) and (local is None or graph.is_ancestor(local, cand)):
            return cand
    raise ConflictError("diverged; merging lands with the merge issue",
                        hint="the remote's heads and this branch have each moved on; nothing was changed")


def pull(repo: Repository, remote_name: str | None = None, *, progress: Progress = NULL_PROGRESS,
         force: bool = False, concurrency: int = 8, wait: float = 60.0,
         retry: RetryPolicy = DEFAULT_RETRY, policy: str | None = None,
         require_signed: bool | None = None) -> PullResult:
    """Fetch, then bring the current branch and the working tree up to the published heads:
    a fast-forward when one head contains the rest, else a merge of each diverged head
    (oldest generation first, so every replica merges in the same order) under the
    configured policy."""
    branch = repo.current_branch()
    if branch is None:
        raise StateRefused("HEAD is detached; switch to a branch to pull into it", hint="casync switch main")
    remote = get_remote(repo, remote_name).require_ipfs()
    fetched = fetch(repo, remote.name, progress=progress, concurrency=concurrency, wait=wait, retry=retry,
                    require_signed=require_signed)
    heads = [cid for ref, cid in repo.refs.list_refs(f"remotes/{remote.name}/").items()
             if ref.split("/", 3)[-1] == branch]
    with repo.store.writer_lock():
        local = repo.refs.get_ref(f"heads/{branch}")
        try:
            target = fast_forward_target(repo, local, heads)
        except ConflictError:
            return _pull_by_merging(repo, fetched, branch, local, heads, policy, progress)
        if target is None:
            return PullResult(fetched, branch, local, local, True)
        workdir.checkout(repo, cid_str(target), force=force, progress=progress)
        repo.update_branch(branch, local, target, f"pull {remote.name}: fast-forward")
        repo.set_head(branch)
    return PullResult(fetched, branch, local, target, False)


def _pull_by_merging(repo: Repository, fetched: FetchResult, branch: str, local: Cid | None, heads: list[Cid],
                     policy: str | None, progress: Progress) -> PullResult:
    from casync.worktree.merging import merge

    graph = repo.graph
    merged: list[Cid] = []
    outcomes: list[Any] = []
    for head in sorted(dict.fromkeys(heads), key=lambda c: (graph.get(c).generation, c)):
        current = repo.refs.get_ref(f"heads/{branch}")
        if current is not None and graph.is_ancestor(head, current):
            continue
        outcome = merge(repo, cid_str(head), policy=policy, progress=progress)
        outcomes.append(outcome)
        if outcome.kind == "conflicts":
            raise ConflictError(f"pull stopped on conflicts merging {short(head)}",
                                hint="resolve them ('casync conflicts'), then 'casync merge --continue'")
        merged.append(head)
    return PullResult(fetched, branch, local, repo.refs.get_ref(f"heads/{branch}"), False, merged, outcomes)
