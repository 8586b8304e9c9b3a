"""A hostile ``casync serve``: a real HTTP server on 127.0.0.1 that answers the peer
protocol with whatever an attack needs (an info message, a block stream), to test what a
fetching, pulling or cloning replica does with it.  Started and stopped by
:func:`evil_peer`; every connection it serves is closed when it stops."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zstandard

from casync.model.car import CarWriter
from casync.model.cid import Cid, cid_str
from casync.transports.peer.frames import FRAMES_HEADER, FRAMES_TYPE, frame_batches

__all__ = ["EvilPeer", "evil_peer"]


@dataclass
class EvilPeer:
    """What the hostile server sends; tests change it between requests."""

    url: str = ""
    token: str = "evil-token"
    info: bytes = b"{}"
    blocks: list[tuple[Cid, bytes]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    framed: bool = False  # answer a client that asks for casync-frames/1 with frames
    raw_frames: bytes | None = None  # a framed reply as given (framing attacks), else the blocks framed

    def serve_history(self, repository_id: str, tip: Cid, blocks: list[tuple[Cid, bytes]],
                      **info: Any) -> None:
        self.blocks = blocks
        self.info = json.dumps({"repository_id": repository_id, "replica": "evil", "read_only": False,
                                "hash": "blake3", "chunker": "cdc", "refs": {"main": cid_str(tip)}, **info}).encode()

    def car(self) -> bytes:
        buf = io.BytesIO()
        writer = CarWriter(buf, [])
        for cid, block in self.blocks:
            writer.add(cid, block)
        return zstandard.ZstdCompressor().compress(buf.getvalue())

    def frames(self) -> bytes:
        if self.raw_frames is not None:
            return self.raw_frames
        return b"".join(frame_batches([], [self.blocks[i : i + 3] for i in range(0, len(self.blocks), 3)]))


def _handler(peer: EvilPeer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, body: bytes, kind: str = "application/json", close: bool = False) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            if kind.startswith("application/vnd.ipld.car"):
                self.send_header("Content-Encoding", "zstd")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            peer.requests.append(f"GET {self.path}")
            self._send(peer.info)

        def do_POST(self) -> None:
            peer.requests.append(f"POST {self.path}")
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/v1/negotiate"):
                self._send(b'{"common": []}')
            elif peer.framed and self.headers.get(FRAMES_HEADER) == "1":
                self._send(peer.frames(), FRAMES_TYPE, close=True)
            else:
                self._send(peer.car(), "application/vnd.ipld.car; version=1", close=True)

    return Handler


@contextlib.contextmanager
def evil_peer() -> Iterator[EvilPeer]:
    peer = EvilPeer()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    peer.url = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
