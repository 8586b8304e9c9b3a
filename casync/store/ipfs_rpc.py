"""Kubo's HTTP RPC API, the plumbing: the only module that imports ``ipfshttpclient``.

Connections (one ``ipfshttpclient.Client`` and one plain keep-alive ``http.client``
connection per thread), the thread pool, error classification
(:mod:`casync.store.ipfs_errors`) and retries (:mod:`casync.store.retry`), under the
typed calls of :mod:`casync.store.ipfs_client`, which subclasses :class:`KuboRpc`.  Apart
so that what the library needs worked around is in one place, and the calls read as calls.

Workarounds for the library, all here and nowhere else:

* ``ipfshttpclient.connect()`` refuses daemons >= 0.8, so :func:`_new_client` constructs
  ``ipfshttpclient.Client(addr, ...)`` directly (its docstring allows that; it performs no
  version check), and :meth:`casync.store.ipfs_client.IpfsClient.check` asks ``version``
  itself to fail early.
* requests re-reads proxy, netrc and CA-bundle settings on every request (~0.5 ms, most of
  a small call); with none of them set, :func:`_new_client` turns that off on the
  library's private ``_client._session`` (absent in another version: then left alone).
* Calls the library lacks (``block/rm``) or wraps badly (``dag/import`` with our own
  streamed multipart body) go through its private ``_client.request`` (:func:`raw_call`).
* The library's response-shape ``AssertionError`` (``dag/import`` without ``stats=true``
  answers with no items, which its single-item wrapper asserts on) becomes a RemoteError
  in :meth:`KuboRpc.call`.
* ipfshttpclient passes urllib3 2.x a deprecated ``strict`` argument; the FutureWarning it
  raises is noise, filtered once below, process-wide (``warnings.catch_warnings`` around
  each call is not thread-safe, and calls run on a thread pool).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import urllib.parse
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self, TypeVar

import ipfshttpclient
from ipfshttpclient import exceptions as ipfs_exc

from casync.errors import (
    CasyncError,
    RemoteError,
    RemoteNotFound,
    RemoteProtocolError,
    RemoteTimeout,
    RemoteUnreachable,
    UsageError,
)
from casync.model.cid import Cid
from casync.store.ipfs_auth import auth_headers, environment_matters
from casync.store.ipfs_errors import (
    body_error,
    command_error,
    raw_error,
    reason,
    status_error,
)
from casync.store.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, retrying

__all__ = ["KuboRpc", "raw_call"]

T = TypeVar("T")

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


def raw_call(c: Any, path: str, *args: Any, **kwargs: Any) -> Any:
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


class KuboRpc:
    """One Kubo node's RPC API at ``url`` (``http://HOST:PORT``): connections, errors, retries.

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

    def __enter__(self) -> Self:
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

    def _call_if_exists(self, what: str, fn: Callable[[Any], T]) -> T | None:
        """:meth:`call`, with None when the node says the path does not exist."""
        try:
            return self.call(what, fn)
        except RemoteNotFound:
            return None
