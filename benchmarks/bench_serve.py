"""``casync serve`` against the machine: a clone over loopback next to ``curl`` of the same
bytes from a static ``sendfile`` server, and a hub answering many sites' fetches at once.

    python benchmarks/bench_serve.py [--size-mib 1024] [--repeat 3] [--sites 200]
                                     [--new-commits 20] [--json]

Rows (issue 15):

1. ``casync clone http://…`` of a repository holding one random ``--size-mib`` file (a whole
   process: fetch, verify, store, check out) against ``curl -o`` of the same file from a
   static HTTP server that answers with ``os.sendfile`` (the physical limit of one loopback
   stream with a file written at the other end).  Alternating, ``--repeat`` times, median.
   Target: >= 0.5x curl's throughput.
2. ``--sites`` sites fetch from one hub at the same moment.  Each site is a thread with its
   own loopback address (127.0.1.x, as separate machines would be), the real client
   (``HttpPeer`` wrapped by ``wrap_peer``: retried with backoff, as ``casync fetch`` does),
   and asks for the hub's ``--new-commits`` newest commits (a 4 KiB file each) given the
   commit before them: ``info``, ``negotiate`` and ``fetch``.  Printed: how many completed,
   p50/p99/max latency of the requests, wall time, the hub's peak RSS (``VmHWM``).
   Target: all complete, hub RSS <= 512 MiB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _report import Row, log, rows_table

from casync.model.cid import parse_cid
from casync.store.retry import RetryPolicy
from casync.transports.peer.http import HttpPeer
from casync.transports.wrap import wrap_peer

TOKEN = "bench-serve-token-0123456789"
_STATIC = r'''
import os, socket, sys
path, port = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path)
srv = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        while b"\r\n\r\n" not in conn.recv(65536):
            pass
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        with open(path, "rb") as f:
            sent = 0
            while sent < size:
                sent += os.sendfile(conn.fileno(), f.fileno(), sent, size - sent)
'''


def _casync(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run([sys.executable, "-m", "casync", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def _head(repo: Path) -> str:
    return str(json.loads(_casync("-C", str(repo), "log", "-n", "1", "--json"))[0]["cid"])


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(repo: Path, token_file: Path) -> tuple[subprocess.Popen[str], str]:
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "casync", "-C", str(repo), "serve", "--bind", f"127.0.0.1:{port}",
                             "--token-file", str(token_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            HttpPeer(url, TOKEN, 5).info()
            return proc, url
        except Exception:  # not listening yet
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("casync serve did not start within 30 s")


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(cmd: list[str], cwd: Path | None = None) -> float:
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def clone_row(root: Path, size_mib: int, repeat: int) -> Row:
    src = root / "src"
    _casync("init", str(src), "--replica", "hub")
    data = src / "big.bin"
    with open(data, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    _casync("-C", str(src), "commit", "-m", "big")
    serve, url = _serve(src, root / "token")
    static_port = _port()
    static = subprocess.Popen([sys.executable, "-c", _STATIC, str(data), str(static_port)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert static.stdout is not None and static.stdout.readline().strip() == "ready"
        casync_s: list[float] = []
        curl_s: list[float] = []
        for i in range(repeat):
            dst = root / f"clone-{i}"
            out = root / f"curl-{i}.bin"
            steps = [(casync_s, [sys.executable, "-m", "casync", "clone", url, str(dst), "--replica", f"site{i}"]),
                     (curl_s, ["curl", "-sS", "-o", str(out), f"http://127.0.0.1:{static_port}/big.bin"])]
            for samples, cmd in steps if i % 2 == 0 else steps[::-1]:
                samples.append(_timed(cmd, cwd=root))
            assert (dst / "big.bin").stat().st_size == out.stat().st_size == size_mib << 20
            subprocess.run(["rm", "-rf", str(dst), str(out)], check=True)
            log(f"  clone {casync_s[-1]:.2f} s, curl {curl_s[-1]:.2f} s")
    finally:
        static.kill()
        static.wait(10)
        _stop(serve)
    mb = (size_mib << 20) / 1e6
    c, k = statistics.median(casync_s), statistics.median(curl_s)
    ratio = k / c
    return Row(f"clone {size_mib} MiB from casync serve vs curl (sendfile server)", f"{mb / c:.0f} MB/s ({c:.2f} s)",
               f"{mb / k:.0f} MB/s ({k:.2f} s)", f"{ratio:.2f}x", ">= 0.5x", ratio >= 0.5,
               {"casync_s": casync_s, "curl_s": curl_s})


class _SitePeer(HttpPeer):
    """The real client, from its own loopback address (each site is another machine)."""

    def __init__(self, url: str, source: str) -> None:
        super().__init__(url, TOKEN, 120)
        self._source = source

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._parts.hostname or "", self._parts.port, timeout=self._timeout,
                                          source_address=(self._source, 0))


def hub_row(root: Path, sites: int, new_commits: int) -> Row:
    hub = root / "hub"
    _casync("init", str(hub), "--replica", "hub")
    (hub / "base.txt").write_bytes(os.urandom(4096))
    _casync("-C", str(hub), "commit", "-m", "base")
    base = _head(hub)
    for i in range(new_commits):
        (hub / f"new-{i:03d}.bin").write_bytes(os.urandom(4096))
        _casync("-C", str(hub), "commit", "-m", f"new {i}")
    head = _head(hub)
    serve, url = _serve(hub, root / "token")
    latencies: list[float] = []
    done: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(sites + 1)
    retry = RetryPolicy(attempts=12, initial=0.2, max_delay=5.0)

    def site(i: int) -> None:
        inner = _SitePeer(url, f"127.0.1.{1 + i % 250}" if i < 250 else f"127.0.2.{1 + i % 250}")
        peer = wrap_peer(inner, retry)
        start.wait()
        try:
            mine = []
            t = time.perf_counter()
            peer.info()
            mine.append(time.perf_counter() - t)
            t = time.perf_counter()
            peer.negotiate([parse_cid(base)])
            mine.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = sum(1 for _ in peer.fetch([parse_cid(head)], [parse_cid(base)]))
            mine.append(time.perf_counter() - t)
            with lock:
                latencies.extend(mine)
                done.append(got)
        except Exception as exc:  # counted and printed: the row fails
            with lock:
                errors.append(f"site {i}: {exc}")
        finally:
            peer.close()

    threads = [threading.Thread(target=site, args=(i,)) for i in range(sites)]
    try:
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - t0
        rss = _peak_rss_mib(serve.pid)
    finally:
        _stop(serve)
    for e in errors[:5]:
        log("  " + e)
    lat = sorted(latencies)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    ok = len(done) == sites and not errors and rss <= 512
    return Row(f"hub serving {sites} concurrent fetches ({new_commits} new commits each)",
               f"{len(done)}/{sites} done in {wall:.2f} s; p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms, "
               f"max {p(1.0):.0f} ms; hub RSS {rss:.0f} MiB", "-", "-", "all complete, RSS <= 512 MiB", ok,
               {"completed": len(done), "errors": len(errors), "wall_s": wall, "p50_ms": p(0.5),
                "p99_ms": p(0.99), "max_ms": p(1.0), "hub_rss_mib": rss, "blocks_each": done[:1]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--new-commits", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "token").write_text(TOKEN)
        os.environ["CASYNC_TOKEN"] = TOKEN
        rows = [clone_row(root, args.size_mib, args.repeat), hub_row(root, args.sites, args.new_commits)]
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    for line in rows_table(rows, other="curl / -"):
        print(line, file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
