"""``casync agent`` as real processes on 127.0.0.1: rounds, backoff, replicas, gossip,
Kubernetes discovery, overdue peers, SIGTERM mid-transfer, JSON logs and /metrics."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents import (
    METRIC_NAMES,
    AgentProc,
    Site,
    casync,
    http_get,
    make_sites,
    running,
    sample,
    scrape,
)
from tests.kubo_fixture import Kubo


def test_one_round_with_once_between_two_sites_converges(tmp_path: Path) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    east.commit({"east.txt": "from east\n"}, "east writes")
    west.commit({"west.txt": "from west\n"}, "west writes")
    with running(west, west.config([east])):
        once = casync("agent", "--config", str(east.config([west])), "--once", "--log-format", "json",
                      cwd=east.root, check=False)
        assert once.returncode == 0, once.stderr
        events = [json.loads(line) for line in once.stderr.splitlines()]
        synced = [e for e in events if e["event"] == "synced"]
        assert [e["peer"] for e in synced] == ["us-west-1"]
        assert synced[0]["merge"] == "merged" and synced[0]["push"] == "pushed"
        assert synced[0]["blocks_received"] > 0 and synced[0]["blocks_sent"] > 0
    assert east.head() == west.head()
    assert east.files() == west.files() == {"README": "fleet\n", "east.txt": "from east\n", "west.txt": "from west\n"}


def test_once_exits_1_when_a_peer_fails(tmp_path: Path) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    once = casync("agent", "--config", str(east.config([west])), "--once", "--log-format", "json",
                  cwd=east.root, check=False)  # nobody serves west's port
    assert once.returncode == 1
    failed = [json.loads(line) for line in once.stderr.splitlines() if '"sync_failed"' in line]
    assert failed and failed[0]["reason"] == "unreachable" and failed[0]["peer"] == "us-west-1"


def test_a_dead_peer_backs_off_while_a_live_one_syncs_every_round(tmp_path: Path) -> None:
    east, west, eu = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"),
                                ("eu-central-1", "eu-central"))  # eu never runs: a dead peer
    with running(west, west.config([east])), running(east, east.config([west, eu], backoff_cap='"1200ms"')) as a:
        a.wait_for(lambda: len([e for e in a.events("sync_failed") if e["peer"] == "eu-central-1"]) >= 5,
                   60, "five failures of the dead peer")
        dead = [e for e in a.events("sync_failed") if e["peer"] == "eu-central-1"]
        live = [e for e in a.events("synced") if e["peer"] == "us-west-1"]
        # backoff: the interval (0.3 s), doubled per failure, capped at backoff_cap
        assert [e["retry_in"] for e in dead[:5]] == [0.3, 0.6, 1.2, 1.2, 1.2]
        assert all(e["reason"] == "unreachable" for e in dead)
        assert len(live) > len(dead)  # the live peer was synced every round meanwhile
        m = scrape(east)
        assert sample(m, "sync_failures_total", peer="eu-central-1", reason="unreachable") == len(
            [e for e in a.events("sync_failed") if e["peer"] == "eu-central-1"])
        assert sample(m, "sync_failures_total", peer="us-west-1", reason="unreachable") == 0
        assert (sample(m, "last_successful_sync_timestamp_seconds", peer="us-west-1") or 0) > time.time() - 30


def test_a_replica_pulls_from_its_master_and_never_pushes(tmp_path: Path) -> None:
    east, copy = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-east-r1", "us-east"))
    master_head = east.commit({"data.txt": "master\n"}, "on the master")
    replica_cfg = copy.config([east], site_extra='role = "replica"\nmaster = "us-east-1"')
    with running(east, east.config([copy])) as master:
        once = casync("agent", "--config", str(replica_cfg), "--once", cwd=copy.root, check=False)
        assert once.returncode == 0, once.stderr
        assert copy.head() == master_head
        mine = copy.commit({"local.txt": "replica's own\n"}, "written on the replica")
        once = casync("agent", "--config", str(replica_cfg), "--once", "--log-format", "json", cwd=copy.root)
        synced = [json.loads(line) for line in once.stderr.splitlines() if '"synced"' in line]
        assert synced and synced[0]["push"] is None and synced[0]["blocks_sent"] == 0
        assert east.head() == master_head and east.head(mine) is None  # the master never got it
        assert master.proc.poll() is None
    replica_head = copy.head()
    with running(copy, replica_cfg) as replica:  # serving read-only: the master's pushes are not taken
        with running(east, east.config([], extra=f'[peers.us-east-r1]\nurl = "{copy.url}"\nregion = "us-east"\n'
                                       f'token_file = "{copy.root / "token"}"')) as master:
            event = master.wait_event("synced", peer="us-east-r1")
            assert event["push"] == "skipped: peer is read-only"
        assert replica.proc.poll() is None
    assert copy.head() == replica_head


def test_gossip_learns_a_third_peer_from_one_seed_peer(tmp_path: Path) -> None:
    hub, west, eu = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"),
                               ("eu-central-1", "eu-central"))
    eu_head = eu.commit({"eu.txt": "from eu\n"}, "eu writes")
    with running(hub, hub.config([west, eu])) as h, running(eu, eu.config([hub])):
        h.wait_event("synced", peer="eu-central-1")
        # west is told of nobody but the hub; it learns eu from the hub's GET /v1/peers
        status, _body = http_get(hub.url + "/v1/peers")
        assert status == 401  # the directory is behind the token like every peer endpoint
        with running(west, west.config([hub], regions=_ALL_TALK)) as w:
            learned = w.wait_event("peer_learned", peer="eu-central-1")
            assert learned["source"] == "us-east-1" and learned["url"] == eu.url
            w.wait_event("synced", peer="eu-central-1")
    assert west.head("remotes/eu-central-1/main") is not None
    assert eu_head is not None and west.head(eu_head) == eu_head


_ALL_TALK = """
[[regions]]
name = "us-east"
priority = 1
sync_peers = ["us-west", "eu-central"]

[[regions]]
name = "us-west"
priority = 2
sync_peers = ["us-east", "eu-central"]

[[regions]]
name = "eu-central"
priority = 2
sync_peers = ["us-east", "us-west"]
"""


def test_kubernetes_discovery_finds_the_agents_behind_a_service_name(tmp_path: Path) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    west.commit({"west.txt": "w\n"}, "west")
    discovery = f'[discovery]\nmode = "kubernetes"\nservice = "localhost"\nport = {west.serve_port}\n' \
                f'token_file = "{west.root / "token"}"'
    with running(west, west.config([east])):
        with running(east, east.config([], extra=discovery)) as a:
            added = a.wait_event("peer_added", peer="us-west-1")
            assert added["origin"] == "kubernetes" and added["url"] == west.url
            a.wait_event("synced", peer="us-west-1")
    assert east.head() == west.head()


def test_an_overdue_peer_fails_readyz_and_sets_the_metric(tmp_path: Path) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    cfg = east.config([west], max_sync_delay='"1s"')
    with running(east, cfg) as a:
        status, body = http_get(east.metrics + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        a.wait_event("peer_overdue", peer="us-west-1")
        status, body = http_get(east.metrics + "/readyz")
        reply = json.loads(body)
        assert status == 503 and reply["ready"] is False
        assert "us-west-1" in reply["reasons"][0] and "max_sync_delay" in reply["reasons"][0]
        assert sample(scrape(east), "sync_peer_overdue", peer="us-west-1") == 1
        with running(west, west.config([east])):  # the peer comes back: ready again
            a.wait_event("synced", peer="us-west-1")
            assert sample(scrape(east), "sync_peer_overdue", peer="us-west-1") == 0
            assert http_get(east.metrics + "/readyz")[0] == 200
        assert http_get(east.metrics + "/healthz")[0] == 200


def test_metrics_parse_as_prometheus_text_and_have_every_name(tmp_path: Path) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    casync("-C", str(east.repo), "fsck")  # records its outcome: audit_last_result
    with running(west, west.config([east])), running(east, east.config([west])) as a:
        a.wait_event("synced", peer="us-west-1")
        m = scrape(east)
        names = {name for name, _labels in m}
        for name in METRIC_NAMES:
            assert any(n == name or n.startswith(name + "_") for n in names), name
        assert sample(m, "audit_last_result") == 1
        assert (sample(m, "audit_last_run_timestamp_seconds") or 0) > time.time() - 600
        assert sample(m, "casync_agent_info", site="us-east-1", region="us-east", role="peer",
                      version="0.1.0") == 1
        lag = sample(m, "sync_lag_seconds", source="us-west-1", target="us-east-1")
        assert lag is not None and 0 <= lag < 30
        assert sample(m, "sync_duration_seconds_count", peer="us-west-1") >= 1  # type: ignore[operator]
        assert sample(m, "unresolved_conflicts") == 0
        status, body = http_get(east.metrics + "/status.json")
        snap = json.loads(body)
        assert status == 200 and snap["site"] == "us-east-1" and snap["peers"][0]["name"] == "us-west-1"
    for event in a.events():  # JSON lines throughout
        assert {"ts", "level", "event", "msg"} <= set(event)


def test_a_failed_audit_is_exported(tmp_path: Path) -> None:
    (east,) = make_sites(tmp_path, ("us-east-1", "us-east"))
    head = east.head()
    assert head is not None
    packs = sorted((east.repo / ".casync" / "packs").glob("*.pack"))
    data = bytearray(packs[-1].read_bytes())
    data[bytes(data).find(b"fleet\n")] ^= 1  # bit rot in the README's block
    packs[-1].write_bytes(bytes(data))
    assert casync("-C", str(east.repo), "fsck", check=False).returncode == 1
    with running(east, east.config([])):
        assert sample(scrape(east), "audit_last_result") == 0


# --- SIGTERM mid-transfer ------------------------------------------------------------------------------


class SlowProxy:
    """A TCP relay on 127.0.0.1 that passes the server's replies at ``rate`` bytes/s, so a fetch
    is still in flight when the test wants it to be (a slow link, for real)."""

    def __init__(self, target: int, rate: int) -> None:
        self.target, self.rate = target, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.relayed = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        try:
            while not self.stopped.is_set():
                data = src.recv(16384 if rate is None else max(1024, rate // 20))
                if not data:
                    break
                dst.sendall(data)
                if rate is not None:
                    self.relayed += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def slow_proxy() -> Iterator[Callable[[int, int], SlowProxy]]:
    made: list[SlowProxy] = []

    def make(target: int, rate: int) -> SlowProxy:
        made.append(SlowProxy(target, rate))
        return made[-1]

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()


def test_sigterm_mid_transfer_leaves_the_repository_consistent(tmp_path: Path, slow_proxy: Any) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    big = {f"data/{i:03d}.bin": os.urandom(256 << 10).hex() for i in range(24)}  # ~12 MiB as text
    before = east.head()
    west.commit(big, "a large commit")
    with running(west, west.config([])):  # west pushes nowhere: east gets it only by its own fetch
        proxy = slow_proxy(west.serve_port, 1 << 20)  # 1 MiB/s: ~8 s of fetch (zstd halves hex)
        via = Site(tmp_path / "via", "us-west-1", "us-west")  # west, as east reaches it: through the proxy
        via.serve_port, via.root = proxy.port, west.root
        agent = AgentProc(east, east.config([via], shutdown_timeout='"10s"'))
        try:
            agent.wait_started()
            agent.wait_for(lambda: proxy.relayed > (1 << 20), 60, "a fetch in flight")
            t0 = time.monotonic()
            code = agent.terminate(30)
            stopped_in = time.monotonic() - t0
            events = agent.events()
        finally:
            agent.kill()
    assert code == 0
    assert stopped_in < 10  # bounded: shutdown_timeout
    assert [e["peer"] for e in events if e["event"] == "sync_abandoned"] == ["us-west-1"], events[-5:]
    assert not [e for e in events if e["event"] == "sync_failed"]  # stopping is not the peer's failure
    fsck = casync("-C", str(east.repo), "fsck", "--json", check=False)
    assert fsck.returncode == 0, fsck.stdout
    assert json.loads(fsck.stdout)["ok"] is True
    assert east.head() == before  # the branch did not move to a commit it does not wholly hold
    assert east.head("remotes/us-west-1/main") in (None, before)
    # and a later round fetches the rest
    with running(west, west.config([east])):
        once = casync("agent", "--config", str(east.config([west])), "--once", cwd=east.root, check=False)
        assert once.returncode == 0, once.stderr
    assert east.head() == west.head()
    assert json.loads(casync("-C", str(east.repo), "fsck", "--json").stdout)["ok"] is True



@pytest.mark.kubo
def test_a_round_pushes_to_the_sites_ipfs_node(tmp_path: Path, kubo: Kubo) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    west.commit({"west.txt": "w\n"}, "west")
    node = f'[ipfs.local]\nurl = "{kubo.remote_url}"'
    if kubo.gateway_url:
        node += f'\ngateway = "{kubo.gateway_url}"'
    with running(west, west.config([east])):
        once = casync("agent", "--config", str(east.config([west], extra=node)), "--once", "--log-format", "json",
                      cwd=east.root, check=False)
    assert once.returncode == 0, once.stderr
    pushed = [e for e in map(json.loads, once.stderr.splitlines()) if e["event"] == "synced" and e["peer"] == "local"]
    assert pushed and pushed[0]["kind"] == "ipfs"
    # --once pushes to IPFS after the peers' syncs: the node has the merged head
    repo_id = casync("-C", str(east.repo), "config", "repository_id").stdout.strip()
    casync("clone", f"{kubo.remote_url}/{repo_id}", str(tmp_path / "from-ipfs"), "--replica", "reader-1")
    got = casync("-C", str(tmp_path / "from-ipfs"), "log", "-n", "1", "--json").stdout
    assert json.loads(got)[0]["cid"] == east.head() == west.head()
    assert pushed[0]["blocks_sent"] > 0
    assert casync("-C", str(east.repo), "remote", "-v").stdout.count("local") >= 1  # registered, for 'casync push'


def test_failures_are_classified_by_type_auth_and_timeout(tmp_path: Path) -> None:
    east, west, eu = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"),
                                ("eu-central-1", "eu-central"))
    (tmp_path / "wrong").write_text("not-the-token\n")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers: a hung peer
    eu.serve_port = silent.getsockname()[1]
    try:
        with running(west, west.config([])):
            cfg = east.config([eu], peer_timeout='"1s"', extra=f'[peers.us-west-1]\nurl = "{west.url}"\n'
                              f'region = "us-west"\ntoken_file = "{tmp_path / "wrong"}"')
            once = casync("agent", "--config", str(cfg), "--once", "--log-format", "json", cwd=east.root,
                          check=False)
    finally:
        silent.close()
    assert once.returncode == 1
    failed = {e["peer"]: e for e in map(json.loads, once.stderr.splitlines()) if e["event"] == "sync_failed"}
    assert failed["us-west-1"]["reason"] == "auth" and failed["us-west-1"]["error_type"] == "RemoteAuthError"
    assert failed["eu-central-1"]["reason"] == "timeout"


def test_a_new_site_clones_its_repository_from_a_seed_peer(tmp_path: Path) -> None:
    (east,) = make_sites(tmp_path, ("us-east-1", "us-east"))
    east.commit({"east.txt": "e\n"}, "east")
    new = Site(tmp_path / "us-west-7", "us-west-7", "us-west")  # no repository yet
    with running(east, east.config([])):
        once = casync("agent", "--config", str(new.config([east])), "--once", "--log-format", "json",
                      cwd=new.root, check=False)
        assert once.returncode == 0, once.stderr
    events = [json.loads(line) for line in once.stderr.splitlines()]
    assert [e["peer"] for e in events if e["event"] == "cloned"] == ["us-east-1"]
    assert new.head() == east.head() and new.files() == east.files()
    assert casync("-C", str(new.repo), "config", "replica").stdout.strip() == "us-west-7"
    # nobody to clone from: exit 2, saying what was tried
    lone = Site(tmp_path / "us-west-8", "us-west-8", "us-west")
    once = casync("agent", "--config", str(lone.config([east])), "--once", cwd=lone.root, check=False)
    assert once.returncode == 2
    assert "no peer to clone it from answered" in once.stderr and "us-east-1" in once.stderr


def test_a_pod_gone_from_the_service_records_is_forgotten(tmp_path: Path) -> None:
    """In-process agent with an injected resolver standing in for the Service's DNS records."""
    import io

    from casync.agent.config import load_config
    from casync.agent.logs import AgentLog
    from casync.agent.runner import Agent

    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    records = ["127.0.0.1"]
    discovery = f'[discovery]\nmode = "kubernetes"\nservice = "casync-agent.sync-system.svc"\n' \
                f'port = {west.serve_port}\ntoken_file = "{west.root / "token"}"'
    log = io.StringIO()
    agent = Agent(load_config(east.config([], extra=discovery)), AgentLog("json", log),
                  resolver=lambda host, port: list(records) if host == "casync-agent.sync-system.svc" else [])
    with running(west, west.config([])):
        agent.open(serving=False)
        try:
            assert agent.round(wait=True) == {"us-west-1": True}
            assert agent.metrics.text().count(b'peer="us-west-1"') > 0
            records.clear()  # the pod is gone from the Service
            assert agent.round(wait=True) == {}
        finally:
            agent.close()
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [e["peer"] for e in events if e["event"] == "peer_forgotten"] == ["us-west-1"]
    assert b"us-west-1" not in agent.metrics.text()
    assert agent.not_ready() == []


def test_region_priority_decides_writes_within_the_skew_tolerance_on_every_site(tmp_path: Path) -> None:
    """Both sites wrote shared.txt within clock_skew_tolerance: the higher-priority region's
    write (us-east, priority 1) wins on both, though us-west wrote later and its replica id is
    the larger (which would decide without region priorities)."""
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    east.commit({"shared.txt": "east\n"}, "east writes")
    time.sleep(0.05)
    west.commit({"shared.txt": "west, later\n"}, "west writes")
    skew = {"clock_skew_tolerance": '"1h"'}
    with running(west, west.config([east], **skew)):
        once = casync("agent", "--config", str(east.config([west], **skew)), "--once", cwd=east.root, check=False)
        assert once.returncode == 0, once.stderr
    assert east.files()["shared.txt"] == west.files()["shared.txt"] == "east\n"
    assert east.head() == west.head()


def test_a_slow_transfer_does_not_hold_up_the_other_peers(tmp_path: Path, slow_proxy: Any) -> None:
    """The writer lock is taken per batch of whole commits, never while a slow link is waited on:
    another peer's new commit is fetched and merged while the slow transfer is still running."""
    east, west, eu = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"),
                                ("eu-central-1", "eu-central"))
    west.commit({f"data/{i:03d}.bin": os.urandom(256 << 10).hex() for i in range(24)}, "a large commit")
    with running(west, west.config([])), running(eu, eu.config([])):
        proxy = slow_proxy(west.serve_port, 1 << 20)
        via = Site(tmp_path / "via", "us-west-1", "us-west")
        via.serve_port, via.root = proxy.port, west.root
        with running(east, east.config([via, eu])) as a:
            a.wait_for(lambda: proxy.relayed > (1 << 20), 60, "the slow fetch in flight")
            eu.commit({"eu.txt": "while west trickles\n"}, "eu writes")
            quick = a.wait_for(lambda: next((e for e in a.events("synced") if e["peer"] == "eu-central-1"
                                             and e["blocks_received"] > 0), None), 60, "eu's commit fetched")
            slow = a.wait_event("synced", 120, peer="us-west-1")
    assert quick["ts"] < slow["ts"] and quick["blocks_received"] > 0
    assert json.loads(casync("-C", str(east.repo), "fsck", "--json").stdout)["ok"] is True
