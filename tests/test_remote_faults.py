"""Bad input and faults: unknown schemes, a node that is down, a node killed mid-push,
head records naming incomplete DAGs or holding garbage."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import RemoteError
from casync.model.cid import cid_str
from casync.store.ipfs import IpfsBlockStore, IpfsClient, RetryPolicy
from casync.transports.ipfs import push, set_remote

from .conftest import Cli, write
from .kubo_fixture import Kubo, restart

FAST = RetryPolicy(attempts=2, initial=0.05, max_delay=0.1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _repo_with_commit(tmp_path: Path, name: str = "a", replica: str = "site-a", size: int = 10_000) -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    cli = Cli(tmp_path / name)
    write(cli.cwd, "f.bin", os.urandom(size))
    cli("commit", "-m", "one")
    return cli


@pytest.mark.parametrize("url", ["foo://127.0.0.1:5001", "ipfs+ftp://127.0.0.1:5001", "ipfs+http://127.0.0.1",
                                 "ipfs+http://127.0.0.1:5001/bad id", "ipfs+http://127.0.0.1:5001#notacid",
                                 "ipfs+http://:5001", "ipfs+http://127.0.0.1:99999", "ipfs+", "ipfs+http"])
def test_bad_remote_urls_are_usage_errors(tmp_path: Path, url: str) -> None:
    a = _repo_with_commit(tmp_path)
    r = a("remote", "add", "x", url, ok=False)
    assert r.exit_code == 2 and url in r.stderr
    r = Cli(tmp_path)("clone", url, "c", ok=False)
    assert r.exit_code == 2 and url in r.stderr
    assert not (tmp_path / "c").exists()


def test_peer_remotes_share_the_config_without_confusing_ipfs_commands(tmp_path: Path) -> None:
    a = _repo_with_commit(tmp_path)
    a("remote", "add", "origin", "ipfs+http://127.0.0.1:5001", "--gateway", "http://127.0.0.1:8080")
    a("remote", "add", "peer", str(tmp_path / "elsewhere"))
    a("remote", "add", "served", "https://example.invalid:8470")
    listing = {r["name"]: r for r in json.loads(a("remote", "--json").stdout)}
    assert listing["origin"]["kind"] == "ipfs" and listing["peer"]["kind"] == "peer"
    assert listing["served"]["url"] == "https://example.invalid:8470"
    assert "(casync peer)" in a("remote", "-v").stdout
    for cmd in (("url", "HEAD:f.bin", "--remote", "peer"), ("remote", "show", "served")):
        r = a(*cmd, ok=False)
        assert r.exit_code == 2 and "is a casync peer" in r.stderr, cmd
    assert a("url", "HEAD:f.bin").stdout.startswith("http://127.0.0.1:8080/ipfs/")
    a("remote", "set-url", "peer", "ipfs+http://127.0.0.1:5002")
    assert json.loads(a("remote", "--json").stdout)[1]["kind"] == "ipfs"
    a("remote", "remove", "served")
    assert [r["name"] for r in json.loads(a("remote", "--json").stdout)] == ["origin", "peer"]


def test_node_down_fails_cleanly_naming_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _repo_with_commit(tmp_path)
    url = f"ipfs+http://127.0.0.1:{_closed_port()}"
    a("remote", "add", "origin", url)
    t0 = time.monotonic()
    r = a("push", ok=False)  # default policy: retried with backoff, then a clear error
    assert 2.0 < time.monotonic() - t0 < 20
    assert r.exit_code == 1 and "gave up after 5 attempts" in r.stderr
    monkeypatch.setenv("CASYNC_REMOTE_ATTEMPTS", "1")
    for cmd in (("push",), ("fetch",), ("pull",), ("remote", "show")):
        r = a(*cmd, ok=False)
        assert r.exit_code == 1, cmd
        assert f"http://127.0.0.1:{url.rsplit(':', 1)[1]}" in r.stderr and "cannot connect" in r.stderr, cmd
        assert "Traceback" not in r.stderr
    assert a("branch", "--json").stdout.count('"name"') == 1
    assert Repository.open(a.cwd).refs.list_refs("remotes/") == {}
    r = Cli(tmp_path)("clone", url, "c", ok=False)
    assert r.exit_code == 1 and "cannot connect" in r.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.kubo
def test_gateway_port_given_as_api_port(tmp_path: Path, kubo: Kubo) -> None:
    if not kubo.gateway_url:
        pytest.skip("no gateway URL")
    a = _repo_with_commit(tmp_path)
    a("remote", "add", "origin", "ipfs+" + kubo.gateway_url)
    r = a("push", ok=False)
    assert r.exit_code == 1 and kubo.gateway_url in r.stderr and "RPC API port" in r.stderr


@pytest.mark.kubo
def test_kubo_killed_mid_push_then_rerun_sends_only_what_is_missing(
        tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    k = kubo_factory()
    a = _repo_with_commit(tmp_path, size=5_000)
    a("remote", "add", "origin", k.remote_url)
    first = json.loads(a("push", "--json").stdout)
    write(a.cwd, "big.bin", os.urandom(3_000_000))  # ~12 CDC chunks
    a("commit", "-m", "big")
    repo = Repository.open(a.cwd)
    batches: list[int] = []

    def kill_after_first_batch(blocks: int, size: int) -> None:
        batches.append(size)
        if len(batches) == 1:
            assert k.node is not None
            k.node.stop()

    try:
        with pytest.raises(RemoteError) as err:
            push(repo, batch_bytes=400_000, retry=FAST, on_batch=kill_after_first_batch)
        # a stopping node refuses connections, or first answers "repo not open": both transient
        assert err.value.transient
        assert "cannot connect" in str(err.value) or "repo not open" in str(err.value)
        # batches confirmed before the failure (three uploads run at once: the two others in
        # flight when the node stopped may have finished)
        assert 1 <= len(batches) <= 3
        sent_before_kill = sum(batches)
        assert repo.refs.get_ref("remotes/origin/site-a/main") is not None
        assert cid_str(repo.refs.get_ref("remotes/origin/site-a/main") or b"") == first["head"]

        restart(k)
        set_remote(repo, "origin", k.remote_url)
        # the head record on the node still names the first push's head
        record = json.loads(k.ipfs("files", "read", f"/casync/{repo.repo_id}/heads/site-a"))
        assert record["heads"]["main"]["commit"] == first["head"] and record["seq"] == 1

        res = push(repo, batch_bytes=400_000, retry=FAST, measure=True)
        assert res.resumed and res.skipped_present >= 1
        assert res.bytes_min is not None
        # only what was missing: confirmed batches are not sent again (the node is asked)
        assert 0 < res.bytes_sent <= res.bytes_min - sent_before_kill + 1024
        head = repo.refs.get_ref("heads/main")
        assert head is not None and res.head == head and res.seq == 2
        record = json.loads(k.ipfs("files", "read", f"/casync/{repo.repo_id}/heads/site-a"))
        assert record["heads"]["main"]["commit"] == cid_str(head)
        assert cid_str(head) in k.ipfs("pin", "ls", "--type=recursive").decode()
        again = push(repo)
        assert again.up_to_date and again.blocks_sent == 0 and not again.resumed
    finally:
        repo.close()
    Cli(tmp_path)("clone", f"{k.remote_url}/{repo.repo_id}", "b")
    assert (tmp_path / "b/big.bin").read_bytes() == (a.cwd / "big.bin").read_bytes()


def _pushed(tmp_path: Path, kubo: Kubo) -> str:
    """Replica site-a with one commit, pushed to ``kubo``: the repository id."""
    a = _repo_with_commit(tmp_path)
    a("remote", "add", "origin", kubo.remote_url)
    a("push")
    return a("config", "repository_id").stdout.strip()


@pytest.mark.kubo
def test_record_naming_an_incomplete_dag_is_reported_and_refs_stay(tmp_path: Path, kubo: Kubo) -> None:
    rid = _pushed(tmp_path, kubo)
    Cli(tmp_path)("clone", f"{kubo.remote_url}/{rid}", "b", "--replica", "site-b")
    b = Repository.open(tmp_path / "b")
    refs_before = b.refs.list_refs()
    b.close()

    # a "ghost" replica publishes a head whose file leaf never reached the node
    ghost = Repository.init(tmp_path / "ghost", replica="ghost", repository_id=rid)
    with ghost.transaction(message="ghost") as tx:
        tx.write("lost.bin", os.urandom(5000))
    head = ghost.refs.get_ref("heads/main")
    assert head is not None
    commit = ghost.load_commit(head)
    from casync.trees.unixfs import read_dir

    leaf = read_dir(ghost.blocks, commit.tree)[0].cid
    store = IpfsBlockStore(IpfsClient(kubo.api_url))
    for cid in (head, commit.tree):
        store.put(cid, ghost.blocks.get(cid))
    store.flush()
    store.close()
    record = {"format": "casync-heads/1", "repository": rid, "replica": "ghost", "seq": 1, "time_ms": 1,
              "hash": "blake3", "chunker": "cdc",
              "heads": {"main": {"commit": cid_str(head), "generation": 1, "clock": {"ghost": 1}}}}
    kubo.ipfs("files", "write", "--create", "--parents", f"/casync/{rid}/heads/ghost",
              input=json.dumps(record).encode())
    ghost.close()

    b_cli = Cli(tmp_path / "b")
    r = b_cli("fetch", ok=False)
    assert r.exit_code == 1
    assert "ghost/main" in r.stderr and cid_str(leaf) in r.stderr and "missing" in r.stderr
    b = Repository.open(tmp_path / "b")
    try:
        assert b.refs.list_refs() == refs_before
        assert not b.blocks.has(head)  # nothing of the incomplete DAG was kept
        assert not b.blocks.has(commit.tree)
    finally:
        b.close()
    # the other replica's head still fetches; the report is machine-readable too
    out = json.loads(b_cli("fetch", "--json", ok=False).stdout)
    assert out["failed"][0]["replica"] == "ghost" and cid_str(leaf) in out["failed"][0]["error"]
    assert "remotes/origin/site-a/main" in out["unchanged"]


@pytest.mark.kubo
def test_garbage_head_record_is_reported_not_trusted(tmp_path: Path, kubo: Kubo) -> None:
    rid = _pushed(tmp_path, kubo)
    for name, body in (("evil", b'{"format": "casync-heads/1", "repository": "other", "replica": "evil"}'),
                       ("junk", b"\x00\x01not json")):
        kubo.ipfs("files", "write", "--create", "--parents", f"/casync/{rid}/heads/{name}", input=body)
    r = Cli(tmp_path)("clone", f"{kubo.remote_url}/{rid}", "b")
    assert "warning: head record" in r.stderr and "evil" in r.stderr and "junk" in r.stderr
    r = Cli(tmp_path / "b")("fetch", ok=False)
    assert r.exit_code == 1 and "error: head record" in r.stderr and "belongs to repository 'other'" in r.stderr
    b = Repository.open(tmp_path / "b")
    try:
        assert set(b.refs.list_refs("remotes/")) == {"remotes/origin/site-a/main"}
    finally:
        b.close()


@pytest.mark.kubo
def test_a_directory_where_a_head_record_belongs_is_reported_once(tmp_path: Path, kubo: Kubo) -> None:
    rid = _pushed(tmp_path, kubo)
    Cli(tmp_path)("clone", f"{kubo.remote_url}/{rid}", "b", "--replica", "site-b")
    kubo.ipfs("files", "mkdir", "--parents", f"/casync/{rid}/heads/dir")
    out = json.loads(Cli(tmp_path / "b")("fetch", "--json", ok=False).stdout)
    assert len(out["invalid_records"]) == 1, out["invalid_records"]
    assert "heads/dir" in out["invalid_records"][0] and "unreadable" in out["invalid_records"][0]


def test_fetch_rejects_wrong_bytes_naming_the_cid_keeps_complete_parts_and_resumes(tmp_path: Path) -> None:
    """Many blocks in flight over kept-alive connections, one of them forged: the fetch
    fails naming it, stores nothing that would sit above it, keeps what is complete below,
    and a second fetch asks only for what is still missing."""
    from casync.errors import CorruptBlock
    from casync.transports.ipfs import DagFetcher
    from casync.transports.ipfs.push import all_blocks
    from casync.trees.unixfs import read_dir, validated_links

    from .test_ipfs_store import _FakeKubo

    src = Repository.init(tmp_path / "src", replica="src")
    with src.transaction(message="two files") as tx:
        tx.write("big.bin", os.urandom(1_500_000))  # a UnixFS file of several CDC leaves
        tx.write("small.txt", b"small\n")
    head = src.refs.get_ref("heads/main")
    assert head is not None
    good = {cid_str(c): ("200", src.blocks.get(c)) for c in all_blocks(src, [head])}
    entries = {e.name: e.cid for e in read_dir(src.blocks, src.load_commit(head).tree)}
    small = entries["small.txt"]
    forged = dict(good, **{cid_str(small): ("200", b"forged\n")})
    dst = Repository.init(tmp_path / "dst", replica="dst", repository_id=src.repo_id)
    try:
        with _FakeKubo({"/api/v0/block/get": forged}) as fake:
            store = IpfsBlockStore(IpfsClient(fake.url, retry=FAST))
            fetcher = DagFetcher(dst, store, concurrency=8)
            with pytest.raises(CorruptBlock) as err:
                fetcher.fetch(head)
            fetcher.close()
            store.close()
        assert cid_str(small) in str(err.value) and fake.url in str(err.value)
        assert not dst.blocks.has(head) and not dst.blocks.has(src.load_commit(head).tree)
        held = {c for c in all_blocks(src, [head]) if dst.blocks.has(c)}
        for c in held:  # what is kept (e.g. big.bin if it finished first) is complete below
            assert set(validated_links(c, dst.blocks.get(c))) <= held
        with _FakeKubo({"/api/v0/block/get": good}) as fake:
            store = IpfsBlockStore(IpfsClient(fake.url, retry=FAST))
            fetcher = DagFetcher(dst, store, concurrency=8)
            fetcher.fetch(head)
            fetcher.close()
            store.close()
        # the re-run asks for exactly what was not kept, once each
        assert sorted(fake.args) == sorted(cid_str(c) for c in all_blocks(src, [head]) if c not in held)
        assert all(dst.blocks.get(c) == src.blocks.get(c) for c in all_blocks(src, [head]))
    finally:
        src.close()
        dst.close()


@pytest.mark.kubo
def test_node_with_rpc_authorization(tmp_path: Path, kubo_factory: Callable[[], Kubo],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose RPC API requires a secret (API.Authorizations, as ipfs/config sets it
    up when other pods reach the API): refused without CASYNC_KUBO_API_AUTH, with a hint
    naming it; push and clone work with it, in both the bearer and the basic form."""
    kubo_factory()  # skips cleanly where no local Kubo binary exists (CI requires one)
    from .kubo_node import KuboNode

    for secret in ("bearer:s3cret-token", "basic:casync:pa55word"):
        monkeypatch.setenv("CASYNC_KUBO_API_AUTH", secret)
        node = KuboNode(tmp_path / f"node-{secret.split(':')[0]}")
        try:
            assert node.api_url is not None
            work = tmp_path / secret.split(":")[0]
            work.mkdir()
            a = _repo_with_commit(work)
            a("remote", "add", "origin", f"ipfs+{node.api_url}")
            monkeypatch.delenv("CASYNC_KUBO_API_AUTH")
            r = a("push", ok=False)
            assert r.exit_code == 1 and "403" in r.stderr and "CASYNC_KUBO_API_AUTH" in r.stderr
            monkeypatch.setenv("CASYNC_KUBO_API_AUTH", secret)
            a("push")
            rid = a("config", "repository_id").stdout.strip()
            Cli(work)("clone", f"ipfs+{node.api_url}/{rid}", "b")
            assert (work / "b/f.bin").read_bytes() == (a.cwd / "f.bin").read_bytes()
        finally:
            node.stop()


@pytest.mark.kubo
def test_a_restarted_dev_node_keeps_its_urls(kubo_factory: Callable[[], Kubo]) -> None:
    """Remotes configured against a dev node keep working across a restart."""
    k = kubo_factory()
    assert k.node is not None
    before = (k.node.api_url, k.node.gateway_url)
    k.node.stop()
    k.node.start()
    assert (k.node.api_url, k.node.gateway_url) == before
