#!/usr/bin/env python3
"""HAMT benchmark: one directory of ``--entries`` files (default 1,000,000) through the CLI.

Run (from the repository root, inside the venv where casync is installed)::

    python benchmarks/bench_hamt.py [--entries 1000000] [--workdir DIR] [--ipfs PATH] [--json]

Everything happens in a fresh temporary directory under ``--workdir`` (default the system
temp dir), removed at the end; no network.  Each step is a child process under GNU
``/usr/bin/time -f %M`` (peak RSS of that process), timed with ``time.perf_counter``.

Steps: write the files (``many/file-NNNNNNN``, a few bytes each; not timed as casync);
``casync init --chunker fixed`` + ``commit`` (the directory becomes a HAMT); ``ipfs add -r
-n --cid-version=1 --raw-leaves --hash=blake3`` of the same directory side by side, when an
``ipfs`` binary is given or found (``ipfs/build-kubo.sh``'s cache), with its root CID
compared to casync's; ``casync clone`` of the repository (peer sync of everything, then a
checkout of every file); one file changed: ``status``, ``commit``, ``diff HEAD~1 HEAD``;
``sync --no-push`` in the clone (only that change's bucket path is sent: the block count is
printed); ``checkout HEAD~1`` in the first repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import log, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of one child process."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=7200, check=False)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return took, int(rss.read().strip().splitlines()[-1]), proc.stdout


def _casync(*args: str) -> list[str]:
    return [sys.executable, "-m", "casync", *args]


def _ipfs_binary(given: str | None) -> str | None:
    if given:
        return given
    cache = Path(os.environ.get("CASYNC_KUBO_CACHE", Path.home() / ".cache/casync/kubo"))
    version = (ROOT / "ipfs" / "KUBO_VERSION").read_text().strip()
    found = cache / version / "ipfs"
    return str(found) if found.exists() else shutil.which("ipfs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--ipfs", default=None, help="ipfs binary for the side-by-side ipfs add")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    rows: list[tuple[str, float, int, str]] = []
    with tempfile.TemporaryDirectory(dir=opts.workdir, prefix="bench-hamt-") as tmp:
        work = Path(tmp)
        a = work / "a"
        many = a / "many"
        many.mkdir(parents=True)
        log(f"writing {opts.entries} files")
        for i in range(opts.entries):
            (many / f"file-{i:07d}").write_bytes(b"%d\n" % i)

        def step(name: str, args: list[str], cwd: Path, note: str = "", env: dict[str, str] | None = None) -> str:
            took, rss, out = _run(args, cwd, env)
            rows.append((name, took, rss, note))
            log(f"{name}: {took:.1f} s, {rss / 1024:.0f} MiB")
            return out

        step("casync init", _casync("init", str(a), "--chunker", "fixed", "--replica", "a"), work)
        step("casync commit", _casync("-C", str(a), "commit", "-m", "many"), work)
        ls = json.loads(_run(_casync("-C", str(a), "ls", "HEAD", "--json"), work)[2])
        ours = next(row["cid"] for row in ls if row["path"] == "many")
        ipfs = _ipfs_binary(opts.ipfs)
        if ipfs:
            env = {**os.environ, "IPFS_PATH": str(work / "ipfs-repo")}
            subprocess.run([ipfs, "init", "--profile=test"], env=env, capture_output=True, check=True, timeout=120)
            out = step("ipfs add -n (same dir)", [ipfs, "add", "-r", "-Q", "-n", "--cid-version=1", "--raw-leaves",
                                                  "--hash=blake3", str(many)], work, env=env)
            theirs = out.strip()
            rows[-1] = (*rows[-1][:3], "same CID" if theirs == ours else f"DIFFERENT: {theirs} vs {ours}")
        step("casync clone (sync + checkout)", _casync("clone", str(a), str(work / "b"), "--replica", "b"), work)
        (many / "file-0001234").write_bytes(b"changed\n")
        step("casync status (one change)", _casync("-C", str(a), "status"), work)
        step("casync commit (one change)", _casync("-C", str(a), "commit", "-m", "one"), work)
        step("casync diff HEAD~1 HEAD", _casync("-C", str(a), "diff", "HEAD~1", "HEAD"), work)
        out = step("casync sync --no-push (clone)", _casync("-C", str(work / "b"), "sync", "--no-push", "--json"),
                   work)
        fetched = json.loads(out)
        fetch = fetched[0]["fetch"] if isinstance(fetched, list) else fetched["fetch"]
        rows[-1] = (*rows[-1][:3], f"{fetch['blocks']} blocks, {fetch['bytes']} bytes sent")
        step("casync checkout HEAD~1", _casync("-C", str(a), "checkout", "HEAD~1"), work)
    if opts.json:
        print(json.dumps([{"step": n, "seconds": round(t, 2), "peak_rss_mib": round(r / 1024), "note": note}
                          for n, t, r, note in rows], indent=1))
        return
    print(f"\n{opts.entries} entries in one directory\n")
    table = markdown_table(["step", "time (s)", "peak RSS (MiB)", "note"],
                           [[n, f"{t:.1f}", f"{r / 1024:.0f}", note] for n, t, r, note in rows])
    print("\n".join(table))


if __name__ == "__main__":
    main()
