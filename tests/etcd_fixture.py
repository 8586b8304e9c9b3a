"""A real 3-member etcd cluster on 127.0.0.1 for the strong-branch tests, and a TCP proxy
that can cut a client off.

The binary is the pinned one ``.ci/build-etcd.sh`` builds (v3.6.16, cached under
``$HOME/.cache/casync/etcd/``; ``CASYNC_ETCD_BIN`` names another).  Without it the tests
are skipped, except under ``CI=1`` or ``CASYNC_REQUIRE_KUBO=1`` (CI sets both), where a
missing binary is a failure.  Every member is started by this module and stopped by its
PID, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ETCD_VERSION = "v3.6.16"
_LOOPBACK = "127.0.0.1"


def etcd_binary() -> Path | None:
    named = os.environ.get("CASYNC_ETCD_BIN")
    if named:
        return Path(named)
    cache = os.environ.get("CASYNC_ETCD_CACHE") or str(Path.home() / ".cache" / "casync" / "etcd")
    path = Path(cache) / ETCD_VERSION / "etcd"
    return path if os.access(path, os.X_OK) else None


def _required() -> bool:
    return any(os.environ.get(n, "").strip().lower() not in ("", "0", "false", "no")
               for n in ("CI", "CASYNC_REQUIRE_KUBO"))


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port free now and not handed out before in this session: the kernel may offer a port
    again once its probe socket closed, and two members on one port fail to start."""
    while True:
        with socket.socket() as s:
            s.bind((_LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _post(url: str, body: dict[str, object], timeout: float = 2.0) -> dict[str, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply: dict[str, object] = json.loads(resp.read())
        return reply


@dataclass
class Member:
    name: str
    client: int
    peer: int
    metrics: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.client}"


@dataclass
class EtcdCluster:
    binary: Path
    root: Path
    members: list[Member] = field(default_factory=list)
    token: str = field(default_factory=lambda: "casync-test-" + secrets.token_hex(4))

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self, size: int = 3) -> None:
        self.members = [Member(f"m{i}", _free_port(), _free_port(), _free_port(), self.root / f"m{i}")
                        for i in range(size)]
        for i in range(size):
            self.start_member(i)
        self.wait_healthy()

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://{_LOOPBACK}:{m.peer}" for m in self.members)

    def start_member(self, i: int) -> None:
        m = self.members[i]
        state = "existing" if m.data.exists() else "new"
        log = open(self.root / f"{m.name}.log", "ab")  # noqa: SIM115 - the child owns it
        m.proc = subprocess.Popen(
            [str(self.binary), "--name", m.name, "--data-dir", str(m.data),
             "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
             "--listen-peer-urls", f"http://{_LOOPBACK}:{m.peer}",
             "--initial-advertise-peer-urls", f"http://{_LOOPBACK}:{m.peer}",
             "--listen-metrics-urls", f"http://{_LOOPBACK}:{m.metrics}",
             "--initial-cluster", self._initial_cluster(), "--initial-cluster-state", state,
             "--initial-cluster-token", self.token, "--log-level", "warn"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def kill_member(self, i: int) -> None:
        """SIGKILL one member (by its PID) and reap it."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
        m.proc = None

    def stop(self) -> None:
        """SIGKILL every member by its PID and reap it: the cluster's data is thrown away with the
        test's directory, and a graceful stop waits seconds for leadership transfers."""
        for i in range(len(self.members)):
            self.kill_member(i)

    def running(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.proc is not None and m.proc.poll() is None]

    def status(self, i: int) -> dict[str, object]:
        return _post(self.members[i].url + "/v3/maintenance/status", {})

    def leader(self, timeout: float = 30.0) -> int:
        """The index of the member that is the leader now (polls through an election)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in self.running():
                with contextlib.suppress(OSError, ValueError):
                    st = self.status(i)
                    header = st.get("header")
                    if isinstance(header, dict) and st.get("leader") not in (None, "0") \
                            and st.get("leader") == header.get("member_id"):
                        return i
            time.sleep(0.05)
        raise AssertionError(f"no etcd leader within {timeout} s; logs in {self.root}")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Poll until a linearizable read succeeds on every running member."""
        deadline = time.monotonic() + timeout
        pending = set(self.running())
        while pending and time.monotonic() < deadline:
            for i in sorted(pending):
                proc = self.members[i].proc
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"etcd member {i} exited with {proc.returncode}; see {self.root}")
                with contextlib.suppress(OSError, ValueError):
                    _post(self.members[i].url + "/v3/kv/range", {"key": "aGVhbHRo"})
                    pending.discard(i)
            if pending:
                time.sleep(0.05)
        if pending:
            raise AssertionError(f"etcd members {sorted(pending)} not healthy within {timeout} s; logs in {self.root}")


@pytest.fixture
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A fresh 3-member cluster per test (clients, peers and metrics on free 127.0.0.1 ports)."""
    binary = etcd_binary()
    if binary is None or not os.access(binary, os.X_OK):
        msg = f"etcd {ETCD_VERSION} not built (run: bash .ci/build-etcd.sh)"
        if _required():
            pytest.fail(msg + " (CI or CASYNC_REQUIRE_KUBO=1 is set, so this is a failure)", pytrace=False)
        pytest.skip(msg)
    cluster = EtcdCluster(binary, tmp_path_factory.mktemp("etcd"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class CutProxy:
    """A TCP proxy on 127.0.0.1 to one upstream; :meth:`cut` makes it a black hole (it keeps
    accepting and reading, and forwards nothing), as a network partition looks to a client."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.cut_off = threading.Event()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind((_LOOPBACK, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.port}"

    def cut(self) -> None:
        self.cut_off.set()

    def heal(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for t in self._threads:
            t.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._pipe, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _pipe(self, conn: socket.socket) -> None:
        up: socket.socket | None = None
        try:
            if not self.cut_off.is_set():
                with contextlib.suppress(OSError):
                    up = socket.create_connection(self.upstream, timeout=2)
            while not self._stop.is_set():
                ready, _, _ = select.select([conn] + ([up] if up else []), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.cut_off.is_set() or up is None:
                        continue  # swallowed: the black hole
                    (up if s is conn else conn).sendall(data)
        except OSError:
            return
        finally:
            conn.close()
            if up is not None:
                up.close()
