"""Real Kubo (IPFS) nodes for casync tests.

Pure helper module, no pytest fixtures. ``KuboNode`` wraps ``ipfs/dev-node.sh``
so tests and developers get exactly the same node: a throwaway repo in a
given directory, built from the pinned Kubo (``ipfs/KUBO_VERSION``), listening
on random 127.0.0.1 ports only, with no bootstrap peers, no DHT, no MDNS::

    with KuboNode(tmp_path / "n1") as n1, KuboNode(tmp_path / "n2") as n2:
        n2.connect(n1)                       # swarm connect over loopback
        cid = n1.run("add", "-Q", "--cid-version=1", str(some_file)).strip()
        data = n2.run_bytes("cat", cid)      # fetched over bitswap

The same tests run against the ``casync/kubo`` image through testcontainers with
``CASYNC_KUBO_BACKEND=testcontainers`` (``tests/kubo_container.py``).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Union

REPO_ROOT = Path(__file__).resolve().parent.parent
IPFS_DIR = REPO_ROOT / "ipfs"
BUILD_SCRIPT = IPFS_DIR / "build-kubo.sh"
DEV_NODE_SCRIPT = IPFS_DIR / "dev-node.sh"
KUBO_VERSION = (IPFS_DIR / "KUBO_VERSION").read_text().strip()

# Generous: the first call may compile Kubo (a few minutes on 2 cores).
BUILD_TIMEOUT = 30 * 60
START_TIMEOUT = 120

PathLike = Union[str, "os.PathLike[str]"]


class KuboError(RuntimeError):
    """A Kubo build, start, stop or CLI call failed."""


def _run(cmd, *, env=None, timeout=None, input=None, what=None) -> bytes:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            env=env,
            input=input,
            capture_output=True,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise KuboError(f"{what or cmd[0]} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise KuboError(f"{what or ' '.join(map(str, cmd))} failed (exit {proc.returncode}): {err}")
    return proc.stdout


@functools.cache
def kubo_binary() -> str:
    """Path of the pinned ``ipfs`` binary, building it once if needed.

    ``CASYNC_KUBO_BIN`` overrides (no build then).
    """
    override = os.environ.get("CASYNC_KUBO_BIN")
    if override:
        return override
    out = _run(["bash", BUILD_SCRIPT], timeout=BUILD_TIMEOUT, what="ipfs/build-kubo.sh").decode()
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise KuboError("ipfs/build-kubo.sh printed no binary path")
    return lines[-1].strip()


class KuboNode:
    """A running loopback-only Kubo daemon whose repo (IPFS_PATH) is ``ipfs_path``.

    The node is started on construction (``start=False`` to defer). Use as a
    context manager or call :meth:`stop`.
    """

    def __init__(self, ipfs_path: PathLike, *, start: bool = True) -> None:
        self.ipfs_path = Path(ipfs_path).resolve()
        self.api_url: str | None = None
        self.gateway_url: str | None = None
        self._peer_id: str | None = None
        if start:
            self.start()

    # -- lifecycle -------------------------------------------------------

    def _env(self) -> dict:
        env = dict(os.environ)
        env["CASYNC_KUBO_BIN"] = kubo_binary()
        env["IPFS_PATH"] = str(self.ipfs_path)
        env["IPFS_TELEMETRY"] = "off"
        return env

    def start(self) -> KuboNode:
        if self.running:
            return self
        out = _run(
            ["bash", DEV_NODE_SCRIPT, "start", self.ipfs_path],
            env=self._env(),
            timeout=START_TIMEOUT,
            what=f"dev-node.sh start {self.ipfs_path}",
        ).decode()
        values = dict(
            line.split("=", 1) for line in out.splitlines() if line.startswith("CASYNC_IPFS_")
        )
        try:
            self.api_url = values["CASYNC_IPFS_API"]
            self.gateway_url = values["CASYNC_IPFS_GATEWAY"]
        except KeyError as exc:
            raise KuboError(f"unexpected dev-node.sh output: {out!r}") from exc
        return self

    def stop(self) -> None:
        """Stop the daemon (idempotent). The repo directory is left in place."""
        if self.api_url is None and not (self.ipfs_path / "daemon.pid").exists():
            return
        _run(
            ["bash", DEV_NODE_SCRIPT, "stop", self.ipfs_path],
            timeout=60,
            what=f"dev-node.sh stop {self.ipfs_path}",
        )
        self.api_url = None
        self.gateway_url = None

    @property
    def running(self) -> bool:
        return self.api_url is not None

    def __enter__(self) -> KuboNode:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KuboNode({str(self.ipfs_path)!r}, api={self.api_url!r})"

    # -- CLI -------------------------------------------------------------

    def run(self, *args: PathLike, input: bytes | None = None, timeout: float = 120) -> str:
        """Run ``ipfs ARGS...`` against this repo (via the daemon's API); return stdout.

        Raises :class:`KuboError` on a non-zero exit. See :meth:`run_bytes`
        for binary output (``cat``, ``block get``).
        """
        return self.run_bytes(*args, input=input, timeout=timeout).decode(errors="replace")

    def run_bytes(self, *args: PathLike, input: bytes | None = None, timeout: float = 120) -> bytes:
        """Like :meth:`run` but returns stdout undecoded."""
        return _run(
            [kubo_binary(), *args],
            env=self._env(),
            input=input,
            timeout=timeout,
            what="ipfs " + " ".join(map(str, args)),
        )

    @property
    def env(self) -> dict:
        """The two variables casync reads, as printed by dev-node.sh."""
        return {"CASYNC_IPFS_API": self.api_url, "CASYNC_IPFS_GATEWAY": self.gateway_url}

    @property
    def peer_id(self) -> str:
        if self._peer_id is None:
            self._peer_id = self.run("config", "Identity.PeerID").strip()
        return self._peer_id

    @property
    def swarm_addr(self) -> str:
        """Full loopback multiaddr of this node, e.g. /ip4/127.0.0.1/tcp/N/p2p/12D3..."""
        addrs = json.loads(self.run("config", "Addresses.Swarm"))
        return f"{addrs[0]}/p2p/{self.peer_id}"

    def connect(self, other: KuboNode) -> None:
        """Connect this node to ``other`` over loopback (bitswap then works both ways)."""
        self.run("swarm", "connect", other.swarm_addr)
