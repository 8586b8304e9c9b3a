"""``casync serve`` on waitress (casync.transports.peer.server): the limits and early answers the old
http.server code had, and the WSGI application called in-process."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from typing import Any

import pytest

from casync import Repository
from casync.model.cid import cid_str
from casync.transports.peer.server import PeerApp, PeerServer, serve

from .conftest import serving

TOKEN = "serve-token-for-tests"


def _reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _connect(srv: PeerServer) -> socket.socket:
    host, port = srv.server_address[:2]
    return socket.create_connection((str(host), int(port)), timeout=30)


def test_beyond_its_share_of_connections_a_client_gets_503_at_once(served_repo: Repository) -> None:
    with serving(served_repo, TOKEN) as srv:
        idle = [_connect(srv) for _ in range(srv.max_per_client)]
        try:
            with _connect(srv) as extra:  # answered before it sends anything (as http.server did)
                reply = _reply(extra)
            assert reply.startswith(b"HTTP/1.1 503") and b"Connection: close" in reply
        finally:
            for s in idle:
                s.close()


@pytest.mark.parametrize(("headers", "status"), [
    ("Authorization: Bearer wrong\r\n", b"401"),  # a wrong token: the 10 MB are not waited for
    (f"Authorization: Bearer {TOKEN}\r\n", b"403"),  # a read-only server refuses any push
])
def test_a_refused_push_is_answered_before_its_body_arrives(served_repo: Repository, headers: str,
                                                            status: bytes) -> None:
    head = cid_str(served_repo.refs.get_ref("heads/main") or b"")
    srv = serve(served_repo, TOKEN.encode(), read_only=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with _connect(srv) as s:
            s.sendall(f"POST /v1/push?branch=main&old={head}&new={head} HTTP/1.1\r\nHost: x\r\n{headers}"
                      f"Content-Length: 10000000\r\n\r\n".encode())  # and no body at all
            reply = _reply(s)  # waitress alone would wait for the whole body first
        assert reply.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


def test_a_json_body_over_its_limit_is_refused_unread(served_repo: Repository) -> None:
    with serving(served_repo, TOKEN) as srv, _connect(srv) as s:
        s.sendall(f"POST /v1/negotiate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Length: {(1 << 20) + 1}\r\n\r\n".encode())
        reply = _reply(s)
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit of 1048576" in reply


def _call(app: PeerApp, method: str, path: str, body: bytes = b"", token: str = TOKEN) -> tuple[str, Any]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "HTTP_AUTHORIZATION": f"Bearer {token}"}
    started: list[str] = []
    pieces = app(environ, lambda status, headers: started.append(status))
    return started[0], json.loads(b"".join(pieces))


def test_the_wsgi_application_answers_in_process(served_repo: Repository) -> None:
    app = PeerApp(served_repo, TOKEN.encode())
    status, info = _call(app, "GET", "/v1/info")
    assert status == "200 OK" and info["replica"] == "site-s" and "main" in info["refs"]
    status, reply = _call(app, "POST", "/v1/negotiate", json.dumps({"haves": [info["refs"]["main"]]}).encode())
    assert status == "200 OK" and reply["common"] == [info["refs"]["main"]]
    status, reply = _call(app, "GET", "/v1/info", token="wrong")
    assert status.startswith("401") and reply["reason"] == "refused"
    assert _call(app, "GET", "/v1/nothing")[0].startswith("404")


def test_a_client_that_stops_reading_its_fetch_is_cut_off_and_frees_the_server(served_repo: Repository) -> None:
    """waitress never times out a connection with a request in progress; the server does,
    as http.server's socket timeout did, so a stalled site cannot hold a worker for good."""
    with served_repo.transaction(branch="main", message="big") as tx:
        tx.write("big.bin", os.urandom(40_000_000))  # more than waitress buffers (16 MiB) for one reply
    srv = serve(served_repo, TOKEN.encode(), idle_timeout=1)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with _connect(srv) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = json.dumps({"wants": [cid_str(served_repo.refs.get_ref("heads/main") or b"")]}).encode()
            s.sendall(f"POST /v1/fetch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert s.recv(64).startswith(b"HTTP/1.1 200")  # then it reads no more
            for _ in range(600):  # until the server gives up on it (its idle timeout is 1 s)
                if srv.open_connections == 0:
                    break
                time.sleep(0.05)
            assert srv.open_connections == 0
            received = 0
            while piece := s.recv(1 << 20):  # what was on its way still arrives, then the end
                received += len(piece)
            assert received < 30_000_000  # cut off: far less than the reply
        assert srv.app.lock.acquire(timeout=30)  # and nothing holds the repository
        srv.app.lock.release()
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)
