"""``casync serve``: the peer protocol's WSGI application (:class:`PeerApp`, in
:mod:`casync.transports.peer.app`) served by waitress (:class:`PeerServer`).

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

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import WSGITask

from casync.repo.repository import Repository
from casync.transports.peer.app import _PUSHES, _REFUSED, _REPLY_PIECE, MAX_PUSH_BYTES, PeerApp, PushTooLarge, _Reply
from casync.transports.peer.http import MAX_JSON_BODY

__all__ = ["HEADER_TIMEOUT", "MAX_PUSH_BYTES", "PeerApp", "PeerServer", "PushTooLarge", "serve"]

HEADER_TIMEOUT = 10.0
"""Seconds a request's header may take, from its first byte (a slowloris trickles it)."""
BUFFER_IN_MEMORY = 8 << 20
IDLE_TIMEOUT = 60  # seconds  # a bigger request body or reply backlog goes to a temporary file


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
                 max_push_bytes: int = MAX_PUSH_BYTES, header_timeout: float = HEADER_TIMEOUT,
                 directory: Callable[[], Any] | None = None) -> None:
        self.app = PeerApp(repo, token, read_only, verbose, read_tokens=read_tokens, max_push_bytes=max_push_bytes,
                           directory=directory)
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
          max_push_bytes: int = MAX_PUSH_BYTES, header_timeout: float = HEADER_TIMEOUT,
          directory: Callable[[], Any] | None = None) -> PeerServer:
    """A bound server, not yet serving (call ``serve_forever``); port 0 picks a free one.
    A connection whose client sends or reads nothing for ``idle_timeout`` seconds is closed,
    one whose request header takes longer than ``header_timeout`` too; ``read_tokens`` may
    fetch but not push; a push's body holds at most ``max_push_bytes`` (and the free space);
    ``directory`` answers ``GET /v1/peers`` (the agent's gossip; without it: 404)."""
    return PeerServer(repo, token, (host, port), read_only, verbose, idle_timeout, read_tokens=read_tokens,
                      max_push_bytes=max_push_bytes, header_timeout=header_timeout, directory=directory)
