"""Partial clones by path (``clone --path``), as a user runs them: a real ``casync serve``
process and a repository path as sources; what is transferred, what a commit carries back,
pulls, merges, widening, fsck/gc/audit, serving from a partial clone, bad paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import InvalidObject
from casync.model.cid import Cid
from casync.transfer.stream import PackReceiver, blocks_for_commits
from casync.trees.paths import PathFilter
from casync.trees.unixfs import lookup, walk_dag

from .conftest import serve_process, write

CASYNC = [sys.executable, "-m", "casync"]
TOKEN = "partial clone token for tests"


def run(cwd: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CASYNC, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != code:
        raise AssertionError(f"casync {' '.join(args)} -> {r.returncode} (wanted {code})\n{r.stdout}\n{r.stderr}")
    return r


def run_json(cwd: Path, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(run(cwd, *args, "--json").stdout)  # type: ignore[no-any-return]


def _big(seed: int, size: int) -> bytes:
    """Incompressible, multi-chunk content that differs per seed."""
    out, block = bytearray(), seed.to_bytes(8, "big")
    import hashlib

    while len(out) < size:
        block = hashlib.blake2b(block).digest()
        out += block
    return bytes(out[:size])


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """A full repository: ``sensors/`` (the subtree cloned), and much more beside it."""
    a = tmp_path / "full"
    run(tmp_path, "init", str(a), "--replica", "hub")
    for i in range(3):
        write(a, f"sensors/t{i}.csv", _big(i, 150_000))
    write(a, "sensors/cal/offsets.json", '{"t0": 0.5}\n')
    for i in range(4):
        write(a, f"logs/day{i}.log", _big(100 + i, 400_000))
    write(a, "other/x.txt", "other\n")
    write(a, "README", "top\n")
    run(a, "commit", "-m", "base")
    return a


@pytest.fixture
def served(full: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``casync serve`` on the full repository, as a real process on loopback."""
    yield from _serve(full, tmp_path / "token")


def _serve(repo: Path, token: Path) -> Iterator[tuple[str, Path]]:
    token.write_text(TOKEN + "\n")
    with serve_process(repo, token) as url:
        yield url, token


def _source(kind: str, full: Path, served: tuple[str, Path]) -> tuple[str, ...]:
    """The clone arguments for the source: the serve URL with its token, or the path."""
    return (served[0], "--token-file", str(served[1])) if kind == "http" else (str(full),)


def _tree_cids(repo_dir: Path) -> tuple[Cid, dict[str, Cid]]:
    """HEAD's tree and the CID of each top-level entry."""
    with Repository.open(repo_dir) as repo:
        tree = repo.tree_of(repo.resolve("HEAD"))
        from casync.trees.unixfs import read_dir

        return tree, {link.name: link.cid for link in read_dir(repo.blocks, tree)}


def _expected_blocks(full: Path, rev: str, paths: list[str]) -> set[Cid]:
    """What a partial clone of ``paths`` at ``rev`` needs: the commit, the directories on
    the way, and every block under each path (computed here from the full repository)."""
    with Repository.open(full) as repo:
        commit = repo.resolve(rev)
        tree = repo.tree_of(commit)
        out = {commit, tree}
        for path in paths:
            parts = tuple(path.split("/"))
            for i in range(1, len(parts)):
                entry = lookup(repo.blocks, tree, parts[:i])
                assert entry is not None
                out.add(entry.cid)
            entry = lookup(repo.blocks, tree, parts)
            assert entry is not None
            out |= {c for c, _ in walk_dag(repo.blocks.get, entry.cid)}
        return out


@pytest.mark.parametrize("kind", ["http", "local"])
def test_clone_path_transfers_only_the_subtree(tmp_path: Path, full: Path, served: tuple[str, Path],
                                               kind: str) -> None:
    part = tmp_path / "part"
    res = run_json(tmp_path, "clone", "--path", "sensors/", *_source(kind, full, served), str(part))
    expected = _expected_blocks(full, "HEAD", ["sensors"])
    assert res["paths"] == ["sensors"]
    assert res["blocks"] == len(expected)  # the stream held exactly these, each once
    with Repository.open(part) as repo:
        assert {c for c in expected if repo.blocks.has(c)} == expected
        _, top = _tree_cids(full)
        assert not repo.blocks.has(top["logs"]) and not repo.blocks.has(top["other"])
        stored = sum(len(repo.blocks.get(c)) for c in expected)
    assert stored < 600_000 < 1_600_000  # the 1.6 MB of logs never came
    assert sorted(p.name for p in part.iterdir() if p.name != ".casync") == ["sensors"]
    assert (part / "sensors/t1.csv").read_bytes() == _big(1, 150_000)
    st = run_json(part, "status")
    assert st["clean"] and st["deleted"] == [] and st["partial"] == ["sensors"]
    assert "partial clone: holds only sensors" in run(part, "status").stdout
    assert json.loads(run(part, "config", "partial_paths").stdout) == ["sensors"]
    fsck = run_json(part, "fsck")
    assert fsck["ok"] and fsck["missing"] == {} and fsck["unfetched"] == 3  # README, logs/, other/


@pytest.mark.parametrize("kind", ["http", "local"])
def test_a_commit_in_a_partial_clone_keeps_everything_else_byte_for_byte(
        tmp_path: Path, full: Path, served: tuple[str, Path], kind: str) -> None:
    """The data-safety round trip: partial clone, edit inside the path, commit, push back;
    the full repository's tree outside the path is unchanged, and a full clone of it has
    every file outside the path as it was."""
    tree_before, top_before = _tree_cids(full)
    part = tmp_path / "part"
    run(tmp_path, "clone", "--path", "sensors", *_source(kind, full, served), str(part))
    write(part, "sensors/t0.csv", _big(50, 150_000))
    write(part, "sensors/new/reading.csv", "1,2,3\n")
    (part / "sensors/t2.csv").unlink()
    run(part, "commit", "-m", "edit sensors in a partial clone")
    pushed = run_json(part, "push", "origin", "main")
    assert pushed["result"] == "pushed"
    tree_after, top_after = _tree_cids(full)
    assert tree_after != tree_before and top_after["sensors"] != top_before["sensors"]
    assert {k: v for k, v in top_after.items() if k != "sensors"} == \
        {k: v for k, v in top_before.items() if k != "sensors"}
    assert run_json(full, "fsck")["ok"]
    whole = tmp_path / "whole"
    run(tmp_path, "clone", str(full), str(whole))
    for i in range(4):
        assert (whole / f"logs/day{i}.log").read_bytes() == _big(100 + i, 400_000)
    assert (whole / "other/x.txt").read_text() == "other\n" and (whole / "README").read_text() == "top\n"
    assert (whole / "sensors/t0.csv").read_bytes() == _big(50, 150_000)
    assert not (whole / "sensors/t2.csv").exists()
    assert (whole / "sensors/new/reading.csv").read_text() == "1,2,3\n"


def test_pull_fetches_only_changes_inside_the_paths(tmp_path: Path, full: Path, served: tuple[str, Path]) -> None:
    part = tmp_path / "part"
    run(tmp_path, "clone", "--path", "sensors", *_source("http", full, served), str(part))
    write(full, "logs/day9.log", _big(900, 500_000))  # outside: never to be fetched
    write(full, "other/x.txt", "changed\n")
    write(full, "sensors/t1.csv", _big(901, 150_000))  # inside
    run(full, "commit", "-m", "upstream changes")
    res = run_json(part, "pull")
    assert res["merge"]["result"] == "fast-forward"
    fetched = res["fetch"]
    tree, top = _tree_cids(full)
    with Repository.open(full) as hub:
        day9 = lookup(hub.blocks, tree, ("logs", "day9.log"))
        t1 = lookup(hub.blocks, tree, ("sensors", "t1.csv"))
        assert day9 is not None and t1 is not None
        t1_blocks = {c for c, _ in walk_dag(hub.blocks.get, t1.cid)}
    # the new commit, its root tree, sensors/ and the changed file: nothing of logs/ or other/
    assert fetched["commits"] == 1 and fetched["blocks"] == 3 + len(t1_blocks)
    assert fetched["bytes"] < 200_000
    with Repository.open(part) as repo:
        assert not repo.blocks.has(day9.cid) and not repo.blocks.has(top["other"])
    assert (part / "sensors/t1.csv").read_bytes() == _big(901, 150_000)
    assert not (part / "logs").exists() and not (part / "other").exists()
    assert run_json(part, "status")["clean"]
    assert run_json(part, "fsck")["ok"]


def test_checkout_status_fsck_gc_audit_in_a_partial_clone(tmp_path: Path, full: Path) -> None:
    write(full, "sensors/t0.csv", "second version\n")
    write(full, "logs/day0.log", "rotated\n")
    run(full, "commit", "-m", "second")
    part = tmp_path / "part"
    run(tmp_path, "clone", "--path", "sensors", str(full), str(part))
    run(part, "checkout", "HEAD~1")  # an older commit: its sensors/, still nothing else
    assert (part / "sensors/t0.csv").read_bytes() == _big(0, 150_000)
    assert sorted(p.name for p in part.iterdir() if p.name != ".casync") == ["sensors"]
    st = run_json(part, "status")
    assert st["clean"] and st["deleted"] == []
    run(part, "checkout", "main")
    listing = {row["path"]: row["type"] for row in json.loads(run(part, "ls", "--json").stdout)}
    assert listing == {"README": "unfetched", "logs": "unfetched", "other": "unfetched", "sensors": "dir"}
    assert {row["path"] for row in json.loads(run(part, "ls", "-r", "--json").stdout)} == \
        {"sensors/t0.csv", "sensors/t1.csv", "sensors/t2.csv", "sensors/cal/offsets.json"}
    r = run(part, "cat", "HEAD:logs/day0.log", code=2)
    assert "'logs/day0.log' lies outside the paths this partial clone holds (sensors)" in r.stderr
    assert run(part, "cat", "HEAD:sensors/t0.csv").stdout == "second version\n"
    fsck = run_json(part, "fsck")
    assert fsck["ok"] and fsck["missing"] == {} and fsck["unfetched"] >= 3
    r = run(part, "bundle", "create", "all.car", code=1)  # a bundle is a whole DAG
    assert "cannot write a bundle" in r.stderr and not (part / "all.car").exists()
    run(part, "gc")  # the unfetched blocks are not a missing block that stops gc
    assert run_json(part, "fsck")["ok"]
    audit = run(part, "audit", code=0)
    assert "missing" not in audit.stdout
    # a file outside the paths would sit beside data never fetched: refused, named, with a hint
    write(part, "logs/mine.txt", "mine\n")
    r = run(part, "commit", "-m", "outside", code=2)
    assert "'logs/mine.txt' lies outside the paths this partial clone holds" in r.stderr
    assert "casync fetch --path logs" in r.stderr and "Traceback" not in r.stderr
    assert (part / "logs/mine.txt").read_text() == "mine\n"


def test_merges_in_a_partial_clone(tmp_path: Path, full: Path) -> None:
    """Changes that touch only fetched paths merge (the other side's changes outside come
    along by CID); both sides changing one unfetched path is refused, with the command that
    fetches it; after widening, the same merge goes through."""
    part = tmp_path / "part"
    run(tmp_path, "clone", "--path", "sensors", str(full), str(part))
    second = tmp_path / "second"
    run(tmp_path, "clone", str(full), str(second))
    write(full, "other/x.txt", "hub\n")
    run(full, "commit", "-m", "hub changes other/")
    write(part, "sensors/cal/offsets.json", '{"t0": 0.7}\n')
    run(part, "commit", "-m", "field calibration")
    res = run_json(part, "pull")
    assert res["merge"]["result"] == "merged"
    run(part, "push")
    assert (full / "other/x.txt").read_text() == "hub\n"  # the served working tree moved to the merge
    whole = tmp_path / "whole"
    run(tmp_path, "clone", str(full), str(whole))
    assert (whole / "other/x.txt").read_text() == "hub\n"
    assert (whole / "sensors/cal/offsets.json").read_text() == '{"t0": 0.7}\n'
    assert (whole / "logs/day3.log").read_bytes() == _big(103, 400_000)
    # another site changed other/x.txt too: merging it needs blocks this clone never fetched
    write(second, "other/x.txt", "second\n")
    run(second, "commit", "-m", "second changes other/")
    run(part, "remote", "add", "second", str(second))
    run(part, "fetch", "second")
    r = run(part, "merge", "remotes/second/main", code=1)
    assert "needs 'other', which both sides changed" in r.stderr
    assert "casync fetch --path other" in r.stderr and "Traceback" not in r.stderr
    assert run_json(part, "status")["clean"]
    run(part, "fetch", "origin", "--path", "other")
    run(part, "fetch", "second", "--path", "other")  # its commit came before the path did
    r = run(part, "merge", "remotes/second/main")  # now an ordinary merge of other/x.txt (lww: the newer)
    assert "other/x.txt" in r.stdout
    assert (part / "other/x.txt").read_text() == "second\n"
    assert run_json(part, "fsck")["ok"] and run_json(part, "status")["clean"]


def test_widening_with_fetch_path_and_all_paths(tmp_path: Path, full: Path, served: tuple[str, Path]) -> None:
    write(full, "logs/day1.log", "second version\n")
    run(full, "commit", "-m", "second")
    part = tmp_path / "part"
    run(tmp_path, "clone", "--path", "sensors", *_source("http", full, served), str(part))
    write(part, "logs/day0.log", "mine\n")  # in the way of what widening checks out: refused, nothing recorded
    r = run(part, "fetch", "--path", "logs", code=1)
    assert "widening the clone would overwrite uncommitted changes in: logs/day0.log" in r.stderr
    assert json.loads(run(part, "config", "partial_paths").stdout) == ["sensors"]
    assert (part / "logs/day0.log").read_text() == "mine\n"
    (part / "logs/day0.log").unlink()
    res = run_json(part, "fetch", "--path", "logs")
    assert res["commits"] == 2  # the history of logs/, every commit
    assert json.loads(run(part, "config", "partial_paths").stdout) == ["logs", "sensors"]
    assert (part / "logs/day1.log").read_text() == "second version\n"
    assert (part / "logs/day2.log").read_bytes() == _big(102, 400_000)
    assert not (part / "other").exists()
    assert run_json(part, "status")["clean"]
    run(part, "checkout", "HEAD~1")  # the older logs/ were fetched too
    assert (part / "logs/day1.log").read_bytes() == _big(101, 400_000)
    run(part, "checkout", "main")
    assert run_json(part, "fsck")["ok"]
    run(part, "fetch", "--all-paths")
    assert run(part, "config", "partial_paths", code=2).returncode == 2  # unset: whole again
    assert (part / "other/x.txt").read_text() == "other\n" and (part / "README").read_text() == "top\n"
    fsck = run_json(part, "fsck")
    assert fsck["ok"] and fsck["unfetched"] == 0
    assert run_json(part, "status")["clean"]


def test_a_partial_clone_serves_only_within_its_paths(tmp_path: Path, full: Path) -> None:
    part = tmp_path / "part"
    run(tmp_path, "clone", "--path", "sensors", str(full), str(part))
    for url, token in _serve(part, tmp_path / "token"):
        r = run(tmp_path, "clone", url, str(tmp_path / "c1"), "--token-file", str(token), code=1)
        assert "partial clone holding only sensors; it cannot send every path" in r.stderr
        assert not (tmp_path / "c1").exists()
        r = run(tmp_path, "clone", "--path", "logs", url, str(tmp_path / "c2"), "--token-file", str(token), code=1)
        assert "it cannot send logs" in r.stderr
        run(tmp_path, "clone", "--path", "sensors/cal", url, str(tmp_path / "c3"), "--token-file", str(token))
        assert (tmp_path / "c3/sensors/cal/offsets.json").exists()
        assert run_json(tmp_path / "c3", "fsck")["ok"]
        write(tmp_path / "c3", "sensors/cal/more", "x")
        run(tmp_path / "c3", "commit", "-m", "x")
        r = run(tmp_path / "c3", "push", "origin", "main", code=1)
        assert "it does not accept pushes" in r.stderr


def test_a_peer_that_leaves_out_a_path_it_was_asked_for_is_refused(tmp_path: Path, full: Path) -> None:
    """The receiver lets a directory on the way come without its outside entries, never
    without one inside the paths: a stream missing sensors/ is refused at its commit."""
    with Repository.open(full) as hub:
        Repository.init(tmp_path / "part", replica="p", repository_id=hub.repo_id).close()
        head = hub.resolve("HEAD")
        paths = PathFilter(["sensors"])
        stream = list(blocks_for_commits(hub, [head], paths))
        sensors = lookup(hub.blocks, hub.tree_of(head), ("sensors",))
        assert sensors is not None
        inside = {c for c, _ in walk_dag(hub.blocks.get, sensors.cid)}
    with Repository.open(tmp_path / "part") as repo:
        receiver = PackReceiver(repo, [head], paths=paths)
        with pytest.raises(InvalidObject, match="lies inside the fetched paths"):
            for cid, block in stream:
                if cid not in inside:
                    receiver.add(cid, block)
        receiver.abort()
        receiver = PackReceiver(repo, [head], paths=paths)  # the whole stream is taken
        for cid, block in stream:
            receiver.add(cid, block)
        assert receiver.finish().commits == [head]


@pytest.mark.parametrize("path, message", [
    ("../x", "escapes the working tree"), ("/abs", "is absolute"), (".", "names the whole tree"),
    ("a/../../b", "escapes the working tree"),
])
def test_bad_paths_are_usage_errors(tmp_path: Path, full: Path, path: str, message: str) -> None:
    r = run(tmp_path, "clone", "--path", path, str(full), str(tmp_path / "p"), code=2)
    assert r.stderr.startswith("error:") and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p").exists()


def test_path_options_where_they_do_not_apply(tmp_path: Path, full: Path) -> None:
    r = run(tmp_path, "clone", "--path", "..", "ipfs+http://127.0.0.1:9/", str(tmp_path / "p"), code=2)
    assert "escapes the working tree" in r.stderr and not (tmp_path / "p").exists()  # checked before the node
    whole = tmp_path / "whole"
    run(tmp_path, "clone", str(full), str(whole))
    r = run(whole, "fetch", "--path", "sensors", code=2)
    assert "not a partial clone: it holds every path already" in r.stderr
    r = run(whole, "fetch", "--path", "sensors", "--all-paths", code=2)
    assert "exclude each other" in r.stderr
    run(whole, "remote", "add", "ipfs", "ipfs+http://127.0.0.1:9")
    r = run(whole, "fetch", "ipfs", "--path", "sensors", code=2)
    assert "not supported for IPFS remotes yet" in r.stderr


def test_paths_are_normalized(tmp_path: Path, full: Path) -> None:
    part = tmp_path / "part"
    res = run_json(tmp_path, "clone", "--path", "./sensors//cal/", "--path", "sensors", "--path", "other/",
                   str(full), str(part))
    assert res["paths"] == ["other", "sensors"]  # sensors/cal is inside sensors
    assert sorted(os.listdir(part)) == [".casync", "other", "sensors"]


@pytest.mark.parametrize("paths, message", [
    (["../x"], "escapes the working tree"), ("sensors", "paths must be a list"), ([1], "paths must be a list"),
    (["p"] * 65, "at most 64"),
])
def test_a_fetch_request_with_bad_paths_is_refused(full: Path, served: tuple[str, Path], paths: object,
                                                    message: str) -> None:
    import http.client
    import urllib.parse

    from casync.model.cid import cid_str

    with Repository.open(full) as hub:
        head = cid_str(hub.resolve("HEAD"))
    parts = urllib.parse.urlsplit(served[0])
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("POST", "/v1/fetch", json.dumps({"wants": [head], "haves": [], "paths": paths}),
                     {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 400
        assert message in json.loads(reply.read())["error"]
    finally:
        conn.close()
