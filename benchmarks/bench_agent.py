"""What one ``casync agent`` round costs: a site with two peers (real agents, as subprocesses on
127.0.0.1), rounds timed in-process (``Agent.round(wait=True)``, the round of ``--once`` without
process start-up) and ``casync agent --once`` as a whole process.

    python benchmarks/bench_agent.py [--rounds 20] [--json]

Rows: a round with nothing to do; a round after a small commit on this site (one 1 KiB file:
fetch from both, push to both); the same sync with each peer alone (so the cost of running the
two jobs side by side, under one writer lock, shows); and ``--once`` as a process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from casync.agent.config import load_config
from casync.agent.logs import AgentLog
from casync.agent.runner import Agent

TOKEN = "bench-token-0123456789"


def _casync(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run([sys.executable, "-m", "casync", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, name: str, region: str, port: int, peers: list[tuple[str, str, int]]) -> Path:
    lines = ['sync_interval = "30s"', 'max_sync_delay = "5m"', "[[regions]]", 'name = "us-east"', "priority = 1",
             'sync_peers = ["us-west"]', "[[regions]]", 'name = "us-west"', "priority = 2", 'sync_peers = ["us-east"]',
             "[site]", f'replica = "{name}"', f'region = "{region}"', f'repository = "{root / name}"',
             "[serve]", f'bind = "127.0.0.1:{port}"', f'token_file = "{root / "token"}"',
             "[metrics]", f'bind = "127.0.0.1:{_port()}"', "[discovery]", "gossip = false"]
    for peer, peer_region, peer_port in peers:
        lines += [f"[peers.{peer}]", f'url = "http://127.0.0.1:{peer_port}"', f'region = "{peer_region}"']
    path = root / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _timed(agent: Agent, n: int, before: object = None) -> list[float]:
    out = []
    for i in range(n):
        if callable(before):
            before(i)
        t0 = time.perf_counter()
        results = agent.round(wait=True)
        out.append(time.perf_counter() - t0)
        assert all(results.values()), results
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "token").write_text(TOKEN)
        _casync("init", str(root / "us-east-1"), "--replica", "us-east-1")
        (root / "us-east-1" / "README").write_text("bench\n")
        _casync("-C", str(root / "us-east-1"), "commit", "-m", "first")
        for name in ("us-west-1", "us-west-2"):
            _casync("clone", str(root / "us-east-1"), str(root / name), "--replica", name)
        ports = {n: _port() for n in ("us-east-1", "us-west-1", "us-west-2")}
        peers = []
        for name in ("us-west-1", "us-west-2"):
            cfg = _config(root, name, "us-west", ports[name], [])
            peers.append(subprocess.Popen([sys.executable, "-m", "casync", "agent", "--config", str(cfg)],
                                          stderr=subprocess.PIPE, text=True))
        try:
            for p in peers:
                assert p.stderr is not None
                p.stderr.readline()  # 'started': serving
            both = _config(root, "us-east-1", "us-east", ports["us-east-1"],
                           [("us-west-1", "us-west", ports["us-west-1"]), ("us-west-2", "us-west", ports["us-west-2"])])
            one = _config(root, "alone", "us-east", ports["us-east-1"], [("us-west-1", "us-west", ports["us-west-1"])])
            agent = Agent(load_config(both), AgentLog("json", io.StringIO()))
            agent.open(serving=False)
            site = root / "us-east-1"

            def change(i: int) -> None:
                (site / f"small-{i:04d}.txt").write_bytes(os.urandom(512).hex().encode())
                _casync("-C", str(site), "commit", "-m", f"small {i}")

            _timed(agent, 2)  # warm
            idle = _timed(agent, args.rounds)
            small = _timed(agent, args.rounds, change)
            alone_cfg = load_config(one)
            alone = Agent(alone_cfg.__class__(**{**alone_cfg.__dict__, "repository": site, "replica": "us-east-1"}),
                          AgentLog("json", io.StringIO()))
            alone.open(serving=False)
            _timed(alone, 2)
            idle_one = _timed(alone, args.rounds)
            small_one = _timed(alone, args.rounds, lambda i: change(10_000 + i))
            agent.close()
            alone.close()
            t0 = time.perf_counter()
            _casync("agent", "--config", str(both), "--once")
            once = time.perf_counter() - t0
        finally:
            for p in peers:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    rows = {"round, 2 peers, nothing to do (ms, median)": statistics.median(idle) * 1000,
            "round, 2 peers, one small commit here (ms, median)": statistics.median(small) * 1000,
            "round, 1 peer, nothing to do (ms, median)": statistics.median(idle_one) * 1000,
            "round, 1 peer, one small commit here (ms, median)": statistics.median(small_one) * 1000,
            "casync agent --once, 2 peers, nothing to do (ms, whole process)": once * 1000}
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for k, v in rows.items():
            print(f"{v:9.1f}  {k}")


if __name__ == "__main__":
    main()
