"""``casync audit --remote`` against a real Kubo node: a pushed snapshot is whole and pinned;
after its pin is removed and one block deleted from the node, both are reported, naming the
block and the paths that use it; a head record that disagrees with the local ref is reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import RAW, cid_codec, cid_str
from casync.model.objects import decode_pbnode
from casync.store.ipfs_client import IpfsClient

from .conftest import Cli, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo


def _audit(cli: Cli, *args: str, code: int) -> dict[str, object]:
    r = cli("audit", *args, "--json", ok=False)
    assert r.exit_code == code, (r.stdout, r.stderr)
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_audit_remote_finds_an_unpinned_snapshot_and_a_missing_block(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    write(a.cwd, "data/big.bin", os.urandom(2_500_000))  # several chunks; unique: no other test's pin covers it
    write(a.cwd, "docs/readme.txt", os.urandom(64).hex())
    a("commit", "-m", "first")
    a("remote", "add", "origin", kubo.remote_url)
    a("push")
    clean = _audit(a, "--remote", "origin", code=0)
    assert clean["findings"] == [] and clean["commits"] == 1
    with Repository.open(a.cwd) as repo:
        head = repo.resolve("HEAD")
        _c, _p, entry = repo.entry_at("HEAD:data/big.bin")
        leaf = decode_pbnode(repo.blocks.get(entry.cid)).links[-1].cid
        assert cid_codec(leaf) == RAW
        leaf_bytes = repo.blocks.get(leaf)
    client = IpfsClient(kubo.api_url)
    try:
        client.pin_rm(head)
        rid = a("config", "repository_id").stdout.strip()
        for _name, index, _kind in client.named_pins(f"casync/{rid}/.index/"):
            client.pin_rm(index)  # the linked index holds the snapshot too (remotes.md#the-linked-index)
        client.block_rm(leaf)
        assert client.block_size(leaf) is None
    finally:
        client.close()
    found = _audit(a, "--remote", "origin", code=1)["findings"]
    assert isinstance(found, list)
    missing = [f for f in found if f["kind"] == "remote-missing"]
    assert [(f["cid"], f["paths"]) for f in missing] == [(cid_str(leaf), ["data/big.bin"])]
    unpinned = {f["cid"] for f in found if f["kind"] == "unpinned"}
    assert cid_str(head) in unpinned and cid_str(leaf) not in unpinned
    assert clean["blocks"] == len(unpinned) + 1  # every other block of the snapshot
    assert _audit(a, code=0)["findings"] == []  # the local copy is whole
    # the block and the pin put back, the remote is whole again
    client = IpfsClient(kubo.api_url)
    try:
        assert client.block_put(leaf_bytes, RAW, "blake3") == leaf
        client.pin_add(head)
    finally:
        client.close()
    assert _audit(a, "--remote", "origin", code=0)["findings"] == []


def test_audit_remote_reports_a_head_record_the_local_ref_disagrees_with(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    write(a.cwd, "f.txt", os.urandom(32).hex())
    a("commit", "-m", "first")
    a("remote", "add", "origin", kubo.remote_url)
    a("push")
    with Repository.open(a.cwd) as repo:
        published = repo.resolve("HEAD")
        repo.refs.cas_ref("remotes/origin/site-a/main", published, None, "test: forget what was pushed")
    found = _audit(a, "--remote", "origin", code=1)["findings"]
    assert [(f["kind"], f["cid"]) for f in found] == [("record-mismatch", cid_str(published))]  # type: ignore[index]


def test_fetch_require_signed_from_kubo_takes_no_unsigned_head(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    line = a("key", "generate").stdout.strip()
    write(a.cwd, "f.txt", os.urandom(32).hex())
    a("commit", "-m", "signed", "--sign")
    a("remote", "add", "origin", kubo.remote_url)
    a("push")
    rid = a("config", "repository_id").stdout.strip()
    Cli(tmp_path)("init", "b", "--replica", "site-b", "--repository-id", rid)
    b = Cli(tmp_path / "b")
    (b.cwd / "signers").write_text(line + "\n")
    b("config", "trusted_signers", "signers")
    b("remote", "add", "origin", kubo.remote_url)
    b("fetch", "--require-signed")
    with Repository.open(b.cwd) as repo:
        signed = repo.refs.get_ref("remotes/origin/site-a/main")
    assert signed is not None
    write(a.cwd, "f.txt", "unsigned now")
    unsigned = a("commit", "-m", "unsigned").stdout.strip()
    a("push")
    r = b("fetch", "--require-signed", ok=False)
    assert r.exit_code == 1 and unsigned in r.stderr and "is not signed" in r.stderr
    with Repository.open(b.cwd) as repo:
        assert repo.refs.get_ref("remotes/origin/site-a/main") == signed  # the ref did not move
