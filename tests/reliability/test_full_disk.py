"""A full disk and a full LMDB map (issue 14, defect 4 and item 4), on a real small file
system: a tmpfs of a few MiB mounted for the test.  Every way the disk fills while casync
writes (LMDB's short write reported as EIO, a plain ENOSPC from a pack or the working tree)
ends in the one StorageFull error with its hint, the repository stays consistent, and the
same command succeeds once space is freed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.errors import StorageFull
from casync.store.lmdb import LmdbStore
from casync.transports.peer.exchange import LocalPeer, fetch_from

CASYNC = [sys.executable, "-m", "casync"]
FS_BYTES = 8 << 20


def _require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "1" or os.environ.get("CASYNC_REQUIRE_KUBO") == "1":
            pytest.fail("the full-disk tests mount a tmpfs: run them as root (CI does)")
        pytest.skip("mounting a tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_BYTES at ``tmp_path/fs``, unmounted afterwards whatever happens."""
    _require_root()
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(fs: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``fs``."""
    ballast = fs / "ballast"
    with open(ballast, "ab") as f:
        while _free(fs) > leave + (1 << 16):
            f.write(b"\0" * min(1 << 16, _free(fs) - leave - (1 << 16)) or b"\0")
            f.flush()
        while _free(fs) > leave:
            f.write(b"\0" * 4096)
            f.flush()
    return ballast


def _run(wt: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CASYNC, "-C", str(wt), *args], capture_output=True, text=True, timeout=120)


def _assert_storage_full(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: "), done.stderr
    assert any(line.startswith("hint: ") and "free disk space" in line for line in lines), done.stderr


@pytest.mark.parametrize("leave", [0, 4 << 10, 64 << 10, 512 << 10])
def test_a_commit_on_a_full_disk_is_storage_full_and_succeeds_after_space_is_freed(small_fs: Path,
                                                                                  leave: int) -> None:
    wt = small_fs / "wt"
    assert _run(wt, "init", "--replica", "a").returncode == 0
    (wt / "small").write_text("kept\n")
    assert _run(wt, "commit", "-m", "one").returncode == 0
    (wt / "big.bin").write_bytes(os.urandom(2 << 20))
    ballast = _fill(small_fs, leave)
    failed = _run(wt, "commit", "-m", "two")
    _assert_storage_full(failed)
    ballast.unlink()
    check = _run(wt, "fsck")
    assert check.returncode == 0, check.stdout + check.stderr
    assert _run(wt, "log", "--oneline").stdout.count("\n") == 1  # nothing was committed
    again = _run(wt, "commit", "-m", "two")
    assert again.returncode == 0, again.stderr
    with Repository.open(wt) as repo:
        assert repo.read("big.bin") == (wt / "big.bin").read_bytes()
        assert repo.read("small") == b"kept\n"
        assert repo.fsck().ok


@pytest.mark.parametrize("leave", [0, 4 << 10, 256 << 10])
def test_a_checkout_on_a_full_disk_is_storage_full_and_succeeds_after_space_is_freed(small_fs: Path,
                                                                                    leave: int) -> None:
    wt = small_fs / "wt"
    assert _run(wt, "init", "--replica", "a").returncode == 0
    data = os.urandom(1 << 20)
    (wt / "big.bin").write_bytes(data)
    assert _run(wt, "commit", "-m", "big").returncode == 0
    (wt / "big.bin").unlink()
    (wt / "other").write_text("x")
    assert _run(wt, "commit", "-m", "without big").returncode == 0
    ballast = _fill(small_fs, leave)
    failed = _run(wt, "checkout", "HEAD~1")
    _assert_storage_full(failed)
    assert not [p.name for p in wt.iterdir() if "casync-tmp" in p.name]  # no half file left
    ballast.unlink()
    assert _run(wt, "fsck").returncode == 0
    again = _run(wt, "checkout", "HEAD~1")
    assert again.returncode == 0, again.stderr
    assert (wt / "big.bin").read_bytes() == data


def test_init_on_a_full_disk_is_storage_full_and_leaves_no_repository(small_fs: Path) -> None:
    wt = small_fs / "wt"
    wt.mkdir()
    ballast = _fill(small_fs, 0)
    failed = _run(wt, "init", "--replica", "a")
    _assert_storage_full(failed)
    assert os.listdir(wt) == []  # neither a store nor the one it was building
    ballast.unlink()
    assert _run(wt, "init", "--replica", "a").returncode == 0
    assert _run(wt, "fsck").returncode == 0


def test_a_full_lmdb_map_on_a_fetch_is_storage_full_and_the_fetch_succeeds_with_room(tmp_path: Path) -> None:
    """The map half of item 4 through a transfer (the commit case is tests/test_store_limits.py)."""
    src = Repository.init(tmp_path / "src", replica="s")
    try:
        for i in range(3000):
            path = src.root / f"d{i % 30}" / f"f{i}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(1024))
        porcelain.commit(src, "many")
        repo_id = src.repo_id
    finally:
        src.close()
    Repository.init(tmp_path / "dst", replica="d", repository_id=repo_id).close()
    small = Repository(tmp_path / "dst", LmdbStore(tmp_path / "dst" / ".casync", map_size=128 << 10,
                                                    max_map_size=128 << 10))
    peer = LocalPeer(str(tmp_path / "src"))
    try:
        with pytest.raises(StorageFull, match="LMDB map"):
            fetch_from(small, peer, "src")
        assert small.fsck().ok  # what a flushed batch kept (partial/src) is whole
        assert "remotes/src/main" not in small.refs.list_refs()
    finally:
        small.close()
    with Repository.open(tmp_path / "dst") as repo:  # the default map: the same fetch fits
        fetch_from(repo, peer, "src")
        assert repo.fsck().ok
        assert repo.refs.get_ref("remotes/src/main") == peer.repo.head()
        assert repo.read("d0/f0", rev="remotes/src/main") == (tmp_path / "src" / "d0" / "f0").read_bytes()
    peer.close()


def test_every_way_a_commit_meets_a_full_disk_is_storage_full(small_fs: Path) -> None:
    """Free space swept across the point where the packs fit and LMDB's commit does not:
    there LMDB's short write comes back as EIO (``mdb_txn_commit: Input/output error``),
    which before the fix reached the user as that and nothing else."""
    seen: list[str] = []
    for leave in range(140 << 10, 232 << 10, 4 << 10):
        wt = small_fs / "wt"
        subprocess.run(["rm", "-rf", str(wt), str(small_fs / "ballast")], check=True)
        assert _run(wt, "init", "--replica", "a").returncode == 0
        for i in range(400):
            path = wt / f"d{i % 10}" / f"f{i}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(300))
        ballast = _fill(small_fs, leave)
        done = _run(wt, "commit", "-m", "many")
        if done.returncode == 0:
            seen.append("committed")
            continue
        _assert_storage_full(done)
        seen.append(done.stderr.splitlines()[0])
        ballast.unlink()
        assert _run(wt, "fsck").returncode == 0
        assert _run(wt, "commit", "-m", "many").returncode == 0
    assert any("Input/output error" in line for line in seen), seen  # the EIO case was reached
