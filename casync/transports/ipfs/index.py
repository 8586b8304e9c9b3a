"""The linked head index: one DAG-CBOR root per push that links every replica's heads.

The per-replica JSON records in MFS (:mod:`casync.transports.ipfs.records`) stay the source
of truth: one writer each, so concurrent pushes never overwrite each other.  They cannot
become IPLD links themselves: Kubo's MFS refuses a dag-cbor node (``files cp`` answers
"source must be a valid UnixFS (dag-pb or raw codec)").  So every push, once its record is
published, also writes an *index*, a snapshot of the records then in the node's MFS::

    index   {"format": "casync-index/1", "repository": R, "by": REPLICA, "seq": N, "time_ms": T,
             "heads": {replica: {branch: Link(commit)}}, "records": {replica: Link(record)}}
    record  the replica's head record as DAG-CBOR, its commit and tag CIDs links

and pins it under ``casync/<repository-id>/.index/<by>``.  ``/ipfs/<index>/heads/<replica>/
<branch>/tree/<path>`` then resolves on any gateway (the commit's ``tree`` link leads into
UnixFS), and one recursive pin or ``ipfs dag export`` holds every commit, tree and block the
heads reach.  Each replica keeps its newest :data:`KEEP_INDEXES` index pins and removes
its older ones (never another replica's).

The index and its record blocks are pinned *directly*: a recursive pin would make Kubo read
every block of the repository a second time (the head's pin just did), about a second per
GiB.  What it links stays held all the same: every commit an index links was a published
head, held by that head's recursive pin (closure invariant), and a head pin is dropped only
for a descendant (whose pin holds the old one's DAG through its parents) or by ``push
--force``, which first pins recursively every direct index that links a commit no remaining
head holds (:func:`promote_indexes`).  Byte-level format: docs/remotes.md#the-linked-index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from casync.errors import BlockNotFound, CasyncError, CorruptBlock, InvalidObject, RemoteError, UsageError
from casync.model import cbor
from casync.model.car import car_parts
from casync.model.cbor import Link
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, compute_cid, verify_block
from casync.model.names import validate_replica_name
from casync.model.objects import MAX_BLOCK_SIZE
from casync.store.base import BlockStore
from casync.transports.config import validate_repo_id
from casync.transports.ipfs.records import FORMAT as RECORD_FORMAT
from casync.transports.ipfs.records import HeadRecord, RemoteNode, record_from
from casync.transports.ipfs.util import PIN_PREFIX

__all__ = ["FORMAT", "KEEP_INDEXES", "IndexInfo", "PublishedIndex", "decode_index", "demote_indexes", "encode_index",
           "encode_record", "index_pin_name", "list_indexes", "promote_indexes", "publish_index",
           "read_index"]

FORMAT = "casync-index/1"
KEEP_INDEXES = 3
"""Index pins each replica keeps (its newest ones); pin an index yourself to keep it longer."""


def index_pin_name(repo_id: str, replica: str) -> str:
    """``casync/<repository-id>/.index/<replica>``: a replica name never starts with a dot,
    so this never equals a head pin's name (``casync/<repository-id>/<replica>/<branch>``)."""
    return f"{PIN_PREFIX}{repo_id}/.index/{replica}"


# --- codec ---------------------------------------------------------------------------------------


def encode_record(rec: HeadRecord) -> bytes:
    """The record block: the JSON record's fields, its CIDs as links (canonical DAG-CBOR)."""
    obj: dict[str, Any] = {
        "format": RECORD_FORMAT, "repository": rec.repository, "replica": rec.replica, "seq": rec.seq,
        "time_ms": rec.time_ms, "hash": rec.hash, "chunker": rec.chunker,
        "heads": {b: {"commit": Link(h.commit), "generation": h.generation, "clock": dict(h.clock)}
                  for b, h in rec.heads.items()},
    }
    if rec.tags:
        obj["tags"] = {t: Link(c) for t, c in rec.tags.items()}
    return cbor.encode(obj)


def _link(value: Any) -> Cid:
    """A CID of the index or a record block: a link (tag 42), never a text CID (TypeError,
    which the decoders report as malformed, naming the block)."""
    if not isinstance(value, Link):
        raise TypeError("a CID that is not a link")
    return bytes(value)


@dataclass(frozen=True)
class IndexInfo:
    """An index block's own fields (its records are linked, read separately)."""

    cid: Cid
    repository: str
    by: str
    seq: int
    time_ms: int
    heads: Mapping[str, Mapping[str, Cid]]
    records: Mapping[str, Cid]
    pin: str = ""  # how it is pinned, when listed from the node's pins

    def to_json(self) -> dict[str, Any]:
        return {"cid": cid_str(self.cid), "by": self.by, "seq": self.seq, "time_ms": self.time_ms,
                "replicas": sorted(self.records), "pin": self.pin or None}


def encode_index(repo_id: str, by: HeadRecord, records: Mapping[str, HeadRecord], time_ms: int,
                 hash_name: str) -> tuple[Cid, bytes, list[tuple[Cid, bytes]]]:
    """(CID, bytes) of the index over ``records`` and the (CID, bytes) of its record blocks."""
    blocks = []
    links: dict[str, Link] = {}
    for replica, rec in sorted(records.items()):
        data = encode_record(rec)
        cid = compute_cid(DAG_CBOR, data, rec.hash)
        blocks.append((cid, data))
        links[replica] = Link(cid)
    obj = {"format": FORMAT, "repository": repo_id, "by": by.replica, "seq": by.seq, "time_ms": time_ms,
           "heads": {r: {b: Link(h.commit) for b, h in rec.heads.items()} for r, rec in records.items()},
           "records": links}
    data = cbor.encode(obj)
    if len(data) > MAX_BLOCK_SIZE:
        raise RemoteError(f"the index of {len(records)} replicas would be {len(data)} bytes, over the "
                          f"{MAX_BLOCK_SIZE}-byte block limit: not written (the records are published)")
    return compute_cid(DAG_CBOR, data, hash_name), data, blocks


def decode_index(cid: Cid, data: bytes, repo_id: str | None = None) -> IndexInfo:
    """The index block's fields, validated (InvalidObject naming the index otherwise)."""
    where = f"index {cid_str(cid)}"
    if len(data) > MAX_BLOCK_SIZE:
        raise InvalidObject(f"{where} is too large ({len(data)} bytes)")
    try:
        obj = cbor.decode(data)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise InvalidObject(f"{where} has an unknown format "
                                f"{obj.get('format') if isinstance(obj, dict) else None!r}")
        rid = obj["repository"]
        validate_repo_id(rid)
        if repo_id is not None and rid != repo_id:
            raise InvalidObject(f"{where} belongs to repository {rid!r}, not {repo_id!r}")
        for key in ("seq", "time_ms"):
            if not isinstance(obj[key], int) or isinstance(obj[key], bool):
                raise InvalidObject(f"{where}: {key} must be an integer")
        validate_replica_name(obj["by"])
        heads = {str(r): {str(b): _link(c) for b, c in dict(h).items()} for r, h in dict(obj["heads"]).items()}
        records = {str(r): _link(c) for r, c in dict(obj["records"]).items()}
        if set(heads) != set(records):
            raise InvalidObject(f"{where}: 'heads' and 'records' name different replicas")
        return IndexInfo(cid, rid, str(obj["by"]), int(obj["seq"]), int(obj["time_ms"]), heads, records)
    except InvalidObject:
        raise
    except (CasyncError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidObject(f"{where} is malformed ({type(exc).__name__})") from None


def read_index(store: BlockStore, cid: Cid, repo_id: str | None, errors: list[str] | None) -> list[HeadRecord]:
    """The records the index ``cid`` links, each checked against the index's ``heads``;
    an invalid record goes into ``errors`` (raised when ``errors`` is None)."""
    info = decode_index(cid, store.get(cid), repo_id)
    out = []
    for replica, link in sorted(info.records.items()):
        where = f"{cid_str(cid)}/records/{replica}"
        try:
            validate_replica_name(replica)
            if cid_codec(link) != DAG_CBOR:
                raise InvalidObject(f"head record {where} is not a dag-cbor block")
            try:
                obj = cbor.decode(store.get(link))
            except RecursionError:
                raise InvalidObject(f"head record {where} is malformed") from None
            rec = record_from(obj, info.repository, replica, where, _link)
            if {b: h.commit for b, h in rec.heads.items()} != dict(info.heads[replica]):
                raise InvalidObject(f"head record {where} disagrees with {cid_str(cid)}/heads/{replica}")
            out.append(rec)
        except (InvalidObject, UsageError) as exc:
            if errors is None:
                raise
            errors.append(str(exc))
    return out


# --- publishing ----------------------------------------------------------------------------------


@dataclass
class PublishedIndex:
    cid: Cid
    pin: str  # "direct" when written; "recursive" once a force push promoted it (promote_indexes)
    unpinned: list[Cid] = field(default_factory=list)  # this replica's older index pins removed


def publish_index(node: RemoteNode, record: HeadRecord, *, reuse: bool = False,
                  keep: int = KEEP_INDEXES) -> PublishedIndex:
    """Write and pin (directly, see the module docstring) the index of the records now in
    the node's MFS (``record``, just published, in place of whatever MFS returned for its
    replica), then unpin this replica's index pins beyond its newest ``keep``, and the
    record blocks no index pinned on the node links any more.  ``reuse`` (an up-to-date
    push): this replica's newest index, if it links exactly these records."""
    repo_id = record.repository
    records = node.records(repo_id, errors=[], index=False)
    records[record.replica] = record
    name = index_pin_name(repo_id, record.replica)
    pins = node.client.named_pins(f"{PIN_PREFIX}{repo_id}/")
    mine = sorted(_indexes(node, [(c, k) for n, c, k in pins if n == name]), key=_order, reverse=True)
    cid, data, blocks = encode_index(repo_id, record, records, int(time.time() * 1000), record.hash)
    if reuse and mine and dict(mine[0].records) == {r: c for (r, _rec), (c, _d) in zip(sorted(records.items()),
                                                                                       blocks, strict=True)}:
        return PublishedIndex(mine[0].cid, mine[0].pin)
    node.client.dag_import(car_parts((), [*blocks, (cid, data)]))
    node.client.pin_add_many([c for c, _ in blocks], recursive=False, name=f"{name}/records")
    if not any(i.cid == cid for i in mine):  # else the same snapshot again (the same millisecond)
        node.client.pin_add_many([cid], recursive=False, name=name)
    dropped = [i for i in mine[max(keep - 1, 0):] if i.cid != cid]
    for old in dropped:
        node.client.pin_rm(old.cid)
    if dropped:
        _unpin_records(node, repo_id, {c for i in dropped for c in i.records.values()} - {c for c, _ in blocks})
    return PublishedIndex(cid, "direct", [i.cid for i in dropped])


def _unpin_records(node: RemoteNode, repo_id: str, candidates: set[Cid]) -> None:
    """Drop the direct pins of the record blocks in ``candidates`` that no index still pinned
    on the node links (any replica's: Kubo keeps one direct pin per block, under the name of
    whichever index pinned it first)."""
    for info in list_indexes(node, repo_id):
        candidates -= set(info.records.values())
    prefix = f"{PIN_PREFIX}{repo_id}/.index/"
    for n, c, kind in node.client.named_pins(prefix):
        if kind == "direct" and n.endswith("/records") and c in candidates:
            node.client.pin_rm(c)


def promote_indexes(node: RemoteNode, repo_id: str, held: Callable[[Cid], bool]) -> list[Cid]:
    """Pin recursively every directly pinned index of ``repo_id`` that links a head commit
    for which ``held`` is false (a ``push --force`` is about to unpin the only head pin
    holding it); returns the indexes promoted.  Never where a replica pins in the retained
    layout: a recursive index would hold the trees retention let go (there the heads' own
    pins hold what is left of their DAGs, as before)."""
    pins = node.client.named_pins(f"{PIN_PREFIX}{repo_id}/")
    if _retained_layout(repo_id, pins):
        return []
    prefix = f"{PIN_PREFIX}{repo_id}/.index/"
    direct = [(n, c) for n, c, k in pins if k == "direct" and n.startswith(prefix) and "/" not in n[len(prefix):]]
    out = []
    for n, c in direct:
        for info in _indexes(node, [(c, "direct")]):
            if all(held(h) for heads in info.heads.values() for h in heads.values()):
                continue
            try:
                node.client.pin_add(c, n)  # Kubo turns the direct pin into a recursive one
            except RemoteError as err:
                if err.transient:
                    raise
                continue  # the node lacks a block the index reaches: it was not whole before either
            out.append(c)
    return out


def _retained_layout(repo_id: str, pins: Iterable[tuple[str, Cid, str]]) -> bool:
    """Whether a replica of ``repo_id`` pins this node in the retained layout (direct pins on
    its commits, named ``casync/<repository-id>/<replica>/...``): a recursive index would
    hold the trees its retention let go."""
    prefix = f"{PIN_PREFIX}{repo_id}/"
    return any(kind == "direct" and not n[len(prefix):].startswith(".") for n, _c, kind in pins)


def _indexes(node: RemoteNode, pins: Iterable[tuple[Cid, str]]) -> list[IndexInfo]:
    """The pinned ``(cid, kind)`` that are index blocks, decoded (others are skipped)."""
    out = []
    for cid, kind in pins:
        if cid_codec(cid) != DAG_CBOR:
            continue
        try:
            data = node.client.block_get(cid)
            verify_block(cid, data, node.client.url)
            info = decode_index(cid, data)
        except (InvalidObject, BlockNotFound, CorruptBlock):
            continue
        out.append(IndexInfo(info.cid, info.repository, info.by, info.seq, info.time_ms, info.heads,
                             info.records, kind))
    return out


def list_indexes(node: RemoteNode, repo_id: str) -> list[IndexInfo]:
    """Every index pinned on the node for ``repo_id`` (by any replica), newest first."""
    prefix = f"{PIN_PREFIX}{repo_id}/.index/"
    pins = [(c, k) for n, c, k in node.client.named_pins(prefix) if "/" not in n[len(prefix):]]
    found = [i for i in _indexes(node, pins) if i.repository == repo_id]
    return sorted(found, key=lambda i: (i.time_ms, i.seq), reverse=True)


def _order(info: IndexInfo) -> tuple[int, int]:
    """One replica's indexes in the order it wrote them (its record's seq, then its clock)."""
    return info.seq, info.time_ms


def demote_indexes(node: RemoteNode, repo_id: str) -> list[Cid]:
    """Turn every recursive index pin of ``repo_id`` into direct pins on the index and its
    record blocks (``retention`` moved a replica to the retained layout: a recursive index
    would keep the trees it forgot).  Returns the indexes demoted."""
    prefix = f"{PIN_PREFIX}{repo_id}/.index/"
    out = []
    for name, cid, kind in node.client.named_pins(prefix):
        if kind != "recursive" or "/" in name[len(prefix):]:
            continue
        found = _indexes(node, [(cid, kind)])
        if not found:
            continue
        info = found[0]
        node.client.pin_add_many(list(info.records.values()), recursive=False, name=f"{name}/records")
        node.client.pin_rm(cid)  # Kubo refuses a direct pin on a recursively pinned CID
        node.client.pin_add_many([cid], recursive=False, name=name)
        out.append(cid)
    return out
