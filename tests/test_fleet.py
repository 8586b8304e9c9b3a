"""The fleet: three sites in two regions, each with its agent on loopback (the hub also pushes to
a real Kubo node).  Writes on every side, a partition (one agent stopped), more writes on both
sides of it, then the heal: every site converges within max_sync_delay to the same tree (LWW),
sync_lag_seconds and sync_failures_total move during the partition and recover after it, and
no acknowledged write (a commit that returned) is lost."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.agents import AgentProc, Site, casync, make_sites, sample, scrape
from tests.kubo_fixture import Kubo

pytestmark = pytest.mark.kubo

MAX_SYNC_DELAY = 20.0
REGIONS = """
[conflict_resolution]
default = "last_write_wins"

[[regions]]
name = "us-east"
priority = 1
sync_peers = ["us-west"]

[[regions]]
name = "us-west"
priority = 2
sync_peers = ["us-east"]
"""


def _history(site: Site) -> set[str]:
    out = casync("-C", str(site.repo), "log", "-n", "100000", "--json", "main").stdout
    return {e["cid"] for e in json.loads(out)}


def _converged(sites: list[Site]) -> bool:
    heads = {s.head() for s in sites}
    return len(heads) == 1 and None not in heads


def _wait_converged(agents: list[AgentProc], sites: list[Site], what: str) -> float:
    t0 = time.monotonic()
    agents[0].wait_for(lambda: _converged(sites), MAX_SYNC_DELAY, f"convergence ({what})")
    return time.monotonic() - t0


def _ts(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def test_three_sites_two_regions_partition_and_heal(tmp_path: Path, kubo: Kubo) -> None:
    hub, east2, west = sites = make_sites(tmp_path, ("us-east-1", "us-east"), ("us-east-2", "us-east"),
                                          ("us-west-1", "us-west"))
    delay = f'"{MAX_SYNC_DELAY:g}s"'
    node = f'[ipfs.local]\nurl = "{kubo.remote_url}"'
    configs = {s.name: s.config([p for p in sites if p is not s], regions=REGIONS, max_sync_delay=delay,
                                extra=node if s is hub else "") for s in sites}
    acknowledged: list[str] = []
    agents = {s.name: AgentProc(s, configs[s.name]) for s in sites}
    try:
        for a in agents.values():
            a.wait_started()
        # writes on every side, one file each and one written everywhere (last writer: west)
        for s in sites:
            acknowledged.append(s.commit({f"{s.name}.txt": f"{s.name} 1\n", "shared.txt": f"{s.name}\n"},
                                         f"{s.name} writes"))
            time.sleep(0.05)  # distinct HLC times: LWW has one answer
        took = _wait_converged(list(agents.values()), sites, "first writes")
        assert took < MAX_SYNC_DELAY
        files = hub.files()
        assert files["shared.txt"] == "us-west-1\n"  # the last write wins, on every site
        assert all(s.files() == files for s in sites)

        # partition: west's agent stops; both sides write on
        before = scrape(hub)
        failures_before = sum(v for (n, labels), v in before.items()
                              if n == "sync_failures_total" and ("peer", "us-west-1") in labels)
        assert agents["us-west-1"].terminate(30) == 0
        acknowledged.append(hub.commit({"us-east-1.txt": "us-east-1 2\n", "shared.txt": "us-east-1 again\n"},
                                       "hub during the partition"))
        acknowledged.append(east2.commit({"us-east-2.txt": "us-east-2 2\n"}, "east-2 during the partition"))
        time.sleep(0.05)
        acknowledged.append(west.commit({"us-west-1.txt": "us-west-1 2\n", "shared.txt": "west, cut off\n"},
                                        "west during the partition"))
        hub_agent = agents["us-east-1"]
        def west_failures(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
            return sum(v for (n, labels), v in scraped.items()
                       if n == "sync_failures_total" and ("peer", "us-west-1") in labels)

        # three failures counted since the partition began (any before it, e.g. a lost push race, aside)
        hub_agent.wait_for(lambda: west_failures(scrape(hub)) >= failures_before + 3, 30,
                           "failures while partitioned")
        during = scrape(hub)
        failures_during = west_failures(during)
        assert failures_during >= failures_before + 3
        assert sample(during, "sync_failures_total", peer="us-west-1", reason="unreachable") >= 3  # type: ignore[operator]
        lag_during = sample(during, "sync_lag_seconds", source="us-west-1", target="us-east-1")
        lag_east = sample(during, "sync_lag_seconds", source="us-east-2", target="us-east-1")
        assert lag_during is not None and lag_east is not None and lag_during > lag_east
        assert not _converged(sites)
        hub_agent.wait_for(lambda: hub.head() == east2.head(), MAX_SYNC_DELAY, "the east side converging")

        # heal
        agents["us-west-1"] = AgentProc(west, configs["us-west-1"])
        agents["us-west-1"].wait_started()
        took = _wait_converged(list(agents.values()), sites, "after the heal")
        assert took < MAX_SYNC_DELAY
        files = hub.files()
        assert all(s.files() == files for s in sites)
        assert files["shared.txt"] == "west, cut off\n"  # written last, though cut off: LWW by HLC time
        assert files["us-east-2.txt"] == "us-east-2 2\n" and files["us-west-1.txt"] == "us-west-1 2\n"
        for s in sites:  # no acknowledged write lost: every commit is in every site's history
            assert set(acknowledged) <= _history(s), s.name
        healed = time.time()
        hub_agent.wait_for(lambda: any(e["peer"] == "us-west-1" and _ts(e) > healed
                                       for e in hub_agent.events("synced")), 30, "a sync after the heal")
        after = scrape(hub)
        lag_after = sample(after, "sync_lag_seconds", source="us-west-1", target="us-east-1")
        assert lag_after is not None and lag_after < lag_during
        assert sample(after, "sync_peer_overdue", peer="us-west-1") == 0
        assert sample(after, "last_successful_sync_timestamp_seconds", peer="us-west-1") >= healed  # type: ignore[operator]

        # the hub's IPFS node has the converged head (a push that started after convergence)
        final = hub.head()
        hub_agent.wait_for(lambda: len([e for e in hub_agent.events("synced")
                                        if e["peer"] == "local" and _ts(e) > healed]) >= 2, 30, "an IPFS push")
        repo_id = casync("-C", str(hub.repo), "config", "repository_id").stdout.strip()
        casync("clone", f"{kubo.remote_url}/{repo_id}", str(tmp_path / "reader"), "--replica", "reader-1")
        got = json.loads(casync("-C", str(tmp_path / "reader"), "log", "-n", "1", "--json").stdout)[0]["cid"]
        assert got == final
    finally:
        for a in agents.values():
            a.kill()
    for s in sites:
        assert json.loads(casync("-C", str(s.repo), "fsck", "--json").stdout)["ok"] is True
