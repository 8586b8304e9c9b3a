"""The native working-tree walk (casync/_cscan.c) against the pure-Python ``scan``, and
the digest fast path of ``status`` built on it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.store.lmdb import STAT_KEY, stat_records_digest
from casync.worktree import disk as worktree
from casync.worktree.disk import Ignore, native_stat_records, scan

needs_native = pytest.mark.skipif(worktree._native_walk is None and not os.environ.get("CI"),
                                  reason="casync._cscan was not built (no C compiler at install)")


def test_the_extension_is_built_in_ci() -> None:
    """CI installs with a compiler: a silently missing accelerator would hide a regression."""
    if not os.environ.get("CI"):
        pytest.skip("only enforced in CI")
    assert worktree._native_walk is not None


def _python_records(root: Path, ignore: Ignore) -> tuple[bytes, list[str]]:
    files, skipped = scan(root, ignore)
    records = b"".join(p.encode() + b"\0" + STAT_KEY.pack(st.st_mtime_ns, st.st_ctime_ns, st.st_size,
                                                           st.st_ino, st.st_mode)
                       for p, st in sorted(files.items()))
    return records, skipped


def _tricky_tree(root: Path) -> None:
    """Names that sort around '/', Unicode, symlinks, ignored and unstorable entries."""
    for rel in ["a", "a-b", "a.txt", "a b", "b/a.c", "b/a-b/x", "b/a/y", "b/ab", "é", "z/ñ/deep/file",
                "caSync-notes.txt", "logs/keep.log", "logs/drop.log", "build/out.o", "sub/.casync"]:
        p = root / rel
        if rel == "a":
            p.mkdir(parents=True)
            (p / "inner").write_bytes(b"inner")
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode() * 3)
    (root / "link").symlink_to("a.txt")
    (root / "dangling").symlink_to("nowhere")
    (root / "bad\\name").write_bytes(b"x")
    (root / "ctrl\x01").write_bytes(b"x")
    os.mkfifo(root / "fifo")
    os.mkdir(root / "empty")
    (root / "exe").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exe", 0o755)
    os.mkdir(os.path.join(os.fsencode(root), b"not-utf8-\xff"))
    (root / ".casync").mkdir()
    (root / ".casync" / "hidden").write_bytes(b"repository internals are never scanned")
    (root / ".casyncignore").write_text("build/\n*.log\n!keep.log\n")


@needs_native
@pytest.mark.parametrize("with_rules", [False, True])
def test_native_walk_equals_python_scan_byte_for_byte(tmp_path: Path, with_rules: bool) -> None:
    _tricky_tree(tmp_path)
    ignore = Ignore.load(tmp_path) if with_rules else Ignore()
    native = native_stat_records(tmp_path, ignore)
    assert native is not None
    records, skipped = native
    expected_records, expected_skipped = _python_records(tmp_path, ignore)
    assert records == expected_records
    assert sorted(skipped) == sorted(expected_skipped)
    # the cases the comparison is about are really there
    assert b"a-b\0" in records and b"a/inner\0" in records and "fifo (not a regular file or symlink)" in skipped
    assert b".casync/hidden" not in records and any(s.startswith("sub/.casync") for s in skipped)
    assert (b"build/out.o\0" in records) is not with_rules and b"logs/keep.log\0" in records
    assert records.index(b"a-b\0") < records.index(b"a/inner\0")  # '-' sorts before '/'


@needs_native
def test_native_walk_applies_ignore_rules_to_untracked_paths_only_as_scan_does(tmp_path: Path) -> None:
    """A tracked file a rule matches is walked; an ignored directory holding tracked files is
    descended, its untracked files stay ignored; both walks report the same tracked-ignored."""
    _tricky_tree(tmp_path)
    (tmp_path / "build" / "deep").mkdir()
    (tmp_path / "build" / "deep" / "t.o").write_bytes(b"tracked under an ignored directory")
    tracked = {"logs/drop.log", "build/deep/t.o"}
    tracked_dirs = {"build", "build/deep", "logs"}

    def is_tracked(path: str, is_dir: bool) -> bool:
        return path in (tracked_dirs if is_dir else tracked)

    rules = Ignore.load(tmp_path)
    native_ignore, python_ignore = rules.untracked_only(is_tracked), rules.untracked_only(is_tracked)
    native = native_stat_records(tmp_path, native_ignore)
    assert native is not None
    expected_records, expected_skipped = _python_records(tmp_path, python_ignore)
    assert native[0] == expected_records and sorted(native[1]) == sorted(expected_skipped)
    assert sorted(native_ignore.tracked_ignored) == sorted(python_ignore.tracked_ignored) == sorted(tracked)
    assert b"logs/drop.log\0" in native[0] and b"build/deep/t.o\0" in native[0]
    assert b"build/out.o\0" not in native[0]  # untracked, in an ignored directory


@needs_native
def test_native_walk_of_a_missing_root_names_it(tmp_path: Path) -> None:
    records, skipped = native_stat_records(tmp_path / "gone", Ignore()) or (None, None)
    assert records == b"" and skipped == []  # vanished, as scan() treats it
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "f").write_bytes(b"x")
    if os.geteuid() == 0:
        return  # root reads everything: the permission case cannot be staged
    os.chmod(tmp_path / "locked", 0)
    try:
        with pytest.raises(PermissionError) as err:
            native_stat_records(tmp_path, Ignore())
        assert "locked" in str(err.value)
    finally:
        os.chmod(tmp_path / "locked", 0o755)


def _settle() -> None:
    """Files written within the last second are 'racily clean' and never cached."""
    time.sleep(1.1)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_status_fast_path_sees_every_kind_of_change(tmp_path: Path, native: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(worktree, "_native_walk", None)
    elif worktree._native_walk is None and not os.environ.get("CI"):
        pytest.skip("casync._cscan was not built")
    repo = Repository.init(tmp_path / "wt", replica="site-a")
    root = repo.root
    try:
        for i in range(20):
            (root / f"d{i % 3}").mkdir(exist_ok=True)
            (root / f"d{i % 3}" / f"f{i}").write_bytes(b"v1-%d" % i)
        (root / ".casyncignore").write_text("*.tmp\n")
        _settle()
        porcelain.commit(repo, "one")
        assert porcelain.status(repo).clean
        digest = repo.store.stat_cache_digest()
        assert digest is not None
        if native:  # the digest comparison is what status relies on
            walk = native_stat_records(root, Ignore.load(root))
            assert walk is not None and stat_records_digest(walk[0]) == digest

        (root / "scratch.tmp").write_bytes(b"ignored")
        assert porcelain.status(repo).clean
        # same size, mtime put back: only ctime tells
        f = root / "d1" / "f1"
        st = f.stat()
        f.write_bytes(b"v2-1")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert porcelain.status(repo).modified == ["d1/f1"]
        (root / "d2" / "f2").unlink()
        (root / "d0" / "new").write_bytes(b"n")
        s = porcelain.status(repo)
        assert (s.modified, s.deleted, s.added) == (["d1/f1"], ["d2/f2"], ["d0/new"])
        _settle()
        porcelain.commit(repo, "two")
        assert porcelain.status(repo).clean and repo.store.stat_cache_digest() not in (None, digest)
    finally:
        repo.close()


def test_a_cache_without_digest_gets_one_from_a_clean_status(repo: Repository) -> None:
    """Repositories written before the digest existed upgrade on their first clean status."""
    (repo.root / "f").write_bytes(b"x")
    _settle()
    porcelain.commit(repo, "one")
    repo.store.write(lambda txn: txn.delete(b"statcache_digest", db=repo.store._dbs["meta"]))
    assert repo.store.stat_cache_digest() is None
    assert porcelain.status(repo).clean
    assert repo.store.stat_cache_digest() is not None
    if worktree._native_walk is not None:
        walk = native_stat_records(repo.root, Ignore.load(repo.root))
        assert walk is not None and stat_records_digest(walk[0]) == repo.store.stat_cache_digest()
