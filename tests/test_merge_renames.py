"""Renames in merges: an edit on one side follows a rename on the other; ambiguous
renames are conflicts that ``casync conflicts`` lists."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.merge.renames import RENAME_SHARE, Carry, RenameConflict, find_renames
from casync.model.cid import DAG_PB, RAW, compute_cid
from casync.trees.unixfs import Entry

from .conftest import Cli, write
from .test_merge import transfer


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def sites(tmp_path: Path) -> tuple[Repository, Repository]:
    a = Repository.init(tmp_path / "a", replica="site-a")
    write(a.root, "images/cam2.raw", blob(1, 3000))
    write(a.root, "notes.txt", "n\n")
    porcelain.commit(a, "base")
    b = Repository.init(tmp_path / "b", replica="site-b", repository_id=a.repo_id)
    transfer(a, b, "main", "main")
    porcelain.checkout(b, "main", force=True)
    return a, b


def move(repo: Repository, old: str, *new: str) -> None:
    data = (repo.root / old).read_bytes()
    for n in new:
        write(repo.root, n, data)
    (repo.root / old).unlink()


def _copied_twice_and_edited(a: Repository, b: Repository) -> None:
    """a copies images/cam2.raw to two new paths (removing it), b edits it; a gets b's history."""
    move(a, "images/cam2.raw", "archive/cam2.raw", "backup/cam2.raw")
    porcelain.commit(a, "a copies cam2 twice")
    write(b.root, "images/cam2.raw", blob(2, 3000))
    porcelain.commit(b, "b edits cam2")
    transfer(b, a, "main", "site-b")


def exchange(a: Repository, b: Repository) -> None:
    transfer(b, a, "main", "site-b")
    transfer(a, b, "main", "site-a")


def test_edit_follows_a_rename_under_lww_both_ways(sites: tuple[Repository, Repository]) -> None:
    """The issue's repro: a moves images/cam2.raw to archive/, b edits it (later).  lww
    used to report 'deleted' and archive/cam2.raw kept the old bytes."""
    a, b = sites
    move(a, "images/cam2.raw", "archive/cam2.raw")
    porcelain.commit(a, "a archives cam2")
    write(b.root, "images/cam2.raw", blob(2, 3000))
    porcelain.commit(b, "b re-exposes cam2")
    exchange(a, b)
    outcome = porcelain.merge(a, "site-b", policy="lww")
    assert outcome.kind == "merged" and not outcome.siblings
    tree = a.flat_tree(a.head())
    assert "images/cam2.raw" not in tree and a.read("archive/cam2.raw") == blob(2, 3000)
    assert ("archive/cam2.raw", "rename", "theirs") in [(d.path, d.policy, d.winner) for d in outcome.decisions]
    assert (a.root / "archive/cam2.raw").read_bytes() == blob(2, 3000) and not (a.root / "images/cam2.raw").exists()
    porcelain.merge(b, "site-a", policy="lww")  # the other way round: the same tree
    assert b.log()[0].commit.tree == a.log()[0].commit.tree


def test_rename_after_the_edit_carries_it_too(sites: tuple[Repository, Repository]) -> None:
    a, b = sites
    write(b.root, "images/cam2.raw", blob(2, 3000))
    porcelain.commit(b, "b edits first")
    move(a, "images/cam2.raw", "archive/cam2.raw")
    porcelain.commit(a, "a renames later")
    exchange(a, b)
    out = Cli(a.root)("merge", "site-b", "--policy", "lww").stdout
    assert "rename" in out and "theirs" in out and "archive/cam2.raw" in out and "deleted" not in out
    assert a.read("archive/cam2.raw") == blob(2, 3000) and "images/cam2.raw" not in a.flat_tree(a.head())


def test_renamed_and_edited_large_file_is_found_by_shared_chunks(tmp_path: Path) -> None:
    """A multi-chunk file renamed *and* edited on one side still matches (most chunks
    shared); with the edit on the other side, siblings keeps both at the new path."""
    a = Repository.init(tmp_path / "a", replica="site-a")
    big = bytearray(blob(3, 4 << 20))
    write(a.root, "data/big.bin", bytes(big))
    porcelain.commit(a, "base")
    b = Repository.init(tmp_path / "b", replica="site-b", repository_id=a.repo_id)
    transfer(a, b, "main", "main")
    porcelain.checkout(b, "main", force=True)
    edited_b = bytes(big[:-100] + b"B" * 100)
    write(b.root, "data/big.bin", edited_b)
    porcelain.commit(b, "b edits the end")
    edited_a = bytes(big[:100] + b"A" * 10 + big[110:])
    write(a.root, "old/big.bin", edited_a)
    (a.root / "data/big.bin").unlink()
    porcelain.commit(a, "a moves and edits the start")  # later: a's version keeps the path
    transfer(b, a, "main", "site-b")
    cli = Cli(a.root)
    out = cli("merge", "site-b", "--policy", "siblings").stdout
    assert "kept both versions of old/big.bin" in out
    assert a.read("old/big.bin") == edited_a and a.read("old/big.bin.~site-b") == edited_b
    assert "data/big.bin" not in a.flat_tree(a.head())
    listed = json.loads(cli("conflicts", "--json").stdout)
    assert listed == [{"path": "old/big.bin", "kind": "siblings", "siblings": ["old/big.bin.~site-b"],
                       "source": "tree", "kept_by": "site-a"}]


@pytest.mark.parametrize("policy", ["lww", "siblings"])
def test_rename_to_two_places_is_a_listed_conflict_and_keeps_the_edit(
        sites: tuple[Repository, Repository], policy: str) -> None:
    a, b = sites
    _copied_twice_and_edited(a, b)
    cli = Cli(a.root)
    out = cli("merge", "site-b", "--policy", policy).stdout
    assert "rename/modify: images/cam2.raw renamed to archive/cam2.raw, backup/cam2.raw" in out
    assert a.read("images/cam2.raw") == blob(2, 3000)  # the edit is kept where it was
    assert a.read("archive/cam2.raw") == blob(1, 3000) == a.read("backup/cam2.raw")
    listed = json.loads(cli("conflicts", "--json").stdout)
    assert listed == [{"path": "images/cam2.raw", "kind": "rename/modify",
                       "siblings": ["archive/cam2.raw", "backup/cam2.raw"], "source": "tree", "kept_by": None}]
    assert "no conflicts" not in cli("conflicts").stdout
    r = cli("resolve", "images/cam2.raw", "--pick", "ours", ok=False)
    assert r.exit_code == 2 and "archive/cam2.raw" in r.stderr
    cli("resolve", "images/cam2.raw", "--pick", "archive/cam2.raw")
    assert (a.root / "archive/cam2.raw").read_bytes() == blob(2, 3000) and not (a.root / "images/cam2.raw").exists()
    assert (a.root / "backup/cam2.raw").read_bytes() == blob(1, 3000)
    cli("commit", "-m", "settled")
    assert cli("conflicts").stdout.strip() == "no conflicts"


def test_renamed_differently_on_both_sides_keeps_both_and_is_listed(sites: tuple[Repository, Repository]) -> None:
    a, b = sites
    move(a, "images/cam2.raw", "archive/cam2.raw")
    porcelain.commit(a, "a archives")
    move(b, "images/cam2.raw", "raw/cam2.raw")
    porcelain.commit(b, "b sorts")
    exchange(a, b)
    outcome = porcelain.merge(a, "site-b", policy="siblings")
    assert [(c.path, c.kind, c.targets) for c in outcome.siblings] == \
        [("images/cam2.raw", "rename/rename", ("archive/cam2.raw", "raw/cam2.raw"))]
    porcelain.merge(b, "site-a", policy="siblings")
    assert a.log()[0].commit.tree == b.log()[0].commit.tree
    listed = [c.to_json() for c in porcelain.conflicts(a)]
    assert listed == [{"path": "images/cam2.raw", "kind": "rename/rename",
                       "siblings": ["archive/cam2.raw", "raw/cam2.raw"], "source": "tree", "kept_by": None}]
    assert porcelain.resolve_conflict(a, "images/cam2.raw", pick="raw/cam2.raw") == "raw/cam2.raw"
    assert not (a.root / "archive/cam2.raw").exists() and (a.root / "raw/cam2.raw").exists()
    porcelain.commit(a, "settled")
    assert porcelain.conflicts(a) == []


def test_manual_stops_for_an_ambiguous_rename_then_continues(sites: tuple[Repository, Repository]) -> None:
    a, b = sites
    _copied_twice_and_edited(a, b)
    cli = Cli(a.root)
    r = cli("merge", "site-b", "--policy", "manual", ok=False)
    assert r.exit_code == 1
    assert "CONFLICT (rename/modify): images/cam2.raw (renamed to: archive/cam2.raw, backup/cam2.raw)" in r.stderr
    listed = json.loads(cli("conflicts", "--json").stdout)
    assert listed == [{"path": "images/cam2.raw", "kind": "rename/modify",
                       "siblings": ["archive/cam2.raw", "backup/cam2.raw"], "source": "merge", "kept_by": None}]
    cli("resolve", "images/cam2.raw", "--pick", "backup/cam2.raw")
    cli("merge", "--continue")
    assert a.read("backup/cam2.raw") == blob(2, 3000) and "images/cam2.raw" not in a.flat_tree(a.head())
    assert json.loads(cli("conflicts", "--json").stdout) == []


def test_unrelated_remove_and_add_is_not_a_rename(sites: tuple[Repository, Repository]) -> None:
    """A path removed on one side is a rename only if a new path holds (most of) it."""
    a, b = sites
    (a.root / "images/cam2.raw").unlink()
    write(a.root, "images/cam3.raw", blob(9, 3000))
    porcelain.commit(a, "a drops cam2, adds cam3")
    write(b.root, "images/cam2.raw", blob(2, 3000))
    porcelain.commit(b, "b edits cam2 (later)")
    transfer(b, a, "main", "site-b")
    porcelain.merge(a, "site-b", policy="lww")
    assert a.read("images/cam2.raw") == blob(2, 3000) and a.read("images/cam3.raw") == blob(9, 3000)


# --- the pure detector ------------------------------------------------------------------------


def E(name: str, executable: bool = False) -> Entry:
    """A file entry with a dag-pb CID (a file of several chunks: the chunks come from the test)."""
    return Entry(compute_cid(DAG_PB, name.encode()), "file", len(name), executable)


def test_find_renames_threshold_and_symmetry() -> None:
    chunks = {E("old"): [f"c{i}" for i in range(10)],
              E("half"): [f"c{i}" for i in range(5)] + [f"n{i}" for i in range(5)],  # 5 of 10 shared
              E("less"): [f"c{i}" for i in range(4)] + [f"n{i}" for i in range(6)]}

    def chunk_set(e: Entry) -> frozenset[bytes]:
        return frozenset(c.encode() for c in chunks.get(e, [e.cid.hex()]))

    base = {"p": E("old")}
    edited = {"p": E("edited")}
    half = find_renames(base, {"q": E("half")}, edited, chunk_set)
    assert RENAME_SHARE == 0.5 and half.carries == [Carry("p", "q", "ours")]
    assert find_renames(base, edited, {"q": E("half")}, chunk_set).carries == [Carry("p", "q", "theirs")]
    assert find_renames(base, {"q": E("less")}, edited, chunk_set).carries == []  # 4/10 shared
    assert find_renames(base, {"q": E("old")}, {"p": E("old")}, chunk_set).carries == []  # not edited
    both = find_renames(base, {"q1": E("old")}, {"q2": E("old")}, chunk_set)
    assert both.conflicts == [RenameConflict("p", "rename/rename", ("q1", "q2"))]
    same = find_renames(base, {"q": E("old")}, {"q": E("old")}, chunk_set)
    assert same.conflicts == [] and same.carries == []
    empty = Entry(compute_cid(RAW, b""), "file", 0)
    assert find_renames({"p": empty}, {"q": empty}, {"p": E("edited")}, chunk_set).carries == []


def test_a_conflict_sibling_is_never_a_rename_target() -> None:
    """A siblings merge kept one version of p as ``p.~site-b``; then p was deleted (the
    other version let go).  The other side, which never saw that, edited p: its edit stays at
    p (a delete/modify for the policy to settle), not carried into the sibling, which keeps
    the version it holds (before, the sibling's version was replaced; fuzzer seed 577)."""
    def chunk_set(e: Entry) -> frozenset[bytes]:
        return frozenset([e.cid])

    base = {"p": E("v5")}
    ours = {"p.~site-b": E("v5")}
    theirs = {"p": E("edited")}
    assert find_renames(base, ours, theirs, chunk_set) == find_renames(base, theirs, ours, chunk_set) \
        == type(find_renames(base, ours, theirs, chunk_set))()
    assert find_renames(base, {"p-moved": E("v5")}, theirs, chunk_set).carries == [Carry("p", "p-moved", "ours")]
    assert find_renames(base, {"p.~x/inner": E("v5")}, theirs, chunk_set).carries == []


def test_an_edit_beside_a_kept_sibling_stays_at_its_path(sites: tuple[Repository, Repository]) -> None:
    a, b = sites
    old = a.read("images/cam2.raw")
    move(a, "images/cam2.raw", "images/cam2.raw.~site-c")  # as a siblings merge and a delete leave it
    porcelain.commit(a, "a keeps the sibling, deletes the path")
    write(b.root, "images/cam2.raw", blob(2, 3000))
    porcelain.commit(b, "b edits cam2 later")
    transfer(b, a, "main", "site-b")
    porcelain.merge(a, "site-b", policy="siblings")
    assert a.read("images/cam2.raw") == blob(2, 3000)
    assert a.read("images/cam2.raw.~site-c") == old


def test_resolving_a_rename_whose_edited_file_is_gone_is_a_usage_error(sites: tuple[Repository, Repository]) -> None:
    a, b = sites
    _copied_twice_and_edited(a, b)
    cli = Cli(a.root)
    cli("merge", "site-b", "--policy", "lww")
    (a.root / "images/cam2.raw").unlink()
    r = cli("resolve", "images/cam2.raw", "--pick", "archive/cam2.raw", ok=False)
    assert r.exit_code == 2 and "error:" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    assert (a.root / "archive/cam2.raw").read_bytes() == blob(1, 3000)


@pytest.mark.parametrize("renamer", ["ours", "theirs"])
def test_merge_abort_undoes_the_resolve_of_a_rename_conflict(sites: tuple[Repository, Repository],
                                                            renamer: str) -> None:
    """resolve --pick NEWPATH writes NEWPATH and removes the old path: that is the merge's
    work, so --abort puts both back as HEAD has them (and refuses nothing)."""
    a, b = sites
    mover, editor = (a, b) if renamer == "ours" else (b, a)
    move(mover, "images/cam2.raw", "archive/cam2.raw", "backup/cam2.raw")
    porcelain.commit(mover, "copies")
    write(editor.root, "images/cam2.raw", blob(2, 3000))
    porcelain.commit(editor, "edit")
    transfer(b, a, "main", "site-b")
    before = {p: e.cid for p, e in a.flat_tree(a.head()).items()}
    cli = Cli(a.root)
    assert cli("merge", "site-b", "--policy", "manual", ok=False).exit_code == 1
    cli("resolve", "images/cam2.raw", "--pick", "backup/cam2.raw")
    cli("merge", "--abort")
    assert {p: e.cid for p, e in porcelain.worktree_entries(a).items()} == before
    assert json.loads(cli("status", "--json").stdout)["clean"] is True


def test_conflicts_decodes_only_the_merges_that_recorded_something(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """'casync conflicts' (and resolve, merge --continue) walk the whole history for
    recorded rename conflicts; replicas that sync often make thousands of merges that
    record none, and decoding each made the listing linear in them at ~0.15 ms a merge."""
    from casync.model import commit as commit_codec
    from casync.model.cid import parse_cid
    from casync.repo import repository as repo_mod
    from casync.worktree import merging as merger

    repo = Repository.init(tmp_path / "r", replica="site-a")
    write(repo.root, "a.txt", "a\n")
    head = parse_cid(porcelain.commit(repo, "root"))
    tree = repo.tree_of(head)
    with repo.store.writer_lock():
        for i in range(50):
            side = repo.make_commit(tree, [head], f"side {i}")
            head = repo.make_commit(tree, [head, side], f"merge {i}")
        repo.blocks.flush()
        repo.update_branch("main", repo.resolve("main"), head, "test: many merges")
    decoded: list[bytes] = []

    def counting(block: bytes, cid: bytes) -> commit_codec.Commit:
        decoded.append(cid)
        return commit_codec.decode_commit(block, cid)

    monkeypatch.setattr(repo_mod, "decode_commit", counting)
    monkeypatch.setattr(merger, "decode_commit", counting, raising=False)
    assert porcelain.conflicts(repo) == []
    assert len(decoded) <= 2, len(decoded)  # HEAD's commit for its tree, not one per merge
