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
