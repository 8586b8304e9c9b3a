"""Real ``casync agent`` processes on 127.0.0.1 for the agent and fleet tests: sites (real
repositories sharing one repository id), their casync.toml, the agents as subprocesses with
JSON logs, and scrapes of their operator port.  Every process started is stopped (by PID)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Cli, age, write

TOKEN = "fleet-token-0123456789"
METRIC_NAMES = ("sync_lag_seconds", "sync_failures_total", "unresolved_conflicts", "sync_duration_seconds",
                "sync_blocks_received_total", "sync_blocks_sent_total", "sync_bytes_received_total",
                "sync_bytes_sent_total", "last_successful_sync_timestamp_seconds", "sync_peer_overdue",
                "audit_last_result", "audit_last_run_timestamp_seconds", "casync_agent_info")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this session (the kernel may offer a port
    again once its socket closed: two sites on one port would talk to the wrong peer)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def casync(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process (the agents hold the repositories open meanwhile)."""
    proc = subprocess.run([sys.executable, "-m", "casync", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"casync {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Site:
    """One site: its repository, token file, ports and casync.toml."""

    def __init__(self, root: Path, name: str, region: str) -> None:
        self.root, self.name, self.region = root, name, region
        self.repo = root / "repo"
        self.serve_port, self.metrics_port = free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "token").write_text(TOKEN + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def commit(self, files: dict[str, str], message: str) -> str:
        for rel, text in files.items():
            write(self.repo, rel, text)
        age(self.repo)
        Cli(self.repo)("commit", "-m", message)
        return self.head()

    def head(self, ref: str = "main") -> str | None:
        """The commit ``ref`` names (None: no such ref)."""
        proc = casync("-C", str(self.repo), "log", "-n", "1", "--json", ref, check=False)
        return str(json.loads(proc.stdout)[0]["cid"]) if proc.returncode == 0 else None

    def files(self) -> dict[str, str]:
        """The files of the branch head (as committed), path -> text."""
        listing = casync("-C", str(self.repo), "ls", "-r", "--json", "main").stdout
        return {e["path"]: casync("-C", str(self.repo), "cat", f"main:{e['path']}").stdout
                for e in json.loads(listing) if e.get("type", "file") == "file"}

    def config(self, peers: list[Site] | None = None, *, extra: str = "", regions: str | None = None,
               site_extra: str = "", peer_extra: str = "", **top: str) -> Path:
        """Write casync.toml: ``peers`` in their regions, the seed's 3 regions unless ``regions``."""
        settings = {"sync_interval": '"300ms"', "max_sync_delay": '"30s"', "jitter": "0.05",
                    "peer_timeout": '"5s"', "backoff_cap": '"4s"', "shutdown_timeout": '"10s"',
                    "clock_skew_tolerance": '"0s"', **top}
        lines = [f"{k} = {v}" for k, v in settings.items()]
        lines.append(regions if regions is not None else _SEED_REGIONS)
        lines += ["[site]", f'replica = "{self.name}"', f'region = "{self.region}"', 'repository = "repo"',
                  site_extra, "[serve]", f'bind = "127.0.0.1:{self.serve_port}"', 'token_file = "token"',
                  "[metrics]", f'bind = "127.0.0.1:{self.metrics_port}"']
        for p in peers or []:
            lines += [f"[peers.{p.name}]", f'url = "{p.url}"', f'region = "{p.region}"',
                      f'token_file = "{p.root / "token"}"', peer_extra]
        lines.append(extra)
        path = self.root / "casync.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


_SEED_REGIONS = """
[conflict_resolution]
default = "last_write_wins"

[[regions]]
name = "us-east"
priority = 1
sync_peers = ["us-west", "eu-central"]

[[regions]]
name = "us-west"
priority = 2
sync_peers = ["us-east"]

[[regions]]
name = "eu-central"
priority = 2
sync_peers = ["us-east"]
"""


def make_sites(tmp: Path, *specs: tuple[str, str]) -> list[Site]:
    """Sites of one repository: the first is created with a first commit, the others cloned."""
    sites = [Site(tmp / name, name, region) for name, region in specs]
    first = sites[0]
    first.root.mkdir(parents=True, exist_ok=True)
    casync("init", str(first.repo), "--replica", first.name)
    first.commit({"README": "fleet\n"}, "first")
    for s in sites[1:]:
        s.root.mkdir(parents=True, exist_ok=True)
        casync("clone", str(first.repo), str(s.repo), "--replica", s.name)
    return sites


class AgentProc:
    """A running ``casync agent --log-format json``; its log is read from a file."""

    def __init__(self, site: Site, config: Path, *extra: str) -> None:
        self.site = site
        self.log_path = site.root / f"agent-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "casync", "agent", "--config", str(config),
                                      "--log-format", "json", *extra], stdout=subprocess.DEVNULL,
                                     stderr=self._log, cwd=site.root)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            obj = json.loads(line)  # every line must be JSON
            if event is None or obj["event"] == event:
                out.append(obj)
        return out

    def wait_for(self, check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"agent {self.site.name} exited {self.proc.returncode} waiting for {what}:\n"
                                     + self.log_path.read_text()[-4000:])
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} on {self.site.name}:\n"
                             + self.log_path.read_text()[-4000:])

    def wait_event(self, event: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events(event) if all(e.get(k) == v for k, v in match.items())), None)

        result: dict[str, Any] = self.wait_for(found, timeout, f"event {event} {match}")
        return result

    def wait_started(self) -> None:
        self.wait_event("started", 60)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def running(site: Site, config: Path, *extra: str) -> Iterator[AgentProc]:
    agent = AgentProc(site, config, *extra)
    try:
        agent.wait_started()
        yield agent
    finally:
        agent.kill()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(site: Site) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the site's /metrics, parsed by prometheus_client's own text parser."""
    status, text = http_get(site.metrics + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))
