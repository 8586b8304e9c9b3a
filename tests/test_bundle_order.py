"""Bundles are CARs in root-first order (the manifest first, then each block after the
block that links to it: pre-order, depth-first, links in link order, each block once).
Checked here by an independent walk (links read with the ``dag_cbor`` package and a
protobuf reader of its own) and against real Kubo: ``ipfs dag import`` of a full and of a
thin bundle with its default pinning, and ``ipfs dag export`` writing the same order.
Older bundles (post-order, manifest last) still read; a root-first stream with a block out
of place, missing or extra is refused and nothing is stored."""

from __future__ import annotations

import io
import os
from pathlib import Path

import dag_cbor
import pytest

from casync import Repository
from casync.errors import InvalidObject
from casync.model.car import CarWriter, car_parts, iter_car, read_header
from casync.model.cid import DAG_CBOR, DAG_PB, Cid, cid_codec, cid_str
from casync.transfer.stream import blocks_for_commits
from casync.transports.bundle import _manifest, create_bundle, read_bundle
from casync.transports.peer.exchange import LocalPeer, fetch_from

from .kubo_fixture import Kubo


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _pb_links(block: bytes) -> list[bytes]:
    """dag-pb PBLink.Hash fields, in order (field 2 of the node, field 1 of each link)."""
    out, pos = [], 0
    while pos < len(block):
        key, pos = _varint(block, pos)
        size, pos = _varint(block, pos) if key & 7 == 2 else (0, pos)
        body, pos = block[pos:pos + size], pos + size
        if key >> 3 == 2:
            k, p = _varint(body, 0)
            assert k == 0x0A
            n, p = _varint(body, p)
            out.append(body[p:p + n])
    return out


def _cbor_links(obj: object) -> list[bytes]:
    if isinstance(obj, dict):
        return [c for v in obj.values() for c in _cbor_links(v)]
    if isinstance(obj, list):
        return [c for v in obj for c in _cbor_links(v)]
    if hasattr(obj, "codec") and hasattr(obj, "digest"):  # a multiformats CID from dag_cbor
        return [bytes(obj)]  # type: ignore[call-overload]
    return []


def _links(cid: Cid, block: bytes) -> list[bytes]:
    codec = cid_codec(cid)
    if codec == DAG_PB:
        return _pb_links(block)
    if codec == DAG_CBOR:
        return _cbor_links(dag_cbor.decode(block))
    return []


def _read(path: Path) -> tuple[list[Cid], list[tuple[Cid, bytes]]]:
    with open(path, "rb") as f:
        roots = read_header(f)
        return roots, list(iter_car(f))


def assert_root_first(blocks: list[tuple[Cid, bytes]], held: set[Cid]) -> None:
    """``blocks`` are exactly the pre-order DFS from the first block over links in order,
    skipping what the receiver holds (``held``) and what came before."""
    data = dict(blocks)
    assert len(data) == len(blocks), "a block is sent twice"
    expected: list[Cid] = []
    seen: set[Cid] = set()
    stack = [iter([blocks[0][0]])]
    while stack:
        cid = next(stack[-1], None)
        if cid is None:
            stack.pop()
            continue
        if cid in seen or cid in held:
            continue
        assert cid in data, f"{cid_str(cid)} is neither held nor in the bundle"
        seen.add(cid)
        expected.append(cid)
        stack.append(iter(_links(cid, data[cid])))
    assert [c for c, _ in blocks] == expected


def _repo(tmp_path: Path) -> Repository:
    repo = Repository.init(tmp_path / "origin", replica="origin")
    for i in range(4):
        with repo.transaction(message=f"c{i}") as tx:
            tx.write(f"d/e/{i % 3}.txt", f"v{i}".encode() * 40)
            tx.write("shared.txt", b"same in every commit")
            if i == 1:
                tx.write("big.bin", os.urandom(900_000))  # a multi-chunk file
    return repo


def _held_closure(repo: Repository, commit: Cid) -> set[Cid]:
    from casync.trees.unixfs import walk_dag

    return {c for c, _ in walk_dag(repo.blocks.get, commit)}


def test_full_and_thin_bundles_are_root_first(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    full = tmp_path / "full.car"
    info = create_bundle(repo, full, ["main"])
    roots, blocks = _read(full)
    assert roots == [blocks[0][0]] and cid_codec(roots[0]) == DAG_CBOR  # complete: the manifest is the root
    assert len(blocks) == info.stats.blocks + 1
    assert_root_first(blocks, set())
    base = repo.resolve("HEAD~2")
    thin = tmp_path / "thin.car"
    create_bundle(repo, thin, ["main"], since=[cid_str(base)])
    roots, blocks = _read(thin)
    assert roots == []  # it links to history it lacks: nothing in it is a complete root
    assert dag_cbor.decode(blocks[0][1])["prerequisites"] == [dag_cbor.decode(blocks[0][1])["prerequisites"][0]]
    assert_root_first(blocks, _held_closure(repo, base))
    # the unchanged file and directories of the base are not in the thin bundle
    assert len(blocks) < len(_read(full)[1]) - 3
    repo.close()


def test_root_first_and_older_bundles_both_read(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    head = repo.resolve("main")
    create_bundle(repo, tmp_path / "new.car", ["main"])
    # an older bundle: the blocks in post-order, then the manifest, which the header names
    commits = repo.graph.missing([head], [])
    m_cid, m_block = _manifest(repo, {"main": head}, [], {})
    with open(tmp_path / "old.car", "wb") as f:
        writer = CarWriter(f, [m_cid])
        for cid, block in blocks_for_commits(repo, commits):
            writer.add(cid, block)
        writer.add(m_cid, m_block)
    for name in ("new.car", "old.car"):
        other = Repository.init(tmp_path / name.replace(".", "-"), replica="b", repository_id=repo.repo_id)
        got = read_bundle(other, tmp_path / name)
        assert other.refs.get_ref("bundles/main") == head and other.fsck().ok
        assert got.stats.commits and set(got.stats.commits) == set(commits)
        other.close()
    # a thin one applies on top of what a clone holds
    base = repo.resolve("HEAD~1")
    create_bundle(repo, tmp_path / "thin.car", ["main"], since=[cid_str(base)])
    c = Repository.init(tmp_path / "c", replica="c", repository_id=repo.repo_id)
    fetch_from(c, LocalPeer(str(repo.root)), "origin")  # everything, then
    read_bundle(c, tmp_path / "thin.car")
    assert c.refs.get_ref("bundles/main") == head
    c.close()
    repo.close()


@pytest.mark.parametrize("damage", ["swap", "drop", "extra", "reorder-manifest"])
def test_a_root_first_stream_out_of_order_is_refused(tmp_path: Path, damage: str) -> None:
    repo = _repo(tmp_path)
    create_bundle(repo, tmp_path / "b.car", ["main"])
    roots, blocks = _read(tmp_path / "b.car")
    if damage == "swap":  # a directory and its first child change places
        i = next(i for i, (c, _) in enumerate(blocks) if i > 2 and cid_codec(c) == DAG_PB)
        blocks[i], blocks[i + 1] = blocks[i + 1], blocks[i]
    elif damage == "drop":
        del blocks[len(blocks) // 2]
    elif damage == "extra":
        blocks.append(blocks[3])
    else:  # the manifest moved to the end, the rest root-first: neither order
        blocks.append(blocks.pop(0))
    (tmp_path / "bad.car").write_bytes(b"".join(bytes(p) for p in car_parts(roots, blocks)))
    other = Repository.init(tmp_path / "other", replica="b", repository_id=repo.repo_id)
    with pytest.raises(InvalidObject):
        read_bundle(other, tmp_path / "bad.car")
    assert other.store.items_count("index") == 0 and other.refs.list_refs() == {}
    other.close()
    repo.close()


@pytest.mark.kubo
def test_kubo_imports_full_and_thin_bundles_and_exports_the_same_order(tmp_path: Path, kubo: Kubo) -> None:
    repo = _repo(tmp_path)
    full, thin = tmp_path / "full.car", tmp_path / "thin.car"
    create_bundle(repo, full, ["main"])
    base = repo.resolve("HEAD~1")
    create_bundle(repo, thin, ["main"], since=[cid_str(base)])
    _roots, thin_blocks = _read(thin)
    # the thin bundle first, into a node that has nothing of the base: default flags (pinning on)
    out = kubo.ipfs("dag", "import", str(thin)).decode()
    assert "Pinned root" not in out
    for cid, _ in thin_blocks:
        kubo.ipfs("block", "stat", "--offline", cid_str(cid))
    roots, blocks = _read(full)
    out = kubo.ipfs("dag", "import", str(full)).decode()
    assert f"Pinned root\t{cid_str(roots[0])}\tsuccess" in out, out
    # Kubo's exporter (go-car) walks the manifest's DAG: the same blocks in the same order
    exported = kubo.ipfs("dag", "export", cid_str(roots[0]))
    stream = io.BytesIO(exported)
    assert read_header(stream) == roots
    assert [c for c, _ in iter_car(stream)] == [c for c, _ in blocks]
    kubo.ipfs("pin", "rm", cid_str(roots[0]))
    repo.close()


def test_a_commits_link_order_is_its_encoded_order(tmp_path: Path) -> None:
    """The receiver walks a commit's links as decoded ([tree, *parents]); the writer and Kubo
    walk them as encoded: these must agree (DAG-CBOR sorts 'tree' before 'parents')."""
    from casync.transfer.dfs import block_links
    from casync.trees.unixfs import checked_block

    repo = _repo(tmp_path)
    head = repo.resolve("main")
    block = repo.blocks.get(head)
    assert block_links(head, block) == checked_block(head, block).links == _links(head, block)
    repo.close()
