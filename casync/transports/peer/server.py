"""``casync serve``: the server side of the peer protocol (endpoints: :mod:`casync.transports.peer.http`),
as a WSGI application (:class:`PeerApp`) served by waitress (:class:`PeerServer`).

waitress receives every request body completely (in memory, then in a temporary file)
before a worker thread sees it, and buffers replies on its own event loop, so no worker
and no repository lock waits on a slow link.  A fetch takes the lock per batch of blocks
read (:data:`FETCH_BATCH_BYTES`) and hands each batch to waitress without it.

Two things waitress cannot do are added at its seams, in :class:`_Gate`: a request that
will be refused (no or a wrong token, a push the branch cannot take, a body over its limit)
is answered from its headers alone, without receiving the body, on a connection that is
then closed (the unread body must not be parsed as the next request); and beyond
:attr:`PeerServer.max_connections` open connections a new one gets ``503`` at once.

:class:`PeerApp` is a plain WSGI callable: tests may call it in-process.
"""

from __future__ import annotations

import hmac
import io
import json
import socket
import sys
import threading
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

__all__ = ["MAX_PUSH_BYTES", "PeerApp", "PeerServer", "serve"]

MAX_PUSH_BYTES = 64 << 30
FETCH_BATCH_BYTES = 1 << 20
_REPLY_PIECE = 1 << 20
BUFFER_IN_MEMORY = 8 << 20
IDLE_TIMEOUT = 60  # seconds  # a bigger request body or reply backlog goes to a temporary file
_BODY_ENDPOINTS = {"/v1/negotiate": MAX_JSON_BODY, "/v1/fetch": MAX_JSON_BODY, "/v1/blocks": MAX_JSON_BODY,
                   "/v1/push": MAX_PUSH_BYTES, "/v1/tags": MAX_PUSH_BYTES}
_CAR_TYPE = "application/vnd.ipld.car; version=1"
_REFUSED = "casync.refused"  # environ key: _Gate's refusal (None: none) decided before the body
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 500: "Internal Server Error"}


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

    def __init__(self, repo: Repository, token: bytes, read_only: bool = False, verbose: bool = False) -> None:
        if not token:
            raise UsageError("an empty token is not allowed", hint="put a long random secret in the token file")
        self.service = PeerService(repo, read_only)
        self.token = token
        self.verbose = verbose
        self.lock = threading.Lock()  # one Repository, used by one request at a time

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
        refused = self._unauthorized(authorization)
        if refused is not None or method != "POST":
            return refused
        try:
            limit = _BODY_ENDPOINTS.get(path)
            if limit is not None and length is not None and length > limit:
                raise InvalidObject(f"request body of {length} bytes exceeds the limit of {limit}")
            if path == "/v1/push":
                self.service.check_push(*_push_args(urllib.parse.parse_qs(query)))
            elif path == "/v1/tags":
                self.service.check_push_tags(_tag_args(urllib.parse.parse_qs(query)))
        except (CasyncError, zstandard.ZstdError) as exc:
            return self._error_reply(exc)
        return None

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
        if isinstance(exc, (InvalidObject, CorruptBlock, UsageError)):
            return _Reply.error(400, exc.message)
        if isinstance(exc, RemoteError):
            return _Reply.error(403, exc.message)
        return _Reply.error(500, exc.message)

    def _unauthorized(self, header: str) -> _Reply | None:
        """Check the bearer token (in constant time); a 401 says whether none was sent or it
        was refused (``"reason": "missing"`` / ``"refused"``; RFC 6750's ``invalid_token``)."""
        given = header[len("Bearer "):].strip().encode() if header.startswith("Bearer ") else b""
        if given and hmac.compare_digest(given, self.token):
            return None
        challenge = 'Bearer realm="casync"' + ("" if not given else ', error="invalid_token"')
        reply = {"error": "no token sent", "reason": "missing"} if not given else \
            {"error": "the token was refused: it is not this server's", "reason": "refused"}
        return _Reply.json(401, reply, [("WWW-Authenticate", challenge)])

    # --- endpoints ------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any, length: int) -> _Reply:
        if method == "GET" and path == "/v1/info":
            with self.lock:
                return _Reply.json(200, self.service.info().to_json())
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
            stats = self.service.push(branch, old, new, iter_car(reader))
        return _Reply.json(200, {"updated": {branch: cid_str(new)}, **stats.to_json()})

    def _push_tags(self, query: dict[str, list[str]], body: Any) -> _Reply:
        """``POST /v1/tags?tags={"NAME": "CID", ...}`` with a zstd CAR of the commits they need."""
        tags = _tag_args(query)  # refusal() ran check_push_tags before the body came
        with self.lock:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(body, closefd=False), _CHUNK)
            read_header(reader)
            update: TagUpdate = self.service.push_tags(tags, iter_car(reader))
        return _Reply.json(200, update.to_json())


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

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        command: str | bytes = self.command  # a str at run time (the stubs say bytes)
        method = command.decode("latin-1") if isinstance(command, bytes) else command
        path, query = getattr(self, "path", ""), getattr(self, "query", "")  # set by parse_header
        headers = cast(dict[str, str], self.headers)
        length = None if self.chunked else self.content_length
        self.refused = self.app.refusal(method, path, query, headers.get("AUTHORIZATION", ""), length)
        if self.refused is None:
            return
        self.body_rcv = None  # the parser completes the request at once
        self.chunked, self.content_length, self.expect_continue = False, 0, False
        headers["CONTENT_LENGTH"] = "0"
        headers["CONNECTION"], self.connection_close = "close", True


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


class _Channel(HTTPChannel):
    """One connection; beyond the server's limit it is answered ``503`` and closed."""

    limit = 64
    task_class = _Task

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        # waitress hands send() at most SO_SNDBUF bytes, read once (16 KiB before Linux's
        # autotuning grows the buffer): bigger calls send a fetch faster, and the kernel
        # still takes only what fits
        self.sendbuf_len = max(self.sendbuf_len, _REPLY_PIECE)
        if len(server.active_channels) > self.limit:
            self.write_soon(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.close_when_flushed = True  # closed once the reply is sent; its requests are never read


class PeerServer:
    """``casync serve`` on waitress: :meth:`serve_forever` runs it, :meth:`shutdown` (from
    another thread) stops it, as with :mod:`socketserver` servers."""

    max_connections = 64

    def __init__(self, repo: Repository, token: bytes, bind: tuple[str, int], read_only: bool = False,
                 verbose: bool = False, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.app = PeerApp(repo, token, read_only, verbose)
        self.idle_timeout = idle_timeout
        self.service = self.app.service
        listener = socket.create_server(bind)  # the address as given (port 0: a free one); errors here
        gate = type("Gate", (_Gate,), {"app": self.app})
        channel = type("Channel", (_Channel,), {"parser_class": gate, "limit": self.max_connections})
        self._server = cast(Any, create_server(
            self.app, sockets=[listener], threads=8, ident="casync",
            connection_limit=self.max_connections + 16,  # past max_connections: 503 (see _Channel)
            channel_timeout=idle_timeout, cleanup_interval=min(30.0, idle_timeout),  # a stalled client's time
            max_request_body_size=MAX_PUSH_BYTES + 1, clear_untrusted_proxy_headers=True,
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
          verbose: bool = False, idle_timeout: float = IDLE_TIMEOUT) -> PeerServer:
    """A bound server, not yet serving (call ``serve_forever``); port 0 picks a free one.
    A connection whose client sends or reads nothing for ``idle_timeout`` seconds is closed."""
    return PeerServer(repo, token, (host, port), read_only, verbose, idle_timeout)
