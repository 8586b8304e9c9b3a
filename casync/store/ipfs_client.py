"""Kubo's HTTP RPC API as typed calls: the only module that imports ``ipfshttpclient``.

Control calls (pins, MFS, ``dag/import``, ``block/put``) go through ipfshttpclient 0.7.0,
the latest release; the call that moves a fetch's bytes (``block/get``) goes over one
plain keep-alive ``http.client`` connection per thread (:meth:`IpfsClient.post_bytes`).
Every call is classified by :mod:`casync.store.ipfs_errors` and retried by
:mod:`casync.store.retry`.

Workarounds for the library, all here and nowhere else:

* ``ipfshttpclient.connect()`` refuses daemons >= 0.8, so :func:`_new_client` constructs
  ``ipfshttpclient.Client(addr, ...)`` directly (its docstring allows that; it performs no
  version check), and :meth:`IpfsClient.check` asks ``version`` itself to fail early.
* requests re-reads proxy, netrc and CA-bundle settings on every request (~0.5 ms, most of
  a small call); with none of them set, :func:`_new_client` turns that off on the
  library's private ``_client._session`` (absent in another version: then left alone).
* Parameters newer than the library pass through ``opts={...}`` (``cid-codec``,
  ``mhtype``, ``pin-roots``, ``cid-version``, ``parents``...); every RPC call is a POST.
  Calls the library lacks (``block/rm``) or wraps badly (``dag/import`` with our own
  streamed multipart body) go through its private ``_client.request`` (:func:`_raw_call`).
* ``dag/import`` without ``stats=true`` answers with no items, which the library's
  single-item wrapper asserts on; we always ask for stats, and :meth:`IpfsClient.call`
  turns any of its response-shape ``AssertionError`` into a RemoteError.
* ipfshttpclient passes urllib3 2.x a deprecated ``strict`` argument; the FutureWarning it
  raises is noise, filtered once below, process-wide (``warnings.catch_warnings`` around
  each call is not thread-safe, and calls run on a thread pool).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import ipfshttpclient
from ipfshttpclient import exceptions as ipfs_exc

from casync.errors import (
    BlockNotFound,
    CasyncError,
    RemoteError,
    RemoteNotFound,
    RemoteProtocolError,
    RemoteTimeout,
    RemoteUnreachable,
    UsageError,
)
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_str, parse_cid
from casync.model.objects import MAX_BLOCK_SIZE
from casync.store.ipfs_auth import auth_headers, environment_matters
from casync.store.ipfs_errors import (
    body_error,
    command_error,
    raw_error,
    reason,
    status_error,
)
from casync.store.ipfs_multipart import MultipartFile
from casync.store.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, retrying

__all__ = ["IpfsClient", "gateway_from_multiaddrs"]

T = TypeVar("T")

_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}

warnings.filterwarnings("ignore", message=".*'strict' parameter.*", category=FutureWarning)


def _new_client(addr: str, url: str, timeout: tuple[float, float], headers: dict[str, str]) -> Any:
    """An ``ipfshttpclient.Client`` without the library's version check (see above)."""
    try:
        client = ipfshttpclient.Client(addr, session=True, timeout=timeout, chunk_size=1 << 20, headers=headers)
    except ipfs_exc.AddressError:
        raise UsageError(f"cannot use IPFS RPC API address {url}") from None
    session = getattr(getattr(client, "_client", None), "_session", None)
    if session is not None and not environment_matters(url):
        session.trust_env = False
    return client


def _raw_call(c: Any, path: str, *args: Any, **kwargs: Any) -> Any:
    """A call the library has no (usable) method for, through its private request method."""
    return c._client.request(path, args, decoder="json", **kwargs)


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


class IpfsClient:
    """A typed, retrying wrapper over one Kubo node's RPC API at ``url`` (``http://HOST:PORT``).

    Thread-safe: every thread gets its own ``ipfshttpclient.Client`` (each keeps a
    connection pool), all closed by :meth:`close`.
    """

    def __init__(self, url: str, *, timeout: float = 300.0, connect_timeout: float = 10.0,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.addr, self.url = _multiaddr(url)
        self.timeout = (connect_timeout, timeout)
        self.auth_headers = auth_headers(os.environ.get("CASYNC_KUBO_API_AUTH", ""))
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
            client = _new_client(self.addr, self.url, self.timeout, self.auth_headers)
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
            return RemoteUnreachable(f"cannot connect to the {where} ({what}): {reason(exc)}",
                                     hint="is the Kubo daemon running, and is that its RPC API port "
                                          "(see 'casync remote -v')?")
        if isinstance(exc, ipfs_exc.TimeoutError):
            return RemoteTimeout(f"the {where} did not answer in time ({what})",
                                 hint="is it overloaded, or is that not its RPC API port (5001 by default)?")
        if isinstance(exc, ipfs_exc.ProtocolError):
            return RemoteUnreachable(f"the connection to the {where} broke ({what}): {reason(exc)}")
        if isinstance(exc, ipfs_exc.ErrorResponse):
            return command_error(where, what, str(exc))
        if isinstance(exc, ipfs_exc.StatusError):
            status = getattr(getattr(exc.original, "response", None), "status_code", None)
            return status_error(where, what, status)
        if isinstance(exc, ipfs_exc.DecodingError):
            # a reply cut short by a failing link decodes as garbage too: worth another try
            # (a server that is not Kubo answers the same garbage again, and then it fails)
            return RemoteProtocolError(f"{where} sent a response casync cannot decode ({what})",
                                       hint="is that a Kubo RPC API?", transient=True)
        return RemoteError(f"{where}: {what} failed: {exc}")

    def call(self, what: str, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``fn(client)``; classify errors; retry transient ones per the policy."""

        def attempt() -> T:
            try:
                return fn(self._client())
            except ipfs_exc.Error as exc:
                raise self.classify(exc, what) from None
            except OSError as exc:
                # a reply cut short that ipfshttpclient did not wrap (requests' "Connection
                # broken: IncompleteRead" is an OSError): the link, so transient
                raise raw_error(f"IPFS node at {self.url}", exc, what) from None
            except AssertionError:
                # ipfshttpclient's response-shape assertions: the server is not what we expect
                # (or a reply cut short on the way: transient, like a decoding error)
                raise RemoteProtocolError(f"IPFS node at {self.url}: unexpected response to {what}",
                                          hint="is that a Kubo RPC API of a supported version (>= 0.15)?",
                                          transient=True) from None

        return self._retrying(attempt, retry)

    def _retrying(self, attempt: Callable[[], T], retry: bool = True) -> T:
        return retrying(attempt, self.retry if retry else NO_RETRY)

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
                    if not resp.chunked and resp.length is None:
                        # Kubo frames every reply (chunked, or a length): none left means the
                        # link cut the header short, and http.client took the end of the
                        # stream for the header's end and the body's (an empty block)
                        raise http.client.IncompleteRead(resp.read())
                    body = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    if reused and not fresh and isinstance(exc, _STALE_CONNECTION):
                        continue  # the node closed an idle keep-alive connection: reconnect once
                    raise raw_error(f"IPFS node at {self.url}", exc, what) from None
                if resp.status == 200:
                    return body
                raise body_error(f"IPFS node at {self.url}", resp.status, body, what)
            raise AssertionError("unreachable")

        return self._retrying(attempt)

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
        except RemoteNotFound:
            detail = "" if offline else f" within {wait:g}s" if wait else ""
            raise BlockNotFound(text, f"IPFS node at {self.url}{detail}") from None
        return data

    def block_size(self, cid: Cid) -> int | None:
        """Size of the block if the node holds it locally, else None."""
        text = cid_str(cid)
        res = self._call_if_exists(f"block/stat {text}", lambda c: c.block.stat(text, offline=True))
        return None if res is None else int(res["Size"])

    def block_rm(self, cid: Cid) -> None:
        text = cid_str(cid)

        def rm(c: Any) -> Any:
            return _raw_call(c, "/block/rm", text, opts={"force": "true"})

        self._call_if_exists(f"block/rm {text}", rm)  # gone already is fine

    def dag_import(self, car: bytes | Sequence[bytes | memoryview]) -> tuple[int, int]:
        """Import a CAR (roots not pinned); return (blocks, bytes) the node counted.

        ``car`` is the archive or, to stream it without joining, the pieces whose
        concatenation it is (:func:`casync.model.car.car_parts`): they go out as one multipart
        body with a Content-Length, each piece handed to the socket as it is.
        """
        body = MultipartFile([car] if isinstance(car, (bytes, bytearray, memoryview)) else car)
        opts = {"pin-roots": "false", "stats": "true", "allow-big-block": "false"}

        def imprt(c: Any) -> Any:
            return _raw_call(c, "/dag/import", data=body, headers=body.headers, opts=opts)

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

    def pin_add(self, cid: Cid, name: str | None = None) -> None:
        """Pin ``cid`` and everything it links to, under ``name`` if given (Kubo pin names, so
        an operator can tell casync's pins from others); fails (does not hang) if a block is missing."""
        text = cid_str(cid)
        opts = {"name": name} if name else {}
        self.call(f"pin/add {text}", lambda c: c.pin.add(text, recursive=True, offline=True, opts=opts))

    def pin_rm(self, cid: Cid) -> None:
        text = cid_str(cid)
        try:
            self.call(f"pin/rm {text}", lambda c: c.pin.rm(text, recursive=True))
        except RemoteError as err:
            if isinstance(err, RemoteNotFound):
                return
            raise

    def is_pinned(self, cid: Cid, kind: str = "recursive") -> bool:
        """True if ``cid`` is pinned itself (not only as part of another pin): recursively,
        or with ``kind="direct"`` by a direct pin."""
        text = cid_str(cid)
        try:
            res = self.call(f"pin/ls {text}", lambda c: c.pin.ls(text, type=kind, offline=True))
        except RemoteNotFound:
            return False
        return bool(res.get("Keys"))

    def pin_add_many(self, cids: Sequence[Cid], recursive: bool, name: str | None = None) -> None:
        """Pin many CIDs, a few hundred per call: recursively, or each block by itself
        (``recursive=False``, a direct pin), all under ``name`` if given; fails (does not
        hang) if a block is missing."""
        texts = [cid_str(c) for c in cids]
        opts = {"name": name} if name else {}
        def add(part: list[str]) -> Callable[[Any], Any]:
            return lambda c: c.pin.add(*part, recursive=recursive, offline=True, opts=dict(opts))

        for i in range(0, len(texts), 256):
            part = texts[i:i + 256]
            self.call(f"pin/add ({len(part)} CIDs)", add(part))

    def recursive_pins(self) -> set[Cid]:
        """Every CID the node pins recursively."""
        res = self.call("pin/ls --type=recursive", lambda c: c.pin.ls(type="recursive", offline=True))
        return {parse_cid(str(k)) for k in (res.get("Keys") or {})}

    def pin_name_of(self, cid: Cid) -> str:
        """The name of ``cid``'s own recursive pin ("" when unnamed or not pinned itself)."""
        text = cid_str(cid)
        try:
            res = self.call(f"pin/ls --names {text}", lambda c: c.pin.ls(
                text, type="recursive", offline=True, opts={"names": "true"}))
        except RemoteNotFound:
            return ""
        return next((str((i or {}).get("Name") or "") for i in (res.get("Keys") or {}).values()), "")

    def named_pins(self, prefix: str) -> list[tuple[str, Cid, str]]:
        """(name, CID, type) of every recursive or direct pin whose name starts with
        ``prefix``, sorted (indirect pins carry no name, and listing them walks every DAG)."""
        def ls(kind: str) -> Callable[[Any], Any]:
            return lambda c: c.pin.ls(type=kind, offline=True, opts={"names": "true"})

        out = []
        for kind in ("recursive", "direct"):
            res = self.call(f"pin/ls --names --type={kind}", ls(kind))
            for key, info in (res.get("Keys") or {}).items():
                name = str((info or {}).get("Name") or "")
                if name.startswith(prefix):
                    out.append((name, parse_cid(str(key)), kind))
        return sorted(out, key=lambda t: (t[0], cid_str(t[1])))

    # --- MFS (head records) --------------------------------------------------------------------

    def _call_if_exists(self, what: str, fn: Callable[[Any], T]) -> T | None:
        """:meth:`call`, with None when the node says the path does not exist."""
        try:
            return self.call(what, fn)
        except RemoteNotFound:
            return None

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
