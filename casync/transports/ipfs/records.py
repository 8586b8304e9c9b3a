"""Head records: how replicas publish their branch heads on an IPFS node.

One record per replica per repository, written only by that replica (IPFS has no
compare-and-swap, so no two writers ever share a record), as a small JSON file in the
node's MFS::

    /casync/<repository-id>/heads/<replica>

    {"format": "casync-heads/1", "repository": "...", "replica": "edge-1", "seq": 7,
     "time_ms": 1700000000000, "hash": "blake3", "chunker": "cdc",
     "heads": {"main": {"commit": "bafyr...", "generation": 12, "clock": {"edge-1": 7}}},
     "tags": {"v1": "bafyr..."}}

``tags`` (absent when there are none) are the replica's tags on commits its heads reach.

A record is written only after every block its heads reach is on the node and the
heads are pinned (closure invariant).  ``seq`` grows by one per publish.  MFS is local to
one node; for other nodes every push also writes a *linked index*, a DAG-CBOR root linking
every replica's heads and records (:mod:`casync.transports.ipfs.index`).  A URL may name one,
or the CID of the MFS directory ``/casync/<repository-id>`` (what older versions printed as
the index): both are read here.  See ``docs/remotes.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from casync.errors import CasyncError, InvalidObject, RemoteError, UsageError
from casync.model.chunking import CHUNKERS
from casync.model.cid import DAG_CBOR, DAG_PB, HASHES, Cid, cid_codec, cid_str, parse_cid
from casync.model.names import validate_branch_name, validate_replica_name
from casync.repo.tags import checked_tags
from casync.store.ipfs import DEFAULT_RETRY, IpfsBlockStore, IpfsClient, RetryPolicy
from casync.transports.config import RemoteUrl, validate_repo_id
from casync.trees.unixfs import iter_file, read_dir

__all__ = ["FORMAT", "MAX_RECORD_BYTES", "BranchHead", "HeadRecord", "RemoteNode", "connect"]

FORMAT = "casync-heads/1"
ROOT = "/casync"
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True)
class BranchHead:
    commit: Cid
    generation: int = 0
    clock: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadRecord:
    repository: str
    replica: str
    seq: int
    time_ms: int
    hash: str
    chunker: str
    heads: Mapping[str, BranchHead]
    tags: Mapping[str, Cid] = field(default_factory=dict)

    def encode(self) -> bytes:
        obj = {
            "format": FORMAT,
            "repository": self.repository,
            "replica": self.replica,
            "seq": self.seq,
            "time_ms": self.time_ms,
            "hash": self.hash,
            "chunker": self.chunker,
            "heads": {b: {"commit": cid_str(h.commit), "generation": h.generation, "clock": dict(h.clock)}
                      for b, h in sorted(self.heads.items())},
        }
        if self.tags:  # absent when there are none: records without tags read as before
            obj["tags"] = {t: cid_str(c) for t, c in sorted(self.tags.items())}
        return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.encode())
        return out

    def with_head(self, branch: str, head: BranchHead) -> HeadRecord:
        heads = dict(self.heads)
        heads[branch] = head
        return HeadRecord(self.repository, self.replica, self.seq + 1, int(time.time() * 1000), self.hash,
                          self.chunker, heads, self.tags)

    def with_tags(self, tags: Mapping[str, Cid]) -> HeadRecord:
        return HeadRecord(self.repository, self.replica, self.seq, self.time_ms, self.hash, self.chunker,
                          self.heads, dict(tags))


def decode_record(data: bytes, repository: str, replica: str, where: str) -> HeadRecord:
    """Parse and validate a head record; raise InvalidObject naming ``where``."""
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidObject(f"head record {where} is too large ({len(data)} bytes)")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidObject(f"head record {where} is not JSON ({type(exc).__name__})") from None
    return record_from(obj, repository, replica, where, parse_cid)


def record_from(obj: Any, repository: str, replica: str, where: str, to_cid: Callable[[Any], Cid]) -> HeadRecord:
    """The record ``obj`` describes, validated; ``to_cid`` reads one CID (a text CID in
    the JSON record, a link in the index's DAG-CBOR record block)."""
    try:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise InvalidObject(f"head record {where} has an unknown format "
                                f"{obj.get('format') if isinstance(obj, dict) else None!r}")
        if obj["repository"] != repository:
            raise InvalidObject(f"head record {where} belongs to repository {obj['repository']!r}")
        if obj["replica"] != replica:
            raise InvalidObject(f"head record {where} claims replica {obj['replica']!r}")
        if obj["hash"] not in HASHES:
            raise InvalidObject(f"head record {where} uses unknown hash {obj['hash']!r}")
        if obj["chunker"] not in CHUNKERS:
            raise InvalidObject(f"head record {where} uses unknown chunker {obj['chunker']!r}")
        for key in ("seq", "time_ms"):
            if not isinstance(obj[key], int) or isinstance(obj[key], bool):
                raise InvalidObject(f"head record {where}: {key} must be an integer")
        heads = {}
        for branch, h in obj["heads"].items():
            validate_branch_name(branch)
            commit = to_cid(h["commit"])
            if cid_codec(commit) != DAG_CBOR:
                raise InvalidObject(f"head record {where}: branch {branch} does not name a commit")
            clock = {str(k): int(v) for k, v in dict(h.get("clock", {})).items()}
            heads[branch] = BranchHead(commit, int(h.get("generation", 0)), clock)
        seq, time_ms = int(obj["seq"]), int(obj["time_ms"])
        if seq < 1:
            raise InvalidObject(f"head record {where} has sequence number {seq}")
        tags = _decode_tags(obj.get("tags", {}), where, to_cid)
        return HeadRecord(repository, replica, seq, time_ms, str(obj["hash"]), str(obj["chunker"]), heads, tags)
    except InvalidObject:
        raise
    except (CasyncError, KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        raise InvalidObject(f"head record {where} is malformed ({type(exc).__name__})") from None


def _decode_tags(value: Any, where: str, to_cid: Callable[[Any], Cid]) -> dict[str, Cid]:
    if not isinstance(value, dict):
        raise InvalidObject(f"head record {where}: tags must be an object")
    try:
        return checked_tags({str(k): to_cid(v) for k, v in value.items()})
    except ValueError as exc:
        raise InvalidObject(f"head record {where}: {exc}") from None


class RemoteNode:
    """One Kubo node seen as a casync remote: head records, blocks and pins."""

    def __init__(self, url: RemoteUrl, *, retry: RetryPolicy = DEFAULT_RETRY, timeout: float = 300.0,
                 wait: float = 60.0) -> None:
        self.url = url
        self.wait = wait  # how long one missing block may take to arrive by bitswap
        self.client = IpfsClient(url.api, retry=retry, timeout=timeout)
        self.version = ""
        self._peers: int | None = None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        try:
            self.version = self.client.check()
        except RemoteError as err:
            err.message = f"remote {self.url.text}: {err.message}"
            raise

    @property
    def online(self) -> bool:
        """Whether the node has peers to fetch missing blocks from (bitswap)."""
        if self._peers is None:
            self._peers = self.client.swarm_peer_count()
        return self._peers > 0

    def block_store(self, *, wait: float | None = None, **kwargs: Any) -> IpfsBlockStore:
        return IpfsBlockStore(self.client, offline=not self.online, wait=self.wait if wait is None else wait,
                              **kwargs)

    # --- paths ---------------------------------------------------------------------------------

    @staticmethod
    def repo_dir(repo_id: str) -> str:
        validate_repo_id(repo_id)
        return f"{ROOT}/{repo_id}"

    def record_path(self, repo_id: str, replica: str) -> str:
        validate_replica_name(replica)
        return f"{self.repo_dir(repo_id)}/heads/{replica}"

    # --- discovery -----------------------------------------------------------------------------

    def repositories(self) -> list[str]:
        return [n for n in self.client.files_ls(ROOT) or [] if not n.startswith(".")]

    def resolve_repo_id(self, errors: list[str] | None = None) -> str:
        """The repository this URL means: its path, the index's records, or the node's only one."""
        if self.url.repo_id:
            return self.url.repo_id
        if self.url.index is not None:
            ids = {r.repository for r in self._index_records(None, errors or [])}
            if len(ids) == 1:
                return ids.pop()
            raise RemoteError(f"index {cid_str(self.url.index)} at {self.url.text} holds no usable head records")
        repos = self.repositories()
        if len(repos) == 1:
            return repos[0]
        if not repos:
            raise RemoteError(f"no casync repository at {self.url.text} (nothing under {ROOT} in its MFS)",
                              hint="push to it first, or give an index: URL#INDEX-CID")
        raise UsageError(f"{self.url.text} holds several repositories: {', '.join(repos)}",
                         hint="add the repository id to the URL: ipfs+http://HOST:PORT/REPOSITORY-ID")

    def records(self, repo_id: str, errors: list[str] | None = None, *, index: bool = True) -> dict[str, HeadRecord]:
        """Every replica's head record for ``repo_id`` (MFS of this node, plus the URL's
        index if it has one and ``index``; the higher ``seq`` wins).  Invalid records are
        reported into ``errors`` (or raised when ``errors`` is None)."""
        out: dict[str, HeadRecord] = {}
        names = self.client.files_ls(f"{self.repo_dir(repo_id)}/heads") or []
        for name in names:
            where = f"{self.repo_dir(repo_id)}/heads/{name} on {self.url.api}"
            try:
                validate_replica_name(name)
                rec = self._read_record(f"{self.repo_dir(repo_id)}/heads/{name}", repo_id, name, where)
                if rec is None:
                    continue
                out[name] = rec
            except (InvalidObject, UsageError) as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
            except RemoteError as exc:  # e.g. a directory where a record file belongs
                if exc.transient:
                    raise
                if errors is None:
                    raise
                errors.append(f"head record {where} is unreadable: {exc.message}")
        for rec in self._index_records(repo_id, errors) if index else ():
            if rec.replica not in out or out[rec.replica].seq < rec.seq:
                out[rec.replica] = rec
        return out

    def _read_record(self, path: str, repo_id: str, name: str, where: str) -> HeadRecord | None:
        """One replica's record (None: gone).  A reply the link cut short reads as a record
        that is not JSON, so one that does not decode is read again: it is invalid only when
        two reads in a row return the same bytes (at most 4 reads)."""
        last: bytes | None = None
        for _attempt in range(4):
            data = self.client.files_read(path, MAX_RECORD_BYTES)
            if data is None:
                return None
            try:
                return decode_record(data, repo_id, name, where)
            except InvalidObject:
                if data == last:
                    raise
                last = data
        return decode_record(last or b"", repo_id, name, where)

    def _index_records(self, repo_id: str | None, errors: list[str] | None) -> list[HeadRecord]:
        index = self.url.index
        if index is None:
            return []
        if cid_codec(index) == DAG_CBOR:  # the linked index (transports.ipfs.index)
            from casync.transports.ipfs.index import read_index  # it builds on this module's records

            store = self.block_store()
            try:
                return read_index(store, index, repo_id, errors)
            finally:
                store.discard()
        if cid_codec(index) != DAG_PB:
            raise InvalidObject(f"index {cid_str(index)} is neither a casync index (dag-cbor) "
                                "nor an MFS directory (dag-pb)")
        return self._mfs_index_records(index, repo_id, errors)

    def _mfs_index_records(self, index: Cid, repo_id: str | None, errors: list[str] | None) -> list[HeadRecord]:
        """Records of an index printed by casync before the linked index: the CID of the
        MFS directory ``/casync/<repository-id>``, its ``heads/`` holding the JSON records."""
        store = self.block_store()
        out = []
        try:
            heads = next((link for link in read_dir(store, index) if link.name == "heads"), None)
            if heads is None:
                raise InvalidObject(f"index {cid_str(index)} has no 'heads' directory")
            for link in read_dir(store, heads.cid):
                where = f"{cid_str(index)}/heads/{link.name}"
                try:
                    validate_replica_name(link.name)
                    data = b"".join(iter_file(store, link.cid))
                    rid = repo_id or _peek_repository(data, where)
                    out.append(decode_record(data, rid, link.name, where))
                except (InvalidObject, UsageError) as exc:
                    if errors is None:
                        raise
                    errors.append(str(exc))
        finally:
            store.discard()
        return out

    # --- publishing ----------------------------------------------------------------------------

    def publish(self, record: HeadRecord) -> None:
        """Replace this replica's record (only ever called by that replica)."""
        heads_dir = f"{self.repo_dir(record.repository)}/heads"
        if self.client.files_ls(heads_dir) is None:
            self.client.files_mkdir(heads_dir, record.hash)
        self.client.files_replace(self.record_path(record.repository, record.replica), record.encode())

    def index_cid(self, repo_id: str) -> Cid | None:
        """CID of ``/casync/<repo-id>`` in this node's MFS, the *MFS index* (a UnixFS
        directory of the JSON records; what casync printed as the index before the linked
        index of :mod:`casync.transports.ipfs.index`, and what older versions read)."""
        return self.client.files_stat_cid(self.repo_dir(repo_id))


def _peek_repository(data: bytes, where: str) -> str:
    try:
        rid = json.loads(data)["repository"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InvalidObject(f"head record {where} is malformed") from None
    if not isinstance(rid, str):
        raise InvalidObject(f"head record {where} is malformed")
    validate_repo_id(rid)
    return rid


def connect(url: RemoteUrl, **kwargs: Any) -> RemoteNode:
    """A checked connection: fails with a RemoteError naming the URL if the node does not answer."""
    node = RemoteNode(url, **kwargs)
    try:
        node.check()
    except BaseException:
        node.close()
        raise
    return node
