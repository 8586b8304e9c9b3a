"""The one tree walker (casync/trees/walk.py) behind peer fetch/push, bundles and IPFS push."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import BlockNotFound, CorruptBlock
from casync.model.cid import Cid
from casync.store.memory import MemoryBlockStore
from casync.transfer.stream import blocks_for_commits
from casync.transports.ipfs.push import all_blocks, missing_blocks
from casync.trees.walk import TreeWalker, changed_paths


def _flip_byte(repo: Repository, cid: Cid) -> None:
    """Flip one byte of ``cid``'s bytes in its pack file (bit rot)."""
    raw = repo.store.get("index", cid)
    assert raw is not None
    pack, offset, length = struct.unpack("<IQI", raw)
    with open(repo.store.pack_dir / f"{pack:08d}.pack", "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x01]))


def _two_commits(tmp_path: Path) -> tuple[Repository, Cid, Cid]:
    repo = Repository.init(tmp_path / "r", replica="r")
    with repo.transaction(branch="main", message="one") as tx:
        tx.write("a.txt", b"a1")
        tx.write("b.txt", b"b1")
    first = repo.resolve("main")
    with repo.transaction(branch="main", message="two") as tx:
        tx.write("a.txt", b"a2")
    return repo, first, repo.resolve("main")


def test_an_unreadable_parent_tree_is_an_error_not_a_bigger_stream(tmp_path: Path) -> None:
    # the sender used to catch every exception reading a parent's tree and then send the
    # whole new tree (here the unchanged b.txt too), hiding the corruption
    repo, first, second = _two_commits(tmp_path)
    try:
        _flip_byte(repo, repo.graph.node(first).tree)
        with pytest.raises(CorruptBlock):
            list(blocks_for_commits(repo, [second]))
    finally:
        repo.close()


def test_peer_streams_and_ipfs_push_send_the_same_blocks(tmp_path: Path) -> None:
    repo, first, _second = _two_commits(tmp_path)
    with repo:
        data = os.urandom(3 << 20)
        with repo.transaction(branch="main", message="three") as tx:
            tx.write("big/data.bin", data)
            tx.write("moved/b.txt", b"b1")
        with repo.transaction(branch="main", message="four: a copy of big/") as tx:
            tx.write("a.txt", b"a3")
            tx.write("copy/data.bin", data)
        fourth = repo.resolve("main")
        commits = repo.graph.missing([fourth], [first])
        streamed = [cid for cid, _ in blocks_for_commits(repo, commits)]
        assert len(streamed) == len(set(streamed))
        assert set(streamed) == {c for c, _ in missing_blocks(repo, fourth, [first])}
        exact = set(all_blocks(repo, [fourth])) - set(all_blocks(repo, [first]))
        assert exact <= set(streamed) <= set(all_blocks(repo, [fourth]))
        copied = repo.entry_at("main:copy/data.bin")[2].cid
        assert copied == repo.entry_at("main:big/data.bin")[2].cid
        assert streamed.count(copied) == 1  # sent once, for big/, not again for copy/
        assert streamed[-1] == fourth


def test_a_tree_block_the_walk_cannot_find_is_named() -> None:
    store = MemoryBlockStore()
    walker = TreeWalker(store.get)
    with pytest.raises(BlockNotFound):
        list(walker.tree(bytes.fromhex("01701e20") + bytes(32), []))


def test_changed_paths_names_files_of_changed_subtrees_only(tmp_path: Path) -> None:
    with Repository.init(tmp_path / "r", replica="r") as repo:
        with repo.transaction(branch="main", message="one") as tx:
            tx.write("d/x.txt", b"x")
            tx.write("d/y.txt", b"y")
            tx.write("e/z.txt", b"z")
        one = repo.graph.node(repo.resolve("main")).tree
        with repo.transaction(branch="main", message="two") as tx:
            tx.write("d/x.txt", b"x2")
            tx.delete("e/z.txt")
        with repo.transaction(branch="main", message="three") as tx:
            tx.write("e", b"now a file")
        two = repo.graph.node(repo.resolve("main")).tree
        assert changed_paths(repo.blocks.get, one, two) == {"d/x.txt", "e/z.txt", "e"}
        assert changed_paths(repo.blocks.get, None, one) == {"d/x.txt", "d/y.txt", "e/z.txt"}


def test_ipfs_push_of_an_edit_then_a_copy_sends_only_the_new_chunks(tmp_path: Path) -> None:
    # the push walk went newest commit first: the copy (a new path) was walked before the
    # edit, against nothing, so every chunk of the file went up again
    with Repository.init(tmp_path / "r", replica="r") as repo:
        data = bytearray(os.urandom(4 << 20))
        with repo.transaction(branch="main", message="file") as tx:
            tx.write("a/data.bin", bytes(data))
        pushed = repo.resolve("main")
        data.insert(len(data) // 2, 7)
        with repo.transaction(branch="main", message="edit") as tx:
            tx.write("a/data.bin", bytes(data))
        with repo.transaction(branch="main", message="copy") as tx:
            tx.write("b/data.bin", bytes(data))
        head = repo.resolve("main")
        exact = set(all_blocks(repo, [head])) - set(all_blocks(repo, [pushed]))
        assert {c for c, _ in missing_blocks(repo, head, [pushed])} == exact
        assert len(exact) < 12  # the new chunks, the file's root, directories and commits


def test_the_receiver_names_what_is_wrong_with_a_stream_by_type(tmp_path: Path) -> None:
    from casync.model.cid import RAW, compute_cid
    from casync.transfer.stream import MissingLink, MissingWant, PackReceiver, StrayBlock, UnwantedCommit

    src, first, second = _two_commits(tmp_path)
    with src, Repository.init(tmp_path / "dst", replica="dst", repository_id=src.repo_id) as dst:
        stream = list(blocks_for_commits(src, [first, second]))
        stray = (compute_cid(RAW, b"stray"), b"stray")
        cases = [([stray, *stream], None, StrayBlock), (stream[:-1], None, StrayBlock),
                 (stream[1:], None, MissingLink), (stream, {first}, UnwantedCommit),
                 (stream, {second, compute_cid(RAW, b"x")}, MissingWant)]
        for blocks, wants, error in cases:
            receiver = PackReceiver(dst, wants)
            with pytest.raises(error):
                for cid, block in blocks:
                    receiver.add(cid, block)
                receiver.finish()
            receiver.abort()
        assert not dst.blocks.has(second)
