"""Peer-to-peer sync without IPFS: local-path peers, `serve` over HTTP on loopback, bundles."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from casync import Repository, porcelain
from casync.errors import InvalidObject, RefConflict, RemoteError, StorageError
from casync.model.car import CarWriter
from casync.model.cid import RAW, cid_str, compute_cid
from casync.transfer.stream import blocks_for_commits
from casync.transports.bundle import create_bundle, read_bundle
from casync.transports.peer.exchange import LocalPeer, fetch_from, push_to
from casync.transports.peer.http import HttpPeer
from casync.transports.peer.server import PeerServer

from .conftest import serving, write

TOKEN = "s3cret-token-for-tests"


def history(repo: Repository, n: int, prefix: str = "f") -> None:
    for i in range(n):
        with repo.transaction(message=f"{prefix}{i}") as tx:
            tx.write(f"{prefix}/{i % 7}", f"{prefix}{i}".encode() * 50)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Repository]:
    r = Repository.init(tmp_path / "origin", replica="origin")
    history(r, 5)
    yield r
    r.close()


def clone_empty(tmp_path: Path, origin: Repository, name: str) -> Repository:
    return Repository.init(tmp_path / name, replica=name, repository_id=origin.repo_id)


@pytest.fixture
def server(origin: Repository) -> Iterator[PeerServer]:
    with serving(origin, TOKEN) as srv:
        yield srv


def url(srv: PeerServer) -> str:
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}"


def test_local_fetch_then_incremental(tmp_path: Path, origin: Repository) -> None:
    b = clone_empty(tmp_path, origin, "b")
    peer = LocalPeer(str(origin.root))
    first = fetch_from(b, peer, "origin")
    assert b.refs.get_ref("remotes/origin/main") == origin.resolve("main")
    assert b.fsck().ok and first.stats.commits
    history(origin, 1, "g")
    again = fetch_from(b, peer, "origin")
    assert again.round_trips <= 3 and len(again.stats.commits) == 1
    assert again.stats.new_blocks == again.stats.blocks  # nothing sent twice
    peer.close()


def test_http_fetch_push_roundtrip(tmp_path: Path, origin: Repository, server: PeerServer) -> None:
    b = clone_empty(tmp_path, origin, "b")
    peer = HttpPeer(url(server), TOKEN)
    fetch_from(b, peer, "origin")
    b.update_branch("main", None, b.refs.get_ref("remotes/origin/main"), "track")
    with b.transaction(branch="main", message="from b") as tx:
        tx.write("b.txt", b"hello from b")
    summary = push_to(b, peer, "origin", "main")
    assert summary["result"] == "pushed" and summary["commits"] == 1 and summary["round_trips"] <= 3
    assert origin.read("b.txt", rev="main") == b"hello from b"
    assert origin.fsck().ok
    # pushing again is a no-op; a stale push is refused as non-fast-forward
    assert push_to(b, peer, "origin", "main")["result"] == "up-to-date"
    with origin.transaction(branch="main", message="origin moves on") as tx:
        tx.write("o.txt", b"o")
    with b.transaction(branch="main", message="b diverges") as tx:
        tx.write("b2.txt", b"b2")
    with pytest.raises(RefConflict, match="non-fast-forward"):
        push_to(b, peer, "origin", "main")


def test_wrong_or_missing_token_is_refused(tmp_path: Path, origin: Repository, server: PeerServer) -> None:
    before = origin.branches()
    b = clone_empty(tmp_path, origin, "b")
    for token in ("wrong", None):
        with pytest.raises(RemoteError, match="401"):
            fetch_from(b, HttpPeer(url(server), token), "origin")
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    conn.request("POST", "/v1/push?branch=main&new=x", body=b"junk", headers={"Authorization": "Bearer nope"})
    assert conn.getresponse().status == 401
    assert origin.branches() == before and b.refs.list_refs() == {}


def test_a_large_push_refused_before_its_body_is_read_gets_the_servers_reason(
        tmp_path: Path, origin: Repository, server: PeerServer) -> None:
    """The server refuses a push with a wrong token (401) and closes before it reads the body:
    the client, cut off mid-upload, reports that answer, not a broken connection."""
    b = clone_empty(tmp_path, origin, "b")
    with b.transaction(branch="main", message="big") as tx:
        tx.write("big.bin", os.urandom(32 << 20))  # far more than the socket buffers hold
    new = b.resolve("main")
    blocks = list(blocks_for_commits(b, [new]))
    peer = HttpPeer(url(server), "wrong")
    with pytest.raises(RemoteError, match=r"refused the token \(401\)") as info:
        peer.push("main", origin.resolve("main"), new, blocks)
    assert not info.value.transient
    assert origin.refs.get_ref("heads/main") != new
    peer.close()
    b.close()


def _post(srv: PeerServer, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.parametrize("body", [b"not json", b'{"haves": "x"}', b'{"haves": ["bafynotacid"]}',
                                  json.dumps({"haves": ["x"] * 5000}).encode(), b"[]"])
def test_malformed_negotiation_is_rejected(server: PeerServer, body: bytes) -> None:
    status, reply = _post(server, "/v1/negotiate", body, {"Content-Type": "application/json"})
    assert status == 400 and json.loads(reply)["error"]


def _car(blocks: list[tuple[bytes, bytes]], root: bytes) -> bytes:
    buf = io.BytesIO()
    comp = zstandard.ZstdCompressor().stream_writer(buf, closefd=False)
    w = CarWriter(comp, [root])
    for cid, data in blocks:
        w.add(cid, data)
    comp.flush(zstandard.FLUSH_FRAME)
    return buf.getvalue()


def test_bad_pushes_store_nothing_and_move_nothing(tmp_path: Path, origin: Repository, server: PeerServer) -> None:
    b = clone_empty(tmp_path, origin, "b")
    fetch_from(b, LocalPeer(str(origin.root)), "origin")
    tip = b.refs.get_ref("remotes/origin/main")
    b.update_branch("main", None, tip, "track")
    with b.transaction(branch="main", message="new") as tx:
        tx.write("n.txt", os.urandom(5000))
    new = b.resolve("main")
    from casync.transfer.stream import blocks_for_commits

    good = list(blocks_for_commits(b, b.graph.missing([new], [tip])))
    stray = (compute_cid(RAW, b"stray"), b"stray")
    wrong = (good[0][0], good[0][1] + b"!")
    q = f"/v1/push?branch=main&old={cid_str(tip)}&new={cid_str(new)}"
    cases = {
        "truncated": _car(good[:-1], new),
        "stray block": _car([stray, *good], new),
        "wrong bytes": _car([wrong, *good[1:]], new),
        "garbage": b"\x28\xb5\x2f\xfdgarbage",
    }
    index_before = origin.store.items_count("index")
    for name, body in cases.items():
        status, reply = _post(server, q, body, {"Content-Type": "application/vnd.ipld.car"})
        assert status == 400, (name, reply)
        assert origin.resolve("main") == tip, name
        assert origin.store.items_count("index") == index_before, name
    status, _ = _post(server, q, _car(good, new))
    assert status == 200 and origin.resolve("main") == new


def test_concurrent_pushes_one_wins(tmp_path: Path, origin: Repository, server: PeerServer) -> None:
    clones = []
    for name in ("b", "c"):
        r = clone_empty(tmp_path, origin, name)
        fetch_from(r, LocalPeer(str(origin.root)), "origin")
        r.update_branch("main", None, r.refs.get_ref("remotes/origin/main"), "track")
        with r.transaction(branch="main", message=f"from {name}") as tx:
            tx.write(f"{name}.txt", os.urandom(300_000))
        clones.append(r)
    results: dict[str, str] = {}

    def go(r: Repository) -> None:
        try:
            push_to(r, HttpPeer(url(server), TOKEN), "origin", "main")
            results[r.replica] = "ok"
        except RefConflict as exc:
            results[r.replica] = exc.message

    threads = [threading.Thread(target=go, args=(r,)) for r in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results.values()).count("ok") == 1
    loser = next(v for v in results.values() if v != "ok")
    assert "non-fast-forward" in loser
    assert origin.fsck().ok


def test_fetch_reports_wrong_repository(tmp_path: Path, origin: Repository) -> None:
    stranger = Repository.init(tmp_path / "x", replica="x")
    with pytest.raises(RemoteError, match="not this one"):
        fetch_from(stranger, LocalPeer(str(origin.root)), "origin")


def test_interrupted_fetch_resumes_without_resending(tmp_path: Path, origin: Repository) -> None:
    history(origin, 30, "big")
    b = clone_empty(tmp_path, origin, "b")
    peer = LocalPeer(str(origin.root))
    real_fetch = peer.fetch
    sent = {"n": 0}

    def flaky(wants, haves):  # type: ignore[no-untyped-def]
        for item in real_fetch(wants, haves):
            sent["n"] += 1
            if sent["n"] == 60:
                raise RemoteError("connection reset (simulated)", transient=True)
            yield item

    peer.fetch = flaky  # type: ignore[method-assign]
    with pytest.raises(RemoteError):
        fetch_from(b, peer, "origin", flush_bytes=1)  # durable at every commit boundary
    partial = b.refs.get_ref("partial/origin")
    assert partial is not None and b.fsck().ok
    peer.fetch = real_fetch  # type: ignore[method-assign]
    result = fetch_from(b, peer, "origin")
    total = len(list(real_fetch([origin.resolve("main")], [])))
    assert result.stats.blocks <= total - 50  # the ~59 blocks that arrived before the break are not resent
    assert result.stats.new_blocks == result.stats.blocks
    assert b.refs.get_ref("partial/origin") is None and b.fsck().ok


def test_bundle_roundtrip_and_tamper(tmp_path: Path, origin: Repository) -> None:
    path = tmp_path / "x.bundle"
    info = create_bundle(origin, path, ["main"])
    assert info.refs == {"main": origin.resolve("main")}
    b = clone_empty(tmp_path, origin, "b")
    got = read_bundle(b, path)
    assert b.refs.get_ref("bundles/main") == origin.resolve("main") and b.fsck().ok
    assert got.stats.blocks == info.stats.blocks
    # incremental bundle
    history(origin, 2, "h")
    inc = tmp_path / "inc.bundle"
    create_bundle(origin, inc, ["main"], since=[cid_str(info.refs["main"])])
    c = clone_empty(tmp_path, origin, "c")
    with pytest.raises(InvalidObject) as err:
        read_bundle(c, inc)  # lacks the prerequisite: the manifest, read first, says so
    assert "needs commit" in err.value.message and "--since" in (err.value.hint or "")
    assert c.refs.list_refs() == {}
    read_bundle(b, inc)
    assert b.refs.get_ref("bundles/main") == origin.resolve("main")
    # one flipped byte anywhere is rejected, nothing is stored
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(bytes(raw))
    d = clone_empty(tmp_path, origin, "d")
    with pytest.raises(InvalidObject) as bad_err:
        read_bundle(d, bad)
    assert str(bad) in bad_err.value.message and "fsck" not in (bad_err.value.hint or "")
    assert d.store.items_count("index") == 0 and d.refs.list_refs() == {}


def test_one_commit_divergence_on_long_history(tmp_path: Path) -> None:
    a = Repository.init(tmp_path / "a", replica="a")
    history(a, 300)
    b = Repository.init(tmp_path / "b", replica="b", repository_id=a.repo_id)
    fetch_from(b, LocalPeer(str(a.root)), "a")
    b.update_branch("main", None, b.refs.get_ref("remotes/a/main"), "track")
    with a.transaction(message="one more") as tx:
        tx.write("x", b"new data")
    result = fetch_from(b, LocalPeer(str(a.root)), "a")
    assert result.round_trips <= 3
    assert len(result.stats.commits) == 1
    assert result.stats.blocks <= 4  # the new leaf, one directory, the root, the commit
    write(b.root, "unused", "")


def test_hostile_peer_inputs_are_refused(tmp_path: Path, origin: Repository, server: PeerServer) -> None:
    """Refs must name commits; request headers are parsed strictly; nothing changes."""
    leaf = compute_cid(RAW, b"just a leaf")
    origin.blocks.put(leaf, b"just a leaf")
    origin.blocks.flush()
    before = origin.branches()
    status, reply = _post(server, f"/v1/push?branch=evil&new={cid_str(leaf)}", _car([], leaf))
    assert status == 400 and b"not a commit" in reply
    status, _ = _post(server, "/v1/negotiate", b'{"haves": []}', {"Content-Length": "abc"})
    assert status == 400
    assert origin.branches() == before
    from casync.transports.peer.exchange import PeerInfo

    with pytest.raises(RemoteError, match="malformed info"):
        PeerInfo.from_json({"repository_id": "x", "replica": "y", "read_only": False,
                            "refs": {"../evil": cid_str(leaf)}})
    with pytest.raises(RemoteError, match="malformed info"):
        PeerInfo.from_json({"repository_id": "x", "replica": "y", "read_only": False,
                            "refs": {"main": cid_str(leaf)}})


def test_unrelated_history_is_not_merged(tmp_path: Path, origin: Repository) -> None:
    from casync.errors import ConflictError
    from casync.worktree.merging import merge

    other = Repository.init(tmp_path / "other", replica="other", repository_id=origin.repo_id, bare=True)
    history(other, 2, "x")
    fetch_from(origin, LocalPeer(str(other.root)), "other")
    porcelain.checkout(origin, "main")  # the files follow origin's transactions first (else merge refuses)
    with pytest.raises(ConflictError, match="shares no history"):
        merge(origin, "remotes/other/main")
    assert merge(origin, "remotes/other/main", allow_unrelated=True).kind == "merged"
    other.close()


def _stalled_request(srv: PeerServer, head: bytes, body: bytes, reply: bool) -> tuple[Any, bytes]:
    """A client on a dead-slow link: sends ``head`` and ``body`` and then reads at most
    the start of the reply, holding its connection open."""
    host, port = srv.server_address[:2]
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(head + body)
    return sock, sock.recv(64) if reply else b""


def test_a_stalled_client_does_not_hold_up_other_sites(tmp_path: Path, origin: Repository,
                                                       server: PeerServer) -> None:
    """A fetch whose reader stopped reading and a push whose sender stopped sending, both
    left hanging mid-stream: other sites still negotiate, fetch and push meanwhile."""
    with origin.transaction(message="big") as tx:
        tx.write("big.bin", os.urandom(12_000_000))  # far more than the socket buffers hold
    head_cid = cid_str(origin.refs.get_ref("heads/main") or b"")
    body = json.dumps({"wants": [head_cid], "haves": []}).encode()
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    fetch_sock, first = _stalled_request(
        server, b"POST /v1/fetch HTTP/1.1\r\nHost: x\r\n" + auth +
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body), body, reply=True)
    assert first.startswith(b"HTTP/1.1 200")
    push_sock, _ = _stalled_request(
        server, f"POST /v1/push?branch=main&old={head_cid}&new={head_cid} HTTP/1.1\r\nHost: x\r\n".encode() +
        auth + b"Content-Length: 1000000\r\n\r\n", b"\x28\xb5\x2f\xfd" + b"\0" * 1000, reply=False)  # then stall
    try:
        b = clone_empty(tmp_path, origin, "b")
        peer = HttpPeer(url(server), TOKEN, timeout=20)
        fetch_from(b, peer, "origin")  # would wait for a stalled client's socket timeout (60 s) before
        b.update_branch("main", None, b.refs.get_ref("remotes/origin/main"), "track")
        assert b.read("big.bin") == origin.read("big.bin")
        with b.transaction(branch="main", message="from b") as tx:
            tx.write("b.txt", b"hello from b")
        push_to(b, peer, "origin", "main")
        assert origin.read("b.txt") == b"hello from b"
        b.close()
    finally:
        fetch_sock.close()
        push_sock.close()
    assert origin.fsck().ok


@pytest.mark.parametrize("transport", ["local", "http"])
def test_moved_and_copied_data_is_not_sent_again(tmp_path: Path, origin: Repository, server: PeerServer,
                                                 transport: str) -> None:
    """Rotating files into an archive directory is common at the edge: the receiver
    already holds the bytes, so only directories and the commit travel."""
    big = os.urandom(3_000_000)  # a multi-chunk file
    with origin.transaction(message="data") as tx:
        tx.write("incoming/today.bin", big)
        for i in range(5):
            tx.write(f"logs/day{i}.txt", os.urandom(200_000))
    b = clone_empty(tmp_path, origin, "b")
    peer = LocalPeer(str(origin.root)) if transport == "local" else HttpPeer(url(server), TOKEN)
    fetch_from(b, peer, "origin")
    with origin.transaction(message="rotate") as tx:
        tx.delete("incoming/today.bin")
        tx.write("archive/2026-11-26.bin", big)  # moved
        tx.write("backup/today-copy.bin", big)   # and copied
        for i in range(5):                        # a whole directory moved
            tx.delete(f"logs/day{i}.txt")
            tx.write(f"archive/logs/day{i}.txt", origin.read(f"logs/day{i}.txt"))
    result = fetch_from(b, peer, "origin")
    assert len(result.stats.commits) == 1
    assert result.stats.bytes < 20_000, result.stats  # directories and the commit, not 4 MB
    head = b.refs.get_ref("remotes/origin/main")
    assert head is not None
    assert b.read("archive/2026-11-26.bin", rev=cid_str(head)) == big
    assert b.read("backup/today-copy.bin", rev=cid_str(head)) == big
    assert b.read("archive/logs/day3.txt", rev=cid_str(head)) == origin.read("archive/logs/day3.txt")
    assert b.fsck().ok
    b.close()


def test_a_local_peer_whose_store_cannot_be_opened_says_so(tmp_path: Path, origin: Repository) -> None:
    """Only a path without a repository is 'no casync repository'; a damaged one names its store."""
    with pytest.raises(RemoteError, match="no casync repository"):
        LocalPeer(str(tmp_path / "nothing-here"))
    broken = Repository.init(tmp_path / "broken", replica="x")
    broken.close()
    (tmp_path / "broken" / ".casync" / "db" / "data.mdb").write_bytes(b"not an LMDB file" * 1000)
    with pytest.raises(StorageError, match="cannot open the store"):
        LocalPeer(str(tmp_path / "broken"))
