"""A real 3-peer IPFS Cluster on 127.0.0.1 for the cluster-remote tests (``@pytest.mark.cluster``).

Three Kubo nodes (``tests/kubo_node.py``, swarm-connected to each other so bitswap moves
blocks between them) and three ``ipfs-cluster-service`` peers, one per Kubo node: CRDT
consensus, one shared secret, each peer's cluster swarm, REST API, IPFS proxy, pinning
service API and metrics endpoint on free 127.0.0.1 ports, mDNS off, every peer knowing the
other two (``peer_addresses``).  The fixture is session-scoped: the cluster starts once
(peers see each other's metrics about 15 s after start; the fixture polls, bounded) and
everything it started is stopped by PID at the end, also when a test fails.

The binaries are the pinned ones ``.ci/build-cluster.sh`` builds (v1.1.6, cached under
``$HOME/.cache/casync/cluster/``; ``CASYNC_CLUSTER_BIN_DIR`` names another directory).
Without them the tests are skipped, except under ``CI=1`` or ``CASYNC_REQUIRE_KUBO=1`` (CI
sets both), where a missing binary is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .etcd_fixture import _free_port, _required
from .kubo_fixture import _local_binary
from .kubo_node import KuboError, KuboNode

CLUSTER_VERSION = "v1.1.6"
START_TIMEOUT = 120.0


def cluster_bin_dir() -> Path | None:
    named = os.environ.get("CASYNC_CLUSTER_BIN_DIR")
    if named:
        return Path(named)
    cache = os.environ.get("CASYNC_CLUSTER_CACHE") or str(Path.home() / ".cache" / "casync" / "cluster")
    path = Path(cache) / CLUSTER_VERSION
    return path if os.access(path / "ipfs-cluster-service", os.X_OK) else None


def _maddr(port: int, proto: str = "tcp") -> str:
    return f"/ip4/127.0.0.1/{proto}/{port}"


@dataclass
class ClusterPeer:
    """One ``ipfs-cluster-service`` peer and the Kubo node it pins on."""

    name: str
    config: Path
    kubo: KuboNode
    rest: int
    swarm: int
    peer_id: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        """The REST API (what a casync remote's ``cluster`` names)."""
        return f"http://127.0.0.1:{self.rest}"

    @property
    def address(self) -> str:
        return f"{_maddr(self.swarm)}/p2p/{self.peer_id}"

    def request(self, method: str, path: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """A REST API call; the JSON objects of the answer (streams: one per line)."""
        req = urllib.request.Request(self.api_url + path, method=method, data=b"" if method != "GET" else None)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
        if not text.strip():
            return []
        try:
            value = json.loads(text)
            return value if isinstance(value, list) else [value]
        except ValueError:
            return [json.loads(line) for line in text.splitlines() if line.strip()]


class Cluster:
    """The running cluster: its peers (each with its Kubo node), stopped by :meth:`stop`."""

    def __init__(self, root: Path, bin_dir: Path, size: int = 3) -> None:
        self.root, self.bin_dir, self.size = root, bin_dir, size
        self.secret = secrets.token_hex(32)
        self.cluster_name = f"casync-test-{secrets.token_hex(4)}"
        self.peers: list[ClusterPeer] = []
        self.nodes: list[KuboNode] = []  # every Kubo node started (stopped even if start() fails midway)

    @property
    def service(self) -> str:
        return str(self.bin_dir / "ipfs-cluster-service")

    def start(self) -> Cluster:
        nodes = self.nodes
        for i in range(self.size):
            nodes.append(KuboNode(self.root / f"kubo{i}", start=False))
            nodes[-1].start()
        for i, node in enumerate(nodes):
            for other in nodes[i + 1:]:
                node.connect(other)
        for i, node in enumerate(nodes):
            peer = ClusterPeer(f"peer{i}", self.root / f"cluster{i}", node, _free_port(), _free_port())
            self.peers.append(peer)
            self._init(peer)
        for peer in self.peers:
            self._configure(peer)
            log = open(peer.config / "daemon.log", "wb")  # noqa: SIM115 - held by the child
            peer.proc = subprocess.Popen([self.service, "--config", str(peer.config), "daemon"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
            log.close()
        self.wait_ready()
        return self

    def _init(self, peer: ClusterPeer) -> None:
        env = {**os.environ, "CLUSTER_SECRET": self.secret}
        subprocess.run([self.service, "--config", str(peer.config), "init", "--consensus", "crdt", "-f"],
                       env=env, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        peer.peer_id = json.loads((peer.config / "identity.json").read_text())["id"]

    def _configure(self, peer: ClusterPeer) -> None:
        path = peer.config / "service.json"
        cfg = json.loads(path.read_text())
        c = cfg["cluster"]
        c.update(peername=peer.name, secret=self.secret, listen_multiaddress=[_maddr(peer.swarm)],
                 mdns_interval="0s", monitor_ping_interval="2s", peer_watch_interval="2s",
                 state_sync_interval="10s", pin_recover_interval="15s",
                 peer_addresses=[p.address for p in self.peers if p is not peer])
        cfg["consensus"]["crdt"].update(cluster_name=self.cluster_name, trusted_peers=["*"],
                                        rebroadcast_interval="2s")
        api = cfg["api"]
        api["restapi"]["http_listen_multiaddress"] = _maddr(peer.rest)
        api["ipfsproxy"]["listen_multiaddress"] = _maddr(_free_port())
        api["ipfsproxy"]["node_multiaddress"] = _api_maddr(peer.kubo)
        if "pinsvcapi" in api:
            api["pinsvcapi"]["http_listen_multiaddress"] = _maddr(_free_port())
        cfg["ipfs_connector"]["ipfshttp"]["node_multiaddress"] = _api_maddr(peer.kubo)
        obs = cfg.get("observations", {})
        if "metrics" in obs:
            obs["metrics"]["prometheus_endpoint"] = _maddr(_free_port())
        if "pubsubmon" in cfg.get("monitor", {}):
            cfg["monitor"]["pubsubmon"]["check_interval"] = "2s"
        for informer in cfg.get("informer", {}).values():
            if isinstance(informer, dict) and "metric_ttl" in informer:
                informer["metric_ttl"] = "10s"
        path.write_text(json.dumps(cfg, indent=2))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll (bounded) until every peer lists all peers and has every peer's freespace metric
        (without those, a pin asking for 2 or 3 replicas cannot be allocated)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for peer in self.peers:
                if peer.proc is not None and peer.proc.poll() is not None:
                    raise RuntimeError(f"{peer.name} exited {peer.proc.returncode}: {self.log(peer)[-2000:]}")
            try:
                last = self._not_ready() or ""
            except (OSError, ValueError) as exc:
                last = str(exc)
            if not last:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the cluster did not form in {timeout:g}s ({last}); logs: "
                               + " | ".join(self.log(p)[-1500:] for p in self.peers))
        self._probe(deadline)

    def _probe(self, deadline: float) -> None:
        """Pin one fresh block everywhere and wait until every peer reports it pinned: the
        shared pinset (CRDT over pubsub) and the peers' Kubo nodes (bitswap) both work."""
        first = self.peers[0]
        cid = first.kubo.run("block", "put", "--cid-codec=raw", input=secrets.token_bytes(64)).strip()
        first.request("POST", f"/pins/{cid}?replication-min=-1&replication-max=-1&name=casync-fixture-probe")
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            [info] = first.request("GET", f"/pins/{cid}")
            status = {v.get("peername", p): v.get("status", "") for p, v in (info.get("peer_map") or {}).items()}
            if len(status) == self.size and set(status.values()) == {"pinned"}:
                first.request("DELETE", f"/pins/{cid}")
                return
            time.sleep(0.5)
        raise RuntimeError(f"a probe pin did not reach every peer in {START_TIMEOUT:g}s ({status}); logs: "
                           + " | ".join(self.log(p)[-1500:] for p in self.peers))

    def _not_ready(self) -> str | None:
        ids = {p.peer_id for p in self.peers}
        for peer in self.peers:
            seen = {p.get("id") for p in peer.request("GET", "/peers") if not p.get("error")}
            if not ids <= seen:
                return f"{peer.name} sees {len(seen & ids)} peers"
            metrics = {m.get("peer") for m in peer.request("GET", "/monitor/metrics/freespace") if m.get("valid", True)}
            if not ids <= metrics:
                return f"{peer.name} has freespace metrics of {len(metrics & ids)} peers"
        return None

    def log(self, peer: ClusterPeer) -> str:
        try:
            return (peer.config / "daemon.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop_peer(self, peer: ClusterPeer) -> None:
        """Stop one cluster peer by its PID (SIGTERM, then SIGKILL after 20 s)."""
        proc, peer.proc = peer.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        errors: list[Exception] = []
        for peer in self.peers:
            try:
                self.stop_peer(peer)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        for node in self.nodes:
            try:
                node.stop()
            except KuboError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _api_maddr(node: KuboNode) -> str:
    assert node.api_url is not None
    return _maddr(int(node.api_url.rsplit(":", 1)[1]))


@pytest.fixture(scope="session")
def ipfs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three Kubo nodes and three cluster peers on loopback, for the whole session."""
    reasons: list[str] = []
    bin_dir = cluster_bin_dir()
    if bin_dir is None:
        reasons.append(f"ipfs-cluster {CLUSTER_VERSION} is not built (run .ci/build-cluster.sh, or set "
                       "CASYNC_CLUSTER_BIN_DIR)")
    if _local_binary(reasons) is None or bin_dir is None:
        msg = "no IPFS Cluster available: " + "; ".join(reasons)
        if _required():
            pytest.fail(msg + " (CI or CASYNC_REQUIRE_KUBO=1 is set, so this is a failure)", pytrace=False)
        pytest.skip(msg)
    cluster = Cluster(tmp_path_factory.mktemp("ipfs-cluster"), bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


__all__ = ["Cluster", "ClusterPeer", "cluster_bin_dir", "ipfs_cluster"]
