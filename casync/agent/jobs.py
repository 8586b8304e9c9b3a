"""One sync job: a peer (fetch + merge + push, :func:`casync.agent.exchange.exchange`), a
master (fetch + merge, never a push) or an IPFS node (push).  Each job opens its own
:class:`Repository` on the site's store (the writer lock serialises what they write) and
stops at the next block once the agent is told to stop: the block receiver then drops what
is not a whole commit, so no ref ever names a commit that is not wholly stored."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from casync.agent.config import AgentConfig
from casync.agent.exchange import exchange
from casync.agent.state import Target
from casync.errors import CasyncError, RefConflict, UsageError
from casync.model.cid import Cid
from casync.repo.repository import Repository
from casync.repo.tags import TagUpdate
from casync.store.retry import RetryPolicy
from casync.transfer.stream import TransferStats
from casync.transports.peer.http import HttpPeer
from casync.transports.peer.protocol import Peer, PeerInfo
from casync.transports.wrap import TransferCounter, wrap_peer

__all__ = ["Abandoned", "JobResult", "read_token", "run_job"]

T = TypeVar("T")
_LINK_RETRY = RetryPolicy(attempts=2, initial=0.2, max_delay=1.0)  # a blip; the agent's backoff does the rest


class Abandoned(CasyncError):
    """The agent is stopping: the transfer in progress was given up (whole commits are kept)."""


@dataclass
class JobResult:
    ok: bool
    seconds: float
    entry: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    received_blocks: int = 0
    received_bytes: int = 0
    sent_blocks: int = 0
    sent_bytes: int = 0
    directory: Any = None           # the peer's GET /v1/peers answer (gossip), if asked


def read_token(path: Any) -> str:
    """The bearer token in ``path`` (a missing or empty file is a usage error naming it)."""
    try:
        token = str(path.read_text()).strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror}",
                         hint="token_file keys name a file holding the peer's token") from None
    if not token:
        raise UsageError(f"token file {path} is empty", hint="put a long random secret in it")
    return token


class _Stoppable:
    """A peer whose calls and block streams end with :class:`Abandoned` once ``stop`` is set."""

    def __init__(self, inner: Peer, stop: threading.Event) -> None:
        self.inner, self.stop, self.url = inner, stop, inner.url

    def _check(self) -> None:
        if self.stop.is_set():
            raise Abandoned(f"sync with {self.url} abandoned: the agent is stopping")

    def _watch(self, blocks: Iterable[tuple[Cid, bytes]]) -> Iterator[tuple[Cid, bytes]]:
        for item in blocks:
            self._check()
            yield item

    def _call(self, call: Callable[[], T]) -> T:
        self._check()
        return call()

    def info(self) -> PeerInfo:
        return self._call(self.inner.info)

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        return self._call(lambda: self.inner.negotiate(haves))

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        self._check()
        return self._watch(self.inner.fetch(wants, haves, paths))

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        self._check()
        return self._watch(self.inner.blocks(cids))

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        return self._call(lambda: self.inner.push(branch, old, new, self._watch(blocks)))

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        return self._call(lambda: self.inner.push_tags(tags, self._watch(blocks)))

    def close(self) -> None:
        self.inner.close()


def run_job(cfg: AgentConfig, target: Target, stop: threading.Event, gossip: bool) -> JobResult:
    """Sync with ``target`` once; a failure is in the result (anything else is a bug, raised)."""
    t0 = time.monotonic()
    result = JobResult(False, 0.0)
    try:
        repo = Repository.open(cfg.repository, search_parents=False)
        try:
            if target.kind == "ipfs":
                _push_ipfs(repo, cfg, target, result)
            else:
                _sync_peer(repo, cfg, target, stop, gossip, result)
        finally:
            repo.close()
        result.ok = True
    except (CasyncError, OSError, http.client.HTTPException) as exc:  # counted and logged by reason
        result.error = exc
    result.seconds = time.monotonic() - t0
    return result


def _sync_peer(repo: Repository, cfg: AgentConfig, target: Target, stop: threading.Event, gossip: bool,
               result: JobResult) -> None:
    token = read_token(target.token_file) if target.token_file is not None else None
    http = HttpPeer(target.url, token, target.timeout)
    counter = TransferCounter()  # what crossed the link, each way (retried streams counted once)
    peer = _Stoppable(wrap_peer(http, _LINK_RETRY, counter=counter), stop)
    try:
        for attempt in (1, 2):
            try:
                exchange(repo, peer, target.name, cfg.branch, result.entry, rules=cfg.policy,
                         priorities=cfg.priorities(), push=target.kind == "peer" and cfg.role == "peer")
                break
            except RefConflict:  # the peer's branch moved between our fetch and push (another
                if attempt == 2:  # site pushed to it): fetch, merge and push again, once
                    raise
                result.entry.clear()
        if gossip:
            try:
                result.directory = http.directory()
            except CasyncError:
                result.directory = None  # a plain 'casync serve' has no /v1/peers
    finally:
        peer.close()
    result.received_blocks, result.received_bytes = counter.blocks_received, counter.bytes_received
    result.sent_blocks, result.sent_bytes = counter.blocks_sent, counter.bytes_sent


def _push_ipfs(repo: Repository, cfg: AgentConfig, target: Target, result: JobResult) -> None:
    from casync.transports.ipfs import push

    if repo.refs.get_ref(f"heads/{cfg.branch}") is None:
        result.entry["push"] = {"result": "nothing to push yet"}
        return
    res = push(repo, target.name, cfg.branch, retry=_LINK_RETRY)
    result.entry["push"] = res.to_json()
    result.sent_blocks, result.sent_bytes = res.blocks_sent, res.bytes_sent
