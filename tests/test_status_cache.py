"""``status`` on a tree with changes (docs/design.md §10.3, way 3): answered from the stat
cache and the walk, reading only the files whose stat changed and the directories on their
paths, never flattening the tree; and every status leaves a cache that still describes the
checked-out tree (§10.2's invariant), so the next one can do the same."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casync import Repository, porcelain
from casync.trees import walk as walk_mod
from casync.worktree import disk as worktree_disk
from casync.worktree import state as workstate

from .conftest import assert_cache_describes_tree, refuse_flatten, settle, write


@pytest.fixture(params=["native", "python"])
def walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both walks feed way 3: the native records and the Python scan's."""
    if request.param == "python":
        monkeypatch.setattr(worktree_disk, "_native_walk", None)
    elif worktree_disk._native_walk is None and not os.environ.get("CI"):
        pytest.skip("casync._cscan was not built")
    return str(request.param)


@pytest.fixture
def big(tmp_path: Path) -> Iterator[Repository]:
    """30 directories of 20 files and one deeper, committed and settled (the cache trusts every file)."""
    repo = Repository.init(tmp_path / "wt", replica="site-a")
    for d in range(30):
        for f in range(20):
            write(repo.root, f"d{d:02}/f{f:02}.txt", f"file {d} {f}\n")
    write(repo.root, "d05/sub/deep.txt", "deep\n")
    settle()
    porcelain.commit(repo, "base")
    try:
        yield repo
    finally:
        repo.close()


class _Reads:
    """Counts the directory blocks status decodes; refuses a flatten of the tree."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dirs = 0
        real = walk_mod.read_dir_block

        def counting(cid: bytes, node: Any) -> Any:
            self.dirs += 1
            return real(cid, node)
        monkeypatch.setattr(walk_mod, "read_dir_block", counting)
        refuse_flatten(monkeypatch)


def test_one_edit_in_a_large_tree_reads_only_its_path(big: Repository, walk: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before way 3 existed: a status with one change flattened the whole tree."""
    write(big.root, "d05/sub/deep.txt", "edited\n")
    reads = _Reads(monkeypatch)
    st = porcelain.status(big)
    assert (st.modified, st.added, st.deleted) == (["d05/sub/deep.txt"], [], [])
    assert reads.dirs == 3  # the root, d05, d05/sub: not the 31 directories of the tree
    monkeypatch.undo()  # (the check below reads the whole tree)
    assert_cache_describes_tree(big)


def test_every_kind_of_change_is_found_without_the_tree(big: Repository, walk: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = big.root
    write(root, "d01/f01.txt", "changed content\n")
    f = root / "d02" / "f02.txt"  # same size, mtime put back: only ctime tells
    st = f.stat()
    f.write_bytes(b"file 2 X\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(root / "d03" / "f03.txt", 0o755)
    (root / "d04" / "f04.txt").unlink()
    (root / "d04" / "f04.txt").symlink_to("f05.txt")
    (root / "d06" / "f06.txt").unlink()
    write(root, "d07/new.txt", "new\n")
    write(root, "new-top", "n\n")
    (root / "d08" / "f08.txt").unlink()
    write(root, "d08/f08.txt/inside", "a directory where a file was\n")
    for name in os.listdir(root / "d09"):
        (root / "d09" / name).unlink()
    (root / "d09").rmdir()
    write(root, "d09", "a file where a directory was\n")
    write(root, "d10/é-accent", "non-ASCII sorts after every ASCII name\n")
    write(root, "d10-x", "'-' sorts before '/'\n")
    (root / "d11" / "f11.txt").touch()  # touched, content the same: not a change
    reads = _Reads(monkeypatch)
    st = porcelain.status(big)
    assert st.modified == ["d01/f01.txt", "d02/f02.txt", "d03/f03.txt", "d04/f04.txt"]
    assert st.deleted == ["d06/f06.txt", "d08/f08.txt"] + [f"d09/f{i:02}.txt" for i in range(20)]
    assert st.added == ["d07/new.txt", "d08/f08.txt/inside", "d09", "d10-x", "d10/é-accent", "new-top"]
    assert reads.dirs == 6  # the root, d01-d04 and d11 (files whose stat changed): not 31
    monkeypatch.undo()  # (the check below reads the whole tree)
    assert_cache_describes_tree(big)


def test_a_touched_file_gets_new_stat_data_and_the_next_status_reads_nothing(
        big: Repository, walk: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target = big.root / "d12" / "f12.txt"
    old = os.lstat(target)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns - 5_000_000_000))
    write(big.root, "untracked.txt", "keeps the tree dirty\n")
    settle()
    assert porcelain.status(big).added == ["untracked.txt"]
    entry = big.store.load_stat_cache()["d12/f12.txt"]
    now = os.lstat(target)
    assert entry[:5] == (now.st_mtime_ns, now.st_ctime_ns, now.st_size, now.st_ino, now.st_mode)
    (big.root / "untracked.txt").unlink()
    opened: list[str] = []
    real_open = os.open

    def watching(path: Any, *args: Any, **kw: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kw)
    monkeypatch.setattr(os, "open", watching)
    assert porcelain.status(big).clean
    assert not [p for p in opened if "f12.txt" in str(p)]


def test_an_edit_in_the_commits_own_second_is_still_seen(tmp_path: Path, walk: str) -> None:
    """The racy-clean rule holds on way 3: an entry the commit could not trust is a suspect."""
    repo = Repository.init(tmp_path / "wt", replica="site-a")
    try:
        write(repo.root, "a.txt", "one\n")
        write(repo.root, "b.txt", "two\n")
        porcelain.commit(repo, "now")  # both files racy: their entries are untrusted
        st = os.lstat(repo.root / "a.txt")
        write(repo.root, "a.txt", "ONE\n")  # same size, same second
        os.utime(repo.root / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        result = porcelain.status(repo)
        assert (result.modified, result.added, result.deleted) == (["a.txt"], [], [])
    finally:
        repo.close()


def test_a_dirty_status_leaves_a_cache_that_describes_the_tree(big: Repository, walk: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: a status that had to flatten (way 4) wrote a cache describing no tree when
    anything was dirty, so every later status flattened again until the next commit."""
    write(big.root, "d13/f13.txt", "edited\n")
    (big.root / "d14" / "f14.txt").unlink()
    big.store.write(lambda txn: txn.delete(b"statcache_tree", db=big.store._dbs["meta"]))  # as after restore
    first = porcelain.status(big)  # way 4
    assert (first.modified, first.deleted) == (["d13/f13.txt"], ["d14/f14.txt"])
    assert_cache_describes_tree(big)
    cache = big.store.load_stat_cache()
    tree = workstate.checked_out(big).tree
    assert tree is not None
    committed = big.flatten(tree)
    assert cache.keys() == committed.keys()  # every file of the tree, nothing else
    assert all(cache[p][6] == e.cid for p, e in committed.items())  # with its committed content
    assert cache["d13/f13.txt"][4] == 0 and cache["d14/f14.txt"][4] == 0  # untrusted: never match
    _Reads(monkeypatch)
    second = porcelain.status(big)  # way 3
    assert (second.modified, second.deleted) == (first.modified, first.deleted)


def test_a_commit_after_a_dirty_status_commits_the_edits(big: Repository, walk: str) -> None:
    """The cache a dirty status leaves must not make the commit trust an edited file."""
    write(big.root, "d15/f15.txt", "edited\n")
    assert porcelain.status(big).modified == ["d15/f15.txt"]
    porcelain.commit(big, "edit")
    assert b"".join(big.iter_file(big.entry_at("HEAD:d15/f15.txt")[2].cid)) == b"edited\n"
    assert porcelain.status(big).clean


def test_update_stat_cache_does_nothing_once_the_cache_describes_another_tree(big: Repository) -> None:
    tree = workstate.checked_out(big).tree
    assert tree is not None
    entry = big.store.load_stat_cache()["d16/f16.txt"]
    fresh = (1, 2, entry[2], 3, entry[4], entry[5], entry[6])
    with big.store.writer_lock():
        assert big.store.update_stat_cache({"d16/f16.txt": fresh, "not/in/tree": fresh}, tree)
        assert big.store.load_stat_cache()["d16/f16.txt"] == fresh
        assert "not/in/tree" not in big.store.load_stat_cache()  # never adds a file
        assert not big.store.update_stat_cache({"d16/f16.txt": entry}, b"\x01another tree")
    assert big.store.load_stat_cache()["d16/f16.txt"] == fresh
