"""One way from a remote's name, URL or path to a transport, and the wrappers every
transport shares (as Dulwich's ``get_transport_and_path`` and restic's retrying backend).

:func:`locate` maps what a user typed to a :class:`Location`: a configured remote's name,
``ipfs+http(s)://`` (a Kubo node), ``http(s)://`` (``casync serve``), a bundle file
(``FILE.car``), or a repository path (``file://`` or plain).  :func:`open_peer` opens the
two kinds that speak the peer protocol (:class:`casync.transports.peer.protocol.Peer`) and wraps
them (:mod:`casync.transports.wrap`): retried with backoff, counted, and limited in concurrency,
whichever transport it is.  Kubo nodes and bundles keep their own protocols (head records;
one file read once) and are only classified here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from casync.errors import UsageError
from casync.settings import RemoteEntry
from casync.store.retry import DEFAULT_RETRY, RetryPolicy
from casync.transports.peer.protocol import Peer
from casync.transports.peer.service import LocalPeer
from casync.transports.wrap import TransferCounter, wrap_peer

__all__ = ["Location", "locate", "open_peer"]

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
              timeout: float = 300.0, *, counter: TransferCounter | None = None, limit: int | None = None) -> Peer:
    """The peer at a ``path`` or ``http`` location (other kinds: usage error), wrapped: its calls
    retried with backoff, what it moves counted into ``counter`` (and reported as progress), at
    most ``limit`` calls at once (:mod:`casync.transports.wrap`).  ``timeout`` bounds each network
    operation of an ``http`` peer (connect, each read)."""
    from casync.transports.peer.http import HttpPeer

    if location.kind in ("http", "path"):
        inner: Peer = HttpPeer(location.url, token, timeout) if location.kind == "http" else LocalPeer(location.url)
        return wrap_peer(inner, retry, counter=counter, limit=limit)
    if location.kind == "ipfs":
        raise UsageError(f"{location.url} is an IPFS remote; this command talks to peers (casync serve, paths)",
                         hint="use 'casync pull' / 'casync push' for IPFS remotes")
    raise UsageError(f"{location.url} is a bundle file, not a peer", hint="casync bundle unbundle FILE")
