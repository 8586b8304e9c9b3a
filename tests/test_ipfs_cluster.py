"""Replicated pins through a real 3-peer IPFS Cluster on loopback (tests/cluster_fixture.py):
push pins each head on the configured number of peers under casync's pin name, ``remote
show`` reports it per peer, a newer head replaces the old pin, and ``audit --remote`` fails
(exit 1, naming the head and the peers) when a head is under-replicated."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from casync.errors import RemoteNotFound, RemoteUnreachable, UsageError
from casync.model.cid import parse_cid
from casync.store.ipfs_cluster import ClusterClient, check_cluster_url
from casync.store.retry import NO_RETRY

from .agents import casync, make_sites
from .cluster_fixture import Cluster
from .conftest import Cli, write

pytestmark = pytest.mark.cluster


def _repo(tmp_path: Path, cluster: Cluster, name: str, low: int, high: int) -> Cli:
    Cli(tmp_path)("init", name, "--replica", f"{name}-site")
    cli = Cli(tmp_path / name)
    write(cli.cwd, "data.bin", os.urandom(400_000))
    write(cli.cwd, "notes.txt", f"{name}\n")
    cli("commit", "-m", "first")
    peer = cluster.peers[0]
    assert peer.kubo.api_url is not None
    cli("remote", "add", "origin", "ipfs+" + peer.kubo.api_url, "--cluster", peer.api_url,
        "--replication-min", str(low), "--replication-max", str(high))
    return cli


def _status(cluster: Cluster, cid: str, via: int = 1) -> dict[str, str]:
    """peername -> status of ``cid``, asked of another peer than the one casync talks to."""
    [info] = cluster.peers[via].request("GET", f"/pins/{cid}")
    return {v["peername"]: v["status"] for v in info["peer_map"].values()}


def test_push_pins_each_head_on_the_configured_peers(tmp_path: Path, ipfs_cluster: Cluster) -> None:
    a = _repo(tmp_path, ipfs_cluster, "a", 2, 2)
    rid = a("config", "repository_id").stdout.strip()
    first = json.loads(a("push", "--json").stdout)["head"]
    name = f"casync/{rid}/a-site/main"
    [entry] = ipfs_cluster.peers[2].request("GET", f"/allocations/{first}")
    assert entry["name"] == name
    assert (entry["replication_factor_min"], entry["replication_factor_max"]) == (2, 2)
    assert sorted(_status(ipfs_cluster, first).values()) == ["pinned", "pinned", "remote"]
    shown = json.loads(a("remote", "show", "origin", "--json").stdout)
    [pin] = shown["cluster"]
    assert (pin["replica"], pin["branch"], pin["cid"], pin["name"]) == ("a-site", "main", first, name)
    assert (pin["pinned"], pin["required"], pin["ok"]) == (2, 2, True)
    assert "pinned on 2/2 peers" in a("remote", "show", "origin").stdout
    # a newer head takes the name; the old head's pin is removed through the cluster
    write(a.cwd, "notes.txt", "second\n")
    a("commit", "-m", "second")
    second = json.loads(a("push", "--json").stdout)["head"]
    assert second != first
    assert ipfs_cluster.peers[1].request("GET", f"/allocations/{second}")[0]["name"] == name
    with pytest.raises(Exception, match="404"):
        ipfs_cluster.peers[1].request("GET", f"/allocations/{first}")
    assert json.loads(a("push", "--json").stdout)["up_to_date"] is True


def test_audit_remote_checks_cluster_coverage(tmp_path: Path, ipfs_cluster: Cluster) -> None:
    a = _repo(tmp_path, ipfs_cluster, "b", 2, 3)
    rid = a("config", "repository_id").stdout.strip()
    head = json.loads(a("push", "--json").stdout)["head"]
    assert sorted(_status(ipfs_cluster, head).values()) == ["pinned"] * 3
    ok = a("audit", "--remote", "origin", "--json")
    assert json.loads(ok.stdout)["ok"] is True
    # someone re-pins the head on one peer only: under-replicated for this remote (min 2)
    name = f"casync/{rid}/b-site/main"
    ipfs_cluster.peers[1].request("POST", f"/pins/{head}?name={name}&replication-min=1&replication-max=1")
    client = ClusterClient(ipfs_cluster.peers[2].api_url)
    deadline = time.monotonic() + 60
    while len(client.status(parse_cid(head)).pinned_on) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    bad = a("audit", "--remote", "origin", ok=False)
    assert bad.exit_code == 1
    text = bad.stdout + bad.stderr
    assert "under-replicated" in text and head in text and "b-site/main" in text
    assert "pinned on 1 of the 2 peers" in text
    not_pinned = [p.name for p in ipfs_cluster.peers if _status(ipfs_cluster, head).get(p.name) != "pinned"]
    assert len(not_pinned) == 2 and all(p in text for p in not_pinned)
    # unpinned from the cluster altogether
    ipfs_cluster.peers[0].request("DELETE", f"/pins/{head}")
    gone = a("audit", "--remote", "origin", "--json", ok=False)
    findings = json.loads(gone.stdout)["findings"]
    assert gone.exit_code == 1 and any(f["kind"] == "under-replicated" and "not in the pinset" in f["detail"]
                                       for f in findings)


def test_cluster_client_classifies_failures(ipfs_cluster: Cluster) -> None:
    client = ClusterClient(ipfs_cluster.peers[0].api_url, retry=NO_RETRY)
    assert client.id()["peername"] == "peer0"
    assert {p["peername"] for p in client.peers()} == {"peer0", "peer1", "peer2"}
    absent = parse_cid("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")  # b"hello world"
    assert client.allocation(absent) is None
    assert client.unpin(absent) is False  # not in the pinset: nothing to remove
    assert {p.status for p in client.status(absent).peers} == {"unpinned"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteUnreachable, match=f"127.0.0.1:{port}"):
        ClusterClient(f"http://127.0.0.1:{port}", retry=NO_RETRY).id()
    with pytest.raises(RemoteNotFound):
        client._call("GET", "/no-such-endpoint", "probe")


def test_cluster_settings_are_checked(tmp_path: Path) -> None:
    Cli(tmp_path)("init", "r")
    cli = Cli(tmp_path / "r")
    bad = cli("remote", "add", "o", "ipfs+http://127.0.0.1:5001", "--replication-min", "2", ok=False)
    assert bad.exit_code == 2 and "need a cluster" in bad.stderr
    bad = cli("remote", "add", "o", "ipfs+http://127.0.0.1:5001", "--cluster", "http://127.0.0.1:9094",
              "--replication-min", "3", "--replication-max", "2", ok=False)
    assert bad.exit_code == 2 and "above max" in bad.stderr
    bad = cli("remote", "add", "o", "ipfs+http://127.0.0.1:5001", "--cluster", "http://u:p@127.0.0.1:9094", ok=False)
    assert bad.exit_code == 2 and "CASYNC_CLUSTER_API_AUTH" in bad.stderr
    cli("remote", "add", "o", "ipfs+http://127.0.0.1:5001", "--cluster", "http://127.0.0.1:9094/",
        "--replication-min", "2")
    assert "(cluster http://127.0.0.1:9094, replication 2..-)" in cli("remote", "-v").stdout
    cli("remote", "set-url", "o", "--cluster", "")
    assert json.loads(cli("remote", "--json").stdout)[0]["cluster"] is None
    with pytest.raises(UsageError):
        check_cluster_url("ipfs+http://127.0.0.1:9094")


def test_an_agent_round_pins_through_the_cluster(tmp_path: Path, ipfs_cluster: Cluster) -> None:
    [site] = make_sites(tmp_path, ("us-east-1", "us-east"))
    site.commit({"data.txt": "agent data\n"}, "agent")
    peer = ipfs_cluster.peers[1]
    extra = (f'[ipfs.kubo]\nurl = "ipfs+{peer.kubo.api_url}"\n'
             f'[ipfs_clusters.c]\nurl = "{peer.api_url}"\nreplication_min = 2\nreplication_max = 2\n')
    once = casync("agent", "--config", str(site.config([], extra=extra)), "--once", cwd=site.root, check=False)
    assert once.returncode == 0, once.stderr
    head = site.head()
    rid = casync("-C", str(site.repo), "config", "repository_id").stdout.strip()
    [entry] = ipfs_cluster.peers[0].request("GET", f"/allocations/{head}")
    assert entry["name"] == f"casync/{rid}/us-east-1/main"
    assert (entry["replication_factor_min"], entry["replication_factor_max"]) == (2, 2)
    assert sorted(_status(ipfs_cluster, str(head)).values()) == ["pinned", "pinned", "remote"]
    assert f"(cluster {peer.api_url}, replication 2..2)" in casync("-C", str(site.repo), "remote", "-v").stdout


def test_a_tree_with_an_empty_file_is_pinned_on_every_peer(tmp_path: Path, ipfs_cluster: Cluster) -> None:
    """Bitswap never sends the zero-length block, so the peers that fetch the DAG never
    finished pinning a tree with an empty file (the push waited out its 5 minutes).  Push
    adds the empty file through the cluster first, which puts the block on every peer."""
    from casync.model.cid import RAW, cid_str, compute_cid
    from casync.transports.ipfs.cluster import EMPTY_BLOCK_PIN

    a = _repo(tmp_path, ipfs_cluster, "empty", 3, 3)
    write(a.cwd, "empty.txt", "")
    write(a.cwd, "dir/also-empty", "")
    a("commit", "-m", "empty files")
    head = json.loads(a("push", "--json").stdout)["head"]
    assert sorted(_status(ipfs_cluster, head).values()) == ["pinned"] * 3
    empty = cid_str(compute_cid(RAW, b"", "blake3"))
    [entry] = ipfs_cluster.peers[2].request("GET", f"/allocations/{empty}")
    assert entry["name"] == EMPTY_BLOCK_PIN and entry["replication_factor_min"] == -1
    assert json.loads(a("audit", "--remote", "origin", "--json").stdout)["ok"] is True
