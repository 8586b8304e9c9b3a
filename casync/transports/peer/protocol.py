"""What both sides of the peer protocol share: the :class:`Peer` interface, the ``info``
message (:class:`PeerInfo`), the request limits and the strict parsers of what a peer sends.

Apart from the serving side (:mod:`casync.transports.peer.service`) and the client's
procedures (:mod:`casync.transports.peer.exchange`) because the HTTP client and the WSGI
application need these too, and neither side should import the other for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from casync.errors import InvalidObject, RemoteError, UsageError
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, parse_cid
from casync.model.names import is_replica_name, is_repo_id, validate_branch_name
from casync.repo.tags import TagUpdate, checked_tags
from casync.transfer.stream import TransferStats

__all__ = ["MAX_HAVES", "MAX_TAGS_PER_PUSH", "MAX_WANTS", "Peer", "PeerInfo", "parse_cid_list", "parse_tag_map"]

MAX_HAVES = 4096
MAX_WANTS = 1024
MAX_TAGS_PER_PUSH = 256


@dataclass(frozen=True)
class PeerInfo:
    repository_id: str
    replica: str
    refs: dict[str, Cid]  # branch -> commit
    read_only: bool
    hash: str = "blake3"
    chunker: str = "cdc"
    tags: dict[str, Cid] | None = None  # None: a peer from before tags (it neither sends nor takes them)
    scope: str = "write"  # what the token this side sent may do: "read" cannot push

    def to_json(self) -> dict[str, Any]:
        out = {"repository_id": self.repository_id, "replica": self.replica, "read_only": self.read_only,
               "hash": self.hash, "chunker": self.chunker, "refs": {k: cid_str(v) for k, v in self.refs.items()}}
        if self.tags is not None:
            out["tags"] = {k: cid_str(v) for k, v in self.tags.items()}
        return out

    @classmethod
    def from_json(cls, obj: Any) -> PeerInfo:
        try:
            refs = {str(k): parse_cid(v) for k, v in obj["refs"].items()}
            for name, cid in refs.items():
                validate_branch_name(name)
                if cid_codec(cid) != DAG_CBOR:
                    raise UsageError(f"branch {name!r} does not name a commit")
            if not is_repo_id(obj["repository_id"]):
                raise ValueError(f"repository id {str(obj['repository_id'])[:80]!r} is not a valid id")
            if not isinstance(obj["replica"], str) or not is_replica_name(obj["replica"]):
                raise ValueError(f"replica id {str(obj['replica'])[:80]!r} is not a valid id")
            scope = "read" if obj.get("scope") == "read" else "write"
            return cls(str(obj["repository_id"]), str(obj["replica"]), refs, bool(obj["read_only"]),
                       str(obj.get("hash", "blake3")), str(obj.get("chunker", "cdc")), parse_tag_map(obj.get("tags")),
                       scope)
        except (KeyError, TypeError, AttributeError, ValueError, UsageError) as exc:
            raise RemoteError(f"peer sent a malformed info message ({exc})") from None


def parse_tag_map(value: Any) -> dict[str, Cid] | None:
    """A peer's ``{"tags": {name: commit CID}}`` (absent: None); malformed -> ValueError."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("tags must map names to CID strings")
    return checked_tags({k: parse_cid(v) for k, v in value.items()})


class Peer(Protocol):
    url: str

    def info(self) -> PeerInfo: ...

    def negotiate(self, haves: list[Cid]) -> list[Cid]: ...

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]: ...

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats: ...

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate: ...
    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]: ...

    def close(self) -> None: ...


def parse_cid_list(value: Any, what: str, limit: int, commits: bool = True) -> list[Cid]:
    """Strictly parse a JSON list of commit CIDs (any CIDs with ``commits=False``) from a
    peer (malformed -> InvalidObject)."""
    if not isinstance(value, list) or len(value) > limit:
        raise InvalidObject(f"{what} must be a list of at most {limit} CIDs")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise InvalidObject(f"{what} holds a non-string")
        try:
            cid = parse_cid(item)
        except UsageError:
            raise InvalidObject(f"{what} holds an invalid CID {item[:80]!r}") from None
        if commits and cid_codec(cid) != DAG_CBOR:
            raise InvalidObject(f"{what} holds {item[:80]!r}, which is not a commit CID")
        out.append(cid)
    return out
