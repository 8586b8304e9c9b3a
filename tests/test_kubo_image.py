"""The casync/kubo image (deploy/images/kubo): a real container from the locally built image,
on the host network, read back over its RPC API. Needs a Docker engine (CI starts one with
.ci/docker.sh); without one these tests skip, or fail under CI / CASYNC_REQUIRE_KUBO=1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from .kubo_container import KuboContainer, run_to_exit
from .kubo_node import IPFS_DIR, kubo_binary

pytestmark = pytest.mark.kubo

Factory = Callable[..., KuboContainer]

# configure.sh's optional knobs, all set (the defaults are the other case).
KNOBS = {"CASYNC_KUBO_STORAGE_MAX": "5GB", "CASYNC_KUBO_GC_WATERMARK": "80", "CASYNC_KUBO_GC_PERIOD": "30m",
         "CASYNC_KUBO_MAX_MEMORY": "512MB", "CASYNC_KUBO_API_AUTH": "bearer:image-test-token"}


def _port(url: str | None) -> int:
    assert url is not None
    return int(url.rsplit(":", 1)[1])


def test_first_start_initialises_the_repo_and_applies_the_production_settings(
        kubo_container_factory: Factory) -> None:
    c = kubo_container_factory()
    assert "no repo at /data/ipfs: ipfs init --profile server,test" in c.logs()
    cfg = c.config()
    assert cfg["Addresses"]["API"] == [f"/ip4/127.0.0.1/tcp/{_port(c.api_url)}"]
    ds = cfg["Datastore"]
    assert (ds["StorageMax"], ds["StorageGCWatermark"], ds["GCPeriod"]) == ("100GB", 90, "1h")
    assert "flatfs" in str(ds["Spec"])
    gw = cfg["Gateway"]
    assert (gw["NoFetch"], gw["DeserializedResponses"], gw["NoDNSLink"], gw["ExposeRoutingAPI"],
            gw["RootRedirect"]) == (True, True, True, False, "")
    assert cfg["Import"] == {**cfg["Import"], "CidVersion": 1, "UnixFSRawLeaves": True, "HashFunction": "blake3"}
    assert cfg["AutoTLS"]["Enabled"] is False
    assert cfg["Plugins"]["Plugins"]["telemetry"]["Config"]["Mode"] == "off"
    # the server profile: no MDNS, no UPnP, private ranges neither announced nor dialled
    assert cfg["Discovery"]["MDNS"]["Enabled"] is False
    assert cfg["Swarm"]["DisableNatPortMap"] is True
    assert "/ip4/10.0.0.0/ipcidr/8" in cfg["Swarm"]["AddrFilters"]
    assert "/ip4/192.168.0.0/ipcidr/16" in cfg["Addresses"]["NoAnnounce"]
    assert "API" not in cfg or "Authorizations" not in cfg["API"]  # only with CASYNC_KUBO_API_AUTH
    # what the Kubernetes probes fetch: the empty identity CID, always local
    with urllib.request.urlopen(f"{c.gateway_url}/ipfs/bafkqaaa", timeout=30) as resp:
        assert resp.status == 200


def test_api_and_every_socket_of_the_node_are_on_loopback(kubo_container_factory: Factory) -> None:
    c = kubo_container_factory()
    proc = psutil.Process(c.pid())
    assert proc.name() == "ipfs"  # the entrypoint exec'd Kubo: it is PID 1 of the container
    listening = [conn for conn in proc.net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM]  # UDP: no LISTEN state
    ports = {conn.laddr.port for conn in listening}
    assert {_port(c.api_url), _port(c.gateway_url)} <= ports
    assert {conn.laddr.ip for conn in listening} == {"127.0.0.1"}, listening


@pytest.mark.usefixtures("kubo_container_factory")  # skips, or fails under CI, without an engine
def test_an_unspecified_api_address_is_refused() -> None:
    code, out = run_to_exit({"CASYNC_KUBO_API_ADDRS": "/ip4/0.0.0.0/tcp/5001"})
    assert code == 1
    assert "refusing to bind the RPC API to /ip4/0.0.0.0/tcp/5001" in out


def test_settings_are_reapplied_at_every_start_and_the_identity_is_kept(kubo_container_factory: Factory) -> None:
    c = kubo_container_factory()
    peer = c.rpc("id")["ID"]
    c.rpc("config", "Gateway.NoFetch", "false", bool="true")
    c.rpc("config", "Datastore.StorageMax", "1GB")
    assert c.config()["Gateway"]["NoFetch"] is False
    c.restart()
    cfg = c.config()
    assert (cfg["Gateway"]["NoFetch"], cfg["Datastore"]["StorageMax"]) == (True, "100GB")
    assert c.rpc("id")["ID"] == peer
    assert "no repo at" not in c.logs().split("Daemon is ready", 1)[1]  # the restart kept the repo


def _configure_sh_config(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The config ipfs/config/configure.sh gives a fresh repo, with the native binary."""
    repo = tmp_path / "repo"
    run_env = {**os.environ, **env, "IPFS_PATH": str(repo), "IPFS_BIN": kubo_binary(), "IPFS_TELEMETRY": "off"}
    subprocess.run(["sh", str(IPFS_DIR / "config" / "configure.sh")], env=run_env, check=True, timeout=120,
                   stdin=subprocess.DEVNULL, capture_output=True)
    out = subprocess.run([kubo_binary(), "config", "show"], env=run_env, check=True, timeout=60,
                         stdin=subprocess.DEVNULL, capture_output=True).stdout
    cfg = json.loads(out)
    assert isinstance(cfg, dict)
    return cfg


@pytest.mark.parametrize("knobs", [{}, KNOBS], ids=["defaults", "all-knobs"])
def test_the_image_and_configure_sh_give_the_same_config(
        tmp_path: Path, kubo_container_factory: Factory, knobs: dict[str, str]) -> None:
    c = kubo_container_factory(knobs)
    container_cfg = c.config()
    script_cfg = _configure_sh_config(tmp_path, c.env)
    for cfg in (container_cfg, script_cfg):
        cfg.pop("Identity")  # generated at init: the only part that must differ
    assert container_cfg == script_cfg
