"""The peer protocol over HTTP, and its client (the server, ``casync serve``, is
:mod:`casync.transports.peer.server`).

Endpoints (all require ``Authorization: Bearer <token>``; compared in constant time):

* ``GET  /v1/info``                      -> JSON :class:`PeerInfo`
* ``POST /v1/negotiate`` ``{"haves": [cid...]}`` -> ``{"common": [cid...]}``
* ``POST /v1/fetch``  ``{"wants": [...], "haves": [...]}`` -> zstd-compressed CAR of the
  missing blocks (post-order per commit, commit block last), streamed; a client that sends
  ``X-Casync-Frames: 1`` (this one does) gets the CAR framed instead, each batch stored or
  zstd-compressed (:mod:`casync.transports.peer.frames`)
* ``POST /v1/push?branch=B&old=CID&new=CID`` with a zstd-compressed CAR body (chunked
  transfer encoding) -> ``{"updated": ...}``; 409 on a non-fast-forward
* ``POST /v1/tags?tags={"NAME":"CID",...}`` with a zstd-compressed CAR of the commits the
  tags need -> the receiver's tag report (``created``, ``unchanged``, ``conflicts``:
  an existing tag is never moved)
* ``POST /v1/blocks`` ``{"cids": [cid...]}`` (at most 1024, any codec) -> zstd-compressed CAR
  of those the peer holds intact (``fsck --repair``)
* ``GET  /v1/peers`` (``casync agent`` only) -> the site and the peers it synced with (gossip;
  docs/design.md §15.1)

The server binds to 127.0.0.1 by default.  Bodies are size-limited (JSON 1 MiB, a push the
server's announced ``max_push_bytes``); malformed messages get 400 and change nothing; a read
token's push gets 403; a client beyond its share of connections gets 503 (see
:mod:`casync.transports.peer.server`).  Every JSON reply is read with
:func:`casync.model.safejson.loads` (nesting bounded).
"""

from __future__ import annotations

import http.client
import io
import json
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import zstandard

from casync.errors import (
    InvalidObject,
    PeerRefused,
    RefConflict,
    RemoteAuthError,
    RemoteError,
    RemoteProtocolError,
    RemoteTimeout,
    RemoteUnreachable,
    UsageError,
)
from casync.model import safejson
from casync.model.car import CarWriter, iter_car, read_header
from casync.model.cid import Cid, cid_str
from casync.repo.tags import TagUpdate
from casync.transfer.stream import TransferStats
from casync.transports.peer.frames import FRAMES_HEADER, FRAMES_TYPE, FrameReader
from casync.transports.peer.protocol import MAX_HAVES, MAX_WANTS, PeerInfo, parse_cid_list

__all__ = ["HttpPeer"]

MAX_JSON_BODY = 1 << 20
_CHUNK = 1 << 16
_READ_BUFFER = 1 << 20  # a framed reply is read straight into the blocks (most are up to 1 MiB)


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
                raise RemoteUnreachable(f"cannot reach {self.url}: {exc}",
                                        hint="is 'casync serve' running there?") from None
            except OSError as exc:
                conn.close()
                self._keepalive = None
                unreachable = RemoteTimeout if isinstance(exc, TimeoutError) else RemoteUnreachable
                raise unreachable(f"cannot reach {self.url}: {exc}", hint="is 'casync serve' running there?") from None
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
                reply = safejson.loads(detail, "error reply")
                message, hint = str(reply.get("error", "")), reply.get("hint")
            except (InvalidObject, AttributeError):
                message = detail.decode(errors="replace")[:200]
            if resp.status == 401:
                raise self._unauthorized(reply.get("reason") if isinstance(reply, dict) else None)
            if resp.status == 409:
                raise RefConflict(message, hint=str(hint) if hint else "pull (fetch and merge), then push again")
            if resp.status == 403:
                raise PeerRefused(f"{self.url} answered {resp.status}: {message}", hint=str(hint) if hint else None)
            # 502/503/504: a proxy or a server out of connections; a moment later it may answer
            raise RemoteError(f"{self.url} answered {resp.status}: {message}", hint=str(hint) if hint else None,
                              transient=resp.status in (502, 503, 504))
        return resp

    def _read(self, resp: http.client.HTTPResponse, limit: int) -> bytes:
        """A JSON reply's body; one cut short or reset is the link failing (transient), not a
        malformed reply, so the call is retried."""
        try:
            if resp.length is None:  # every JSON reply of casync serve has a length: the headers were cut
                raise http.client.IncompleteRead(b"")
            data = resp.read(limit)
            if resp.length and len(data) < limit:  # the connection ended before the length
                raise http.client.IncompleteRead(data, resp.length)
            return data
        except (http.client.HTTPException, OSError) as exc:
            resp.close()
            if self._keepalive is not None:
                self._keepalive.close()
                self._keepalive = None
            raise RemoteUnreachable(f"the reply from {self.url} broke off: {exc!r}",
                                    hint="the link is failing; try again") from None

    def _unauthorized(self, reason: Any) -> RemoteAuthError:
        """A 401: no token sent, or one the server refused (its reply says which; an older
        server's does not, so what this side sent decides)."""
        if reason == "missing" or (reason != "refused" and not self._token):
            return RemoteAuthError(f"{self.url} needs a token, and none was sent (401)",
                               hint="give the token 'casync serve' there uses: --token-file FILE or "
                                    "CASYNC_TOKEN, or store its file with 'casync remote set-url NAME "
                                    "--token-file FILE'")
        return RemoteAuthError(f"{self.url} refused the token (401): it is not the one 'casync serve' "
                           "there was started with",
                           hint="check which token was sent: --token-file, else CASYNC_TOKEN, else the "
                                "remote's token_file ('casync config remotes'); it must match the server's")

    def _json(self, method: str, path: str, obj: Any = None) -> Any:
        body = json.dumps(obj).encode() if obj is not None else None
        resp = self._request(method, path, body, {"Content-Type": "application/json"} if body else None,
                             keepalive=True)
        try:
            return safejson.loads(self._read(resp, MAX_JSON_BODY + 1), "reply")
        except InvalidObject as exc:
            raise RemoteProtocolError(f"{self.url} sent a malformed reply ({exc.message})") from None

    def info(self) -> PeerInfo:
        return PeerInfo.from_json(self._json("GET", "/v1/info"))

    def directory(self) -> Any:
        """``GET /v1/peers`` of a ``casync agent``: the site and the peers it knows (raw JSON)."""
        return self._json("GET", "/v1/peers")

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        reply = self._json("POST", "/v1/negotiate", {"haves": [cid_str(h) for h in haves]})
        try:
            return parse_cid_list(reply.get("common"), "common", MAX_HAVES)
        except (InvalidObject, AttributeError):
            raise RemoteProtocolError(f"{self.url} sent a malformed negotiate reply") from None

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        request: dict[str, Any] = {"wants": [cid_str(w) for w in wants], "haves": [cid_str(h) for h in haves]}
        if paths:  # a partial clone: the server sends only what lies inside them
            request["paths"] = list(paths)
        body = json.dumps(request).encode()
        yield from self._car("/v1/fetch", body)

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        for at in range(0, len(cids), MAX_WANTS):
            body = json.dumps({"cids": [cid_str(c) for c in cids[at : at + MAX_WANTS]]}).encode()
            yield from self._car("/v1/blocks", body)

    def _car(self, path: str, body: bytes) -> Iterator[tuple[Cid, bytes]]:
        """The blocks of a zstd CAR answer (each hash-checked by the CAR reader)."""
        resp = self._request("POST", path, body, {"Content-Type": "application/json", FRAMES_HEADER: "1"})
        raw: Any
        if (resp.getheader("Content-Type") or "").split(";")[0] == FRAMES_TYPE.split(";")[0]:
            raw, size = FrameReader(resp, self.url), _READ_BUFFER
        else:  # an older server: one zstd stream
            raw, size = zstandard.ZstdDecompressor().stream_reader(resp), _CHUNK
        reader = io.BufferedReader(raw, size)
        try:
            read_header(reader)
            yield from iter_car(reader)  # each block hash-checked before it is handed on
        except zstandard.ZstdError as exc:
            raise InvalidObject(f"stream from {self.url} is corrupt or truncated ({exc})") from None
        finally:
            resp.close()

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        query = urllib.parse.urlencode({"branch": branch, "new": cid_str(new), "old": cid_str(old) if old else ""})
        resp = self._request("POST", f"/v1/push?{query}", _car_body([new], blocks), _CAR_HEADERS, chunked=True)
        try:
            reply = safejson.loads(self._read(resp, MAX_JSON_BODY), "push reply")
            return TransferStats(blocks=int(reply.get("blocks", 0)), bytes=int(reply.get("bytes", 0)),
                                 new_blocks=int(reply.get("new_blocks", 0)),
                                 new_bytes=int(reply.get("new_bytes", 0)))
        except (ValueError, TypeError, AttributeError, InvalidObject):
            raise RemoteProtocolError(f"{self.url} accepted the push but sent a malformed reply") from None

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        query = urllib.parse.urlencode({"tags": json.dumps({n: cid_str(c) for n, c in tags.items()})})
        resp = self._request("POST", f"/v1/tags?{query}", _car_body([], blocks), _CAR_HEADERS, chunked=True)
        try:
            return TagUpdate.from_json(self.url, safejson.loads(self._read(resp, MAX_JSON_BODY), "tags reply"))
        except (ValueError, TypeError, KeyError, AttributeError, UsageError, InvalidObject):
            raise RemoteProtocolError(f"{self.url} took the tags but sent a malformed reply") from None

    def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None


_CAR_HEADERS = {"Content-Type": "application/vnd.ipld.car", "Content-Encoding": "zstd"}


def _car_body(roots: list[Cid], blocks: Iterable[tuple[Cid, bytes]], piece: int = _CHUNK) -> Iterator[bytes]:
    """A zstd-compressed CAR of ``blocks``, in pieces of about ``piece`` bytes."""
    buf = io.BytesIO()
    comp = zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False)
    writer = CarWriter(comp, roots)
    for cid, block in blocks:
        writer.add(cid, block)
        if buf.tell() >= piece:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    comp.flush(zstandard.FLUSH_FRAME)
    if buf.tell():
        yield buf.getvalue()
