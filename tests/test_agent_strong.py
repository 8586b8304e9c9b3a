"""consistency_model = "strong" in casync.toml (issue 10 meets issue 13): the agent writes the
repository's `strong` key from its [strong] table, so the site's branch moves only by
compare-and-swap on etcd, and a peer's agent reads the same head from etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casync import Repository
from casync.agent.config import parse_config
from casync.errors import UsageError
from casync.store.etcd import EtcdClient

from .agents import casync, make_sites
from .etcd_fixture import EtcdCluster
from .kubo_fixture import Kubo

BASE = {"site": {"replica": "us-east-1", "repository": "repo"}, "serve": {"token_file": "token"}}


def _parse(extra: dict[str, object]) -> object:
    return parse_config({**BASE, **extra}, Path("/etc/casync/casync.toml"))


@pytest.mark.parametrize(("extra", "names"), [
    ({"consistency_model": "strong"}, "strong.etcd_endpoints"),
    ({"strong": {"etcd_endpoints": ["http://127.0.0.1:2379"]}}, "consistency_model"),
    ({"consistency_model": "strong", "strong": {"etcd_endpoints": ["http://127.0.0.1:2379"],
                                                "blocks_remote": "nowhere"}}, "strong.blocks_remote"),
    ({"consistency_model": "strong", "strong": {"etcd_endpoints": ["etcd:2379"]}}, "strong.etcd_endpoints"),
    ({"consistency_model": "strong", "strong": {"etcd_endpoints": ["http://127.0.0.1:2379"], "lease": 3}},
     "strong.lease"),
])
def test_a_bad_strong_table_names_the_key(extra: dict[str, object], names: str) -> None:
    with pytest.raises(UsageError) as err:
        _parse(extra)
    assert names in err.value.message or names.split(".")[-1] in err.value.message, err.value.message


def test_the_strong_table_becomes_the_repository_key() -> None:
    cfg = _parse({"consistency_model": "strong",
                  "ipfs": {"local": {"url": "ipfs+http://127.0.0.1:5001"}},
                  "strong": {"etcd_endpoints": ["http://127.0.0.1:2379"], "timeout": "3s", "blocks_remote": "local"}})
    assert cfg.strong == {"branches": ["main"], "etcd_endpoints": ["http://127.0.0.1:2379"], "timeout": 3.0,  # type: ignore[attr-defined]
                          "ipfs_api": "http://127.0.0.1:5001"}
    assert _parse({}).strong is None  # type: ignore[attr-defined]


def test_strong_sites_move_the_branch_through_etcd(tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo) -> None:
    east, west = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    endpoints = json.dumps(etcd_cluster.endpoints)
    strong = f'[ipfs.local]\nurl = "{kubo.remote_url}"\n[strong]\netcd_endpoints = {endpoints}\n' \
             f'timeout = "5s"\nblocks_remote = "local"\n'
    for site, peer in ((east, west), (west, east)):
        site.config([peer], extra=strong, consistency_model='"strong"')
    # one round each: the agent writes the repository's strong key (peers need not answer)
    for site in (east, west):
        casync("agent", "--config", str(site.root / "casync.toml"), "--once", cwd=site.root, check=False)
        with Repository.open(site.repo) as repo:
            assert repo.config["strong"]["etcd_endpoints"] == etcd_cluster.endpoints
    head = east.commit({"release.txt": "v2\n"}, "east moves main through etcd")
    with Repository.open(east.repo) as repo:
        key = f"/casync/{repo.repo_id}/heads/main".encode()
    stored = EtcdClient(etcd_cluster.endpoints).get(key)
    assert stored.value is not None and json.loads(stored.value)["commit"] == head
    # west reads main from etcd (linearizable): east's acknowledged head, blocks from Kubo
    assert west.head() == head
    assert west.files()["release.txt"] == "v2\n"
