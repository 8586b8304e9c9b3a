"""HAMT-sharded directories over a ``get(cid) -> bytes`` callable: list, look up, update
one bucket path, and say whether a directory is still above the sharding threshold.

The encoding is :mod:`casync.model.hamt`'s.  Reading checks what no single shard can show
on its own: every entry sits in the bucket its name's hash gives at its depth (so no name
appears twice), sub-shards nest at most :data:`HAMT_MAX_DEPTH` levels, and no sub-shard is
empty.  A sub-shard holding one entry (which Kubo would have collapsed) is read as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from casync.errors import InvalidObject, InvalidPath, LimitExceeded
from casync.model.cid import DAG_PB, Cid, cid_codec, cid_str, compute_cid
from casync.model.hamt import (
    HAMT_MAX_DEPTH,
    HAMT_THRESHOLD,
    HamtEntry,
    ShardLink,
    build_subshard,
    encode_shard_links,
    entry_estimate,
    name_hash,
    shard_links,
)
from casync.model.names import validate_name
from casync.model.objects import UNIXFS_HAMT_SHARD, PBNode, decode_pbnode, decode_unixfs

__all__ = [
    "HamtLeaf",
    "check_hamt",
    "entry_name",
    "estimate_exceeds",
    "diff_hamt",
    "find_in_hamt",
    "is_shard_node",
    "iter_hamt",
    "shard_children",
    "update_hamt",
]

GetBlock = Callable[[Cid], bytes]
Emit = Callable[[Cid, bytes], object]


class HamtLeaf(NamedTuple):
    """An entry of a sharded directory: name (validated), target, Tsize."""

    name: str
    cid: Cid
    tsize: int


def entry_name(cid: Cid, raw: bytes | None) -> str:
    """A directory entry's name from elsewhere: UTF-8 and safe (paths are data, not
    instructions), or :class:`InvalidObject` naming the directory ``cid``."""
    if raw is None:
        raise InvalidObject(f"directory {cid_str(cid)} has a link without a name")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidObject(f"directory {cid_str(cid)} has a name that is not UTF-8") from None
    try:
        validate_name(name)
    except InvalidPath as exc:
        raise InvalidObject(f"refusing tree {cid_str(cid)}: {exc.message}") from None
    return name


def is_shard_node(node: PBNode) -> bool:
    return node.data is not None and decode_unixfs(node.data).type == UNIXFS_HAMT_SHARD


def shard_children(cid: Cid, node: PBNode) -> list[ShardLink]:
    """A shard's links after its own checks (:func:`shard_links`), errors naming ``cid``;
    entry names validated."""
    try:
        links = shard_links(node, decode_unixfs(node.data or b""))
    except InvalidObject as exc:
        raise type(exc)(f"HAMT shard {cid_str(cid)}: {exc.message}") from None
    for link in links:
        if link.name is not None:
            entry_name(cid, link.name)
        elif cid_codec(link.cid) != DAG_PB:
            raise InvalidObject(f"HAMT shard {cid_str(cid)} links a sub-shard {cid_str(link.cid)} that is not dag-pb")
    return links


def _sub_shard(get: GetBlock, parent: Cid, child: Cid, depth: int) -> list[ShardLink]:
    if depth >= HAMT_MAX_DEPTH:
        raise LimitExceeded(f"HAMT {cid_str(parent)} nests sub-shards deeper than {HAMT_MAX_DEPTH} levels")
    node = decode_pbnode(get(child))
    if not is_shard_node(node):
        raise InvalidObject(f"HAMT shard {cid_str(parent)} links {cid_str(child)} as a sub-shard; it is not one")
    links = shard_children(child, node)
    if not links:
        raise InvalidObject(f"HAMT sub-shard {cid_str(child)} is empty")
    return links


def _check_bucket(cid: Cid, link: ShardLink, path: bytes) -> None:
    assert link.name is not None
    if not name_hash(link.name).startswith(path + bytes((link.bucket,))):
        raise InvalidObject(f"HAMT shard {cid_str(cid)}: entry {link.name[:60]!r} is not in the bucket its "
                            "name's hash gives (misplaced or duplicated)")


def iter_hamt(get: GetBlock, root: Cid, node: PBNode | None = None) -> Iterator[HamtLeaf]:
    """Every entry of the sharded directory ``root`` (in hash order), fully checked."""
    if node is None:
        node = decode_pbnode(get(root))
    return _iter_from(get, root, b"", shard_children(root, node))


def _iter_from(get: GetBlock, root: Cid, path: bytes, links: list[ShardLink]) -> Iterator[HamtLeaf]:
    stack: list[tuple[Cid, bytes, list[ShardLink]]] = [(root, path, links)]
    while stack:
        cid, path, links = stack.pop()
        subs = []
        for link in links:
            if link.name is None:
                subs.append((link.cid, path + bytes((link.bucket,)),
                             _sub_shard(get, cid, link.cid, len(path) + 1)))
                continue
            _check_bucket(cid, link, path)
            yield HamtLeaf(link.name.decode("utf-8"), link.cid, link.tsize)
        stack.extend(reversed(subs))


def check_hamt(get: GetBlock, root: Cid, fresh: Callable[[Cid], bool]) -> None:
    """Check a HAMT from elsewhere from its root: buckets, depth, no empty sub-shard.
    Sub-shards for which ``fresh`` is false were checked when they arrived; of each, the
    first entry's bucket path is checked at its new place (a held sub-shard moved to
    another bucket cannot pass)."""
    stack = [(root, b"", shard_children(root, decode_pbnode(get(root))))]
    while stack:
        cid, path, links = stack.pop()
        for link in links:
            if link.name is not None:
                _check_bucket(cid, link, path)
                continue
            here = path + bytes((link.bucket,))
            sub = _sub_shard(get, cid, link.cid, len(here))
            if fresh(link.cid):
                stack.append((link.cid, here, sub))
            else:
                _check_first(get, link.cid, here, sub)


def _check_first(get: GetBlock, cid: Cid, path: bytes, links: list[ShardLink]) -> None:
    while True:
        first = links[0]
        if first.name is not None:
            _check_bucket(cid, first, path)
            return
        path += bytes((first.bucket,))
        links = _sub_shard(get, cid, first.cid, len(path))
        cid = first.cid


def diff_hamt(get: GetBlock, old: Cid, new: Cid) -> tuple[dict[str, Cid], dict[str, Cid]]:
    """The entries of two sharded directories, less those under shards (or leaf links)
    the two share at the same bucket path: what differs, read in time proportional to it."""
    a: dict[str, Cid] = {}
    b: dict[str, Cid] = {}
    stack = [(old, new, b"", shard_children(old, decode_pbnode(get(old))),
              shard_children(new, decode_pbnode(get(new))))]
    while stack:
        old, new, path, old_links, new_links = stack.pop()
        olds = {link.bucket: link for link in old_links}
        for link in new_links:
            prev = olds.pop(link.bucket, None)
            if prev is not None and prev.cid == link.cid and prev.name == link.name:
                continue
            here = path + bytes((link.bucket,))
            if prev is not None and prev.name is None and link.name is None:
                stack.append((prev.cid, link.cid, here, _sub_shard(get, old, prev.cid, len(here)),
                              _sub_shard(get, new, link.cid, len(here))))
                continue
            if prev is not None:
                _collect(get, old, path, prev, a)
            _collect(get, new, path, link, b)
        for prev in olds.values():
            _collect(get, old, path, prev, a)
    return a, b


def _collect(get: GetBlock, cid: Cid, path: bytes, link: ShardLink, out: dict[str, Cid]) -> None:
    if link.name is not None:
        _check_bucket(cid, link, path)
        out[link.name.decode("utf-8")] = link.cid
        return
    here = path + bytes((link.bucket,))
    for leaf in _iter_from(get, link.cid, here, _sub_shard(get, cid, link.cid, len(here))):
        out[leaf.name] = leaf.cid


def find_in_hamt(get: GetBlock, root: Cid, name: str) -> HamtLeaf | None:
    """The entry ``name`` of a sharded directory, reading only its bucket path."""
    raw = name.encode("utf-8")
    h = name_hash(raw)
    cid = root
    links = shard_children(root, decode_pbnode(get(root)))
    for depth in range(HAMT_MAX_DEPTH):
        link = next((x for x in links if x.bucket == h[depth]), None)
        if link is None:
            return None
        if link.name is not None:
            return HamtLeaf(name, link.cid, link.tsize) if link.name == raw else None
        links = _sub_shard(get, cid, link.cid, depth + 1)
        cid = link.cid
    return None


def estimate_exceeds(get: GetBlock, root: Cid, limit: int = HAMT_THRESHOLD) -> bool:
    """Whether the entries' size estimate is above ``limit``; stops reading once it is."""
    total = 0
    for leaf in iter_hamt(get, root):
        total += entry_estimate(leaf.name.encode("utf-8"), leaf.cid)
        if total > limit:
            return True
    return False


class _Shard(NamedTuple):
    cid: Cid
    tsize: int


_Result = HamtEntry | _Shard | None
"""What a bucket becomes: nothing, one entry (a leaf link), or a sub-shard."""


def update_hamt(get: GetBlock, emit: Emit, root: Cid, changes: Mapping[str, tuple[Cid, int] | None],
                hash_name: str) -> tuple[Cid, int, int]:
    """Apply ``{name: (cid, tsize) or None (delete)}`` to the sharded directory ``root``,
    re-encoding only the shards on the changed names' bucket paths (sub-shards left with
    one entry collapse, as Kubo's do).  Returns the new root's CID, Tsize and the change
    in the size estimate (new entries' estimates less the replaced ones')."""
    items = sorted((name_hash(n.encode("utf-8")), n.encode("utf-8"), v) for n, v in changes.items())
    delta = [0]
    links = shard_children(root, decode_pbnode(get(root)))
    new = _rewrite(get, emit, root, links, b"", items, hash_name, delta, root=True)
    assert isinstance(new, _Shard)
    return new.cid, new.tsize, delta[0]


_Change = tuple[bytes, bytes, tuple[Cid, int] | None]


def _rewrite(get: GetBlock, emit: Emit, cid: Cid, links: list[ShardLink], path: bytes, items: list[_Change],
             hash_name: str, delta: list[int], root: bool = False) -> _Result:
    depth = len(path)
    by_index = {link.bucket: link for link in links}
    i = 0
    while i < len(items):
        index = items[i][0][depth]
        j = i
        while j < len(items) and items[j][0][depth] == index:
            j += 1
        group = items[i:j]
        i = j
        old = by_index.get(index)
        here = path + bytes((index,))
        if old is not None and old.name is None:
            new = _rewrite(get, emit, old.cid, _sub_shard(get, cid, old.cid, depth + 1), here, group,
                           hash_name, delta)
        else:
            if old is not None:
                _check_bucket(cid, old, path)
            new = _bucket(old, here, group, emit, hash_name, delta)
        if new is None:
            by_index.pop(index, None)
        elif isinstance(new, _Shard):
            by_index[index] = ShardLink(index, None, new.cid, new.tsize)
        else:
            by_index[index] = ShardLink(index, new.name, new.cid, new.tsize)
    if not root:
        if not by_index:
            return None
        if len(by_index) == 1:
            (only,) = by_index.values()
            if only.name is not None:  # collapse: the one entry moves up a level
                return HamtEntry(name_hash(only.name), only.name, only.cid, only.tsize)
    out = [by_index[k] for k in sorted(by_index)]
    block = encode_shard_links(out)
    new_cid = compute_cid(DAG_PB, block, hash_name)
    emit(new_cid, block)
    return _Shard(new_cid, len(block) + sum(link.tsize for link in out))


def _bucket(old: ShardLink | None, path: bytes, group: list[_Change], emit: Emit, hash_name: str,
            delta: list[int]) -> _Result:
    """A bucket that held at most one entry, after ``group``'s changes."""
    entries: dict[bytes, HamtEntry] = {}
    if old is not None and old.name is not None:
        entries[old.name] = HamtEntry(name_hash(old.name), old.name, old.cid, old.tsize)
    for h, name, value in group:
        prev = entries.pop(name, None)
        if prev is not None:
            delta[0] -= entry_estimate(name, prev.cid)
        if value is not None:
            entries[name] = HamtEntry(h, name, value[0], value[1])
            delta[0] += entry_estimate(name, value[0])
    if not entries:
        return None
    if len(entries) == 1:
        return next(iter(entries.values()))
    return _Shard(*build_subshard(list(entries.values()), len(path), emit, hash_name))
