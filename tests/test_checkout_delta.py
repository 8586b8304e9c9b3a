"""Moving the working tree between two stored trees (checkout, a fast-forward, a push to the
checked-out branch) reads both trees in proportion to what differs between them and to the
uncommitted changes, writes only the changed files, and moves the stat cache to the new tree
instead of re-stating and rewriting every file's entry."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casync import Repository, porcelain
from casync.errors import WorktreeDirty
from casync.worktree import checkout as checkout_mod

from .conftest import assert_cache_describes_tree, committed_grid, refuse_flatten, settle, write


@pytest.fixture
def two_branches(tmp_path: Path) -> Iterator[Repository]:
    """``main`` and ``other``, 40 directories of 10 files, differing in one file of d07."""
    repo = committed_grid(tmp_path / "wt", 40, 10)
    repo.update_branch("other", None, repo.head(), "branch")
    write(repo.root, "d07/f03.txt", "changed on main\n")
    settle()
    porcelain.commit(repo, "one change")
    try:
        yield repo
    finally:
        repo.close()


def test_a_checkout_of_a_one_file_change_reads_and_writes_only_that_file(
        two_branches: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: checkout flattened both trees and lstat'ed and re-cached every file."""
    repo = two_branches
    lstats: list[str] = []
    real_lstat = os.lstat

    def counting(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        lstats.append(os.fspath(path))
        return real_lstat(path, *args, **kw)
    refuse_flatten(monkeypatch)
    monkeypatch.setattr(checkout_mod.os, "lstat", counting)
    porcelain.checkout(repo, "other")
    assert (repo.root / "d07" / "f03.txt").read_text() == "file 7 3\n"
    assert len(lstats) < 10, lstats  # the changed file (and a few checks), not the 400 files
    monkeypatch.undo()
    assert_cache_describes_tree(repo)
    assert porcelain.status(repo).clean


def test_the_moved_cache_is_the_cache_a_full_refresh_writes(two_branches: Repository) -> None:
    repo = two_branches
    write(repo.root, "d20/f01.txt", "an uncommitted edit, kept\n")
    porcelain.checkout(repo, "other")
    assert_cache_describes_tree(repo)
    cache = repo.store.load_stat_cache()
    assert cache["d20/f01.txt"][4] == 0  # the kept edit is not trusted
    st = porcelain.status(repo)
    assert (st.modified, st.added, st.deleted) == (["d20/f01.txt"], [], [])
    porcelain.checkout(repo, "main")
    assert_cache_describes_tree(repo)
    assert porcelain.status(repo).modified == ["d20/f01.txt"]


def test_without_a_cache_of_the_old_tree_the_whole_cache_is_written(two_branches: Repository) -> None:
    repo = two_branches
    repo.store.write(lambda txn: txn.delete(b"statcache_tree", db=repo.store._dbs["meta"]))
    porcelain.checkout(repo, "other")
    assert_cache_describes_tree(repo)
    assert porcelain.status(repo).clean


def test_an_edit_in_the_way_is_refused_and_force_discards_every_edit(two_branches: Repository) -> None:
    repo = two_branches
    write(repo.root, "d07/f03.txt", "mine\n")  # the file the checkout changes
    write(repo.root, "d30/f00.txt", "mine too\n")  # a file both trees share
    (repo.root / "d31" / "f01.txt").unlink()
    write(repo.root, "d32/new.txt", "untracked\n")
    with pytest.raises(WorktreeDirty, match=r"d07/f03\.txt"):
        porcelain.checkout(repo, "other")
    assert (repo.root / "d07" / "f03.txt").read_text() == "mine\n"
    porcelain.checkout(repo, "other", force=True)
    assert (repo.root / "d07" / "f03.txt").read_text() == "file 7 3\n"
    assert (repo.root / "d30" / "f00.txt").read_text() == "file 30 0\n"  # outside the change: discarded too
    assert (repo.root / "d31" / "f01.txt").read_text() == "file 31 1\n"
    assert (repo.root / "d32" / "new.txt").read_text() == "untracked\n"  # untracked files survive
    assert_cache_describes_tree(repo)
    st = porcelain.status(repo)
    assert (st.modified, st.deleted, st.added) == ([], [], ["d32/new.txt"])


def test_a_fast_forward_reads_in_proportion_to_the_change(two_branches: Repository,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    repo = two_branches
    porcelain.checkout(repo, "other")
    settle()
    refuse_flatten(monkeypatch)
    outcome = porcelain.merge(repo, "main")
    assert outcome.kind == "fast-forward"
    assert (repo.root / "d07" / "f03.txt").read_text() == "changed on main\n"
    monkeypatch.undo()
    assert_cache_describes_tree(repo)
    assert porcelain.status(repo).clean


def test_a_directory_replaced_by_a_file_and_back(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "wt", replica="site-a")
    try:
        for f in range(3):
            write(repo.root, f"x/f{f}", f"{f}\n")
        write(repo.root, "keep", "k\n")
        settle()
        porcelain.commit(repo, "a dir")
        repo.update_branch("dir", None, repo.head(), "branch")
        for f in range(3):
            (repo.root / "x" / f"f{f}").unlink()
        (repo.root / "x").rmdir()
        write(repo.root, "x", "now a file\n")
        porcelain.commit(repo, "a file")
        porcelain.checkout(repo, "dir")
        assert sorted(os.listdir(repo.root / "x")) == ["f0", "f1", "f2"]
        assert_cache_describes_tree(repo)
        porcelain.checkout(repo, "main")
        assert (repo.root / "x").read_text() == "now a file\n"
        assert_cache_describes_tree(repo)
        assert porcelain.status(repo).clean
    finally:
        repo.close()


def test_diff_and_show_of_a_one_file_commit_read_no_whole_tree(two_branches: Repository,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``Repository.diff`` and ``casync show`` flattened both trees (every file of both
    commits listed to report one change)."""
    from click.testing import CliRunner

    from casync.cli.main import main

    repo = two_branches
    refuse_flatten(monkeypatch)
    assert [(c.path, c.status) for c in repo.diff("other", "main")] == [("d07/f03.txt", "modified")]
    assert [(c.path, c.status) for c in repo.diff("main", "other")] == [("d07/f03.txt", "modified")]
    assert len(repo.diff(None, "other")) == 400  # from nothing: every file added
    r = CliRunner().invoke(main, ["-C", str(repo.root), "show", "--json", "main"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["changes"] == [{"path": "d07/f03.txt", "status": "modified"}]
