"""HAMT-sharded directories against real Kubo: casync writes the CIDs ``ipfs add`` writes
above the sharding threshold, and reads, diffs, walks and edits what Kubo wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import RAW, cid_str, compute_cid, parse_cid
from casync.model.objects import UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD, decode_pbnode, decode_unixfs
from casync.store.ipfs import IpfsBlockStore, IpfsClient
from casync.transports.ipfs.fetch import DagFetcher
from casync.trees.unixfs import Entry, find_entry, flatten_tree, update_tree
from casync.trees.walk import TreeWalker, changed_paths

from .conftest import Cli, write
from .kubo_fixture import Kubo
from .test_ipfs_compat import _added

LONG = "a-rather-long-file-name-" * 8  # ~190 bytes: 1,200 of these cross 256 KiB


def _type(repo: Repository, cid: bytes) -> int:
    return decode_unixfs(decode_pbnode(repo.blocks.get(cid)).data or b"").type


@pytest.mark.kubo
def test_sharded_directories_get_the_cids_ipfs_add_gives(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "wt", "--chunker", "fixed", "--replica", "hamt")
    cli = Cli(tmp_path / "wt")
    for i in range(6000):
        write(cli.cwd, f"short/file-{i:05d}", f"{i}\n")  # 6,000 x (10 + 36) bytes: just over
    for i in range(1200):
        write(cli.cwd, f"long/{LONG}{i:04d}", f"long {i}\n")
    for i in range(1100):  # below the threshold: a plain directory, as Kubo writes it
        write(cli.cwd, f"under/{LONG}{i:04d}", f"under {i}\n")
    cli("commit", "-m", "big directories")
    tree = json.loads(cli("log", "-n", "1", "--json").stdout)[0]["tree"]
    ours = {row["path"]: row["cid"] for row in json.loads(cli("ls", "HEAD", "--json").stdout)}
    with Repository.open(cli.cwd) as repo:
        kinds = {d: _type(repo, parse_cid(ours[d])) for d in ("short", "long", "under")}
    assert kinds == {"short": UNIXFS_HAMT_SHARD, "long": UNIXFS_HAMT_SHARD, "under": UNIXFS_DIRECTORY}

    added = _added(kubo.ipfs("add", "-r", "--cid-version=1", "--raw-leaves", "--hash=blake3", str(cli.cwd),
                             timeout=600))
    theirs = {(p[len(cli.cwd.name) + 1:] if p != cli.cwd.name else ""): c for p, c in added.items()}
    for d in ("short", "long", "under"):
        assert ours[d] == theirs[d], d
    assert tree == theirs[""]


@pytest.mark.kubo
def test_a_hamt_kubo_wrote_is_read_walked_diffed_and_edited(tmp_path: Path, kubo: Kubo) -> None:
    src = tmp_path / "src" / "d"
    names = [f"kubo-{i:05d}-{'k' * 80}" for i in range(3000)]  # ~3000 * 125 bytes: sharded
    for name in names:
        write(src, name, f"{name[:10]}\n")
    add = ["add", "-r", "-w", "-Q", "--cid-version=1", "--hash=sha2-256"]
    v1 = parse_cid(kubo.ipfs(*add, str(src), timeout=600).decode().strip())

    repo = Repository.init(tmp_path / "repo", replica="reader", hash="sha2-256")
    try:
        # fetched through casync's receive checks (the wrapper names the HAMT: checked whole)
        fetcher = DagFetcher(repo, IpfsBlockStore(IpfsClient(kubo.api_url)), concurrency=4)
        try:
            fetcher.fetch(v1)
        finally:
            fetcher.close()
        d = find_entry(repo.blocks.get, v1, "d")
        assert d is not None and _type(repo, d.cid) == UNIXFS_HAMT_SHARD
        flat = flatten_tree(repo.blocks, v1)
        assert {p: e.cid for p, e in flat.items()} == {
            f"d/{n}": compute_cid(RAW, f"{n[:10]}\n".encode(), "sha2-256") for n in names}

        # the one walker yields exactly the DAG Kubo lists
        refs = kubo.ipfs("refs", "-r", "--unique", cid_str(v1)).decode().split()
        walked = {block.cid for block in TreeWalker(repo.blocks.get).tree(v1, [])}
        assert walked == {parse_cid(r) for r in refs} | {v1}

        # a trustless read through Kubo's gateway follows the shards on the name's bucket path
        assert kubo.gateway_url
        got = Cli(tmp_path)("get", f"{cid_str(v1)}:d/{names[5]}", "--gateway", kubo.gateway_url)
        assert got.stdout == f"{names[5][:10]}\n"
        missing = Cli(tmp_path)("get", f"{cid_str(v1)}:d/absent", "--gateway", kubo.gateway_url, ok=False)
        assert missing.exit_code == 2 and "no entry 'absent'" in missing.stderr

        # Kubo changes one file: casync sees one path, and makes the same edit to the same CID
        write(src, names[7], "changed\n")
        v2 = parse_cid(kubo.ipfs(*add, str(src), timeout=600).decode().strip())
        leaf = compute_cid(RAW, b"changed\n", "sha2-256")
        repo.blocks.put(leaf, b"changed\n")
        ours = update_tree(repo.blocks, v1, {f"d/{names[7]}": Entry(leaf, "file", 8)}, "sha2-256")
        assert ours.cid == v2
        assert changed_paths(repo.blocks.get, v1, v2) == {f"d/{names[7]}"}

        # below the threshold again: Kubo writes a plain directory, and so does casync
        gone = names[:1000]
        for name in gone:
            (src / name).unlink()
        v3 = parse_cid(kubo.ipfs(*add, str(src), timeout=600).decode().strip())
        shrunk = update_tree(repo.blocks, v2, {f"d/{n}": None for n in gone}, "sha2-256")
        assert shrunk.cid == v3
        d3 = find_entry(repo.blocks.get, v3, "d")
        assert d3 is not None and _type(repo, d3.cid) == UNIXFS_DIRECTORY
    finally:
        repo.close()
