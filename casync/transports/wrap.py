"""Wrappers every peer transport shares, as restic wraps its backends: retry with backoff
(:class:`RetryingPeer`), counting what moves with progress (:class:`CountingPeer`) and a bound
on concurrent calls (:class:`LimitedPeer`).  Each takes any
:class:`~casync.transports.peer.protocol.Peer` and is one, so they stack; :func:`wrap_peer`
stacks them in the one order every caller uses (limit, then count, then retry: a retried
stream is counted once, and a call waiting for a slot is not retrying)."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from casync.errors import RemoteError
from casync.model.car import TruncatedCar
from casync.model.cid import Cid
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.tags import TagUpdate
from casync.store.retry import DEFAULT_RETRY, RetryPolicy, retrying
from casync.transfer.stream import TransferStats
from casync.transports.peer.protocol import Peer, PeerInfo

__all__ = ["CountingPeer", "LimitedPeer", "RetryingPeer", "TransferCounter", "wrap_peer"]

T = TypeVar("T")


def wrap_peer(inner: Peer, retry: RetryPolicy = DEFAULT_RETRY, *, counter: TransferCounter | None = None,
              limit: int | None = None) -> Peer:
    """``inner`` retried, then counted into ``counter`` (if given), then limited to ``limit``
    concurrent calls (if given)."""
    peer: Peer = RetryingPeer(inner, retry)
    if counter is not None:
        peer = CountingPeer(peer, counter)
    if limit is not None:
        peer = LimitedPeer(peer, limit)
    return peer


@dataclass
class TransferCounter:
    """Blocks and bytes a peer sent us and we sent it, over any number of calls (thread-safe).
    ``progress`` hears every byte received or sent, under the labels ``receiving``/``sending``."""

    progress: Progress = NULL_PROGRESS
    blocks_received: int = 0
    bytes_received: int = 0
    blocks_sent: int = 0
    bytes_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def received(self, block: bytes) -> None:
        with self._lock:
            self.blocks_received += 1
            self.bytes_received += len(block)
        self.progress.advance(len(block))

    def sent(self, block: bytes) -> None:
        with self._lock:
            self.blocks_sent += 1
            self.bytes_sent += len(block)
        self.progress.advance(len(block))


class CountingPeer:
    """Any peer, with every block it delivers or is sent counted into a :class:`TransferCounter`."""

    def __init__(self, inner: Peer, counter: TransferCounter) -> None:
        self.inner = inner
        self.counter = counter
        self.url = inner.url

    def info(self) -> PeerInfo:
        return self.inner.info()

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        return self.inner.negotiate(haves)

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        return self._received(self.inner.fetch(wants, haves, paths))

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        return self._received(self.inner.blocks(cids))

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        return self.inner.push(branch, old, new, self._sent(blocks))

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        return self.inner.push_tags(tags, self._sent(blocks))

    def close(self) -> None:
        self.inner.close()

    def _received(self, stream: Iterator[tuple[Cid, bytes]]) -> Iterator[tuple[Cid, bytes]]:
        try:
            for cid, block in stream:
                self.counter.received(block)
                yield cid, block
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _sent(self, blocks: Iterable[tuple[Cid, bytes]]) -> Iterator[tuple[Cid, bytes]]:
        for cid, block in blocks:
            self.counter.sent(block)
            yield cid, block


class LimitedPeer:
    """Any peer, with at most ``limit`` calls in flight; a block stream holds its slot until it
    is exhausted or closed, so a limit of 1 means one transfer at a time to that peer."""

    def __init__(self, inner: Peer, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency limit is at least 1")
        self.inner = inner
        self.url = inner.url
        self._slots = threading.BoundedSemaphore(limit)

    def _call(self, fn: Callable[[], T]) -> T:
        with self._slots:
            return fn()

    def info(self) -> PeerInfo:
        return self._call(self.inner.info)

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        return self._call(lambda: self.inner.negotiate(haves))

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        return self._holding(lambda: self.inner.fetch(wants, haves, paths))

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        return self._holding(lambda: self.inner.blocks(cids))

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        return self._call(lambda: self.inner.push(branch, old, new, blocks))

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        return self._call(lambda: self.inner.push_tags(tags, blocks))

    def close(self) -> None:
        self.inner.close()

    def _holding(self, open_stream: Callable[[], Iterator[tuple[Cid, bytes]]]) -> Iterator[tuple[Cid, bytes]]:
        with self._slots:
            stream = open_stream()
            try:
                yield from stream
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()


def _broke(exc: BaseException) -> bool:
    """A failure of the link, not of the request: worth another attempt."""
    if isinstance(exc, RemoteError):
        return exc.transient
    return isinstance(exc, TruncatedCar | ConnectionError | TimeoutError | http.client.HTTPException)


class RetryingPeer:
    """Any :class:`~casync.transports.peer.protocol.Peer`, its calls retried with backoff while the link is
    what fails.  A request that sent a body (a push's blocks) is not sent twice; a block
    stream that broke off is asked for again and the blocks already delivered are skipped,
    so the caller sees one uninterrupted stream."""

    def __init__(self, inner: Peer, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.inner = inner
        self.retry = retry
        self.url = inner.url

    def info(self) -> PeerInfo:
        return retrying(self.inner.info, self.retry)

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        return retrying(lambda: self.inner.negotiate(haves), self.retry)

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        return self._stream(lambda: self.inner.fetch(wants, haves, paths))

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        return self._stream(lambda: self.inner.blocks(cids))

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        return self._once(lambda body: self.inner.push(branch, old, new, body), blocks)

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        return self._once(lambda body: self.inner.push_tags(tags, body), blocks)

    def close(self) -> None:
        self.inner.close()

    def _once(self, call: Callable[[Iterable[tuple[Cid, bytes]]], T], blocks: Iterable[tuple[Cid, bytes]]) -> T:
        """``call(body)``, retried only while not one block of the body has been read."""
        source = iter(blocks)
        started = False

        def body() -> Iterator[tuple[Cid, bytes]]:
            nonlocal started
            for item in source:
                started = True
                yield item

        return retrying(lambda: call(body()), self.retry, may_retry=lambda: not started)

    def _stream(self, open_stream: Callable[[], Iterator[tuple[Cid, bytes]]]) -> Iterator[tuple[Cid, bytes]]:
        """The blocks of ``open_stream()``, asked for again after a break.  A peer answers the
        same request with the same stream, so the blocks already delivered are skipped by
        count, their CIDs checked against a digest of what was delivered (memory stays
        constant however long the stream; a peer that answers differently is an error, never
        a silent gap)."""
        delivered = 0
        sent = hashlib.blake2b(digest_size=16)
        delays = self.retry.delays()
        attempts = 0
        while True:
            attempts += 1
            stream = open_stream()
            seen = 0
            again = hashlib.blake2b(digest_size=16)
            try:
                for cid, block in stream:
                    if seen < delivered:
                        seen += 1
                        again.update(len(cid).to_bytes(2, "big") + cid)
                        if seen == delivered and again.digest() != sent.digest():
                            raise RemoteError(f"{self.url} answered a repeated request with another stream")
                        continue
                    sent.update(len(cid).to_bytes(2, "big") + cid)
                    delivered += 1
                    seen += 1
                    yield cid, block
                if seen < delivered:
                    raise RemoteError(f"{self.url} answered a repeated request with a shorter stream")
                return
            except (RemoteError, TruncatedCar, OSError, http.client.HTTPException) as exc:
                delay = next(delays, None) if _broke(exc) else None
                if delay is None:
                    if attempts > 1 and isinstance(exc, RemoteError | TruncatedCar):
                        exc.message += f" (gave up after {attempts} attempts)"
                    raise
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            time.sleep(delay)
