"""Codec tests with known vectors and format rules."""

from __future__ import annotations

import io
import os
import re

import dag_cbor
import pytest
from multiformats import CID

from casync.errors import CorruptBlock, InvalidObject, UsageError
from casync.model import cbor
from casync.model.cbor import Link
from casync.model.chunking import FixedChunker, chunker_for
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, cid_str, compute_cid, parse_cid, verify_block
from casync.model.commit import Commit, HybridTime, decode_commit, encode_commit
from casync.model.objects import (
    DirLink,
    FileLayoutBuilder,
    PBLink,
    PBNode,
    UnixFSData,
    decode_pbnode,
    decode_unixfs,
    encode_directory,
    encode_pbnode,
    encode_unixfs,
)
from casync.store.memory import MemoryBlockStore
from casync.trees.ingest import FileWriter
from casync.trees.unixfs import iter_file

# Well-known IPFS vectors (sha2-256): the empty UnixFS directory and the empty raw block.
EMPTY_DIR_SHA256 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
EMPTY_RAW_SHA256 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_empty_directory_vector() -> None:
    block = encode_directory([])
    assert block == bytes.fromhex("0a020801")
    assert cid_str(compute_cid(DAG_PB, block, "sha2-256")) == EMPTY_DIR_SHA256


def test_empty_raw_vector() -> None:
    assert cid_str(compute_cid(RAW, b"", "sha2-256")) == EMPTY_RAW_SHA256


def test_cid_text_matches_multiformats() -> None:
    for codec in (RAW, DAG_PB, DAG_CBOR):
        for h in ("blake3", "sha2-256"):
            cid = compute_cid(codec, os.urandom(50), h)
            assert cid_str(cid) == CID.decode(cid).encode("base32")
            assert parse_cid(cid_str(cid)) == cid
    assert cid_str(compute_cid(RAW, b"x")).startswith("bafkr4i")  # raw + blake3 prefix


def test_verify_block_names_cid() -> None:
    cid = compute_cid(RAW, b"good")
    verify_block(cid, b"good")
    with pytest.raises(CorruptBlock, match=cid_str(cid)):
        verify_block(cid, b"evil")


def test_dagpb_canonical_roundtrip_and_order() -> None:
    leaf = compute_cid(RAW, b"abc")
    node = PBNode((PBLink(leaf, b"a", 3),), encode_unixfs(UnixFSData(1)))
    raw = encode_pbnode(node)
    # Links (field 2, tag 0x12) come before Data (field 1, tag 0x0a)
    assert raw[0] == 0x12 and raw[-4:] == bytes.fromhex("0a020801")
    assert decode_pbnode(raw) == node
    data_first = bytes.fromhex("0a020801") + raw[:-4]
    with pytest.raises(InvalidObject, match="not canonical"):
        decode_pbnode(data_first)


def test_unixfs_file_fields_in_go_unixfs_order() -> None:
    u = UnixFSData(2, filesize=300, blocksizes=(100, 200))
    assert encode_unixfs(u) == bytes.fromhex("0802" "18ac02" "2064" "20c801")
    assert decode_unixfs(encode_unixfs(u)) == u


def test_directory_links_sorted_by_bytes_and_unique() -> None:
    c = compute_cid(RAW, b"")
    block = encode_directory([DirLink("b", c, 0), DirLink("a", c, 0), DirLink("B", c, 0)])
    names = [link.name for link in decode_pbnode(block).links]
    assert names == [b"B", b"a", b"b"]
    with pytest.raises(InvalidObject, match="duplicate"):
        encode_directory([DirLink("a", c, 0), DirLink("a", c, 0)])


def _layout(n_leaves: int) -> tuple[bytes, list[bytes]]:
    emitted: list[bytes] = []
    b = FileLayoutBuilder(lambda cid, block: emitted.append(block))
    for i in range(n_leaves):
        b.add_leaf(compute_cid(RAW, i.to_bytes(4, "big")), 10)
    root, _ = b.finish()
    return root, emitted


@pytest.mark.parametrize(("leaves", "nodes", "root_links"), [
    (1, 0, None), (2, 1, 2), (174, 1, 174), (175, 3, 2), (174 * 174, 175, 174), (174 * 174 + 1, 178, 2),
])
def test_balanced_layout_matches_kubo_shape(leaves: int, nodes: int, root_links: int | None) -> None:
    root, emitted = _layout(leaves)
    assert len(emitted) == nodes
    if root_links is None:
        assert root == compute_cid(RAW, (0).to_bytes(4, "big"))
        return
    top = decode_pbnode(emitted[-1])
    assert len(top.links) == root_links
    u = decode_unixfs(top.data or b"")
    assert u.filesize == leaves * 10 and sum(u.blocksizes) == leaves * 10


def test_file_roundtrip_and_tsize() -> None:
    store = MemoryBlockStore()
    data = os.urandom(3 * 256 * 1024 + 17)
    entry = FileWriter(store, FixedChunker(), "blake3").write(io.BytesIO(data))
    assert b"".join(iter_file(store, entry.cid)) == data
    root = decode_pbnode(store.get(entry.cid))
    assert [link.tsize for link in root.links] == [262144, 262144, 262144, 17]
    assert entry.tsize == len(store.get(entry.cid)) + len(data)


def test_executable_single_chunk_file_gets_mode_node() -> None:
    store = MemoryBlockStore()
    entry = FileWriter(store, chunker_for("cdc"), "blake3").write(io.BytesIO(b"#!/bin/sh\n"), executable=True)
    node = decode_pbnode(store.get(entry.cid))
    assert decode_unixfs(node.data or b"").mode == 0o755
    assert b"".join(iter_file(store, entry.cid)) == b"#!/bin/sh\n"


def test_cdc_insertion_changes_few_chunks() -> None:
    data = bytearray(os.urandom(8 << 20))
    chunker = chunker_for("cdc")
    before = [bytes(c) for c in chunker.chunks(io.BytesIO(bytes(data)))]
    data[len(data) // 2 : len(data) // 2] = b"!"
    after = [bytes(c) for c in chunker.chunks(io.BytesIO(bytes(data)))]
    assert max(len(c) for c in after) <= 1 << 20
    new = set(after) - set(before)
    assert 1 <= len(new) <= 3


def _commit(**kw: object) -> Commit:
    base: dict[str, object] = dict(tree=compute_cid(DAG_PB, encode_directory([])), parents=(),
                                   clock={"a": 1}, time=HybridTime(1000, 0), replica="a", author="me",
                                   message="m", generation=1)
    base.update(kw)
    return Commit(**base)  # type: ignore[arg-type]


def test_commit_roundtrip_and_signing_bytes_exclude_sig() -> None:
    c = _commit(meta={"k": "v"}, signature=b"\x01" * 64)
    raw = encode_commit(c)
    assert decode_commit(raw) == c
    assert dag_cbor.decode(raw)["tree"].codec.name == "dag-pb"
    unsigned = _commit(meta={"k": "v"})
    assert c.signing_bytes() == unsigned.signing_bytes() == encode_commit(unsigned)


@pytest.mark.parametrize(("kw", "match"), [
    ({"clock": {"b": 1}}, "does not count its own replica"),
    ({"generation": 2}, "generation"),
    ({"replica": ""}, "not a valid replica name"),
    ({"replica": "../../x", "clock": {"../../x": 1}}, "not a valid replica name"),
    ({"tree": compute_cid(RAW, b"x")}, "not a dag-pb directory"),
])
def test_commit_check_rejects(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidObject, match=match):
        encode_commit(_commit(**kw))


def test_decode_commit_rejects_unknown_fields_and_garbage() -> None:
    obj = dag_cbor.decode(encode_commit(_commit()))
    obj["extra"] = 1
    with pytest.raises(InvalidObject, match="unknown fields"):
        decode_commit(dag_cbor.encode(obj))
    with pytest.raises(InvalidObject, match="not canonical DAG-CBOR"):
        decode_commit(b"\xff\x00garbage")


def test_parse_cid_reads_casync_text_cids_without_multiformats() -> None:
    """The status path reads one recorded CID; importing multiformats for it cost ~30 ms."""
    import subprocess
    import sys

    from casync.model.cid import DAG_CBOR, DAG_PB, RAW, cid_str, compute_cid, parse_cid

    cids = [compute_cid(codec, b"x", h) for codec in (RAW, DAG_PB, DAG_CBOR) for h in ("blake3", "sha2-256")]
    assert all(parse_cid(cid_str(c)) == c for c in cids)
    code = ("import sys; from casync.model.cid import parse_cid; "
            f"assert [parse_cid(t) for t in {[cid_str(c) for c in cids]!r}] == {cids!r}; "
            "assert 'multiformats' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # other forms still parse through multiformats; a base32 text that is no CID is refused
    from multiformats import CID

    assert parse_cid(str(CID.decode(cid_str(cids[0])).encode("base58btc"))) == cids[0]
    with pytest.raises(UsageError):
        parse_cid("b" + "a" * 58)


_TREE = compute_cid(DAG_PB, encode_directory([]))


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("v", True, "an integer"),
    ("tree", bytes(_TREE), "a link"), ("tree", cid_str(_TREE), "a link"),
    ("parents", Link(_TREE), "a list of links"), ("parents", [bytes(_TREE)], "a list of links"),
    ("clock", {"a": "1"}, "a map of replica ids"), ("clock", {"a": True}, "a map of replica ids"),
    ("clock", [["a", 1]], "a map of replica ids"),
    ("time", {"wall_ms": 1000}, "a map {wall_ms"), ("time", 1000, "a map {wall_ms"),
    ("time", {"wall_ms": 1000, "logical": 0, "x": 0}, "a map {wall_ms"),
    ("replica", b"a", "a string"), ("author", 1, "a string"), ("message", None, "a string"),
    ("generation", "1", "an integer"), ("generation", True, "an integer"),
    ("meta", {"k": 1}, "a map of strings"), ("meta", "k=v", "a map of strings"),
    ("sig", Link(_TREE), "bytes"), ("sig", "sig", "bytes"),
])
def test_decode_commit_rejects_a_field_of_the_wrong_kind(field: str, value: object, kind: str) -> None:
    """Canonical bytes, right field names, wrong IPLD kind: refused by name, never coerced
    (``int("1")``, ``bool`` as int, a string where a link belongs)."""
    obj = cbor.decode(encode_commit(_commit(signature=b"\x01" * 64, meta={"k": "v"})))
    obj[field] = value
    with pytest.raises(InvalidObject, match=f"field '{field}' must be {re.escape(kind)}"):
        decode_commit(cbor.encode(obj))


@pytest.mark.parametrize("field", ["v", "generation"])
def test_decode_commit_rejects_a_float_where_an_integer_belongs(field: str) -> None:
    obj = dag_cbor.decode(encode_commit(_commit()))  # the reference codec: ours cannot write floats
    obj[field] = 1.0
    with pytest.raises(InvalidObject):
        decode_commit(dag_cbor.encode(obj))


def test_decode_commit_rejects_a_version_string() -> None:
    obj = cbor.decode(encode_commit(_commit()))
    obj["v"] = "1"
    with pytest.raises(InvalidObject, match="unsupported commit format version '1'"):
        decode_commit(cbor.encode(obj))


@pytest.mark.parametrize("chunker", ["cdc", "fixed"])
def test_a_big_file_hashed_on_a_second_thread_gives_the_same_dag(chunker: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of more than one read block is hashed and stored on a worker thread while the
    next block is cut (casync/trees/ingest.py; more in test_ingest.py): the same root, the
    same blocks and counts as one block on one thread, and the bytes read back."""
    import random

    import casync.trees.ingest as ingest

    data = random.Random(5).randbytes(12 << 20)
    results = []
    for block in (16 << 20, 2 << 20):  # one block on this thread, then the pipeline
        monkeypatch.setattr(ingest, "BLOCK", block)
        store = MemoryBlockStore()
        writer = FileWriter(store, chunker_for(chunker), "blake3")
        seen: list[int] = []
        entry = writer.write(io.BytesIO(data), progress=seen.append)
        results.append((entry, set(store.iter_cids()), writer.new_blocks, writer.new_bytes, sum(seen)))
    assert results[0] == results[1] and results[1][4] == len(data) and len(results[1][1]) > 20
    assert b"".join(iter_file(store, results[1][0].cid)) == data


def test_the_flat_dag_pb_reader_accepts_and_refuses_exactly_what_the_field_reader_does() -> None:
    """decode_pbnode's fast path must not widen (or narrow) what a node may be: every
    mutation of real nodes decodes to the same node by both readers, or fails in both."""
    import random

    from casync.model.objects import _decode_pbnode_fields, _decode_pbnode_flat

    rng = random.Random(15)
    links = tuple(PBLink(compute_cid(RAW, b"%d" % i), b"name-%d" % i if i % 3 else None,
                         [None, 7, 200, 1 << 40][i % 4]) for i in range(6))
    nodes = [PBNode(links, b"\x08\x01"), PBNode(links[:2], None), PBNode((), b"\x08\x02" + b"d" * 200)]
    for node in nodes:
        assert decode_pbnode(encode_pbnode(node)) == node
        assert _decode_pbnode_flat(encode_pbnode(node)) == node  # the common shape takes the fast path
    both = 0
    for _ in range(20_000):
        buf = bytearray(encode_pbnode(rng.choice(nodes)))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(buf))
            op = rng.random()
            if op < 0.5:
                buf[at] = rng.randrange(256)
            elif op < 0.75:
                del buf[at]
            else:
                buf.insert(at, rng.randrange(256))
        results = []
        for read in (decode_pbnode, _decode_pbnode_fields):
            try:
                results.append(read(bytes(buf)))
            except InvalidObject:
                results.append(None)
        assert results[0] == results[1], bytes(buf).hex()
        both += results[0] is not None
    assert both > 1000  # the mutations reach accepted nodes too, not only errors


def test_large_dag_pb_nodes_are_decoded_once_while_kept_and_bad_ones_always_refused() -> None:
    """A merge or checkout reads the same big root directories many times; the last few large
    nodes stay decoded (by their bytes), never more than the bound, and a bad node is never kept."""
    from casync.model import objects

    def big_dir(tag: int) -> bytes:
        links = tuple(PBLink(compute_cid(RAW, f"{tag}-{i}".encode()), f"f{i:04d}".encode(), 10)
                      for i in range(300))
        return encode_pbnode(PBNode(links, b"\x08\x01"))

    block = big_dir(0)
    assert len(block) >= objects._DECODED_MIN
    first = decode_pbnode(block)
    assert decode_pbnode(memoryview(bytes(block))) is first  # equal bytes, however they are held
    assert len(first.links) == 300 and first.links[7].name == b"f0007"
    for tag in range(1, 3 * objects._DECODED_MAX):
        decode_pbnode(big_dir(tag))
    assert len(objects._DECODED) <= objects._DECODED_MAX
    assert decode_pbnode(block) == first
    bad = block[:-3] + b"\xff\xff\xff"
    for _ in range(2):
        with pytest.raises(InvalidObject):
            decode_pbnode(bad)
