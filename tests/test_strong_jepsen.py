"""Jepsen-style: three replicas commit to one strong branch at once against a real 3-member
etcd cluster (and a real Kubo node for the blocks), while the etcd leader is killed and one
replica is cut off.  The history is checked afterwards, as Jepsen checks its operation log:

- every acknowledged commit is in the final history, and the history is one chain (no
  merge was needed, no commit has two parents);
- no two acknowledged commits have the same parent (each won its own compare-and-swap);
- every commit in the history was acknowledged, or is one its replica kept as
  ``strong-pending/release`` (a move whose answer the partition swallowed);
- every read of the head (each operation's base) saw every move acknowledged before it
  started, or a later one (linearizable reads);
- operations during the election fail cleanly (typed errors only) and succeed again after it;
- the cut-off replica's attempts fail with the partition message, and it loses nothing.

The counts are printed to the terminal, also when the test passes (CI's log keeps them).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import StrongRefMoved, StrongUnavailable
from casync.model.cid import Cid, short
from casync.repo.strong import PENDING_PREFIX

from .etcd_fixture import CutProxy, EtcdCluster
from .kubo_fixture import Kubo
from .test_strong import replica, strong_config

OPERATIONS = 300
DEADLINE_S = 240.0  # a bound for a stuck run, not a speed claim


@dataclass
class Site:
    repo: Repository
    counts: Counter[str] = field(default_factory=Counter)
    acked: list[tuple[Cid, Cid | None, float]] = field(default_factory=list)  # commit, parent, when
    reads: list[tuple[float, Cid | None]] = field(default_factory=list)  # when the read started, what it saw
    partition_messages: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    longest_failure_s: float = 0.0


class Run:
    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self.attempts = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def take(self) -> int | None:
        with self.lock:
            if self.stop.is_set():
                return None
            self.attempts += 1
            return self.attempts

    def acked_total(self) -> int:
        return sum(len(s.acked) for s in self.sites)


def _worker(run: Run, site: Site) -> None:
    name = site.repo.replica
    stagger = random.Random(name)  # Jepsen staggers its clients: without it the slowest one (site-c,
    while (n := run.take()) is not None:  # behind its proxies) could lose every race, which is fair CAS
        time.sleep(stagger.uniform(0, 0.05))
        t0 = time.monotonic()
        try:
            with site.repo.transaction("release", f"{name} op {n}") as tx:
                site.reads.append((t0, tx.base))  # the linearizable read of the head, started at t0
                tx.write(f"{name}/{n}", f"{name} {n}\n".encode())
            assert tx.commit is not None
            site.acked.append((tx.commit, tx.base, time.monotonic()))
            site.counts["acknowledged"] += 1
        except StrongRefMoved:
            site.counts["lost swap"] += 1
        except StrongUnavailable as exc:
            site.counts["unavailable"] += 1
            site.partition_messages.append(exc.message)
            site.longest_failure_s = max(site.longest_failure_s, time.monotonic() - t0)
        except Exception as exc:  # recorded: the test fails on it
            site.unexpected.append(f"{type(exc).__name__}: {exc}")
            site.counts["unexpected"] += 1


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _history(repo: Repository, head: Cid) -> list[Cid]:
    chain, cid = [], head
    seen: set[Cid] = set()
    while True:
        assert cid not in seen
        seen.add(cid)
        chain.append(cid)
        parents = repo.load_commit(cid).parents
        assert len(parents) <= 1, f"commit {short(cid)} has {len(parents)} parents: the history is not one chain"
        if not parents:
            return chain
        cid = parents[0]


def test_three_replicas_one_strong_branch_through_a_leader_kill_and_a_partition(
        tmp_path: Path, etcd_cluster: EtcdCluster, kubo: Kubo, capsys: pytest.CaptureFixture[str]) -> None:
    proxies = [CutProxy(("127.0.0.1", m.client)) for m in etcd_cluster.members]
    direct = strong_config(etcd_cluster.endpoints, kubo, timeout=5.0)
    sites = [Site(replica(tmp_path, "site-a", direct)), Site(replica(tmp_path, "site-b", direct)),
             Site(replica(tmp_path, "site-c", strong_config([p.url for p in proxies], kubo, timeout=1.0)))]
    run = Run(sites)
    threads = [threading.Thread(target=_worker, args=(run, s), daemon=True) for s in sites]
    report: dict[str, object] = {}
    try:
        t_start = time.monotonic()
        for t in threads:
            t.start()
        # nemesis 1: kill the leader once a third of the operations ran
        _wait(lambda: run.attempts >= OPERATIONS // 3, DEADLINE_S, "a third of the operations")
        old_leader = etcd_cluster.leader()
        acked_before = run.acked_total()
        t_kill = time.monotonic()
        etcd_cluster.kill_member(old_leader)
        new_leader = etcd_cluster.leader()
        t_leader = time.monotonic()
        _wait(lambda: any(when > t_leader for s in sites for _c, _p, when in s.acked), 60,
              "an acknowledged commit after the election")
        t_resumed = min(when for s in sites for _c, _p, when in s.acked if when > t_leader)
        report["leader kill"] = (f"member {old_leader} killed after {acked_before} acks; new leader {new_leader} "
                                 f"found {t_leader - t_kill:.2f} s later; first ack after it "
                                 f"{t_resumed - t_kill:.2f} s after the kill")
        etcd_cluster.start_member(old_leader)  # back as a follower, same data
        # nemesis 2: cut site-c off from every etcd member
        _wait(lambda: run.attempts >= 2 * OPERATIONS // 3, DEADLINE_S, "two thirds of the operations")
        c = sites[2]
        failed_before = c.counts["unavailable"]
        acked_c_before = len(c.acked)
        for p in proxies:
            p.cut()
        _wait(lambda: c.counts["unavailable"] >= failed_before + 3, 60, "site-c's attempts to fail")
        acked_c_during = len(c.acked) - acked_c_before
        for p in proxies:
            p.heal()
        t_heal = time.monotonic()
        _wait(lambda: any(when > t_heal for _c, _p, when in c.acked) and run.attempts >= OPERATIONS, DEADLINE_S,
              f"{OPERATIONS} operations and an acknowledged commit of site-c after the partition healed")
        run.stop.set()
        report["partition"] = (f"site-c cut off: {c.counts['unavailable'] - failed_before} attempts failed "
                               f"(longest {c.longest_failure_s:.2f} s, timeout 1 s), "
                               f"{acked_c_during} acknowledged while cut (at most the one in flight)")
        for t in threads:
            t.join(timeout=DEADLINE_S)
        assert not any(t.is_alive() for t in threads), "a replica is stuck"
        report["wall seconds"] = round(time.monotonic() - t_start, 1)
        etcd_cluster.wait_healthy()

        # --- the checks -------------------------------------------------------------------
        for s in sites:
            assert not s.unexpected, f"{s.repo.replica}: untyped failures: {s.unexpected[:3]}"
        head = sites[0].repo.resolve("release")
        history = _history(sites[0].repo, head)
        in_history = set(history)
        acked = [(cid, parent) for s in sites for cid, parent, _w in s.acked]
        lost = [short(cid) for cid, _p in acked if cid not in in_history]
        assert not lost, f"{len(lost)} acknowledged commits missing from the history, e.g. {lost[:5]}"
        parents = Counter(parent for _cid, parent in acked)
        shared = {short(p) if p else None: n for p, n in parents.items() if n > 1}
        assert not shared, f"acknowledged commits sharing a parent: {shared}"
        # every read saw every move acknowledged before it started (or a later one): linearizable reads
        position = {cid: i for i, cid in enumerate(reversed(history))}
        acks = sorted((when, position[cid]) for s in sites for cid, _p, when in s.acked)
        stale = []
        for s in sites:
            for started, base in s.reads:
                done = [pos for when, pos in acks if when < started]
                if done and (base is None or position[base] < max(done)):
                    stale.append((s.repo.replica, short(base) if base else None))
        assert not stale, f"{len(stale)} reads missed an acknowledged move, e.g. {stale[:3]}"
        reads = sum(len(s.reads) for s in sites)
        for s in sites:  # linearizable: every replica reads the same head
            assert s.repo.resolve("release") == head
        kept = {e.new for s in sites for e in s.repo.refs.reflog(f"{PENDING_PREFIX}release") if e.new}
        unexplained = [short(cid) for cid in in_history - {cid for cid, _p in acked} - kept]
        assert not unexplained, f"commits in the history nobody acknowledged or kept: {unexplained}"
        assert c.partition_messages and all("cut off from the etcd majority" in m for m in c.partition_messages)
        assert acked_c_before > 0, "site-c never won a swap before the partition"
        total = Counter[str]()
        for s in sites:
            total.update(s.counts)
        assert sum(total.values()) >= OPERATIONS
        assert total["acknowledged"] == len(acked) and len(history) >= len(acked)
        report["history"] = (f"{len(history)} commits in one chain; {len(acked)} acknowledged, "
                             f"{len(in_history & kept)} more were kept as pending and did take effect; "
                             f"{reads} reads, none missed an acknowledged move")
        report["per site"] = {s.repo.replica: dict(s.counts) for s in sites}
        report["unavailable outside the partition"] = [m for s in sites[:2] for m in s.partition_messages]
        report["total"] = dict(total)
    finally:
        run.stop.set()
        for t in threads:
            t.join(timeout=30)
        for s in sites:
            s.repo.close()
        for p in proxies:
            p.close()
        with capsys.disabled():  # in CI's log even when the test passes
            print("\njepsen-style strong-branch run:")
            for k, v in report.items():
                print(f"  {k}: {v}")
