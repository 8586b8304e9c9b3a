"""Retention: the pure policy on synthetic histories with known times, and forgetting in a
real repository (heads and tags kept, history whole, gc reclaiming the forgotten trees)."""

from __future__ import annotations

import calendar
import json
import os
import time
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import UsageError
from casync.history.retention import Policy, Snapshot, decide, parse_duration
from casync.model.cid import cid_str

from .conftest import Cli
from .kubo_node import KuboError
from .test_gc import assert_packs_consistent

DAY = 86_400_000
HOUR = 3_600_000


def _at(y: int, mo: int, d: int, h: int = 12) -> int:
    return calendar.timegm((y, mo, d, h, 0, 0)) * 1000


def _kept(snaps: list[Snapshot], policy: Policy, always: frozenset[object] = frozenset()) -> list[object]:
    return [s.id for s in decide(snaps, policy, always).keep]  # type: ignore[arg-type]


def test_keep_last_keeps_the_newest_whatever_the_input_order() -> None:
    snaps = [Snapshot(f"c{i}", _at(2026, 11, 1) + i * HOUR) for i in range(10)]
    assert _kept(list(reversed(snaps)), Policy(keep_last=3)) == ["c9", "c8", "c7"]
    assert _kept(snaps, Policy(keep_last=30)) == [f"c{i}" for i in range(9, -1, -1)]


def test_keep_daily_counts_only_days_that_have_a_snapshot_and_keeps_each_days_newest() -> None:
    snaps = [Snapshot("mon-a", _at(2026, 11, 2, 8)), Snapshot("mon-b", _at(2026, 11, 2, 20)),
             Snapshot("tue", _at(2026, 11, 3)),
             # no snapshot on Wednesday to Friday
             Snapshot("sat-a", _at(2026, 11, 7, 1)), Snapshot("sat-b", _at(2026, 11, 7, 23)),
             Snapshot("sun", _at(2026, 11, 8))]
    assert _kept(snaps, Policy(keep_daily=3)) == ["sun", "sat-b", "tue"]
    d = decide(snaps, Policy(keep_daily=3))
    assert [s.id for s in d.forget] == ["sat-a", "mon-b", "mon-a"]


def test_keep_weekly_uses_iso_weeks_in_utc() -> None:
    # 2026-11-08 is a Sunday, 2026-11-09 a Monday: two ISO weeks an hour apart
    snaps = [Snapshot("sun-late", _at(2026, 11, 8, 23)), Snapshot("mon-early", _at(2026, 11, 9, 0)),
             Snapshot("mon-noon", _at(2026, 11, 9, 12)), Snapshot("older", _at(2026, 10, 20)),
             Snapshot("oldest", _at(2026, 10, 1))]
    assert _kept(snaps, Policy(keep_weekly=2)) == ["mon-noon", "sun-late"]
    assert _kept(snaps, Policy(keep_weekly=10)) == ["mon-noon", "sun-late", "older", "oldest"]
    assert _kept(snaps, Policy(keep_monthly=2)) == ["mon-noon", "older"]


def test_keep_within_is_relative_to_the_newest_snapshot_not_to_now() -> None:
    newest = _at(2020, 1, 10)
    snaps = [Snapshot(i, newest - i * DAY) for i in range(8)]
    assert _kept(snaps, Policy(keep_within_ms=parse_duration("3d"))) == [0, 1, 2, 3]


def test_policies_combine_as_a_union_with_reasons_and_refs_are_always_kept() -> None:
    newest = _at(2026, 6, 30)
    snaps = [Snapshot(f"d{i}", newest - i * DAY) for i in range(40)]
    d = decide(snaps, Policy(keep_last=2, keep_weekly=3, keep_within_ms=4 * DAY), frozenset({"d39"}))
    kept = [s.id for s in d.keep]
    assert kept[:5] == ["d0", "d1", "d2", "d3", "d4"]
    assert "d39" in kept and d.reasons["d39"] == ["ref"]
    assert d.reasons["d0"] == ["last", "within", "weekly"]
    assert len(kept) + len(d.forget) == 40
    weekly = [s for s in kept if "weekly" in d.reasons[s]]
    assert len(weekly) == 3


def test_parse_duration() -> None:
    assert parse_duration("2w") == 14 * DAY
    assert parse_duration("1d12h") == 36 * HOUR
    assert parse_duration("90m") == 90 * 60_000
    assert parse_duration("now") == 0
    for bad in ("", "2", "w", "2x", "1d 2h", "-1d", "2weeks"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def _history(root: Path, days: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One commit a day for ``days`` days ending yesterday, each replacing a 400 KB file."""
    start = time.time() - days * 86_400
    commits = []
    with Repository.init(root, replica="a", bare=True) as repo:
        for i in range(days):
            monkeypatch.setattr(time, "time", lambda i=i: start + i * 86_400)
            with repo.transaction(branch="main", message=f"day {i}") as tx:
                tx.write("data.bin", os.urandom(400_000))
                tx.write("log.txt", f"day {i}\n".encode())
            assert tx.commit_cid is not None
            commits.append(tx.commit_cid)
    monkeypatch.undo()
    return commits


def test_retention_forgets_old_trees_keeps_heads_tags_and_history_and_gc_reclaims(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wt"
    commits = _history(root, 12, monkeypatch)
    cli = Cli(root)
    cli("tag", "v1", commits[1])
    before = sum(p.stat().st_size for p in (root / ".casync" / "packs").glob("*.pack"))
    dry = json.loads(cli("retention", "--keep-last", "2", "--keep-within", "3d", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["gc"] is None
    decided = dry["branches"]["main"]
    assert [k["commit"] for k in decided["keep"]] == [*reversed(commits[8:]), commits[1]]
    done = json.loads(cli("retention", "--keep-last", "2", "--keep-within", "3d", "--json").stdout)
    assert done["forgotten"] == [c for c in reversed(commits) if c not in (*commits[8:], commits[1])]
    after = sum(p.stat().st_size for p in (root / ".casync" / "packs").glob("*.pack"))
    print(f"retention: pack bytes {before} -> {after}")
    assert done["gc"]["reclaimed_bytes"] == before - after >= 7 * 400_000
    with Repository.open(root) as repo:
        assert [cid_str(e.cid) for e in repo.log("main")] == list(reversed(commits))  # history is whole
        for c in (*commits[8:], commits[1]):
            assert repo.read("log.txt", c) == f"day {commits.index(c)}\n".encode()
        assert repo.fsck().ok
    assert_packs_consistent(root)
    # what a user sees of forgotten commits: refused by name; history of a path skips them
    r = cli("show", commits[5], ok=False)
    assert r.exit_code == 1 and "forgotten by 'casync retention'" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(cli("show", commits[8], "--json").stdout)["changes"] is None  # its parent was forgotten
    assert json.loads(cli("show", commits[9], "--json").stdout)["changes"] == [
        {"path": "data.bin", "status": "modified"}, {"path": "log.txt", "status": "modified"}]
    logged = [e["cid"] for e in json.loads(cli("log", "--json", "--", "log.txt").stdout)]
    assert logged == [*reversed(commits[8:]), commits[1]]
    again = json.loads(cli("retention", "--keep-last", "2", "--keep-within", "3d", "--json").stdout)
    assert again["forgotten"] == [] and again["already_forgotten"] == 7


def test_retention_needs_a_policy_and_a_known_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wt"
    _history(root, 2, monkeypatch)
    r = Cli(root)("retention", ok=False)
    assert r.exit_code == 2 and "no retention policy" in r.stderr
    r = Cli(root)("retention", "--keep-last", "1", "--branch", "nope", ok=False)
    assert r.exit_code == 2 and "no branch 'nope'" in r.stderr


@pytest.mark.kubo
def test_retention_unpins_forgotten_trees_on_kubo_and_push_keeps_working(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kubo_factory) -> None:  # type: ignore[no-untyped-def]
    kubo = kubo_factory()
    root = tmp_path / "wt"
    commits = _history(root, 6, monkeypatch)
    cli = Cli(root)
    cli("remote", "add", "origin", kubo.remote_url)
    cli("push", "origin", "main")
    with Repository.open(root) as repo:
        files = {c: repo.flat_tree(repo.resolve(c))["data.bin"].cid for c in commits}
        trees = {c: repo.tree_of(repo.resolve(c)) for c in commits}

    def pinned(cid: bytes) -> bool:
        try:
            kubo.ipfs("pin", "ls", "--offline", cid_str(cid))
        except KuboError as exc:  # the ipfs CLI exits non-zero: "is not pinned"
            assert "not pinned" in str(exc), exc
            return False
        return True

    def held(cid: bytes) -> bool:
        try:
            kubo.ipfs("block", "stat", "--offline", cid_str(cid), timeout=30)
        except KuboError:  # "block was not found locally (offline)"
            return False
        return True

    assert all(pinned(files[c]) for c in commits)  # the head's recursive pin holds every tree
    out = json.loads(cli("retention", "--keep-last", "2", "--json").stdout)
    forgotten, kept = commits[:4], commits[4:]
    assert set(out["forgotten"]) == set(forgotten)
    [moved] = out["remotes"]
    assert moved["remote"] == "origin" and moved["commits_pinned"] == 6 and moved["trees_pinned"] == 2
    assert commits[-1] in moved["unpinned"]  # the recursive head pin, replaced by the layout
    for c in forgotten:
        assert not pinned(files[c]) and not pinned(trees[c]), c
    for c in kept:
        assert pinned(files[c]) and pinned(trees[c]), c
    kubo.ipfs("repo", "gc", timeout=300)
    for c in forgotten:
        assert not held(files[c]), c  # Kubo's own GC dropped what no pin holds
    with Repository.open(root) as repo:
        for c in commits:
            assert held(repo.resolve(c)), c  # every commit block stays (direct pins)
    for c in kept:
        assert held(files[c]), c
    # a push after retention pins in the retained layout and does not need the forgotten trees
    with Repository.open(root) as repo, repo.transaction(branch="main", message="after") as tx:
        tx.write("data.bin", os.urandom(100_000))
    cli("push", "origin", "main")
    with Repository.open(root) as repo:
        head = repo.refs.get_ref("heads/main")
        assert head is not None
        new_file = repo.flat_tree(head)["data.bin"].cid
        assert pinned(head) and pinned(new_file) and pinned(repo.tree_of(head))
    assert json.loads(cli("push", "origin", "main", "--json").stdout)["up_to_date"]
    with Repository.open(root) as repo, repo.transaction(branch="main", message="after, measured") as tx:
        tx.write("data.bin", os.urandom(100_000))
    measured = json.loads(cli("push", "origin", "main", "--json").stdout)  # --json measures the minimum
    assert not measured["up_to_date"] and measured["blocks_sent"] >= 3
