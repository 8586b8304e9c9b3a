"""``casync serve`` cannot be starved or filled: a slowloris of 200 connections (real sockets
on 127.0.0.1 and other loopback addresses) does not stop it answering a legitimate client; a
header that trickles in is cut off at its deadline; a read token cannot push; a push over
the limit is refused before its body is spooled."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import RemoteAuthError, RemoteError
from casync.transports.peer.exchange import fetch_from, push_to
from casync.transports.peer.http import HttpPeer
from casync.transports.peer.server import PeerServer, serve

TOKEN = "write-token-for-tests"
READ = "read-token-for-tests"


@contextlib.contextmanager
def running(repo: Repository, **kw: object) -> Iterator[PeerServer]:
    srv = serve(repo, TOKEN.encode(), read_tokens=[READ.encode()], **kw)  # type: ignore[arg-type]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def _url(srv: PeerServer) -> str:
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}"


def _open(srv: PeerServer, source: str = "127.0.0.1") -> socket.socket:
    host, port = srv.server_address[:2]
    return socket.create_connection((str(host), int(port)), timeout=10, source_address=(source, 0))


def _reply(sock: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def _closed(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (bounded wait)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_slowloris_of_200_connections_does_not_starve_a_legitimate_client(served_repo: Repository,
                                                                               tmp_path: Path) -> None:
    # 200 connections from 25 loopback addresses (8 each, within the per-client share), each
    # sending a header one byte at a time and never finishing it
    sockets: list[socket.socket] = []
    clone = Repository.init(tmp_path / "c", replica="site-c", repository_id=served_repo.repo_id)
    try:
        with running(served_repo, header_timeout=5.0) as srv:
            for i in range(200):
                try:
                    s = _open(srv, f"127.0.0.{2 + i // 8}")
                    s.sendall(b"G")
                    sockets.append(s)
                except OSError:
                    pass  # evicted or refused at once: that is the defence working
            client = HttpPeer(_url(srv), TOKEN, timeout=10)
            try:
                for round_ in range(5):
                    for s in sockets:  # the trickle: one more header byte each
                        with contextlib.suppress(OSError):
                            s.send(b"E")
                    info = client.info()
                    assert info.refs["main"] == served_repo.refs.get_ref("heads/main")
                    result = fetch_from(clone, client, "origin")
                    assert result.stats.commits or round_ > 0
                    client.close()  # a new connection each round, among the slowloris ones
                assert srv.open_connections <= srv.max_connections + 1
            finally:
                client.close()
    finally:
        for s in sockets:
            s.close()
        clone.close()


def test_a_trickled_header_is_cut_off_at_its_deadline(served_repo: Repository) -> None:
    with running(served_repo, header_timeout=2.0, idle_timeout=60) as srv:
        with _open(srv) as s:
            s.sendall(b"GET /v1/info HTTP/1.1\r\n")
            deadline = time.monotonic() + 8
            closed = False
            while time.monotonic() < deadline and not closed:
                with contextlib.suppress(OSError):
                    s.send(b"X")  # one byte a second: activity, but never a whole header
                closed = _closed(s, 1.0)
            assert closed, "a header trickled for 8 s was not cut off (deadline 2 s)"
        with _open(srv) as s:  # a prompt client on a new connection is served_repo
            s.sendall(f"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      "Connection: close\r\n\r\n".encode())
            assert _reply(s).startswith(b"HTTP/1.1 200")


def test_one_address_gets_only_its_share(served_repo: Repository) -> None:
    with running(served_repo) as srv:
        mine = [_open(srv) for _ in range(srv.max_per_client)]
        try:
            with _open(srv) as extra:
                reply = _reply(extra)
            assert reply.startswith(b"HTTP/1.1 503") and b"too many connections from your address" in reply
            with _open(srv, "127.0.0.2") as other:  # another client is not affected
                other.sendall(f"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                              "Connection: close\r\n\r\n".encode())
                assert _reply(other).startswith(b"HTTP/1.1 200")
        finally:
            for s in mine:
                s.close()


def test_a_read_token_fetches_but_cannot_push(served_repo: Repository, tmp_path: Path) -> None:
    site = Repository.init(tmp_path / "site", replica="site-r", repository_id=served_repo.repo_id)
    try:
        with running(served_repo) as srv:
            reader = HttpPeer(_url(srv), READ)
            try:
                assert reader.info().scope == "read"
                fetch_from(site, reader, "hub")  # reading works
                site.refs.cas_ref("heads/main", None, site.refs.get_ref("remotes/hub/main"), "test")
                with site.transaction(branch="main", message="from a pulling site") as tx:
                    tx.write("g.txt", b"new")
                with pytest.raises(RemoteAuthError, match="may only read"):
                    push_to(site, reader, "hub", "main")
            finally:
                reader.close()
            with _open(srv) as s:  # the raw request: 403 before any body is read
                s.sendall(f"POST /v1/push?branch=main&new=x&old= HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {READ}\r\nContent-Length: 10000000\r\n\r\n".encode())
                reply = _reply(s)
            assert reply.startswith(b"HTTP/1.1 403")
            body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
            assert "may only read" in body["error"] and "write token" in body["error"]
            assert served_repo.refs.get_ref("heads/main") != site.refs.get_ref("heads/main")
    finally:
        site.close()


def test_an_oversized_push_is_refused_before_it_is_spooled(served_repo: Repository, tmp_path: Path) -> None:
    site = Repository.init(tmp_path / "site", replica="site-w", repository_id=served_repo.repo_id)
    try:
        with running(served_repo, max_push_bytes=64 << 10) as srv:
            writer = HttpPeer(_url(srv), TOKEN)
            info = json.loads(_get_info(srv))
            assert info["max_push_bytes"] == 64 << 10  # announced, so a client can tell in advance
            with _open(srv) as s:  # a declared length over it: 413 from the headers alone
                s.sendall(f"POST /v1/push?branch=main&new=x&old= HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {TOKEN}\r\nContent-Length: {300 << 20}\r\n\r\n".encode())
                reply = _reply(s)
            assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit of 65536" in reply
            fetch_from(site, writer, "hub")
            site.refs.cas_ref("heads/main", None, site.refs.get_ref("remotes/hub/main"), "test")
            with site.transaction(branch="main", message="big") as tx:
                tx.write("big.bin", os.urandom(1 << 20))  # incompressible: 1 MiB on the wire
            before = served_repo.refs.get_ref("heads/main")
            with pytest.raises(RemoteError, match="413: push body exceeds the limit of 65536"):
                push_to(site, writer, "hub", "main")  # chunked: cut off by the parser once past 64 KiB
            writer.close()
            assert served_repo.refs.get_ref("heads/main") == before
    finally:
        site.close()


def _get_info(srv: PeerServer) -> bytes:
    with _open(srv) as s:
        s.sendall(f"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Connection: close\r\n\r\n".encode())
        return _reply(s).split(b"\r\n\r\n", 1)[1]
