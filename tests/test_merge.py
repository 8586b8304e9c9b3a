"""Three-way merges: the pure policy engine and merges between replicas' histories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.merge.threeway import MergeInput, PolicyRules, Write, json_merge, lww_winner, merge_trees
from casync.model.cid import RAW, compute_cid
from casync.model.commit import HybridTime
from casync.trees.unixfs import Entry, walk_dag

from .conftest import Cli, write


def E(data: str) -> Entry:
    return Entry(compute_cid(RAW, data.encode()), "file", len(data))


def W(ms: int, replica: str, priority: int = 100) -> Write:
    return Write(HybridTime(ms, 0), replica, priority)


def run(base: dict[str, Entry], ours: dict[str, Entry], theirs: dict[str, Entry], policy: str = "lww",
        writes: dict[tuple[str, str], Write] | None = None) -> dict[str, Entry]:
    result = merge_trees(MergeInput(base, ours, theirs, writes or {}, PolicyRules(policy)))  # type: ignore[arg-type]
    return result.tree


def test_disjoint_changes_merge_cleanly() -> None:
    base = {"a": E("a"), "b": E("b"), "gone": E("g")}
    ours = {"a": E("a2"), "b": E("b"), "gone": E("g")}
    theirs = {"a": E("a"), "b": E("b2"), "new": E("n")}
    assert run(base, ours, theirs) == {"a": E("a2"), "b": E("b2"), "new": E("n")}


def test_lww_later_write_wins_and_is_symmetric() -> None:
    base, ours, theirs = {"f": E("0")}, {"f": E("ours")}, {"f": E("theirs")}
    writes = {("f", "ours"): W(2000, "x"), ("f", "theirs"): W(1000, "y")}
    assert run(base, ours, theirs, writes=writes)["f"] == E("ours")
    swapped = {("f", "ours"): W(1000, "y"), ("f", "theirs"): W(2000, "x")}
    assert run(base, theirs, ours, writes=swapped)["f"] == E("ours")


def test_lww_tie_breaks_by_priority_then_replica() -> None:
    assert lww_winner(W(1000, "a", 1), W(1000, "b", 2), 0) == "ours"
    assert lww_winner(W(1000, "a"), W(1000, "b"), 0) == "theirs"  # larger replica id
    assert lww_winner(W(1000, "a", 2), W(1400, "b", 1), 500) == "theirs"  # within skew: priority
    assert lww_winner(W(1000, "a", 1), W(1600, "b", 2), 500) == "theirs"  # beyond skew: time


def test_siblings_keep_both_and_delete_modify_keeps_the_write() -> None:
    base = {"f": E("0"), "d": E("0")}
    ours = {"f": E("ours")}
    theirs = {"f": E("theirs"), "d": E("modified")}
    writes = {("f", "ours"): W(1, "x"), ("f", "theirs"): W(2, "y"),
              ("d", "ours"): W(1, "x"), ("d", "theirs"): W(2, "y")}
    result = merge_trees(MergeInput(base, ours, theirs, writes, PolicyRules("siblings")))
    # the later write (y's) keeps the path, the other is kept beside it
    assert result.tree == {"f": E("theirs"), "f.~x": E("ours"), "d": E("modified")}
    assert {c.path for c in result.siblings} == {"f", "d"} and result.clean


def test_siblings_build_the_same_tree_whichever_side_merges() -> None:
    """Two replicas merging the same heads in opposite directions must agree: ours-at-the-path
    gave x {f: x's, f.~y: y's} and y {f: y's, f.~x: x's}, and the next sync nested them."""
    base, xs, ys = {"f": E("0")}, {"f": E("x's")}, {"f": E("y's")}
    for tx, ty in ((1, 2), (2, 1), (5, 5)):
        at_x = merge_trees(MergeInput(base, xs, ys, {("f", "ours"): W(tx, "x"), ("f", "theirs"): W(ty, "y")},
                                      PolicyRules("siblings"))).tree
        at_y = merge_trees(MergeInput(base, ys, xs, {("f", "ours"): W(ty, "y"), ("f", "theirs"): W(tx, "x")},
                                      PolicyRules("siblings"))).tree
        assert at_x == at_y and set(at_x) in ({"f", "f.~x"}, {"f", "f.~y"}), (tx, ty)
        assert sorted(at_x.values(), key=lambda e: e.cid) == sorted([E("x's"), E("y's")], key=lambda e: e.cid)


def test_ours_theirs_and_rules_by_glob() -> None:
    base, ours, theirs = {"x.log": E("0"), "y": E("0")}, {"x.log": E("o"), "y": E("o")}, \
        {"x.log": E("t"), "y": E("t")}
    rules = PolicyRules("ours", (("*.log", "theirs"),))
    tree = merge_trees(MergeInput(base, ours, theirs, {}, rules)).tree
    assert tree == {"x.log": E("t"), "y": E("o")}


def test_manual_leaves_conflicts() -> None:
    result = merge_trees(MergeInput({"f": E("0")}, {"f": E("o")}, {"f": E("t")}, {}, PolicyRules("manual")))
    assert not result.clean and result.conflicts[0].kind == "modify/modify"


def test_file_directory_clash_keeps_both() -> None:
    base: dict[str, Entry] = {}
    ours = {"p": E("file")}
    theirs = {"p/inner": E("x")}
    tree = run(base, ours, theirs, writes={("p", "ours"): W(1, "a")})
    assert tree == {"p/inner": E("x"), "p.~a": E("file")}


def test_json_key_level_merge() -> None:
    base = b'{"a": 1, "b": 1, "n": {"x": 1, "y": 1}}'
    ours = b'{"a": 2, "b": 1, "n": {"x": 2, "y": 1}, "o": true}'
    theirs = b'{"a": 3, "b": 5, "n": {"x": 1, "y": 9}}'
    merged = json.loads(json_merge(base, ours, theirs, "theirs") or b"")
    assert merged == {"a": 3, "b": 5, "n": {"x": 2, "y": 9}, "o": True}
    assert json_merge(b"[1]", b"[2]", b"[3]", "ours") is None


# --- merges between replicas ---------------------------------------------------------------------


def transfer(src: Repository, dst: Repository, rev: str, as_branch: str) -> None:
    """Copy a history between two local repositories (what fetch does over a network)."""
    head = src.resolve(rev)
    held = set()
    for cid, block in walk_dag(src.blocks.get, head):
        if not dst.blocks.has(cid):
            dst.blocks.put(cid, block)
        held.add(cid)
    dst.blocks.flush()
    old = dst.refs.get_ref(f"heads/{as_branch}")
    dst.update_branch(as_branch, old, head, "test transfer")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Repository, Repository]:
    a = Repository.init(tmp_path / "a", replica="site-a")
    write(a.root, "shared.txt", "base\n")
    write(a.root, "conf.json", '{"rate": 1, "mode": "x"}')
    porcelain.commit(a, "base")
    b = Repository.init(tmp_path / "b", replica="site-b", repository_id=a.repo_id)
    transfer(a, b, "main", "main")
    porcelain.checkout(b, "main", force=True)
    return a, b


def test_merge_lww_between_replicas(pair: tuple[Repository, Repository]) -> None:
    a, b = pair
    write(a.root, "only-a.txt", "a")
    write(a.root, "shared.txt", "from a\n")
    porcelain.commit(a, "a edits")
    write(b.root, "only-b.txt", "b")
    write(b.root, "shared.txt", "from b\n")
    porcelain.commit(b, "b edits")  # later HLC time: b's write wins under lww
    transfer(b, a, "main", "site-b")
    outcome = porcelain.merge(a, "site-b", policy="lww")
    assert outcome.kind == "merged"
    head = a.log()[0].commit
    assert len(head.parents) == 2 and head.clock == {"site-a": 3, "site-b": 1}
    assert a.read("shared.txt") == b"from b\n" and a.read("only-a.txt") == b"a" and a.read("only-b.txt") == b"b"
    assert (a.root / "shared.txt").read_text() == "from b\n" and (a.root / "only-b.txt").exists()
    # the other replica merging the other way computes the same tree
    transfer(a, b, "HEAD~1", "site-a")
    porcelain.merge(b, "site-a", policy="lww")
    assert b.log()[0].commit.tree == head.tree
    assert porcelain.status(a).clean and porcelain.status(b).clean


def test_merge_siblings_then_resolve(pair: tuple[Repository, Repository], tmp_path: Path) -> None:
    a, b = pair
    write(b.root, "shared.txt", "B\n")
    porcelain.commit(b, "b")
    write(a.root, "shared.txt", "A\n")
    porcelain.commit(a, "a")  # later: a's version keeps the path
    transfer(b, a, "main", "site-b")
    outcome = porcelain.merge(a, "site-b", policy="siblings")
    assert outcome.kind == "merged" and [c.sibling for c in outcome.siblings] == ["shared.txt.~site-b"]
    assert a.read("shared.txt") == b"A\n" and a.read("shared.txt.~site-b") == b"B\n"
    cli = Cli(a.root)
    listed = json.loads(cli("conflicts", "--json").stdout)
    assert listed == [{"path": "shared.txt", "kind": "siblings", "siblings": ["shared.txt.~site-b"],
                       "source": "tree", "kept_by": "site-a"}]
    cli("resolve", "shared.txt", "--pick", "site-b")
    assert (a.root / "shared.txt").read_text() == "B\n" and not (a.root / "shared.txt.~site-b").exists()
    cli("commit", "-m", "resolved")
    assert json.loads(cli("conflicts", "--json").stdout) == []


def test_siblings_merged_in_opposite_directions_converge_without_nesting(
        pair: tuple[Repository, Repository]) -> None:
    """Each replica merges the other's head under siblings at the same time: both must build
    the same tree, so the next exchange merges cleanly instead of nesting siblings
    (``m.bin.~site-1.~site-0``); --pick names either replica, whichever holds the path."""
    a, b = pair
    write(a.root, "shared.txt", "A\n")
    porcelain.commit(a, "a")
    write(b.root, "shared.txt", "B\n")
    porcelain.commit(b, "b")  # later: b's version keeps the path on both sides
    transfer(b, a, "main", "site-b")
    transfer(a, b, "main", "site-a")
    ma, mb = porcelain.merge(a, "site-b", policy="siblings"), porcelain.merge(b, "site-a", policy="siblings")
    assert ma.commit is not None and mb.commit is not None
    assert a.load_commit(ma.commit).tree == b.load_commit(mb.commit).tree
    assert a.read("shared.txt") == b"B\n" and a.read("shared.txt.~site-a") == b"A\n"
    transfer(b, a, "main", "site-b")
    again = porcelain.merge(a, "site-b", policy="siblings")
    assert again.kind == "merged" and not again.siblings
    assert sorted(a.flat_tree(a.head())) == ["conf.json", "shared.txt", "shared.txt.~site-a"]
    cli = Cli(a.root)
    (listed,) = json.loads(cli("conflicts", "--json").stdout)
    assert listed["kept_by"] == "site-b" and listed["siblings"] == ["shared.txt.~site-a"]
    cli("resolve", "shared.txt", "--pick", "site-b")  # the version already at the path
    assert (a.root / "shared.txt").read_text() == "B\n" and not (a.root / "shared.txt.~site-a").exists()


def test_manual_merge_continue_and_abort(pair: tuple[Repository, Repository]) -> None:
    a, b = pair
    write(a.root, "shared.txt", "A\n")
    porcelain.commit(a, "a")
    write(b.root, "shared.txt", "B\n")
    write(b.root, "new-from-b", "n")
    porcelain.commit(b, "b")
    transfer(b, a, "main", "site-b")
    cli = Cli(a.root)
    r = cli("merge", "site-b", "--policy", "manual", ok=False)
    assert r.exit_code == 1 and "CONFLICT (modify/modify): shared.txt" in r.stderr
    assert (a.root / "new-from-b").exists()
    r = cli("merge", "--continue", ok=False)
    assert r.exit_code == 1 and "unresolved conflicts: shared.txt" in r.stderr
    cli("merge", "--abort")
    assert (a.root / "shared.txt").read_text() == "A\n"
    assert not (a.root / "new-from-b").exists() and not (a.root / "shared.txt.~site-b").exists()
    cli("merge", "site-b", "--policy", "manual", ok=False)
    cli("resolve", "shared.txt", "--pick", "theirs")
    cli("merge", "--continue")
    head = a.log()[0].commit
    assert len(head.parents) == 2 and a.read("shared.txt") == b"B\n" and a.read("new-from-b") == b"n"


def test_json_policy_and_custom_resolver(pair: tuple[Repository, Repository]) -> None:
    a, b = pair
    write(a.root, "conf.json", '{"rate": 2, "mode": "x"}')
    write(a.root, "counter", "5")
    porcelain.commit(a, "a")
    write(b.root, "conf.json", '{"rate": 1, "mode": "y"}')
    write(b.root, "counter", "7")
    porcelain.commit(b, "b")
    transfer(b, a, "main", "site-b")
    a.set_config("merge", {"policy": "lww", "rules": {"*.json": "json", "counter": "custom:sum"}})

    def add(path: str, base: bytes | None, ours: bytes | None, theirs: bytes | None) -> bytes:
        return str(int(ours or b"0") + int(theirs or b"0") - int(base or b"0")).encode()

    porcelain.merge(a, "site-b", resolvers={"sum": add})
    assert json.loads(a.read("conf.json")) == {"rate": 2, "mode": "y"}
    assert a.read("counter") == b"12"


def test_fast_forward_and_up_to_date(pair: tuple[Repository, Repository]) -> None:
    a, b = pair
    write(b.root, "x", "1")
    porcelain.commit(b, "b")
    transfer(b, a, "main", "site-b")
    assert porcelain.merge(a, "site-b").kind == "fast-forward"
    assert (a.root / "x").read_text() == "1" and porcelain.status(a).clean
    assert porcelain.merge(a, "site-b").kind == "up-to-date"


def test_sibling_names_never_carry_path_instructions() -> None:
    from casync.merge.threeway import sibling_name

    assert sibling_name("f.txt", "site-b") == "f.txt.~site-b"
    hostile = sibling_name("f.txt", "x/../../../../tmp/PWN")
    assert "/" not in hostile.split(".~", 1)[1] and ".." not in hostile.split(".~", 1)[1]


def test_commit_with_hostile_replica_id_is_rejected() -> None:
    import dag_cbor

    from casync.errors import InvalidObject
    from casync.model.cid import DAG_PB
    from casync.model.commit import Commit, HybridTime, decode_commit
    from casync.model.objects import encode_directory

    tree = compute_cid(DAG_PB, encode_directory([]))
    good = Commit(tree=tree, parents=(), clock={"a": 1}, time=HybridTime(1, 0), replica="a", author="x",
                  message="m", generation=1)
    obj = dag_cbor.decode(good.signing_bytes())
    obj["replica"] = "x/../../PWN"
    obj["clock"] = {"x/../../PWN": 1}
    with pytest.raises(InvalidObject, match="not a valid replica name"):
        decode_commit(dag_cbor.encode(obj))


def diverge(pair: tuple[Repository, Repository], on_a: dict[str, str], on_b: dict[str, str],
            later: str = "b") -> None:
    """Commit ``on_a`` in a and ``on_b`` in b (the ``later`` one second: its writes win under
    lww and keep the path under siblings), then give a b's history as site-b."""
    a, b = pair

    def commit_a() -> None:
        for path, text in on_a.items():
            write(a.root, path, text)
        porcelain.commit(a, "a")

    def commit_b() -> None:
        for path, text in on_b.items():
            write(b.root, path, text)
        porcelain.commit(b, "b")

    for step in ((commit_a, commit_b) if later == "b" else (commit_b, commit_a)):
        step()
    transfer(b, a, "main", "site-b")


def test_resolve_picks_the_recorded_sibling_and_leaves_the_users_files(pair: tuple[Repository, Repository]) -> None:
    """A user file that merely looks like a sibling (``name.~x``) is neither listed as a
    conflict nor touched by resolve; --pick REPLICA finds the recorded sibling even when
    it had to take a hashed name."""
    a, _b = pair
    diverge(pair, {"shared.txt": "A\n", "report.~draft": "the user's own draft\n"},
            {"shared.txt": "B\n", "shared.txt.~site-b": "a file site-b's user made\n"}, later="a")
    outcome = porcelain.merge(a, "site-b", policy="siblings")
    (recorded,) = [c.sibling for c in outcome.siblings]
    assert recorded is not None and recorded.startswith("shared.txt.~site-b.")
    cli = Cli(a.root)
    listed = json.loads(cli("conflicts", "--json").stdout)
    assert listed == [{"path": "shared.txt", "kind": "siblings", "siblings": [recorded], "source": "tree",
                       "kept_by": "site-a"}]
    cli("resolve", "shared.txt", "--pick", "site-b")
    assert (a.root / "shared.txt").read_text() == "B\n" and not (a.root / recorded).exists()
    assert (a.root / "shared.txt.~site-b").read_text() == "a file site-b's user made\n"
    assert (a.root / "report.~draft").read_text() == "the user's own draft\n"


def test_manual_merge_refuses_to_mix_in_uncommitted_edits(pair: tuple[Repository, Repository]) -> None:
    a, _b = pair
    diverge(pair, {"shared.txt": "A\n"}, {"shared.txt": "B\n"})
    write(a.root, "shared.txt", "uncommitted edit\n")
    cli = Cli(a.root)
    r = cli("merge", "site-b", "--policy", "manual", ok=False)
    assert r.exit_code == 1 and "shared.txt" in r.stderr and "uncommitted" in r.stderr
    assert (a.root / "shared.txt").read_text() == "uncommitted edit\n"
    assert json.loads(cli("conflicts", "--json").stdout) == []  # no merge was started


def test_commit_is_refused_while_a_merge_is_stopped(pair: tuple[Repository, Repository]) -> None:
    a, _b = pair
    diverge(pair, {"shared.txt": "A\n"}, {"shared.txt": "B\n"})
    cli = Cli(a.root)
    cli("merge", "site-b", "--policy", "manual", ok=False)
    r = cli("commit", "-m", "sneaky", ok=False)
    assert r.exit_code == 1 and "merge is in progress" in r.stderr and "--continue" in r.stderr
    cli("resolve", "shared.txt", "--pick", "ours")
    cli("config", "author", "Ann Merger")
    cli("merge", "--continue")
    head = a.log()[0].commit
    assert len(head.parents) == 2 and head.author == "Ann Merger"  # not "unknown"


def test_file_directory_siblings_are_named_after_the_writer_on_every_replica(
        pair: tuple[Repository, Repository]) -> None:
    a, b = pair
    write(a.root, "d/x.txt", "x\n")
    porcelain.commit(a, "a: d is a directory")
    transfer(a, b, "main", "main")
    porcelain.checkout(b, "main", force=True)
    write(a.root, "d/x.txt", "x edited on a\n")
    porcelain.commit(a, "a edits inside d")
    import shutil

    shutil.rmtree(b.root / "d")
    write(b.root, "d", "d is a file on b\n")
    porcelain.commit(b, "b: d is a file")
    transfer(b, a, "main", "site-b")
    transfer(a, b, "main", "site-a")
    porcelain.merge(a, "site-b", policy="siblings")
    porcelain.merge(b, "site-a", policy="siblings")
    tree_a, tree_b = a.log()[0].commit.tree, b.log()[0].commit.tree
    assert tree_a == tree_b  # both replicas converge
    assert a.read("d.~site-b") == b"d is a file on b\n" and a.read("d/x.txt") == b"x edited on a\n"


# --- resolve: under the writer lock, keeping the executable bit ---------------------------------


def test_resolved_executable_stays_executable(pair: tuple[Repository, Repository]) -> None:
    a, b = pair
    write(a.root, "run.sh", "#!/bin/sh\necho a\n", mode=0o755)
    porcelain.commit(a, "a adds a script")
    transfer(a, b, "main", "main")
    porcelain.checkout(b, "main", force=True)
    write(b.root, "run.sh", "#!/bin/sh\necho b2\n", mode=0o755)
    porcelain.commit(b, "b edits it")
    write(a.root, "run.sh", "#!/bin/sh\necho a2\n", mode=0o755)
    porcelain.commit(a, "a edits it")  # later: a's version keeps the path, b's is the sibling
    transfer(b, a, "main", "site-b")
    porcelain.merge(a, "site-b", policy="siblings")
    assert os.access(a.root / "run.sh.~site-b", os.X_OK)
    cli = Cli(a.root)
    cli("resolve", "run.sh", "--pick", "site-b")
    assert (a.root / "run.sh").read_text() == "#!/bin/sh\necho b2\n" and os.access(a.root / "run.sh", os.X_OK)
    given = write(a.root, "../given.sh", "#!/bin/sh\necho mine\n")
    write(a.root, "run.sh", "#!/bin/sh\necho a3\n", mode=0o755)
    porcelain.commit(a, "a3")
    write(b.root, "run.sh", "#!/bin/sh\necho b3\n", mode=0o755)
    porcelain.commit(b, "b3")
    transfer(b, a, "main", "site-b")
    porcelain.merge(a, "site-b", policy="siblings")
    cli("resolve", "run.sh", "--file", str(given))
    assert os.access(a.root / "run.sh", os.X_OK)
    cli("commit", "-m", "resolved")
    assert a.flat_tree(a.head())["run.sh"].executable


def _flock_waiters(lock: Path) -> int:
    """Processes (threads) blocked waiting for a flock on ``lock``, from /proc/locks."""
    ino = os.stat(lock).st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and line.split()[-3].endswith(f":{ino}"))


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_resolve_waits_for_the_writer_lock(pair: tuple[Repository, Repository]) -> None:
    """While another writer holds the lock, resolve writes nothing; it goes on once the
    lock is free.  No timing: the test waits until the resolve is either blocked on the
    lock (seen in /proc/locks) or finished."""
    import threading

    a, _b = pair
    diverge(pair, {"shared.txt": "A\n"}, {"shared.txt": "B\n"}, later="a")
    porcelain.merge(a, "site-b", policy="siblings")
    other = Repository.open(a.root)  # a second handle: its own lock file descriptor
    lock = a.store.root / "lock"
    done = threading.Event()
    with other.store.writer_lock():
        worker = threading.Thread(
            target=lambda: (porcelain.resolve_conflict(a, "shared.txt", pick="site-b"), done.set()))
        worker.start()
        while not done.is_set() and _flock_waiters(lock) == 0:
            done.wait(0.01)
        assert not done.is_set(), "resolve finished while another writer held the lock"
        assert (a.root / "shared.txt").read_text() == "A\n" and (a.root / "shared.txt.~site-b").exists()
    worker.join()
    other.close()
    assert done.is_set() and (a.root / "shared.txt").read_text() == "B\n"
    assert not (a.root / "shared.txt.~site-b").exists()


def test_json_tie_goes_to_the_later_write_of_that_key(pair: tuple[Repository, Repository]) -> None:
    """a writes rate, b writes rate later, then a writes mode: the file's last write is
    a's, but b's rate is the later write of that key, so it wins."""
    a, b = pair
    write(a.root, "conf.json", '{"rate": 2, "mode": "x"}')
    porcelain.commit(a, "a: rate 2")
    write(b.root, "conf.json", '{"rate": 3, "mode": "x"}')
    porcelain.commit(b, "b: rate 3")
    write(a.root, "conf.json", '{"rate": 2, "mode": "z"}')
    porcelain.commit(a, "a: mode z")
    transfer(b, a, "main", "site-b")
    a.set_config("merge", {"policy": "lww", "rules": {"*.json": "json"}})
    porcelain.merge(a, "site-b")
    assert json.loads(a.read("conf.json")) == {"rate": 3, "mode": "z"}


def test_json_merge_of_an_unpaired_surrogate_escape_is_not_a_traceback() -> None:
    """'"\\ud800"' is valid JSON but has no UTF-8 form: the merged output used to raise
    UnicodeEncodeError. It is written with \\u escapes instead, and reads back the same."""
    base = b'{"a": 0, "s": "\\ud800"}'
    out = json_merge(base, b'{"a": 1, "s": "\\ud800"}', b'{"a": 0, "s": "\\ud800", "b": 2}', "ours")
    assert out is not None and json.loads(out) == {"a": 1, "b": 2, "s": "\ud800"}
    assert b"\\ud800" in out


def test_a_resolver_an_installed_package_registers_merges_the_paths_its_rule_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``casync.resolvers`` entry-point group: a distribution on the path registers
    ``custom:upper``; a merge whose rule names it loads it (and only such a merge looks)."""
    site = tmp_path / "site"
    (site / "casync_upper-1.0.dist-info").mkdir(parents=True)
    (site / "casync_upper-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: casync-upper\n"
                                                                   "Version: 1.0\n")
    (site / "casync_upper-1.0.dist-info" / "entry_points.txt").write_text(
        "[casync.resolvers]\nupper = casync_upper_resolver:resolve\n")
    (site / "casync_upper_resolver.py").write_text(
        "def resolve(path, base, ours, theirs):\n    return (ours or b'').upper() + (theirs or b'').upper()\n")
    monkeypatch.syspath_prepend(str(site))
    repo = Repository.init(tmp_path / "bare", replica="site-a", bare=True)
    try:
        with repo.transaction(message="base") as tx:
            tx.write("note.txt", b"base\n")
        repo.update_branch("other", None, repo.resolve("main"), "branch")
        with repo.transaction(branch="other", message="theirs") as tx:
            tx.write("note.txt", b"theirs\n")
        with repo.transaction(message="ours") as tx:
            tx.write("note.txt", b"ours\n")
        repo.set_config("merge", {"policy": "lww", "rules": {"note.txt": "custom:upper"}})
        outcome = porcelain.merge(repo, "other")
        assert outcome.kind == "merged"
        assert repo.read("note.txt") == b"OURS\nTHEIRS\n"
    finally:
        repo.close()
