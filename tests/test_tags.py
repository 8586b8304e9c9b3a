"""Tags: immutable names for commits, resolved as revisions, carried by every transport
(path and HTTP peers, bundles) without ever moving a tag the receiver already has."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.model.cid import cid_str, parse_cid
from casync.repo.tags import list_tags, receive_tags, tag_conflicts
from casync.transports.peer.exchange import LocalPeer, fetch_from, push_to

from .conftest import Cli, serving, write


def _init(tmp_path: Path, name: str, replica: str) -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    return Cli(tmp_path / name)


def _commit(cli: Cli, path: str, data: str, message: str) -> str:
    write(cli.cwd, path, data)
    return cli("commit", "-m", message).stdout.strip()


def _tags(cli: Cli) -> dict[str, str | None]:
    return {t["name"]: t["commit"] for t in json.loads(cli("tag", "--json").stdout)}


@pytest.fixture
def a(tmp_path: Path) -> Cli:
    a = _init(tmp_path, "a", "site-a")
    _commit(a, "data.txt", "one\n", "one")
    return a


def test_tag_create_list_delete_and_resolve(a: Cli) -> None:
    first = a("log", "-n", "1", "--json").stdout
    first_cid = json.loads(first)[0]["cid"]
    a("tag", "v1")
    second = _commit(a, "data.txt", "two\n", "two")
    assert _tags(a) == {"v1": first_cid}
    # tags resolve wherever a revision is taken
    assert a("cat", "v1:data.txt").stdout == "one\n"
    assert [e["cid"] for e in json.loads(a("log", "--json", "v1").stdout)] == [first_cid]
    assert a("diff", "v1", "HEAD", "--json").stdout.count("data.txt") == 1
    # an existing tag does not move: refusal is a state failure (exit 1), with a hint
    refused = a("tag", "v1", ok=False)
    assert refused.exit_code == 1 and "already exists" in refused.stderr and "hint:" in refused.stderr
    assert _tags(a) == {"v1": first_cid}
    assert "moved tag v1" in a("tag", "-f", "v1").stdout
    assert _tags(a) == {"v1": second}
    assert "deleted tag v1" in a("tag", "-d", "v1").stdout
    assert _tags(a) == {}
    assert a("tag", "-d", "v1", ok=False).exit_code == 2
    assert a("tag", "../bad", ok=False).exit_code == 2
    assert a("log", "v1", ok=False).exit_code == 2


def test_api_tags(tmp_path: Path) -> None:
    with Repository.init(tmp_path / "r", replica="r1") as repo:
        with repo.transaction(message="one") as tx:
            tx.write("a", b"1")
        cid = porcelain.create_tag(repo, "v1")
        assert porcelain.list_tags(repo) == {"v1": cid} and repo.read("a", "v1") == b"1"
        assert porcelain.delete_tag(repo, "v1") == cid and porcelain.list_tags(repo) == {}


def test_sync_carries_tags_both_ways(tmp_path: Path, a: Cli) -> None:
    a("tag", "v1")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    assert _tags(b) == _tags(a)  # a clone brings the tags
    _commit(a, "data.txt", "two\n", "two")
    a("tag", "v2")
    b("tag", "b1", "v1")
    b("sync", "origin")
    assert _tags(a) == _tags(b) == {"v1": _tags(a)["v1"], "v2": _tags(a)["v2"], "b1": _tags(a)["v1"]}


def test_a_tag_on_no_branch_travels_with_its_commits(tmp_path: Path, a: Cli) -> None:
    """A tag on a commit no branch reaches: push sends the commit's blocks with it."""
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    b("switch", "-c", "experiment")
    lone = _commit(b, "exp.txt", "only here\n", "experiment")
    b("tag", "exp-1")
    b("switch", "main")
    b("branch", "-d", "experiment")
    out = b("push", "--json", "origin", "main")
    assert json.loads(out.stdout)["tags"]["created"] == {"exp-1": lone}
    assert _tags(a)["exp-1"] == lone
    assert a("cat", "exp-1:exp.txt").stdout == "only here\n"
    assert "ok" in a("fsck").stdout.lower()


def test_a_differing_tag_is_a_conflict_and_neither_commit_is_lost(tmp_path: Path, a: Cli) -> None:
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    ours = _commit(b, "data.txt", "b's release\n", "b")
    b("tag", "release")
    theirs = _commit(a, "other.txt", "a's release\n", "a")
    a("tag", "release")
    out = b("sync", "origin", "--no-push")
    assert "warning: tag release differs" in out.stderr and "hint:" in out.stderr
    # nothing moved; theirs is kept where fsck and revisions see it
    assert _tags(b)["release"] == ours
    listing = json.loads(b("tag", "--json").stdout)
    assert listing == [{"name": "release", "commit": ours,
                        "conflicts": [{"source": "origin", "commit": theirs}]}]
    assert b("cat", "tag-conflicts/origin/release:other.txt").stdout == "a's release\n"
    assert "tag-conflicts/origin/release" in b("fsck", "--json").stdout
    # pushing does not move the peer's tag either, and says so
    pushed = b("push", "origin")
    assert "warning: tag release differs" in pushed.stderr
    assert _tags(a)["release"] == theirs
    # taking theirs settles the conflict
    b("tag", "-f", "release", theirs)
    assert json.loads(b("tag", "--json").stdout) == [{"name": "release", "commit": theirs, "conflicts": []}]


def test_http_peer_carries_tags_and_reports_conflicts(tmp_path: Path, a: Cli) -> None:
    a("tag", "v1")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    with Repository.open(tmp_path / "a") as served, serving(served, "secret") as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        (tmp_path / "token").write_text("secret\n")
        c = Cli(tmp_path)
        c("clone", url, "c", "--replica", "site-c", "--token-file", str(tmp_path / "token"))
        c = Cli(tmp_path / "c")
        assert _tags(c) == {"v1": _tags(a)["v1"]}
        mine = _commit(c, "c.txt", "c\n", "c")
        c("tag", "c1")
        c("tag", "v2")
        out = json.loads(c("push", "--json").stdout)
        assert out["tags"]["created"] == {"c1": mine, "v2": mine} and out["tags"]["conflicts"] == {}
        assert list_tags(served)["c1"] == parse_cid(mine)
        # a differing v1 at the client: the server's stays, the client is told
        c("tag", "-f", "v1", "c1")
        out = json.loads(c("push", "--json").stdout)
        assert set(out["tags"]["conflicts"]) == {"v1"}
        assert cid_str(list_tags(served)["v1"]) != mine


def test_bundle_carries_tags(tmp_path: Path, a: Cli) -> None:
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    _commit(a, "data.txt", "two\n", "two")
    a("tag", "v2")
    a("tag", "v1", "HEAD~1")
    b("tag", "v1")  # the same commit: not a conflict
    info = json.loads(a("bundle", "create", "--json", str(tmp_path / "x.car"), "main").stdout)
    assert set(info["tags"]) == {"v1", "v2"}
    out = b("bundle", "unbundle", "--json", str(tmp_path / "x.car"))
    update = json.loads(out.stdout)["tag_update"]
    assert set(update["created"]) == {"v2"} and update["unchanged"] == ["v1"]
    assert _tags(b) == _tags(a)
    # a differing tag in a bundle: kept aside, reported
    a("tag", "-d", "v1")
    a("tag", "v1")
    a("bundle", "create", str(tmp_path / "y.car"), "main")
    res = b("bundle", "unbundle", str(tmp_path / "y.car"))
    assert "warning: tag v1 differs" in res.stderr
    assert _tags(b)["v1"] != _tags(a)["v1"]
    assert tag_conflicts_of(tmp_path / "b") == {"bundle/v1": _tags(a)["v1"]}


def tag_conflicts_of(root: Path) -> dict[str, str]:
    with Repository.open(root) as repo:
        return {k: cid_str(v) for k, v in tag_conflicts(repo).items()}


def test_a_tag_is_never_set_on_a_commit_not_held(tmp_path: Path) -> None:
    """Closure invariant: an incoming tag naming a commit this store lacks is skipped."""
    with Repository.init(tmp_path / "x", replica="x") as x, Repository.init(tmp_path / "y", replica="y") as y:
        with x.transaction(message="x") as tx:
            tx.write("a", b"1")
        foreign = x.resolve("HEAD")
        update = receive_tags(y, {"v1": foreign}, "peer")
        assert update.skipped == {"v1": foreign} and list_tags(y) == {}


def test_peer_fetch_and_push_through_the_python_api(tmp_path: Path, a: Cli) -> None:
    a("tag", "v1")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    with Repository.open(tmp_path / "b") as b:
        peer = LocalPeer(str(tmp_path / "a"))
        try:
            fetched = fetch_from(b, peer, "origin")
            assert fetched.tags is not None and fetched.tags.unchanged == ["v1"]
            with b.transaction(message="b") as tx:
                tx.write("b", b"b")
            porcelain.create_tag(b, "b1")
            summary = push_to(b, peer, "origin", "main")
        finally:
            peer.close()
        assert summary["tags"]["created"] == {"b1": b.resolve_cid("b1")}


def test_tags_from_elsewhere_are_validated(tmp_path: Path) -> None:
    """A peer's info, a head record: a bad tag name or a non-commit target is refused whole."""
    from casync.errors import InvalidObject, RemoteError
    from casync.transports.ipfs.records import HeadRecord, decode_record
    from casync.transports.peer.exchange import PeerInfo

    with Repository.init(tmp_path / "x", replica="x") as x:
        with x.transaction(message="x") as tx:
            tx.write("a", b"1")
        commit = x.resolve("HEAD")
        tree = x.tree_of(commit)
    info = {"repository_id": "r", "replica": "p", "read_only": False, "refs": {}}
    assert PeerInfo.from_json(info).tags is None  # a peer from before tags
    assert PeerInfo.from_json({**info, "tags": {"v1": cid_str(commit)}}).tags == {"v1": commit}
    for bad in ({"../v1": cid_str(commit)}, {"v1": cid_str(tree)}, {"v1": "nonsense"}, {"v1": 5}, ["v1"]):
        with pytest.raises(RemoteError):
            PeerInfo.from_json({**info, "tags": bad})
    record = HeadRecord("r" * 32, "p", 1, 1, "blake3", "cdc", {}, {"v1": commit})
    assert decode_record(record.encode(), "r" * 32, "p", "here").tags == {"v1": commit}
    bad_record = json.loads(record.encode())
    bad_record["tags"] = {"v1": cid_str(tree)}
    with pytest.raises(InvalidObject):
        decode_record(json.dumps(bad_record).encode(), "r" * 32, "p", "here")


def test_a_bundle_naming_a_tag_it_does_not_carry_is_refused(tmp_path: Path) -> None:
    """Closure: a hostile manifest tagging a commit outside the bundle sets nothing."""
    from casync.errors import InvalidObject
    from casync.model.car import CarWriter
    from casync.transfer.stream import blocks_for_commits
    from casync.transports.bundle import _manifest, read_bundle

    with Repository.init(tmp_path / "a", replica="a") as a:
        with a.transaction(message="one") as tx:
            tx.write("f", b"1")
        main = a.resolve("main")
        a.update_branch("x", None, main, "test")
        with a.transaction(branch="x", message="elsewhere") as tx:
            tx.write("g", b"2")
        elsewhere = a.resolve("x")
        manifest_cid, manifest = _manifest(a, {"main": main}, [], {"t": elsewhere})
        path = tmp_path / "hostile.car"
        with open(path, "wb") as f:
            writer = CarWriter(f, [manifest_cid])
            for cid, block in blocks_for_commits(a, a.graph.missing([main], [])):
                writer.add(cid, block)
            writer.add(manifest_cid, manifest)
        with Repository.init(tmp_path / "b", replica="b", repository_id=a.repo_id) as b:
            with pytest.raises(InvalidObject, match="asked for but not sent"):
                read_bundle(b, path)
            assert list_tags(b) == {} and b.refs.get_ref("bundles/main") is None


def test_http_tags_endpoint_refuses_malformed_and_read_only(tmp_path: Path, a: Cli) -> None:
    import http.client
    import urllib.parse

    from casync.errors import RemoteError
    from casync.transports.peer.http import HttpPeer
    from casync.transports.peer.server import serve

    with Repository.open(tmp_path / "a") as served:
        head = served.resolve("HEAD")
        with serving(served, "secret") as srv:
            port = srv.server_address[1]
            for query in ("", "tags=notjson", "tags=" + urllib.parse.quote(json.dumps({"../x": cid_str(head)})),
                          "tags=" + urllib.parse.quote(json.dumps({"v1": cid_str(served.tree_of(head))}))):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", f"/v1/tags?{query}", body=b"", headers={"Authorization": "Bearer secret",
                                                                               "Content-Length": "0"})
                assert conn.getresponse().status == 400, query
                conn.close()
            assert list_tags(served) == {}
        ro = serve(served, b"secret", read_only=True)
        t = threading.Thread(target=ro.serve_forever, daemon=True)
        t.start()
        try:
            peer = HttpPeer(f"http://127.0.0.1:{ro.server_address[1]}", "secret")
            try:
                with pytest.raises(RemoteError, match="read-only"):
                    peer.push_tags({"v1": head}, iter(()))
            finally:
                peer.close()
        finally:
            ro.shutdown()
            ro.server_close()
            t.join(10)
        assert list_tags(served) == {}
