"""Commits: the DAG-CBOR block that names a tree, its parents and its causality metadata.

Apart from the UnixFS codecs (:mod:`casync.model.objects`) because a commit is another
format (DAG-CBOR, not dag-pb) with its own rules: field kinds checked exactly, the
structural limits below, a detached signature.  Pure functions, no I/O; every decoder is
strict (only the canonical encoding is accepted, see :mod:`casync.model.cbor`).  The
byte-level format is docs/design.md §4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from casync.errors import InvalidObject, LimitExceeded
from casync.model import cbor
from casync.model.cbor import Link
from casync.model.cid import DAG_CBOR, DAG_PB, Cid, cid_codec, cid_str, is_cid
from casync.model.names import is_replica_name

__all__ = [
    "MAX_COUNT",
    "MAX_LOGICAL",
    "MAX_PARENTS",
    "MAX_WALL_MS",
    "Commit",
    "HybridTime",
    "decode_commit",
    "encode_commit",
]

MAX_WALL_MS = (1 << 63) - 1
"""Largest HLC wall time accepted (a signed 64-bit integer, as every reader can hold it)."""
MAX_LOGICAL = (1 << 32) - 1
"""Largest HLC logical counter accepted (:func:`casync.history.clock.hlc_next` carries over)."""
MAX_COUNT = (1 << 53) - 1
"""Largest generation or vector-clock entry accepted: no history gets near it, and every
JSON reader (``log --json``) still holds it exactly."""
MAX_PARENTS = 64
"""Most parents a commit may name (an octopus merge of 64 branches is already absurd)."""


@dataclass(frozen=True, slots=True, order=True)
class HybridTime:
    """Hybrid logical clock reading: wall-clock milliseconds plus a logical counter."""

    wall_ms: int
    logical: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """A snapshot: a tree link plus its history and causality metadata.

    ``signature`` is detached: it is not part of the bytes that are signed (see
    :meth:`signing_bytes`), leaving room for per-replica ed25519 signatures.
    """

    tree: Cid
    parents: tuple[Cid, ...]
    clock: Mapping[str, int]
    time: HybridTime
    replica: str
    author: str
    message: str
    generation: int
    meta: Mapping[str, str] = field(default_factory=dict)
    signature: bytes | None = None

    def _to_ipld(self, with_signature: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "v": 1,
            "tree": Link(self.tree),
            "parents": [Link(p) for p in self.parents],
            "clock": dict(self.clock),
            "time": {"wall_ms": self.time.wall_ms, "logical": self.time.logical},
            "replica": self.replica,
            "author": self.author,
            "message": self.message,
            "generation": self.generation,
            "meta": dict(self.meta),
        }
        if with_signature and self.signature is not None:
            obj["sig"] = self.signature
        return obj

    def signing_bytes(self) -> bytes:
        """The canonical bytes a signature covers: the commit without its ``sig`` field."""
        return cbor.encode(self._to_ipld(False))

    def check(self) -> None:
        """Structural rules a commit must satisfy on its own (graph rules live in graph.py)."""
        if cid_codec(self.tree) != DAG_PB:
            raise InvalidObject(f"commit tree {cid_str(self.tree)} is not a dag-pb directory")
        if len(self.parents) > MAX_PARENTS:
            raise LimitExceeded(f"commit names {len(self.parents)} parents (at most {MAX_PARENTS})")
        if not is_cid(self.tree) or not all(is_cid(p) for p in self.parents):
            raise InvalidObject("commit links to an invalid CID")
        if len(set(self.parents)) != len(self.parents):
            raise InvalidObject("commit lists a parent twice")
        for p in self.parents:
            if cid_codec(p) != DAG_CBOR:
                raise InvalidObject(f"commit parent {cid_str(p)} is not a dag-cbor commit")
        if not is_replica_name(self.replica):
            raise InvalidObject(f"commit replica id {self.replica[:80]!r} is not a valid replica name")
        for name, count in self.clock.items():
            if not isinstance(name, str) or not isinstance(count, int) or count < 0 or not is_replica_name(name):
                raise InvalidObject("commit clock must map replica ids to non-negative integers")
        if any(count > MAX_COUNT for count in self.clock.values()):
            raise LimitExceeded(f"commit clock entry beyond {MAX_COUNT}")
        if self.clock.get(self.replica, 0) < 1:
            raise InvalidObject(f"commit clock does not count its own replica {self.replica!r}")
        if self.generation < 1 or (not self.parents and self.generation != 1):
            raise InvalidObject(f"commit generation {self.generation} is invalid")
        if self.generation > MAX_COUNT:
            raise LimitExceeded(f"commit generation {self.generation} is beyond {MAX_COUNT}")
        if self.time.wall_ms < 0 or self.time.logical < 0:
            raise InvalidObject("commit time must be non-negative")
        if self.time.wall_ms > MAX_WALL_MS or self.time.logical > MAX_LOGICAL:
            raise LimitExceeded(f"commit time ({self.time.wall_ms}, {self.time.logical}) is out of range "
                                f"(wall_ms <= {MAX_WALL_MS}, logical <= {MAX_LOGICAL})")


def encode_commit(commit: Commit) -> bytes:
    commit.check()
    return cbor.encode(commit._to_ipld(True))


def decode_commit(block: bytes, cid: Cid | None = None) -> Commit:
    """Decode and validate a commit block; non-canonical encodings are rejected (the
    strict decoder accepts only the canonical form, see :mod:`casync.model.cbor`)."""
    try:
        return _commit_from(cbor.decode(block))
    except InvalidObject as exc:  # the same type, its message naming the commit
        raise type(exc)(f"{_commit_name(cid)}: {exc.message}") from None


def _commit_name(cid: Cid | None) -> str:
    return f"commit {cid_str(cid)}" if cid else "commit"


def _commit_from(obj: Any) -> Commit:
    """The commit ``obj`` describes (messages without a prefix: decode_commit adds the CID)."""
    if not isinstance(obj, dict):
        raise InvalidObject("not a map")
    try:
        if obj.get("v") != 1:
            raise InvalidObject(f"unsupported commit format version {obj.get('v')!r}")
        _check_types(obj)
        t = obj["time"]
        commit = Commit(
            tree=bytes(obj["tree"]),
            parents=tuple(bytes(p) for p in obj["parents"]),
            clock=dict(obj["clock"]),
            time=HybridTime(int(t["wall_ms"]), int(t["logical"])),
            replica=str(obj["replica"]),
            author=str(obj["author"]),
            message=str(obj["message"]),
            generation=int(obj["generation"]),
            meta=dict(obj.get("meta", {})),
            signature=obj.get("sig"),
        )
    except InvalidObject:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidObject(f"missing or malformed field ({exc})") from None
    extra = set(obj) - {"v", "tree", "parents", "clock", "time", "replica", "author", "message",
                        "generation", "meta", "sig"}
    if extra:
        raise InvalidObject(f"unknown fields {sorted(extra)}")
    commit.check()
    return commit


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(obj: dict[str, Any]) -> None:
    """Exact IPLD kinds for every field: canonical bytes alone cannot catch a string
    where an integer belongs, so a peer could otherwise smuggle in ambiguous commits."""
    def bad(field: str, kind: str) -> InvalidObject:
        return InvalidObject(f"field {field!r} must be {kind}")

    if not _is_int(obj.get("v")):
        raise bad("v", "an integer")
    if not isinstance(obj.get("tree"), Link):
        raise bad("tree", "a link")
    parents = obj.get("parents")
    if not isinstance(parents, list) or not all(isinstance(p, Link) for p in parents):
        raise bad("parents", "a list of links")
    clock = obj.get("clock")
    if not isinstance(clock, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in clock.items()):
        raise bad("clock", "a map of replica ids to integers")
    t = obj.get("time")
    if not isinstance(t, dict) or set(t) != {"wall_ms", "logical"} or not all(_is_int(v) for v in t.values()):
        raise bad("time", "a map {wall_ms: int, logical: int}")
    for name in ("replica", "author", "message"):
        if not isinstance(obj.get(name), str):
            raise bad(name, "a string")
    if not _is_int(obj.get("generation")):
        raise bad("generation", "an integer")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("meta", "a map of strings to strings")
    if "sig" in obj and (not isinstance(obj["sig"], bytes) or isinstance(obj["sig"], Link)):
        raise bad("sig", "bytes")
