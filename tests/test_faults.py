"""Faults: full disks, files changing under a commit, a killed process."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from casync import Repository

from .conftest import Cli, write

CASYNC = [sys.executable, "-m", "casync"]


def _run(args: list[str], cwd: Path, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([*CASYNC, *args], cwd=cwd, capture_output=True, text=True, preexec_fn=limit,
                          timeout=120, check=False)


def test_disk_full_fails_cleanly_and_keeps_repo_consistent(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    assert _run(["init", str(wt), "--replica", "a"], tmp_path).returncode == 0
    write(wt, "small", "small file")
    first = _run(["commit", "-m", "one"], wt)
    assert first.returncode == 0, first.stderr
    write(wt, "big.bin", os.urandom(8 << 20))
    # the process may not grow any file past 4 MiB: the pack append hits EFBIG like ENOSPC
    r = _run(["commit", "-m", "two"], wt, fsize=4 << 20)
    assert r.returncode == 1
    assert r.stderr.startswith("error: disk full") and "Traceback" not in r.stderr
    log = json.loads(_run(["log", "--json"], wt).stdout)
    assert [e["message"] for e in log] == ["one"]
    fsck = _run(["fsck"], wt)
    assert fsck.returncode == 0, fsck.stdout
    packs = list((wt / ".casync" / "packs").glob("*.pack"))
    assert sum(p.stat().st_size for p in packs) < 1 << 20  # the partial append was cut back
    again = _run(["commit", "-m", "two"], wt)
    assert again.returncode == 0, again.stderr
    out = subprocess.run([*CASYNC, "cat", "HEAD:big.bin"], cwd=wt, capture_output=True, timeout=60, check=True)
    assert out.stdout == (wt / "big.bin").read_bytes()


def test_file_growing_during_commit_is_captured_consistently(cli: Cli) -> None:
    cli("init")
    path = cli.cwd / "log.txt"
    path.write_bytes(b"")
    stop = threading.Event()

    def append() -> None:
        with open(path, "ab") as f:
            n = 0
            while not stop.is_set() and n < 200_000:
                f.write(b"line %08d\n" % n)
                f.flush()
                n += 1

    t = threading.Thread(target=append)
    t.start()
    try:
        r = cli("commit", "-m", "while writing", ok=False)
    finally:
        stop.set()
        t.join(30)
    final = path.read_bytes()
    if r.exit_code == 0:
        committed = cli("cat", "HEAD:log.txt").stdout_bytes
        assert final.startswith(committed)  # a real state of the file, never a torn mix
        assert len(committed) % 14 == 0
    else:
        assert "kept changing" in r.stderr and "log.txt" in r.stderr


def test_sigkill_during_commit_loses_nothing_acknowledged(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    assert _run(["init", str(wt), "--replica", "a"], tmp_path).returncode == 0
    write(wt, "a", "acknowledged")
    assert _run(["commit", "-m", "one"], wt).returncode == 0
    write(wt, "big", os.urandom(64 << 20))
    for delay in (0.05, 0.2, 0.4):
        p = subprocess.Popen([*CASYNC, "commit", "-m", "killed"], cwd=wt, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        time.sleep(delay)
        p.kill()
        p.wait(30)
        repo = Repository.open(wt)
        try:
            assert repo.fsck().ok
            assert repo.read("a") == b"acknowledged"
            messages = [e.commit.message for e in repo.log()]
            assert messages[-1] == "one" and set(messages) <= {"one", "killed"}
        finally:
            repo.close()
    final = _run(["commit", "-m", "after"], wt)
    assert final.returncode in (0, 1), final.stderr
    assert _run(["fsck"], wt).returncode == 0


def test_lmdb_that_cannot_grow_fails_cleanly(tmp_path: Path) -> None:
    """Many small files: the LMDB index and stat cache need more pages than the file-size
    limit allows (as on a full disk); the commit fails with one line and nothing changes."""
    wt = tmp_path / "wt"
    assert _run(["init", str(wt), "--replica", "a"], tmp_path).returncode == 0
    write(wt, "first", "1")
    assert _run(["commit", "-m", "one"], wt).returncode == 0
    for i in range(6000):
        write(wt, f"d{i % 50}/f{i}", f"file {i}")
    db = wt / ".casync" / "db" / "data.mdb"
    # the pack needs ~0.3 MiB for these files, the LMDB index and stat cache ~1.3 MiB more
    r = _run(["commit", "-m", "many"], wt, fsize=db.stat().st_size + (512 << 10))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: disk full writing") and "db" in r.stderr.splitlines()[0]
    assert "Traceback" not in r.stderr
    log = json.loads(_run(["log", "--json"], wt).stdout)
    assert [e["message"] for e in log] == ["one"]
    assert _run(["fsck"], wt).returncode == 0
    assert _run(["commit", "-m", "many"], wt).returncode == 0


def test_an_lmdb_write_error_that_is_not_disk_full_is_one_error_line(tmp_path: Path) -> None:
    """A file-size limit that is not page-aligned: LMDB's write crossing it is short, which LMDB
    reports as EIO (an I/O error, not 'disk full'); still one message, nothing committed."""
    wt = tmp_path / "wt"
    assert _run(["init", str(wt), "--replica", "a"], tmp_path).returncode == 0
    write(wt, "first", "1")
    assert _run(["commit", "-m", "one"], wt).returncode == 0
    for i in range(6000):
        write(wt, f"d{i % 50}/f{i}", f"file {i}")
    db = wt / ".casync" / "db" / "data.mdb"
    r = _run(["commit", "-m", "many"], wt, fsize=db.stat().st_size + (512 << 10) + 100)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: cannot write") and "db" in r.stderr.splitlines()[0], r.stderr
    assert "Traceback" not in r.stderr
    log = json.loads(_run(["log", "--json"], wt).stdout)
    assert [e["message"] for e in log] == ["one"]
    assert _run(["fsck"], wt).returncode == 0
    assert _run(["commit", "-m", "many"], wt).returncode == 0
