"""The etcd adapter (casync.store.etcd) against a one-member etcd on loopback: milliseconds per
linearizable read and per compare-and-swap transaction (docs/design.md §16.8).

    python benchmarks/bench_etcd.py [--ops 500] [--etcd PATH]

The etcd binary defaults to the one .ci/build-etcd.sh caches; the member runs in a temporary
directory and is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from casync.store.etcd import EtcdClient, EtcdUnavailable


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=500)
    ap.add_argument("--etcd", default=str(Path.home() / ".cache/casync/etcd/v3.6.16/etcd"))
    args = ap.parse_args()
    client_port, peer_port, metrics_port = _port(), _port(), _port()
    url = f"http://127.0.0.1:{client_port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [args.etcd, "--data-dir", os.path.join(tmp, "m0"), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
             "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = EtcdClient([url], timeout=10.0)
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get(b"/bench/ready")
                    break
                except EtcdUnavailable:
                    if time.monotonic() > deadline:
                        raise
            t0 = time.perf_counter()
            for _ in range(args.ops):
                client.get(b"/bench/k")
            t1 = time.perf_counter()
            rev = 0
            for _ in range(args.ops):
                result = client.compare_and_swap(b"/bench/k", rev, b"x" * 80)
                assert result.succeeded
                rev = result.current.mod_revision
            t2 = time.perf_counter()
            client.close()
        finally:
            proc.kill()
            proc.wait()
    print(json.dumps({"ops": args.ops, "read_ms": round((t1 - t0) / args.ops * 1000, 3),
                      "cas_ms": round((t2 - t1) / args.ops * 1000, 3)}))


if __name__ == "__main__":
    main()
