"""Strong branches on a real 3-member etcd cluster and a real Kubo node (docs/design.md,
"Strong branches"): acknowledged moves, lost compare-and-swaps, partitions, and reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import RefConflict, RemoteError, StrongRefMoved, StrongUnavailable, UsageError
from casync.model.cid import Cid, cid_str
from casync.repo.strong import PENDING_PREFIX
from casync.settings import check_value
from casync.store.etcd import EtcdClient
from casync.transports.peer.exchange import LocalPeer, push_to

from .conftest import Cli, write
from .etcd_fixture import CutProxy, EtcdCluster
from .kubo_fixture import Kubo

REPO_ID = "5" * 32


def strong_config(endpoints: list[str], kubo: Kubo | None, timeout: float = 3.0,
                  branches: tuple[str, ...] = ("release",)) -> dict[str, object]:
    return {"branches": list(branches), "etcd_endpoints": endpoints, "timeout": timeout,
            "ipfs_api": kubo.api_url if kubo is not None else None}


def replica(root: Path, name: str, config: dict[str, object], bare: bool = True) -> Repository:
    repo = Repository.init(root / name, replica=name, repository_id=REPO_ID, bare=bare)
    repo.set_config("strong", config)
    return repo


def commit(repo: Repository, path: str, data: bytes, branch: str = "release") -> Cid:
    with repo.transaction(branch, f"{repo.replica} writes {path}") as tx:
        tx.write(path, data)
    assert tx.commit is not None
    return tx.commit


@pytest.fixture
def replicas(tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo) -> Iterator[list[Repository]]:
    repos = [replica(tmp_path, f"site-{n}", strong_config(etcd_cluster.endpoints, kubo)) for n in "abc"]
    try:
        yield repos
    finally:
        for r in repos:
            r.close()


def test_config_is_checked() -> None:
    check_value("strong", {"branches": ["release"], "etcd_endpoints": ["http://127.0.0.1:2379"]})
    for bad in ({"branches": ["release"]}, {"branches": "release", "etcd_endpoints": ["http://h:1"]},
                {"branches": ["x"], "etcd_endpoints": ["https://h:1"]}, {"branhces": []},
                {"branches": ["x"], "etcd_endpoints": ["http://h:1"], "timeout": 0}):
        with pytest.raises(UsageError, match="config strong"):
            check_value("strong", bad)


def test_a_move_is_acknowledged_by_etcd_and_read_everywhere(replicas: list[Repository],
                                                            etcd_cluster: EtcdCluster) -> None:
    a, b, _ = replicas
    first = commit(a, "config.json", b'{"v": 1}')
    key = f"/casync/{REPO_ID}/heads/release".encode()
    stored = EtcdClient(etcd_cluster.endpoints).get(key)
    assert stored.value is not None and json.loads(stored.value) == {"commit": cid_str(first), "replica": "site-a"}
    # b never saw the commit: its read of the branch is etcd's, its blocks come from Kubo
    assert b.branches() == {}
    assert b.log("release")[0].cid == first
    assert b.read("config.json", "release") == b'{"v": 1}'
    second = commit(b, "config.json", b'{"v": 2}')
    assert b.load_commit(second).parents == (first,)
    assert a.resolve("release") == second  # linearizable: a sees b's acknowledged move at once


def test_a_lost_swap_is_refused_and_keeps_the_commit(replicas: list[Repository]) -> None:
    a, b, _ = replicas
    base = commit(a, "f", b"1")
    assert b.resolve("release") == base
    won = commit(a, "f", b"2")
    # b moves from what it read before a's second move: the swap loses, nothing is merged
    lost = b.make_commit(b.tree_of(base), [base], "stale")
    with pytest.raises(StrongRefMoved) as info:
        b.update_branch("release", base, lost, "commit: stale")
    assert "moved on etcd" in info.value.message and "site-a" in info.value.message
    assert info.value.hint is not None and f"{PENDING_PREFIX}release" in info.value.hint
    assert b.refs.get_ref(f"{PENDING_PREFIX}release") == lost
    assert a.resolve("release") == won and b.resolve("release") == won
    assert [e.cid for e in b.log("release")] == [won, base]  # one chain, no merge


def test_creating_a_strong_branch_compares_absence(tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo) -> None:
    cfg = strong_config(etcd_cluster.endpoints, kubo, branches=("*",))
    a, b = replica(tmp_path, "site-a", cfg), replica(tmp_path, "site-b", cfg)
    try:
        root_a = commit(a, "x", b"a", branch="new")
        with b.transaction("other", "b's") as tx:
            tx.write("y", b"b")
        mine = tx.commit
        assert mine is not None
        with pytest.raises(StrongRefMoved, match="expected nothing"):
            b.update_branch("new", None, mine, "branch: created")
        assert b.refs.get_ref(f"{PENDING_PREFIX}new") == mine
        assert a.resolve("new") == root_a
    finally:
        a.close()
        b.close()


def test_cli_commit_on_a_moved_or_cut_off_strong_branch(tmp_path: Path, etcd_cluster: EtcdCluster,
                                                        kubo: Kubo) -> None:
    a = replica(tmp_path, "site-a", strong_config(etcd_cluster.endpoints, kubo))
    proxies = [CutProxy(("127.0.0.1", m.client)) for m in etcd_cluster.members]
    wt = tmp_path / "wt"
    wt.mkdir()
    cli = Cli(wt)
    try:
        cli("init", "--replica", "site-w", "--repository-id", REPO_ID, "--branch", "release")
        cli("config", "strong", json.dumps(strong_config([p.url for p in proxies], kubo, timeout=2.0)))
        write(wt, "f.txt", "one\n")
        cli("commit", "-m", "one")
        commit(a, "other.txt", b"a's")  # another site moves release
        write(wt, "f.txt", "two\n")
        # the linearizable read sees the move before anything is committed
        result = cli("commit", "-m", "two", ok=False)
        assert result.exit_code == 1
        assert result.stderr.startswith("error: branch release moved since the working tree was checked out")
        assert (wt / "f.txt").read_text() == "two\n"
        cli("checkout", "release")  # reads the head from etcd (blocks from Kubo), keeps the edit
        assert (wt / "other.txt").read_bytes() == b"a's" and (wt / "f.txt").read_text() == "two\n"
        cli("commit", "-m", "two again")
        assert "two again" in cli("log", "--oneline", "release").stdout
        with Repository.open(wt) as w:
            assert a.resolve("release") == w.resolve("release")
        for p in proxies:
            p.cut()
        write(wt, "f.txt", "three\n")
        result = cli("commit", "-m", "three", ok=False)
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("error: strong branch release cannot be read: this site is cut off from the "
                                   "etcd majority"), result.stderr
        assert lines[1].startswith("hint: ") and "eventual branches keep working offline" in lines[1], result.stderr
        assert len(lines) == 2, result.stderr
        assert (wt / "f.txt").read_text() == "three\n"
        for p in proxies:
            p.heal()
        assert "f.txt" in cli("status").stdout  # still uncommitted, nothing lost
    finally:
        a.close()
        for p in proxies:
            p.close()


def test_a_cut_off_site_fails_in_bounded_time_and_keeps_working_offline(
        tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo) -> None:
    proxies = [CutProxy(("127.0.0.1", m.client)) for m in etcd_cluster.members]
    site = replica(tmp_path, "site-c", strong_config([p.url for p in proxies], kubo, timeout=2.0), bare=False)
    try:
        before = commit(site, "f", b"1")
        for p in proxies:
            p.cut()
        t0 = time.monotonic()
        with pytest.raises(StrongUnavailable) as info:
            commit(site, "f", b"2")
        took = time.monotonic() - t0
        assert took < 2.0 * 2 + 5, took  # one deadline for the read (the write never starts)
        assert "cut off from the etcd majority" in info.value.message
        assert info.value.hint is not None and "eventual branches keep working offline" in info.value.hint
        # an eventual branch of the same repository commits and syncs offline (to a peer here)
        offline = commit(site, "notes.txt", b"offline", branch="main")
        assert site.resolve("main") == offline
        Repository.init(tmp_path / "peer", replica="site-p", repository_id=REPO_ID, bare=True).close()
        peer = LocalPeer(str(tmp_path / "peer"))
        try:
            push_to(site, peer, "peer", "main")
            assert peer.repo.resolve("main") == offline
        finally:
            peer.close()
        for p in proxies:
            p.heal()
        assert site.resolve("release") == before
    finally:
        site.close()
        for p in proxies:
            p.close()


def test_a_site_cut_off_between_read_and_swap_keeps_its_commit(
        tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo) -> None:
    proxies = [CutProxy(("127.0.0.1", m.client)) for m in etcd_cluster.members]
    site = replica(tmp_path, "site-c", strong_config([p.url for p in proxies], kubo, timeout=2.0))
    other = replica(tmp_path, "site-d", strong_config(etcd_cluster.endpoints, kubo))
    try:
        base = commit(site, "f", b"1")
        assert site.resolve("release") == base  # read: the swap needs no second read
        mine = site.make_commit(site.tree_of(base), [base], "made before the cut")
        for p in proxies:
            p.cut()
        t0 = time.monotonic()
        with pytest.raises(StrongUnavailable, match="may have reached etcd"):
            site.update_branch("release", base, mine, "commit")
        assert time.monotonic() - t0 < 2.0 + 5
        assert site.refs.get_ref(f"{PENDING_PREFIX}release") == mine
        assert other.resolve("release") == base  # the majority never saw it
    finally:
        site.close()
        other.close()
        for p in proxies:
            p.close()


def test_a_push_into_a_strong_branch_is_a_swap_on_etcd(tmp_path: Path, etcd_cluster: EtcdCluster,
                                                       kubo: Kubo) -> None:
    hub = replica(tmp_path, "hub", strong_config(etcd_cluster.endpoints, kubo))
    hub.close()
    other = replica(tmp_path, "site-o", strong_config(etcd_cluster.endpoints, kubo))
    edge = Repository.init(tmp_path / "edge", replica="site-e", repository_id=REPO_ID, bare=True)  # eventual here
    try:
        pushed = commit(edge, "f", b"from the edge")
        peer = LocalPeer(str(tmp_path / "hub"))
        try:
            push_to(edge, peer, "hub", "release")
        finally:
            peer.close()
        assert other.resolve("release") == pushed  # the hub's move went through etcd
        commit(other, "f", b"moved elsewhere")
        later = commit(edge, "f", b"edge again")
        peer = LocalPeer(str(tmp_path / "hub"))
        try:
            with pytest.raises(RefConflict, match="non-fast-forward"):  # of the head etcd holds, read by the hub
                push_to(edge, peer, "hub", "release")
        finally:
            peer.close()
        assert other.resolve("release") != later
    finally:
        other.close()
        edge.close()


def test_the_etcd_adapter_fails_over_and_serves_threads(etcd_cluster: EtcdCluster) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = EtcdClient([closed, *etcd_cluster.endpoints], timeout=5.0)
    try:
        first = client.compare_and_swap(b"/t/k", 0, b"v0")
        assert first.succeeded
        assert not client.compare_and_swap(b"/t/k", 0, b"again").succeeded  # absence compared
        errors: list[BaseException] = []

        def bump(n: int) -> None:
            try:
                for _ in range(20):
                    while True:
                        kv = client.get(b"/t/k")
                        if client.compare_and_swap(b"/t/k", kv.mod_revision, f"{n}".encode()).succeeded:
                            break
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=bump, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)
        assert client.get(b"/t/k").mod_revision == first.revision + 80  # every swap counted once
        leader = etcd_cluster.leader()
        etcd_cluster.kill_member(leader)  # the election: 503s, then a new leader; the client waits it out
        assert client.compare_and_swap(b"/t/k", client.get(b"/t/k").mod_revision, b"after").succeeded
    finally:
        client.close()
    dead = EtcdClient([closed], timeout=0.5)
    with pytest.raises(StrongUnavailable, match="no etcd member"):
        dead.get(b"/t/k")


def test_an_existing_branch_becomes_strong(tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo) -> None:
    site = Repository.init(tmp_path / "site-a", replica="site-a", repository_id=REPO_ID, bare=True)
    other = replica(tmp_path, "site-b", strong_config(etcd_cluster.endpoints, kubo))
    try:
        before = [commit(site, "f", f"{n}".encode()) for n in range(3)]  # eventual, never on Kubo
        site.set_config("strong", strong_config(etcd_cluster.endpoints, kubo))
        assert site.resolve("release") == before[-1]  # not in etcd yet: the local branch
        assert other.branches() == {} and other.refs.get_ref("heads/release") is None
        first = commit(site, "f", b"strong now")  # creates the key; the whole history goes to Kubo
        assert [e.cid for e in other.log("release")] == [first, *reversed(before)]
    finally:
        site.close()
        other.close()


def test_a_move_whose_blocks_cannot_be_published_does_not_happen(tmp_path: Path, etcd_cluster: EtcdCluster,
                                                                 kubo: Kubo) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    site = replica(tmp_path, "site-a", strong_config(etcd_cluster.endpoints, kubo))
    try:
        base = commit(site, "f", b"1")
        cfg = strong_config(etcd_cluster.endpoints, None)
        cfg["ipfs_api"] = closed
        site.set_config("strong", cfg)
        mine = site.make_commit(site.tree_of(base), [base], "not published")
        with pytest.raises(RemoteError, match="could not be published"):
            site.update_branch("release", base, mine, "commit")
        assert site.refs.get_ref(f"{PENDING_PREFIX}release") == mine
        assert site.resolve("release") == base  # etcd never saw it
    finally:
        site.close()


@pytest.mark.parametrize("ci", ["1", ""])
def test_a_missing_etcd_fails_under_ci_and_is_skipped_otherwise(ci: str) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CASYNC_REQUIRE_KUBO")}
    env.update({"CASYNC_ETCD_BIN": "/nonexistent/etcd", "CI": ci})
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          "tests/test_strong.py::test_the_etcd_adapter_fails_over_and_serves_threads"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert "etcd v3.6.16 not built" in run.stdout, run.stdout
    if ci:
        assert run.returncode == 1 and "this is a failure" in run.stdout, run.stdout
    else:
        assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout
