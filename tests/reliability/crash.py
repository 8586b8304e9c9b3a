"""The crash harness: run one casync command in a child process, SIGKILL it at a seeded
random moment, then check what it left (issue 14, item 1).

A :class:`Scenario` builds its world once (a template directory), then every run copies
the template, starts the command, kills it after a delay drawn from the command's own
measured duration, and checks, with the store read in this process:

- every repository there is fsck-clean (every ref names a complete DAG), or is absent
  where the command was creating it;
- every commit acknowledged before the kill is readable with the right bytes;
- each working-tree file holds its old or its new content, and no tree any ref names holds
  a casync temporary name;
- the same command, run again, finishes, and leaves the state the scenario expects.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from casync import Repository
from casync.model.cid import Cid, cid_str
from casync.model.names import REPO_DIR, TEMP_NAME

__all__ = ["CASYNC", "Case", "Outcome", "Scenario", "Tally", "casync", "check_repo", "run_kills"]

CASYNC = [sys.executable, "-m", "casync"]


def casync(cwd: Path, *args: str, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CASYNC, "-C", str(cwd), *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})
    if check and done.returncode != 0:
        raise AssertionError(f"casync {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


Files = dict[str, bytes]


@dataclass
class Case:
    """One run's world (inside the copied directory) and what to check in it."""

    argv: list[str]  # casync arguments (after -C cwd)
    cwd: Path
    repos: list[Path]  # repositories that must stay fsck-clean
    creating: set[Path] = field(default_factory=set)  # repos the command makes: may be absent after a kill
    acknowledged: dict[Path, dict[Cid, Files]] = field(default_factory=dict)  # repo -> commit -> its files
    worktree: tuple[Path, Files, Files] | None = None  # (root, old files, new files)
    env: dict[str, str] = field(default_factory=dict)
    rerun_ok: Callable[[subprocess.CompletedProcess[str]], bool] = lambda done: done.returncode == 0
    finished: Callable[[], None] = lambda: None  # the state after the re-run
    stop: Callable[[], None] = lambda: None  # stops what the case started (servers)


@dataclass
class Scenario:
    name: str
    build: Callable[[Path], None]  # the template, built once
    case: Callable[[Path], Case]  # a case over a copy of the template


@dataclass
class Outcome:
    killed: bool
    delay: float


@dataclass
class Tally:
    runs: int = 0
    kills: int = 0
    finished_before_kill: int = 0
    per_command: dict[str, int] = field(default_factory=dict)


def _tree_files(repo: Repository, commit: Cid) -> Files:
    return {p: repo.read(p, rev=cid_str(commit)) for p, e in repo.flat_tree(commit).items() if e.kind == "file"}


def check_repo(root: Path, acknowledged: dict[Cid, Files]) -> None:
    """fsck clean, no casync temporary name in any ref's tree, acknowledged commits intact."""
    with Repository.open(root, search_parents=False) as repo:
        report = repo.fsck()
        assert report.ok, (root, report.to_json())
        for ref, cid in repo.refs.list_refs().items():
            bad = [p for p in repo.flat_tree(cid) if TEMP_NAME.fullmatch(p.rpartition("/")[2])]
            assert not bad, (root, ref, bad)
        for cid, files in acknowledged.items():
            assert _tree_files(repo, cid) == files, (root, cid_str(cid))


def _check_worktree(root: Path, old: Files, new: Files) -> None:
    for path in set(old) | set(new):
        try:
            now: bytes | None = (root / path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            now = None
        assert now in (old.get(path), new.get(path)), (root, path, "neither the old nor the new content")


def _check_after_kill(case: Case) -> None:
    for root in case.repos:
        if root in case.creating and not (root / REPO_DIR).exists():
            assert not root.exists() or all(TEMP_NAME.fullmatch(n) for n in os.listdir(root)), \
                (root, os.listdir(root))
            continue
        if root in case.creating and _pending_clone(root):
            continue  # an interrupted clone: checked once the re-run resumed it
        check_repo(root, case.acknowledged.get(root, {}))
    if case.worktree is not None:
        _check_worktree(*case.worktree)


def _pending_clone(root: Path) -> bool:
    with Repository.open(root, search_parents=False) as repo:
        return repo.store.get("meta", b"clone_pending") is not None


def _kill_at(case: Case, delay: float) -> Outcome:
    proc = subprocess.Popen([*CASYNC, "-C", str(case.cwd), *case.argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **case.env}, start_new_session=True)
    try:
        proc.wait(delay)
        return Outcome(False, delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        return Outcome(True, delay)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _measure(scenario: Scenario, template: Path, work: Path) -> float:
    """How long the command takes uninterrupted (the kill delays are drawn from it)."""
    run_dir = work / "measure"
    shutil.copytree(template, run_dir, symlinks=True)
    case = scenario.case(run_dir)
    try:
        start = time.monotonic()
        done = casync(case.cwd, *case.argv, env=case.env, check=False)
        took = time.monotonic() - start
        assert case.rerun_ok(done), (scenario.name, done.returncode, done.stderr)
        case.finished()
    finally:
        case.stop()
    shutil.rmtree(run_dir)
    return took


def run_kills(scenario: Scenario, work: Path, kills: int, rng: random.Random, tally: Tally) -> None:
    """``kills`` SIGKILLed runs of ``scenario`` (runs that finished first do not count)."""
    template = work / "template"
    scenario.build(template)
    took = _measure(scenario, template, work)
    done_kills = attempts = 0
    while done_kills < kills:
        attempts += 1
        assert attempts <= kills * 4, f"{scenario.name}: the command kept finishing before the kill"
        run_dir = work / f"run{attempts}"
        shutil.copytree(template, run_dir, symlinks=True)
        case = scenario.case(run_dir)
        try:
            outcome = _kill_at(case, rng.uniform(0.05, 1.0) * took)
            tally.runs += 1
            if outcome.killed:
                done_kills += 1
                tally.kills += 1
                tally.per_command[scenario.name] = tally.per_command.get(scenario.name, 0) + 1
                _check_after_kill(case)
            else:
                tally.finished_before_kill += 1
            again = casync(case.cwd, *case.argv, env=case.env, check=False)
            assert case.rerun_ok(again), (scenario.name, outcome, again.returncode, again.stdout, again.stderr)
            case.finished()
            _check_after_kill(case)
        except AssertionError as exc:
            raise AssertionError(f"{scenario.name}, run {attempts} (seeded): {exc}") from None
        finally:
            case.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
