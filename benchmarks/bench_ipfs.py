#!/usr/bin/env python3
"""IPFS remote benchmark: casync push / clone against Kubo's own ``ipfs add`` and
``ipfs dag export``, on one loopback Kubo node, in one run.

Run (from the repository root, inside the venv where casync is installed)::

    python benchmarks/bench_ipfs.py [--size-mib 1024] [--api http://127.0.0.1:5001] [--workdir DIR] [--json]

Without ``--api`` a throwaway node is started with ``ipfs/dev-node.sh`` (the pinned Kubo,
built by ``ipfs/build-kubo.sh`` if needed; 127.0.0.1 only) and stopped at the end.
Everything else happens in a fresh temporary directory that is removed at the end.
Every step is a child process (``casync`` CLI, ``ipfs`` CLI) timed with
``time.perf_counter``; caches are warm.

Rows and targets:

1. push of a repository holding one random ``--size-mib`` file (after ``commit``) vs
   ``ipfs add --cid-version=1 --raw-leaves --hash=blake3`` of the same file: MB/s of each
   (MB = 10**6 bytes), for information.
2. clone of it from the node into a new directory (fetch + verify + checkout) vs
   ``ipfs dag export`` of the same commit to a file: MB/s of each, for information.
3. after inserting one byte in the middle of the file, commit + push: bytes sent must be
   <= 1.1 x the bytes of the new blocks (the exact set difference of the two commits'
   DAGs, reported by ``push --json`` as ``bytes_min``) + 64 KiB.
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
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 10**6


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        stdout: Any = subprocess.PIPE) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, check=False)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    out = proc.stdout.decode() if isinstance(proc.stdout, bytes) else ""
    return dt, out


def api_multiaddr(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return f"/ip4/{p.hostname}/tcp/{p.port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--api", help="use this Kubo RPC API instead of starting a node")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="casync-bench-ipfs-", dir=args.workdir))
    node_dir = tmp / "kubo"
    started = False
    try:
        ipfs_bin = os.environ.get("CASYNC_KUBO_BIN") or subprocess.run(
            ["bash", str(ROOT / "ipfs/build-kubo.sh")], check=True, stdout=subprocess.PIPE
        ).stdout.decode().split()[-1]
        api = args.api
        if api is None:
            env = dict(os.environ, CASYNC_KUBO_BIN=ipfs_bin)
            out = subprocess.run(["bash", str(ROOT / "ipfs/dev-node.sh"), "start", str(node_dir)], env=env,
                                 check=True, stdout=subprocess.PIPE).stdout.decode()
            started = True
            api = dict(line.split("=", 1) for line in out.split() if "=" in line)["CASYNC_IPFS_API"]
        ipfs = [ipfs_bin, "--api", api_multiaddr(api)]
        size = args.size_mib << 20
        rows: list[dict[str, Any]] = []

        wt = tmp / "a"
        run(["casync", "init", str(wt), "--replica", "bench-a"])
        data = wt / "data.bin"
        with open(data, "wb") as f:
            left = size
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
        run(["casync", "-C", str(wt), "commit", "-m", "bench"])
        run(["casync", "-C", str(wt), "remote", "add", "origin", "ipfs+" + api])

        t_push, out = run(["casync", "-q", "-C", str(wt), "push", "--json"])
        push = json.loads(out)
        t_add, _ = run([*ipfs, "add", "-Q", "--cid-version=1", "--raw-leaves", "--hash=blake3", str(data)])
        rows.append({"row": "1. push vs ipfs add", "casync_s": t_push, "kubo_s": t_add,
                     "casync_MBps": size / MB / t_push, "kubo_MBps": size / MB / t_add,
                     "blocks_sent": push["blocks_sent"], "bytes_sent": push["bytes_sent"]})

        t_clone, _ = run(["casync", "-q", "clone", f"ipfs+{api}/{_repo_id(wt)}", str(tmp / "b")])
        assert (tmp / "b/data.bin").stat().st_size == size
        with open(tmp / "export.car", "wb") as f:
            t_export, _ = run([*ipfs, "dag", "export", push["head"]], stdout=f)
        rows.append({"row": "2. clone vs ipfs dag export", "casync_s": t_clone, "kubo_s": t_export,
                     "casync_MBps": size / MB / t_clone, "kubo_MBps": size / MB / t_export})
        shutil.rmtree(tmp / "b")
        os.unlink(tmp / "export.car")

        with open(data, "r+b") as f:  # one byte inserted in the middle
            f.seek(size // 2)
            tail = f.read()
            f.seek(size // 2)
            f.write(b"!" + tail)
        del tail
        run(["casync", "-C", str(wt), "commit", "-m", "insert"])
        t_inc, out = run(["casync", "-q", "-C", str(wt), "push", "--json"])
        inc = json.loads(out)
        limit = 1.1 * inc["bytes_min"] + 64 * 1024
        rows.append({"row": "3. push after 1-byte insert", "casync_s": t_inc, "bytes_sent": inc["bytes_sent"],
                     "bytes_min": inc["bytes_min"], "blocks_sent": inc["blocks_sent"],
                     "limit_bytes": int(limit), "met": inc["bytes_sent"] <= limit})

        report = {"size_bytes": size, "api": api, "rows": rows}
        _print(report, sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps(report, indent=2))
        return 0 if rows[-1]["met"] else 1
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / "ipfs/dev-node.sh"), "stop", str(node_dir)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


def _repo_id(wt: Path) -> str:
    return run(["casync", "-C", str(wt), "config", "repository_id"])[1].strip()


def _print(report: dict[str, Any], out: Any) -> None:
    print(f"data: {report['size_bytes'] / (1 << 20):.0f} MiB random, Kubo at {report['api']}", file=out)
    for r in report["rows"]:
        parts = [r["row"]]
        if "kubo_s" in r:
            parts.append(f"casync {r['casync_s']:.2f} s ({r['casync_MBps']:.0f} MB/s), "
                         f"kubo {r['kubo_s']:.2f} s ({r['kubo_MBps']:.0f} MB/s)")
        if "limit_bytes" in r:
            parts.append(f"{r['casync_s']:.2f} s, sent {r['bytes_sent']} B in {r['blocks_sent']} blocks, "
                         f"new blocks {r['bytes_min']} B, limit {r['limit_bytes']} B: "
                         f"{'met' if r['met'] else 'NOT MET'}")
        print(" | ".join(parts), file=out)


if __name__ == "__main__":
    sys.exit(main())
