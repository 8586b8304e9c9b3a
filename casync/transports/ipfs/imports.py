"""Import what others added to IPFS: a UnixFS DAG on a Kubo node becomes a commit's tree,
or the subtree at a path of it (``casync import CID [--path P]``).

The DAG is kept exactly as it is (no re-chunking): its blocks are copied with the one DAG
fetcher IPFS fetch uses (:class:`~casync.transports.ipfs.fetch.DagFetcher`), so every block
is hash-checked against its CID, decoded strictly and checked against its children
(:mod:`casync.transfer.checks`) before it is stored, bottom-up, stopping at blocks already
held.  So the commit's tree CID is the CID ``ipfs add`` printed (CIDv0 ``Qm...`` included:
a CIDv0 is kept as such, see :data:`casync.model.cid.Cid`), whatever layout made it:
sha2-256 or blake3, raw or dag-pb leaves, balanced or trickle files, symlinks, modes.

A block casync cannot represent (a malformed HAMT shard, mtime metadata, a node type UnixFS has but
casync does not read) fails the import with the path it sits at; a block the node lacks
or serves wrong fails it naming the CID.  Nothing is committed then, and nothing of the
DAG is kept but whole subtrees (each complete below, as fetch keeps them).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from casync.errors import BlockNotFound, InvalidObject, NothingToCommit, UsageError
from casync.model.cid import DAG_PB, RAW, Cid, cid_codec, cid_str
from casync.model.names import validate_name
from casync.model.objects import UNIXFS_DIRECTORY, dag_size, decode_pbnode, decode_unixfs
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.store.base import BlockStore
from casync.transfer.checks import ReceiptChecks
from casync.transports.config import RemoteUrl, get_remote, parse_url
from casync.transports.ipfs.fetch import DagFetcher
from casync.transports.ipfs.records import RemoteNode
from casync.trees.unixfs import CheckedBlock, Entry, entry_for, update_tree

__all__ = ["ImportResult", "import_dag", "import_path", "node_url"]

_UNIXFS_HAMT = 5
_PATH_SEARCH_BLOCKS = 20_000  # directory blocks read to name the path of a refused block


@dataclass
class ImportResult:
    commit: Cid
    tree: Cid
    root: Cid
    path: str | None
    blocks: int
    bytes: int
    blocks_new: int
    bytes_new: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"commit": cid_str(self.commit), "tree": cid_str(self.tree), "root": cid_str(self.root),
                "path": self.path, "blocks": self.blocks, "bytes": self.bytes, "blocks_new": self.blocks_new,
                "bytes_new": self.bytes_new, "seconds": round(self.seconds, 3)}


def node_url(repo: Repository, remote: str | None, api: str | None) -> RemoteUrl:
    """The node to read from: ``api`` (``http://HOST:PORT``, ``HOST:PORT``, a
    ``/ip4/.../tcp/PORT`` multiaddr or an ``ipfs+http`` URL), else the IPFS remote ``remote``
    (default: ``origin`` or the only remote)."""
    if api is not None and remote is not None:
        raise UsageError("give --remote or --api, not both")
    if api is None:
        return get_remote(repo, remote).require_ipfs().url
    text = api.strip()
    parts = text.split("/")
    if text.startswith("/") and len(parts) >= 5 and parts[1] in ("ip4", "ip6", "dns", "dns4", "dns6") \
            and parts[3] == "tcp":
        host = f"[{parts[2]}]" if parts[1] == "ip6" else parts[2]
        text = f"http://{host}:{parts[4]}"
    elif "://" not in text:
        text = f"http://{text}"
    if not text.startswith("ipfs+"):
        text = f"ipfs+{text}"
    try:
        url = parse_url(text)
    except UsageError as exc:
        raise UsageError(f"--api {api!r} is not a Kubo RPC address ({exc.message})",
                         hint="e.g. --api http://127.0.0.1:5001") from None
    if url.repo_id is not None or url.index is not None:
        raise UsageError(f"--api {api!r}: give only the node's address, http://HOST:PORT")
    return url


def import_path(path: str | None) -> str | None:
    """``--path`` as a repository path (``a/b``), each name checked; None or ``/`` is the root."""
    if path is None:
        return None
    parts = [p for p in path.strip().strip("/").split("/") if p not in ("", ".")]
    for part in parts:
        validate_name(part, f"--path {path!r}")
    return "/".join(parts) or None


class _NamingChecks(ReceiptChecks):
    """The receipt checks, remembering which block failed (to name its path)."""

    failed: Cid | None = None

    def check(self, cid: Cid, block: bytes) -> CheckedBlock:
        try:
            return super().check(cid, block)
        except InvalidObject:
            self.failed = cid
            raise

    def against_children(self, cid: Cid, block: bytes, checked: CheckedBlock) -> None:
        try:
            super().against_children(cid, block, checked)
        except InvalidObject:
            self.failed = cid
            raise


def import_dag(repo: Repository, node: RemoteNode, root: Cid, *, path: str | None = None,
               message: str | None = None, progress: Progress = NULL_PROGRESS, concurrency: int = 8,
               wait: float | None = None) -> ImportResult:
    """Copy the UnixFS DAG ``root`` from ``node`` (every block verified) and commit it on the
    current branch: as the whole tree, or grafted at ``path`` with the rest of HEAD's tree
    kept (see the module docstring).  The working tree is not touched: ``casync checkout``
    brings the files, as after a transaction."""
    t0 = time.monotonic()
    path = import_path(path)
    codec = cid_codec(root)
    if codec not in (DAG_PB, RAW):
        raise UsageError(f"{cid_str(root)} is not a UnixFS DAG (codec {codec:#x})",
                         hint="give the CID 'ipfs add' printed")
    source = node.block_store(wait=wait)
    fetcher = DagFetcher(repo, source, concurrency=concurrency, progress=progress)
    checks = fetcher.checks = _NamingChecks(repo)
    try:
        total = _root_size(repo, source, node, root, path)
        progress.start(f"importing {cid_str(root)}", total)
        try:
            fetcher.fetch(root)
        except BlockNotFound as exc:
            raise _lacking(exc, root, node) from None
        except InvalidObject as exc:
            raise _refused(exc, source, root, checks.failed) from None
    finally:
        fetcher.close()
        progress.finish()
        source.discard()
    entry = entry_for(repo.blocks, root, total)
    tree = _graft(repo, entry, path)
    head = repo.head()
    if head is not None and repo.tree_of(head) == tree:
        raise NothingToCommit(f"nothing to commit: {cid_str(root)} is already "
                              f"{'the tree' if path is None else path} of HEAD")
    text = message or f"import {cid_str(root)}" + (f" at {path}" if path else "")
    commit = repo.commit_tree(tree, text, reason="import")
    return ImportResult(commit, tree, root, path, fetcher.blocks_received, fetcher.bytes_received,
                        fetcher.blocks_stored, fetcher.bytes_stored, time.monotonic() - t0)


def _root_size(repo: Repository, source: BlockStore, node: RemoteNode, root: Cid, path: str | None) -> int:
    """The DAG's size as its links claim (for the progress bar and the link that grafts it);
    refuses a root that is not a directory when it is to be the whole tree."""
    try:
        block = repo.blocks.get(root) if repo.blocks.has(root) else source.get(root)
    except BlockNotFound as exc:
        exc.message = f"cannot import {cid_str(root)}: the IPFS node at {node.url.api} does not have it"
        exc.hint = ("check the CID ('ipfs add' prints it); the node must hold the DAG, or reach a peer that "
                    "does ('ipfs swarm connect'); --api or --remote names the node to read from")
        raise
    if cid_codec(root) == RAW:
        kind = "a raw block (a file)"
    else:
        pb = decode_pbnode(block)
        try:
            u = decode_unixfs(pb.data) if pb.data is not None and not _is_hamt_data(pb.data) else None
        except InvalidObject as exc:
            raise _refused(exc, source, root, root) from None
        sharded = pb.data is not None and _is_hamt_data(pb.data)  # a HAMT: a directory too (§3.3.1)
        if (u is not None and u.type == UNIXFS_DIRECTORY) or sharded or path is not None:
            return dag_size(block, pb.links)
        kind = "not a directory"
    if path is None:
        raise UsageError(f"{cid_str(root)} is {kind}: only a directory can be a whole tree",
                         hint="import it at a path with --path NAME")
    return len(block)


def _graft(repo: Repository, entry: Entry, path: str | None) -> Cid:
    if path is None:
        return entry.cid
    head = repo.head()
    with repo.store.writer_lock():
        new = update_tree(repo.blocks, repo.tree_of(head) if head is not None else None, {path: entry},
                          repo.hash_name)
    return new.cid


def _lacking(exc: BlockNotFound, root: Cid, node: RemoteNode) -> BlockNotFound:
    err = BlockNotFound(exc.cid, f"IPFS node at {node.url.api}")
    err.message = f"cannot import {cid_str(root)}: {err.message}"
    err.hint = ("the node holds only part of that DAG; 'ipfs dag stat' on it shows what is missing (connect it "
                "to a peer that has the rest: 'ipfs swarm connect')")
    return err


def _refused(exc: InvalidObject, source: BlockStore, root: Cid, failed: Cid | None) -> InvalidObject:
    """The error for a block casync cannot represent, naming its path when it can be found."""
    where = _path_of(source, root, failed) if failed is not None else None
    what = f"{where!r}" if where else "its root" if failed == root else "a block of it"
    hint = ("what imports: UnixFS directories, files (any chunking) and symlinks, with their modes, but no "
            "mtime metadata (re-add without --preserve-mtime)")
    if failed is not None and _is_hamt(source, failed):
        hint = ("it is a HAMT-sharded directory that breaks the sharding rules Kubo follows (bucket, fanout, "
                "hash; docs/design.md §3.3.1): re-add it with 'ipfs add', or import its subdirectories with --path")
    err = type(exc)(f"cannot import {cid_str(root)}: {what} is not something casync can represent "
                    f"({exc.message})", hint=hint)
    return err


def _is_hamt(source: BlockStore, cid: Cid) -> bool:
    if cid_codec(cid) != DAG_PB:
        return False
    try:
        data = decode_pbnode(source.get(cid)).data
    except (InvalidObject, BlockNotFound):
        return False
    return data is not None and _is_hamt_data(data)


def _is_hamt_data(data: bytes) -> bool:
    return data[:2] == bytes((0x08, _UNIXFS_HAMT))  # UnixFS field 1 (Type) = HAMTShard


def _path_of(source: BlockStore, root: Cid, target: Cid) -> str | None:
    """The path of ``target`` below the directory ``root`` (directories only, breadth first,
    a bounded number of blocks read): for the error message, never for a decision."""
    if target == root:
        return None
    queue: deque[tuple[str, Cid]] = deque([("", root)])
    read = 0
    while queue and read < _PATH_SEARCH_BLOCKS:
        base, cid = queue.popleft()
        read += 1
        try:
            node = decode_pbnode(source.get(cid))
        except (InvalidObject, BlockNotFound):
            continue
        for link in node.links:
            name = (link.name or b"").decode("utf-8", "replace")
            here = f"{base}/{name}" if base else name
            if link.cid == target:
                return here
            if cid_codec(link.cid) == DAG_PB and link.name:
                queue.append((here, link.cid))
    return None
