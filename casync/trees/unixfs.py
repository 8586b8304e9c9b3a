"""UnixFS DAG operations over any :class:`BlockStore`: write and read files, build,
read, flatten and diff trees, walk a DAG.

This is where objects meet storage; it never touches the working tree.  Every block
read goes through ``store.get`` (hash-verified by the backend) and every name read from
a directory goes through :mod:`casync.model.names`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from casync.errors import InvalidObject, InvalidPath, LimitExceeded
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec, cid_str, compute_cid
from casync.model.commit import Commit, decode_commit
from casync.model.hamt import HamtEntry, build_hamt, entry_estimate, name_hash, sharded
from casync.model.names import validate_name
from casync.model.objects import (
    MAX_BLOCK_SIZE,
    MAX_FILE_DEPTH,
    MAX_FILE_LINKS,
    UNIXFS_DIRECTORY,
    UNIXFS_FILE,
    UNIXFS_HAMT_SHARD,
    UNIXFS_RAW,
    UNIXFS_SYMLINK,
    DirLink,
    Entry,
    Kind,
    PBNode,
    UnixFSData,
    decode_pbnode,
    decode_unixfs,
    encode_directory,
    encode_symlink,
    same_entry,
)
from casync.store.base import BlockStore
from casync.trees.hamt import (
    entry_name,
    estimate_exceeds,
    find_in_hamt,
    is_shard_node,
    iter_hamt,
    shard_children,
    update_hamt,
)

__all__ = [
    "Entry",
    "Kind",
    "TreeChange",
    "CheckedBlock",
    "build_tree",
    "checked_block",
    "diff_flat",
    "directories_of",
    "entry_for",
    "find_entry",
    "flatten_tree",
    "list_dir",
    "iter_file",
    "read_dir",
    "read_dir_block",
    "validated_links",
    "read_symlink",
    "lookup",
    "update_tree",
    "file_size",
    "walk_dag",
    "write_symlink",
]

def write_symlink(store: BlockStore, target: str, hash_name: str) -> Entry:
    block = encode_symlink(target)
    cid = compute_cid(DAG_PB, block, hash_name)
    store.put(cid, block)
    return Entry(cid, "symlink", len(block))


def entry_for(store: BlockStore, cid: Cid, tsize: int) -> Entry:
    """Classify a directory link's target (raw leaves are files without reading them)."""
    codec = cid_codec(cid)
    if codec == RAW:
        return Entry(cid, "file", tsize)
    if codec != DAG_PB:
        raise InvalidObject(f"tree entry {cid_str(cid)} is neither raw nor dag-pb")
    node = decode_pbnode(store.get(cid))
    if node.data is None:
        raise InvalidObject(f"dag-pb node {cid_str(cid)} has no UnixFS data")
    u = decode_unixfs(node.data)
    if u.type in (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD):  # (a shard linked by name is a HAMT's root)
        return Entry(cid, "dir", tsize)
    if u.type in (UNIXFS_FILE, UNIXFS_RAW):
        return Entry(cid, "file", tsize, bool(u.mode is not None and u.mode & 0o111))
    if u.type == UNIXFS_SYMLINK:
        return Entry(cid, "symlink", tsize)
    raise InvalidObject(f"UnixFS node {cid_str(cid)} has unsupported type {u.type}")


def read_dir(store: BlockStore, cid: Cid) -> list[DirLink]:
    """The entries of a directory, plain or HAMT-sharded, names validated, order and
    uniqueness checked (sorted by name bytes)."""
    return list_dir(store.get, cid)


def list_dir(get: Callable[[Cid], bytes], cid: Cid, node: PBNode | None = None) -> list[DirLink]:
    """:func:`read_dir` over a ``get`` callable (``node``: the directory's block, decoded)."""
    if cid_codec(cid) != DAG_PB:
        raise InvalidObject(f"{cid_str(cid)} is not a directory")
    if node is None:
        node = decode_pbnode(get(cid))
    if is_shard_node(node):
        out = [DirLink(*leaf) for leaf in iter_hamt(get, cid, node)]
        out.sort(key=lambda link: link.name.encode("utf-8"))
        return out
    return read_dir_block(cid, node)


def find_entry(get: Callable[[Cid], bytes], cid: Cid, name: str) -> DirLink | None:
    """The entry ``name`` of a directory (a HAMT reads only that name's bucket path)."""
    if cid_codec(cid) != DAG_PB:
        raise InvalidObject(f"{cid_str(cid)} is not a directory")
    node = decode_pbnode(get(cid))
    if is_shard_node(node):
        leaf = find_in_hamt(get, cid, name)
        return None if leaf is None else DirLink(*leaf)
    return next((link for link in read_dir_block(cid, node) if link.name == name), None)


def read_dir_block(cid: Cid, node: PBNode) -> list[DirLink]:
    """Validate a decoded plain directory node (names safe, sorted, unique) and list its links."""
    if node.data is None or decode_unixfs(node.data).type != UNIXFS_DIRECTORY:
        raise InvalidObject(f"{cid_str(cid)} is not a UnixFS directory")
    out: list[DirLink] = []
    prev: bytes | None = None
    for link in node.links:
        name = entry_name(cid, link.name)
        assert link.name is not None
        if prev is not None and link.name <= prev:
            raise InvalidObject(f"directory {cid_str(cid)} links are not sorted and unique")
        prev = link.name
        out.append(DirLink(name, link.cid, link.tsize or 0))
    return out


class CheckedBlock(NamedTuple):
    """A block from elsewhere, decoded and checked on its own: what it links to, and the
    commit or UnixFS node it is (for the checks against its children or parents)."""

    links: list[Cid]
    commit: Commit | None = None
    unixfs: UnixFSData | None = None


def checked_block(cid: Cid, block: bytes) -> CheckedBlock:
    """Check a block that came from elsewhere on its own, naming ``cid`` in any error:
    commits decode strictly; dag-pb nodes must be canonical UnixFS, directories get their
    names validated (paths are data, not instructions), file nodes their sizes and fan-out,
    before anything is stored."""
    codec = cid_codec(cid)
    if codec == RAW:
        return CheckedBlock([])
    if codec == DAG_CBOR:
        commit = decode_commit(block, cid)
        return CheckedBlock([commit.tree, *commit.parents], commit)
    if codec != DAG_PB:
        raise InvalidObject(f"block {cid_str(cid)} has an unsupported codec {codec:#x}")
    try:
        node = decode_pbnode(block)
        if node.data is None:
            raise InvalidObject("dag-pb node has no UnixFS data")
        u = decode_unixfs(node.data)
        _check_unixfs(node, u)
    except InvalidObject as exc:
        raise type(exc)(f"block {cid_str(cid)}: {exc.message}") from None
    if u.type == UNIXFS_DIRECTORY:
        read_dir_block(cid, node)
    elif u.type == UNIXFS_HAMT_SHARD:
        shard_children(cid, node)  # on its own; buckets and depth are checked from the root
    return CheckedBlock([link.cid for link in node.links], None, u)


def _check_unixfs(node: PBNode, u: UnixFSData) -> None:
    """The rules a UnixFS node obeys on its own (sizes against its children: transfer.checks)."""
    if u.type != UNIXFS_HAMT_SHARD and (u.hash_type is not None or u.fanout is not None):
        raise InvalidObject(f"a UnixFS node of type {u.type} carries HAMT fields")
    if u.type == UNIXFS_HAMT_SHARD:
        return  # shard_children checks the rest
    if u.type == UNIXFS_DIRECTORY:
        if u.data is not None or u.filesize is not None or u.blocksizes:
            raise InvalidObject("a UnixFS directory carries file data")
    elif u.type == UNIXFS_SYMLINK:
        if node.links or u.data is None or u.filesize is not None or u.blocksizes:
            raise InvalidObject("a UnixFS symlink has links, sizes or no target")
    elif u.type in (UNIXFS_FILE, UNIXFS_RAW):
        if len(node.links) > MAX_FILE_LINKS:
            raise LimitExceeded(f"a file node with {len(node.links)} links (at most {MAX_FILE_LINKS})")
        if len(u.blocksizes) != len(node.links):
            raise InvalidObject(f"a file node with {len(node.links)} links lists {len(u.blocksizes)} block sizes")
        if any(link.name for link in node.links):
            raise InvalidObject("a file node has named links")
        own = len(u.data or b"") + sum(u.blocksizes)
        if (u.filesize if u.filesize is not None else own) != own:
            raise InvalidObject(f"a file node claims {u.filesize} bytes but its data and blocks hold {own}")
    else:
        raise InvalidObject(f"unsupported UnixFS type {u.type}")


def validated_links(cid: Cid, block: bytes) -> list[Cid]:
    """What a block from elsewhere links to, after :func:`checked_block` accepted it."""
    return checked_block(cid, block).links


def read_symlink(store: BlockStore, cid: Cid) -> str:
    node = decode_pbnode(store.get(cid))
    u = decode_unixfs(node.data or b"")
    if u.type != UNIXFS_SYMLINK or u.data is None:
        raise InvalidObject(f"{cid_str(cid)} is not a UnixFS symlink")
    return u.data.decode("utf-8", "surrogateescape")


def iter_file(store: BlockStore, cid: Cid) -> Iterator[bytes]:
    """Stream a file's bytes, depth-first over its DAG (an explicit stack, never recursion:
    a hostile DAG may be deep; one node's links in memory per level)."""
    stack: list[Iterator[Cid]] = [iter((cid,))]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        codec = cid_codec(child)
        if codec == RAW:
            yield store.get(child)
            continue
        if codec != DAG_PB:
            raise InvalidObject(f"{cid_str(child)} is not a file")
        if len(stack) > MAX_FILE_DEPTH + 1:
            raise LimitExceeded(f"file DAG at {cid_str(child)} is deeper than {MAX_FILE_DEPTH} levels")
        node = decode_pbnode(store.get(child))
        u = decode_unixfs(node.data or b"")
        if u.type not in (UNIXFS_FILE, UNIXFS_RAW):
            raise InvalidObject(f"{cid_str(child)} is not a UnixFS file")
        if u.data:
            yield u.data
        stack.append(iter([link.cid for link in node.links]))


def file_size(store: BlockStore, cid: Cid) -> int:
    if cid_codec(cid) == RAW:
        return len(store.get(cid))
    node = decode_pbnode(store.get(cid))
    u = decode_unixfs(node.data or b"")
    return u.filesize if u.filesize is not None else len(u.data or b"")


def build_tree(store: BlockStore, files: Mapping[str, Entry], hash_name: str) -> Entry:
    """Write the directories for a flat ``{path: Entry}`` mapping; return the root entry.

    Builds bottom-up so each directory is encoded once; unchanged subtrees produce the
    same bytes and CIDs, so they dedupe in the store for free.
    """
    children: dict[str, dict[str, Entry]] = {"": {}}
    for path in files:
        parts = path.split("/")
        for part in parts:
            try:
                validate_name(part, f"path {path!r}")
            except InvalidPath as exc:
                raise InvalidObject(f"refusing to write a tree: {exc.message}") from None
        for i in range(1, len(parts)):
            parent, name = "/".join(parts[: i - 1]), parts[i - 1]
            d = "/".join(parts[:i])
            if d not in children:
                children[d] = {}
                children[parent][name] = Entry(b"", "dir", 0)  # placeholder, filled below
        parent = "/".join(parts[:-1])
        children.setdefault(parent, {})[parts[-1]] = files[path]
    built: dict[str, Entry] = {}
    for d in sorted(children, key=lambda p: p.count("/") if p else -1, reverse=True):
        links = []
        for name, entry in children.pop(d).items():
            if entry.kind == "dir":
                entry = built.pop("/".join(filter(None, (d, name))))
            links.append(DirLink(name, entry.cid, entry.tsize))
        built[d] = write_directory(store, links, hash_name, d or "/")
    return built[""]


def write_directory(store: BlockStore, links: Iterable[DirLink], hash_name: str, where: str = "/") -> Entry:
    """A directory of ``links``, as Kubo writes it: a HAMT when the size estimate (names
    and CID bytes) is above 256 KiB, else one plain Directory node."""
    links = list(links)
    estimate = sum(entry_estimate(link.name.encode("utf-8"), link.cid) for link in links)
    if sharded(estimate):
        entries = [HamtEntry(name_hash(raw), raw, link.cid, link.tsize)
                   for link in links for raw in (link.name.encode("utf-8"),)]
        del links
        cid, tsize = build_hamt(entries, store.put, hash_name)
        return Entry(cid, "dir", tsize)
    block = encode_directory(links)
    if len(block) > MAX_BLOCK_SIZE:  # (unreachable below the threshold: kept as a guard)
        raise InvalidObject(f"directory {where} would be a block over {MAX_BLOCK_SIZE} bytes")
    cid = compute_cid(DAG_PB, block, hash_name)
    store.put(cid, block)
    return Entry(cid, "dir", len(block) + sum(link.tsize for link in links))


def flatten_tree(store: BlockStore, root: Cid, prefix: str = "",
                 keep: Callable[[str], bool] | None = None) -> dict[str, Entry]:
    """``{path: Entry}`` for every file and symlink under ``root`` (directories implied);
    with ``keep``, only the paths it keeps, never reading below a directory it drops."""
    out: dict[str, Entry] = {}
    stack = [(prefix, root)]
    while stack:
        base, cid = stack.pop()
        for link in read_dir(store, cid):
            path = f"{base}/{link.name}" if base else link.name
            if keep is not None and not keep(path):
                continue
            entry = entry_for(store, link.cid, link.tsize)
            if entry.kind == "dir":
                stack.append((path, link.cid))
            else:
                out[path] = entry
    return out


def lookup(store: BlockStore, root: Cid, parts: tuple[str, ...]) -> Entry | None:
    """The entry at ``parts`` under the directory ``root`` (None when absent)."""
    entry = Entry(root, "dir", 0)
    for part in parts:
        if entry.kind != "dir":
            return None
        found = find_entry(store.get, entry.cid, part)
        if found is None:
            return None
        entry = entry_for(store, found.cid, found.tsize)
    return entry


@dataclass(frozen=True, slots=True)
class TreeChange:
    path: str
    status: Literal["added", "deleted", "modified"]
    old: Entry | None
    new: Entry | None


def diff_flat(old: Mapping[str, Entry], new: Mapping[str, Entry]) -> list[TreeChange]:
    out = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is None:
            out.append(TreeChange(path, "added", None, b))
        elif b is None:
            out.append(TreeChange(path, "deleted", a, None))
        elif not same_entry(a, b):
            out.append(TreeChange(path, "modified", a, b))
    return out


def walk_dag(get: Callable[[Cid], bytes], root: Cid, seen: set[Cid] | None = None,
             follow_parents: bool = True) -> Iterator[tuple[Cid, bytes]]:
    """Yield (cid, block) for every block reachable from ``root``, each once.

    Follows commit trees and (optionally) parents, directory and file links.  ``get``
    must verify blocks (every store's ``get`` does).
    """
    seen = set() if seen is None else seen
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        block = get(cid)
        yield cid, block
        codec = cid_codec(cid)
        if codec == DAG_CBOR:
            commit = decode_commit(block, cid)
            stack.append(commit.tree)
            if follow_parents:
                stack.extend(commit.parents)
        elif codec == DAG_PB:
            stack.extend(link.cid for link in decode_pbnode(block).links)
        elif codec != RAW:
            raise InvalidObject(f"block {cid_str(cid)} has unsupported codec {codec:#x}")


def directories_of(paths: Iterable[str]) -> set[str]:
    """Every directory holding one of ``paths`` (``a/b/c`` gives ``a`` and ``a/b``)."""
    out: set[str] = set()
    for path in paths:
        cut = path.rfind("/")
        while cut > 0 and path[:cut] not in out:
            out.add(path[:cut])
            cut = path.rfind("/", 0, cut)
    return out


def update_tree(store: BlockStore, root: Cid | None, changes: Mapping[str, Entry | None],
                hash_name: str) -> Entry:
    """Apply ``{path: Entry or None (delete)}`` to the tree ``root``; return the new root.

    Only directories on changed paths are re-encoded, so a one-file transaction on a
    huge tree costs a handful of blocks (in a HAMT, the shards on the changed names'
    bucket paths).  Directories left empty are removed.  An entry set at a path replaces
    what was below it, so deletes below it are moot (a merge's ``{"a": file, "a/b": None}``:
    a directory that became a file); entries *added* below it make it a directory of those
    entries instead (a transaction's later ``write("a/x")`` after ``write("a")``).
    """
    by_child: dict[str, dict[str, Entry | None]] = {}
    here: dict[str, Entry | None] = {}
    for path, entry in changes.items():
        head, _, rest = path.partition("/")
        if rest:
            by_child.setdefault(head, {})[rest] = entry
        else:
            here[head] = entry
    for name in [n for n in by_child if here.get(n) is not None]:
        if not any(e is not None for e in by_child[name].values()):
            del by_child[name]  # (applied after it, they used to delete the new entry with the directory)
    node = decode_pbnode(store.get(root)) if root is not None else None
    if root is not None and node is not None and is_shard_node(node):
        return _update_sharded(store, root, here, by_child, hash_name)
    links = {link.name: link for link in read_dir_block(root, node)} if root is not None and node else {}
    for name, entry in here.items():
        if entry is None:
            links.pop(name, None)
        else:
            links[name] = DirLink(name, entry.cid, entry.tsize)
    for name, sub in by_child.items():
        existing = links.get(name)
        new = update_tree(store, _dir_or_none(store, existing), sub, hash_name)
        if new.tsize == 0:
            links.pop(name, None)
        else:
            links[name] = DirLink(name, new.cid, new.tsize)
    return _written(store, list(links.values()), hash_name)


def _written(store: BlockStore, links: list[DirLink], hash_name: str) -> Entry:
    if not links:
        block = encode_directory(())
        cid = compute_cid(DAG_PB, block, hash_name)
        store.put(cid, block)
        return Entry(cid, "dir", 0)  # tsize 0 marks "empty": the parent drops it
    return write_directory(store, links, hash_name)


def _dir_or_none(store: BlockStore, link: DirLink | None) -> Cid | None:
    if link is not None and entry_for(store, link.cid, link.tsize).kind == "dir":
        return link.cid
    return None


def _update_sharded(store: BlockStore, root: Cid, here: dict[str, Entry | None],
                    by_child: dict[str, dict[str, Entry | None]], hash_name: str) -> Entry:
    """:func:`update_tree` on a HAMT: only the changed names' bucket paths are read and
    written; below the threshold again, the directory becomes a plain one."""
    edits: dict[str, tuple[Cid, int] | None] = {
        name: None if entry is None else (entry.cid, entry.tsize) for name, entry in here.items()}
    for name, sub in by_child.items():
        existing = find_entry(store.get, root, name)
        new = update_tree(store, _dir_or_none(store, existing), sub, hash_name)
        edits[name] = None if new.tsize == 0 else (new.cid, new.tsize)
    cid, tsize, delta = update_hamt(store.get, store.put, root, edits, hash_name)
    if delta < 0 and not estimate_exceeds(store.get, cid):
        return _written(store, list_dir(store.get, cid), hash_name)
    return Entry(cid, "dir", tsize)


