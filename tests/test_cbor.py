"""casync.model.cbor against the reference ``dag_cbor`` package, and its strictness."""

from __future__ import annotations

from typing import Any

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from casync.errors import InvalidObject
from casync.model import cbor
from casync.model.cbor import Link
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, compute_cid, is_cid
from casync.model.commit import Commit, HybridTime, decode_commit, encode_commit

LINKS = [compute_cid(c, bytes([i]), h) for i, (c, h) in
         enumerate([(RAW, "blake3"), (DAG_PB, "sha2-256"), (DAG_CBOR, "blake3")])]

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1)
            | st.text(max_size=40) | st.binary(max_size=40) | st.sampled_from(LINKS).map(Link))
values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def _to_reference(v: Any) -> Any:
    """The same value in dag_cbor's data model (links as multiformats CIDs)."""
    if isinstance(v, Link):
        return CID.decode(bytes(v))
    if isinstance(v, list):
        return [_to_reference(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_reference(x) for k, x in v.items()}
    return v


@settings(max_examples=300, deadline=None)
@given(values)
def test_same_bytes_as_the_reference_codec_and_round_trip(value: Any) -> None:
    raw = cbor.encode(value)
    assert raw == bytes(dag_cbor.encode(_to_reference(value)))
    back = cbor.decode(raw)
    assert back == value and cbor.encode(back) == raw


def test_commits_encode_exactly_as_before() -> None:
    """Commit blocks (and so commit CIDs) are unchanged by the switch of codec."""
    c = Commit(tree=LINKS[1], parents=(LINKS[2],), clock={"a": 3, "bb": 1}, time=HybridTime(1_700_000_000_000, 2),
               replica="a", author="ann", message="m\u00e9ss\u00e4ge", generation=7, meta={"k": "v"},
               signature=b"\x01" * 64)
    raw = encode_commit(c)
    reference = dict(c._to_ipld(True))
    reference["tree"] = CID.decode(c.tree)
    reference["parents"] = [CID.decode(p) for p in c.parents]
    assert raw == bytes(dag_cbor.encode(reference))
    assert decode_commit(raw) == c


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "truncated"),
    (b"\x18\x05", "shortest form"),                       # 5 in two bytes
    (b"\x19\x00\x10", "shortest form"),
    (b"\x1a\x00\x00\x01\x00", "shortest form"),
    (b"\x1b\x00\x00\x00\x00\x00\x01\x00\x00", "shortest form"),
    (b"\x5f\x41a\xff", "indefinite"),                     # indefinite byte string
    (b"\x9f\x01\xff", "indefinite"),
    (b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", "floats"),  # 1.0
    (b"\xf7", "simple value"),                            # undefined
    (b"\xa2\x61b\x01\x61a\x02", "canonical order"),       # {"b":1,"a":2}
    (b"\xa2\x61a\x01\x61a\x02", "repeated"),              # duplicate key
    (b"\xa2\x62aa\x01\x61b\x02", "canonical order"),      # longer key first
    (b"\xa1\x01\x02", "not a string"),                    # integer key
    (b"\x62\xc3\x28", "UTF-8"),
    (b"\xc1\x01", "tag 1"),
    (b"\xd8\x2a\x41\x01", "valid binary CID"),           # link without the 0x00 prefix
    (b"\xd8\x2a\x62ab", "byte string"),
    (b"\x01\x02", "trailing"),
    (b"\x85\x01", "truncated"),                           # array of 5, one item
    (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),  # absurd length, no allocation
    (b"\x81" * 40 + b"\x01", "nested too deeply"),
])
def test_only_canonical_dag_cbor_decodes(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidObject, match=why):
        cbor.decode(raw)


def test_links_must_hold_valid_cids() -> None:
    good = b"\xd8\x2a" + bytes([0x58, len(LINKS[0]) + 1]) + b"\x00" + LINKS[0]
    assert cbor.decode(good) == Link(LINKS[0])
    broken = good[:-1]
    with pytest.raises(InvalidObject):
        cbor.decode(bytes([broken[0], broken[1], 0x58, len(LINKS[0])]) + broken[4:])
    assert is_cid(LINKS[0]) and not is_cid(LINKS[0][:-1]) and not is_cid(b"")


def test_encoder_refuses_what_dag_cbor_cannot_hold() -> None:
    for bad in (1.5, {1: 2}, 2**64, -(2**64) - 1, object(), Link(b"\x01\x02")):
        with pytest.raises(ValueError):
            cbor.encode(bad)


def test_cid_prefixes_agree_with_multiformats() -> None:
    """ids builds CID prefixes by hand (no multiformats import on hot paths)."""
    from casync.model.cid import HASHES

    for codec, name in ((RAW, "raw"), (DAG_PB, "dag-pb"), (DAG_CBOR, "dag-cbor")):
        for h in HASHES:
            cid = compute_cid(codec, b"x", h)
            parsed = CID.decode(cid)
            assert (parsed.version, parsed.codec.name, parsed.hashfun.name) == (1, name, h)
            assert bytes(parsed.raw_digest) == HASHES[h](b"x") and bytes(parsed) == cid
