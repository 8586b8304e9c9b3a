"""Trustless reads from any IPFS gateway: fetch one file as a CAR and verify it on the way.

The gateway is not trusted.  It is asked for the CAR of ``/ipfs/ROOT/PATH`` in depth-first
order with duplicates (``Accept: application/vnd.ipld.car; version=1; order=dfs; dups=y``,
Kubo's trustless gateway), and every block is checked as it arrives: its bytes hash to its
CID, and it is exactly the next block on the path from
ROOT to the file (directory links by name; in a HAMT-sharded directory, the shards on the
name's bucket path) and then of the file's DAG in order.  A wrong,
missing or extra block raises :class:`UnverifiedBlock` naming the
CID; bytes are written as soon as their block verifies, one block in memory at a time.
"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from casync.errors import CorruptBlock, RemoteError, RemoteUnreachable, UnverifiedBlock, UsageError
from casync.model.car import iter_car, read_header
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec, cid_str, parse_cid, verify_block
from casync.model.commit import decode_commit
from casync.model.hamt import HAMT_MAX_DEPTH, name_hash, shard_links
from casync.model.objects import (
    UNIXFS_DIRECTORY,
    UNIXFS_FILE,
    UNIXFS_HAMT_SHARD,
    UNIXFS_RAW,
    decode_pbnode,
    decode_unixfs,
)

__all__ = ["CAR_ACCEPT", "GatewayTarget", "fetch_verified", "parse_target"]

CAR_ACCEPT = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
"""What is asked for: a CARv1, blocks depth-first from the root, repeated blocks repeated
(so the file streams in order without keeping any block for later)."""

_TIMEOUT = 60.0


@dataclass(frozen=True)
class GatewayTarget:
    """A gateway base URL, the root CID and the path below it (names, possibly empty)."""

    gateway: str
    root: Cid
    path: tuple[str, ...]

    def url_path(self) -> str:
        names = "".join("/" + urllib.parse.quote(name, safe="") for name in self.path)
        return f"/ipfs/{cid_str(self.root)}{names}?format=car&dag-scope=all"


def parse_target(target: str, gateway: str | None) -> GatewayTarget:
    """``GATEWAY-URL/ipfs/CID[/PATH]``, or ``CID[:PATH]`` / ``CID[/PATH]`` with ``gateway``."""
    if target.startswith(("http://", "https://")):
        if gateway is not None:
            raise UsageError("give the gateway either in the URL or with --gateway, not both")
        parts = urllib.parse.urlsplit(target)
        head, sep, rest = parts.path.partition("/ipfs/")
        if not sep:
            raise UsageError(f"{target}: expected GATEWAY-URL/ipfs/CID[/PATH]")
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, head, "", ""))
        cid_text, _, path = rest.partition("/")
        names = [urllib.parse.unquote(n) for n in path.split("/") if n]
    else:
        if gateway is None:
            raise UsageError(f"{target}: which gateway?", hint="give --gateway URL, or GATEWAY-URL/ipfs/CID/PATH")
        if not gateway.startswith(("http://", "https://")):
            raise UsageError(f"--gateway {gateway}: expected an http:// or https:// URL")
        base = gateway.rstrip("/")
        cid_text, path = _split_cid_path(target.removeprefix("/ipfs/"))
        names = [n for n in path.split("/") if n]
    if any(n in (".", "..") for n in names):
        raise UsageError(f"{target}: '.' and '..' are not names in a UnixFS path")
    return GatewayTarget(base, parse_cid(cid_text), tuple(names))


def _split_cid_path(text: str) -> tuple[str, str]:
    slash, colon = text.find("/"), text.find(":")
    cut = min(i for i in (slash, colon, len(text)) if i >= 0)
    return text[:cut], text[cut + 1:]


def fetch_verified(target: GatewayTarget, out: BinaryIO) -> int:
    """Stream the verified file at ``target`` into ``out``; return its size in bytes."""
    response, conn = _request(target)
    try:
        read_header(response)  # roots are not trusted: the walk starts at the CID asked for
        return _walk(target, iter_car(response, verify=False), out)
    finally:
        conn.close()


def _request(target: GatewayTarget) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    parts = urllib.parse.urlsplit(target.gateway)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    if not parts.hostname:
        raise UsageError(f"{target.gateway}: no host in the gateway URL")
    conn = cls(parts.hostname, parts.port, timeout=_TIMEOUT)
    try:
        conn.request("GET", parts.path.rstrip("/") + target.url_path(), headers={"Accept": CAR_ACCEPT})
        response = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise RemoteUnreachable(f"gateway {target.gateway}: {exc}") from None
    if response.status != 200:
        body = response.read(300).decode("utf-8", "replace").strip()
        conn.close()
        raise RemoteError(f"gateway {target.gateway} answered {response.status} {response.reason}: {body}")
    kind = response.getheader("Content-Type", "")
    if not kind.startswith("application/vnd.ipld.car"):
        conn.close()
        raise RemoteError(f"gateway {target.gateway} sent {kind or 'no Content-Type'}, not a CAR",
                          hint="the gateway must support trustless responses (?format=car)")
    return response, conn


def _next(blocks: Iterator[tuple[Cid, bytes]], expected: Cid, why: str) -> bytes:
    for cid, data in blocks:
        if cid != expected:
            raise UnverifiedBlock(cid_str(cid), f"gateway sent block {cid_str(cid)} where {why} "
                                                f"{cid_str(expected)} belongs")
        try:
            verify_block(cid, data, "gateway's CAR")
        except CorruptBlock:
            raise UnverifiedBlock(cid_str(cid), f"gateway sent block {cid_str(cid)} whose bytes do not match "
                                                f"its CID") from None
        return data
    raise UnverifiedBlock(cid_str(expected), f"gateway's CAR ended without block {cid_str(expected)} ({why})")


def _walk(target: GatewayTarget, blocks: Iterator[tuple[Cid, bytes]], out: BinaryIO) -> int:
    cid = target.root
    for depth, name in enumerate(target.path):
        where = "/".join(target.path[:depth]) or "the root"
        data = _next(blocks, cid, f"directory {where}")
        cid = _child(cid, data, name, where, blocks)
    size = _stream_file(cid, blocks, out)
    for extra, _data in blocks:
        raise UnverifiedBlock(cid_str(extra), f"gateway sent block {cid_str(extra)} after the whole file")
    return size


def _child(cid: Cid, data: bytes, name: str, where: str, blocks: Iterator[tuple[Cid, bytes]]) -> Cid:
    """The link ``name`` of a directory, or ``tree`` of a casync commit (``casync url``'s paths)."""
    if cid_codec(cid) == DAG_CBOR and name == "tree":
        return decode_commit(data, cid).tree
    if cid_codec(cid) != DAG_PB:
        raise UsageError(f"{where} is not a directory, it has no entry {name!r}")
    node = decode_pbnode(data)
    kind = decode_unixfs(node.data or b"").type
    if kind == UNIXFS_HAMT_SHARD:
        return _shard_child(cid, data, name, where, blocks)
    if kind != UNIXFS_DIRECTORY:
        raise UsageError(f"{where} is not a directory (UnixFS type {kind}), it has no entry {name!r}")
    wanted = name.encode("utf-8")
    for link in node.links:
        if link.name == wanted:
            return link.cid
    raise UsageError(f"no entry {name!r} in {where} ({cid_str(cid)})")


def _shard_child(cid: Cid, data: bytes, name: str, where: str, blocks: Iterator[tuple[Cid, bytes]]) -> Cid:
    """``name`` in a HAMT: the next blocks are the sub-shards on its bucket path."""
    wanted = name.encode("utf-8")
    h = name_hash(wanted)
    for depth in range(HAMT_MAX_DEPTH):
        node = decode_pbnode(data)
        link = next((x for x in shard_links(node, decode_unixfs(node.data or b"")) if x.bucket == h[depth]), None)
        if link is not None and link.name is None:
            cid = link.cid
            data = _next(blocks, cid, f"a shard of directory {where}")
            continue
        if link is not None and link.name == wanted:
            return link.cid
        break
    raise UsageError(f"no entry {name!r} in {where} ({cid_str(cid)})")


def _stream_file(root: Cid, blocks: Iterator[tuple[Cid, bytes]], out: BinaryIO) -> int:
    """Depth-first over the file DAG: each node's own data, then its children in order."""
    stack = [root]
    written = 0
    expected_size: int | None = None
    while stack:
        cid = stack.pop()
        data = _next(blocks, cid, "file block")
        if cid_codec(cid) == RAW:
            out.write(data)
            written += len(data)
            continue
        if cid_codec(cid) != DAG_PB:
            raise UsageError(f"{cid_str(cid)} is not a UnixFS file")
        node = decode_pbnode(data)
        unixfs = decode_unixfs(node.data or b"")
        if unixfs.type not in (UNIXFS_FILE, UNIXFS_RAW):
            what = "a directory" if unixfs.type == UNIXFS_DIRECTORY else f"UnixFS type {unixfs.type}"
            raise UsageError(f"{cid_str(cid)} is {what}, not a file", hint="casync get reads one file")
        if cid == root:
            expected_size = unixfs.filesize
        if unixfs.data:
            out.write(unixfs.data)
            written += len(unixfs.data)
        stack.extend(link.cid for link in reversed(node.links))
    if expected_size is not None and written != expected_size:
        raise UnverifiedBlock(cid_str(root), f"file {cid_str(root)} says {expected_size} bytes, its blocks hold "
                                             f"{written}")
    return written
