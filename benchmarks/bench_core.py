#!/usr/bin/env python3
"""Core-store benchmark: casync vs git on identical data, in one run.

Run (from the repository root, inside the venv where casync is installed)::

    python benchmarks/bench_core.py [--size-gib 1] [--small-files 20000] [--status-files 100000] [--only status]
                                    [--big-gib 0] [--workdir DIR] [--json]

Everything happens in a fresh temporary directory (under ``--workdir``, default the
system temp dir, i.e. ``/tmp``) that is removed at the end; nothing touches the network.
casync runs through its ``casync`` CLI and git through the real ``git`` binary, each as
a child process timed with ``time.perf_counter`` (so interpreter start-up is included).
Caches are warm: data is written just before it is committed and nothing is dropped
from the page cache.

Scenarios and targets (the anchors):

1. commit of one incompressible ``--size-gib`` file (``os.urandom``):
   casync ``init`` + ``commit`` vs ``git init`` + ``add -A`` + ``commit``.
   Targets: >= 1200 MB/s (MB = 10**6 bytes; issue 15, both cores) and >= 15x faster than
   git.  With an ``ipfs`` binary (``--ipfs PATH``, else the one ``ipfs/build-kubo.sh``
   cached), ``ipfs add --cid-version=1 --raw-leaves --hash=blake3`` of the same file in a
   fresh offline repository runs next to it: target casync >= 2.5x its throughput.
2. commit of ``--small-files`` files of 4 KiB (random, 100 directories):
   casync <= 0.5x git's time (i.e. >= 2x faster).
3. re-commit after inserting one byte in the middle of the big file: new raw leaves
   stored <= 3 (file-node/tree/commit blocks are counted separately), new bytes stored,
   re-commit <= 2 s.  git's add + commit of the same change is shown for reference.
4. ``status`` on ``--status-files`` unchanged 100-byte files in 1000 directories, after
   a commit made more than 1 s after the files were written (casync re-hashes files
   modified within 1 s of hashing, "racily clean").  First and steady-state runs (median of 5,
   alternated) of ``casync status`` vs ``git status --porcelain``, then (median of 5, alternated) with
   ``casync monitor`` running, so a clean status skips its walk; then the same file edited in
   both trees (median of 5, alternated).  Target: no slower than git.
5. optional (``--big-gib N``): peak RSS of ``casync commit`` of an N GiB file,
   target <= 256 MiB.  Off by default (disk and time).
6. optional (``--million-files N``, e.g. 1000000): commit of N files of 100 B in 1,000
   directories, casync ``init`` + ``commit`` vs git; targets: peak RSS <= 256 MiB and
   time <= 0.5x git's (issue 15).

``--commit-only`` runs only scenario 1's casync and ``ipfs add`` steps (no git, nothing
else), ``--repeat`` times (default 3) on the same file, each casync run in a fresh
repository and each ``ipfs add`` in a fresh offline node, the order alternating, with a
``sync`` before each step; it reports medians and every sample: the quick A/B of a change
to the ingest path (run it from two venvs in turn).

Peak RSS: every child runs under GNU ``/usr/bin/time -f %M -o FILE`` (the child's own
``ru_maxrss``; time itself is tiny, so nothing large is inherited).  Not ``os.wait4`` on a
direct child: Linux carries the forking parent's high-water RSS over ``exec`` into the
child's ``ru_maxrss``, so every step would report this script's own peak.  Without GNU
time, casync steps run through a small launcher that reports ``VmHWM`` from
``/proc/self/status`` at exit (git steps then have no RSS).  The peak RSS of every casync
step is always printed.

git runs with a neutral configuration (``GIT_CONFIG_NOSYSTEM=1``,
``GIT_CONFIG_GLOBAL=/dev/null``), ``user.name``/``user.email`` via ``-c``, ``gc.auto=0``
and ``maintenance.auto=false``; otherwise its defaults (zlib compression, its default
fsync policy).  casync fdatasyncs its pack before committing the index.

Output: a table ``scenario | casync | git | ratio | target | met?`` where ratio is the
speed-up over git (git time / casync time; higher is better), then the per-step
timings and peak RSS.  With ``--json`` the same data goes to stdout as JSON and the
tables to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _report import Row, log, markdown_table, rows_table  # benchmarks/_report.py

GIB = 1 << 30
MIB = 1 << 20
PIECE = 64 * MIB
MB = 1_000_000

GIT_CONFIG = ("-c", "user.name=casync-bench", "-c", "user.email=bench@localhost",
              "-c", "gc.auto=0", "-c", "maintenance.auto=false")


# --- running children ------------------------------------------------------------------------


@dataclass
class Step:
    """One child process: what ran, how long it took, its own peak RSS."""

    tool: str
    name: str
    seconds: float
    max_rss_mib: float
    returncode: int
    stdout: str = field(default="", repr=False)


TIME_BIN = "/usr/bin/time"
# Fallback when GNU time is missing: run casync.cli.main.main in a fresh interpreter and report
# VmHWM (the peak RSS of this process image; unlike ru_maxrss it is not inherited over exec).
LAUNCHER = """\
import atexit, os, sys
def _report():
    with open('/proc/self/status') as f:
        hwm = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
    with open(os.environ['CASYNC_BENCH_RSS'], 'w') as out:
        out.write(hwm)
atexit.register(_report)
sys.argv[0] = 'casync'
from casync.cli.main import main
main()
"""


class Runner:
    """Runs and times children; peak RSS via GNU ``time -f %M`` (or the launcher above)."""

    def __init__(self, casync_exe: str) -> None:
        self.casync_exe = casync_exe
        self.ipfs: str | None = None
        self.use_time = os.access(TIME_BIN, os.X_OK)
        self.steps: list[Step] = []
        self.env = dict(os.environ)
        self.env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                         "CASYNC_AUTHOR": "casync-bench", "LC_ALL": "C"})

    @property
    def rss_method(self) -> str:
        return f"GNU time -f %M ({TIME_BIN})" if self.use_time else "VmHWM at exit (python launcher)"

    def run(self, tool: str, name: str, argv: Sequence[str], cwd: Path, record: bool = True) -> Step:
        fd, rss_file = tempfile.mkstemp(prefix="casync-bench-rss-")
        os.close(fd)
        try:
            if self.use_time:
                cmd = [TIME_BIN, "-f", "%M", "-o", rss_file, *argv]
            elif tool == "casync":
                cmd = [sys.executable, "-c", LAUNCHER, *argv[1:]]
            else:
                cmd = list(argv)
            env = {**self.env, "CASYNC_BENCH_RSS": rss_file}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True)
            seconds = time.perf_counter() - t0
            with open(rss_file) as f:
                lines = f.read().split()
        finally:
            os.unlink(rss_file)
        rss = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
        step = Step(tool, name, seconds, rss, proc.returncode, proc.stdout.decode(errors="replace"))
        if record:
            self.steps.append(step)
            log(f"  {tool:6} {name:24} {seconds:8.3f} s  {rss:7.1f} MiB")
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{step.stdout}\n"
                               f"{proc.stderr.decode(errors='replace')}")
        return step

    def casync(self, name: str, cwd: Path, *args: str) -> Step:
        return self.run("casync", name, [self.casync_exe, "-q", *args], cwd)

    def git(self, name: str, cwd: Path, *args: str) -> Step:
        return self.run("git", name, ["git", *GIT_CONFIG, *args], cwd)


def find_casync() -> str:
    sibling = Path(sys.executable).parent / "casync"
    if sibling.is_file():
        return str(sibling)
    found = shutil.which("casync")
    if found is None:
        sys.exit("error: no 'casync' executable next to this python or on PATH (pip install -e .)")
    return found


def find_ipfs() -> str | None:
    """The Kubo binary ``ipfs/build-kubo.sh`` caches (it prints its path), else ``ipfs`` on PATH."""
    script = Path(__file__).resolve().parent.parent / "ipfs" / "build-kubo.sh"
    if script.exists():
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("ipfs")


def compile_installed_casync() -> bool:
    """Byte-compile casync as ``pip install`` does for a regular install, so each timed
    process does not recompile it (an editable install under PYTHONDONTWRITEBYTECODE=1
    would otherwise pay about 40 ms per command).  Returns whether the native status walk
    (casync._cscan) is built."""
    probe = ("import compileall, os, casync, casync.worktree.disk as w; "
             "compileall.compile_dir(os.path.dirname(casync.__file__), quiet=1); "
             "print(w._native_walk is not None)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


# --- data --------------------------------------------------------------------------------------


def write_random_file(paths: Sequence[Path], size: int) -> None:
    """The same incompressible bytes into every path, 64 MiB at a time."""
    files = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    try:
        left = size
        while left:
            piece = os.urandom(min(PIECE, left))
            for f in files:
                f.write(piece)
            left -= len(piece)
    finally:
        for f in files:
            f.close()


def write_small_files(roots: Sequence[Path], count: int, dirs: int, size: int) -> None:
    """``count`` random files of ``size`` bytes spread evenly over ``dirs`` directories."""
    for d in range(dirs):
        for root in roots:
            (root / f"d{d:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        data = os.urandom(size)
        rel = f"d{i % dirs:04d}/f{i:07d}.bin"
        for root in roots:
            with open(root / rel, "wb") as f:
                f.write(data)


def insert_byte_in_middle(path: Path) -> None:
    """Insert one byte at the middle of ``path`` (rewrites the file, streaming)."""
    size = path.stat().st_size
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        left = size // 2
        while left:
            buf = src.read(min(PIECE, left))
            dst.write(buf)
            left -= len(buf)
        dst.write(b"\x5a")
        while buf := src.read(PIECE):
            dst.write(buf)
    os.replace(tmp, path)


# --- store statistics --------------------------------------------------------------------------


@dataclass
class CasyncStore:
    blocks: dict[bytes, int]  # cid -> stored length, from the LMDB index
    pack_bytes: int  # total size of .casync/packs/*.pack


def casync_store(root: Path) -> CasyncStore:
    from casync.store.lmdb import LmdbStore

    store = LmdbStore(root / ".casync")
    try:
        blocks = {cid: int.from_bytes(loc[12:16], "little") for cid, loc in store.items("index")}
    finally:
        store.close()
    packs = sum(p.stat().st_size for p in (root / ".casync" / "packs").glob("*.pack"))
    return CasyncStore(blocks, packs)


def git_objects(root: Path, runner: Runner) -> tuple[int, int]:
    """(object count, bytes on disk) from ``git count-objects -v`` (sizes in KiB)."""
    step = runner.run("git", "count-objects", ["git", "count-objects", "-v"], root, record=False)
    kv = dict(line.split(": ", 1) for line in step.stdout.splitlines() if ": " in line)
    return int(kv["count"]) + int(kv["in-pack"]), (int(kv["size"]) + int(kv["size-pack"])) * 1024


# --- results -----------------------------------------------------------------------------------


def speedup(git_s: float, casync_s: float) -> str:
    return f"{git_s / casync_s:.2f}x"


def sec(s: float) -> str:
    return f"{s:.3f} s"


def human_size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_gib(gib: float) -> str:
    return f"{gib:g} GiB"


# --- scenarios ---------------------------------------------------------------------------------


def scenario_big(r: Runner, base: Path, size_gib: float) -> list[Row]:
    """Scenarios 1 and 3: one big incompressible file, then a 1-byte insertion."""
    size = int(size_gib * GIB)
    cs, gt = base / "big-casync", base / "big-git"
    cs.mkdir()
    gt.mkdir()
    log(f"[1] writing {fmt_gib(size_gib)} of random bytes (x2)")
    write_random_file([cs / "big.bin", gt / "big.bin"], size)
    log("[1] commit")
    c_s = r.casync("1 init", cs, "init").seconds + r.casync("1 commit", cs, "commit", "-m", "big").seconds
    g_s = (r.git("1 init", gt, "init", "-q", "-b", "main").seconds
           + r.git("1 add -A", gt, "add", "-A").seconds
           + r.git("1 commit", gt, "commit", "-q", "-m", "big").seconds)
    c_mbs, g_mbs = size / MB / c_s, size / MB / g_s
    label = f"1. commit {fmt_gib(size_gib)} random file"
    rows = [
        Row(f"{label}: time", sec(c_s), sec(g_s), speedup(g_s, c_s), ">= 15x git", g_s / c_s >= 15,
            {"casync_s": c_s, "git_s": g_s}),
        Row(f"{label}: throughput", f"{c_mbs:.0f} MB/s", f"{g_mbs:.0f} MB/s", speedup(g_s, c_s),
            ">= 1200 MB/s", c_mbs >= 1200, {"casync_mb_s": c_mbs, "git_mb_s": g_mbs}),
    ]
    if r.ipfs:
        ipfs_path = base / "ipfs-repo"
        env = {**r.env, "IPFS_PATH": str(ipfs_path)}
        subprocess.run([r.ipfs, "init", "--profile=test", "-e"], env=env, check=True, capture_output=True)
        r.env["IPFS_PATH"] = str(ipfs_path)
        try:
            i_s = r.run("ipfs", "1 ipfs add", [r.ipfs, "add", "--offline", "-Q", "--cid-version=1", "--raw-leaves",
                                              "--hash=blake3", "--pin=false", str(cs / "big.bin")], base).seconds
        finally:
            del r.env["IPFS_PATH"]
            shutil.rmtree(ipfs_path, ignore_errors=True)
        rows.append(Row(f"{label}: vs ipfs add (whole processes)", f"{c_mbs:.0f} MB/s ({sec(c_s)})",
                        f"ipfs add {size / MB / i_s:.0f} MB/s ({sec(i_s)})", f"{i_s / c_s:.2f}x",
                        ">= 2.5x ipfs add", i_s / c_s >= 2.5, {"casync_s": c_s, "ipfs_add_s": i_s}))

    from casync.model.cid import RAW, cid_codec

    before, g_before = casync_store(cs), git_objects(gt, r)
    log("[3] inserting 1 byte in the middle (x2)")
    insert_byte_in_middle(cs / "big.bin")
    insert_byte_in_middle(gt / "big.bin")
    log("[3] re-commit")
    c_s = r.casync("3 re-commit", cs, "commit", "-m", "insert").seconds
    g_s = (r.git("3 add -A", gt, "add", "-A").seconds
           + r.git("3 commit", gt, "commit", "-q", "-m", "insert").seconds)
    after, g_after = casync_store(cs), git_objects(gt, r)
    new = {cid: n for cid, n in after.blocks.items() if cid not in before.blocks}
    leaves = [n for cid, n in new.items() if cid_codec(cid) == RAW]
    others = [n for cid, n in new.items() if cid_codec(cid) != RAW]
    total_leaves = sum(1 for cid in after.blocks if cid_codec(cid) == RAW)
    pack_growth = after.pack_bytes - before.pack_bytes
    g_new_objs, g_new_bytes = g_after[0] - g_before[0], g_after[1] - g_before[1]
    label = "3. re-commit after 1-byte insert"
    rows += [
        Row(f"{label}: time", sec(c_s), sec(g_s), speedup(g_s, c_s), "<= 2 s", c_s <= 2.0,
            {"casync_s": c_s, "git_s": g_s}),
        Row(f"{label}: new raw leaves", f"{len(leaves)} of {total_leaves}", f"{g_new_objs} objects", "-",
            "<= 3", len(leaves) <= 3,
            {"new_leaves": len(leaves), "total_leaves": total_leaves, "git_new_objects": g_new_objs}),
        Row(f"{label}: new file/tree/commit blocks", str(len(others)), "-", "-", "-", None,
            {"new_other_blocks": len(others), "other_block_bytes": sum(others)}),
        Row(f"{label}: new bytes stored",
            f"{human_size(sum(new.values()))} (pack +{human_size(pack_growth)})", human_size(g_new_bytes),
            "-", "-", None,
            {"block_bytes": sum(new.values()), "leaf_bytes": sum(leaves), "pack_growth": pack_growth,
             "git_bytes": g_new_bytes}),
    ]
    shutil.rmtree(cs)
    shutil.rmtree(gt)
    return rows


def _median(xs: Sequence[float]) -> float:
    ys = sorted(xs)
    return (ys[(len(ys) - 1) // 2] + ys[len(ys) // 2]) / 2


def scenario_commit_only(r: Runner, base: Path, size_gib: float, repeat: int) -> list[Row]:
    """Scenario 1's casync and ipfs add steps alone, ``repeat`` times, alternating (medians)."""
    size = int(size_gib * GIB)
    src = base / "big.bin"
    log(f"[1] writing {fmt_gib(size_gib)} of random bytes")
    write_random_file([src], size)
    c_runs: list[float] = []
    i_runs: list[float] = []
    for n in range(repeat):
        for tool in (("casync", "ipfs") if n % 2 == 0 else ("ipfs", "casync")):
            if tool == "ipfs" and not r.ipfs:
                continue
            os.sync()  # nothing left to write back from the step before
            if tool == "casync":
                cs = base / f"casync-{n}"
                cs.mkdir()
                os.link(src, cs / "big.bin")
                c_runs.append(r.casync("1 init", cs, "init").seconds
                              + r.casync("1 commit", cs, "commit", "-m", "big").seconds)
                shutil.rmtree(cs)
                continue
            assert r.ipfs is not None
            ipfs_path = base / "ipfs-repo"
            r.env["IPFS_PATH"] = str(ipfs_path)
            try:
                subprocess.run([r.ipfs, "init", "--profile=test", "-e"], env=r.env, check=True, capture_output=True)
                os.sync()
                i_runs.append(r.run("ipfs", "1 ipfs add", [r.ipfs, "add", "--offline", "-Q", "--cid-version=1",
                                                          "--raw-leaves", "--hash=blake3", "--pin=false", str(src)],
                                    base).seconds)
            finally:
                del r.env["IPFS_PATH"]
                shutil.rmtree(ipfs_path, ignore_errors=True)
    c_s = _median(c_runs)
    c_mbs = size / MB / c_s
    samples = " ".join(f"{x:.3f}" for x in c_runs)
    label = f"1. commit {fmt_gib(size_gib)} random file (median of {repeat})"
    rows = [Row(f"{label}: throughput", f"{c_mbs:.0f} MB/s ({sec(c_s)}; {samples})", "-", "-", ">= 1200 MB/s",
                c_mbs >= 1200, {"casync_s": c_s, "casync_runs": c_runs})]
    if i_runs:
        i_s = _median(i_runs)
        rows.append(Row(f"{label}: vs ipfs add (whole processes)", f"{c_mbs:.0f} MB/s ({sec(c_s)})",
                        f"ipfs add {size / MB / i_s:.0f} MB/s ({sec(i_s)}; {' '.join(f'{x:.3f}' for x in i_runs)})",
                        f"{i_s / c_s:.2f}x", ">= 2.5x ipfs add", i_s / c_s >= 2.5,
                        {"casync_s": c_s, "ipfs_add_s": i_s, "ipfs_add_runs": i_runs}))
    return rows


def scenario_small(r: Runner, base: Path, count: int) -> list[Row]:
    """Scenario 2: many 4 KiB files."""
    cs, gt = base / "small-casync", base / "small-git"
    log(f"[2] writing {count} x 4 KiB files in 100 dirs (x2)")
    write_small_files([cs, gt], count, 100, 4096)
    c_s = r.casync("2 init", cs, "init").seconds + r.casync("2 commit", cs, "commit", "-m", "small").seconds
    g_s = (r.git("2 init", gt, "init", "-q", "-b", "main").seconds
           + r.git("2 add -A", gt, "add", "-A").seconds
           + r.git("2 commit", gt, "commit", "-q", "-m", "small").seconds)
    rows = [Row(f"2. commit {count} x 4 KiB files", sec(c_s), sec(g_s), speedup(g_s, c_s),
                "<= 0.5x git (>= 2x)", c_s <= 0.5 * g_s, {"casync_s": c_s, "git_s": g_s})]
    shutil.rmtree(cs)
    shutil.rmtree(gt)
    return rows


def scenario_status(r: Runner, base: Path, count: int) -> list[Row]:
    """Scenario 4: status on an unchanged tree of many tiny files."""
    cs, gt = base / "status-casync", base / "status-git"
    log(f"[4] writing {count} x 100 B files in 1000 dirs (x2)")
    write_small_files([cs, gt], count, 1000, 100)
    time.sleep(1.5)  # past casync's 1 s racily-clean window (and git's index-mtime check)
    c_commit = r.casync("4 init", cs, "init").seconds + r.casync("4 commit", cs, "commit", "-m", "s").seconds
    g_commit = (r.git("4 init", gt, "init", "-q", "-b", "main").seconds
                + r.git("4 add -A", gt, "add", "-A").seconds
                + r.git("4 commit", gt, "commit", "-q", "-m", "s").seconds)
    c1 = r.casync("4 status (first)", cs, "status")
    g1 = r.git("4 status (first)", gt, "status", "--porcelain")
    steady: list[Step] = []
    for i in range(MONITOR_RUNS):  # alternated, so a busy moment of the machine hits both
        steady += [r.casync(f"4 status (steady) {i + 1}", cs, "status"),
                   r.git(f"4 status (steady) {i + 1}", gt, "status", "--porcelain")]
    for step in (c1, *steady[::2]):
        if "working tree clean" not in step.stdout:
            log(f"warning: casync status did not report a clean tree:\n{step.stdout[:500]}")
    for step in (g1, *steady[1::2]):
        if step.stdout.strip():
            log(f"warning: git status is not empty:\n{step.stdout[:500]}")
    c_steady = statistics.median(s.seconds for s in steady[::2])
    g_steady = statistics.median(s.seconds for s in steady[1::2])
    label = f"4. status, {count} unchanged files"
    rows = [
        Row(f"4. commit {count} x 100 B files (setup)", sec(c_commit), sec(g_commit),
            speedup(g_commit, c_commit), "-", None, {"casync_s": c_commit, "git_s": g_commit}),
        Row(f"{label}: first", sec(c1.seconds), sec(g1.seconds), speedup(g1.seconds, c1.seconds),
            "<= git (>= 1x)", c1.seconds <= g1.seconds, {"casync_s": c1.seconds, "git_s": g1.seconds}),
        Row(f"{label}: steady (median of {MONITOR_RUNS})", sec(c_steady), sec(g_steady),
            speedup(g_steady, c_steady), "<= git (>= 1x)", c_steady <= g_steady,
            {"casync_s": c_steady, "git_s": g_steady}),
    ]
    m_s, g_s = status_with_monitor(r, cs, gt)
    rows.append(Row(f"{label}: steady, monitor running (median of {MONITOR_RUNS})", sec(m_s), sec(g_s),
                    speedup(g_s, m_s), "<= git (>= 1x)", m_s <= g_s, {"casync_s": m_s, "git_s": g_s}))
    d_s, dg_s = status_one_edit(r, cs, gt, f"d{count // 2 % 1000:04d}/f{count // 2:07d}.bin")
    rows.append(Row(f"4. status, one of {count} files edited (median of {MONITOR_RUNS})", sec(d_s), sec(dg_s),
                    speedup(dg_s, d_s), "<= git (>= 1x)", d_s <= dg_s, {"casync_s": d_s, "git_s": dg_s}))
    mc_s, mg_s = merge_one_edit_a_side(r, cs, gt, count)
    rows.append(Row(f"4. merge, one edit a side, {count} files (median of {MONITOR_RUNS})", sec(mc_s), sec(mg_s),
                    speedup(mg_s, mc_s), "-", None, {"casync_s": mc_s, "git_s": mg_s}))
    shutil.rmtree(cs)
    shutil.rmtree(gt)
    return rows


MONITOR_RUNS = 5


def merge_one_edit_a_side(r: Runner, cs: Path, gt: Path, count: int) -> tuple[float, float]:
    """Median seconds of ``casync merge`` and ``git merge --no-edit`` (alternated) of a branch
    that edited one file into main, which edited another since the same base: a real
    three-way merge each time (main moves on with every merge; each branch starts at the base)."""
    r.casync("4 commit the edit", cs, "commit", "-m", "ours")  # status_one_edit's edit: main's side
    r.git("4 commit the edit", gt, "commit", "-q", "-a", "-m", "ours")
    r.casync("4 branch base", cs, "branch", "base", "HEAD~1")
    r.git("4 branch base", gt, "branch", "base", "HEAD~1")
    for i in range(MONITOR_RUNS):
        rel = f"d{(count // 3 + i) % 1000:04d}/f{count // 3 + i:07d}.bin"
        r.casync(f"4 branch other{i}", cs, "branch", f"other{i}", "base")
        r.casync(f"4 switch other{i}", cs, "switch", f"other{i}")
        r.git(f"4 branch other{i}", gt, "switch", "-q", "-c", f"other{i}", "base")
        for tree in (cs, gt):
            with open(tree / rel, "ab") as f:
                f.write(b"edited on a branch\n")
        r.casync(f"4 commit other{i}", cs, "commit", "-m", f"theirs {i}")
        r.git(f"4 commit other{i}", gt, "commit", "-q", "-a", "-m", f"theirs {i}")
        r.casync("4 switch main", cs, "switch", "main")
        r.git("4 switch main", gt, "switch", "-q", "main")
    time.sleep(1.1)  # past the racily-clean window: the merges' status reads no file
    casync_s, git_s = [], []
    for i in range(MONITOR_RUNS):
        casync_s.append(r.casync(f"4 merge other{i}", cs, "merge", f"other{i}").seconds)
        git_s.append(r.git(f"4 merge other{i}", gt, "merge", "-q", "--no-edit", f"other{i}").seconds)
    last = json.loads(r.run("casync", "4 log", [r.casync_exe, "log", "--json", "-n", "1"], cs, record=False).stdout)
    if len(last[0]["parents"]) != 2:
        log(f"warning: casync's last merge is not a merge commit: {last[0]}")
    return statistics.median(casync_s), statistics.median(git_s)


def status_with_monitor(r: Runner, cs: Path, gt: Path) -> tuple[float, float]:
    """Median seconds of ``casync status`` with ``casync monitor`` running (the walk is skipped)
    and of ``git status --porcelain``, alternated, the same number of runs; the monitor is
    stopped whatever happens."""
    r.casync("4 monitor start", cs, "monitor", "start")
    try:
        r.casync("4 status (monitor, records)", cs, "status")
        probe = r.run("casync", "4 status --json", [r.casync_exe, "status", "--json"], cs, record=False)
        if '"walk": false' not in probe.stdout:
            log(f"warning: casync status walked with the monitor running:\n{probe.stdout[-300:]}")
        casync_s, git_s = [], []
        for i in range(MONITOR_RUNS):
            casync_s.append(r.casync(f"4 status (monitor) {i + 1}", cs, "status").seconds)
            git_s.append(r.git(f"4 status (steady) {i + 1}", gt, "status", "--porcelain").seconds)
    finally:
        r.casync("4 monitor stop", cs, "monitor", "stop")
    return statistics.median(casync_s), statistics.median(git_s)


def status_one_edit(r: Runner, cs: Path, gt: Path, rel: str) -> tuple[float, float]:
    """Median seconds of ``casync status`` and ``git status --porcelain`` (alternated) after the
    same file is edited in both trees: the stat-changed file is read, the rest is stat data."""
    for tree in (cs, gt):
        with open(tree / rel, "ab") as f:
            f.write(b"edited\n")
    time.sleep(1.1)  # past the racily-clean window, as for the clean rows
    casync_s, git_s = [], []
    for i in range(MONITOR_RUNS):
        step = r.casync(f"4 status (one edit) {i + 1}", cs, "status")
        if "modified:" not in step.stdout:
            log(f"warning: casync status did not report the edit:\n{step.stdout[:500]}")
        casync_s.append(step.seconds)
        git_s.append(r.git(f"4 status (one edit) {i + 1}", gt, "status", "--porcelain").seconds)
    return statistics.median(casync_s), statistics.median(git_s)


def scenario_million(r: Runner, base: Path, count: int) -> list[Row]:
    """Scenario 6: many tiny files in one commit: time against git, and casync's peak RSS."""
    cs, gt = base / "million-casync", base / "million-git"
    log(f"[6] writing {count} x 100 B files in 1000 dirs (x2)")
    write_small_files([cs, gt], count, 1000, 100)
    c_init = r.casync("6 init", cs, "init")
    c_commit = r.casync("6 commit", cs, "commit", "-m", "many")
    g_s = (r.git("6 init", gt, "init", "-q", "-b", "main").seconds
           + r.git("6 add -A", gt, "add", "-A").seconds
           + r.git("6 commit", gt, "commit", "-q", "-m", "many").seconds)
    c_s = c_init.seconds + c_commit.seconds
    label = f"6. commit {count} x 100 B files in 1000 dirs"
    rows = [Row(f"{label}: time", sec(c_s), sec(g_s), speedup(g_s, c_s), "<= 0.5x git (>= 2x)", c_s <= 0.5 * g_s,
                {"casync_s": c_s, "git_s": g_s}),
            Row(f"{label}: peak RSS", f"{c_commit.max_rss_mib:.0f} MiB", "-", "-", "<= 256 MiB",
                c_commit.max_rss_mib <= 256, {"casync_rss_mib": c_commit.max_rss_mib})]
    shutil.rmtree(cs)
    shutil.rmtree(gt)
    return rows


def scenario_huge(r: Runner, base: Path, big_gib: float) -> list[Row]:
    """Scenario 5: peak RSS while committing a very large file (casync only)."""
    cs = base / "huge-casync"
    cs.mkdir()
    log(f"[5] writing {fmt_gib(big_gib)} of random bytes")
    write_random_file([cs / "huge.bin"], int(big_gib * GIB))
    r.casync("5 init", cs, "init")
    step = r.casync("5 commit", cs, "commit", "-m", "huge")
    mbs = big_gib * GIB / MB / step.seconds
    shutil.rmtree(cs)
    return [Row(f"5. commit {fmt_gib(big_gib)} file: peak RSS", f"{step.max_rss_mib:.0f} MiB", "-", "-",
                "<= 256 MiB", step.max_rss_mib <= 256,
                {"max_rss_mib": step.max_rss_mib, "seconds": step.seconds, "mb_s": mbs})]


# --- main --------------------------------------------------------------------------------------


def render(rows: Sequence[Row], steps: Sequence[Step]) -> str:
    out = rows_table(rows)
    out += ["", "ratio = git time / casync time (speed-up; higher is better). MB = 10^6 bytes.", ""]
    out += markdown_table(["tool", "step", "seconds", "peak RSS"],
                 [[s.tool, s.name, f"{s.seconds:.3f}", f"{s.max_rss_mib:.1f} MiB"] for s in steps])
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-gib", type=float, default=1.0,
                   help="big file size for scenarios 1 and 3 (default 1)")
    p.add_argument("--small-files", type=int, default=20000,
                   help="4 KiB files for scenario 2 (default 20000)")
    p.add_argument("--status-files", type=int, default=100000,
                   help="100 B files for scenario 4 (default 100000)")
    p.add_argument("--big-gib", type=float, default=0.0, help="scenario 5 file size; 0 skips it (default 0)")
    p.add_argument("--million-files", type=int, default=0, help="scenario 6 file count; 0 skips it (default 0)")
    p.add_argument("--ipfs", default=None, help="ipfs binary for the ipfs add row (default: Kubo's build cache)")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default: system temp)")
    p.add_argument("--json", action="store_true", help="JSON results on stdout (tables go to stderr)")
    p.add_argument("--commit-only", action="store_true",
                   help="only scenario 1's casync init+commit and ipfs add, --repeat times, alternating (no git)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each step with --commit-only (default 3)")
    p.add_argument("--only", choices=("big", "small", "status"), action="append", default=None,
                   help="run only these of scenarios 1-4 (repeatable; default all)")
    args = p.parse_args(argv)

    if shutil.which("git") is None:
        sys.exit("error: git not found on PATH")
    runner = Runner(find_casync())
    runner.ipfs = args.ipfs or find_ipfs()
    native = compile_installed_casync()
    parent = args.workdir or Path(tempfile.gettempdir())
    need = max(6 * args.size_gib, 1.1 * args.big_gib) * GIB + GIB
    free = shutil.disk_usage(parent).free
    if free < need:
        sys.exit(f"error: {parent} has {human_size(free)} free, this run needs about {human_size(need)}")

    base = Path(tempfile.mkdtemp(prefix="casync-bench-", dir=parent))
    log(f"working in {base} (warm page cache; nothing is dropped); peak RSS via {runner.rss_method}; "
        f"native status walk: {'yes' if native else 'NO (casync._cscan not built)'}")
    started = dt.datetime.now().astimezone()
    rows: list[Row] = []
    try:
        if args.commit_only:
            rows += scenario_commit_only(runner, base, args.size_gib, max(1, args.repeat))
        else:
            only = set(args.only or ("big", "small", "status"))
            rows += scenario_big(runner, base, args.size_gib) if "big" in only else []
            rows += scenario_small(runner, base, args.small_files) if "small" in only else []
            rows += scenario_status(runner, base, args.status_files) if "status" in only else []
            if args.big_gib > 0:
                rows += scenario_huge(runner, base, args.big_gib)
            if args.million_files > 0:
                rows += scenario_million(runner, base, args.million_files)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return _finish(args, runner, rows, started, native)


def _finish(args: argparse.Namespace, runner: Runner, rows: list[Row], started: dt.datetime, native: bool) -> int:
    text = render(rows, runner.steps)
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    if args.json:
        print(text, file=sys.stderr)
        result = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "git": git_version},
            "rss_method": runner.rss_method, "native_status_walk": native,
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
            "steps": [{k: v for k, v in asdict(s).items() if k != "stdout"} for s in runner.steps],
        }
        print(json.dumps(result, indent=2))
    else:
        print(f"casync core benchmark, {started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, {git_version}, "
              f"peak RSS via {runner.rss_method}\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
