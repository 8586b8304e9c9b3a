"""A clone is a new replica: path and HTTP clones refuse a replica id the source's history
or the peer already uses; fsck fails on a commit of this repository's replica id that was
not made here, and notes (without failing) two commits stamped with one (replica, counter),
which one replica committing on two branches gives as well."""

from __future__ import annotations

import json
import time
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


def test_fsck_fails_on_a_commit_of_its_replica_id_made_at_another_site(tmp_path: Path) -> None:
    # two sites that share a replica id (what the clones above refuse), committing concurrently
    a = Repository.init(tmp_path / "a", replica="twin")
    b = Repository.init(tmp_path / "b", replica="twin", repository_id=a.repo_id)
    try:
        for repo, text in ((a, "from a"), (b, "from b")):
            with repo.transaction(message=text) as tx:
                tx.write("f.txt", text.encode())
            time.sleep(0.005)  # b's commit is later than every commit made at a
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
        assert list(report.foreign) == [cid_str(cb)] and "'twin'" in report.foreign[cid_str(cb)]
        assert {k: sorted(v) for k, v in report.reused_stamps.items()} == {
            "twin:1": sorted([cid_str(ca), cid_str(cb)])}
    finally:
        a.close()
        b.close()
    r = Cli(tmp_path / "a")("fsck", ok=False)
    assert r.exit_code == 1
    assert f"foreign  {cid_str(cb)}  stamped with this repository's replica id 'twin'" in r.stdout
    assert "note     replica:counter twin:1 stamps 2 different commits" in r.stdout
    assert "1 commit(s) of this replica id not made here" in r.stdout
    assert "hint: another site commits under this repository's replica id" in r.stderr
    assert json.loads(Cli(tmp_path / "a")("fsck", "--json", ok=False).stdout)["foreign"] == {
        cid_str(cb): report.foreign[cid_str(cb)]}
    audited = json.loads(Cli(tmp_path / "a")("audit", "b/main", "--json", ok=False).stdout)
    assert [f["kind"] for f in audited["findings"]] == ["foreign-commit"]


def test_commits_on_two_branches_of_one_replica_pass_fsck_and_audit(tmp_path: Path) -> None:
    """Failed before: the second branch's first commit repeats the first's (replica, counter)
    stamp (the clock counts the replica's commits in each history), and fsck exited 1 with a
    hint about two sites sharing an id, which the agent exports as a failed audit."""
    site = _site(tmp_path, "a", "site-a")
    site("branch", "topic")
    write(site.cwd, "main.txt", "on main")
    site("commit", "-m", "on main")
    site("checkout", "topic")
    write(site.cwd, "topic.txt", "on topic")
    site("commit", "-m", "on topic")
    site("checkout", "main")
    site("merge", "topic", "-m", "both")
    r = site("fsck")
    assert r.exit_code == 0 and "checked" in r.stdout and ": ok" in r.stdout, r.stdout
    assert "note     replica:counter site-a:2 stamps 2 different commits" in r.stdout
    report = json.loads(site("fsck", "--json").stdout)
    assert report["ok"] and report["foreign"] == {} and list(report["reused_stamps"]) == ["site-a:2"]
    with Repository.open(site.cwd) as repo:
        assert repo.last_audit() is not None and repo.last_audit()["ok"]  # type: ignore[index]
    audited = json.loads(site("audit", "--json").stdout)
    assert audited["ok"] and audited["findings"] == []
    assert [n["kind"] for n in audited["notes"]] == ["reused-stamp"]


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
