"""``casync serve``: the server side of the peer protocol (endpoints: :mod:`casync.transports.peer.http`),
as a WSGI application (:class:`PeerApp`) served by waitress (:class:`PeerServer`).

waitress receives every request body completely (in memory, then in a temporary file)
before a worker thread sees it, and buffers replies on its own event loop, so no worker
and no repository lock waits on a slow link.  A fetch takes the lock per batch of blocks
read (:data:`FETCH_BATCH_BYTES`) and hands each batch to waitress without it.

What waitress cannot do is added at its seams.  In :class:`_Gate`: a request that will be
refused (no or a wrong token, a read token that pushes, a push the branch cannot take, a
body over its limit) is answered from its headers alone, without receiving the body, on a
connection that is then closed (the unread body must not be parsed as the next request);
and a chunked push is cut off, with ``413``, as soon as it passes the push limit (the
smaller of ``max_push_bytes`` and the free space, announced in ``/v1/info``), so it is
never spooled beyond it.  In :class:`_Channel` (no one client can starve the others): a
request's whole header must arrive within :data:`HEADER_TIMEOUT` of its first byte (of the
connection, for the first request), however slowly it trickles; one client address holds
at most :attr:`PeerServer.max_per_client` connections; and at
:attr:`PeerServer.max_connections` a new connection evicts the oldest one still waiting for
its header, and gets ``503`` only when every connection is busy with a request.

:class:`PeerApp` is a plain WSGI callable: tests may call it in-process.
"""

from __future__ import annotations

import hmac
import io
import json
import shutil
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import zstandard
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import WSGITask

from casync.errors import (
    CasyncError,
    CorruptBlock,
    InvalidObject,
    LimitExceeded,
    RefConflict,
    RemoteError,
    StateRefused,
    UsageError,
    WorktreeDirty,
)
from casync.model import safejson
from casync.model.car import iter_car, read_header
from casync.model.cid import Cid, cid_str, parse_cid
from casync.repo.repository import Repository
from casync.repo.tags import TagUpdate
from casync.transports.peer.exchange import MAX_HAVES, MAX_WANTS, PeerService, parse_cid_list, parse_tag_map
from casync.transports.peer.http import _CHUNK, MAX_JSON_BODY, _car_body

__all__ = ["HEADER_TIMEOUT", "MAX_PUSH_BYTES", "PeerApp", "PeerServer", "PushTooLarge", "serve"]

MAX_PUSH_BYTES = 4 << 30
"""Default bound of one push's body (``casync serve --max-push-bytes``); the free space
bounds it further (:meth:`PeerApp.push_limit`)."""
FREE_SPACE_RESERVE = 64 << 20  # a push never fills the disk to the last byte
HEADER_TIMEOUT = 10.0
"""Seconds a request's header may take, from its first byte (a slowloris trickles it)."""
FETCH_BATCH_BYTES = 1 << 20
_REPLY_PIECE = 1 << 20
BUFFER_IN_MEMORY = 8 << 20
IDLE_TIMEOUT = 60  # seconds  # a bigger request body or reply backlog goes to a temporary file
_PUSHES = ("/v1/push", "/v1/tags")
_BODY_ENDPOINTS = {"/v1/negotiate": MAX_JSON_BODY, "/v1/fetch": MAX_JSON_BODY, "/v1/blocks": MAX_JSON_BODY,
                   "/v1/push": 0, "/v1/tags": 0}  # pushes: PeerApp.push_limit()
_CAR_TYPE = "application/vnd.ipld.car; version=1"
_REFUSED = "casync.refused"  # environ key: _Gate's refusal (None: none) decided before the body
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 413: "Content Too Large", 500: "Internal Server Error"}


def _take(blocks: Iterator[tuple[Cid, bytes]], limit: int) -> list[tuple[Cid, bytes]]:
    """The next blocks of ``blocks`` up to about ``limit`` bytes (empty at the end)."""
    batch, size = [], 0
    for item in blocks:
        batch.append(item)
        size += len(item[1])
        if size >= limit:
            break
    return batch


class _Reply:
    """A status, headers and body pieces, as a WSGI application returns them."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: Iterable[bytes]) -> None:
        self.status, self.headers, self.body = status, headers, body

    @classmethod
    def json(cls, status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> _Reply:
        body = json.dumps(obj).encode()
        return cls(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *(headers or [])], [body])

    @classmethod
    def error(cls, status: int, message: str, hint: str | None = None) -> _Reply:
        return cls.json(status, {"error": message, **({"hint": hint} if hint else {})})


def _push_args(query: dict[str, list[str]]) -> tuple[str, Cid | None, Cid]:
    try:
        branch = query["branch"][0]
        new = parse_cid(query["new"][0])
        old = parse_cid(query["old"][0]) if query.get("old", [""])[0] else None
    except (KeyError, IndexError):
        raise InvalidObject("push needs branch, new (and old) query parameters") from None
    return branch, old, new


def _tag_args(query: dict[str, list[str]]) -> dict[str, Cid]:
    try:
        return parse_tag_map(safejson.loads(query["tags"][0], "tags")) or {}
    except (KeyError, IndexError, ValueError, UsageError, InvalidObject) as exc:
        raise InvalidObject(f"push of tags needs a tags query parameter mapping names to commits ({exc})"
                            ) from None


class PeerApp:
    """The peer protocol as a WSGI application over one :class:`Repository`.

    Requests share the repository behind :attr:`lock`; each takes it around its
    repository work only.  A push racing another push sees the branch moved (409)."""

    def __init__(self, repo: Repository, token: bytes, read_only: bool = False, verbose: bool = False, *,
                 read_tokens: Iterable[bytes] = (), max_push_bytes: int = MAX_PUSH_BYTES) -> None:
        self.read_tokens = tuple(read_tokens)
        if not token or not all(self.read_tokens):
            raise UsageError("an empty token is not allowed", hint="put a long random secret in the token file")
        if token in self.read_tokens:
            raise UsageError("the write token is also given as a read token",
                             hint="give sites that only pull a different secret")
        self.service = PeerService(repo, read_only)
        self.token = token
        self.verbose = verbose
        self.max_push_bytes = max_push_bytes
        self.lock = threading.Lock()  # one Repository, used by one request at a time

    def push_limit(self) -> int:
        """The most bytes one push's body may hold now: ``max_push_bytes``, and no more
        than the repository's file system has free (less a reserve)."""
        free = shutil.disk_usage(self.service.repo.root).free - FREE_SPACE_RESERVE
        return max(0, min(self.max_push_bytes, free))

    # --- WSGI -----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        reply = self._reply(environ)
        if self.verbose:
            print(f"casync serve: {environ.get('REMOTE_ADDR', '-')} {environ['REQUEST_METHOD']} "
                  f"{environ.get('PATH_INFO', '')} {reply.status}", file=sys.stderr)
        start_response(f"{reply.status} {_REASONS.get(reply.status, '')}", reply.headers)
        return reply.body

    def refusal(self, method: str, path: str, query: str, authorization: str, length: int | None) -> _Reply | None:
        """The reply to a request that is refused on its headers alone (before its body)."""
        scope, refused = self._scope(authorization)
        if refused is not None or method != "POST":
            return refused
        if path in _PUSHES and scope != "write":
            return _Reply.error(403, "this token may only read (info, fetch, clone, pull): pushing needs the "
                                     "server's write token", "ask for the write token, or push from a site that has it")
        try:
            limit = self.body_limit(path)
            if limit is not None and length is not None and length > limit:
                return _Reply.error(413, f"request body of {length} bytes exceeds the limit of {limit}",
                                    "the server announces its push limit in /v1/info (max_push_bytes)"
                                    if path in _PUSHES else None)
            if path == "/v1/push":
                self.service.check_push(*_push_args(urllib.parse.parse_qs(query)))
            elif path == "/v1/tags":
                self.service.check_push_tags(_tag_args(urllib.parse.parse_qs(query)))
        except (CasyncError, zstandard.ZstdError) as exc:
            return self._error_reply(exc)
        return None

    def body_limit(self, path: str) -> int | None:
        """The largest body ``POST path`` may carry (None: an unknown endpoint)."""
        if path in _PUSHES:
            return self.push_limit()
        return _BODY_ENDPOINTS.get(path)

    def _reply(self, environ: dict[str, Any]) -> _Reply:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        try:
            length = safejson.content_length(environ.get("CONTENT_LENGTH"))
        except InvalidObject as exc:
            return _Reply.error(400, exc.message)
        early: _Reply | None
        if _REFUSED in environ:  # waitress's _Gate asked refusal() already, on the headers
            early = environ[_REFUSED]
        else:
            early = self.refusal(method, path, query, environ.get("HTTP_AUTHORIZATION", ""), length)
        if early is not None:
            return early
        if method == "GET" and path == "/v1/info":  # says what the token sent may do
            scope = self._scope(environ.get("HTTP_AUTHORIZATION", ""))[0]
            with self.lock:
                info = self.service.info().to_json()
            if scope == "read":
                info["read_only"] = True
            return _Reply.json(200, {**info, "scope": scope, "max_push_bytes": self.push_limit()})
        try:
            return self._route(method, path, urllib.parse.parse_qs(query), environ["wsgi.input"], length)
        except (CasyncError, zstandard.ZstdError) as exc:
            return self._error_reply(exc)

    @staticmethod
    def _error_reply(exc: Exception) -> _Reply:
        if isinstance(exc, zstandard.ZstdError):
            return _Reply.error(400, f"body is not valid zstd ({exc})")
        assert isinstance(exc, CasyncError)
        if isinstance(exc, RefConflict):
            return _Reply.error(409, exc.message)
        if isinstance(exc, WorktreeDirty):  # the served repository's files have local edits
            return _Reply.error(409, exc.message,
                                "commit or discard the uncommitted changes on that replica, then push again")
        if isinstance(exc, StateRefused):  # e.g. a merge stopped there
            return _Reply.error(409, exc.message, exc.hint)
        if isinstance(exc, PushTooLarge):
            return _Reply.error(413, exc.message, exc.hint)
        if isinstance(exc, (InvalidObject, CorruptBlock, UsageError)):
            return _Reply.error(400, exc.message)
        if isinstance(exc, RemoteError):
            return _Reply.error(403, exc.message)
        return _Reply.error(500, exc.message)

    def _scope(self, header: str) -> tuple[str | None, _Reply | None]:
        """The bearer token's scope, ``"write"`` or ``"read"`` (compared in constant time, with
        every token), or the 401: it says whether none was sent or it was refused
        (``"reason": "missing"`` / ``"refused"``; RFC 6750's ``invalid_token``)."""
        given = header[len("Bearer "):].strip().encode() if header.startswith("Bearer ") else b""
        if given:
            writes = hmac.compare_digest(given, self.token)
            reads = [hmac.compare_digest(given, t) for t in self.read_tokens]
            if writes:
                return "write", None
            if any(reads):
                return "read", None
        challenge = 'Bearer realm="casync"' + ("" if not given else ', error="invalid_token"')
        reply = {"error": "no token sent", "reason": "missing"} if not given else \
            {"error": "the token was refused: it is not this server's", "reason": "refused"}
        return None, _Reply.json(401, reply, [("WWW-Authenticate", challenge)])

    # --- endpoints ------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any, length: int) -> _Reply:
        if method != "POST" or path not in _BODY_ENDPOINTS:
            return _Reply.error(404, "unknown endpoint")
        if path == "/v1/push":
            return self._push(query, body)
        if path == "/v1/tags":
            return self._push_tags(query, body)
        request = _json_body(body, length)
        if path == "/v1/negotiate":
            haves = parse_cid_list(request.get("haves") if isinstance(request, dict) else None, "haves", MAX_HAVES)
            with self.lock:
                common = self.service.negotiate(haves)
            return _Reply.json(200, {"common": [cid_str(c) for c in common]})
        if path == "/v1/fetch":
            return self._fetch(request)
        cids = parse_cid_list(request.get("cids") if isinstance(request, dict) else None, "cids", MAX_WANTS,
                              commits=False)
        with self.lock:
            blocks = list(self.service.blocks(cids))  # at most 1024 blocks of <= 1 MiB
        return _car_reply([], blocks)

    def _fetch(self, request: Any) -> _Reply:
        if not isinstance(request, dict):
            raise InvalidObject("fetch request must be a JSON object")
        wants = parse_cid_list(request.get("wants"), "wants", MAX_WANTS)
        haves = parse_cid_list(request.get("haves", []), "haves", MAX_HAVES)
        with self.lock:
            blocks = self.service.fetch(wants, haves)
            first = _take(blocks, FETCH_BATCH_BYTES)  # surfaces errors before the 200 goes out
        return _car_reply(wants, self._locked_batches(blocks, first))

    def _locked_batches(self, blocks: Iterator[tuple[Cid, bytes]],
                        batch: list[tuple[Cid, bytes]]) -> Iterator[tuple[Cid, bytes]]:
        """``batch``, then the rest of ``blocks`` read a batch at a time under the lock;
        between batches (while waitress sends them) the lock is free."""
        while batch:
            yield from batch
            with self.lock:
                batch = _take(blocks, FETCH_BATCH_BYTES)

    def _push(self, query: dict[str, list[str]], body: Any) -> _Reply:
        branch, old, new = _push_args(query)  # refusal() ran check_push before the body came
        with self.lock:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(body, closefd=False), _CHUNK)
            roots = read_header(reader)
            if roots and roots != [new]:
                raise InvalidObject("push CAR roots do not match the pushed commit")
            stats = self.service.push(branch, old, new, _bounded(iter_car(reader), self.push_limit()))
        return _Reply.json(200, {"updated": {branch: cid_str(new)}, **stats.to_json()})

    def _push_tags(self, query: dict[str, list[str]], body: Any) -> _Reply:
        """``POST /v1/tags?tags={"NAME": "CID", ...}`` with a zstd CAR of the commits they need."""
        tags = _tag_args(query)  # refusal() ran check_push_tags before the body came
        with self.lock:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(body, closefd=False), _CHUNK)
            read_header(reader)
            update: TagUpdate = self.service.push_tags(tags, _bounded(iter_car(reader), self.push_limit()))
        return _Reply.json(200, update.to_json())


class PushTooLarge(LimitExceeded):
    """A push's blocks add up to more than the server's push limit (answered 413)."""


def _bounded(blocks: Iterator[tuple[Cid, bytes]], limit: int) -> Iterator[tuple[Cid, bytes]]:
    """``blocks`` until they add up to more than ``limit`` bytes: a small zstd body can
    decompress to far more than it weighs, and the limit is on what is stored."""
    total = 0
    for cid, block in blocks:
        total += len(block)
        if total > limit:
            raise PushTooLarge(f"push holds more than {limit} bytes of blocks (at {cid_str(cid)}); the branch "
                                "was not moved", hint="the server announces its push limit in /v1/info")
        yield cid, block


def _json_body(body: Any, length: int) -> Any:
    if length == 0:
        raise InvalidObject("request body must be JSON")
    return safejson.loads(body.read(length), "request body")


def _car_reply(roots: list[Cid], blocks: Iterable[tuple[Cid, bytes]]) -> _Reply:
    """A 200 with a zstd CAR of ``blocks``, streamed (waitress closes the connection after)."""
    return _Reply(200, [("Content-Type", _CAR_TYPE), ("Content-Encoding", "zstd")],
                  _car_body(roots, blocks, _REPLY_PIECE))  # each piece costs waitress a lock and a wake-up


# --- waitress -----------------------------------------------------------------------------------


class _Gate(HTTPRequestParser):
    """waitress's request parser, asking :meth:`PeerApp.refusal` once the headers are in:
    a refused request is completed without its body, and its connection closed after
    the reply (waitress then discards what the client still sends)."""

    app: PeerApp
    refused: _Reply | None = None
    body_limit: int | None = None  # the most body bytes this request may send (a chunked push)

    def received(self, data: bytes) -> int:
        consumed = int(super().received(data))
        body = self.body_rcv
        if self.body_limit is not None and body is not None and len(body) > self.body_limit:
            self._refuse(_Reply.error(413, f"push body exceeds the limit of {self.body_limit} bytes",
                                      "the server announces its push limit in /v1/info (max_push_bytes)"))
            self.completed = True  # waitress stops spooling it; the connection closes after the reply
            return len(data)
        return consumed

    def _refuse(self, reply: _Reply) -> None:
        self.refused = reply
        self.body_rcv = None  # the parser completes the request at once
        self.chunked, self.content_length, self.expect_continue = False, 0, False
        headers = cast(dict[str, str], self.headers)
        headers["CONTENT_LENGTH"] = "0"
        headers["CONNECTION"], self.connection_close = "close", True

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        command: str | bytes = self.command  # a str at run time (the stubs say bytes)
        method = command.decode("latin-1") if isinstance(command, bytes) else command
        path, query = getattr(self, "path", ""), getattr(self, "query", "")  # set by parse_header
        headers = cast(dict[str, str], self.headers)
        length = None if self.chunked else self.content_length
        refused = self.app.refusal(method, path, query, headers.get("AUTHORIZATION", ""), length)
        if refused is None:
            if self.chunked and path in _PUSHES:
                self.body_limit = self.app.push_limit()
            return
        self._refuse(refused)


class _Task(WSGITask):
    """A reply without a Content-Length (a streamed CAR) is delimited by closing the
    connection, as the peer protocol specifies, not chunked (waitress's HTTP/1.1 default):
    a link cut mid-reply is then a truncated CAR, which the CAR reader reports."""

    def get_environment(self) -> Any:
        environ = super().get_environment()
        environ[_REFUSED] = getattr(self.request, "refused", None)  # _Gate's answer on the headers
        return environ

    def build_response_header(self) -> bytes:
        header = super().build_response_header()
        if self.chunked_response and self.close_on_finish:
            self.chunked_response = False
            header = header.replace(b"\r\nTransfer-Encoding: chunked", b"")
        return header


def _client(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


class _Channel(HTTPChannel):
    """One connection, with the limits that keep one client from starving the others
    (see the module docstring): its header deadline, its client's share, and eviction
    of the oldest connection still waiting for a header when the server is full."""

    limit = 64
    per_client = 16
    header_timeout = HEADER_TIMEOUT
    task_class = _Task
    header_since: float | None  # when the header now arriving began (None: between requests)

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        self.header_since = self.creation_time
        # waitress hands send() at most SO_SNDBUF bytes, read once (16 KiB before Linux's
        # autotuning grows the buffer): bigger calls send a fetch faster, and the kernel
        # still takes only what fits
        self.sendbuf_len = max(self.sendbuf_len, _REPLY_PIECE)
        others = [c for c in server.active_channels.values() if c is not self and not c.will_close]
        mine = sum(1 for c in others if _client(c.addr) == _client(addr))
        if mine >= self.per_client:
            self._busy(b"too many connections from your address")
        elif len(others) >= self.limit:
            waiting = [c for c in others if isinstance(c, _Channel) and c.waiting_for_header()]
            if waiting:  # a slow header loses its place to a new client, not the reverse
                min(waiting, key=lambda c: c.header_since or 0.0).handle_close()
            else:
                self._busy(b"server busy")

    def _busy(self, why: bytes) -> None:
        self.write_soon(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: " + str(len(why)).encode()
                        + b"\r\nConnection: close\r\n\r\n" + why)
        self.close_when_flushed = True  # closed once the reply is sent; its requests are never read

    def waiting_for_header(self) -> bool:
        """Whether this connection is in the middle of (or has yet to start) its first
        request's header, or of a later request's, with nothing of it being served."""
        return self.header_since is not None and not self.requests and not self.close_when_flushed

    def received(self, data: bytes) -> bool:
        if self.header_since is None and self.request is None:
            self.header_since = time.time()  # a kept-alive connection starts its next request
        done = bool(super().received(data))
        request = self.request
        if request is None or request.headers_finished:
            self.header_since = None
        return done

    def header_overdue(self, now: float) -> bool:
        return self.waiting_for_header() and (self.header_since or now) < now - self.header_timeout


class PeerServer:
    """``casync serve`` on waitress: :meth:`serve_forever` runs it, :meth:`shutdown` (from
    another thread) stops it, as with :mod:`socketserver` servers."""

    max_connections = 64
    max_per_client = 16

    def __init__(self, repo: Repository, token: bytes, bind: tuple[str, int], read_only: bool = False,
                 verbose: bool = False, idle_timeout: float = IDLE_TIMEOUT, *, read_tokens: Iterable[bytes] = (),
                 max_push_bytes: int = MAX_PUSH_BYTES, header_timeout: float = HEADER_TIMEOUT) -> None:
        self.app = PeerApp(repo, token, read_only, verbose, read_tokens=read_tokens, max_push_bytes=max_push_bytes)
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.service = self.app.service
        listener = socket.create_server(bind)  # the address as given (port 0: a free one); errors here
        gate = type("Gate", (_Gate,), {"app": self.app})
        channel = type("Channel", (_Channel,), {"parser_class": gate, "limit": self.max_connections,
                                                "per_client": self.max_per_client, "header_timeout": header_timeout})
        self._server = cast(Any, create_server(
            self.app, sockets=[listener], threads=8, ident="casync",
            connection_limit=self.max_connections + 16,  # past max_connections: evict or 503 (see _Channel)
            channel_timeout=idle_timeout, cleanup_interval=1,  # header deadlines are checked every second
            # waitress's own bound, a backstop: _Gate refuses (in JSON) at the push limit first
            max_request_body_size=2 * max(max_push_bytes, MAX_JSON_BODY) + 1, clear_untrusted_proxy_headers=True,
            inbuf_overflow=BUFFER_IN_MEMORY, outbuf_overflow=BUFFER_IN_MEMORY,
            outbuf_high_watermark=BUFFER_IN_MEMORY // 2))  # a reply backlog stays in memory, never on disk
        self._server.channel_class = channel
        self._idle_cleanup = self._server.maintenance
        self._server.maintenance = self._maintenance
        self.server_address: tuple[str, int] = listener.getsockname()[:2]
        self._stopped = threading.Event()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._server.active_channels)

    def _maintenance(self, now: float) -> None:
        """waitress closes connections idle for ``channel_timeout``, but never one with a
        request in progress; a client that stopped reading its fetch would then hold a
        worker thread for good.  A reply that has not moved for as long is closed too."""
        self._idle_cleanup(now)
        for channel in list(self._server.active_channels.values()):
            if isinstance(channel, _Channel) and channel.header_overdue(now):
                channel.will_close = True  # a header that trickles in is still late as a whole (closed by
                continue  # the event loop once it is done with this round's file descriptors)
            if channel.requests and channel.total_outbufs_len and channel.last_activity < now - self.idle_timeout:
                channel.handle_close()  # (a full socket is never writable: will_close would wait) the
                # worker waiting to write wakes up and ends with ClientDisconnected

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C); ``poll_interval`` is accepted for
        :mod:`socketserver` compatibility (waitress wakes up at once)."""
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned: the worker threads
        finish first (their last replies still flow), then the connections close."""
        if self._closed or self._stopped.is_set():
            return
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        self._server.trigger.pull_trigger(self._close_channels)
        self._stopped.wait(10)

    def _close_channels(self) -> None:
        """Close every connection and the listener; the event loop, left with nothing to
        watch, returns.  The trigger is closed last, in :meth:`server_close`: closing it
        here could let a late ``pull_trigger`` write to a reused file descriptor."""
        trigger = self._server.trigger
        for dispatcher in list(self._server._map.values()):
            if dispatcher is self._server:
                wasyncore.dispatcher.close(dispatcher)  # the listener (its close() closes the trigger)
            elif dispatcher is not trigger:
                dispatcher.close()
        trigger.del_channel()

    def server_close(self) -> None:
        """Close the listening socket, the connections and the worker threads."""
        if self._closed:
            return
        self._closed = True
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        if self._server._map:  # never served, or stopped by Ctrl-C (waitress returns then)
            self._close_channels()
        self._server.trigger.close()


def serve(repo: Repository, token: bytes, host: str = "127.0.0.1", port: int = 0, read_only: bool = False,
          verbose: bool = False, idle_timeout: float = IDLE_TIMEOUT, *, read_tokens: Iterable[bytes] = (),
          max_push_bytes: int = MAX_PUSH_BYTES, header_timeout: float = HEADER_TIMEOUT) -> PeerServer:
    """A bound server, not yet serving (call ``serve_forever``); port 0 picks a free one.
    A connection whose client sends or reads nothing for ``idle_timeout`` seconds is closed,
    one whose request header takes longer than ``header_timeout`` too; ``read_tokens`` may
    fetch but not push; a push's body holds at most ``max_push_bytes`` (and the free space)."""
    return PeerServer(repo, token, (host, port), read_only, verbose, idle_timeout, read_tokens=read_tokens,
                      max_push_bytes=max_push_bytes, header_timeout=header_timeout)
