"""Peers and the fetch / push protocol between two casync repositories.

A *peer* answers four questions: who are you and what are your branches (``info``),
which of these commits do you hold (``negotiate``), send me what I lack (``fetch``), and
take these blocks and move a branch if it is a fast-forward (``push``).
This module is the client's side: :func:`fetch_from`, :func:`push_to` and
:func:`push_tags_to`, over any :class:`Peer` (:mod:`casync.transports.peer.protocol`).
:class:`PeerService` (:mod:`casync.transports.peer.service`) implements the questions over
a local :class:`Repository`; the local-path peer (:class:`LocalPeer`) calls it directly,
``casync serve`` exposes it over HTTP, and :class:`casync.transports.peer.http.HttpPeer` is
the client for that.  They and the protocol's types are re-exported here: the Python API
imports them from this module.

Negotiation (docs/design.md, "Sync protocol"): the client sends exponentially spaced
first-parent ancestors of its heads (distances 0, 1, 2, 4, ... up to 64); the peer
answers which it holds.  If none, the window widens to 4096 and then to the whole
history.  Then one request streams exactly the blocks of the commits between the
peer's heads and the common commits.  A one-commit divergence on a 10,000-commit
history is 3 round trips: info, negotiate, fetch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from casync.errors import (
    CorruptBlock,
    InvalidObject,
    RefConflict,
    RemoteAuthError,
    RemoteError,
    UsageError,
)
from casync.model.car import TruncatedCar
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.repo.signatures import require_signed_history
from casync.repo.tags import TagUpdate, list_tags, receive_tags
from casync.settings import require_signed as settings_require_signed
from casync.transfer.stream import FLUSH_BYTES, PackReceiver, TransferStats, blocks_for_commits
from casync.transports.peer.protocol import MAX_HAVES, MAX_TAGS_PER_PUSH, MAX_WANTS, Peer, PeerInfo
from casync.transports.peer.service import LocalPeer, PeerService
from casync.trees.paths import PathFilter

__all__ = ["MAX_HAVES", "FetchResult", "LocalPeer", "Peer", "PeerInfo", "PeerService", "fetch_from",
           "push_tags_to", "push_to"]

# a push whose link broke after its body started (RetryingPeer never sends a body twice) is
# checked against the peer's refs and sent again while it did not land
PUSH_ATTEMPTS = 4
BUFFER_LIMIT = 64 << 20  # a fetch holds at most this much of one commit in memory before storing it
WINDOWS = ((0, 64), (65, 4096), (4097, 1 << 62))


@dataclass
class FetchResult:
    remote: str
    updated: dict[str, tuple[Cid | None, Cid]] = field(default_factory=dict)
    stats: TransferStats = field(default_factory=TransferStats)
    round_trips: int = 0
    tags: TagUpdate | None = None  # None: the peer does not send tags

    def to_json(self) -> dict[str, Any]:
        return {"remote": self.remote, "round_trips": self.round_trips, **self.stats.to_json(),
                "updated": {b: {"old": cid_str(o) if o else None, "new": cid_str(n)}
                            for b, (o, n) in self.updated.items()},
                "tags": self.tags.to_json() if self.tags is not None else None}


def _local_heads(repo: Repository) -> list[Cid]:
    heads = [c for c in dict.fromkeys(repo.refs.list_refs().values()) if cid_codec(c) == DAG_CBOR]
    head = repo.head()
    if head is not None and head not in heads:
        heads.insert(0, head)
    return heads


def fetch_from(repo: Repository, peer: Peer, remote: str, progress: Progress = NULL_PROGRESS,
               flush_bytes: int = FLUSH_BYTES, require_signed: bool | None = None,
               widen: tuple[str, ...] | None = None) -> FetchResult:
    """Fetch every branch of ``peer`` into ``remotes/<remote>/<branch>``.

    A partial clone (config ``partial_paths``) fetches only what lies inside its paths.
    ``widen`` (``fetch --path``, :mod:`casync.transports.peer.widen`): fetch the history of
    these further paths (``()``: of every path), every commit again, as a clone of them
    would; the caller records them once it returned.

    ``require_signed`` (default: config ``require_signed``): every commit the peer's heads
    bring must carry a valid signature by a trusted key, checked before any ref moves
    (:func:`casync.repo.signatures.require_signed_history`).

    Whole commits are made durable every ``flush_bytes``; if the transfer breaks, the
    last durable commit is kept as ``partial/<remote>`` and offered as a "have" next
    time, so a restart sends only what is still missing.  The writer lock is taken per
    batch of whole commits, never while the link is waited on (:func:`_receive`).
    """
    result = FetchResult(remote)
    info = peer.info()
    result.round_trips += 1
    if info.repository_id != repo.repo_id:
        raise RemoteError(f"{peer.url} holds repository {info.repository_id}, not this one ({repo.repo_id})",
                          hint="clone it instead, or check the remote's URL")
    paths = repo.partial if widen is None else PathFilter(widen) if widen else None
    wants = [c for c in dict.fromkeys(info.refs.values()) if widen is not None or not repo.blocks.has(c)]
    wants += _tag_wants(repo, info, wants)
    if wants:
        graph = repo.graph
        heads = _local_heads(repo)
        common: list[Cid] = []
        for lo, hi in WINDOWS if widen is None else ():  # widening: what is held lacks the new paths
            haves = graph.sample(heads, lo, hi)[:MAX_HAVES]
            if not haves:
                break
            common = peer.negotiate(haves)
            result.round_trips += 1
            if common:
                break
        progress.start(f"fetching from {remote}", None)
        receiver = PackReceiver(repo, wants, flush_bytes, paths)
        try:
            stream = peer.fetch(wants, common, paths.paths) if paths is not None else peer.fetch(wants, common)
            result.stats = _receive(repo, receiver, stream, flush_bytes, progress)
        except BaseException as exc:
            progress.finish()
            with repo.store.writer_lock():
                receiver.abort()
                kept = receiver.last_flushed_commit
                if kept is not None:  # keep whole commits for a restart
                    _set_ref(repo, f"partial/{remote}", kept, "interrupted fetch")
            if isinstance(exc, (InvalidObject, CorruptBlock, RemoteError)):
                again = ("run it again: what arrived whole is kept, and only the rest is sent"
                         if kept is not None else "run it again")
                # a stream cut short is the link's fault (retry); a block that lies is not
                broken_off = isinstance(exc, TruncatedCar)
                raise RemoteError(f"fetch from {peer.url} failed: {exc.message}", hint=exc.hint or again,
                                  transient=getattr(exc, "transient", False) or broken_off) from None
            raise
        progress.finish()
        result.round_trips += 1
    if require_signed if require_signed is not None else settings_require_signed(repo.config):
        known = [c for c in repo.refs.list_refs().values() if cid_codec(c) == DAG_CBOR]
        heads = [*info.refs.values(), *(c for c in (info.tags or {}).values() if repo.blocks.has(c))]
        require_signed_history(repo, heads, known, peer.url)
    with repo.store.writer_lock():
        for branch, cid in info.refs.items():
            name = f"remotes/{remote}/{branch}"
            old = repo.refs.get_ref(name)
            if old != cid:
                repo.refs.cas_ref(name, old, cid, f"fetch {remote}")
                result.updated[branch] = (old, cid)
        partial = repo.refs.get_ref(f"partial/{remote}")
        if partial is not None:
            repo.refs.cas_ref(f"partial/{remote}", partial, None, "fetch completed")
        if info.tags is not None:
            result.tags = receive_tags(repo, info.tags, remote)
    return result


def _receive(repo: Repository, receiver: PackReceiver, blocks: Iterable[tuple[Cid, bytes]], batch_bytes: int,
             progress: Progress, buffer_limit: int = BUFFER_LIMIT) -> TransferStats:
    """Store ``blocks`` through ``receiver``, holding the writer lock only while storing, never
    while waiting on the link: whole commits (``batch_bytes`` of them, or what is left) are
    read unlocked into memory, then stored and made durable under the lock, so a slow peer
    delays no other writer.  A commit larger than ``buffer_limit`` is stored as it arrives,
    under the lock, from the block that overflowed to its commit block (memory stays bounded)."""
    stream = iter(blocks)
    done = False
    while True:
        batch: list[tuple[Cid, bytes]] = []
        size, boundary = 0, True
        if not done:
            for cid, block in stream:
                batch.append((cid, block))
                size += len(block)
                boundary = cid_codec(cid) == DAG_CBOR
                if (boundary and size >= batch_bytes) or size >= buffer_limit:
                    break
            else:
                done = True
        with repo.store.writer_lock():
            try:
                for cid, block in batch:
                    receiver.add(cid, block)
                    progress.advance(len(block))
                while not boundary and not done:  # the rest of a commit too big to hold
                    item = next(stream, None)
                    if item is None:
                        done = True
                        break
                    receiver.add(*item)
                    progress.advance(len(item[1]))
                    boundary = cid_codec(item[0]) == DAG_CBOR
                if done:
                    return receiver.finish()
                receiver.checkpoint()
            except BaseException:  # dropped before the lock goes: the next writer appends where we stopped
                receiver.abort()
                raise


def _tag_wants(repo: Repository, info: PeerInfo, wants: list[Cid]) -> list[Cid]:
    """The peer's tag targets this repository lacks, within one request's limit; a tag left
    out is reported as skipped and comes with a later fetch."""
    extra = [c for c in dict.fromkeys((info.tags or {}).values()) if c not in wants and not repo.blocks.has(c)]
    return extra[: max(0, MAX_WANTS - len(wants))]


def _set_ref(repo: Repository, name: str, cid: Cid, reason: str) -> None:
    repo.refs.cas_ref(name, repo.refs.get_ref(name), cid, reason)


def push_to(repo: Repository, peer: Peer, remote: str, branch: str, progress: Progress = NULL_PROGRESS
            ) -> dict[str, Any]:
    """Push ``branch`` to the peer's branch of the same name (fast-forward only), then the
    tags the peer lacks (``summary["tags"]``; see :func:`push_tags_to`)."""
    info = peer.info()
    summary = _push_branch(repo, peer, info, remote, branch, progress)
    tip = repo.refs.get_ref(f"heads/{branch}")
    tags = push_tags_to(repo, peer, info, remote, [tip] if tip is not None else [])
    summary["tags"] = tags.to_json() if tags is not None else None
    return summary


def _push_branch(repo: Repository, peer: Peer, info: PeerInfo, remote: str, branch: str, progress: Progress
                 ) -> dict[str, Any]:
    local = repo.refs.get_ref(f"heads/{branch}")
    if local is None:
        raise UsageError(f"no local branch {branch!r} to push")
    if info.repository_id != repo.repo_id:
        raise RemoteError(f"{peer.url} holds repository {info.repository_id}, not this one")
    if info.scope == "read":
        raise RemoteAuthError(f"the token sent to {peer.url} may only read (fetch, pull, clone); it cannot push",
                              hint="push with the server's write token (--token-file), or from a site that has it")
    if info.read_only:
        raise RemoteError(f"{peer.url} is read-only; it does not accept pushes")
    remote_tip = info.refs.get(branch)
    summary: dict[str, Any] = {"remote": remote, "branch": branch, "new": cid_str(local),
                               "old": cid_str(remote_tip) if remote_tip else None, "round_trips": 1}
    if remote_tip == local:
        summary.update(result="up-to-date", blocks=0, bytes=0)
        return summary
    if remote_tip is not None and not (repo.blocks.has(remote_tip) and repo.graph.is_ancestor(remote_tip, local)):
        raise RefConflict(f"push to {remote}/{branch} rejected: the remote has commits this branch lacks "
                          "(non-fast-forward)", hint=f"run 'casync sync {remote}' (fetch + merge), then push")
    haves = repo.graph.sample([local], 0, 4096)[:MAX_HAVES]
    common = peer.negotiate(haves)
    summary["round_trips"] += 1
    base = common + ([remote_tip] if remote_tip else [])
    missing = repo.graph.missing([local], base)
    progress.start(f"pushing to {remote}", None)
    sent = {"blocks": 0, "bytes": 0}

    def counted() -> Iterator[tuple[Cid, bytes]]:
        for cid, block in blocks_for_commits(repo, missing, repo.partial):
            sent["blocks"] += 1
            sent["bytes"] += len(block)
            progress.advance(len(block))
            yield cid, block

    try:
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            sent.update(blocks=0, bytes=0)
            try:
                peer.push(branch, remote_tip, local, counted())
                break
            except RemoteError as err:
                if not err.transient or attempt == PUSH_ATTEMPTS:
                    raise
                now = peer.info().refs.get(branch)  # the link broke after the body started:
                if now == local:  # the push landed, only its reply was lost
                    break
                if now != remote_tip:
                    raise
                summary["round_trips"] += 1  # it did not land: send it again
    finally:
        progress.finish()
    summary["round_trips"] += 1
    name = f"remotes/{remote}/{branch}"
    with repo.store.writer_lock():
        repo.refs.cas_ref(name, repo.refs.get_ref(name), local, f"push {remote}")
    summary.update(result="pushed", commits=len(missing), **sent)
    return summary


def _push_tag_batch(peer: Peer, batch: dict[str, Cid], blocks: Callable[[], Iterator[tuple[Cid, bytes]]]
                    ) -> TagUpdate:
    """``peer.push_tags``, sent again when the link broke after its body started and the
    peer does not hold the tags (a tag push only ever creates tags, so a repeat is harmless)."""
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        try:
            return peer.push_tags(batch, blocks())
        except RemoteError as err:
            if not err.transient or attempt == PUSH_ATTEMPTS:
                raise
            held = peer.info().tags or {}
            if all(held.get(name) == cid for name, cid in batch.items()):
                return TagUpdate(peer.url, created=dict(batch))  # they landed; the reply was lost
    raise AssertionError("unreachable")


def push_tags_to(repo: Repository, peer: Peer, info: PeerInfo, remote: str, pushed: list[Cid]
                 ) -> TagUpdate | None:
    """Send the local tags the peer lacks, with the blocks their commits need beyond what
    the peer holds (its refs, its tags and ``pushed``).  A tag the peer has with another
    target is not sent: it is reported as a conflict (ours, theirs).  None when the peer
    takes no tags (read-only, or from before tags)."""
    if info.tags is None or info.read_only:
        return None
    result = TagUpdate(remote)
    send: dict[str, Cid] = {}
    for name, cid in list_tags(repo).items():
        theirs = info.tags.get(name)
        if theirs is None:
            send[name] = cid
        elif theirs == cid:
            result.unchanged.append(name)
        else:
            result.conflicts[name] = (cid, theirs)
    held = [c for c in dict.fromkeys([*info.refs.values(), *info.tags.values(), *pushed]) if repo.blocks.has(c)]
    names = sorted(send)
    for i in range(0, len(names), MAX_TAGS_PER_PUSH):
        batch = {n: send[n] for n in names[i : i + MAX_TAGS_PER_PUSH]}
        commits = repo.graph.missing(list(dict.fromkeys(batch.values())), held)
        reply = _push_tag_batch(peer, batch, functools.partial(blocks_for_commits, repo, commits, repo.partial))
        held.extend(batch.values())
        result.created.update(reply.created)
        result.unchanged.extend(reply.unchanged)
        result.skipped.update(reply.skipped)
        # the peer's view is (its tag, ours): turn it round
        result.conflicts.update({n: (t, o) for n, (o, t) in reply.conflicts.items()})
    return result
