"""Interoperability with real Kubo: the same CIDs as ``ipfs add`` in compatibility mode,
and committed files and directories served by Kubo's gateway at ``casync url``."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from .conftest import Cli, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo


def _added(output: bytes) -> dict[str, str]:
    """``ipfs add`` output lines ``added <cid> <path>`` as {path: cid}."""
    out = {}
    for line in output.decode().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "added":
            out[parts[2]] = parts[1]
    return out


def test_fixed_chunker_cids_equal_ipfs_add(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "wt", "--chunker", "fixed", "--replica", "compat")
    cli = Cli(tmp_path / "wt")
    wt = cli.cwd
    write(wt, "big.bin", os.urandom(3 * 1024 * 1024 + 12345))   # 13 leaves + a dag-pb root
    write(wt, "huge/many.bin", os.urandom(174 * 256 * 1024 + 1))  # 175 leaves: two levels
    write(wt, "small.txt", "small file\n")
    write(wt, "empty", b"")
    write(wt, "sub/dir/deep.txt", "deep\n")
    write(wt, "sub/b.txt", "b\n")
    cli("commit", "-m", "compat")
    tree = json.loads(cli("log", "-n", "1", "--json").stdout)[0]["tree"]
    ours = {row["path"]: row["cid"] for row in json.loads(cli("ls", "-r", "--json").stdout)}
    ours[""] = tree

    kubo_out = _added(kubo.ipfs("add", "-r", "--cid-version=1", "--raw-leaves", "--hash=blake3", str(wt),
                                timeout=300))
    theirs = {(p[len(wt.name) + 1:] if p != wt.name else ""): c for p, c in kubo_out.items()}
    assert ".casync" not in " ".join(theirs)  # hidden files are not added
    for path in ("big.bin", "huge/many.bin", "small.txt", "empty", "sub/dir/deep.txt", "sub/b.txt"):
        assert ours[path] == theirs[path], path
    assert ours["big.bin"].startswith("bafyb")  # a dag-pb root, not a single raw leaf
    for d in ("sub", "sub/dir", "huge"):  # directories too
        row = json.loads(cli("ls", "HEAD:" + d.rsplit("/", 1)[0] if "/" in d else "HEAD", "--json").stdout)
        assert {r["path"]: r["cid"] for r in row}[d] == theirs[d], d
    assert tree == theirs[""]  # the commit's tree CID is Kubo's directory CID


def test_gateway_serves_committed_paths(tmp_path: Path, kubo: Kubo) -> None:
    if not kubo.gateway_url:
        pytest.skip("the node under test has no gateway URL (set CASYNC_TEST_IPFS_GATEWAY)")
    Cli(tmp_path)("init", "wt", "--replica", "gw")
    cli = Cli(tmp_path / "wt")
    small = b"served by the gateway\n"
    multi = os.urandom(2_500_000)  # several CDC chunks: a dag-pb root
    write(cli.cwd, "docs/small.txt", small)
    write(cli.cwd, "docs/sub dir/multi.bin", multi)
    cli("commit", "-m", "gateway")
    cli("remote", "add", "origin", kubo.remote_url, "--gateway", kubo.gateway_url)
    cli("push")
    head = json.loads(cli("log", "-n", "1", "--json").stdout)[0]["cid"]

    url = cli("url", "HEAD:docs/small.txt").stdout.strip()
    assert url == f"{kubo.gateway_url}/ipfs/{head}/tree/docs/small.txt"
    assert _get(url) == small
    url = cli("url", "HEAD:docs/sub dir/multi.bin").stdout.strip()
    assert url.endswith("/tree/docs/sub%20dir/multi.bin")
    assert _get(url) == multi
    # the directory: its raw block is exactly casync's, and the HTML listing names its entries
    url = cli("url", "HEAD:docs", "--remote", "origin").stdout.strip()
    assert url.endswith("/tree/docs/")
    docs_cid = json.loads(cli("ls", "HEAD", "--json").stdout)[0]["cid"]
    raw = _get(url + "?format=raw")
    assert kubo.ipfs("block", "get", docs_cid) == raw
    from casync.dag import read_dir_block
    from casync.ids import compute_cid, parse_cid
    from casync.objects import decode_pbnode

    assert compute_cid(0x70, raw) == parse_cid(docs_cid)
    assert [link.name for link in read_dir_block(parse_cid(docs_cid), decode_pbnode(raw))] == ["small.txt",
                                                                                                "sub dir"]
    listing = _get(url).decode()
    assert "small.txt" in listing and "sub dir" in listing


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return bytes(resp.read())
