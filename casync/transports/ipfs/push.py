"""Push: upload the blocks a remote lacks, pin the new head, then publish the head record.

What to send.  Everything the remote's published heads reach is already on the node
(closure invariant: a record is written only after its DAG is uploaded and pinned).
So the commits to send are those the new head reaches and no remote head we hold
locally does (:meth:`CommitGraph.missing`, a generation-ordered walk as git's
negotiation), and their blocks are what :mod:`casync.trees.walk` finds their parents' trees
lack: an entry equal to the parent's is skipped whole, because the parent's blocks are
either on the remote or sent in this same push (by induction over the new commits); so
are the unchanged chunks of an edited file and data moved or copied from a tree the
remote holds.  Only interior nodes are read for this; raw leaves are read once, when
uploaded (without a hash check: Kubo checks every block it imports, see below).

How.  Blocks go up as CAR v1 batches through ``dag/import`` (unpinned), then the head is
pinned recursively (``pin/add``, then the replica's previous head unpinned when nothing else
names it; after retention forgot commits, the retained layout of ``transports.ipfs.retain``
instead; on a remote with an IPFS Cluster, through the cluster, see ``transports.ipfs.cluster``),
and only then is the head record rewritten.  A push that
dies midway leaves the record unchanged; a marker in the local store makes the next
push ask the node which of the blocks it still lacks, so a re-run uploads only those.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from casync.errors import InvalidObject, RemoteError, StateRefused, UsageError
from casync.model.cid import RAW, Cid, cid_str, compute_cid
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.repo.tags import tags_reaching
from casync.store.ipfs import DEFAULT_BATCH_BYTES, DEFAULT_RETRY, RetryPolicy
from casync.transports.config import Remote, get_remote
from casync.transports.ipfs.cluster import cluster_pins, refuse_retained
from casync.transports.ipfs.index import promote_indexes, publish_index
from casync.transports.ipfs.records import BranchHead, HeadRecord, RemoteNode, connect
from casync.transports.ipfs.retain import forgotten_commits, pin_retained
from casync.transports.ipfs.util import pin_name, remote_lock
from casync.trees.paths import outside_cids
from casync.trees.unixfs import validated_links
from casync.trees.walk import commit_blocks

__all__ = ["PushResult", "all_blocks", "missing_blocks", "push"]

_HAS_CHUNK = 512
_FIRST_PROBE = 32  # blocks asked about first on a first push (see _push)
_PROBE_MIN_AVG = 1024  # bytes per block: below it, sending costs less than a block/stat


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
    index: Cid | None = None  # the linked index this push wrote (transports.ipfs.index)
    index_pin: str | None = None  # how it is pinned: "recursive" or "direct"
    index_error: str | None = None  # why no index was written (the record is published)
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
            "index": cid_str(self.index) if self.index else None, "index_pin": self.index_pin,
            "index_error": self.index_error, "seconds": round(self.seconds, 3),
        }


# --- what to send ----------------------------------------------------------------------------------


def missing_blocks(repo: Repository, head: Cid, known: Iterable[Cid]) -> list[tuple[Cid, int]]:
    """(cid, size) of every block to send so that the remote holding ``known``'s closures
    holds ``head``'s closure (see the module docstring); from a partial clone, what lies
    inside its paths (the node must hold the rest: :func:`_require_unfetched`)."""
    commits = repo.graph.missing([head], known)
    return [(cid, size) for cid, size, _data in commit_blocks(repo.blocks.get, repo.graph, commits, repo.partial)]


def all_blocks(repo: Repository, heads: Iterable[Cid]) -> dict[Cid, int]:
    """Every block reachable from ``heads`` (history included) with its size; after
    retention, without the trees of forgotten commits (which this store no longer holds)."""
    forgotten = forgotten_commits(repo)
    if forgotten:
        return _closure(repo, heads, forgotten)
    commits = repo.graph.missing(list(heads), [])
    return {cid: size for cid, size, _data in commit_blocks(repo.blocks.get, repo.graph, commits, repo.partial)}


def _closure(repo: Repository, heads: Iterable[Cid], forgotten: set[Cid]) -> dict[Cid, int]:
    out: dict[Cid, int] = {}
    stack = list(heads)
    while stack:
        cid = stack.pop()
        if cid in out:
            continue
        block = repo.blocks.get(cid)
        out[cid] = len(block)
        links = validated_links(cid, block)
        stack.extend(links[1:] if cid in forgotten else links)  # a commit's links: [tree, *parents]
    return out


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
    retained = bool(forgotten_commits(repo))  # retention forgot commits: the retained pin layout
    cluster = cluster_pins(remote)  # None: pins on the Kubo node (else through IPFS Cluster)
    if retained:
        refuse_retained(remote)
    name = pin_name(repo.repo_id, repo.replica, branch)
    pinned = cluster.is_pinned(head, name) if cluster else node.client.is_pinned(head, "direct" if retained
                                                                                  else "recursive")
    if old == head and pinned and not _tags_changed(repo, mine):
        result.up_to_date, result.seq = True, mine.seq if mine else 0
        result.tags = dict(mine.tags) if mine else {}
        result.blocks_min = result.bytes_min = 0  # nothing was missing
        if mine is not None:
            _index(node, mine, result, reuse=True)
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

    # leaves are read unverified: Kubo checks every block's hash on import, and a batch it
    # refuses is checked here (a corrupt block is then named as the local store's)
    store = node.block_store(batch_bytes=batch_bytes, check_remote_on_put=False, on_batch=confirmed,
                             staged_from="local store")
    progress.start(f"pushing to {remote.name}", sum(size for _, size in candidates))
    try:
        empty = compute_cid(RAW, b"", repo.hash_name)
        if repo.blocks.has(empty):
            # a node that got its blocks by bitswap lacks it (bitswap never sends a zero-length
            # block), and pinning would wait for it forever: every push carries it (37 bytes)
            store.stage(empty, b"")
        # ask first when the node may hold blocks it has no record for (a resumed push, or the
        # first push of this repository there: another repository may share its files); stop
        # asking once a batch finds none, and never ask for blocks cheaper to send than to stat
        probe = result.resumed or not known
        _require_unfetched(repo, store, repo.graph.missing([head], known), remote.name)
        # the first question is small (_FIRST_PROBE blocks): a node that lacks those usually lacks
        # the rest, and 512 block/stat calls cost ~0.4 s, a fifth of pushing 1 GiB
        first = candidates[:_FIRST_PROBE] if probe and not result.resumed else []
        for chunk in itertools.chain([first] if first else [], _chunks(candidates[len(first):], _HAS_CHUNK)):
            ask = probe and sum(size for _, size in chunk) >= _PROBE_MIN_AVG * len(chunk)
            present = store.has_many(c for c, _ in chunk) if ask else set()
            probe = probe and (bool(present) or not ask)
            result.skipped_present += len(present)
            for cid, size in chunk:
                if cid in present:
                    progress.advance(size)
                    continue
                store.stage(cid, repo.blocks.get(cid, verify=False))
        store.flush()
    finally:
        result.blocks_sent, result.bytes_sent, result.batches = store.sent_blocks, store.sent_bytes, store.batches
        store.discard()
        progress.finish()
    # pin, then publish (closure invariant).  The node walks the whole DAG to pin it; the
    # --json measure (local reads only) runs meanwhile.
    others = {h.commit for r in records.values() for b, h in r.heads.items()
              if not (r.replica == repo.replica and b == branch)}
    if old is not None and old not in others and not retained and not _descends(repo, old, head):
        # a forced push drops the only pin on old's history: the indexes linking any of it
        # are pinned recursively first (they are pinned directly: transports.ipfs.index)
        promote_indexes(node, repo.repo_id, lambda c: _held(repo, c, [head, *others]))
    if retained:
        pinning = node.client.submit(pin_retained, node, repo, old, head, name)
    elif cluster is not None:
        empty = compute_cid(RAW, b"", repo.hash_name)
        if repo.blocks.has(empty):  # an empty file: every peer must hold the block bitswap never sends
            cluster.hold_empty_block(empty, repo.hash_name)
        pinning = node.client.submit(cluster.pin_head, old, head, old not in others, name)
    else:
        pinning = node.client.submit(_pin, node, old, head, old not in others, name)
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
    _index(node, record, result)
    _track(repo, remote.name, branch, head)
    return result


def _index(node: RemoteNode, record: HeadRecord, result: PushResult, reuse: bool = False) -> None:
    """Write and pin the linked index (after the record: an index failing leaves the push done)."""
    try:
        published = publish_index(node, record, reuse=reuse)
    except (RemoteError, InvalidObject) as err:
        if isinstance(err, RemoteError) and err.transient:
            raise
        result.index_error = err.message
        return
    result.index, result.index_pin = published.cid, published.pin


def _require_unfetched(repo: Repository, node: Any, commits: Iterable[Cid], remote: str) -> None:
    """From a partial clone: the node must already hold every entry outside its paths that the
    new commits link to (this clone never had them), or pinning would wait for blocks nobody
    sends; refused, naming one, before anything is pinned or published."""
    partial = repo.partial
    if partial is None:
        return
    needed: set[Cid] = set()
    for commit in commits:
        needed |= outside_cids(repo.blocks.get, repo.tree_of(commit), partial)
    lacking = sorted(needed - set(node.has_many(needed))) if needed else []
    if lacking:
        raise StateRefused(f"{remote} lacks {len(lacking)} block(s) outside the paths this partial clone holds "
                           f"({', '.join(partial.paths)}), e.g. {cid_str(lacking[0])}: it could not pin the pushed "
                           "history whole",
                           hint="push from a full clone, or push the full repository to that node first")


def _descends(repo: Repository, old: Cid, head: Cid) -> bool:
    """Whether ``head``'s history holds ``old`` (a fast-forward), as far as this store knows."""
    return old == head or (repo.blocks.has(old) and repo.graph.is_ancestor(old, head))


def _held(repo: Repository, commit: Cid, heads: list[Cid]) -> bool:
    """Whether a recursive pin on one of ``heads`` holds ``commit``'s DAG (``heads`` holds it or
    one of their histories does, as far as this store knows: else it is taken as not held)."""
    return commit in heads or any(repo.blocks.has(h) and _descends(repo, commit, h) for h in heads)


def _tags_changed(repo: Repository, mine: HeadRecord | None) -> bool:
    """Whether this replica's record would publish other tags than it does (then an
    up-to-date branch is published again, to carry them)."""
    heads = [h.commit for h in mine.heads.values()] if mine else []
    return tags_reaching(repo, heads) != dict(mine.tags if mine else {})


def _pin(node: RemoteNode, old: Cid | None, head: Cid, unpin_old: bool, name: str) -> None:
    """Pin ``head`` recursively under ``name`` (``pin/add``, which walks each block once),
    then drop ``old``'s pin when ``unpin_old``.  Never ``pin/update``: Kubo diffs the two
    DAGs by pairing the links each lacks and recursing into every pair, so on a commit DAG
    it follows the parent links down the whole history and branches at every merge
    (exponential: a push after some 30 merges never finished).  Both pins hold the DAG in
    between, so nothing is unpinned at any moment."""
    if not node.client.is_pinned(head):  # else pinned already: another branch or replica, or pulled
        node.client.pin_add(head, name)
    if old is not None and old != head and unpin_old and node.client.is_pinned(old):
        node.client.pin_rm(old)


def _track(repo: Repository, remote: str, branch: str, head: Cid) -> None:
    """Move this replica's remote-tracking ref to what the remote now publishes."""
    ref = f"remotes/{remote}/{repo.replica}/{branch}"
    current = repo.refs.get_ref(ref)
    if current != head:
        repo.refs.cas_ref(ref, current, head, f"push {remote}")


def _chunks(items: list[tuple[Cid, int]], n: int) -> Iterator[list[tuple[Cid, int]]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]

