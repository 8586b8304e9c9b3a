"""etcd's v3 API through its JSON gateway: the only module in casync that talks to etcd.

Chosen by measurement (docs/design.md, "Strong branches"): the ``etcd3`` package fails at
import with current protobuf; ``etcd3gw`` and ``aetcd`` work against etcd 3.6 but add a
dependency for three calls; the gateway (``POST /v3/kv/range`` and ``/v3/kv/txn``, keys
and values base64, 64-bit integers as decimal strings) needs nothing but ``http.client``,
as casync's raw Kubo calls do.  etcd serves the gateway on its client port by default.

Every call has one deadline (``timeout`` seconds) across all endpoints: a member that
refuses the connection, times out or answers 503 (no leader: an election is running, or
the member is cut off from the majority) is retried on the next endpoint after a short
backoff until the deadline; then :class:`EtcdUnavailable` says none answered.  Ranges are
linearizable (etcd's default, ``serializable`` false): a read sees every write acknowledged
before it started.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from casync.errors import RemoteProtocolError, StrongUnavailable

__all__ = ["EtcdClient", "EtcdUnavailable", "KeyValue", "TxnResult"]

_BACKOFF_S = (0.05, 0.1, 0.2, 0.3, 0.5)


class EtcdUnavailable(StrongUnavailable):
    """No etcd member answered with a majority behind it before the deadline."""


@dataclass(frozen=True)
class KeyValue:
    """One key's value and its ``mod_revision`` (0: the key does not exist)."""

    value: bytes | None
    mod_revision: int


@dataclass(frozen=True)
class TxnResult:
    """A compare-and-swap's outcome; on failure, the key as it is now."""

    succeeded: bool
    current: KeyValue
    revision: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _endpoint(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"etcd endpoint {url!r} must be http://HOST:PORT")
    return parts.hostname, parts.port or 2379


def _kv(kvs: Any) -> KeyValue:
    if not kvs:
        return KeyValue(None, 0)
    kv = kvs[0]
    return KeyValue(base64.b64decode(kv.get("value", "")), int(kv.get("mod_revision", "0")))


class EtcdClient:
    """A client of one etcd cluster (its members' client URLs, ``http://HOST:PORT``);
    thread-safe."""

    def __init__(self, endpoints: list[str], *, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self._addrs = [_endpoint(u) for u in endpoints]
        self.timeout = timeout
        self._preferred = 0  # the endpoint that answered last
        self._local = threading.local()  # one connection per thread (a served repository has many)
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every thread's connection (each reconnects on its next call)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _drop(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    # --- the calls casync needs -----------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue:
        """The key's value and ``mod_revision``, by a linearizable range read."""
        reply = self._call("/v3/kv/range", {"key": _b64(key)})
        return _kv(reply.get("kvs"))

    def compare_and_swap(self, key: bytes, mod_revision: int, value: bytes | None) -> TxnResult:
        """Put ``value`` (``None``: delete) if the key's ``mod_revision`` is still the given
        one (0: the key must not exist), in one transaction; else read it back."""
        change = ({"request_delete_range": {"key": _b64(key)}} if value is None
                  else {"request_put": {"key": _b64(key), "value": _b64(value)}})
        body = {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [change],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        reply = self._call("/v3/kv/txn", body)
        revision = int(reply.get("header", {}).get("revision", "0"))
        if reply.get("succeeded"):
            return TxnResult(True, KeyValue(value, revision if value is not None else 0), revision)
        responses = reply.get("responses") or [{}]
        return TxnResult(False, _kv(responses[0].get("response_range", {}).get("kvs")), revision)

    def status(self, endpoint: int) -> dict[str, Any]:
        """One member's ``/v3/maintenance/status`` (its id, the leader's id, the raft term)."""
        reply: dict[str, Any] = self._once(self._addrs[endpoint], "/v3/maintenance/status", {}, self.timeout)
        return reply

    # --- transport ------------------------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        errors: dict[str, str] = {}
        attempt = 0
        while True:
            for i in range(len(self._addrs)):
                index = (self._preferred + i) % len(self._addrs)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:  # a member waiting for a leader holds a request for seconds: leave time for the others
                    reply = self._once(self._addrs[index], path, body, min(left, max(self.timeout / 3, 0.5)))
                except (OSError, http.client.HTTPException, _Unavailable) as exc:
                    self._drop()
                    errors[self.endpoints[index]] = str(exc) or type(exc).__name__
                    continue
                self._preferred = index
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                seen = "; ".join(f"{url}: {why}" for url, why in errors.items())
                raise EtcdUnavailable(f"no etcd member with a majority behind it answered within "
                                      f"{self.timeout:g} s ({seen or 'no attempt'})")
            time.sleep(min(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)], left))
            attempt += 1

    def _once(self, addr: tuple[str, int], path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or (conn.host, conn.port) != addr:
            self._drop()
            conn = self._local.conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
            with self._lock:
                self._conns.append(conn)
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        data = json.dumps(body).encode()
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        except TimeoutError as exc:
            raise _Unavailable(f"no answer in {timeout:.1f} s") from exc
        if resp.status == 503 or resp.status >= 500:
            raise _Unavailable(f"HTTP {resp.status}: {_message(raw)}")
        if resp.status != 200:
            raise RemoteProtocolError(f"etcd at {addr[0]}:{addr[1]} answered {path} with HTTP {resp.status}: "
                                      f"{_message(raw)}")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise RemoteProtocolError(f"etcd at {addr[0]}:{addr[1]} answered {path} with no JSON") from exc
        if not isinstance(reply, dict):
            raise RemoteProtocolError(f"etcd at {addr[0]}:{addr[1]} answered {path} with {type(reply).__name__}")
        return reply


class _Unavailable(Exception):
    """This member cannot serve the request now (no leader, timeout): try another."""


def _message(raw: bytes) -> str:
    try:
        reply = json.loads(raw)
        return str(reply.get("message") or reply.get("error") or raw[:200])
    except (ValueError, AttributeError):
        return raw[:200].decode("utf-8", "replace")
