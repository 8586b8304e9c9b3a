"""Tags through an IPFS remote: published in the replica's head record, applied on fetch,
never moving a tag the receiver has (a differing one is kept per publishing replica)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Cli, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo


def _tags(cli: Cli) -> dict[str, str | None]:
    return {t["name"]: t["commit"] for t in json.loads(cli("tag", "--json").stdout)}


def test_tags_travel_through_head_records(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "a", "--replica", "tag-a")
    a = Cli(tmp_path / "a")
    write(a.cwd, "x.txt", "1\n")
    a("commit", "-m", "one")
    a("tag", "v1")
    a("remote", "add", "origin", kubo.remote_url)
    pushed = json.loads(a("push", "--json").stdout)
    assert pushed["tags"] == {"v1": _tags(a)["v1"]}
    repo_id = a("config", "repository_id").stdout.strip()
    Cli(tmp_path)("clone", f"{kubo.remote_url}/{repo_id}", "b", "--replica", "tag-b")
    b = Cli(tmp_path / "b")
    assert _tags(b) == _tags(a)
    # a new tag on an unchanged branch is published too (the record is written again)
    a("tag", "v1-final")
    again = json.loads(a("push", "--json").stdout)
    assert not again["up_to_date"] and set(again["tags"]) == {"v1", "v1-final"}
    # b tags another commit v2; a has its own v2: neither moves, b's is kept per replica
    write(b.cwd, "x.txt", "2\n")
    b_commit = b("commit", "-m", "b").stdout.strip()
    b("tag", "v2")
    b("push")
    a("tag", "v2")
    fetched = a("fetch")
    assert "warning: tag v2 differs" in fetched.stderr and "hint:" in fetched.stderr
    assert _tags(a)["v2"] != b_commit
    listing = {t["name"]: t for t in json.loads(a("tag", "--json").stdout)}
    assert listing["v2"]["conflicts"] == [{"source": "origin@tag-b", "commit": b_commit}]
    assert a("cat", "tag-conflicts/origin@tag-b/v2:x.txt").stdout == "2\n"
    b("fetch")
    assert _tags(b)["v1-final"] == _tags(a)["v1-final"]
