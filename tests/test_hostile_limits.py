"""Hostile input that is not a block: a peer's repository id, JSON nested 100,000 deep, a
``Content-Length`` of '²'; and legal objects that would do harm: a tiny bundle that checks out
as a huge file (refused before writing when over the limit or the free space; clean in
``status`` when checked out), a commit dated far in the future (refused, or clamped in lww)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from casync import Repository
from casync.errors import CasyncError, FutureCommit, InvalidObject, RemoteError
from casync.merge.threeway import MergeInput, PolicyRules, Write, merge_trees
from casync.model.cid import DAG_PB, RAW, Cid, cid_str, compute_cid
from casync.model.commit import Commit, HybridTime, encode_commit
from casync.model.objects import UNIXFS_FILE, PBLink, PBNode, UnixFSData, encode_pbnode, encode_unixfs
from casync.transports.peer.exchange import PeerInfo
from casync.transports.peer.http import HttpPeer
from casync.transports.peer.server import PeerApp
from casync.trees.unixfs import Entry, build_tree

from .conftest import Cli, age, serving
from .hostile.corpus import RID
from .hostile.evil_peer import evil_peer

TOKEN = "limits-token"


def _token(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token)
    return path


# --- identities and JSON from a peer -----------------------------------------------------------


@pytest.mark.parametrize("rid", ["../x", "..", "a/b", "", "x" * 200, ".hidden"])
def test_a_peer_repository_id_that_is_not_an_id_is_refused(rid: str, tmp_path: Path) -> None:
    with evil_peer() as peer:
        peer.info = json.dumps({"repository_id": rid, "replica": "evil", "read_only": False,
                                "refs": {}, "hash": "blake3", "chunker": "cdc"}).encode()
        (tmp_path / "here").mkdir()
        result = Cli(tmp_path / "here")("clone", peer.url, str(tmp_path / "c"), "--token-file",
                                        str(_token(tmp_path, peer.token)), ok=False)
    assert result.exit_code == 1 and "is not a valid id" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c" / ".casync").exists()
    assert sorted(os.listdir(tmp_path)) in (["here", "token"], ["c", "here", "token"])
    with pytest.raises(RemoteError, match="not a valid id"):
        PeerInfo.from_json({"repository_id": rid, "replica": "r", "read_only": False, "refs": {}})


def test_a_bundle_repository_id_that_is_not_an_id_is_refused(tmp_path: Path, cli: Cli) -> None:
    from casync.model import cbor
    from casync.model.car import CarWriter
    from casync.model.cid import DAG_CBOR

    manifest = cbor.encode({"casync_bundle": 1, "repository_id": "../x", "refs": {}, "prerequisites": []})
    mcid = compute_cid(DAG_CBOR, manifest)
    path = tmp_path / "evil.car"
    with open(path, "wb") as f:
        CarWriter(f, [mcid]).add(mcid, manifest)
    result = cli("clone", str(path), str(tmp_path / "c"), ok=False)
    assert result.exit_code == 1 and "not a valid id" in result.stderr and cid_str(mcid) in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "c" / ".casync").exists()


def test_info_nested_100000_deep_is_a_typed_error(tmp_path: Path) -> None:
    with evil_peer() as peer:
        peer.info = b"[" * 100_000 + b"]" * 100_000
        client = HttpPeer(peer.url, peer.token)
        with pytest.raises(RemoteError, match="nests deeper"):
            client.info()
        client.close()


def test_a_request_nested_100000_deep_gets_400_and_the_server_lives_on(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "s", replica="s", bare=True)
    try:
        with serving(repo, TOKEN) as srv:
            host, port = srv.server_address[:2]
            body = b'{"haves": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            for path in ("/v1/negotiate", "/v1/fetch", "/v1/blocks"):
                with socket.create_connection((str(host), int(port)), timeout=10) as s:
                    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                    reply = b"".join(iter(lambda: s.recv(65536), b""))
                assert reply.startswith(b"HTTP/1.1 400") and b"nests deeper" in reply, reply[:300]
            client = HttpPeer(f"http://{host}:{port}", TOKEN)
            assert client.info().repository_id == repo.repo_id
            client.close()
    finally:
        repo.close()


@pytest.mark.parametrize("length", ["\u00b2", "\u0663", "1_0", "-1", "0x10", "9" * 30])
def test_a_content_length_that_is_not_ascii_digits_gets_400(length: str, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "s", replica="s", bare=True)
    try:
        app = PeerApp(repo, TOKEN.encode())
        status: list[str] = []
        environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/negotiate", "QUERY_STRING": "",
                                   "CONTENT_LENGTH": length, "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
                                   "wsgi.input": io.BytesIO(b'{"haves": []}')}
        body = b"".join(app(environ, lambda s, h: status.append(s)))
        assert status[0].startswith(("400", "413")), (status, body)
        with serving(repo, TOKEN) as srv:  # and over a socket, through waitress's parser
            host, port = srv.server_address[:2]
            with socket.create_connection((str(host), int(port)), timeout=10) as s:
                s.sendall(b"POST /v1/negotiate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                          + b"\r\nContent-Length: " + length.encode("utf-8") + b"\r\n\r\n{}")
                reply = s.recv(65536)
            assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413")), reply[:200]
    finally:
        repo.close()


# --- a tiny bundle, a huge file ----------------------------------------------------------------


def _dedup_file(repo: Repository, leaf: bytes, fanout: int, levels: int = 1) -> Entry:
    """A file of one leaf linked ``fanout`` times per level (legal deduplication)."""
    cid, size = compute_cid(RAW, leaf), len(leaf)
    repo.blocks.put(cid, leaf)
    for _ in range(levels):
        links = tuple(PBLink(cid, b"", size) for _ in range(fanout))
        block = encode_pbnode(PBNode(links, encode_unixfs(UnixFSData(UNIXFS_FILE, filesize=size * fanout,
                                                                       blocksizes=(size,) * fanout))))
        cid, size = compute_cid(DAG_PB, block), size * fanout
        repo.blocks.put(cid, block)
    return Entry(cid, "file", size)


def _bundle_with(tmp_path: Path, entry_of: Any) -> tuple[Path, Cid]:
    """A bundle of one commit whose tree holds ``big.bin``; returns (bundle, file CID)."""
    src = Repository.init(tmp_path / "src", replica="src", repository_id=RID, bare=True)
    try:
        entry = entry_of(src)
        tree = build_tree(src.blocks, {"big.bin": entry, "small.txt": _small(src)}, src.hash_name)
        src.commit_tree(tree.cid, "a tiny bundle", branch="main")
        Cli(tmp_path)("-C", str(tmp_path / "src"), "bundle", "create", str(tmp_path / "b.car"), "main")
        return tmp_path / "b.car", entry.cid
    finally:
        src.close()


def _small(repo: Repository) -> Entry:
    cid = compute_cid(RAW, b"small\n")
    repo.blocks.put(cid, b"small\n")
    return Entry(cid, "file", 6)


def test_a_file_over_the_configured_limit_is_refused_before_writing(tmp_path: Path) -> None:
    bundle, big = _bundle_with(tmp_path, lambda r: _dedup_file(r, os.urandom(1 << 20), 600))  # 1 MB -> 629 MB
    assert bundle.stat().st_size < 2 << 20
    victim = Repository.init(tmp_path / "v", replica="v", repository_id=RID)
    victim.set_config("limits", {"max_file_bytes": 100 << 20})
    victim.close()
    cli = Cli(tmp_path / "v")
    cli("bundle", "unbundle", str(bundle))
    result = cli("checkout", "bundles/main", ok=False)
    assert result.exit_code == 1 and "max_file_bytes" in result.stderr and cid_str(big) in result.stderr
    assert sorted(os.listdir(tmp_path / "v")) == [".casync"]  # nothing written, not even small.txt
    with Repository.open(tmp_path / "v") as repo:
        assert repo.head() is None


def test_a_file_beyond_the_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    # one 1 MiB leaf, 4096 links to it, 4096 links to that: 16 TiB from a bundle of 300 KB
    bundle, big = _bundle_with(tmp_path, lambda r: _dedup_file(r, os.urandom(1 << 20), 4096, levels=2))
    assert shutil.disk_usage(tmp_path).free < (1 << 20) * 4096 * 4096
    clone = tmp_path / "clone"
    result = Cli(tmp_path)("clone", str(bundle), str(clone), ok=False)
    assert result.exit_code == 1 and "free" in result.stderr and "nothing was written" in result.stderr
    assert cid_str(big) in result.stderr
    assert not (clone / "big.bin").exists() and not (clone / "small.txt").exists()


@pytest.mark.parametrize("layout", ["one leaf linked 40 times", "fixed 100 KiB chunks (another importer)"])
def test_a_file_of_another_layout_is_clean_after_checkout(layout: str, tmp_path: Path) -> None:
    data = os.urandom(64 << 10)

    def make(repo: Repository) -> Entry:
        if layout.startswith("one leaf"):
            return _dedup_file(repo, data, 40)
        content = os.urandom(2 << 20)
        (tmp_path / "expected").write_bytes(content)
        pieces = [content[i:i + (100 << 10)] for i in range(0, len(content), 100 << 10)]
        for piece in pieces:
            repo.blocks.put(compute_cid(RAW, piece), piece)
        links = tuple(PBLink(compute_cid(RAW, p), b"", len(p)) for p in pieces)
        block = encode_pbnode(PBNode(links, encode_unixfs(UnixFSData(UNIXFS_FILE, filesize=len(content),
                                                                       blocksizes=tuple(map(len, pieces))))))
        cid = compute_cid(DAG_PB, block)
        repo.blocks.put(cid, block)
        return Entry(cid, "file", len(content))

    bundle, big = _bundle_with(tmp_path, make)
    clone = tmp_path / "clone"
    Cli(tmp_path)("clone", str(bundle), str(clone))
    cli = Cli(clone)
    assert json.loads(cli("status", "--json").stdout)["clean"]  # racily clean: compared by content
    age(clone)
    assert json.loads(cli("status", "--json").stdout)["clean"]
    assert json.loads(cli("status", "--json").stdout)["clean"]  # and from the stat cache
    nothing = cli("commit", "-m", "nothing changed", ok=False)
    assert nothing.exit_code == 1 and "nothing to commit" in nothing.stderr
    with Repository.open(clone) as repo:
        assert repo.entry_at("HEAD:big.bin")[2].cid == big  # the committed layout is kept
    with open(clone / "big.bin", "r+b") as f:  # a real edit is still seen
        f.seek(1000)
        old = f.read(1)
        f.seek(1000)  # read(1) moved on: write over the byte just read, so the file surely changes
        f.write(b"\x00" if old != b"\x00" else b"\x01")
    assert json.loads(cli("status", "--json").stdout)["modified"] == ["big.bin"]


# --- a commit from the future ------------------------------------------------------------------


def _future_bundle(tmp_path: Path, ahead_ms: int) -> tuple[Path, Cid]:
    import time

    from casync.model.cid import DAG_CBOR
    src = Repository.init(tmp_path / "fsrc", replica="fast-clock", repository_id=RID, bare=True)
    try:
        tree = build_tree(src.blocks, {"x.txt": _small(src)}, src.hash_name)
        c = Commit(tree=tree.cid, parents=(), clock={"fast-clock": 1},
                   time=HybridTime(int(time.time() * 1000) + ahead_ms, 0), replica="fast-clock",
                   author="a", message="from a year ahead", generation=1)
        block = encode_commit(c)
        cid = compute_cid(DAG_CBOR, block)
        src.blocks.put(cid, block)
        src.blocks.flush()
        src.refs.cas_ref("heads/main", None, cid, "test")
        Cli(tmp_path)("-C", str(tmp_path / "fsrc"), "bundle", "create", str(tmp_path / "f.car"), "main")
        return tmp_path / "f.car", cid
    finally:
        src.close()


def test_a_commit_beyond_the_skew_tolerance_is_refused_by_default(tmp_path: Path) -> None:
    bundle, cid = _future_bundle(tmp_path, 365 * 86_400_000)
    victim = Repository.init(tmp_path / "v", replica="v", repository_id=RID)
    try:
        from casync.transports.bundle import read_bundle
        with pytest.raises(FutureCommit, match=cid_str(cid)):
            read_bundle(victim, bundle)
        assert victim.refs.list_refs() == {} and not victim.blocks.has(cid)
        victim.set_config("limits", {"max_future_ms": 400 * 86_400_000})  # a tolerance that covers it
        read_bundle(victim, bundle)
        assert victim.refs.get_ref("bundles/main") == cid
    finally:
        victim.close()


def test_clamp_accepts_it_but_caps_its_weight_in_lww(tmp_path: Path) -> None:
    bundle, cid = _future_bundle(tmp_path, 365 * 86_400_000)
    victim = Repository.init(tmp_path / "v", replica="v", repository_id=RID)
    try:
        victim.set_config("limits", {"future_commits": "clamp"})
        from casync.transports.bundle import read_bundle
        read_bundle(victim, bundle)
        assert victim.refs.get_ref("bundles/main") == cid
    finally:
        victim.close()
    now = HybridTime(2_000_000, 0)
    ahead = Write(HybridTime(10**12, 0), "fast-clock")
    mine = Write(HybridTime(2_000_001, 0), "v")
    e1, e2, base = (Entry(compute_cid(RAW, x), "file", 1) for x in (b"1", b"2", b"0"))
    inp = MergeInput({"p": base}, {"p": e1}, {"p": e2}, {("p", "ours"): mine, ("p", "theirs"): ahead})
    assert merge_trees(inp).tree["p"] == e2  # as is, the clock a year ahead wins
    inp.rules = PolicyRules(time_ceiling_ms=now.wall_ms)
    assert merge_trees(inp).tree["p"] == e1  # clamped to now, the later real write wins
    assert isinstance(FutureCommit("x"), InvalidObject) and isinstance(FutureCommit("x"), CasyncError)


def test_a_json_file_nested_too_deep_falls_back_to_the_file_policy() -> None:
    from casync.merge.threeway import json_merge

    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert json_merge(b"{}", deep, b'{"b": 1}', "ours") is None
    nested = b'{"a": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}"  # parses, too deep to merge by key
    json_merge(b"{}", nested, b'{"b": 1}', "ours")  # merged or None, never a RecursionError
