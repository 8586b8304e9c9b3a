"""IPFS Cluster's REST API (port 9094 by default): the only module in casync that talks to a cluster.

A cluster pins a CID on ``replication_min``..``replication_max`` of its peers (each peer pins
it on its own Kubo node) and tracks every peer's status.  casync needs six calls, over
``http.client`` (no client package): ``POST /pins/{cid}`` (``name``, ``mode``,
``replication-min``, ``replication-max``), ``DELETE /pins/{cid}``, ``GET /pins/{cid}`` (the
status on every peer), ``GET /allocations/{cid}`` (the pin as the shared pinset holds it),
``GET /id`` and ``GET /peers`` (lists stream one JSON object per line).  Credentials come
from ``CASYNC_CLUSTER_API_AUTH`` (``bearer:TOKEN`` or ``basic:USER:PASSWORD``, the REST API's
``basic_auth_credentials`` or a JWT from ``POST /token``), never from URLs.  Failures are
classified as Kubo's are (:mod:`casync.store.ipfs_errors`): no connection, a broken answer
and 5xx are transient and retried (:mod:`casync.store.retry`), 401/403 are auth errors, 404
is "not found"; every error names the cluster's URL.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from casync.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    RemoteProtocolError,
    RemoteTimeout,
    RemoteUnreachable,
    UsageError,
)
from casync.model.cid import Cid, cid_str, parse_cid
from casync.store.ipfs_auth import auth_headers
from casync.store.ipfs_errors import reason
from casync.store.retry import DEFAULT_RETRY, RetryPolicy, retrying

__all__ = ["AUTH_VARIABLE", "ClusterClient", "PeerPinStatus", "PinStatus", "check_cluster_url"]

AUTH_VARIABLE = "CASYNC_CLUSTER_API_AUTH"
PINNED = "pinned"


def check_cluster_url(url: str) -> str:
    """``http(s)://HOST:PORT`` of a cluster peer's REST API, normalised (no path, query or
    credentials: a secret never goes in a URL)."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None \
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"invalid IPFS Cluster URL {url!r}",
                         hint="use http://HOST:PORT, the REST API of a cluster peer (port 9094 by default); "
                              f"credentials go in {AUTH_VARIABLE}")
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class PeerPinStatus:
    """One cluster peer's view of a pin (``status``: ``pinned``, ``pinning``, ``pin_queued``,
    ``pin_error``, ``unpinned``, ``remote`` (not allocated to it), ...)."""

    peer: str
    peername: str
    status: str
    error: str = ""


@dataclass(frozen=True)
class PinStatus:
    """A CID's pin across the cluster: its name, the peers it is allocated to, each peer's
    status, and the replication factors the pinset holds for it (``None``: not in the pinset)."""

    cid: Cid
    name: str
    allocations: tuple[str, ...]
    peers: tuple[PeerPinStatus, ...]
    replication_min: int | None = None
    replication_max: int | None = None

    @property
    def pinned_on(self) -> list[PeerPinStatus]:
        return [p for p in self.peers if p.status == PINNED]

    def to_json(self) -> dict[str, Any]:
        return {"cid": cid_str(self.cid), "name": self.name, "allocations": list(self.allocations),
                "pinned": len(self.pinned_on), "replication_min": self.replication_min,
                "replication_max": self.replication_max,
                "peers": [{"peer": p.peer, "peername": p.peername, "status": p.status, "error": p.error or None}
                          for p in self.peers]}


class ClusterClient:
    """A client of one cluster peer's REST API; thread-safe (one connection per request)."""

    def __init__(self, url: str, *, retry: RetryPolicy = DEFAULT_RETRY, timeout: float = 60.0,
                 auth: str | None = None) -> None:
        self.url = check_cluster_url(url)
        parts = urllib.parse.urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port or 9094
        self.retry = retry
        self.timeout = timeout
        secret = os.environ.get(AUTH_VARIABLE, "") if auth is None else auth
        self._headers = auth_headers(secret, AUTH_VARIABLE, "the cluster's REST API basic_auth_credentials "
                                                            "or a token from POST /token")

    # --- the calls casync needs -----------------------------------------------------------------

    def id(self) -> dict[str, Any]:
        """The answering peer's identity (``id``, ``peername``, ``cluster_peers``, ``version``)."""
        return _one(self._call("GET", "/id", "id"), self.url)

    def peers(self) -> list[dict[str, Any]]:
        """Every cluster peer as the answering peer sees it."""
        return self._call("GET", "/peers", "peers")

    def pin(self, cid: Cid, name: str, replication_min: int, replication_max: int, *,
            recursive: bool = True) -> None:
        """Add (or update) ``cid`` in the pinset under ``name``; the cluster allocates it to
        ``replication_min``..``replication_max`` peers (-1, -1: every peer)."""
        query = urllib.parse.urlencode({"name": name, "mode": "recursive" if recursive else "direct",
                                        "replication-min": replication_min, "replication-max": replication_max})
        self._call("POST", f"/pins/{cid_str(cid)}?{query}", "pin")

    def add_empty_file(self, hash_name: str, name: str) -> Cid:
        """Add the empty file through the cluster (``/add``: raw leaves, CIDv1, ``hash_name``)
        and pin it on every peer under ``name``; the cluster puts the zero-length block on
        each peer's IPFS node.  Returns its CID (casync's empty block).  Why: bitswap never
        sends a zero-length block, so a peer that fetches a DAG holding an empty file never
        finishes pinning it (docs/remotes.md, "The empty block")."""
        query = urllib.parse.urlencode({"raw-leaves": "true", "cid-version": 1, "hash": hash_name, "name": name,
                                        "replication-min": -1, "replication-max": -1, "stream-channels": "false"})
        boundary = "casync-empty-file"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"empty\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n").encode()
        [entry] = self._call("POST", f"/add?{query}", "add (the empty file)", body,
                             f"multipart/form-data; boundary={boundary}")[-1:] or [{}]
        try:
            return parse_cid(str(entry["cid"]))
        except (KeyError, UsageError):
            raise RemoteProtocolError(f"IPFS Cluster {self.url}: malformed add reply {entry!r:.200}") from None

    def unpin(self, cid: Cid) -> bool:
        """Remove ``cid`` from the pinset; False when it was not in it."""
        try:
            self._call("DELETE", f"/pins/{cid_str(cid)}", "unpin")
        except RemoteNotFound:
            return False
        return True

    def allocation(self, cid: Cid) -> dict[str, Any] | None:
        """The pinset's entry for ``cid`` (name, allocations, replication factors), or None."""
        try:
            return _one(self._call("GET", f"/allocations/{cid_str(cid)}", "allocation"), self.url)
        except RemoteNotFound:
            return None

    def status(self, cid: Cid) -> PinStatus:
        """``cid``'s status on every peer, with the pinset's replication factors."""
        info = _one(self._call("GET", f"/pins/{cid_str(cid)}", "status"), self.url)
        entry = self.allocation(cid)
        peers = info.get("peer_map") or {}
        if not isinstance(peers, dict):
            raise RemoteProtocolError(f"IPFS Cluster {self.url}: malformed status of {cid_str(cid)}")
        pin = entry or info
        return PinStatus(
            cid, str(pin.get("name") or ""), tuple(str(a) for a in pin.get("allocations") or ()),
            tuple(PeerPinStatus(str(p), str(v.get("peername", "")), str(v.get("status", "")), str(v.get("error") or ""))
                  for p, v in sorted(peers.items())),
            _int(entry, "replication_factor_min"), _int(entry, "replication_factor_max"))

    # --- the wire --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, body: bytes = b"",
              content_type: str | None = None) -> list[dict[str, Any]]:
        return retrying(lambda: self._once(method, path, what, body, content_type), self.retry)

    def _once(self, method: str, path: str, what: str, body: bytes = b"",
              content_type: str | None = None) -> list[dict[str, Any]]:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        headers = {**self._headers, "Content-Length": str(len(body))}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._raw_error(exc, what) from None
        finally:
            conn.close()
        if resp.status >= 300:
            raise self._status_error(resp.status, body, what)
        return _objects(body, self.url, what)

    def _raw_error(self, exc: Exception, what: str) -> RemoteError:
        where = f"IPFS Cluster {self.url}"
        if isinstance(exc, TimeoutError):
            return RemoteTimeout(f"{where} did not answer in time ({what})")
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            return RemoteUnreachable(f"cannot connect to {where} ({what}): {reason(exc)}",
                                     hint="is ipfs-cluster-service running, and is that its REST API port "
                                          "(9094 by default; see 'casync remote -v')?")
        return RemoteUnreachable(f"the connection to {where} broke ({what}): {reason(exc)}")

    def _status_error(self, status: int, body: bytes, what: str) -> RemoteError:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError, RecursionError):
            message = None
        text = f"IPFS Cluster {self.url} answered HTTP {status} ({what})" + (f": {message}" if message else "")
        if status in (401, 403):
            hint = (f"the cluster requires credentials: set {AUTH_VARIABLE} (bearer:TOKEN or basic:USER:PASSWORD)"
                    if not self._headers else f"the cluster refused {AUTH_VARIABLE}")
            return RemoteAuthError(text, hint=hint)
        if status == 404:
            return RemoteNotFound(text)
        return RemoteError(text, transient=status >= 500)


def _objects(body: bytes, url: str, what: str) -> list[dict[str, Any]]:
    """The JSON objects of an answer: one object, an array, or one object per line (streams)."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return []
    try:
        value = json.loads(text)
        items = value if isinstance(value, list) else [value]
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise RemoteProtocolError(f"IPFS Cluster {url}: unreadable answer ({what})") from None
    if not all(isinstance(i, dict) for i in items):
        raise RemoteProtocolError(f"IPFS Cluster {url}: unexpected answer ({what})")
    return items


def _one(items: list[dict[str, Any]], url: str) -> dict[str, Any]:
    if len(items) != 1:
        raise RemoteProtocolError(f"IPFS Cluster {url}: expected one object, got {len(items)}")
    return items[0]


def _int(entry: Mapping[str, Any] | None, key: str) -> int | None:
    value = (entry or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
