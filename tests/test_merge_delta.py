"""A merge that is not a fast-forward reads the trees in proportion to what the two sides
changed (design.md §8.1): the three trees are walked together from the base to each side,
equal subtrees skipped by CID, the path-by-path merge sees only the paths that differ, and the
result is ours' tree with the merge's changes.  It used to flatten all three trees (100,000
files: 3.3 s and 126 MiB for one edit a side).  What a flat merge guaranteed must hold still:
the result is the same whichever side merges, and a conflict sibling never lands on a file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.model.cid import DAG_PB, Cid, compute_cid
from casync.model.objects import decode_pbnode, encode_directory
from casync.trees.hamt import is_shard_node
from casync.trees.unixfs import Entry, read_dir, update_tree

from .conftest import assert_cache_describes_tree, committed_grid, refuse_flatten, settle, write


@pytest.fixture
def diverged(tmp_path: Path) -> Repository:
    """40 directories of 10 files; main and other each edit one file since the base."""
    repo = committed_grid(tmp_path / "wt", 40, 10)
    repo.update_branch("other", None, repo.head(), "branch")
    with repo.transaction(branch="other", message="theirs") as tx:
        tx.write("d31/f07.txt", b"edited on other\n")
    write(repo.root, "d07/f03.txt", "edited on main\n")
    settle()
    porcelain.commit(repo, "ours")
    return repo


def test_a_merge_of_one_edit_a_side_never_reads_a_whole_tree(diverged: Repository,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    repo = diverged
    ours, theirs = repo.head(), repo.resolve("other")
    assert ours is not None
    refuse_flatten(monkeypatch)
    outcome = porcelain.merge(repo, "other")
    monkeypatch.undo()
    assert outcome.kind == "merged" and outcome.commit is not None
    assert repo.load_commit(outcome.commit).parents == (ours, theirs)
    merged, mine = repo.flatten(repo.tree_of(outcome.commit)), repo.flatten(repo.tree_of(ours))
    assert merged.keys() == mine.keys() and len(merged) == 400
    assert [p for p in merged if merged[p] != mine[p]] == ["d31/f07.txt"]
    assert repo.read("d31/f07.txt") == b"edited on other\n"
    assert (repo.root / "d31" / "f07.txt").read_text() == "edited on other\n"
    assert (repo.root / "d07" / "f03.txt").read_text() == "edited on main\n"
    assert_cache_describes_tree(repo)
    assert porcelain.status(repo).clean


def _empty_dir(repo: Repository) -> Entry:
    block = encode_directory(())
    cid = compute_cid(DAG_PB, block, repo.hash_name)
    repo.blocks.put(cid, block)
    return Entry(cid, "dir", len(block))


def _blob(repo: Repository, data: bytes) -> Entry:
    return repo.new_file_writer().write(io.BytesIO(data))


def _commit_on(repo: Repository, branch: str, changes: dict[str, Entry | None]) -> Cid:
    """A commit on ``branch`` of its tree with ``changes`` (``update_tree``'s), which may
    link an empty directory: no commit of a working tree does, an imported DAG may."""
    head = repo.resolve(branch)
    tree = update_tree(repo.blocks, repo.tree_of(head), changes, repo.hash_name).cid
    cid = repo.make_commit(tree, [head], f"on {branch}")
    repo.blocks.flush()
    repo.update_branch(branch, head, cid, "test")
    return cid


def _merge_both_ways(repo: Repository, a: str, b: str) -> tuple[Cid, Cid]:
    """``a`` merges ``b`` and (from copies made first) ``b`` merges ``a``; the two trees."""
    repo.update_branch(f"{a}-copy", None, repo.resolve(a), "copy")
    repo.update_branch(f"{b}-copy", None, repo.resolve(b), "copy")
    trees = []
    for ours, theirs in ((a, b), (f"{b}-copy", f"{a}-copy")):
        repo.set_head(ours)
        outcome = porcelain.merge(repo, theirs)
        assert outcome.kind == "merged" and outcome.commit is not None
        trees.append(repo.tree_of(outcome.commit))
    return trees[0], trees[1]


@pytest.mark.parametrize("how", ["added by one side", "removed by one side"])
def test_both_directions_of_a_merge_build_the_same_tree_around_an_empty_directory(tmp_path: Path,
                                                                                   how: str) -> None:
    repo = Repository.init(tmp_path / "bare", replica="site-a", bare=True)
    try:
        with repo.transaction(message="base") as tx:
            tx.write("keep.txt", b"k\n")
            tx.write("sub/one.txt", b"1\n")
        if how == "removed by one side":
            _commit_on(repo, "main", {"sub/empty": _empty_dir(repo)})
        repo.update_branch("b", None, repo.resolve("main"), "branch")
        _commit_on(repo, "main", {"a.txt": _blob(repo, b"a\n")}
                   | ({"sub/empty": _empty_dir(repo)} if how == "added by one side" else {}))
        _commit_on(repo, "b", {"b.txt": _blob(repo, b"b\n")}
                   | ({"sub/empty": None} if how == "removed by one side" else {}))
        one, other = _merge_both_ways(repo, "main", "b")
        assert one == other  # else each replica merges the other's merge again, forever
        assert sorted(repo.flatten(one)) == ["a.txt", "b.txt", "keep.txt", "sub/one.txt"]
    finally:
        repo.close()


def test_a_conflict_sibling_never_replaces_a_file_neither_side_changed(tmp_path: Path) -> None:
    """An earlier merge left ``p.~site-a`` beside ``p``; both sides now edit ``p`` again and
    the siblings policy keeps the losing write under a name that is not taken."""
    repo = Repository.init(tmp_path / "bare", replica="site-a", bare=True)
    try:
        with repo.transaction(message="base") as tx:
            tx.write("p", b"base\n")
            tx.write("p.~site-a", b"kept from an earlier merge\n")
        repo.update_branch("other", None, repo.resolve("main"), "branch")
        with repo.transaction(branch="other", message="theirs") as tx:
            tx.write("p", b"theirs\n")
        with repo.transaction(message="ours") as tx:
            tx.write("p", b"ours\n")
        outcome = porcelain.merge(repo, "other", policy="siblings")
        assert outcome.kind == "merged" and outcome.commit is not None
        flat = repo.flatten(repo.tree_of(outcome.commit))
        contents = {p: repo.read(p) for p in flat}
        assert contents["p.~site-a"] == b"kept from an earlier merge\n"
        assert sorted(contents.values()) == sorted([b"kept from an earlier merge\n", b"ours\n", b"theirs\n"])
        assert len(flat) == 3
    finally:
        repo.close()


@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "hamt"])
def test_a_directory_one_side_replaced_by_a_file_survives_the_merge_both_ways(tmp_path: Path,
                                                                              sharded: bool) -> None:
    """Found by a differential review against the flat merge: ours (the side that did not
    touch ``a``) still had ``a/b``, so the changes were ``{"a": file, "a/b": None}``, and
    update_tree applied the delete after the file and removed ``a`` with the directory:
    the file a replica wrote vanished in one merge direction (plain and HAMT directories)."""
    repo = Repository.init(tmp_path / "bare", replica="site-a", bare=True)
    try:
        where = "big/" if sharded else ""
        with repo.transaction(message="base") as tx:
            tx.write("z", b"z\n")
            tx.write(f"{where}a/b", b"1\n")
        if sharded:  # 6,000 names: the directory is a HAMT (Kubo's 256 KiB links estimate)
            blob = _blob(repo, b"x\n")
            _commit_on(repo, "main", {f"big/entry-{i:05d}": blob for i in range(6000)})
            big = next(link.cid for link in read_dir(repo.blocks, repo.tree_of(repo.resolve("main")))
                       if link.name == "big")
            assert is_shard_node(decode_pbnode(repo.blocks.get(big)))
        repo.update_branch("b", None, repo.resolve("main"), "branch")
        with repo.transaction(message="a directory becomes a file") as tx:
            tx.delete(f"{where}a/b")
            tx.write(f"{where}a", b"F\n")
        with repo.transaction(branch="b", message="elsewhere") as tx:
            tx.write("z", b"z2\n")
        one, other = _merge_both_ways(repo, "main", "b")
        assert one == other
        flat = repo.flatten(one)
        assert f"{where}a" in flat and f"{where}a/b" not in flat and "z" in flat
        assert repo.read(f"{where}a", "main") == b"F\n"
    finally:
        repo.close()


def test_update_tree_lets_an_entry_replace_a_directory_and_entries_below_it_replace_the_entry(
        tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "bare", replica="site-a", bare=True)
    try:
        with repo.transaction(message="base") as tx:
            tx.write("a/b", b"1\n")
            tx.write("keep", b"k\n")
        tree = repo.tree_of(repo.resolve("main"))
        f = _blob(repo, b"F\n")
        replaced = update_tree(repo.blocks, tree, {"a": f, "a/b": None}, repo.hash_name).cid
        assert repo.flatten(replaced) == {"a": f, "keep": repo.flatten(tree)["keep"]}
        again = update_tree(repo.blocks, tree, {"a": f, "a/c": f}, repo.hash_name).cid  # a transaction's
        assert sorted(repo.flatten(again)) == ["a/c", "keep"]  # later write below "a": a directory again
    finally:
        repo.close()
