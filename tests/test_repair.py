"""`casync fsck --repair REMOTE`: a flipped byte or a lost block is replaced by a verified copy
from a peer (`casync serve`), a path, or a Kubo node; the store keeps the good copy across reopen."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import CorruptBlock
from casync.model.cid import RAW, Cid, cid_codec, cid_str

from .conftest import Cli, flip_pack_byte, serving, write
from .kubo_fixture import Kubo

TOKEN = "repair token"


def _leaf(repo_root: Path, path: str) -> Cid:
    with Repository.open(repo_root) as repo:
        cid = repo.entry_at(f"HEAD:{path}")[2].cid
    assert cid_codec(cid) == RAW
    return cid


def _sites(tmp_path: Path) -> tuple[Cli, Cli, bytes]:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    data = os.urandom(50_000)
    write(a.cwd, "data/sensor.bin", data)
    write(a.cwd, "notes.txt", "notes\n")
    a("commit", "-m", "data")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    return a, Cli(tmp_path / "b"), data


def test_repair_a_flipped_byte_from_a_serve_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, data = _sites(tmp_path)
    leaf = _leaf(b.cwd, "data/sensor.bin")
    flip_pack_byte(b.cwd, leaf)
    r = b("fsck", ok=False)
    assert r.exit_code == 1 and f"corrupt  {cid_str(leaf)}" in r.stdout
    assert "casync fsck --repair REMOTE" in r.stderr
    # fetching again does not help: the damaged block counts as held
    b("fetch")
    assert b("fsck", ok=False).exit_code == 1

    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    with Repository.open(a.cwd) as served, serving(served, TOKEN) as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        out = json.loads(b("fsck", "--repair", url, "--json").stdout)
    assert out["ok"] and out["repaired"] == [cid_str(leaf)] and out["unrepaired"] == []
    assert out["fsck"]["reclaimable_bytes"] >= len(data)  # the damaged copy's bytes
    assert "checked" in b("fsck").stdout
    with Repository.open(b.cwd) as repo:  # the good copy is what the index names now
        assert repo.read("data/sensor.bin") == data


def test_repair_from_a_path_needs_rounds_below_a_damaged_directory(tmp_path: Path) -> None:
    _a, b, data = _sites(tmp_path)
    leaf = _leaf(b.cwd, "data/sensor.bin")
    with Repository.open(b.cwd) as repo:
        data_dir = repo.entry_at("HEAD:data")[2].cid
        repo.blocks.delete(leaf)  # a lost block, below a damaged directory fsck cannot read
    flip_pack_byte(b.cwd, data_dir)
    first = json.loads(b("fsck", "--json", ok=False).stdout)
    assert list(first["corrupt"]) == [cid_str(data_dir)] and not first["missing"]  # the leaf is hidden
    r = b("fsck", "--repair", "../a")
    assert f"repaired {cid_str(data_dir)}" in r.stdout and f"repaired {cid_str(leaf)}" in r.stdout
    assert "repaired 2 block(s) from ../a" in r.stdout and "checked" in r.stdout and ": ok" in r.stdout
    assert (b.cwd / "data/sensor.bin").read_bytes() == data
    b("fsck")


def test_repair_reports_what_the_remote_cannot_give(tmp_path: Path) -> None:
    a, b, _data = _sites(tmp_path)
    leaf = _leaf(b.cwd, "notes.txt")
    flip_pack_byte(a.cwd, leaf)  # the source's copy is damaged too
    flip_pack_byte(b.cwd, leaf)
    r = b("fsck", "--repair", "origin", ok=False)
    assert r.exit_code == 1
    assert "repaired 0 block(s) from origin; 1 still missing or damaged (origin has no good copy)" in r.stdout


def test_replace_repoints_the_index_and_survives_reopen(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", replica="r1")
    try:
        with repo.transaction(message="one") as tx:
            tx.write("x.bin", b"x" * 10_000)
        cid = repo.entry_at("HEAD:x.bin")[2].cid
    finally:
        repo.close()
    flip_pack_byte(tmp_path / "r", cid)
    with Repository.open(tmp_path / "r") as repo:
        with pytest.raises(CorruptBlock):
            repo.blocks.get(cid)
        with pytest.raises(CorruptBlock):  # a copy that is no better is refused
            repo.blocks.replace(cid, b"y" * 10_000)
        with repo.store.writer_lock():
            repo.blocks.replace(cid, b"x" * 10_000)
            repo.blocks.flush()
    with Repository.open(tmp_path / "r") as repo:
        assert repo.blocks.get(cid) == b"x" * 10_000 and repo.fsck().ok


@pytest.mark.kubo
def test_repair_from_kubo(tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    k = kubo_factory()
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    data = os.urandom(40_000)
    write(a.cwd, "data/sensor.bin", data)
    write(a.cwd, "empty.txt", "")
    a("commit", "-m", "data")
    a("remote", "add", "origin", k.remote_url)
    a("push")
    leaf = _leaf(a.cwd, "data/sensor.bin")
    with Repository.open(a.cwd) as repo:
        empty = repo.entry_at("HEAD:empty.txt")[2].cid
        repo.blocks.delete(empty)  # the zero-length block is made, not fetched
    flip_pack_byte(a.cwd, leaf)
    assert a("fsck", ok=False).exit_code == 1
    out = json.loads(a("fsck", "--repair", "origin", "--json").stdout)
    assert out["ok"] and sorted(out["repaired"]) == sorted([cid_str(leaf), cid_str(empty)])
    with Repository.open(a.cwd) as repo:
        assert repo.read("data/sensor.bin") == data and repo.read("empty.txt") == b""
