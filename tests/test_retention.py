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
    again = json.loads(cli("retention", "--keep-last", "2", "--keep-within", "3d", "--json").stdout)
    assert again["forgotten"] == [] and again["already_forgotten"] == 7


def test_retention_needs_a_policy_and_a_known_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wt"
    _history(root, 2, monkeypatch)
    r = Cli(root)("retention", ok=False)
    assert r.exit_code == 2 and "no retention policy" in r.stderr
    r = Cli(root)("retention", "--keep-last", "1", "--branch", "nope", ok=False)
    assert r.exit_code == 2 and "no branch 'nope'" in r.stderr
