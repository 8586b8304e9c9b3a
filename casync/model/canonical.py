"""Is a block its object's one canonical encoding?  Decode it, encode it again, compare.

Pure.  The decoders are strict already, but one of them tolerates fields casync never writes
(UnixFS ``hashType``, ``fanout``, ``mtime``), so ``audit`` re-encodes every dag-pb node, its
UnixFS data and every commit: bytes that differ would give one value two CIDs.
"""

from __future__ import annotations

from casync.errors import InvalidObject
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec
from casync.model.commit import decode_commit, encode_commit
from casync.model.objects import decode_pbnode, decode_unixfs, encode_pbnode, encode_unixfs

__all__ = ["canonical_problem"]


def canonical_problem(cid: Cid, block: bytes) -> str | None:
    """What is not canonical about ``block`` (None: it is its value's only encoding)."""
    codec = cid_codec(cid)
    try:
        if codec == DAG_PB:
            node = decode_pbnode(block)
            if encode_pbnode(node) != block:
                return "dag-pb bytes differ from the canonical encoding of the same node"
            if node.data is not None and encode_unixfs(decode_unixfs(node.data)) != node.data:
                return "UnixFS data differs from its canonical encoding (repeated or tolerated fields)"
        elif codec == DAG_CBOR:
            if encode_commit(decode_commit(block, cid)) != block:
                return "commit bytes differ from the canonical DAG-CBOR encoding"
        elif codec != RAW:
            return f"unsupported codec {codec:#x}"
    except InvalidObject as exc:
        return exc.message
    return None
