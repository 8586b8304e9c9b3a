"""The local store at its limits, on real LMDB and pack files made small on purpose: the map
grows, packs rotate, a map that may not grow and a pack that cannot be synced fail with one
message and commit nothing, a truncated pack is reported, never read as data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.errors import CorruptBlock, StorageError, StorageFull
from casync.store.lmdb import LmdbStore

from .conftest import Cli, write


def _opened(wt: Path, **limits: int) -> Repository:
    """``wt``'s repository on a store opened with small limits (``LmdbStore``'s parameters)."""
    return Repository(wt, LmdbStore(wt / ".casync", **limits))


def _many_files(wt: Path, n: int, size: int = 64) -> dict[str, bytes]:
    files = {f"d{i % 20}/f{i}": os.urandom(size) for i in range(n)}
    for rel, data in files.items():
        write(wt, rel, data)
    return files


def test_a_small_lmdb_map_grows_and_keeps_everything(tmp_path: Path) -> None:
    Repository.init(tmp_path / "wt", replica="a").close()
    wt = tmp_path / "wt"
    files = _many_files(wt, 3000)
    repo = _opened(wt, map_size=256 << 10)
    try:
        assert repo.store.env.info()["map_size"] == 256 << 10
        porcelain.commit(repo, "many")
        grown = repo.store.env.info()["map_size"]
        assert grown > 256 << 10  # 3000 index entries and stat records do not fit in 256 KiB
    finally:
        repo.close()
    repo = Repository.open(wt)
    try:
        assert repo.fsck().ok
        assert all(repo.read(rel) == data for rel, data in files.items())
    finally:
        repo.close()


def test_an_lmdb_map_that_may_not_grow_fails_cleanly_and_commits_nothing(tmp_path: Path) -> None:
    Repository.init(tmp_path / "wt", replica="a").close()
    wt = tmp_path / "wt"
    write(wt, "first", "1")
    repo = _opened(wt, map_size=256 << 10, max_map_size=256 << 10)
    try:
        first = porcelain.commit(repo, "one")
        _many_files(wt, 3000)
        with pytest.raises(StorageFull, match=r"LMDB map .* is full"):
            porcelain.commit(repo, "many")
        assert repo.resolve_cid("HEAD") == first
        assert repo.fsck().ok
    finally:
        repo.close()
    repo = Repository.open(wt)  # the default limits: the same commit now fits
    try:
        porcelain.commit(repo, "many")
        assert [e.commit.message for e in repo.log()] == ["many", "one"]
    finally:
        repo.close()


def test_packs_rotate_at_their_size_limit_and_every_block_stays_readable(tmp_path: Path) -> None:
    Repository.init(tmp_path / "wt", replica="a").close()
    wt = tmp_path / "wt"
    packs = wt / ".casync" / "packs"
    written: dict[str, bytes] = {}
    for n in range(4):
        written[f"f{n}.bin"] = write(wt, f"f{n}.bin", os.urandom(20_000)).read_bytes()
        repo = _opened(wt, pack_rotate_bytes=16 << 10)
        try:
            porcelain.commit(repo, f"commit {n}")
        finally:
            repo.close()
    names = sorted(p.name for p in packs.glob("*.pack"))
    assert names == [f"{i:08d}.pack" for i in range(1, 5)]  # each batch passed the limit: a new pack
    repo = _opened(wt)
    try:
        assert repo.store.get("meta", b"pack_current") == b"5"
        assert all(repo.read(rel) == data for rel, data in written.items())
        assert repo.fsck().ok
    finally:
        repo.close()
    # a writer started on a pack already past the limit moves on to the next one too (a
    # committed batch made it so: pack_end says where it ends, else its bytes would be a
    # killed write, cut back at the next open)
    full = (packs / "00000001.pack").read_bytes()
    repo = _opened(wt)
    try:
        repo.store.put("meta", b"pack_end/5", str(len(full)).encode())
    finally:
        repo.close()
    (packs / "00000005.pack").write_bytes(full)
    write(wt, "late.bin", os.urandom(1000))
    repo = _opened(wt, pack_rotate_bytes=16 << 10)
    try:
        porcelain.commit(repo, "late")
        assert (packs / "00000006.pack").exists()
        assert repo.read("late.bin") == (wt / "late.bin").read_bytes()
    finally:
        repo.close()


def test_a_truncated_pack_is_reported_as_corrupt_never_read_short(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    Repository.init(wt, replica="a").close()
    data = os.urandom(4000)
    write(wt, "f.bin", data)
    cli = Cli(wt)
    cli("commit", "-m", "one")
    pack = next((wt / ".casync" / "packs").glob("*.pack"))
    os.truncate(pack, pack.stat().st_size - 2000)  # the file's leaf (written first) keeps its start only
    repo = Repository.open(wt)
    try:
        with pytest.raises(CorruptBlock, match="truncated pack"):
            repo.read("f.bin")
        report = repo.fsck()
        assert not report.ok and report.corrupt
    finally:
        repo.close()
    r = cli("cat", "HEAD:f.bin", ok=False)
    assert r.exit_code == 1 and r.stderr.startswith("error: block ") and "corrupt" in r.stderr
    r = cli("fsck", ok=False)
    assert r.exit_code == 1
    os.truncate(pack, 7)  # cut inside the 16-byte header: every block of the pack is damaged
    r = cli("fsck", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.stderr


def test_a_pack_that_cannot_be_synced_fails_naming_it_and_commits_nothing(tmp_path: Path) -> None:
    """fdatasync fails (EINVAL) on a character device: the pack is a link to /dev/null."""
    wt = tmp_path / "wt"
    Repository.init(wt, replica="a").close()
    cli = Cli(wt)
    pack = wt / ".casync" / "packs" / "00000001.pack"
    pack.symlink_to(os.devnull)
    write(wt, "f", "data")
    repo = Repository.open(wt)
    try:
        with pytest.raises(StorageError, match="cannot sync pack 00000001") as info:
            porcelain.commit(repo, "one")
        assert info.value.exit_code == 1
        assert repo.refs.get_ref("heads/main") is None
    finally:
        repo.close()
    r = cli("commit", "-m", "one", ok=False)
    assert r.exit_code == 1 and r.stderr.startswith("error: cannot sync pack 00000001") and "hint:" in r.stderr
    pack.unlink()
    cli("commit", "-m", "one")
    assert cli("cat", "HEAD:f").stdout == "data"
    assert cli("fsck").exit_code == 0
