"""``casync log -- PATH`` (commits that changed a file or directory) and ``branch -r/-a``."""

from __future__ import annotations

import json
from pathlib import Path

from casync import Repository, porcelain
from casync.model.cid import cid_str
from casync.trees.unixfs import lookup

from .conftest import Cli, write


def _cids(cli: Cli, *args: str) -> list[str]:
    return [e["cid"] for e in json.loads(cli("log", "--json", *args).stdout)]


def _commit(cli: Cli, message: str, **files: str) -> str:
    for path, data in files.items():
        write(cli.cwd, path.replace("__", "/"), data)
    return cli("commit", "-m", message).stdout.strip()


def test_log_of_a_path_lists_the_commits_that_changed_it(cli: Cli) -> None:
    cli("init", "--replica", "r1")
    c1 = _commit(cli, "first", sensors__t1="1", sensors__t2="1", notes="n")
    c2 = _commit(cli, "t1 again", sensors__t1="2")
    c3 = _commit(cli, "notes only", notes="m")
    c4 = _commit(cli, "t2", sensors__t2="2")
    (cli.cwd / "sensors" / "t1").unlink()
    c5 = cli("commit", "-m", "t1 gone").stdout.strip()
    assert _cids(cli, "--", "sensors/t1") == [c5, c2, c1]
    assert _cids(cli, "--", "sensors") == [c5, c4, c2, c1]  # a directory: anything under it
    assert _cids(cli, "--", "notes") == [c3, c1]
    assert _cids(cli, "--", "notes", "sensors/t2") == [c4, c3, c1]
    assert _cids(cli, "HEAD~2", "--", "sensors/t1") == [c2, c1]  # from a revision
    assert _cids(cli, "-n", "1", "--", "sensors") == [c5]
    assert _cids(cli, "--", "nothing/here") == []
    # relative to the directory casync runs in, like every path argument
    assert _cids(Cli(cli.cwd / "sensors"), "--", "t2") == [c4, c1]
    oneline = cli("log", "--oneline", "--", "notes").stdout.splitlines()
    assert [line.split()[1] for line in oneline] == ["notes", "first"]
    # a path that looks like a revision is still a path after '--'
    assert cli("log", "--", "HEAD").stdout == ""
    assert cli("log", "--", ok=False).exit_code == 2


def test_log_of_a_path_through_merges(tmp_path: Path) -> None:
    """A merge is listed only when it took neither side's version of the path."""
    with Repository.init(tmp_path / "r", replica="r1", bare=True) as repo:
        with repo.transaction(message="root") as tx:
            tx.write("f.json", b"0")
            tx.write("g", b"0")
        root = repo.resolve("main")
        repo.update_branch("side", None, root, "test")
        with repo.transaction(branch="side", message="side f") as tx:
            tx.write("f.json", b"side")
        side = repo.resolve("side")
        with repo.transaction(message="main g") as tx:
            tx.write("g", b"main")
        main_g = repo.resolve("main")
        kept_side = repo.make_commit(repo.tree_of(side), [main_g, side], "merge taking side's f")
        assert [e.cid for e in porcelain.path_log(repo, "f.json", rev=cid_str(kept_side))] == [side, root]
        with repo.transaction(branch="side", message="side f again") as tx:
            tx.write("f.json", b"side2")
        new_merge = repo.make_commit(repo.tree_of(repo.resolve("side")), [main_g, repo.resolve("side")], "m")
        repo.update_branch("main", main_g, new_merge, "test")
        with repo.transaction(message="own f") as tx:
            tx.write("f.json", b"merged")
        own = repo.resolve("main")
        merged = [e.cid for e in porcelain.path_log(repo, "f.json")]
        assert merged[0] == own and new_merge not in merged and repo.resolve("side") in merged


def test_log_of_a_path_reads_only_the_directories_on_the_path(tmp_path: Path) -> None:
    """Efficiency as a property: with every block of the other subtrees deleted from the
    store, the history of one path still comes out (a tree diff would need them)."""
    with Repository.init(tmp_path / "r", replica="r1", bare=True) as repo:
        for i in range(5):
            with repo.transaction(message=f"c{i}") as tx:
                tx.write(f"other/d{i}/big.bin", bytes([i]) * 5000)
                if i % 2 == 0:
                    tx.write("keep/sensor.json", f'{{"v": {i}}}'.encode())
        expected = [e.cid for e in repo.log() if e.commit.message in ("c0", "c2", "c4")]
        for entry in repo.log():
            other = lookup(repo.blocks, entry.commit.tree, ("other",))
            assert other is not None
            for cid in _all_blocks(repo, other.cid):
                repo.blocks.delete(cid)
        repo.blocks.flush()
        assert [e.cid for e in porcelain.path_log(repo, "keep/sensor.json")] == expected


def _all_blocks(repo: Repository, root: bytes) -> set[bytes]:
    from casync.model.cid import DAG_PB, cid_codec
    from casync.model.objects import decode_pbnode

    out, stack = set(), [root]
    while stack:
        cid = stack.pop()
        if cid in out or not repo.blocks.has(cid):
            continue
        out.add(cid)
        if cid_codec(cid) == DAG_PB:
            stack.extend(link.cid for link in decode_pbnode(repo.blocks.get(cid)).links)
    return out


def test_branch_lists_remote_tracking_branches(tmp_path: Path) -> None:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    _commit(a, "one", x="1")
    a("branch", "dev")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    b = Cli(tmp_path / "b")
    head = json.loads(b("log", "-n", "1", "--json").stdout)[0]["cid"]
    remote = json.loads(b("branch", "-r", "--json").stdout)
    assert remote == [{"name": "origin/dev", "commit": head, "current": False, "remote": "origin"},
                      {"name": "origin/main", "commit": head, "current": False, "remote": "origin"}]
    both = json.loads(b("branch", "-a", "--json").stdout)
    assert [(e["name"], e["remote"], e["current"]) for e in both] == [
        ("main", None, True), ("origin/dev", "origin", False), ("origin/main", "origin", False)]
    text = b("branch", "-a").stdout.splitlines()
    assert text[0].startswith("* main") and "remotes/origin/dev" in text[1]
    assert [line.split()[0] for line in b("branch", "-r").stdout.splitlines()] == ["origin/dev", "origin/main"]
    assert json.loads(b("branch", "--json").stdout) == [{"name": "main", "commit": head, "current": True}]
    assert b("branch", "-r", "-d", "main", ok=False).exit_code == 2
