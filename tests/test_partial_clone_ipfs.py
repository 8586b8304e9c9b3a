"""Partial clones by path from a real Kubo node: ``clone --path`` fetches only the subtree,
a commit made there pushes back through the node without loss, later fetches keep to the
paths, and a push to a node that lacks what the clone never fetched is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import Cid
from casync.trees.unixfs import lookup, read_dir, walk_dag

from .conftest import Cli, write
from .kubo_fixture import Kubo
from .test_partial_clone import _big

pytestmark = pytest.mark.kubo


def _json(cli: Cli, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cli(*args, "--json").stdout)  # type: ignore[no-any-return]


def _full(tmp_path: Path, name: str) -> Cli:
    Cli(tmp_path)("init", name, "--replica", f"hub-{name}")
    a = Cli(tmp_path / name)
    for i in range(3):
        write(a.cwd, f"sensors/t{i}.csv", _big(200 + i, 150_000))
    for i in range(3):
        write(a.cwd, f"logs/day{i}.log", _big(300 + i, 400_000))
    write(a.cwd, "other/x.txt", "other\n")
    a("commit", "-m", "base")
    return a


def _top(root: Path) -> dict[str, Cid]:
    with Repository.open(root) as repo:
        tree = repo.tree_of(repo.resolve("HEAD"))
        return {link.name: link.cid for link in read_dir(repo.blocks, tree)}


def test_partial_clone_from_ipfs_round_trip(tmp_path: Path, kubo: Kubo) -> None:
    full = _full(tmp_path, "full")
    full("remote", "add", "origin", kubo.remote_url)
    full("push", "origin")
    repo_id = full("config", "repository_id").stdout.strip()
    res = _json(Cli(tmp_path), "clone", "--path", "sensors", f"{kubo.remote_url}/{repo_id}", "part")
    assert res["paths"] == ["sensors"]
    with Repository.open(full.cwd) as hub:
        head = hub.resolve("HEAD")
        tree = hub.tree_of(head)
        sensors = lookup(hub.blocks, tree, ("sensors",))
        assert sensors is not None
        expected = {head, tree} | {c for c, _ in walk_dag(hub.blocks.get, sensors.cid)}
    assert res["fetch"]["blocks_received"] == len(expected)  # nothing of logs/ or other/
    part = Cli(tmp_path / "part")
    assert sorted(p.name for p in part.cwd.iterdir() if p.name != ".casync") == ["sensors"]
    assert _json(part, "fsck")["ok"] and _json(part, "status")["clean"]
    # edit inside, commit, push through the node; the hub pulls it: nothing outside changed
    before = _top(full.cwd)
    write(part.cwd, "sensors/t0.csv", "edited in the field\n")
    part("commit", "-m", "field edit")
    part("push", "origin")
    full("pull", "origin")
    after = _top(full.cwd)
    assert after["sensors"] != before["sensors"]
    assert {k: v for k, v in after.items() if k != "sensors"} == {k: v for k, v in before.items() if k != "sensors"}
    assert (full.cwd / "sensors/t0.csv").read_text() == "edited in the field\n"
    assert (full.cwd / "logs/day2.log").read_bytes() == _big(302, 400_000)
    assert _json(full, "fsck")["ok"]
    # upstream changes inside and outside: the partial clone's pull fetches only the inside
    write(full.cwd, "logs/day7.log", _big(307, 400_000))
    write(full.cwd, "sensors/t1.csv", "new reading\n")
    full("commit", "-m", "upstream")
    full("push", "origin")
    pulled = _json(part, "pull")
    assert pulled["fetch"]["bytes_received"] < 20_000  # the 400 kB log never came
    with Repository.open(full.cwd) as hub:
        day7 = lookup(hub.blocks, hub.tree_of(hub.resolve("HEAD")), ("logs", "day7.log"))
        assert day7 is not None
    with Repository.open(part.cwd) as repo:
        assert not repo.blocks.has(day7.cid)
    assert (part.cwd / "sensors/t1.csv").read_text() == "new reading\n"
    assert not (part.cwd / "logs").exists()


def test_a_push_to_a_node_lacking_the_unfetched_blocks_is_refused(tmp_path: Path, kubo: Kubo) -> None:
    """A partial clone of a repository the node never saw: the node cannot pin the pushed
    history whole (this clone does not have logs/ to send), so nothing is pinned or published."""
    full = _full(tmp_path, "unpushed")
    write(full.cwd, "logs/only-here.log", _big(999, 300_000))  # blocks no node has
    full("commit", "-m", "more logs")
    Cli(tmp_path)("clone", "--path", "sensors", str(full.cwd), "part")
    part = Cli(tmp_path / "part")
    write(part.cwd, "sensors/t2.csv", "x\n")
    part("commit", "-m", "x")
    part("remote", "add", "ipfs", kubo.remote_url)
    r = part("push", "ipfs", ok=False)
    assert r.exit_code == 1
    assert "lacks" in r.stderr and "outside the paths this partial clone holds (sensors)" in r.stderr
    assert "Traceback" not in r.stderr
