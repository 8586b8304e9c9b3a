"""The typed configuration (casync.settings): every key read through a checked accessor, so
a value stored before the checks existed (or by hand) is a clear error, never a traceback;
one writer of ``remotes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from casync import Repository
from casync.errors import UsageError
from casync.settings import KEYS, KNOWN_KEYS, RemoteEntry, author, merge_rules, remotes, with_remote
from casync.transports.config import add_remote, list_remotes, remove_remote, set_remote, write_remote

from .conftest import Cli, write


def _stored(tmp_path: Path, key: str, value: Any) -> Cli:
    """A repository with ``key = value`` stored as an older casync (or a hand edit) could."""
    Cli(tmp_path)("init", "wt", "--replica", "site-a")
    cli = Cli(tmp_path / "wt")
    write(cli.cwd, "f.txt", "x\n")
    cli("commit", "-m", "x")
    with Repository.open(cli.cwd) as repo:
        repo.store.set_config({key: value})
    return cli


@pytest.mark.parametrize(("value", "args", "named"), [
    ({"hub": {"url": 5}}, ("sync", "hub"), "remotes.hub"),  # was: AttributeError on url.startswith
    ({"hub": {"url": 5}}, ("remote", "-v"), "remotes.hub"),
    (["hub"], ("sync",), "config remotes = [\"hub\"]"),  # was: silently no remotes
    ({"hub": {"url": "/x", "token_file": 7}}, ("sync", "hub"), "remotes.hub.token_file"),
])
def test_a_bad_stored_remotes_value_is_an_error_naming_it(tmp_path: Path, value: Any, args: tuple[str, ...],
                                                          named: str) -> None:
    cli = _stored(tmp_path, "remotes", value)
    r = cli(*args, ok=False)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and named in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "casync config remotes --unset" in r.stderr  # how to repair it


def test_a_bad_stored_author_is_an_error_naming_it(tmp_path: Path) -> None:
    cli = _stored(tmp_path, "author", 42)  # was: the number silently ignored
    write(cli.cwd, "f.txt", "y\n")
    r = cli("commit", "-m", "y", ok=False)
    assert r.exit_code == 2 and "config author = 42" in r.stderr and "Traceback" not in r.stderr


def test_every_known_key_has_a_type_default_and_check() -> None:
    assert set(KEYS) <= set(KNOWN_KEYS)
    for key in KEYS.values():
        assert key.kind and key.check is not None
        key.check(key.default) if key.default is not None else None  # the default itself is valid
    assert author({}) is None and remotes({}) == {} and merge_rules({}).default == "lww"


def test_merge_rules_typed_and_overridden() -> None:
    cfg = {"merge": {"policy": "siblings", "rules": {"*.json": "json"}, "skew_tolerance_ms": 5}}
    rules = merge_rules(cfg)
    assert (rules.default, rules.rules, rules.skew_tolerance_ms) == ("siblings", (("*.json", "json"),), 5)
    forced = merge_rules(cfg, "ours")
    assert (forced.default, forced.rules, forced.skew_tolerance_ms) == ("ours", (), 5)
    with pytest.raises(UsageError, match="unknown merge policy"):
        merge_rules(cfg, "nope")


def test_with_remote_keeps_order_checks_and_unsets_when_empty() -> None:
    cfg: dict[str, Any] = {"remotes": {"b": {"url": "/b"}, "a": {"url": "/a", "gateway": None}}}
    changed = with_remote(cfg, "b", RemoteEntry("/b2", token_file="t"))
    assert changed is not None and list(changed) == ["b", "a"]
    assert changed["b"] == {"url": "/b2", "gateway": None, "token_file": "t"}
    with pytest.raises(UsageError, match=r"remotes\.c"):
        with_remote(cfg, "c", RemoteEntry(""))
    assert with_remote({"remotes": {"a": {"url": "/a"}}}, "a", None) is None


def test_the_remote_functions_write_through_the_one_writer(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", replica="site-a")
    try:
        add_remote(repo, "origin", "ipfs+http://127.0.0.1:5001")
        add_remote(repo, "peer", str(tmp_path / "other"))
        set_remote(repo, "peer", gateway="http://127.0.0.1:8080")
        write_remote(repo, "peer", RemoteEntry(str(tmp_path / "other"), "http://127.0.0.1:8080", "tok"))
        assert remotes(repo.config)["peer"].token_file == "tok"
        assert [r.name for r in list_remotes(repo)] == ["origin", "peer"]
        remove_remote(repo, "peer")
        remove_remote(repo, "origin")
        assert "remotes" not in repo.config
    finally:
        repo.close()
