"""A clone is a new replica: path and HTTP clones refuse a replica id the source's history
or the peer already uses, and fsck reports two commits stamped with one (replica, counter)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from casync import Repository
from casync.model.cid import cid_str
from casync.transports.peer.exchange import LocalPeer, fetch_from

from .conftest import Cli, serving, write
from .kubo_fixture import Kubo

TOKEN = "replica ids are not shared"


def _site(tmp_path: Path, name: str, replica: str) -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    cli = Cli(tmp_path / name)
    write(cli.cwd, f"{replica}.txt", replica)
    cli("commit", "-m", f"from {replica}")
    return cli


def _refused(r: Result, replica: str) -> None:
    assert r.exit_code == 2
    err = r.stderr
    assert f"error: replica {replica!r} is already in use" in err
    assert "hint: each clone needs its own replica id" in err
    assert "Traceback" not in err


def test_path_clone_refuses_the_sources_own_replica_id(tmp_path: Path) -> None:
    _site(tmp_path, "a", "site-a")
    r = Cli(tmp_path)("clone", "a", "b", "--replica", "site-a", ok=False)
    _refused(r, "site-a")
    assert not (tmp_path / "b").exists()  # nothing is left behind


def test_path_clone_refuses_a_replica_id_found_only_in_the_history(tmp_path: Path) -> None:
    a = _site(tmp_path, "a", "site-a")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    write(b.cwd, "b.txt", "b")
    b("commit", "-m", "from b")
    a("sync", "../b", "--no-push")  # a's history now holds site-b's commit; a's peer id is site-a
    (tmp_path / "c").mkdir()  # an existing empty directory stays, emptied
    r = Cli(tmp_path)("clone", "a", "c", "--replica", "site-b", ok=False)
    _refused(r, "site-b")
    assert list((tmp_path / "c").iterdir()) == []
    Cli(tmp_path)("clone", "a", "c", "--replica", "site-c")  # a fresh id is fine


def test_http_clone_refuses_the_peers_replica_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _site(tmp_path, "a", "site-a")
    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    with Repository.open(tmp_path / "a") as served, serving(served, TOKEN) as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        r = Cli(tmp_path)("clone", url, "b", "--replica", "site-a", ok=False)
        _refused(r, "site-a")
        assert not (tmp_path / "b").exists()
        cloned = json.loads(Cli(tmp_path)("clone", url, "b", "--json").stdout)
        assert cloned["replica"].startswith("r-")


def test_fsck_reports_two_commits_with_the_same_replica_and_counter(tmp_path: Path) -> None:
    # two sites that share a replica id (what the clones above refuse), committing concurrently
    a = Repository.init(tmp_path / "a", replica="twin")
    b = Repository.init(tmp_path / "b", replica="twin", repository_id=a.repo_id)
    try:
        for repo, text in ((a, "from a"), (b, "from b")):
            with repo.transaction(message=text) as tx:
                tx.write("f.txt", text.encode())
        ca, cb = a.branches()["main"], b.branches()["main"]
        assert a.load_commit(ca).clock == b.load_commit(cb).clock == {"twin": 1}
        assert a.fsck().ok
        peer = LocalPeer(str(tmp_path / "b"))
        try:
            fetch_from(a, peer, "b")
        finally:
            peer.close()
        report = a.fsck()
        assert not report.ok and not report.missing and not report.corrupt
        assert {k: sorted(v) for k, v in report.reused_stamps.items()} == {
            "twin:1": sorted([cid_str(ca), cid_str(cb)])}
    finally:
        a.close()
        b.close()
    r = Cli(tmp_path / "a")("fsck", ok=False)
    assert r.exit_code == 1
    assert "reused   replica:counter twin:1 stamps 2 different commits" in r.stdout
    assert "1 reused replica stamp(s)" in r.stdout and "hint: two sites commit under one replica id" in r.stderr
    assert json.loads(Cli(tmp_path / "a")("fsck", "--json", ok=False).stdout)["reused_stamps"]


@pytest.mark.kubo
def test_ipfs_clone_refuses_a_replica_id_from_the_published_history(
        tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    k = kubo_factory()
    a = _site(tmp_path, "a", "site-a")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    write(b.cwd, "b.txt", "b")
    b("commit", "-m", "from b")
    a("sync", "../b", "--no-push")  # site-b committed in a's history, and never pushed itself
    a("remote", "add", "ipfs", k.remote_url)
    a("push", "ipfs")
    for taken in ("site-a", "site-b"):
        r = Cli(tmp_path)("clone", k.remote_url, "c", "--replica", taken, ok=False)
        _refused(r, taken)
        assert not (tmp_path / "c").exists()
    Cli(tmp_path)("clone", k.remote_url, "c", "--replica", "site-c")
