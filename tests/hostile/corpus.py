"""A corpus of hostile histories, built by code (no binary blobs): each :class:`Case` is a
block stream in the order a sender would send it (post-order, the tip commit last) whose
every byte is chosen by an attacker.  Every case must be refused on receipt, at every entry
point, with a typed error naming a CID of the case, nothing stored and no ref moved.

The bytes are written by the small encoders here, not by casync's, so they can break any
rule casync's encoders enforce (key order, minimal lengths, field ranges).  git's CVE
history is the checklist for names: CVE-2014-9390 (``.git`` in a case or Unicode disguise),
CVE-2018-11235 (``..`` in a name that becomes a path), CVE-2021-21300 and CVE-2024-32002 (a
reserved directory reached through a symlink or a case-folded name)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_str, compute_cid, varint
from casync.model.murmur3 import murmur3_x64_64

__all__ = ["CASES", "RID", "Case"]

RID = "hostile-repo"
T0 = 1_700_000_000_000  # a wall time in the past (ms)


class Link(bytes):
    """A CBOR tag-42 link, for :func:`cbor`."""


class Ordered(dict[str, Any]):
    """A map :func:`cbor` writes in insertion order (canonical order sorts by length, then bytes)."""


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor(obj: Any) -> bytes:
    """DAG-CBOR as an attacker writes it: any integer up to 2^64-1, floats, any key order."""
    if obj is True or obj is False:
        return b"\xf5" if obj else b"\xf4"
    if obj is None:
        return b"\xf6"
    if isinstance(obj, int):
        return _head(0, obj) if obj >= 0 else _head(1, -1 - obj)
    if isinstance(obj, float):
        return b"\xfb" + struct.pack(">d", obj)
    if isinstance(obj, Link):
        return b"\xd8\x2a" + cbor(b"\x00" + bytes(obj))
    if isinstance(obj, bytes):
        return _head(2, len(obj)) + obj
    if isinstance(obj, str):
        raw = obj.encode()
        return _head(3, len(raw)) + raw
    if isinstance(obj, list):
        return _head(4, len(obj)) + b"".join(cbor(x) for x in obj)
    if isinstance(obj, dict):
        keys = list(obj) if isinstance(obj, Ordered) else sorted(obj, key=lambda k: (len(k.encode()), k.encode()))
        return _head(5, len(obj)) + b"".join(cbor(k) + cbor(obj[k]) for k in keys)
    raise TypeError(type(obj))


def pbf(tag: int, value: bytes | int) -> bytes:
    """One protobuf field: bytes (wire type 2) or a varint (wire type 0)."""
    if isinstance(value, int):
        return varint(tag << 3) + varint(value)
    return varint(tag << 3 | 2) + varint(len(value)) + value


def pblink(cid: bytes, name: bytes | None = b"", tsize: int | None = 0) -> bytes:
    body = pbf(1, cid) + (pbf(2, name) if name is not None else b"") + (pbf(3, tsize) if tsize is not None else b"")
    return pbf(2, body)


def unixfs(kind: int, data: bytes | None = None, filesize: int | None = None,
           blocksizes: tuple[int, ...] = ()) -> bytes:
    out = pbf(1, kind)
    if data is not None:
        out += pbf(2, data)
    if filesize is not None:
        out += pbf(3, filesize)
    for size in blocksizes:
        out += pbf(4, size)
    return out


DIR_DATA = unixfs(1)


@dataclass
class Case:
    """One attack: its block stream (tip last) and the CIDs an error may name."""

    name: str
    blocks: list[tuple[Cid, bytes]] = field(default_factory=list)

    @property
    def tip(self) -> Cid:
        return self.blocks[-1][0]

    def names(self) -> set[str]:
        return {cid_str(c) for c, _ in self.blocks} | {cid_str(c) for c in self.extra}

    extra: list[Cid] = field(default_factory=list)  # CIDs named inside the blocks (not sent)

    def add(self, codec: int, block: bytes) -> Cid:
        cid = compute_cid(codec, block)
        self.blocks.append((cid, block))
        return cid


def _dir(case: Case, entries: list[tuple[bytes, Cid, int]], sort: bool = True, data: bytes = DIR_DATA) -> Cid:
    items = sorted(entries) if sort else entries
    return case.add(DAG_PB, b"".join(pblink(c, n, s) for n, c, s in items) + pbf(1, data))


def _commit_obj(root: Cid, **over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"v": 1, "tree": Link(root), "parents": [], "clock": {"evil": 1},
                           "time": {"wall_ms": T0, "logical": 0}, "replica": "evil", "author": "mallory",
                           "message": "hostile", "generation": 1, "meta": {}}
    obj.update(over)
    return obj


def _empty_tree(case: Case) -> Cid:
    return _dir(case, [])


def commit_case(name: str, **over: Any) -> Case:
    """A root commit of the empty tree with some fields replaced."""
    case = Case(name)
    tree = _empty_tree(case)
    case.add(DAG_CBOR, cbor(_commit_obj(tree, **over)))
    return case


def child_case(name: str, **over: Any) -> Case:
    """A good root commit, then a child of it with fields replaced (derived-field attacks)."""
    case = Case(name)
    tree = _empty_tree(case)
    parent = case.add(DAG_CBOR, cbor(_commit_obj(tree)))
    fields: dict[str, Any] = {"parents": [Link(parent)], "clock": {"evil": 2}, "generation": 2,
                              "time": {"wall_ms": T0 + 1, "logical": 0}}
    fields.update(over)
    case.add(DAG_CBOR, cbor(_commit_obj(tree, **fields)))
    return case


def tree_case(name: str, build: Callable[[Case], Cid]) -> Case:
    """A root commit whose tree ``build`` makes."""
    case = Case(name)
    tree = build(case)
    case.add(DAG_CBOR, cbor(_commit_obj(tree)))
    return case


def _named(name: bytes, sub: Callable[[Case], tuple[Cid, int]] | None = None) -> Callable[[Case], Cid]:
    """A tree with one entry called ``name`` (a file, or ``sub``'s node)."""
    def build(case: Case) -> Cid:
        cid, size = sub(case) if sub is not None else (case.add(RAW, b"owned\n"), 6)
        return _dir(case, [(name, cid, size)])
    return build


def _leaf(case: Case, data: bytes = b"x" * 100) -> Cid:
    return case.add(RAW, data)


def _file_node(case: Case, links: list[tuple[Cid, int]], data: bytes | None = None,
               filesize: int | None = None, sizes: tuple[int, ...] | None = None) -> Cid:
    blocksizes = sizes if sizes is not None else tuple(s for _c, s in links)
    total = filesize if filesize is not None else len(data or b"") + sum(blocksizes)
    body = b"".join(pblink(c, b"", s) for c, s in links)
    return case.add(DAG_PB, body + pbf(1, unixfs(2, data, total, blocksizes)))


def _in_tree(node: Callable[[Case], Cid]) -> Callable[[Case], Cid]:
    def build(case: Case) -> Cid:
        return _dir(case, [(b"f", node(case), 1)])
    return build


def _deep_file(levels: int) -> Callable[[Case], Cid]:
    def node(case: Case) -> Cid:
        cid = _leaf(case, b"deep")
        for _ in range(levels):
            cid = _file_node(case, [(cid, 4)])
        return cid
    return node


def _deep_dirs(levels: int) -> Callable[[Case], Cid]:
    def build(case: Case) -> Cid:
        cid = _dir(case, [(b"f", _leaf(case), 100)])
        for _ in range(levels):
            cid = _dir(case, [(b"d", cid, 1)])
        return cid
    return build


def _shard(case: Case, links: list[tuple[bytes, Cid, int]], bitfield: bytes | None = None, fanout: int = 256,
           hash_type: int = 0x22, extra: bytes = b"") -> Cid:
    """A HAMT shard node with ``links`` as given (names with their prefixes); the bitfield
    from the prefixes unless given."""
    if bitfield is None:
        bits = sum(1 << int(name[:2], 16) for name, _, _ in links)
        bitfield = bits.to_bytes((bits.bit_length() + 7) // 8, "big")
    data = pbf(1, 5) + pbf(2, bitfield) + pbf(5, hash_type) + pbf(6, fanout) + extra
    return case.add(DAG_PB, b"".join(pblink(c, n, s) for n, c, s in links) + pbf(1, data))


def _bucket(name: bytes, depth: int = 0) -> int:
    return murmur3_x64_64(name)[depth]


def _hamt(name: bytes, bucket: int | None = None, **shard: Any) -> Callable[[Case], Cid]:
    """A HAMT root holding one file ``name`` (in its own bucket unless ``bucket`` says)."""
    def build(case: Case) -> Cid:
        leaf = _leaf(case)
        where = _bucket(name) if bucket is None else bucket
        return _shard(case, sorted([(b"%02X" % where + name, leaf, 100), *_filler(case, name, where)]), **shard)
    return build


def _filler(case: Case, name: bytes, taken: int) -> list[tuple[bytes, Cid, int]]:
    """A second, well-placed entry (so the root is not a lone entry)."""
    for i in range(1000):
        other = b"other-%d" % i
        if _bucket(other) != taken and other != name:
            return [(b"%02X" % _bucket(other) + other, case.add(RAW, b"other\n"), 6)]
    raise AssertionError("no filler name")


def _hamt_deep(case: Case) -> Cid:
    """Sub-shards nested 9 levels, each in the bucket the one entry's hash gives at its
    depth: one level more than 64 hash bits can address."""
    name = b"deep"
    h = murmur3_x64_64(name)
    cid = _shard(case, [(b"00" + name, _leaf(case), 100)])
    for depth in range(7, -1, -1):
        cid = _shard(case, [(b"%02X" % h[depth], cid, 1000)])
    return cid


def _named_in(want: Callable[[int], bool], start: int = 0) -> bytes:
    """A name whose root bucket satisfies ``want``."""
    return next(b"n%d" % i for i in range(start, start + 100000) if want(_bucket(b"n%d" % i)))


def _lower_case_prefix(case: Case) -> Cid:
    name = _named_in(lambda b: b >= 0xA0)
    return _shard(case, [(b"%02x" % _bucket(name) + name, _leaf(case), 100)])


def _out_of_order(case: Case) -> Cid:
    a = _named_in(lambda b: b < 0x80)
    b = _named_in(lambda x: x >= 0x80)
    return _shard(case, [(b"%02X" % _bucket(b) + b, _leaf(case), 100), (b"%02X" % _bucket(a) + a, _leaf(case), 100)])


def _hamt_cases() -> Iterator[Case]:
    yield tree_case("HAMT fanout 512", _hamt(b"f", fanout=512))
    yield tree_case("HAMT hash type sha2-256", _hamt(b"f", hash_type=0x12))
    yield tree_case("HAMT bitfield with a leading zero byte", _hamt(b"f", bitfield=b"\0" + b"\xff" * 32))
    yield tree_case("HAMT bitfield wider than the fanout", _hamt(b"f", bitfield=b"\x01" + b"\xff" * 32))
    yield tree_case("HAMT bitfield names an empty bucket", _hamt(b"f", bitfield=b"\xff" * 32))
    yield tree_case("HAMT shard with mtime", _hamt(b"f", extra=pbf(8, pbf(1, 5))))
    yield tree_case("HAMT entry in the wrong bucket", _hamt(b"f", bucket=(_bucket(b"f") + 1) % 256))
    yield tree_case("HAMT entry named .casync", _hamt(b".casync"))
    yield tree_case("HAMT entry named ..", _hamt(b".."))
    yield tree_case("HAMT link prefix in lower case", _lower_case_prefix)
    yield tree_case("HAMT links out of bucket order", _out_of_order)
    yield tree_case("HAMT sub-shard link to a raw block", lambda c: _shard(c, [(b"00", _leaf(c), 100)]))
    yield tree_case("HAMT sub-shard that is a plain directory", lambda c: _shard(
        c, [(b"00", _dir(c, [(b"a", _leaf(c), 100)]), 200)]))
    yield tree_case("HAMT duplicate names", _hamt_duplicate)
    yield tree_case("HAMT sub-shards nested 9 deep", _hamt_deep)


def _hamt_duplicate(case: Case) -> Cid:
    """The same name at the root and inside a sub-shard of its bucket."""
    name = b"twice"
    b0, b1 = _bucket(name), _bucket(name, 1)
    other = next(b"o%d" % i for i in range(10000) if _bucket(b"o%d" % i) == b0 and _bucket(b"o%d" % i, 1) != b1)
    sub = _shard(case, sorted([(b"%02X" % b1 + name, _leaf(case), 100),
                               (b"%02X" % _bucket(other, 1) + other, _leaf(case, b"y"), 1)]))
    return _shard(case, sorted([(b"%02X" % b0, sub, 300), (b"%02X" % ((b0 + 1) % 256) + name, _leaf(case), 100)]))


def _raw_node(body: bytes) -> Callable[[Case], Cid]:
    return lambda case: case.add(DAG_PB, body)


def _bad_link(cid: bytes) -> Callable[[Case], Cid]:
    return lambda case: case.add(DAG_PB, pblink(cid, b"x", 1) + pbf(1, DIR_DATA))


def _symlink_with_link(case: Case) -> Cid:
    leaf = _leaf(case)
    return case.add(DAG_PB, pblink(leaf, b"", 100) + pbf(1, unixfs(4, b"/etc")))


def _file_to_dir(case: Case) -> Cid:
    sub = _dir(case, [(b"f", _leaf(case), 100)])
    return case.add(DAG_PB, pblink(sub, b"", 10) + pbf(1, unixfs(2, None, 10, (10,))))


def _symlink_then_reserved(case: Case) -> Cid:
    """CVE-2024-32002 / CVE-2021-21300 shape: a symlink ``a`` to ``.casync`` and a directory
    ``A`` whose ``.Casync`` entry a case-folding file system would write through it."""
    link = case.add(DAG_PB, pbf(1, unixfs(4, b".casync")))
    inner = _dir(case, [(b".Casync", _leaf(case), 100)])
    return _dir(case, [(b"A", inner, 1), (b"a", link, 1)])


def _commit_cases() -> Iterator[Case]:
    yield commit_case("wall time 2^63", time={"wall_ms": 1 << 63, "logical": 0})
    yield commit_case("wall time 2^64-1", time={"wall_ms": (1 << 64) - 1, "logical": 0})
    yield commit_case("wall time negative", time={"wall_ms": -1, "logical": 0})
    yield commit_case("logical 2^32", time={"wall_ms": T0, "logical": 1 << 32})
    yield commit_case("logical 2^64-1", time={"wall_ms": T0, "logical": (1 << 64) - 1})
    yield commit_case("time as float", time={"wall_ms": float(T0), "logical": 0})
    yield commit_case("time with extra field", time={"wall_ms": T0, "logical": 0, "x": 1})
    yield commit_case("generation 2^64-1", generation=(1 << 64) - 1)
    yield commit_case("generation 0", generation=0)
    yield commit_case("generation 2 on a root", generation=2)
    yield commit_case("generation as bool", generation=True)
    yield commit_case("own clock entry 2^64-1", clock={"evil": (1 << 64) - 1})
    yield commit_case("other clock entry 2^64-1", clock={"evil": 1, "other": (1 << 64) - 1})
    yield commit_case("own clock entry 2 on a root", clock={"evil": 2})
    yield commit_case("clock without own replica", clock={"other": 1})
    yield commit_case("clock entry negative", clock={"evil": 1, "other": -1})
    yield commit_case("clock key not a replica id", clock={"evil": 1, "../x": 1})
    yield commit_case("replica ../x", replica="../x", clock={"../x": 1})
    yield commit_case("replica with NUL", replica="ev\x00il", clock={"ev\x00il": 1})
    yield commit_case("unknown field", extra="x")
    yield commit_case("format version 2", v=2)
    yield commit_case("message as bytes", message=b"hostile")
    yield commit_case("meta value an integer", meta={"k": 1})
    yield commit_case("signature a string", sig="AAAA")
    yield commit_case("parent twice", parents=[Link(compute_cid(DAG_CBOR, b"\xa0"))] * 2, generation=2,
                      clock={"evil": 2})
    fake = [Link(compute_cid(DAG_CBOR, cbor({"n": i}))) for i in range(65)]
    yield commit_case("65 parents", parents=fake, generation=2, clock={"evil": 2})
    yield commit_case("parent not a commit CID", parents=[Link(compute_cid(DAG_PB, DIR_DATA))], generation=2,
                      clock={"evil": 2})
    yield commit_case("tree a raw CID", tree=Link(compute_cid(RAW, b"x")))
    yield commit_case("tree an empty CID", tree=Link(b""))
    yield commit_case("time a year ahead", time={"wall_ms": 4_102_444_800_000, "logical": 0})
    yield child_case("child generation 5", generation=5)
    yield child_case("child clock skips", clock={"evil": 3})
    yield child_case("child time not after parent", time={"wall_ms": T0, "logical": 0})
    yield child_case("child without own increment", clock={"evil": 1, "other": 1})
    case = commit_case("keys out of canonical order")
    tree = case.blocks[0][0]
    obj = Ordered(_commit_obj(tree))
    obj = Ordered(reversed(list(obj.items())))
    case.blocks[-1] = (compute_cid(DAG_CBOR, cbor(obj)), cbor(obj))
    yield case
    case = commit_case("non-minimal integer head")
    block = cbor(_commit_obj(case.blocks[0][0])).replace(b"\x67message", b"\x78\x07message", 1)
    case.blocks[-1] = (compute_cid(DAG_CBOR, block), block)
    yield case


def _unixfs_cases() -> Iterator[Case]:
    yield tree_case("dag-pb link with an empty CID", _bad_link(b""))
    yield tree_case("dag-pb link with a garbage CID", _bad_link(b"\x01\x70\x1e\x05abc"))
    yield tree_case("UnixFS Type repeated", _raw_node(pbf(1, pbf(1, 1) + pbf(1, 1))))
    yield tree_case("UnixFS hashType field 5", _raw_node(pbf(1, pbf(1, 1) + pbf(5, 0x22))))
    yield tree_case("UnixFS fanout field 6", _raw_node(pbf(1, pbf(1, 1) + pbf(6, 256))))
    yield tree_case("UnixFS mtime field 8", _raw_node(pbf(1, pbf(1, 1) + pbf(8, pbf(1, 5)))))
    yield tree_case("UnixFS fields out of order", _in_tree(_raw_node(pbf(1, pbf(3, 4) + pbf(1, 2) + pbf(2, b"abcd")))))
    yield tree_case("UnixFS without Type", _raw_node(pbf(1, pbf(3, 0))))
    yield tree_case("UnixFS unknown type 9", _in_tree(_raw_node(pbf(1, pbf(1, 9)))))
    yield tree_case("UnixFS HAMT shard without entries", _raw_node(pbf(1, pbf(1, 5) + pbf(5, 0x22) + pbf(6, 256))))
    yield tree_case("dag-pb Data before Links", lambda c: c.add(DAG_PB, pbf(1, DIR_DATA) + pblink(_leaf(c), b"f", 100)))
    yield tree_case("dag-pb non-minimal length", _raw_node(b"\x0a\x82\x00" + DIR_DATA))
    yield tree_case("dag-pb unknown field", _raw_node(pbf(3, b"x") + pbf(1, DIR_DATA)))
    yield tree_case("dag-pb without Data", lambda c: c.add(DAG_PB, pblink(_leaf(c), b"f", 100)))
    yield tree_case("directory links unsorted", lambda c: _dir(c, [(b"b", _leaf(c), 100), (b"a", _leaf(c, b"y"), 1)],
                                                               sort=False))
    yield tree_case("directory names duplicated", lambda c: _dir(c, [(b"a", _leaf(c), 100)] * 2, sort=False))
    yield tree_case("directory carrying file data", lambda c: _dir(c, [], data=unixfs(1, b"x", 1)))
    yield tree_case("file blocksizes fewer than links", _in_tree(lambda c: _file_node(c, [(_leaf(c), 100)], sizes=())))
    yield tree_case("file claims more than it holds", _in_tree(lambda c: _file_node(c, [(_leaf(c), 100)],
                                                                                     filesize=1 << 40)))
    yield tree_case("file lies about a child's size", _in_tree(lambda c: _file_node(c, [(_leaf(c), 1 << 30)])))
    yield tree_case("file node linking to a directory", _in_tree(_file_to_dir))
    yield tree_case("file node with named links", _in_tree(lambda c: c.add(
        DAG_PB, pblink(_leaf(c), b"n", 100) + pbf(1, unixfs(2, None, 100, (100,))))))
    yield tree_case("file DAG 10,000 levels deep", _in_tree(_deep_file(10_000)))
    yield tree_case("file node 5000 links wide", _in_tree(lambda c: _file_node(c, [(_leaf(c), 100)] * 5000)))
    yield tree_case("directories 300 levels deep", _deep_dirs(300))
    yield tree_case("symlink with links", _in_tree(_symlink_with_link))
    yield tree_case("symlink without target", _in_tree(_raw_node(pbf(1, unixfs(4)))))


def _name_cases() -> Iterator[Case]:
    names: list[tuple[str, bytes]] = [
        ("CVE-2014-9390 .casync", b".casync"), ("CVE-2014-9390 .CASYNC", b".CASYNC"),
        ("CVE-2014-9390 .casync.", b".casync."), ("CVE-2014-9390 .casync space", b".casync "),
        ("CVE-2014-9390 HFS+ ignorable", ".cas\u200cync".encode()),
        ("CVE-2014-9390 fullwidth dot", "\uff0ecasync".encode()),
        ("CVE-2018-11235 ..", b".."), ("CVE-2018-11235 ../evil", b"../evil"), ("name .", b"."),
        ("name with slash", b"a/b"), ("name with backslash", b"a\\b"), ("empty name", b""),
        ("name with NUL", b"a\x00b"), ("name with newline", b"x\ny"), ("name of 256 bytes", b"a" * 256),
        ("name not UTF-8", b"\xff\xfe"), ("absolute name", b"/etc"),
    ]
    for label, name in names:
        yield tree_case(label, _named(name))

    def nested(case: Case) -> tuple[Cid, int]:
        return _dir(case, [(b".casync", _leaf(case), 100)]), 1
    yield tree_case("CVE-2018-11235 .casync in a subdirectory", _named(b"sub", nested))
    yield tree_case("CVE-2024-32002 symlink and case-folded reserved dir", _symlink_then_reserved)


CASES: list[Case] = [*_commit_cases(), *_unixfs_cases(), *_hamt_cases(), *_name_cases()]
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
