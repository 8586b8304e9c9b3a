"""Named pins and pushes that skip what the node already holds, against a real Kubo node."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casync.model.cid import cid_str
from casync.repo.repository import Repository

from .conftest import Cli, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo


def _repo(tmp_path: Path, kubo: Kubo, name: str, replica: str, files: dict[str, bytes]) -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    cli = Cli(tmp_path / name)
    for path, data in files.items():
        write(cli.cwd, path, data)
    cli("commit", "-m", "files")
    cli("remote", "add", "origin", kubo.remote_url)
    return cli


def _named(kubo: Kubo) -> dict[str, str]:
    """name -> CID of every named pin, as ``ipfs pin ls --names`` shows them."""
    out = {}
    for line in kubo.ipfs("pin", "ls", "--type=recursive", "--names").decode().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out[parts[2]] = parts[0]
    return out


def test_pushed_heads_are_pinned_under_their_names(tmp_path: Path, kubo: Kubo) -> None:
    a = _repo(tmp_path, kubo, "a", "site-a", {"f.bin": os.urandom(300_000)})
    rid = a("config", "repository_id").stdout.strip()
    first = json.loads(a("push", "--json").stdout)["head"]
    name = f"casync/{rid}/site-a/main"
    assert _named(kubo).get(name) == first
    write(a.cwd, "g.txt", "more\n")
    a("commit", "-m", "more")
    second = json.loads(a("push", "--json").stdout)["head"]  # pinned anew under the name, the old unpinned
    assert second != first and _named(kubo).get(name) == second
    shown = json.loads(a("remote", "show", "origin", "--json").stdout)
    assert {"name": name, "cid": second, "type": "recursive"} in shown["pins"]
    assert all(p["name"].startswith(f"casync/{rid}/") for p in shown["pins"])
    assert name in a("remote", "show", "origin").stdout


def test_push_of_a_new_repository_skips_blocks_the_node_holds(tmp_path: Path, kubo: Kubo) -> None:
    files = {"data/one.bin": os.urandom(2_000_000), "data/two.bin": os.urandom(1_000_000), "x.txt": b"x\n"}
    a = _repo(tmp_path, kubo, "a", "site-a", files)
    first = json.loads(a("push", "--json").stdout)
    b = _repo(tmp_path, kubo, "b", "site-b", files)  # same files, another repository id
    second = json.loads(b("push", "--json").stdout)
    print("A", first["blocks_sent"], first["bytes_sent"], "B", second["blocks_sent"], second["bytes_sent"],
          "skipped", second["skipped_present"])
    assert first["bytes_sent"] > 3_000_000
    assert second["bytes_sent"] < 64 * 1024 and second["skipped_present"] > 0
    Cli(tmp_path)("clone", f"{kubo.remote_url}/{b('config', 'repository_id').stdout.strip()}", "c")
    assert (tmp_path / "c/data/one.bin").read_bytes() == files["data/one.bin"]


def _ladder(repo: Repository, steps: range) -> None:
    """Merges on main: M_k = merge(T_k, S_k), where T_k (a new file) and S_k (no change)
    are both made on top of M_k-1."""
    for k in steps:
        main = repo.resolve("main")
        side = repo.make_commit(repo.load_commit(main).tree, [main], f"side {k}")
        with repo.transaction("main", f"step {k}") as tx:
            tx.write(f"steps/{k}.txt", f"{k}\n".encode())
        tip = repo.resolve("main")
        repo.commit_tree(repo.load_commit(tip).tree, f"merge {k}", branch="main", extra_parents=(side,))


@pytest.mark.timeout(300)  # a hang guard: before the fix the last push never finished
def test_a_push_after_many_merges_pins_in_one_walk(tmp_path: Path, kubo: Kubo) -> None:
    """Kubo's ``pin/update OLD NEW`` diffs the two DAGs by pairing the links each lacks and
    recursing into every pair: on a commit DAG it follows the parents from OLD down the whole
    history and branches at every merge, 2**40 steps from the tip of this ladder of 40 merges
    (found by the long fault run, where sites pull, merge and push every round).  A push pins
    with ``pin/add``, which walks each block once."""
    repo = Repository.init(tmp_path / "hub", replica="ladder", bare=True)
    cli = Cli(tmp_path / "hub")
    try:
        with repo.transaction("main", "base") as tx:
            tx.write("f.txt", b"base\n")
        cli("remote", "add", "origin", kubo.remote_url)
        rid = cli("config", "repository_id").stdout.strip()
        for steps in (range(40), range(40, 41)):  # the second push moves the pin from the ladder's tip
            _ladder(repo, steps)
            head = cid_str(repo.resolve("main"))
            pushed = json.loads(cli("push", "origin", "--json").stdout)
            assert pushed["head"] == head
            assert _named(kubo).get(f"casync/{rid}/ladder/main") == head
    finally:
        repo.close()
    assert head in kubo.ipfs("pin", "ls", "--type=recursive", head).decode()
