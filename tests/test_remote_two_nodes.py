"""Two peered Kubo nodes: push to node A, clone from node B; blocks move by bitswap."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Cli, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo


def test_push_to_a_clone_from_b(tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    node_a, node_b = kubo_factory(), kubo_factory()
    assert node_a.node is not None and node_b.node is not None
    node_b.node.connect(node_a.node)

    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    payload = os.urandom(1_200_000)
    write(a.cwd, "data/payload.bin", payload)
    write(a.cwd, "notes.txt", "two nodes\n")
    write(a.cwd, "empty.txt", "")  # bitswap never sends a zero-length block: made locally
    a("commit", "-m", "on node a")
    a("remote", "add", "origin", node_a.remote_url)
    pushed = json.loads(a("push", "--json").stdout)
    index = pushed["index"]
    assert index and index == json.loads(a("remote", "show", "--json").stdout)["index"]

    # node B has no head records of its own: without the index there is nothing to clone
    r = Cli(tmp_path)("clone", node_b.remote_url, "nothing", ok=False)
    assert r.exit_code == 1 and node_b.api_url in r.stderr and "no casync repository" in r.stderr
    assert not (tmp_path / "nothing").exists()

    # with A's index CID, B finds the records and every block over bitswap
    head_cid = pushed["head"]
    assert _local_or_empty(node_b, head_cid) == b""
    cloned = json.loads(Cli(tmp_path)("clone", f"{node_b.remote_url}#{index}", "b", "--replica", "site-b",
                                      "--json").stdout)
    assert cloned["head"] == head_cid and cloned["fetch"]["ok"]
    b = Cli(tmp_path / "b")
    assert (b.cwd / "data/payload.bin").read_bytes() == payload
    assert (b.cwd / "empty.txt").read_bytes() == b""
    assert b("log", "--json").stdout == a("log", "--json").stdout
    assert _local_or_empty(node_b, head_cid) != b""  # B now holds the blocks itself

    # B's own pushes land in B's MFS; fetching from B merges them with A's index
    write(b.cwd, "from-b.txt", "hello from b\n")
    b("commit", "-m", "on node b")
    b("push")
    show = json.loads(b("remote", "show", "--json").stdout)
    assert set(show["records"]) == {"site-a", "site-b"}
    a("remote", "add", "b", f"{node_b.remote_url}#{index}")
    fetched = json.loads(a("fetch", "b", "--json").stdout)
    assert "remotes/b/site-b/main" in fetched["updated"] and fetched["ok"]
    a("pull", "b")
    assert (a.cwd / "from-b.txt").read_text() == "hello from b\n"


def _local_or_empty(k: Kubo, cid: str) -> bytes:
    """The block if ``k`` holds it locally (asked offline), else b''."""
    from .kubo_node import KuboError

    try:
        return k.ipfs("--offline", "block", "get", cid)
    except KuboError:
        return b""


def test_records_rewritten_many_times_stay_one_block_readable_from_another_node(
        tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    """Each push rewrites this replica's head record.  It must stay one small block (an
    MFS truncate-and-write left an empty leaf per rewrite, which another node could not
    fetch over bitswap), so a clone through a second node works after many pushes."""
    node_a, node_b = kubo_factory(), kubo_factory()
    assert node_a.node is not None and node_b.node is not None
    node_b.node.connect(node_a.node)
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    a("remote", "add", "origin", node_a.remote_url)
    for i in range(4):
        write(a.cwd, "n.txt", f"push {i}\n")
        a("commit", "-m", f"c{i}")
        pushed = json.loads(a("push", "--json").stdout)
    rid = a("config", "repository_id").stdout.strip()
    record = f"/casync/{rid}/heads/site-a"
    stat = node_a.ipfs("files", "stat", "--format=<hash> <childs>", record).decode().split()
    assert stat[1] == "0" and stat[0].startswith("bafkrei")  # one raw sha2-256 block, no children
    cloned = json.loads(Cli(tmp_path)("clone", "--timeout", "20", f"{node_b.remote_url}#{pushed['index']}", "b",
                                      "--json").stdout)
    assert cloned["head"] == pushed["head"]
    assert (tmp_path / "b/n.txt").read_text() == "push 3\n"


def test_push_after_pulling_another_replicas_head(tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    """After a fast-forward pull, this replica's head is a commit another replica already
    pinned: the push must not fail on "'to' cid was already recursively pinned"."""
    node = kubo_factory()
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    write(a.cwd, "f.txt", "one\n")
    a("commit", "-m", "one")
    a("remote", "add", "origin", node.remote_url)
    a("push")
    rid = a("config", "repository_id").stdout.strip()
    Cli(tmp_path)("clone", f"{node.remote_url}/{rid}", "f", "--replica", "site-f")
    f = Cli(tmp_path / "f")
    f("push")  # site-f publishes the same head: already pinned by site-a's push
    write(a.cwd, "f.txt", "two\n")
    a("commit", "-m", "two")
    a("push")
    f("pull")
    out = json.loads(f("push", "--json").stdout)
    assert out["head"] == json.loads(a("log", "-n", "1", "--json").stdout)[0]["cid"]
    record = json.loads(node.ipfs("files", "read", f"/casync/{rid}/heads/site-f"))
    assert record["heads"]["main"]["commit"] == out["head"]
