"""UnixFS HAMT-sharded directories, encoded exactly as Kubo (boxo's ``hamt``) writes them.

The rules (docs/design.md §3.3 says them for a second implementation):

- A directory is sharded when its *estimate*, the sum over its entries of the name's
  UTF-8 length plus the entry CID's byte length, exceeds :data:`HAMT_THRESHOLD`
  (256 KiB; Kubo's default ``Import.UnixFSHAMTDirectorySizeEstimation = "links"``);
  at or below it, it is a plain UnixFS Directory.
- A name's place is read from ``murmur3_x64_64(name)``, 8 bits per level, most
  significant byte first: byte ``d`` is the bucket at depth ``d`` (fanout 256, so at
  most 8 levels).
- A shard at depth ``d`` holding entries S: each non-empty bucket ``i`` is either the one
  entry in it, linked as ``"%02X" % i + name``, or (two or more) a sub-shard at depth
  ``d + 1`` linked as ``"%02X" % i``.  Links in bucket order; the node's UnixFS Data is
  ``Type=HAMTShard(5), Data=bitfield, hashType=0x22, fanout=256``, the bitfield the
  big-endian bytes of ``sum(1 << i)`` without leading zeros.  The structure is a
  function of the entry set alone (Kubo collapses a sub-shard left with one entry), so
  any two writers agree on every CID.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

from casync.errors import InvalidObject, LimitExceeded
from casync.model.cid import DAG_PB, Cid, compute_cid
from casync.model.murmur3 import murmur3_x64_64
from casync.model.objects import (
    UNIXFS_HAMT_SHARD,
    PBLink,
    PBNode,
    UnixFSData,
    encode_pbnode,
    encode_unixfs,
)

__all__ = [
    "HAMT_FANOUT",
    "HAMT_MAX_DEPTH",
    "HAMT_MURMUR3",
    "HAMT_THRESHOLD",
    "HamtEntry",
    "ShardLink",
    "build_hamt",
    "build_subshard",
    "encode_shard_links",
    "entry_estimate",
    "name_hash",
    "shard_links",
    "sharded",
]

HAMT_FANOUT = 256
HAMT_MURMUR3 = 0x22
HAMT_THRESHOLD = 256 * 1024
HAMT_MAX_DEPTH = 8
"""64 hash bits at 8 a level: a deeper shard cannot be addressed (two names with one hash
cannot share a directory; Kubo refuses them too, "sharded directory too deep")."""

_PREFIX = 2  # hex digits of an index below the fanout
_HEX = frozenset(b"0123456789ABCDEF")

Emit = Callable[[Cid, bytes], object]


class HamtEntry(NamedTuple):
    """A directory entry to place: its name's hash, name (UTF-8), CID and Tsize."""

    hash: bytes
    name: bytes
    cid: Cid
    tsize: int


class ShardLink(NamedTuple):
    """One link of a shard node: its bucket, the entry's name (None: a sub-shard)."""

    bucket: int
    name: bytes | None
    cid: Cid
    tsize: int


def name_hash(name: bytes) -> bytes:
    return murmur3_x64_64(name)


def entry_estimate(name: bytes, cid: Cid) -> int:
    """An entry's share of the directory size estimate (Kubo's "links" estimation)."""
    return len(name) + len(cid)


def sharded(estimate: int) -> bool:
    """Whether a directory with this estimate is a HAMT (strictly above the threshold)."""
    return estimate > HAMT_THRESHOLD


def _encode_shard(links: list[PBLink], bits: int) -> bytes:
    bitfield = bits.to_bytes((bits.bit_length() + 7) // 8, "big") if bits else None
    data = encode_unixfs(UnixFSData(UNIXFS_HAMT_SHARD, data=bitfield, hash_type=HAMT_MURMUR3, fanout=HAMT_FANOUT))
    return encode_pbnode(PBNode(tuple(links), data))


def build_hamt(entries: list[HamtEntry], emit: Emit, hash_name: str) -> tuple[Cid, int]:
    """Write the HAMT of ``entries`` (sorted here by hash), each shard through ``emit``;
    return the root's CID and Tsize.  Entries must have distinct names."""
    return build_subshard(entries, 0, emit, hash_name)


def build_subshard(entries: list[HamtEntry], depth: int, emit: Emit, hash_name: str) -> tuple[Cid, int]:
    """The shard at ``depth`` of ``entries`` (whose hashes share their first ``depth`` bytes)."""
    entries.sort()
    for a, b in itertools.pairwise(entries):
        if a.hash == b.hash:
            what = "twice" if a.name == b.name else f"with the same hash as {b.name!r}"
            raise InvalidObject(f"directory entry {a.name!r} {what}: it cannot be placed in a HAMT")
    return _build(entries, 0, len(entries), depth, emit, hash_name)


def _build(entries: Sequence[HamtEntry], lo: int, hi: int, depth: int, emit: Emit, hash_name: str) -> tuple[Cid, int]:
    links: list[PBLink] = []
    bits = 0
    i = lo
    while i < hi:
        index = entries[i].hash[depth]
        j = i + 1
        while j < hi and entries[j].hash[depth] == index:
            j += 1
        bits |= 1 << index
        if j - i == 1:
            e = entries[i]
            links.append(PBLink(e.cid, b"%02X" % index + e.name, e.tsize))
        else:
            if depth + 1 >= HAMT_MAX_DEPTH:  # (unreachable: distinct hashes part by depth 8)
                raise LimitExceeded("a HAMT would be deeper than 8 levels")
            cid, tsize = _build(entries, i, j, depth + 1, emit, hash_name)
            links.append(PBLink(cid, b"%02X" % index, tsize))
        i = j
    block = _encode_shard(links, bits)
    cid = compute_cid(DAG_PB, block, hash_name)
    emit(cid, block)
    return cid, len(block) + sum(link.tsize or 0 for link in links)


def encode_shard_links(links: Sequence[ShardLink]) -> bytes:
    """A shard node from its links (in bucket order), for updates of one bucket path."""
    bits = 0
    out = []
    for link in links:
        bits |= 1 << link.bucket
        out.append(PBLink(link.cid, b"%02X" % link.bucket + (link.name or b""), link.tsize))
    return _encode_shard(out, bits)


def shard_links(node: PBNode, u: UnixFSData) -> list[ShardLink]:
    """The links of a shard node, after the checks it passes on its own: murmur3 and a
    fanout of 256, a minimal bitfield naming exactly the links' buckets, in order, each
    link named by its bucket's two upper-case hex digits (then the entry's name)."""
    if u.type != UNIXFS_HAMT_SHARD:
        raise InvalidObject("not a HAMT shard")
    if u.hash_type != HAMT_MURMUR3:
        raise InvalidObject(f"HAMT shard with hash type {u.hash_type} (only murmur3-x64-64, 0x22, is read)")
    if u.fanout != HAMT_FANOUT:
        raise InvalidObject(f"HAMT shard with fanout {u.fanout} (only {HAMT_FANOUT} is read)")
    if u.filesize is not None or u.blocksizes:
        raise InvalidObject("HAMT shard carries file sizes")
    bitfield = u.data or b""
    if len(bitfield) > HAMT_FANOUT // 8 or bitfield[:1] == b"\0":
        raise InvalidObject("HAMT shard bitfield is not the minimal encoding of at most 256 bits")
    bits = int.from_bytes(bitfield, "big")
    if not node.links:
        raise InvalidObject("HAMT shard without entries (nobody writes one: an empty directory is plain)")
    out: list[ShardLink] = []
    for link in node.links:
        name = link.name or b""
        if len(name) < _PREFIX or not _HEX.issuperset(name[:_PREFIX]):
            raise InvalidObject(f"HAMT shard link {name[:40]!r} does not start with two upper-case hex digits")
        index = int(name[:_PREFIX], 16)
        if out and index <= out[-1].bucket:
            raise InvalidObject("HAMT shard links are not in bucket order, or share a bucket")
        if not bits >> index & 1:
            raise InvalidObject(f"HAMT shard link in bucket {index:02X}, which its bitfield leaves empty")
        out.append(ShardLink(index, name[_PREFIX:] if len(name) > _PREFIX else None, link.cid, link.tsize or 0))
    if bits.bit_count() != len(out):
        raise InvalidObject(f"HAMT shard bitfield names {bits.bit_count()} buckets, the node has {len(out)} links")
    return out
