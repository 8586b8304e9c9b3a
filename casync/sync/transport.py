"""One way from a remote's name, URL or path to a transport, and the wrappers every
transport shares (as Dulwich's ``get_transport_and_path`` and restic's retrying backend).

:func:`locate` maps what a user typed to a :class:`Location`: a configured remote's name,
``ipfs+http(s)://`` (a Kubo node), ``http(s)://`` (``casync serve``), a bundle file
(``FILE.car``), or a repository path (``file://`` or plain).  :func:`open_peer` opens the
two kinds that speak the peer protocol (:class:`casync.transports.peer.exchange.Peer`) and wraps them in
:class:`RetryingPeer`, so a link that drops is retried with backoff
(:mod:`casync.store.retry`) whichever transport it is.  Kubo nodes and bundles keep their
own protocols (head records; one file read once) and are only classified here.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from casync.model.car import TruncatedCar
from casync.errors import RemoteError, UsageError
from casync.model.cid import Cid
from casync.settings import RemoteEntry
from casync.store.retry import DEFAULT_RETRY, RetryPolicy, retrying
from casync.transfer.stream import TransferStats
from casync.transports.peer.exchange import LocalPeer, Peer, PeerInfo
from casync.repo.tags import TagUpdate

__all__ = ["Location", "RetryingPeer", "locate", "open_peer"]

T = TypeVar("T")
Kind = Literal["path", "http", "bundle", "ipfs"]


@dataclass(frozen=True)
class Location:
    """Where a remote is: its ``kind``, its URL (a path made absolute), the remote name it
    goes by (a configured one, else one made from the URL) and its configuration if any."""

    kind: Kind
    url: str
    name: str
    config: RemoteEntry | None = None


def locate(spec: str, remotes: Mapping[str, RemoteEntry] | None = None, root: Path | None = None,
           base: str = ".") -> Location:
    """The :class:`Location` of ``spec`` without contacting it.  A configured remote's
    relative path is taken relative to ``root`` (the repository, where it was written),
    any other relative path relative to ``base`` (the -C directory).  A name that is
    neither configured nor a path is a usage error (exit 2)."""
    cfg = (remotes or {}).get(spec)
    if cfg is None and "/" not in spec and "://" not in spec and not (Path(base) / spec).exists():
        raise UsageError(f"no remote named {spec!r}, and no repository at path {spec!r}",
                         hint="list remotes with 'casync remote -v', or give a URL or a path")
    url = cfg.url if cfg else spec
    if url.lower().startswith("ipfs+"):
        return Location("ipfs", url, spec if cfg else _name_for(url), cfg)
    if url.startswith(("http://", "https://")):
        return Location("http", url, spec if cfg else _name_for(url), cfg)
    if "://" in url and not url.startswith("file://"):
        raise UsageError(f"unknown URL scheme in {url!r}", hint="use http(s)://HOST:PORT, a path, or file://PATH")
    path = url.removeprefix("file://")
    full = str(((root or Path(base)) / path if cfg else Path(base) / path).resolve())
    return Location("bundle" if Path(full).is_file() else "path", full, spec if cfg else _name_for(full), cfg)


def _name_for(url: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_")[:60] or "peer"


def open_peer(location: Location, token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
              timeout: float = 300.0) -> Peer:
    """The peer at a ``path`` or ``http`` location, with retries (other kinds: usage error);
    ``timeout`` bounds each network operation of an ``http`` peer (connect, each read)."""
    from casync.transports.peer.http import HttpPeer

    if location.kind == "http":
        return RetryingPeer(HttpPeer(location.url, token, timeout), retry)
    if location.kind == "path":
        return RetryingPeer(LocalPeer(location.url), retry)
    if location.kind == "ipfs":
        raise UsageError(f"{location.url} is an IPFS remote; this command talks to peers (casync serve, paths)",
                         hint="use 'casync pull' / 'casync push' for IPFS remotes")
    raise UsageError(f"{location.url} is a bundle file, not a peer", hint="casync bundle unbundle FILE")


def _broke(exc: BaseException) -> bool:
    """A failure of the link, not of the request: worth another attempt."""
    if isinstance(exc, RemoteError):
        return exc.transient
    return isinstance(exc, TruncatedCar | ConnectionError | TimeoutError | http.client.HTTPException)


class RetryingPeer:
    """Any :class:`~casync.transports.peer.exchange.Peer`, its calls retried with backoff while the link is
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

    def fetch(self, wants: list[Cid], haves: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        return self._stream(lambda: self.inner.fetch(wants, haves))

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
