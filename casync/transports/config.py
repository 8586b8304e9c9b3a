"""Remote URLs and the ``remotes`` entry of the repository configuration.

A remote URL names a Kubo node's RPC API and, optionally, a repository on it and a
published index to read head records from (see ``docs/remotes.md``)::

    ipfs+http://HOST:PORT[/REPOSITORY-ID][#INDEX-CID]
    ipfs+https://HOST:PORT[/REPOSITORY-ID][#INDEX-CID]

Remotes are stored in the repository config under ``remotes``
(``{name: {"url": ..., "gateway": ... or null, "token_file": ..., "cluster": ...,
"replication_min": ..., "replication_max": ...}}``, typed and checked by
:mod:`casync.settings`); :func:`write_remote` is the one writer of that key.  An IPFS remote
with a ``cluster`` (the REST API of an IPFS Cluster peer, ``http://HOST:9094``) sends its
blocks to the Kubo node of ``url`` as any IPFS remote and pins through the cluster
(:mod:`casync.transports.ipfs.cluster`).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, replace
from typing import Any

from casync.errors import UsageError
from casync.model.cid import Cid, cid_str, parse_cid
from casync.model.names import is_repo_id
from casync.repo.repository import Repository
from casync.settings import RemoteEntry, remotes, with_remote
from casync.store.ipfs_cluster import check_cluster_url

__all__ = [
    "SCHEMES",
    "Remote",
    "RemoteUrl",
    "add_remote",
    "get_remote",
    "is_ipfs_url",
    "list_remotes",
    "parse_url",
    "remove_remote",
    "set_remote",
    "validate_remote_name",
    "validate_repo_id",
    "write_remote",
]

SCHEMES = ("ipfs+http", "ipfs+https")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CONFIG_KEY = "remotes"


def validate_remote_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise UsageError(f"invalid remote name {name!r}",
                         hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def validate_repo_id(repo_id: str, context: str = "repository id") -> None:
    if not is_repo_id(repo_id):
        raise UsageError(f"invalid {context} {repo_id!r}")


@dataclass(frozen=True)
class RemoteUrl:
    """A parsed remote URL."""

    text: str
    api: str  # http(s)://HOST:PORT of the RPC API
    repo_id: str | None = None
    index: Cid | None = None

    def __str__(self) -> str:
        return self.text


def parse_url(url: str) -> RemoteUrl:
    """Parse and validate a remote URL; an unknown scheme or a malformed URL is a usage error."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        shown = f"'{parts.scheme}'" if parts.scheme else "no scheme"
        raise UsageError(f"unsupported remote URL {url!r} ({shown})",
                         hint="use ipfs+http://HOST:PORT (the Kubo RPC API), e.g. ipfs+http://127.0.0.1:5001")
    if not parts.hostname:
        raise UsageError(f"remote URL {url!r} has no host", hint="use ipfs+http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"remote URL {url!r} has an invalid port") from None
    if port is None:
        raise UsageError(f"remote URL {url!r} has no port", hint="the Kubo RPC API is usually on port 5001")
    if parts.query or parts.username or parts.password:
        raise UsageError(f"remote URL {url!r}: query strings and credentials are not supported")
    path = parts.path.strip("/")
    repo_id = None
    if path:
        validate_repo_id(path, f"repository id in remote URL {url!r}")
        repo_id = path
    index = None
    if parts.fragment:
        try:
            index = parse_cid(parts.fragment)
        except UsageError:
            raise UsageError(f"remote URL {url!r}: {parts.fragment!r} after '#' is not an index CID") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    api = f"{parts.scheme.removeprefix('ipfs+')}://{host}:{port}"
    return RemoteUrl(url.strip(), api, repo_id, index)


def _validate_gateway(gateway: str) -> str:
    parts = urllib.parse.urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid gateway URL {gateway!r}", hint="use http://HOST:PORT (the Kubo gateway)")
    return gateway.rstrip("/")


def is_ipfs_url(url: str) -> bool:
    return urllib.parse.urlsplit(url.strip()).scheme in SCHEMES


def _check_peer_url(url: str) -> str:
    """Remotes that are casync peers (``casync serve`` over http(s), or a path) share the
    ``remotes`` config with IPFS remotes; ``casync sync`` talks to them."""
    if not url.strip():
        raise UsageError("empty remote URL", hint="use ipfs+http://HOST:PORT, http(s)://HOST:PORT or a path")
    if url.strip().lower().startswith("ipfs+"):  # ipfs+http://HOST:PORT was meant, but malformed
        raise UsageError(f"malformed IPFS remote URL {url!r}", hint="use ipfs+http://HOST:PORT")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UsageError(f"remote URL {url!r} has no host")
    elif parts.scheme not in ("", "file"):
        raise UsageError(f"unsupported remote URL {url!r} ('{parts.scheme}')",
                         hint="use ipfs+http://HOST:PORT for a Kubo node; http(s)://HOST:PORT or a path "
                              "for a casync peer")
    return url.strip()


@dataclass(frozen=True)
class Remote:
    """A configured remote.  ``kind`` is ``ipfs`` (a Kubo node; ``url`` parsed) or ``peer``
    (``casync serve`` or a path, handled by ``casync sync``; ``url.api`` is empty)."""

    name: str
    url: RemoteUrl
    gateway: str | None = None
    kind: str = "ipfs"
    cluster: str | None = None  # the IPFS Cluster REST API that pins (None: pins on the Kubo node)
    replication_min: int | None = None
    replication_max: int | None = None

    @property
    def is_ipfs(self) -> bool:
        return self.kind == "ipfs"

    def require_ipfs(self) -> Remote:
        if not self.is_ipfs:
            raise UsageError(f"remote {self.name!r} ({self.url.text}) is a casync peer, not an IPFS node",
                             hint=f"use 'casync sync {self.name}' for peers")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "url": self.url.text, "gateway": self.gateway,
                "api": self.url.api or None, "repository": self.url.repo_id,
                "index": cid_str(self.url.index) if self.url.index else None, "cluster": self.cluster,
                "replication_min": self.replication_min, "replication_max": self.replication_max}


def _remotes(repo: Repository) -> dict[str, RemoteEntry]:
    return remotes(repo.config)


def write_remote(repo: Repository, name: str, entry: RemoteEntry | None) -> None:
    """Set (``None``: remove) one remote: the one writer of the ``remotes`` config key."""
    repo.set_config(CONFIG_KEY, with_remote(repo.config, name, entry))


def _remote(name: str, entry: RemoteEntry) -> Remote:
    if is_ipfs_url(entry.url):
        return Remote(name, parse_url(entry.url), entry.gateway, "ipfs", entry.cluster, entry.replication_min,
                      entry.replication_max)
    return Remote(name, RemoteUrl(entry.url, ""), entry.gateway, "peer")


def list_remotes(repo: Repository) -> list[Remote]:
    return [_remote(name, entry) for name, entry in sorted(_remotes(repo).items())]


def get_remote(repo: Repository, name: str | None = None) -> Remote:
    """The remote ``name``; without a name, ``origin`` or else the only remote."""
    remotes = {r.name: r for r in list_remotes(repo)}
    if name is None:
        if "origin" in remotes:
            return remotes["origin"]
        if len(remotes) == 1:
            return next(iter(remotes.values()))
        if not remotes:
            raise UsageError("no remote configured",
                             hint="add one with 'casync remote add NAME ipfs+http://HOST:PORT'")
        raise UsageError(f"several remotes ({', '.join(sorted(remotes))}) and none is 'origin'",
                         hint="name the remote to use")
    if name not in remotes:
        raise UsageError(f"no remote named {name!r}", hint="list remotes with 'casync remote -v'")
    return remotes[name]


def add_remote(repo: Repository, name: str, url: str, gateway: str | None = None, cluster: str | None = None,
               replication: tuple[int | None, int | None] = (None, None)) -> Remote:
    """Add an IPFS remote (``ipfs+http://...``, optionally pinning through an IPFS Cluster) or
    a casync peer (``http(s)://...``, a path)."""
    validate_remote_name(name)
    if name in _remotes(repo):
        raise UsageError(f"remote {name!r} already exists", hint="remove it first, or use 'casync remote set-url'")
    gw = _validate_gateway(gateway) if gateway else None
    if is_ipfs_url(url):
        parsed = parse_url(url)
        if parsed.repo_id is not None and parsed.repo_id != repo.repo_id:
            raise UsageError(f"remote URL {url!r} names repository {parsed.repo_id}, "
                             f"but this repository is {repo.repo_id}")
        entry = _with_cluster(RemoteEntry(parsed.text, gw), cluster, replication)
    else:
        if cluster is not None or replication != (None, None):
            raise UsageError(f"remote URL {url!r} is a casync peer: only IPFS remotes pin through a cluster",
                             hint="use ipfs+http://HOST:PORT (the Kubo RPC API of a cluster peer) with --cluster")
        entry = RemoteEntry(_check_peer_url(url), gw)
    write_remote(repo, name, entry)
    return _remote(name, entry)


def _with_cluster(entry: RemoteEntry, cluster: str | None,
                  replication: tuple[int | None, int | None]) -> RemoteEntry:
    """``entry`` pinning through ``cluster`` (``''``: no cluster) with the given replication
    factors (``None`` in ``cluster``/``replication``: unchanged)."""
    if cluster is not None:
        entry = replace(entry, cluster=check_cluster_url(cluster) if cluster else None)
        if not cluster:
            entry = replace(entry, replication_min=None, replication_max=None)
    low, high = replication
    if low is not None or high is not None:
        if entry.cluster is None:
            raise UsageError("replication factors need a cluster", hint="add --cluster http://HOST:9094 "
                                                                         "(the IPFS Cluster REST API)")
        entry = replace(entry, replication_min=low if low is not None else entry.replication_min,
                        replication_max=high if high is not None else entry.replication_max)
    if entry.replication_min is not None and entry.replication_max is not None \
            and entry.replication_min > entry.replication_max:
        raise UsageError(f"replication min {entry.replication_min} is above max {entry.replication_max}")
    return entry


def set_remote(repo: Repository, name: str, url: str | None = None, gateway: str | None = None,
               cluster: str | None = None,
               replication: tuple[int | None, int | None] = (None, None)) -> Remote:
    """Change a remote's URL, gateway and/or cluster (other keys of its entry are kept)."""
    entry = _remotes(repo).get(name)
    if entry is None:
        raise UsageError(f"no remote named {name!r}", hint="list remotes with 'casync remote -v'")
    if url is not None:
        entry = replace(entry, url=parse_url(url).text if is_ipfs_url(url) else _check_peer_url(url))
    if gateway is not None:
        entry = replace(entry, gateway=_validate_gateway(gateway) if gateway else None)
    if cluster is not None or replication != (None, None):
        if not is_ipfs_url(entry.url):
            raise UsageError(f"remote {name!r} is a casync peer: only IPFS remotes pin through a cluster")
        entry = _with_cluster(entry, cluster, replication)
    write_remote(repo, name, entry)
    return _remote(name, entry)


def remove_remote(repo: Repository, name: str) -> list[str]:
    """Forget a remote and its remote-tracking refs; return the refs deleted."""
    if name not in _remotes(repo):
        raise UsageError(f"no remote named {name!r}", hint="list remotes with 'casync remote -v'")
    deleted = []
    for ref, cid in repo.refs.list_refs(f"remotes/{name}/").items():
        repo.refs.cas_ref(ref, cid, None, f"remote remove {name}")
        deleted.append(ref)
    write_remote(repo, name, None)
    marker = b"push-pending/" + name.encode()  # an interrupted push to it (see remote.sender)
    repo.store.write(lambda txn: txn.delete(marker, db=repo.store.db("meta")))
    return deleted
