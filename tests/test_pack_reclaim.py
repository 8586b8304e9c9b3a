"""Killed writes do not leak pack space (issue 14, defect 3).

A writer SIGKILLed in the middle of a batch leaves records no index entry names at the end
of the current pack (and, when the kill lands inside a ``write``, a torn one).  Before the
fix they were cut only once a batch had been committed into that pack, so killed *first*
commits grew the pack by their whole size each time and the next successful batch was
appended after them, leaving torn records in the middle of the pack.  Now the next open of
the store (or the next writer) cuts the pack back to its committed end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import casync.trees.ingest as ingest
from casync import Repository
from casync.model.chunking import CDC_MAX
from casync.store.lmdb import PACK_MAGIC
from casync.store.packfile import scan_pack

from .conftest import Cli, write

CASYNC = [sys.executable, "-m", "casync"]

# A transaction that streams BYTES of random data into the store, waits (at its end, asked
# for more) until the pack holds more than PACKED bytes (the ingest worker stores a block
# while the next is read), says so, then waits forever: killed there, its blocks are in the
# pack and none is indexed.
_KILLED_WRITER = r"""
import glob, io, os, sys, time
from casync import Repository

class Stream(io.RawIOBase):
    def __init__(self, total):
        self.left = total
    def readable(self):
        return True
    def readinto(self, b):
        if self.left <= 0:
            packs = os.path.join(sys.argv[1], ".casync", "packs", "*.pack")
            deadline = time.monotonic() + 60
            while sum(map(os.path.getsize, glob.glob(packs))) <= int(sys.argv[3]):
                if time.monotonic() > deadline:
                    print("the pack did not grow", flush=True)
                    break
                time.sleep(0.005)
            else:
                print("written", flush=True)
            sys.stdin.read()  # blocks until the test kills this process
            return 0
        n = min(self.left, len(b))
        b[:n] = os.urandom(n)
        self.left -= n
        return n

repo = Repository.open(sys.argv[1])
with repo.transaction(message="never lands") as tx:
    tx.write("big.bin", Stream(int(sys.argv[2])))
"""


def _pack(root: Path) -> Path:
    packs = sorted((root / ".casync" / "packs").glob("*.pack"))
    assert len(packs) == 1, packs
    return packs[0]


_KILLED = ingest.BLOCK + CDC_MAX + (1 << 20)  # bytes: more than the first read block, which is stored
_PACKED = ingest.BLOCK  # while the rest is read (the first block's chunks cover more than BLOCK bytes)


def _kill_mid_batch(root: Path, size: int = _KILLED) -> None:
    p = subprocess.Popen([*CASYNC[:1], "-c", _KILLED_WRITER, str(root), str(size), str(_PACKED)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line == b"written\n", (line, p.stderr.read() if p.stderr else b"")
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=60)


def _tear(pack: Path) -> None:
    """What a kill inside ``write`` leaves after whole records: the start of one more."""
    with open(pack, "ab") as f:
        f.write(b"\x24" + b"\x01\x55\x1e\x20" + b"x" * 20)


def _parseable_and_indexed(root: Path) -> None:
    """The pack parses from start to end and every index entry is one of its records."""
    pack = _pack(root)
    records, end = scan_pack(pack)
    assert end == pack.stat().st_size, "a torn or stray record in the pack"
    held = {r.cid: (r.offset, r.length) for r in records}
    with Repository.open(root) as repo:
        for cid in repo.store.blocks.iter_cids():
            _number, offset, length = repo.store.blocks._location(cid) or (0, 0, 0)
            assert held.get(cid) == (offset, length), cid
        assert repo.fsck().ok


def test_killed_first_commits_do_not_grow_the_pack_and_leave_no_torn_records(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    Repository.init(root, replica="a").close()
    sizes = []
    for _ in range(3):
        _kill_mid_batch(root)
        pack = _pack(root)
        _tear(pack)
        assert pack.stat().st_size > _PACKED  # the killed batch is there until the next open
        Repository.open(root).close()  # the next open cuts it off
        sizes.append(pack.stat().st_size)
    assert sizes == [len(PACK_MAGIC)] * 3
    with Repository.open(root) as repo, repo.transaction(message="lands") as tx:
        tx.write("small.txt", b"hello\n")
    committed = _pack(root).stat().st_size
    _parseable_and_indexed(root)
    # and after a committed batch: the next kills are cut back to it
    for _ in range(2):
        _kill_mid_batch(root)
        _tear(_pack(root))
        Repository.open(root).close()
        assert _pack(root).stat().st_size == committed
    _parseable_and_indexed(root)


def test_the_next_writer_cuts_killed_bytes_even_while_the_store_stays_open(tmp_path: Path) -> None:
    """A long-lived process (serve, agent) had the store open before the kill: its next
    batch starts at the committed end, not after the killed bytes."""
    root = tmp_path / "wt"
    Repository.init(root, replica="a").close()
    with Repository.open(root) as repo:
        _kill_mid_batch(root)
        _tear(_pack(root))
        with repo.transaction(message="after the kill") as tx:
            tx.write("a.txt", b"a\n")
        assert repo.read("a.txt") == b"a\n"
    _parseable_and_indexed(root)
    assert _pack(root).stat().st_size < 1 << 20


def test_casync_commit_killed_at_moments_along_the_way_leaves_packs_parseable(tmp_path: Path) -> None:
    """The CLI's own commit, SIGKILLed once its pack has grown past a few sizes (no
    simulated tear: whatever the kill left), then a commit that finishes."""
    root = tmp_path / "wt"
    Repository.init(root, replica="a").close()
    for i in range(6):
        write(root, f"data/f{i}.bin", os.urandom(4 << 20))
    pack_dir = root / ".casync" / "packs"
    for threshold in (1 << 20, 5 << 20, 9 << 20):
        p = subprocess.Popen([*CASYNC, "commit", "-m", "killed"], cwd=root,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while p.poll() is None and time.monotonic() < deadline:
                if sum(f.stat().st_size for f in pack_dir.glob("*.pack")) >= threshold:
                    os.kill(p.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
        with Repository.open(root) as repo:
            if repo.head() is not None:  # the commit finished before the kill landed
                break
        assert _pack(root).stat().st_size == len(PACK_MAGIC)
    Cli(root)("commit", "-m", "lands")
    _parseable_and_indexed(root)
    assert _pack(root).stat().st_size < 26 << 20  # 24 MiB of data, no killed copies
