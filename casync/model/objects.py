"""Object codecs: raw leaves, UnixFS (dag-pb) files, directories and symlinks, tree entries.

Pure functions, no I/O.  Every decoder is strict: bytes that are not the canonical
encoding of the object they claim to be raise :class:`InvalidObject`, because a
content-addressed store must never hold two encodings of one value.  See
``docs/design.md`` for the byte-level formats.  Commits (DAG-CBOR) are
:mod:`casync.model.commit`'s; their names are re-exported here for the modules that
still import them from this one (``casync.worktree.merging``, ``casync.merge.threeway``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from casync.errors import InvalidObject
from casync.model.cid import (
    DAG_PB,
    Cid,
    compute_cid,
    is_cid,
    read_varint,
    varint,
)

__all__ = [
    "entry_key",
    "same_entry",
    "MAX_BLOCK_SIZE",
    "MAX_LINKS_PER_FILE_NODE",
    "MAX_FILE_DEPTH",
    "MAX_FILE_LINKS",
    "MAX_TREE_DEPTH",
    "UNIXFS_DIRECTORY",
    "UNIXFS_FILE",
    "UNIXFS_HAMT_SHARD",
    "UNIXFS_RAW",
    "UNIXFS_SYMLINK",
    "FileLayoutBuilder",
    "PBLink",
    "PBNode",
    "UnixFSData",
    "decode_pbnode",
    "decode_unixfs",
    "encode_directory",
    "encode_pbnode",
    "encode_symlink",
    "encode_unixfs",
    "DirLink",
    "Entry",
    "Kind",
    # re-exported from casync.model.commit
]

MAX_BLOCK_SIZE = 1 << 20
"""Largest block casync writes or accepts (Kubo < 0.40 rejects larger blocks)."""

MAX_LINKS_PER_FILE_NODE = 174
"""Kubo's balanced-layout fan-out; keeps our file DAGs identical to ``ipfs add``."""

MAX_FILE_LINKS = 4096
"""Widest file node accepted (Kubo writes 174; other importers use up to 1024)."""

MAX_FILE_DEPTH = 32
"""Deepest file DAG accepted, in node levels above the leaves (174^32 leaves is beyond any disk)."""

MAX_TREE_DEPTH = 256
"""Deepest directory nesting accepted (a path of 256 directories is already absurd; the
tree-update helpers that recurse by path depth stay far from Python's recursion limit)."""

UNIXFS_RAW = 0
UNIXFS_DIRECTORY = 1
UNIXFS_FILE = 2
UNIXFS_SYMLINK = 4
UNIXFS_HAMT_SHARD = 5


# --- protobuf primitives -------------------------------------------------------------------------

_PB_VARINT = "protobuf varint"



def _bytes_field(tag: int, value: bytes) -> bytes:
    return varint(tag << 3 | 2) + varint(len(value)) + value


def _varint_field(tag: int, value: int) -> bytes:
    return varint(tag << 3) + varint(value)


def _fields(buf: bytes | memoryview) -> Iterable[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) with value an int or a bytes slice."""
    pos = 0
    end = len(buf)
    while pos < end:
        key = buf[pos]  # one-byte keys and lengths (nearly all of them) skip read_varint
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, _PB_VARINT)
        tag, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, _PB_VARINT)
            yield tag, wire, value
        elif wire == 2:
            if pos < end and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = read_varint(buf, pos, _PB_VARINT)
            if pos + length > end:
                raise InvalidObject("truncated protobuf field")
            yield tag, wire, bytes(buf[pos : pos + length])
            pos += length
        else:
            raise InvalidObject(f"unexpected protobuf wire type {wire}")


# --- dag-pb --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PBLink:
    cid: Cid
    name: bytes | None
    tsize: int | None


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...]
    data: bytes | None


def encode_pbnode(node: PBNode) -> bytes:
    """Canonical dag-pb: Links (field 2) before Data (field 1); link fields Hash, Name, Tsize."""
    v = varint
    parts: list[bytes] = []
    for link in node.links:
        cid, name, tsize = link.cid, link.name, link.tsize
        body = [b"\x0a", v(len(cid)), cid]
        if name is not None:
            body += (b"\x12", v(len(name)), name)
        if tsize is not None:
            body += (b"\x18", v(tsize))
        encoded = b"".join(body)
        parts += (b"\x12", v(len(encoded)), encoded)
    if node.data is not None:
        parts += (b"\x0a", v(len(node.data)), node.data)
    return b"".join(parts)


_DECODED: dict[bytes, PBNode] = {}  # large nodes by their bytes, the oldest dropped first
_DECODED_MIN = 8192  # a directory of ~100 entries and up: decoding costs ~1 ms a 1,000 links
_DECODED_MAX = 8  # at most ~2 MiB of blocks (a plain directory's links stay under 256 KiB)


def decode_pbnode(buf: bytes | memoryview) -> PBNode:
    """A dag-pb node, strictly: see :func:`_decode_pbnode_fields`.  The common shape (links
    of Hash, Name, Tsize with one-byte keys and lengths, then Data) is read by a flat loop
    at about a third of the cost; anything else (or anything wrong) goes to the field-by-field
    reader, which accepts exactly the same nodes and names what is wrong.

    The last few large nodes are kept decoded, by their bytes (a node is immutable, and the
    answer depends on the bytes alone): a merge, checkout or status reads the same big root
    directories of three or four trees dozens of times."""
    if len(buf) < _DECODED_MIN:
        node = _decode_pbnode_flat(buf)
        return node if node is not None else _decode_pbnode_fields(buf)
    key = buf if isinstance(buf, bytes) else bytes(buf)
    hit = _DECODED.get(key)
    if hit is not None:
        return hit
    decoded = _decode_pbnode_flat(key)
    if decoded is None:
        decoded = _decode_pbnode_fields(key)
    if len(_DECODED) >= _DECODED_MAX:
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread dropped it first
            del _DECODED[next(iter(_DECODED))]
    _DECODED[key] = decoded
    return decoded


def _decode_pbnode_flat(buf: bytes | memoryview) -> PBNode | None:
    """The node, or None when it is not of the common shape (then the full reader decides)."""
    links: list[PBLink] = []
    end = len(buf)
    pos = 0
    while pos < end and buf[pos] == 0x12:  # Links
        if pos + 1 >= end or buf[pos + 1] >= 0x80:
            return None
        link_end = pos + 2 + buf[pos + 1]
        pos += 2
        if link_end > end or pos + 1 >= link_end or buf[pos] != 0x0A or buf[pos + 1] >= 0x80:
            return None
        cid_end = pos + 2 + buf[pos + 1]
        if cid_end > link_end:
            return None
        cid = bytes(buf[pos + 2 : cid_end])
        pos = cid_end
        name: bytes | None = None
        tsize: int | None = None
        if pos < link_end and buf[pos] == 0x12:
            if pos + 1 >= link_end or buf[pos + 1] >= 0x80:
                return None
            name_end = pos + 2 + buf[pos + 1]
            if name_end > link_end:
                return None
            name = bytes(buf[pos + 2 : name_end])
            pos = name_end
        if pos < link_end and buf[pos] == 0x18:
            try:
                tsize, pos = read_varint(buf, pos + 1, _PB_VARINT)
            except InvalidObject:
                return None
        if pos != link_end or not is_cid(cid):
            return None
        links.append(PBLink(cid, name, tsize))
    data: bytes | None = None
    if pos < end:
        if buf[pos] != 0x0A:
            return None
        try:
            length, start = read_varint(buf, pos + 1, _PB_VARINT)
        except InvalidObject:
            return None
        if start + length != end:
            return None
        data = bytes(buf[start:end])
    return PBNode(tuple(links), data)


def _decode_pbnode_fields(buf: bytes | memoryview) -> PBNode:
    links: list[PBLink] = []
    data: bytes | None = None
    seen_data = False
    for tag, wire, value in _fields(buf):
        if tag == 2 and wire == 2:
            if seen_data:
                raise InvalidObject("dag-pb: Links after Data (not canonical)")
            links.append(_decode_link(value))
        elif tag == 1 and wire == 2:
            if seen_data:
                raise InvalidObject("dag-pb: duplicate Data")
            seen_data = True
            data = value
        else:
            raise InvalidObject(f"dag-pb: unexpected field {tag}")
    # Canonical by construction: varints are minimal (read_varint), Links come before one Data,
    # link fields in order, nothing unknown; so one node has one accepted encoding.
    return PBNode(tuple(links), data)


def _decode_link(buf: bytes) -> PBLink:
    cid: bytes | None = None
    name: bytes | None = None
    tsize: int | None = None
    last = 0
    for tag, wire, value in _fields(buf):
        if tag <= last:
            raise InvalidObject("dag-pb link: fields out of order or repeated")
        last = tag
        if tag == 1 and wire == 2:
            cid = value
        elif tag == 2 and wire == 2:
            name = value
        elif tag == 3 and wire == 0:
            tsize = value
        else:
            raise InvalidObject(f"dag-pb link: unexpected field {tag}")
    if cid is None:
        raise InvalidObject("dag-pb link without Hash")
    if not is_cid(cid):
        raise InvalidObject(f"dag-pb link with an invalid CID ({cid[:40].hex() or 'empty'})")
    return PBLink(cid, name, tsize)


# --- UnixFS --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    mode: int | None = None
    hash_type: int | None = None  # HAMT shards only (fields 5 and 6)
    fanout: int | None = None


def encode_unixfs(u: UnixFSData) -> bytes:
    """UnixFS ``Data`` message in field order, as go-unixfs marshals it."""
    out = _varint_field(1, u.type)
    if u.data is not None:
        out += _bytes_field(2, u.data)
    if u.filesize is not None:
        out += _varint_field(3, u.filesize)
    for size in u.blocksizes:
        out += _varint_field(4, size)
    if u.hash_type is not None:
        out += _varint_field(5, u.hash_type)
    if u.fanout is not None:
        out += _varint_field(6, u.fanout)
    if u.mode is not None:
        out += _varint_field(7, u.mode)
    return out


def decode_unixfs(buf: bytes) -> UnixFSData:
    """The one encoding of a UnixFS ``Data`` message that :func:`encode_unixfs` writes:
    fields in order, ``Type`` exactly once, no mtime (8 would give one directory two
    CIDs); the HAMT fields (5, 6) are read here and allowed on shards only (by
    ``trees.unixfs``'s checks); anything else is :class:`InvalidObject`."""
    kind: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    mode: int | None = None
    hamt: list[int | None] = [None, None]
    last = 0
    for tag, wire, value in _fields(buf):  # (varints are minimal: read_varint refuses others)
        if tag < last or (tag == last and tag != 4):
            raise InvalidObject(f"UnixFS: field {tag} out of order or repeated (not the canonical encoding)")
        last = tag
        if tag == 1 and wire == 0:
            kind = value
        elif tag == 2 and wire == 2:
            data = value
        elif tag == 3 and wire == 0:
            filesize = value
        elif tag == 4 and wire == 0:
            blocksizes.append(value)
        elif tag in (5, 6) and wire == 0:
            hamt[tag - 5] = value
        elif tag == 7 and wire == 0:
            mode = value
        else:
            raise InvalidObject(f"UnixFS: unexpected field {tag}")
    if kind is None:
        raise InvalidObject("UnixFS node without Type")
    return UnixFSData(kind, data, filesize, tuple(blocksizes), mode, hamt[0], hamt[1])


@dataclass(frozen=True, slots=True)
class DirLink:
    """One entry of a directory: its name, target CID and cumulative DAG size (Tsize)."""

    name: str
    cid: Cid
    tsize: int


def encode_directory(entries: Iterable[DirLink]) -> bytes:
    """A UnixFS Directory node; links sorted by name bytes (dag-pb canonical order)."""
    items = sorted(entries, key=lambda e: e.name.encode("utf-8"))
    for a, b in itertools.pairwise(items):
        if a.name == b.name:
            raise InvalidObject(f"duplicate directory entry {a.name!r}")
    links = tuple(PBLink(e.cid, e.name.encode("utf-8"), e.tsize) for e in items)
    return encode_pbnode(PBNode(links, encode_unixfs(UnixFSData(UNIXFS_DIRECTORY))))


def encode_symlink(target: str) -> bytes:
    return encode_pbnode(PBNode((), encode_unixfs(UnixFSData(UNIXFS_SYMLINK, data=target.encode("utf-8")))))


def dag_size(block: bytes, links: Iterable[PBLink]) -> int:
    """Cumulative size (Tsize) of a dag-pb node: its own bytes plus its links' Tsize."""
    return len(block) + sum(link.tsize or 0 for link in links)


class FileLayoutBuilder:
    """Streams leaves into a balanced UnixFS File DAG exactly like Kubo's balanced layout.

    Leaves are grouped into nodes of at most 174 links, those nodes into nodes of 174,
    and so on; a file of one leaf *is* that leaf.  Only one partial node per level is
    held in memory, so a 10 GiB file costs a few KiB here.
    """

    def __init__(self, emit: Callable[[Cid, bytes], None], hash_name: str = "blake3") -> None:
        self._emit = emit
        self._hash = hash_name
        # per level: list of (cid, filesize, tsize)
        self._levels: list[list[tuple[Cid, int, int]]] = [[]]
        self.size = 0

    def add_leaf(self, cid: Cid, size: int) -> None:
        self.size += size
        self._push(0, (cid, size, size))

    def _push(self, level: int, item: tuple[Cid, int, int]) -> None:
        # A full level is flushed only when one more item arrives, so at finish() the
        # top level still holds unemitted items and the root can carry a mode.
        if level == len(self._levels):
            self._levels.append([])
        if len(self._levels[level]) == MAX_LINKS_PER_FILE_NODE:
            node = self._make_node(self._levels[level], None)
            self._levels[level] = []
            self._push(level + 1, node)
        self._levels[level].append(item)

    def _make_node(self, children: list[tuple[Cid, int, int]], mode: int | None) -> tuple[Cid, int, int]:
        links = tuple(PBLink(cid, b"", tsize) for cid, _size, tsize in children)
        sizes = tuple(size for _cid, size, _tsize in children)
        data = encode_unixfs(UnixFSData(UNIXFS_FILE, filesize=sum(sizes), blocksizes=sizes, mode=mode))
        block = encode_pbnode(PBNode(links, data))
        cid = compute_cid(DAG_PB, block, self._hash)
        self._emit(cid, block)
        return cid, sum(sizes), dag_size(block, links)

    def finish(self, mode: int | None = None) -> tuple[Cid, int]:
        """Close the DAG; return (root CID, Tsize).

        A file of one leaf is that raw leaf, unless ``mode`` is given: UnixFS keeps the
        mode in a File node, so an executable file always gets a dag-pb root.
        """
        if not self._levels[0]:
            raise InvalidObject("file layout: no leaves (an empty file is one empty raw leaf)")
        i = 0
        while True:
            pending = self._levels[i]
            if i == len(self._levels) - 1:
                if i == 0 and len(pending) == 1 and mode is None:
                    return pending[0][0], pending[0][2]
                cid, _size, tsize = self._make_node(pending, mode)
                return cid, tsize
            node = self._make_node(pending, None)
            self._levels[i] = []
            self._push(i + 1, node)
            i += 1


# --- tree entries ---------------------------------------------------------------------------------

Kind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True, slots=True)
class Entry:
    """What a tree holds at a path: the node's CID, kind, cumulative size and exec bit."""

    cid: Cid
    kind: Kind
    tsize: int
    executable: bool = False


def entry_key(entry: Entry | None) -> tuple[Cid, Kind, bool] | None:
    """The one definition of what a path holds, as a hashable key: CID, kind and exec bit
    (``tsize`` is left out: a working-tree entry may carry another count for the same
    content); None for an absent path."""
    return None if entry is None else (entry.cid, entry.kind, entry.executable)


def same_entry(a: Entry | None, b: Entry | None) -> bool:
    """Whether a path is unchanged between two trees (:func:`entry_key` equal)."""
    return entry_key(a) == entry_key(b)
