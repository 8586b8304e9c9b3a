"""The linked index's byte format (docs/remotes.md#the-linked-index), without a node: what a
second implementation must write and read."""

from __future__ import annotations

import pytest

from casync.errors import InvalidObject
from casync.model import cbor
from casync.model.cbor import Link
from casync.model.cid import DAG_CBOR, DAG_PB, cid_str, compute_cid, parse_cid
from casync.store.memory import MemoryBlockStore
from casync.transports.ipfs.index import FORMAT, decode_index, encode_index, encode_record, read_index
from casync.transports.ipfs.records import BranchHead, HeadRecord

REPO = "0123456789abcdef0123456789abcdef"


def _commit(n: int) -> bytes:
    return compute_cid(DAG_CBOR, b"commit %d" % n)


def _record(replica: str, seq: int, **tags: bytes) -> HeadRecord:
    heads = {"main": BranchHead(_commit(seq), seq, {replica: seq}), "dev": BranchHead(_commit(100 + seq), 1, {})}
    return HeadRecord(REPO, replica, seq, 1_700_000_000_000 + seq, "blake3", "cdc", heads, dict(tags))


def _store(records: dict[str, HeadRecord]) -> tuple[MemoryBlockStore, bytes]:
    cid, data, blocks = encode_index(REPO, records["site-a"], records, 1_800_000_000_000, "blake3")
    store = MemoryBlockStore()
    for c, d in [*blocks, (cid, data)]:
        store.put(c, d)
    return store, cid


def test_the_index_links_heads_and_records_in_canonical_dag_cbor() -> None:
    records = {"site-a": _record("site-a", 3, v1=_commit(1)), "edge-2": _record("edge-2", 7)}
    store, cid = _store(records)
    obj = cbor.decode(store.get(cid))
    assert obj["format"] == FORMAT == "casync-index/1"
    assert (obj["repository"], obj["by"], obj["seq"], obj["time_ms"]) == (REPO, "site-a", 3, 1_800_000_000_000)
    assert obj["heads"]["edge-2"]["main"] == Link(_commit(7))  # /heads/<replica>/<branch> is the commit
    assert isinstance(obj["heads"]["site-a"]["dev"], Link)
    record = cbor.decode(store.get(bytes(obj["records"]["site-a"])))
    assert record == {"format": "casync-heads/1", "repository": REPO, "replica": "site-a", "seq": 3,
                      "time_ms": 1_700_000_000_003, "hash": "blake3", "chunker": "cdc",
                      "heads": {"main": {"commit": Link(_commit(3)), "generation": 3, "clock": {"site-a": 3}},
                                "dev": {"commit": Link(_commit(103)), "generation": 1, "clock": {}}},
                      "tags": {"v1": Link(_commit(1))}}
    assert "tags" not in cbor.decode(store.get(bytes(obj["records"]["edge-2"])))  # absent when none
    got = {r.replica: r for r in read_index(store, cid, None, None)}
    assert got == records


def test_a_record_that_disagrees_with_the_heads_map_is_reported() -> None:
    records = {"site-a": _record("site-a", 3), "edge-2": _record("edge-2", 7)}
    cid, data, blocks = encode_index(REPO, records["site-a"], records, 1, "blake3")
    obj = cbor.decode(data)
    obj["heads"]["edge-2"]["main"] = Link(_commit(99))
    data = cbor.encode(obj)
    cid = compute_cid(DAG_CBOR, data)
    store = MemoryBlockStore()
    for c, d in [*blocks, (cid, data)]:
        store.put(c, d)
    errors: list[str] = []
    assert [r.replica for r in read_index(store, cid, REPO, errors)] == ["site-a"]
    assert len(errors) == 1 and "disagrees" in errors[0] and "edge-2" in errors[0]
    with pytest.raises(InvalidObject):
        read_index(store, cid, REPO, None)


@pytest.mark.parametrize("change", [
    {"format": "casync-index/2"},
    {"repository": "another-repository"},
    {"seq": "1"},
    {"by": "../x"},
    {"records": {}},  # heads name replicas the records do not
])
def test_malformed_indexes_are_refused(change: dict[str, object]) -> None:
    records = {"site-a": _record("site-a", 3)}
    _cid, data, _blocks = encode_index(REPO, records["site-a"], records, 1, "blake3")
    obj = {**cbor.decode(data), **change}
    with pytest.raises(InvalidObject):
        decode_index(compute_cid(DAG_CBOR, cbor.encode(obj)), cbor.encode(obj), REPO)


def test_text_cids_in_a_record_block_are_refused() -> None:
    """A record block's CIDs are links, so pins and exports follow them; a string is refused."""
    rec = _record("site-a", 3)
    obj = cbor.decode(encode_record(rec))
    obj["heads"]["main"]["commit"] = cid_str(_commit(3))
    store = MemoryBlockStore()
    rblock = cbor.encode(obj)
    rcid = compute_cid(DAG_CBOR, rblock)
    index = cbor.encode({"format": FORMAT, "repository": REPO, "by": "site-a", "seq": 3, "time_ms": 1,
                         "heads": {"site-a": {b: Link(h.commit) for b, h in rec.heads.items()}},
                         "records": {"site-a": Link(rcid)}})
    icid = compute_cid(DAG_CBOR, index)
    store.put(rcid, rblock)
    store.put(icid, index)
    errors: list[str] = []
    assert read_index(store, icid, REPO, errors) == [] and "malformed" in errors[0]


def test_cidv0_prints_in_base58_never_as_base32() -> None:
    v0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"  # the empty UnixFS directory
    raw = parse_cid(v0)
    assert raw[:2] == b"\x12\x20" and cid_str(raw) == v0
    assert cid_str(compute_cid(DAG_PB, b"")).startswith("bafyb")
