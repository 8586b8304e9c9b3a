"""The peer protocol's server side as a WSGI application, :class:`PeerApp` (endpoints:
:mod:`casync.transports.peer.http`); :mod:`casync.transports.peer.server` serves it on waitress.

It answers from a request's headers alone when it refuses it (:meth:`PeerApp.refusal`: the
token and its scope, the push limit, a push the branch cannot take), so the listener can
refuse before the body arrives.  Requests share the repository behind :attr:`PeerApp.lock`;
a fetch takes it per batch of blocks read (:data:`FETCH_BATCH_BYTES`).  A plain WSGI callable:
tests may call it in-process.
"""

from __future__ import annotations

import hmac
import io
import json
import shutil
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zstandard

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
from casync.transports.peer.frames import FRAMES_TYPE, frame_batches
from casync.transports.peer.http import _CHUNK, MAX_JSON_BODY, _car_body
from casync.transports.peer.protocol import MAX_HAVES, MAX_WANTS, parse_cid_list, parse_tag_map
from casync.transports.peer.service import PeerService
from casync.trees.paths import parse_requested_paths

__all__ = ["FETCH_BATCH_BYTES", "MAX_PUSH_BYTES", "PeerApp", "PushTooLarge"]

MAX_PUSH_BYTES = 4 << 30
"""Default bound of one push's body (``casync serve --max-push-bytes``); the free space
bounds it further (:meth:`PeerApp.push_limit`)."""
FREE_SPACE_RESERVE = 64 << 20  # a push never fills the disk to the last byte
FETCH_BATCH_BYTES = 1 << 20
_REPLY_PIECE = 1 << 20
_PUSHES = ("/v1/push", "/v1/tags")
_BODY_ENDPOINTS = {"/v1/negotiate": MAX_JSON_BODY, "/v1/fetch": MAX_JSON_BODY, "/v1/blocks": MAX_JSON_BODY,
                   "/v1/push": 0, "/v1/tags": 0}  # pushes: PeerApp.push_limit()
_CAR_TYPE = "application/vnd.ipld.car; version=1"
_FRAMES_ENV = "HTTP_X_CASYNC_FRAMES"  # the request header FRAMES_HEADER, as WSGI names it
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
                 read_tokens: Iterable[bytes] = (), max_push_bytes: int = MAX_PUSH_BYTES,
                 directory: Callable[[], Any] | None = None) -> None:
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
        self.directory = directory  # GET /v1/peers: the sites this one knows (``casync agent``)

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
        if method == "GET" and path == "/v1/peers" and self.directory is not None:
            return _Reply.json(200, self.directory())
        try:
            framed = environ.get(_FRAMES_ENV, "") == "1"  # the client reads casync-frames/1 replies
            return self._route(method, path, urllib.parse.parse_qs(query), environ["wsgi.input"], length, framed)
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

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any, length: int,
               framed: bool = False) -> _Reply:
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
            return self._fetch(request, framed)
        cids = parse_cid_list(request.get("cids") if isinstance(request, dict) else None, "cids", MAX_WANTS,
                              commits=False)
        with self.lock:
            blocks = list(self.service.blocks(cids))  # at most 1024 blocks of <= 1 MiB
        return _car_reply([], [blocks], framed)

    def _fetch(self, request: Any, framed: bool = False) -> _Reply:
        if not isinstance(request, dict):
            raise InvalidObject("fetch request must be a JSON object")
        wants = parse_cid_list(request.get("wants"), "wants", MAX_WANTS)
        haves = parse_cid_list(request.get("haves", []), "haves", MAX_HAVES)
        paths = parse_requested_paths(request.get("paths", []))
        with self.lock:
            blocks = self.service.fetch(wants, haves, paths)
            first = _take(blocks, FETCH_BATCH_BYTES)  # surfaces errors before the 200 goes out
        return _car_reply(wants, self._locked_batches(blocks, first), framed)

    def _locked_batches(self, blocks: Iterator[tuple[Cid, bytes]],
                        batch: list[tuple[Cid, bytes]]) -> Iterator[list[tuple[Cid, bytes]]]:
        """``batch``, then the rest of ``blocks`` read a batch at a time under the lock;
        between batches (while waitress sends them) the lock is free."""
        while batch:
            yield batch
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


def _car_reply(roots: list[Cid], batches: Iterable[list[tuple[Cid, bytes]]], framed: bool = False) -> _Reply:
    """A 200 with a CAR of the blocks of ``batches``, streamed (waitress closes the
    connection after): framed (:mod:`casync.transports.peer.frames`) for a client that asked,
    else one zstd stream."""
    if framed:
        return _Reply(200, [("Content-Type", FRAMES_TYPE)], frame_batches(roots, batches))
    blocks = (item for batch in batches for item in batch)
    return _Reply(200, [("Content-Type", _CAR_TYPE), ("Content-Encoding", "zstd")],
                  _car_body(roots, blocks, _REPLY_PIECE))  # each piece costs waitress a lock and a wake-up
