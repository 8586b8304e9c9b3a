"""``casync serve`` and its client: the peer protocol over HTTP.

Endpoints (all require ``Authorization: Bearer <token>``; compared in constant time):

* ``GET  /v1/info``                      -> JSON :class:`PeerInfo`
* ``POST /v1/negotiate`` ``{"haves": [cid...]}`` -> ``{"common": [cid...]}``
* ``POST /v1/fetch``  ``{"wants": [...], "haves": [...]}`` -> zstd-compressed CAR of the
  missing blocks (post-order per commit, commit block last), streamed
* ``POST /v1/push?branch=B&old=CID&new=CID`` with a zstd-compressed CAR body (chunked
  transfer encoding) -> ``{"updated": ...}``; 409 on a non-fast-forward
* ``POST /v1/tags?tags={"NAME":"CID",...}`` with a zstd-compressed CAR of the commits the
  tags need -> the receiver's tag report (``created``, ``unchanged``, ``conflicts``:
  an existing tag is never moved)
* ``POST /v1/blocks`` ``{"cids": [cid...]}`` (at most 1024, any codec) -> zstd-compressed CAR
  of those the peer holds intact (``fsck --repair``)

The server binds to 127.0.0.1 by default.  Bodies are size-limited; malformed
messages get 400 and change nothing.

Requests share one :class:`Repository` behind a lock, but no request holds it while it
waits on the network: a fetch takes the lock per batch of blocks read
(:data:`FETCH_BATCH_BYTES`) and writes each batch to the client without it, and a push
spools its body to disk before taking it.  A site on a slow or stalled link therefore
delays nobody else (and the socket timeout ends a stalled connection).
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import io
import json
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zstandard

from casync.car import CarWriter, iter_car, read_header
from casync.errors import (
    CasyncError,
    CorruptBlock,
    InvalidObject,
    RefConflict,
    RemoteError,
    UsageError,
    WorktreeDirty,
)
from casync.ids import Cid, cid_str, parse_cid
from casync.repo import Repository
from casync.sync.pack import TransferStats
from casync.sync.peer import MAX_HAVES, MAX_WANTS, PeerInfo, PeerService, parse_cid_list, parse_tag_map
from casync.tags import TagUpdate

__all__ = ["HttpPeer", "PeerServer", "serve"]

MAX_JSON_BODY = 1 << 20
MAX_PUSH_BYTES = 64 << 30
_CHUNK = 1 << 16
FETCH_BATCH_BYTES = 1 << 20
PUSH_SPOOL_IN_MEMORY = 8 << 20  # a bigger push body goes to a temporary file in .casync


def _take(blocks: Iterator[tuple[Cid, bytes]], limit: int) -> list[tuple[Cid, bytes]]:
    """The next blocks of ``blocks`` up to about ``limit`` bytes (empty at the end)."""
    batch, size = [], 0
    for item in blocks:
        batch.append(item)
        size += len(item[1])
        if size >= limit:
            break
    return batch


class _ChunkedReader(io.RawIOBase):
    """Decodes an HTTP/1.1 chunked body (http.server does not)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._left = 0
        self._done = False
        self._total = 0
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        if self._left == 0:
            line = self._raw.readline(1024)
            token = line.split(b";")[0].strip()
            if not token or any(c not in b"0123456789abcdefABCDEF" for c in token):
                raise InvalidObject("malformed chunked encoding")
            size = int(token, 16)
            if size == 0:
                while self._raw.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self._done = True
                return 0
            self._left = size
            self._total += size
            if self._total > self._limit:
                raise InvalidObject(f"push body exceeds {self._limit} bytes")
        n = min(len(b), self._left)
        data = self._raw.read(n)
        if not data:
            raise InvalidObject("push body truncated")
        b[: len(data)] = data
        self._left -= len(data)
        if self._left == 0:
            self._raw.readline(8)
        return len(data)


def _content_length(value: str | None, limit: int) -> int:
    """A strict Content-Length: digits only, at most ``limit``."""
    if value is None or not value.strip().isdigit():
        raise InvalidObject("a Content-Length of decimal digits is required")
    length = int(value)
    if length > limit:
        raise InvalidObject(f"request body of {length} bytes exceeds the limit of {limit}")
    return length


class _LimitedReader(io.RawIOBase):
    """Exactly ``length`` bytes of a request body, streamed."""

    def __init__(self, raw: Any, length: int) -> None:
        self._raw = raw
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._left <= 0:
            return 0
        data = self._raw.read(min(len(b), self._left))
        if not data:
            raise InvalidObject("request body truncated")
        b[: len(data)] = data
        self._left -= len(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    server: PeerServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a stalled client may hold its connection (and the repository lock)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, hint: str | None = None) -> None:
        self._send_json(status, {"error": message, **({"hint": hint} if hint else {})})

    def _authorized(self) -> bool:
        """Check the bearer token; a 401 says whether none was sent or it was refused
        (``"reason": "missing"`` / ``"refused"``; RFC 6750's ``error="invalid_token"``)."""
        header = self.headers.get("Authorization", "")
        given = header[len("Bearer "):].strip().encode() if header.startswith("Bearer ") else b""
        if given and hmac.compare_digest(given, self.server.token):
            return True
        challenge = 'Bearer realm="casync"' + ("" if not given else ', error="invalid_token"')
        reply = {"error": "no token sent", "reason": "missing"} if not given else \
            {"error": "the token was refused: it is not this server's", "reason": "refused"}
        body = json.dumps(reply).encode()
        self.send_response(401)
        self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True  # the unread body must not be parsed as the next request
        return False

    def _json_body(self) -> Any:
        length = _content_length(self.headers.get("Content-Length"), MAX_JSON_BODY)
        if length == 0:
            raise InvalidObject("request body must be JSON")
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            raise InvalidObject("request body is not JSON") from None

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path != "/v1/info":
            self._error(404, "unknown endpoint")
            return
        with self.server.lock:
            info = self.server.service.info().to_json()
        self._send_json(200, info)

    def do_POST(self) -> None:
        if not self._authorized():
            return
        url = urllib.parse.urlsplit(self.path)
        try:
            # Each route takes self.server.lock around its repository work only (see the
            # module docstring); a push racing another push sees the branch moved (409).
            self._route(url)
        except RefConflict as exc:
            self._error(409, exc.message)
        except WorktreeDirty as exc:  # the served repository's files have local edits
            self._error(409, exc.message, "commit or discard the uncommitted changes on that replica, then push again")
        except (InvalidObject, CorruptBlock, UsageError) as exc:
            self.close_connection = True
            self._error(400, exc.message)
        except zstandard.ZstdError as exc:
            self.close_connection = True
            self._error(400, f"body is not valid zstd ({exc})")
        except RemoteError as exc:
            self._error(403, exc.message)
        except CasyncError as exc:
            self._error(500, exc.message)

    def _route(self, url: urllib.parse.SplitResult) -> None:
        if url.path == "/v1/negotiate":
            body = self._json_body()
            haves = parse_cid_list(body.get("haves") if isinstance(body, dict) else None, "haves", MAX_HAVES)
            with self.server.lock:
                common = self.server.service.negotiate(haves)
            self._send_json(200, {"common": [cid_str(c) for c in common]})
        elif url.path == "/v1/fetch":
            self._fetch()
        elif url.path == "/v1/blocks":
            body = self._json_body()
            cids = parse_cid_list(body.get("cids") if isinstance(body, dict) else None, "cids", MAX_WANTS,
                                  commits=False)
            with self.server.lock:
                blocks = list(self.server.service.blocks(cids))  # at most 1024 blocks of <= 1 MiB
            self._send_car([], iter(blocks), [])
        elif url.path == "/v1/push":
            self._push(urllib.parse.parse_qs(url.query))
        elif url.path == "/v1/tags":
            self._push_tags(urllib.parse.parse_qs(url.query))
        else:
            self._error(404, "unknown endpoint")

    def _fetch(self) -> None:
        body = self._json_body()
        if not isinstance(body, dict):
            raise InvalidObject("fetch request must be a JSON object")
        wants = parse_cid_list(body.get("wants"), "wants", MAX_WANTS)
        haves = parse_cid_list(body.get("haves", []), "haves", MAX_HAVES)
        with self.server.lock:
            blocks = self.server.service.fetch(wants, haves)
            batch = _take(blocks, FETCH_BATCH_BYTES)  # surfaces errors before the 200 goes out
        self._send_car(wants, blocks, batch, locked=True)

    def _send_car(self, roots: list[Cid], blocks: Iterator[tuple[Cid, bytes]], batch: list[tuple[Cid, bytes]],
                  locked: bool = False) -> None:
        """A 200 with a zstd CAR of ``batch`` then the rest of ``blocks`` (read under the
        lock when ``locked``: they come from the repository)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.ipld.car; version=1")
        self.send_header("Content-Encoding", "zstd")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        compressor = zstandard.ZstdCompressor(level=3).stream_writer(self.wfile, closefd=False)  # type: ignore[arg-type]
        writer = CarWriter(compressor, roots)
        if not locked:
            batch = [*batch, *blocks]
        while batch:
            for cid, block in batch:  # the network part, without the lock
                writer.add(cid, block)
            if not locked:
                break
            with self.server.lock:
                batch = _take(blocks, FETCH_BATCH_BYTES)
        compressor.flush(zstandard.FLUSH_FRAME)

    def _push(self, query: dict[str, list[str]]) -> None:
        try:
            branch = query["branch"][0]
            new = parse_cid(query["new"][0])
            old = parse_cid(query["old"][0]) if query.get("old", [""])[0] else None
        except (KeyError, IndexError):
            raise InvalidObject("push needs branch, new (and old) query parameters") from None
        try:
            self.server.service.check_push(branch, old, new)  # refuse before receiving anything
        except CasyncError:
            self.close_connection = True  # the unread body must not be parsed as a request
            raise
        with self._spooled_body() as spool, self.server.lock:
            stream = zstandard.ZstdDecompressor().stream_reader(spool, closefd=False)
            reader = io.BufferedReader(stream, _CHUNK)
            roots = read_header(reader)
            if roots and roots != [new]:
                raise InvalidObject("push CAR roots do not match the pushed commit")
            stats = self.server.service.push(branch, old, new, iter_car(reader))
        self._send_json(200, {"updated": {branch: cid_str(new)}, **stats.to_json()})

    @contextlib.contextmanager
    def _spooled_body(self) -> Iterator[Any]:
        """The whole request body, received without the lock, in memory or in .casync."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw: Any = _ChunkedReader(self.rfile, MAX_PUSH_BYTES)
        else:
            raw = _LimitedReader(self.rfile, _content_length(self.headers.get("Content-Length"), MAX_PUSH_BYTES))
        with tempfile.SpooledTemporaryFile(PUSH_SPOOL_IN_MEMORY, dir=self.server.spool_dir) as spool:
            while piece := raw.read(_CHUNK):  # the network part, without the lock
                spool.write(piece)
            spool.seek(0)
            yield spool

    def _push_tags(self, query: dict[str, list[str]]) -> None:
        """``POST /v1/tags?tags={"NAME": "CID", ...}`` with a zstd CAR of the commits they need."""
        try:
            tags = parse_tag_map(json.loads(query["tags"][0]))
        except (KeyError, IndexError, ValueError, UsageError) as exc:
            self.close_connection = True
            raise InvalidObject(f"push of tags needs a tags query parameter mapping names to commits ({exc})"
                                ) from None
        try:
            self.server.service.check_push_tags(tags or {})  # refuse before receiving anything
        except CasyncError:
            self.close_connection = True
            raise
        with self._spooled_body() as spool, self.server.lock:
            stream = zstandard.ZstdDecompressor().stream_reader(spool, closefd=False)
            reader = io.BufferedReader(stream, _CHUNK)
            read_header(reader)
            update = self.server.service.push_tags(tags or {}, iter_car(reader))
        self._send_json(200, update.to_json())


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True
    max_connections = 64

    def process_request(self, request: Any, client_address: Any) -> None:
        """At most ``max_connections`` handler threads; beyond that, refuse at once."""
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-response (a broken link, Ctrl-C) is routine on the
        links casync serves: one line when verbose, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            if self.verbose:
                print(f"casync serve: {client_address[0]} went away ({type(exc).__name__})", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def __init__(self, repo: Repository, token: bytes, bind: tuple[str, int], read_only: bool = False,
                 verbose: bool = False) -> None:
        if not token:
            raise UsageError("an empty token is not allowed", hint="put a long random secret in the token file")
        self.service = PeerService(repo, read_only)
        self.token = token
        self.verbose = verbose
        self.lock = threading.Lock()  # one Repository, used by one request at a time
        self.spool_dir = str(repo.store.root)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(bind, _Handler)


def serve(repo: Repository, token: bytes, host: str = "127.0.0.1", port: int = 0, read_only: bool = False,
          verbose: bool = False) -> PeerServer:
    """A started-but-not-serving server (call ``serve_forever``); port 0 picks a free one."""
    return PeerServer(repo, token, (host, port), read_only, verbose)


def _early_reply(conn: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    """The refusal a server sent before it stopped reading an upload, if it sent one."""
    try:
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException):  # it closed without a word
        return None
    return resp if resp.status != 200 else None


class HttpPeer:
    """Client side of :class:`PeerServer`."""

    def __init__(self, url: str, token: str | None, timeout: float = 300.0) -> None:
        try:
            parts = urllib.parse.urlsplit(url)
            _ = parts.port
        except ValueError as exc:
            raise UsageError(f"invalid peer URL {url!r} ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"not an http(s) peer URL: {url!r}")
        self.url = url
        self._parts = parts
        self._token = token
        self._timeout = timeout
        self._keepalive: http.client.HTTPConnection | None = None

    def _conn(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname or "", self._parts.port, timeout=self._timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return {**auth, **(extra or {})}

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                 stream: bool = False, chunked: bool = False, keepalive: bool = False) -> http.client.HTTPResponse:
        """One request; small JSON exchanges reuse one keep-alive connection (retried once
        on a fresh connection if the server closed it), streams get their own."""
        for attempt in (0, 1):
            reuse = keepalive and self._keepalive is not None and attempt == 0
            conn = self._keepalive if reuse and self._keepalive is not None else self._conn()
            try:
                conn.request(method, self._parts.path.rstrip("/") + path, body=body,
                             headers=self._headers(headers), encode_chunked=chunked)
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                if not reuse and isinstance(exc, BrokenPipeError | ConnectionResetError):
                    # the server stopped reading mid-upload: it usually said why before closing
                    early = _early_reply(conn)
                    if early is not None:  # answered below like any other refusal
                        resp = early
                        break
                conn.close()
                self._keepalive = None
                if reuse:
                    continue  # the kept connection went stale: try once on a new one
                raise RemoteError(f"cannot reach {self.url}: {exc}", hint="is 'casync serve' running there?",
                                  transient=True) from None
            except OSError as exc:
                conn.close()
                self._keepalive = None
                raise RemoteError(f"cannot reach {self.url}: {exc}", hint="is 'casync serve' running there?",
                                  transient=True) from None
        if keepalive:
            self._keepalive = conn
        if resp.status != 200:
            detail = resp.read(4096)
            conn.close()
            if conn is self._keepalive:
                self._keepalive = None
            hint: str | None = None
            reply: Any = None
            try:
                reply = json.loads(detail)
                message, hint = str(reply.get("error", "")), reply.get("hint")
            except (ValueError, AttributeError):
                message = detail.decode(errors="replace")[:200]
            if resp.status == 401:
                raise self._unauthorized(reply.get("reason") if isinstance(reply, dict) else None)
            if resp.status == 409:
                raise RefConflict(message, hint=str(hint) if hint else "pull (fetch and merge), then push again")
            raise RemoteError(f"{self.url} answered {resp.status}: {message}", hint=str(hint) if hint else None)
        return resp

    def _unauthorized(self, reason: Any) -> RemoteError:
        """A 401: no token sent, or one the server refused (its reply says which; an older
        server's does not, so what this side sent decides)."""
        if reason == "missing" or (reason != "refused" and not self._token):
            return RemoteError(f"{self.url} needs a token, and none was sent (401)",
                               hint="give the token 'casync serve' there uses: --token-file FILE or "
                                    "CASYNC_TOKEN, or store its file with 'casync remote set-url NAME "
                                    "--token-file FILE'")
        return RemoteError(f"{self.url} refused the token (401): it is not the one 'casync serve' "
                           "there was started with",
                           hint="check which token was sent: --token-file, else CASYNC_TOKEN, else the "
                                "remote's token_file ('casync config remotes'); it must match the server's")

    def _json(self, method: str, path: str, obj: Any = None) -> Any:
        body = json.dumps(obj).encode() if obj is not None else None
        resp = self._request(method, path, body, {"Content-Type": "application/json"} if body else None,
                             keepalive=True)
        try:
            return json.loads(resp.read(MAX_JSON_BODY + 1))
        except ValueError:
            raise RemoteError(f"{self.url} sent a malformed reply") from None

    def info(self) -> PeerInfo:
        return PeerInfo.from_json(self._json("GET", "/v1/info"))

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        reply = self._json("POST", "/v1/negotiate", {"haves": [cid_str(h) for h in haves]})
        try:
            return parse_cid_list(reply.get("common"), "common", MAX_HAVES)
        except (InvalidObject, AttributeError):
            raise RemoteError(f"{self.url} sent a malformed negotiate reply") from None

    def fetch(self, wants: list[Cid], haves: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        body = json.dumps({"wants": [cid_str(w) for w in wants], "haves": [cid_str(h) for h in haves]}).encode()
        yield from self._car("/v1/fetch", body)

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        for at in range(0, len(cids), MAX_WANTS):
            body = json.dumps({"cids": [cid_str(c) for c in cids[at : at + MAX_WANTS]]}).encode()
            yield from self._car("/v1/blocks", body)

    def _car(self, path: str, body: bytes) -> Iterator[tuple[Cid, bytes]]:
        """The blocks of a zstd CAR answer (each hash-checked by the CAR reader)."""
        resp = self._request("POST", path, body, {"Content-Type": "application/json"})
        stream = zstandard.ZstdDecompressor().stream_reader(resp)
        reader = io.BufferedReader(stream, _CHUNK)
        try:
            read_header(reader)
            yield from iter_car(reader)
        except zstandard.ZstdError as exc:
            raise InvalidObject(f"stream from {self.url} is corrupt or truncated ({exc})") from None
        finally:
            resp.close()

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        query = urllib.parse.urlencode({"branch": branch, "new": cid_str(new), "old": cid_str(old) if old else ""})
        resp = self._request("POST", f"/v1/push?{query}", _car_body([new], blocks), _CAR_HEADERS, chunked=True)
        try:
            reply = json.loads(resp.read(MAX_JSON_BODY))
            return TransferStats(blocks=int(reply.get("blocks", 0)), bytes=int(reply.get("bytes", 0)),
                                 new_blocks=int(reply.get("new_blocks", 0)),
                                 new_bytes=int(reply.get("new_bytes", 0)))
        except (ValueError, TypeError, AttributeError):
            raise RemoteError(f"{self.url} accepted the push but sent a malformed reply") from None

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        query = urllib.parse.urlencode({"tags": json.dumps({n: cid_str(c) for n, c in tags.items()})})
        resp = self._request("POST", f"/v1/tags?{query}", _car_body([], blocks), _CAR_HEADERS, chunked=True)
        try:
            return TagUpdate.from_json(self.url, json.loads(resp.read(MAX_JSON_BODY)))
        except (ValueError, TypeError, KeyError, AttributeError, UsageError):
            raise RemoteError(f"{self.url} took the tags but sent a malformed reply") from None

    def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None


_CAR_HEADERS = {"Content-Type": "application/vnd.ipld.car", "Content-Encoding": "zstd"}


def _car_body(roots: list[Cid], blocks: Iterable[tuple[Cid, bytes]]) -> Iterator[bytes]:
    """A zstd-compressed CAR of ``blocks``, in pieces of about :data:`_CHUNK` bytes."""
    buf = io.BytesIO()
    comp = zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False)
    writer = CarWriter(comp, roots)
    for cid, block in blocks:
        writer.add(cid, block)
        if buf.tell() >= _CHUNK:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    comp.flush(zstandard.FLUSH_FRAME)
    if buf.tell():
        yield buf.getvalue()
