"""The IPFS adapter: a Kubo node's HTTP RPC API as a casync block store, plus the few
non-block calls remotes need (pins, MFS files for head records, peers).

This is the only module that imports ``ipfshttpclient``.  Notes on the library (0.7.0,
the latest release):

* ``ipfshttpclient.connect()`` refuses daemons >= 0.8, so :class:`IpfsClient` constructs
  ``ipfshttpclient.Client(addr, ...)`` directly (its docstring allows that; it performs no
  version check) and calls ``version`` itself to fail early with a clear message.
* Parameters newer than the library pass through ``opts={...}`` (``cid-codec``,
  ``mhtype``, ``pin-roots``, ``cid-version``, ``parents``...).  Every RPC call is a POST.
* ``dag/import`` without ``stats=true`` answers with no items, which the library's
  single-item wrapper asserts on; we always ask for stats.
* There is no ``block.rm`` in the library; that one call goes through the client's
  request method.

Errors are classified once, here: connection refused/reset, timeouts, broken responses
and 5xx statuses without a Kubo error body are *transient* and retried with bounded
exponential backoff (:class:`RetryPolicy`); Kubo command errors and 4xx are permanent,
except the errors of a node that is starting or shutting down (:data:`NODE_GOING_AWAY`:
"repo not open"), which a moment later is either back or refusing connections.
Every error names the node's URL.  Every block read from the node is hash-verified.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import random
import secrets
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import ipfshttpclient
from ipfshttpclient import exceptions as ipfs_exc

from casync.car import car_parts, section_size
from casync.errors import BlockNotFound, CasyncError, RemoteError, UsageError
from casync.ids import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec, cid_str, is_empty_block, parse_cid, verify_block
from casync.objects import MAX_BLOCK_SIZE

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "IpfsBlockStore",
    "IpfsClient",
    "RetryPolicy",
]

T = TypeVar("T")

DEFAULT_BATCH_BYTES = 16 << 20
"""Bytes of blocks per ``dag/import`` request."""

_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}

# ipfshttpclient 0.7 passes an argument urllib3 2.x deprecates; the warning is noise.
warnings.filterwarnings("ignore", message=".*'strict' parameter.*", category=FutureWarning)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for transient errors (restic-style).

    ``attempts`` tries in total; the n-th retry waits ``min(initial * factor**n, max_delay)``
    seconds, with up to 20 % random jitter so many clients do not retry in lockstep.
    """

    attempts: int = 5
    initial: float = 0.2
    factor: float = 2.0
    max_delay: float = 4.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay) * (1 + random.random() * 0.2)
            delay *= self.factor


NO_RETRY = RetryPolicy(attempts=1)
DEFAULT_RETRY = RetryPolicy()


def _auth_headers(secret: str) -> dict[str, str]:
    """The Authorization header for a Kubo node with ``API.Authorizations``: the same
    secret its ``AuthSecret`` holds (``bearer:TOKEN`` or ``basic:USER:PASSWORD``), given in
    CASYNC_KUBO_API_AUTH as ipfs/config/configure.sh takes it (a secret never goes in URLs,
    which end up in the config and in messages)."""
    if not secret:
        return {}
    kind, _, value = secret.partition(":")
    if kind == "bearer" and value:
        return {"Authorization": f"Bearer {value}"}
    if kind == "basic" and ":" in value:
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}
    raise UsageError("CASYNC_KUBO_API_AUTH must be bearer:TOKEN or basic:USER:PASSWORD",
                     hint="the same value as the node's API.Authorizations AuthSecret")


def _multiaddr(url: str) -> tuple[str, str]:
    """``http://host:port`` -> (multiaddr for ipfshttpclient, normalised URL)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an IPFS RPC API URL: {url!r}", hint="expected http://HOST:PORT")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 5001)
    except ValueError:
        raise UsageError(f"invalid port in IPFS RPC API URL {url!r}") from None
    host = parts.hostname
    if parts.path not in ("", "/"):
        raise UsageError(f"IPFS RPC API URL {url!r} must not have a path", hint="expected http://HOST:PORT")
    if ":" in host:
        proto = "ip6"
    elif host.replace(".", "").isdigit():
        proto = "ip4"
    else:
        proto = "dns"
    shown_host = f"[{host}]" if proto == "ip6" else host
    return f"/{proto}/{host}/tcp/{port}/{parts.scheme}", f"{parts.scheme}://{shown_host}:{port}"


_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_UNSPECIFIED = ("0.0.0.0", "::")


def gateway_from_multiaddrs(addrs: Any, api_url: str) -> str | None:
    """``http://HOST:PORT`` of a node's gateway from its ``Addresses.Gateway`` setting (one
    multiaddr or a list; the first TCP one counts), or None when it has none.  A gateway on
    every interface is reached through the host of ``api_url``; one on the node's own
    loopback only when the API is reached there too (else it is not reachable from here)."""
    api_host = urllib.parse.urlsplit(api_url).hostname or "127.0.0.1"
    for addr in [addrs] if isinstance(addrs, str) else addrs if isinstance(addrs, list) else []:
        parts = str(addr).strip("/").split("/")
        if len(parts) < 4 or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp":
            continue  # /unix/..., or something this client cannot dial
        host = parts[1]
        if host in _UNSPECIFIED:
            host = api_host
        elif _is_loopback(host) and not _is_loopback(api_host):
            raise RemoteError(f"the gateway of the IPFS node at {api_url} listens on its own loopback "
                              f"({addr}), which is not reachable from here",
                              hint="give a gateway URL that is: casync remote set-url NAME --gateway URL")
        return f"http://{f'[{host}]' if ':' in host else host}:{parts[3]}"
    return None


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _environment_matters(url: str) -> bool:
    """Whether requests' per-request environment lookup could change a request to ``url``:
    a proxy variable or a netrc file is set, or (for https) a CA bundle variable."""
    if urllib.request.getproxies():
        return True
    variables = ("NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if url.startswith("https:") else ("NETRC",)
    if any(os.environ.get(v) for v in variables):
        return True
    home = os.path.expanduser("~")
    return any(os.path.exists(os.path.join(home, n)) for n in (".netrc", "_netrc"))


def _is_not_found(message: str) -> bool:
    m = message.lower()
    return "not found" in m or "could not find" in m or "no such" in m or "does not exist" in m


class IpfsClient:
    """A typed, retrying wrapper over one Kubo node's RPC API at ``url`` (``http://HOST:PORT``).

    Thread-safe: every thread gets its own ``ipfshttpclient.Client`` (each keeps a
    connection pool), all closed by :meth:`close`.
    """

    def __init__(self, url: str, *, timeout: float = 300.0, connect_timeout: float = 10.0,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.addr, self.url = _multiaddr(url)
        self.timeout = (connect_timeout, timeout)
        self.auth_headers = _auth_headers(os.environ.get("CASYNC_KUBO_API_AUTH", ""))
        self.retry = retry
        self._local = threading.local()
        self._clients: list[Any] = []
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # --- plumbing ------------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = ipfshttpclient.Client(self.addr, session=True, timeout=self.timeout,
                                               chunk_size=1 << 20, headers=self.auth_headers)
            except ipfs_exc.AddressError:
                raise UsageError(f"cannot use IPFS RPC API address {self.url}") from None
            session = getattr(getattr(client, "_client", None), "_session", None)
            if session is not None and not _environment_matters(self.url):
                # requests re-reads proxy, netrc and CA-bundle settings from the environment
                # on every request (~0.5 ms each, most of a small block/get); with none set,
                # skipping that lookup changes nothing else.
                session.trust_env = False
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="casync-ipfs")
            return self._pool

    def map(self, fn: Callable[[Cid], T], items: list[Cid]) -> list[T]:
        """``[fn(x) for x in items]`` on a small pool of threads kept for this client's lifetime
        (so their per-thread HTTP sessions are reused)."""
        if len(items) <= 2:
            return [fn(x) for x in items]
        return list(self._executor().map(fn, items))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the client's pool."""
        return self._executor().submit(fn, *args)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            clients, self._clients = self._clients, []
            conns, self._conns = self._conns, []
        for client in clients:
            with contextlib.suppress(Exception):  # a broken pool must not mask the real error
                client.close()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> IpfsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def classify(self, exc: Exception, what: str) -> CasyncError:
        """Turn an ipfshttpclient exception into a RemoteError (transient or not)."""
        where = f"IPFS node at {self.url}"
        if isinstance(exc, ipfs_exc.ConnectionError):
            return RemoteError(f"cannot connect to the {where} ({what}): {_reason(exc)}",
                               hint="is the Kubo daemon running, and is that its RPC API port "
                                    "(see 'casync remote -v')?", transient=True)
        if isinstance(exc, ipfs_exc.TimeoutError):
            return RemoteError(f"the {where} did not answer in time ({what})", transient=True,
                               hint="is it overloaded, or is that not its RPC API port (5001 by default)?")
        if isinstance(exc, ipfs_exc.ProtocolError):
            return RemoteError(f"the connection to the {where} broke ({what}): {_reason(exc)}",
                               transient=True)
        if isinstance(exc, ipfs_exc.ErrorResponse):
            return _command_error(where, what, str(exc))
        if isinstance(exc, ipfs_exc.StatusError):
            status = getattr(getattr(exc.original, "response", None), "status_code", None)
            return _status_error(where, what, status)
        if isinstance(exc, ipfs_exc.DecodingError):
            return RemoteError(f"{where} sent a response casync cannot decode ({what})",
                               hint="is that a Kubo RPC API?")
        return RemoteError(f"{where}: {what} failed: {exc}")

    def call(self, what: str, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``fn(client)``; classify errors; retry transient ones per the policy."""

        def attempt() -> T:
            try:
                return fn(self._client())
            except ipfs_exc.Error as exc:
                raise self.classify(exc, what) from None
            except AssertionError:
                # ipfshttpclient's response-shape assertions: the server is not what we expect
                raise RemoteError(f"IPFS node at {self.url}: unexpected response to {what}",
                                  hint="is that a Kubo RPC API of a supported version (>= 0.15)?") from None

        return self._retrying(attempt, retry)

    def _retrying(self, attempt: Callable[[], T], retry: bool = True) -> T:
        delays = self.retry.delays() if retry else iter(())
        n = 0
        while True:
            n += 1
            try:
                return attempt()
            except RemoteError as err:
                if not err.transient:
                    raise
                delay = next(delays, None)
                if delay is None:
                    if n > 1:
                        err.message += f" (gave up after {n} attempts)"
                    raise
            time.sleep(delay)

    # --- bulk reads over a plain keep-alive connection ------------------------------------------

    def _http(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "http", None)
        if conn is None:
            parts = urllib.parse.urlsplit(self.url)
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout[0])
            self._local.http = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def post_bytes(self, what: str, command: str, params: dict[str, str]) -> bytes:
        """``POST /api/v0/<command>?<params>`` over plain HTTP and return the response body:
        for the one call that moves the bytes of a fetch (``block/get``, once per block).

        ipfshttpclient serves it through requests and its own stream decoder, which costs
        over 1 ms of CPU per block (Kubo sends a block as 4 KiB HTTP chunks, each passed
        through three Python iterators, after requests prepared the request); one plain
        keep-alive ``http.client`` connection per thread costs a third of that and fetches
        1 GiB twice as fast.  Errors are classified as :meth:`classify` does and retried as
        :meth:`call` does.
        """
        target = f"/api/v0/{command}?{urllib.parse.urlencode(params)}"

        def attempt() -> bytes:
            for reused in (True, False):
                conn = self._http()
                fresh = conn.sock is None
                try:
                    if fresh:
                        conn.timeout = self.timeout[0]
                        conn.connect()
                        conn.sock.settimeout(self.timeout[1])
                    conn.request("POST", target, headers=self.auth_headers)
                    resp = conn.getresponse()
                    body = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    if reused and not fresh and isinstance(exc, _STALE_CONNECTION):
                        continue  # the node closed an idle keep-alive connection: reconnect once
                    raise self._raw_error(exc, what) from None
                if resp.status == 200:
                    return body
                raise self._status_error(resp.status, body, what)
            raise AssertionError("unreachable")

        return self._retrying(attempt)

    def _raw_error(self, exc: Exception, what: str) -> RemoteError:
        where = f"IPFS node at {self.url}"
        if isinstance(exc, TimeoutError):
            return RemoteError(f"the {where} did not answer in time ({what})", transient=True,
                               hint="is it overloaded, or is that not its RPC API port (5001 by default)?")
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            return RemoteError(f"cannot connect to the {where} ({what}): {_reason(exc)}",
                               hint="is the Kubo daemon running, and is that its RPC API port "
                                    "(see 'casync remote -v')?", transient=True)
        return RemoteError(f"the connection to the {where} broke ({what}): {_reason(exc)}", transient=True)

    def _status_error(self, status: int, body: bytes, what: str) -> RemoteError:
        """As :meth:`classify` treats ipfshttpclient's ErrorResponse / StatusError."""
        where = f"IPFS node at {self.url}"
        try:
            message = json.loads(body).get("Message")
        except (ValueError, AttributeError, RecursionError):
            message = None
        if isinstance(message, str):
            return _command_error(where, what, message)
        return _status_error(where, what, status)

    # --- node ----------------------------------------------------------------------------------

    def version(self) -> str:
        # a short read timeout: this is the first call, and a port that accepts connections
        # but never answers must fail in seconds, not after the bulk-transfer timeout
        info = self.call("version", lambda c: c.version(timeout=(self.timeout[0], min(self.timeout[1], 10.0))))
        return str(info["Version"])

    def check(self) -> str:
        """Contact the node; return its version or raise a RemoteError naming the URL."""
        version = self.version()
        try:
            numbers = tuple(int(x) for x in version.split("-", 1)[0].split(".")[:2])
        except ValueError:
            numbers = (0, 0)
        if numbers < (0, 15):
            raise RemoteError(f"IPFS node at {self.url} runs Kubo {version}; casync needs >= 0.15 "
                              "(blake3 blocks)")
        return version

    def gateway_url(self) -> str | None:
        """The node's HTTP gateway (``config Addresses.Gateway``) as ``http://HOST:PORT``, or
        None when it has none: for gateway URLs of a remote configured without one."""
        res = self.call("config Addresses.Gateway", lambda c: c.config.set("Addresses.Gateway"))
        return gateway_from_multiaddrs(res.get("Value"), self.url)

    def swarm_peer_count(self) -> int:
        res = self.call("swarm/peers", lambda c: c.swarm.peers())
        return len(res.get("Peers") or [])

    # --- blocks --------------------------------------------------------------------------------

    def block_put(self, data: bytes | memoryview, codec: int, hash_name: str) -> Cid:
        opts = {"cid-codec": _CODEC_NAMES.get(codec, str(codec)), "mhtype": hash_name, "pin": "false"}
        res = self.call("block/put", lambda c: c.block.put(io.BytesIO(bytes(data)), opts=opts))
        return parse_cid(str(res["Key"]))

    def block_get(self, cid: Cid, *, offline: bool = True, wait: float | None = None) -> bytes:
        """The block's bytes as the node sends them (the caller verifies).

        ``offline`` asks only the node's own blockstore (a missing block fails at
        once); otherwise the node may fetch it from peers for up to ``wait`` seconds.
        """
        text = cid_str(cid)
        opts = {} if wait is None or offline else {"timeout": f"{max(wait, 0.001):.3f}s"}
        try:
            if self.url.startswith("http:"):
                params = {"arg": text, **({"offline": "true"} if offline else opts)}
                data = self.post_bytes(f"block/get {text}", "block/get", params)
            else:  # https: requests' certificate handling, not a second TLS setup here
                data = bytes(self.call(f"block/get {text}",
                                       lambda c: c.block.get(text, offline=offline, opts=opts)))
        except RemoteError as err:
            msg = err.message.lower()
            if not err.transient and (_is_not_found(msg) or "deadline exceeded" in msg):
                detail = "" if offline else f" within {wait:g}s" if wait else ""
                raise BlockNotFound(text, f"IPFS node at {self.url}{detail}") from None
            raise
        return data

    def block_size(self, cid: Cid) -> int | None:
        """Size of the block if the node holds it locally, else None."""
        text = cid_str(cid)
        res = self._call_if_exists(f"block/stat {text}", lambda c: c.block.stat(text, offline=True))
        return None if res is None else int(res["Size"])

    def block_rm(self, cid: Cid) -> None:
        text = cid_str(cid)

        def rm(c: Any) -> Any:
            return c._client.request("/block/rm", (text,), decoder="json", opts={"force": "true"})

        self._call_if_exists(f"block/rm {text}", rm)  # gone already is fine

    def dag_import(self, car: bytes | Sequence[bytes | memoryview]) -> tuple[int, int]:
        """Import a CAR (roots not pinned); return (blocks, bytes) the node counted.

        ``car`` is the archive or, to stream it without joining, the pieces whose
        concatenation it is (:func:`casync.car.car_parts`): they go out as one multipart
        body with a Content-Length, each piece handed to the socket as it is.
        """
        body = _MultipartFile([car] if isinstance(car, (bytes, bytearray, memoryview)) else car)
        opts = {"pin-roots": "false", "stats": "true", "allow-big-block": "false"}

        def imprt(c: Any) -> Any:
            return c._client.request("/dag/import", decoder="json", data=body, headers=body.headers, opts=opts)

        res = self.call("dag/import", imprt)
        stats: dict[str, Any] = {}
        for item in res if isinstance(res, list) else [res]:
            if isinstance(item, dict) and item.get("Stats"):
                stats = item["Stats"]
        return int(stats.get("BlockCount", 0)), int(stats.get("BlockBytesCount", 0))

    def refs(self, cid: Cid, recursive: bool = True) -> list[Cid]:
        """CIDs linked from ``cid`` (the whole DAG with ``recursive``), listed by the node
        from its local blocks only."""
        text = cid_str(cid)
        opts = {"recursive": "true" if recursive else "false", "unique": "true"}
        res = self.call(f"refs {text}", lambda c: c.unstable.refs(text, offline=True, opts=opts))
        out = []
        for item in res:
            if item.get("Err"):
                raise RemoteError(f"IPFS node at {self.url}: refs {text}: {item['Err']}")
            out.append(parse_cid(str(item["Ref"])))
        return out

    def refs_local(self) -> list[Cid]:
        res = self.call("refs/local", lambda c: c.unstable.refs.local())
        return [parse_cid(str(item["Ref"])) for item in res if not item.get("Err")]

    # --- pins ----------------------------------------------------------------------------------

    def pin_add(self, cid: Cid) -> None:
        """Pin ``cid`` and everything it links to; fails (does not hang) if a block is missing."""
        text = cid_str(cid)
        self.call(f"pin/add {text}", lambda c: c.pin.add(text, recursive=True, offline=True))

    def pin_update(self, old: Cid, new: Cid, unpin: bool = True) -> None:
        a, b = cid_str(old), cid_str(new)
        self.call(f"pin/update {a} {b}", lambda c: c.pin.update(a, b, unpin=unpin, offline=True))

    def pin_rm(self, cid: Cid) -> None:
        text = cid_str(cid)
        try:
            self.call(f"pin/rm {text}", lambda c: c.pin.rm(text, recursive=True))
        except RemoteError as err:
            if not err.transient and "not pinned" in err.message:
                return
            raise

    def is_pinned(self, cid: Cid) -> bool:
        """True if ``cid`` is pinned recursively (directly, not only as part of another pin)."""
        text = cid_str(cid)
        try:
            res = self.call(f"pin/ls {text}", lambda c: c.pin.ls(text, type="recursive", offline=True))
        except RemoteError as err:
            if not err.transient and ("not pinned" in err.message or _is_not_found(err.message)):
                return False
            raise
        return bool(res.get("Keys"))

    # --- MFS (head records) --------------------------------------------------------------------

    def _call_if_exists(self, what: str, fn: Callable[[Any], T]) -> T | None:
        """:meth:`call`, with None when the node says the path does not exist."""
        try:
            return self.call(what, fn)
        except RemoteError as err:
            if not err.transient and _is_not_found(err.message):
                return None
            raise

    def files_read(self, path: str, limit: int | None = None) -> bytes | None:
        """An MFS file's bytes; with ``limit``, at most ``limit`` + 1 bytes are transferred."""
        opts = {"count": limit + 1} if limit is not None else {}
        data = self._call_if_exists(f"files/read {path}", lambda c: c.files.read(path, opts=opts))
        return None if data is None else bytes(data)

    def files_write(self, path: str, data: bytes, hash_name: str = "sha2-256") -> None:
        """Replace the MFS file ``path`` with ``data`` (parents created; CIDv1, raw leaves)."""
        opts = {"parents": "true", "cid-version": "1", "raw-leaves": "true", "hash": hash_name}
        self.call(f"files/write {path}", lambda c: c.files.write(
            path, io.BytesIO(data), create=True, truncate=True, opts=opts))

    def files_replace(self, path: str, data: bytes) -> None:
        """Make the MFS file ``path`` hold exactly ``data``, as one raw sha2-256 block and in
        one step (``files/cp --force``).  ``files/write --truncate`` instead leaves an empty
        leaf behind on every rewrite: the file's DAG grows with each push, and other nodes
        could not fetch that empty blake3 leaf over bitswap."""
        if len(data) > MAX_BLOCK_SIZE:
            self.files_write(path, data)
            return
        cid = self.block_put(data, RAW, "sha2-256")
        source = f"/ipfs/{cid_str(cid)}"
        self.call(f"files/cp {source} {path}", lambda c: c.files.cp(
            source, path, opts={"force": "true", "parents": "true"}))

    def files_ls(self, path: str) -> list[str] | None:
        """Entry names of the MFS directory ``path`` (None when it does not exist)."""
        res = self._call_if_exists(f"files/ls {path}", lambda c: c.files.ls(path))
        if res is None:
            return None
        return sorted(str(e["Name"]) for e in (res.get("Entries") or []))

    def files_mkdir(self, path: str, hash_name: str = "sha2-256") -> None:
        opts = {"cid-version": "1", "hash": hash_name}
        self.call(f"files/mkdir {path}", lambda c: c.files.mkdir(path, parents=True, opts=opts))

    def files_stat_cid(self, path: str) -> Cid | None:
        res = self._call_if_exists(f"files/stat {path}", lambda c: c.files.stat(path))
        if res is None:
            return None
        return parse_cid(str(res["Hash"]))


class _MultipartFile:
    """A ``multipart/form-data`` body holding one file made of ``parts``, streamed piece by
    piece: it has a length (so requests sends a Content-Length instead of re-framing every
    piece as an HTTP chunk) and can be iterated again when a request is retried.  This is
    the framing ipfshttpclient's ``multipart`` module produces, minus its copies."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        boundary = secrets.token_hex(16)
        self.headers = {"Content-Type": f'multipart/form-data; boundary="{boundary}"'}
        self._parts: list[bytes | memoryview] = [
            (f"--{boundary}\r\n"
             'Content-Disposition: form-data; name="file"; filename="batch.car"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode(),
            *(p for p in parts if len(p)),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
        self._size = sum(len(p) for p in self._parts)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self._parts)


NODE_GOING_AWAY = ("repo not open",)
"""Kubo command errors that mean the node is shutting down (or not yet up), not that the
command is wrong: transient."""


def _command_error(where: str, what: str, message: str) -> RemoteError:
    """A Kubo command error: permanent, unless the node is going away (:data:`NODE_GOING_AWAY`)."""
    going_away = any(m in message for m in NODE_GOING_AWAY)
    return RemoteError(f"{where}: {what} failed: {message}", transient=going_away)


def _status_error(where: str, what: str, status: object) -> RemoteError:
    """An HTTP error status from the node: 5xx is transient (retried), the rest permanent."""
    if isinstance(status, int) and status >= 500:
        return RemoteError(f"{where} answered HTTP {status} ({what})", transient=True)
    hint = None
    if status == 404:
        hint = "is that the RPC API port? (the gateway port does not serve /api/v0)"
    elif status in (401, 403):
        hint = ("the node requires RPC authorization (API.Authorizations): set CASYNC_KUBO_API_AUTH to its "
                "AuthSecret (bearer:TOKEN or basic:USER:PASSWORD)" if not os.environ.get("CASYNC_KUBO_API_AUTH")
                else "the node refused CASYNC_KUBO_API_AUTH: check it against the node's API.Authorizations")
    return RemoteError(f"{where} answered HTTP {status} ({what})", hint=hint)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Connection aborted", "Name or service not known",
                   "No route to host", "timed out", "Remote end closed"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text if len(text) < 200 else text[:200] + "..."


class IpfsBlockStore:
    """A :class:`~casync.store.base.BlockStore` on a Kubo node.

    ``put`` stages blocks; they are uploaded as CAR v1 batches through ``dag/import`` when
    the staged bytes reach ``batch_bytes`` and at :meth:`flush` (so "durable at flush"
    holds as for the local store).  Uploaded blocks are not pinned: whoever publishes a
    ref to them pins its root (see :mod:`casync.remote`).  ``get`` hash-verifies every
    block and names the CID on a mismatch.

    ``iter_cids`` lists Kubo's blockstore, which is keyed by multihash: every CID comes
    back with the raw codec.  ``delete`` unpins the block (if pinned itself) and removes it.
    """

    def __init__(self, client: IpfsClient, *, batch_bytes: int = DEFAULT_BATCH_BYTES,
                 offline: bool = True, wait: float = 60.0, check_remote_on_put: bool = True,
                 on_batch: Callable[[int, int], None] | None = None, upload_concurrency: int = 3) -> None:
        self.client = client
        self.batch_bytes = batch_bytes
        self.offline = offline
        self.wait = wait
        self.check_remote_on_put = check_remote_on_put
        self.on_batch = on_batch
        self.upload_concurrency = upload_concurrency
        self._pending: dict[Cid, bytes] = {}
        self._pending_bytes = 0
        self._in_flight: list[tuple[Future[None], dict[Cid, bytes]]] = []
        self._in_flight_blocks: dict[Cid, bytes] = {}
        self._lock = threading.RLock()
        self.sent_blocks = 0
        self.sent_bytes = 0
        self.batches = 0

    @property
    def where(self) -> str:
        return f"IPFS node at {self.client.url}"

    # --- writing -------------------------------------------------------------------------------

    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        with self._lock:
            if cid in self._pending or cid in self._in_flight_blocks:
                return False
        if self.check_remote_on_put and self.client.block_size(cid) is not None:
            return False
        self.stage(cid, data)
        return True

    def stage(self, cid: Cid, data: bytes | memoryview) -> None:
        """Queue a block for upload without asking the node whether it has it."""
        if len(data) > MAX_BLOCK_SIZE:
            raise RemoteError(f"block {cid_str(cid)} is {len(data)} bytes; the limit is {MAX_BLOCK_SIZE}")
        with self._lock:
            if cid in self._pending or cid in self._in_flight_blocks:
                return
            self._pending[cid] = bytes(data)
            self._pending_bytes += section_size(cid, data)
            full = self._pending_bytes >= self.batch_bytes
        if full:
            self._upload()

    def _upload(self) -> None:
        """Send the staged blocks as one CAR in the background, streamed from the blocks
        themselves (no archive is assembled in memory); at most ``upload_concurrency``
        requests are in flight, so reading the next batch overlaps the node importing the
        last ones, and memory stays within ``(upload_concurrency + 1) * batch_bytes``."""
        with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            self._pending_bytes = 0
            self._in_flight_blocks.update(batch)
        fut = self.client.submit(self._import, car_parts((), batch.items()), batch)
        self._in_flight.append((fut, batch))
        while len(self._in_flight) >= max(1, self.upload_concurrency):
            self._finish_one()

    def _import(self, car: list[bytes | memoryview], batch: dict[Cid, bytes]) -> None:
        try:
            self.client.dag_import(car)
        except RemoteError as err:
            # dag/import decodes every block; bytes that are not valid for their codec are
            # still valid blocks, which block/put stores as they are.
            if err.transient or "import failed at block" not in err.message:
                raise
            for cid, data in batch.items():
                got = self.client.block_put(data, cid_codec(cid), _hash_name(cid))
                if got != cid:
                    raise RemoteError(f"{self.where} stored block {cid_str(cid)} as {cid_str(got)}") from None

    def _finish_one(self) -> None:
        """Wait for the first request in flight to end (any of them, so one slow import does
        not hold the pipeline back) and account for it."""
        futures.wait([f for f, _ in self._in_flight], return_when=futures.FIRST_COMPLETED)
        i = next(i for i, (f, _) in enumerate(self._in_flight) if f.done())
        fut, batch = self._in_flight.pop(i)
        try:
            fut.result()
        except BaseException:
            self._drain()  # no request may outlive the failure
            raise
        finally:
            with self._lock:
                for cid in batch:
                    self._in_flight_blocks.pop(cid, None)
        payload = sum(len(d) for d in batch.values())
        self.sent_blocks += len(batch)
        self.sent_bytes += payload
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(batch), payload)

    def _drain(self) -> None:
        """Wait for every request in flight and forget its outcome (after an error)."""
        in_flight, self._in_flight = self._in_flight, []
        for fut, _batch in in_flight:
            with contextlib.suppress(BaseException):
                fut.result()
        with self._lock:
            self._in_flight_blocks.clear()

    def flush(self) -> None:
        self._upload()
        while self._in_flight:
            self._finish_one()

    def discard(self) -> None:
        self._drain()
        with self._lock:
            self._pending.clear()
            self._pending_bytes = 0

    def delete(self, cid: Cid) -> None:
        with self._lock:
            if self._pending.pop(cid, None) is not None:
                return
        if self.client.is_pinned(cid):
            self.client.pin_rm(cid)
        self.client.block_rm(cid)

    # --- reading -------------------------------------------------------------------------------

    def get(self, cid: Cid) -> bytes:
        with self._lock:
            data = self._pending.get(cid, self._in_flight_blocks.get(cid))
        if data is not None:
            return data
        if is_empty_block(cid):  # made here: bitswap would never deliver it (docs/remotes.md)
            return b""
        data = self.client.block_get(cid, offline=self.offline, wait=self.wait)
        if len(data) > MAX_BLOCK_SIZE:
            raise RemoteError(f"block {cid_str(cid)} from the {self.where} is {len(data)} bytes, "
                              f"over the {MAX_BLOCK_SIZE}-byte limit")
        verify_block(cid, data, self.where)
        return data

    def has(self, cid: Cid) -> bool:
        with self._lock:
            if cid in self._pending or cid in self._in_flight_blocks:
                return True
        return self.client.block_size(cid) is not None

    def has_many(self, cids: Iterable[Cid]) -> set[Cid]:
        todo = list(dict.fromkeys(cids))
        with self._lock:
            present = {c for c in todo if c in self._pending or c in self._in_flight_blocks}
        ask = [c for c in todo if c not in present]
        sizes = self.client.map(self.client.block_size, ask)
        return present | {c for c, s in zip(ask, sizes, strict=True) if s is not None}

    def iter_cids(self) -> Iterator[Cid]:
        with self._lock:
            pending = list(self._pending)
        yield from self.client.refs_local()
        yield from pending

    def close(self) -> None:
        self.discard()
        self.client.close()


def _hash_name(cid: Cid) -> str:
    """The multihash function of a CID, by the name Kubo's ``mhtype`` takes."""
    from multiformats import CID

    return str(CID.decode(cid).hashfun.name)
