"""``casync gc``: what it keeps (every root), what it reclaims (measured), and that pack files
and the index stay consistent (every pack parses end to end; fsck clean)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import StateRefused
from casync.model.chunking import chunker_for
from casync.model.cid import cid_str
from casync.repo.gc import gc
from casync.store.packfile import scan_pack

from .conftest import Cli, write


def _packs(root: Path) -> list[Path]:
    return sorted((root / ".casync" / "packs").glob("*.pack"))


def _pack_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in _packs(root))


def assert_packs_consistent(root: Path) -> None:
    """Every pack parses from its magic to its last byte, every index entry is one of
    their records, and fsck is clean."""
    records = {}
    for pack in _packs(root):
        found, end = scan_pack(pack)
        assert end == pack.stat().st_size, f"{pack.name} does not parse end to end"
        for r in found:
            records[(int(pack.stem), r.offset)] = (r.cid, r.length)
    with Repository.open(root) as repo:
        blocks = repo.store.blocks
        for cid in blocks.iter_cids():
            number, offset, length = blocks._location(cid) or (0, 0, 0)
            assert records.get((number, offset)) == (cid, length), cid_str(cid)
        report = repo.fsck()
        assert report.ok, report.to_json()


def _gc_json(root: Path, *args: str) -> dict[str, int]:
    out = json.loads(Cli(root)("gc", "--json", *args).stdout)
    assert isinstance(out, dict)
    return out


def test_a_deleted_branch_is_reclaimed_once_its_reflog_entries_expire(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    cli = Cli(root)
    Repository.init(root, replica="a").close()
    main_data = os.urandom(3 << 20)
    write(root, "keep.bin", main_data)
    cli("commit", "-m", "main")
    cli("switch", "-c", "side")
    write(root, "side.bin", os.urandom(8 << 20))
    cli("commit", "-m", "side")
    cli("switch", "main")
    cli("branch", "-d", "side")
    before = _pack_bytes(root)
    # the reflog (younger than the default two weeks) still keeps the deleted branch
    kept = _gc_json(root)
    assert kept["swept_blocks"] == 0 and _pack_bytes(root) == before
    dry = _gc_json(root, "--prune", "now", "--dry-run")
    assert dry["dry_run"] and _pack_bytes(root) == before
    done = _gc_json(root, "--prune", "now")
    after = _pack_bytes(root)
    print(f"deleted branch: pack bytes {before} -> {after}")
    assert done["swept_bytes"] >= 8 << 20
    assert done["reclaimed_bytes"] == before - after >= 8 << 20
    assert dry["reclaimed_bytes"] == done["reclaimed_bytes"]  # the dry run's estimate is exact here
    assert after < (3 << 20) + (64 << 10)
    assert_packs_consistent(root)
    assert (root / "keep.bin").read_bytes() == main_data
    with Repository.open(root) as repo:
        assert repo.read("keep.bin") == main_data
    # nothing more to do: a second run keeps every pack as it is
    again = _gc_json(root, "--prune", "now")
    assert again["swept_blocks"] == 0 and again["packs_rewritten"] == 0 and _pack_bytes(root) == after


def test_killed_writes_left_mid_pack_by_older_versions_are_reclaimed(tmp_path: Path) -> None:
    """Five killed first commits, as casync before the cut-on-open rule left them: their
    records (and a torn one) in the middle of the pack, a committed batch after them."""
    root = tmp_path / "wt"
    Repository.init(root, replica="a").close()
    pack = root / ".casync" / "packs" / "00000001.pack"
    with Repository.open(root) as repo:
        repo.store.blocks._open_writer()  # creates the pack with its magic
        repo.store.blocks._writer.close()
        repo.store.blocks._writer = None
        tree = [os.urandom(2 << 20) for _ in range(2)]
        with open(pack, "ab") as f:
            for _attempt in range(5):  # each killed attempt stored the same tree's chunks again
                for data in tree:
                    f.write(b"\x24" + os.urandom(36) + b"\x80\x80\x80\x01" + data)
            f.write(b"\x24" + b"\x01\x55\x1e\x20" + b"torn")  # the last kill hit a write
        repo.store.put("meta", b"pack_end/1", str(pack.stat().st_size).encode())  # the older writer's end
        with repo.transaction(message="lands") as tx:
            for i, data in enumerate(tree):
                tx.write(f"f{i}.bin", data)
    _records, end = scan_pack(pack)
    assert end < pack.stat().st_size  # not parseable end to end: the torn record is mid-pack
    before = _pack_bytes(root)
    done = _gc_json(root, "--prune", "now")
    after = _pack_bytes(root)
    print(f"killed writes: pack bytes {before} -> {after}")
    assert before > 24 << 20 and after < 5 << 20
    assert done["reclaimed_bytes"] == before - after
    assert_packs_consistent(root)
    with Repository.open(root) as repo:
        assert [repo.read(f"f{i}.bin") for i in range(2)] == tree


def test_every_meta_value_naming_a_block_is_a_root(tmp_path: Path) -> None:
    """A pending IPFS push and a stopped merge name commits no ref does; gc keeps them."""
    root = tmp_path / "wt"
    with Repository.init(root, replica="a", bare=True) as repo:
        with repo.transaction(branch="main", message="base") as tx:
            tx.write("a", b"a")
        pending_data, merge_data = os.urandom(300_000), os.urandom(300_000)
        names = {}
        for name, data in (("pending", pending_data), ("merging", merge_data)):
            with repo.transaction(branch=name, message=name) as tx:
                tx.write(name, data)
            names[name] = repo.refs.get_ref(f"heads/{name}")
            repo.update_branch(name, names[name], None, "branch: deleted")
        repo.store.put("meta", b"push-pending/hub", json.dumps(
            {"head": cid_str(names["pending"]), "url": "ipfs+http://127.0.0.1:1", "time_ms": 1}).encode())
        repo.store.put("meta", b"merge_state", json.dumps(
            {"theirs": cid_str(names["merging"]), "message": "m", "conflicts": []}).encode())
        report = gc(repo, prune_ms=0)
        assert report.swept_blocks == 0, report.to_json()
        assert repo.read("pending", cid_str(names["pending"])) == pending_data
        assert repo.read("merging", cid_str(names["merging"])) == merge_data
        repo.store.write(lambda txn: txn.delete(b"push-pending/hub", db=repo.store.db("meta")))
        report = gc(repo, prune_ms=0)
        assert report.swept_blocks >= 3  # the pending push's commit, tree and file
        assert repo.read("merging", cid_str(names["merging"])) == merge_data
    assert_packs_consistent(root)


def test_a_reader_opened_before_gc_reads_the_rewritten_packs(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    data = os.urandom(1 << 20)
    with Repository.init(root, replica="a", bare=True) as repo:
        with repo.transaction(message="one") as tx:
            tx.write("garbage", os.urandom(1 << 20))
        with repo.transaction(message="two") as tx:
            tx.write("kept", data)
            tx.delete("garbage")
    reader = Repository.open(root)
    try:
        assert reader.read("kept") == data  # opens (and keeps open) the pack gc will delete
        old_packs = set(reader.store.blocks._readers)
        with Repository.open(root) as collector:
            # the first commit (and its file) stays in history: drop the history instead
            head = collector.refs.get_ref("heads/main")
            assert head is not None
            tree = collector.tree_of(head)
            collector.store.refs.cas_ref("heads/main", head, collector.make_commit(tree, [], "squashed"), "squash")
            collector.blocks.flush()
            report = gc(collector, prune_ms=0)
            assert report.swept_bytes >= 1 << 20 and report.packs_rewritten + report.packs_deleted >= 1
        assert reader.read("kept") == data  # its index entry moved; the old pack is gone
        # and the reader let go of the deleted pack, whose space is then free
        assert old_packs and not old_packs & set(reader.store.blocks._readers)
    finally:
        reader.close()
    assert_packs_consistent(root)


def test_a_second_gc_at_the_same_time_is_refused(tmp_path: Path) -> None:
    import fcntl

    root = tmp_path / "wt"
    with Repository.init(root, replica="a", bare=True) as repo:
        fd = os.open(root / ".casync" / "gc.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(StateRefused, match="another 'casync gc'"):
                gc(repo)
        finally:
            os.close(fd)
    r = Cli(root)("gc", "--prune", "soon", ok=False)
    assert r.exit_code == 2 and "invalid duration" in r.stderr


# Commits in a loop: each round stores a block on a branch it then deletes (garbage for a gc
# that marks now), then commits the same bytes on main (dedupe reuses the garbage block: a gc
# that marked before this commit must copy it at its swap), and every third round leaves the
# garbage as it is.  Each acknowledged commit is printed once it landed.
_COMMITTER = r"""
import hashlib, os, sys
from casync import Repository

repo = Repository.open(sys.argv[1])
for i in range(int(sys.argv[2])):
    data = os.urandom(150_000 + i)
    with repo.transaction(branch="tmp", message=f"tmp {i}") as tx:
        tx.write("r.bin", data)
    tmp = repo.refs.get_ref("heads/tmp")
    repo.update_branch("tmp", tmp, None, "branch: deleted")
    if i % 3 == 2:
        data = os.urandom(150_000)
    with repo.transaction(branch="main", message=f"c{i}") as tx:
        tx.write(f"f/{i}.bin", data)
    print(f"ack {tx.commit_cid} {i} {hashlib.sha256(data).hexdigest()}", flush=True)
repo.close()
"""


def test_gc_while_another_process_commits_loses_no_commit(tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys
    import time

    root = tmp_path / "wt"
    Repository.init(root, replica="a", bare=True).close()
    writer = subprocess.Popen([sys.executable, "-c", _COMMITTER, str(root), "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs: list[dict[str, int]] = []
    try:
        deadline = time.monotonic() + 600
        while writer.poll() is None and time.monotonic() < deadline and len(runs) < 200:
            r = subprocess.run([sys.executable, "-m", "casync", "-C", str(root), "gc", "--prune", "now", "--json"],
                               capture_output=True, timeout=300, check=False)
            assert r.returncode == 0, r.stderr.decode()
            runs.append(json.loads(r.stdout))
        out, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=60)
    assert writer.returncode == 0, err.decode()
    acks = [line.split() for line in out.decode().splitlines()]
    assert len(acks) == 200
    assert len(runs) >= 2, "the committer finished before gc ran twice"
    swept = sum(r["swept_blocks"] for r in runs)
    print(f"{len(runs)} gc runs beside 200 commits: {swept} blocks swept, "
          f"{sum(r['late_copies'] for r in runs)} copied at the swap, "
          f"{sum(r['reclaimed_bytes'] for r in runs)} bytes reclaimed")
    assert swept > 0
    final = _gc_json(root, "--prune", "now")  # and one after: the rest of the garbage
    assert final["reclaimed_bytes"] >= 0
    with Repository.open(root) as repo:
        for _ack, cid, i, digest in acks:
            assert hashlib.sha256(repo.read(f"f/{i}.bin", cid)).hexdigest() == digest, (cid, i)
        assert len(repo.log("main")) == 200
    assert_packs_consistent(root)


_REUSE = r"""
import sys
from casync import Repository

with Repository.open(sys.argv[1]) as repo, repo.transaction(branch="main", message="reuses") as tx:
    tx.write("again.bin", open(sys.argv[2], "rb").read())
print(tx.commit_cid)
"""


class _CommitWhenCopyStarts:
    """A progress sink that, when gc starts copying (its first mark is done), has another
    process commit bytes gc has just found unreachable: the store still holds them, so
    the commit reuses the blocks instead of writing them again."""

    def __init__(self, root: Path, data_file: Path) -> None:
        self.root, self.data_file = root, data_file
        self.commit: str | None = None

    def start(self, label: str, total: int | None) -> None:
        import subprocess
        import sys

        if label == "rewriting packs" and self.commit is None:
            r = subprocess.run([sys.executable, "-c", _REUSE, str(self.root), str(self.data_file)],
                               capture_output=True, timeout=120, check=True)
            self.commit = r.stdout.decode().strip()

    def advance(self, n: int) -> None:
        return None

    def finish(self) -> None:
        return None


def test_a_block_a_commit_reuses_after_the_mark_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    data = os.urandom(2 << 20)
    (tmp_path / "data").write_bytes(data)
    with Repository.init(root, replica="a", bare=True) as repo:
        with repo.transaction(branch="main", message="base") as tx:
            tx.write("base", os.urandom(1 << 20))
        with repo.transaction(branch="tmp", message="soon garbage") as tx:
            tx.write("r.bin", data)
        repo.update_branch("tmp", repo.refs.get_ref("heads/tmp"), None, "branch: deleted")
        sink = _CommitWhenCopyStarts(root, tmp_path / "data")
        report = gc(repo, prune_ms=0, progress=sink)
        assert sink.commit is not None
        chunks = sum(1 for _ in chunker_for(repo.chunker_name).chunks(io.BytesIO(data)))
        assert chunks >= 2 and report.late_copies >= chunks, report.to_json()  # the file's chunks, found at the swap
        assert report.swept_blocks >= 2  # the deleted branch's commit and tree are still garbage
        assert repo.read("again.bin", sink.commit) == data
    assert_packs_consistent(root)


def test_a_killed_gc_leaves_the_repository_consistent_and_a_rerun_finishes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "wt"
    kept = os.urandom(2 << 20)
    with Repository.init(root, replica="a", bare=True) as repo:
        with repo.transaction(branch="main", message="kept") as tx:
            tx.write("kept.bin", kept)
        for i in range(3):
            with repo.transaction(branch=f"g{i}", message="garbage") as tx:
                tx.write("g.bin", os.urandom(6 << 20))
            repo.update_branch(f"g{i}", repo.refs.get_ref(f"heads/g{i}"), None, "branch: deleted")
    packs = root / ".casync" / "packs"
    for moment in ("copying", "at once"):
        p = subprocess.Popen([sys.executable, "-m", "casync", "-C", str(root), "gc", "--prune", "now"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while p.poll() is None and time.monotonic() < deadline:
                if moment == "at once" or any(packs.glob("*.gc-tmp")):
                    os.kill(p.pid, signal.SIGKILL)
                    break
                time.sleep(0.001)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
        assert_packs_consistent(root)
        with Repository.open(root) as repo:
            assert repo.read("kept.bin") == kept
    done = _gc_json(root, "--prune", "now")
    assert not any(packs.glob("*.gc-tmp"))
    assert _pack_bytes(root) < (2 << 20) + (64 << 10), done
    assert_packs_consistent(root)
