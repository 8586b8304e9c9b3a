"""What a SIGKILL at the worst moment of init, clone and checkout leaves, set up exactly
(issue 14, defects 1 and 2); tests/reliability/test_crash.py finds the same states by
killing at random moments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from casync import Repository
from casync.store.lmdb import LmdbStore

from ..conftest import write

CASYNC = [sys.executable, "-m", "casync"]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CASYNC, "-C", str(cwd), *args], capture_output=True, text=True, timeout=120)


def _dead_pid() -> int:
    """The PID of a process that has exited (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _old_killed_init(root: Path) -> None:
    """What an older casync's init left when killed between creating the store and writing
    its config: ``.casync`` with ``db`` and ``packs`` and no config."""
    root.mkdir(parents=True, exist_ok=True)
    LmdbStore(root / ".casync", create=True).close()


def test_a_store_without_config_is_no_repository_and_init_replaces_it(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    _old_killed_init(wt)
    status = _run(wt, "status")
    assert status.returncode == 2, status.stderr
    assert "KeyError" not in status.stderr and "Traceback" not in status.stderr
    assert status.stderr.startswith("error: not a casync repository") and "killed 'casync init'" in status.stderr
    done = _run(wt, "init", "--replica", "a")
    assert done.returncode == 0, done.stderr
    write(wt, "f", "1")
    assert _run(wt, "commit", "-m", "one").returncode == 0
    assert _run(wt, "fsck").returncode == 0


def test_init_never_replaces_a_store_that_holds_something(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    _old_killed_init(wt)
    store = LmdbStore(wt / ".casync")
    store.put("refs", b"heads/main", b"\x01q")  # a ref: not what a killed init leaves
    store.close()
    done = _run(wt, "init")
    assert done.returncode == 2 and "already a casync repository" in done.stderr


def test_init_builds_beside_and_a_killed_build_is_removed_never_stored(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    wt.mkdir()
    left = wt / f"..casync.casync-tmp-{_dead_pid()}"  # a killed init's half-built store
    LmdbStore(left, create=True).close()
    done = _run(wt, "init", "--replica", "a")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(wt)) == [".casync"]
    building = wt / "..casync.casync-tmp-1"  # PID 1 is alive: not removed, and never committed
    building.mkdir()
    (building / "x").write_text("x")
    write(wt, "f", "1")
    assert _run(wt, "commit", "-m", "one").returncode == 0
    with Repository.open(wt) as repo:
        assert sorted(repo.flat_tree(repo.head() or b"")) == ["f"]
    assert building.is_dir()


def test_a_clone_killed_during_its_init_is_resumed_by_the_same_clone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    assert _run(tmp_path, "init", str(src), "--replica", "s").returncode == 0
    write(src, "f", "hello")
    assert _run(src, "commit", "-m", "one").returncode == 0
    for leftover in ("old", "build"):
        dst = tmp_path / f"dst-{leftover}"
        if leftover == "old":
            _old_killed_init(dst)
        else:
            dst.mkdir()
            LmdbStore(dst / f"..casync.casync-tmp-{_dead_pid()}", create=True).close()
        done = _run(tmp_path, "clone", str(src), str(dst))
        assert done.returncode == 0, done.stderr
        assert (dst / "f").read_text() == "hello"
        assert sorted(os.listdir(dst)) == [".casync", "f"]


def test_a_clone_killed_after_its_checkout_finishes_when_run_again(tmp_path: Path) -> None:
    src = tmp_path / "src"
    assert _run(tmp_path, "init", str(src), "--replica", "s").returncode == 0
    write(src, "f", "hello")
    assert _run(src, "commit", "-m", "one").returncode == 0
    dst = tmp_path / "dst"
    assert _run(tmp_path, "clone", str(src), str(dst)).returncode == 0
    with Repository.open(dst) as repo:  # as killed between the branch move and the end
        tip = repo.head()
        assert tip is not None
        from casync.transfer.clone import mark_pending
        mark_pending(repo, str(src), None, ("main", tip))
    done = _run(tmp_path, "clone", str(src), str(dst))
    assert done.returncode == 0, done.stderr
    with Repository.open(dst) as repo:
        assert repo.store.get("meta", b"clone_pending") is None
        assert repo.read("f") == b"hello"
    # a clone someone went on using is not resumed
    with Repository.open(dst) as repo:
        repo.store.put("meta", b"clone_pending", json.dumps({"url": str(src), "branch": None}).encode())
    again = _run(tmp_path, "clone", str(src), str(dst))
    assert again.returncode == 2 and "already holds a repository" in again.stderr


def test_a_killed_checkouts_temporary_files_are_never_committed_and_the_next_commit_removes_them(
        tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    assert _run(tmp_path, "init", str(wt), "--replica", "a").returncode == 0
    write(wt, "d/f", "one")
    assert _run(wt, "commit", "-m", "one").returncode == 0
    dead = _dead_pid()
    stale = [write(wt, f".f.casync-tmp-{dead}", "half"), write(wt, f"d/.big.bin.casync-tmp-{dead}", "half")]
    running = write(wt, "d/.g.casync-tmp-1", "being written")  # PID 1 runs: left alone
    users = [write(wt, "f.casync-tmp-5", "mine"), write(wt, ".f.casync-tmp-x", "mine"),
             write(wt, ".casync-tmp-7", "mine")]  # not the pattern: ordinary files
    status = _run(wt, "status")
    assert "a temporary file of casync" in status.stdout + status.stderr
    write(wt, "d/f", "two")
    assert _run(wt, "commit", "-m", "two").returncode == 0
    with Repository.open(wt) as repo:
        assert sorted(repo.flat_tree(repo.head() or b"")) == sorted(
            ["d/f", "f.casync-tmp-5", ".f.casync-tmp-x", ".casync-tmp-7"])
    assert not any(p.exists() for p in stale)
    assert running.exists() and all(p.exists() for p in users)


def test_a_checkout_removes_what_a_killed_checkout_left(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    assert _run(tmp_path, "init", str(wt), "--replica", "a").returncode == 0
    write(wt, "f", "one")
    assert _run(wt, "commit", "-m", "one").returncode == 0
    write(wt, "f", "two")
    assert _run(wt, "commit", "-m", "two").returncode == 0
    stale = write(wt, f".f.casync-tmp-{_dead_pid()}", "half of one")
    done = _run(wt, "checkout", "HEAD~1")
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and (wt / "f").read_text() == "one"


def test_a_merge_killed_after_it_moved_the_branch_is_finished_by_the_same_merge(tmp_path: Path) -> None:
    """Found by the crash harness: the branch moved, the files had not followed, and the
    re-run refused ("branch main moved since the working tree was checked out")."""
    wt, other = tmp_path / "wt", tmp_path / "b"
    assert _run(tmp_path, "init", str(wt), "--replica", "a").returncode == 0
    write(wt, "f", "one")
    assert _run(wt, "commit", "-m", "one").returncode == 0
    assert _run(tmp_path, "clone", str(wt), str(other), "--replica", "b").returncode == 0
    write(other, "g", "theirs")
    assert _run(other, "commit", "-m", "theirs").returncode == 0
    assert _run(wt, "remote", "add", "b", "../b").returncode == 0
    assert _run(wt, "fetch", "b").returncode == 0
    with Repository.open(wt) as repo:  # as a merge killed between its branch move and the files
        from casync.worktree.state import intend_move
        theirs = repo.resolve("b/main")
        intend_move(repo, theirs)
        repo.update_branch("main", repo.head(), theirs, "merge b/main: fast-forward")
    assert not (wt / "g").exists()
    done = _run(wt, "merge", "b/main")
    assert done.returncode == 0, done.stderr
    assert (wt / "g").read_text() == "theirs"
    assert _run(wt, "status").stdout.count("\n") <= 2 and _run(wt, "fsck").returncode == 0
