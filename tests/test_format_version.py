"""The repository format policy (docs/design.md §7.4): a casync refuses a repository whose
config ``format`` is newer than it knows, with one error naming both versions, and writes
nothing to it; a repository of its own format opens as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lmdb
import pytest

from casync.errors import UnsupportedFormat
from casync.repo.repository import Repository
from casync.store.lmdb import FORMAT, LmdbStore
from tests.conftest import Cli, write


def _set_format_raw(wt: Path, value: object) -> None:
    """Write config ``format`` with py-lmdb directly, as another casync version would."""
    env = lmdb.open(str(wt / ".casync" / "db"), max_dbs=16, subdir=True, create=False)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"format", json.dumps(value).encode(), db=env.open_db(b"config", txn=txn))
    finally:
        env.close()


def _snapshot(wt: Path) -> dict[str, str]:
    """Digest of every repository file but LMDB's reader table (lock.mdb), which readers
    use by design and which holds no repository data."""
    root = wt / ".casync"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture
def newer(cli: Cli) -> Cli:
    cli("init", "--replica", "fmt-a")
    write(cli.cwd, "a.txt", "one\n")
    cli("commit", "-m", "one")
    _set_format_raw(cli.cwd, FORMAT + 1)
    return cli


def test_init_writes_the_current_format(repo: Repository) -> None:
    assert repo.config["format"] == FORMAT == 1


@pytest.mark.parametrize("args", [("status",), ("log",), ("commit", "-m", "two"), ("branch", "x"),
                                  ("config", "author", "someone")])
def test_a_newer_format_is_refused_and_nothing_written(newer: Cli, args: tuple[str, ...]) -> None:
    write(newer.cwd, "b.txt", "two\n")
    before = _snapshot(newer.cwd)
    r = newer(*args, ok=False)
    assert r.exit_code == 1, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: ") and f"format {FORMAT + 1}" in lines[0], r.stderr
    assert f"format {FORMAT})" in lines[0], r.stderr
    assert lines[1].startswith("hint: ") and "upgrade casync" in lines[1], r.stderr
    assert "Traceback" not in r.stderr
    assert _snapshot(newer.cwd) == before


def test_the_api_refuses_a_newer_format(newer: Cli) -> None:
    with pytest.raises(UnsupportedFormat, match=f"format {FORMAT + 1}"):
        Repository.open(newer.cwd)
    with pytest.raises(UnsupportedFormat):
        LmdbStore(newer.cwd / ".casync")
    # the refused open released the environment: once the format is back, it opens
    _set_format_raw(newer.cwd, FORMAT)
    with Repository.open(newer.cwd) as repo:
        assert repo.head() is not None


@pytest.mark.parametrize("value", ["1", 0, True, None, 1.5])
def test_an_unreadable_format_is_refused(cli: Cli, value: object) -> None:
    cli("init")
    _set_format_raw(cli.cwd, value)
    r = cli("status", ok=False)
    assert r.exit_code == 1 and "unreadable format" in r.stderr and "hint: " in r.stderr, r.stderr
