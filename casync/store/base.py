"""The storage contracts every backend implements.

Two deliberately dumb interfaces, in the spirit of restic's backends and Irmin's split
between content-addressed and atomic-write stores:

* :class:`BlockStore` — content-addressed blocks: put / get / has / delete / list.
  Keys are binary CIDs; values are immutable.  ``get`` of a block read from disk or
  a network is hash-verified by the backend.
* :class:`RefStore` — names to CIDs, changed only by compare-and-swap, with a reflog.

Retry and caching are wrapping stores, not features of each backend.  One contract
test suite (``tests/test_store_contract.py``) runs against every backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from casync.errors import RefConflict
from casync.model.cid import Cid, cid_str

__all__ = ["BlockStore", "RefLogEntry", "RefStore", "ref_moved"]


def ref_moved(name: str, expected: Cid | None, found: Cid | None) -> RefConflict:
    """The error of a compare-and-swap that lost: every ref store says it the same way."""
    return RefConflict(f"ref {name} moved: expected {cid_str(expected) if expected else 'nothing'}, "
                       f"found {cid_str(found) if found else 'nothing'}",
                       hint="another writer updated it; re-read and retry")


@runtime_checkable
class BlockStore(Protocol):
    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        """Store ``data`` under ``cid``; return False when it was already present.

        The caller vouches that ``cid`` is the hash of ``data`` (it computed it, or
        verified it with :func:`casync.model.cid.verify_block` when the block came from
        elsewhere).  Blocks become durable at :meth:`flush`.
        """
        ...

    def get(self, cid: Cid) -> bytes:
        """The block's bytes; :class:`BlockNotFound` or :class:`CorruptBlock` otherwise."""
        ...

    def has(self, cid: Cid) -> bool: ...

    def has_many(self, cids: Iterable[Cid]) -> set[Cid]:
        """The subset of ``cids`` present (one round trip where the backend allows)."""
        ...

    def delete(self, cid: Cid) -> None: ...

    def iter_cids(self) -> Iterator[Cid]: ...

    def flush(self) -> None:
        """Make every block put so far durable (fsync, upload...)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RefLogEntry:
    ref: str
    old: Cid | None
    new: Cid | None
    time_ms: int
    reason: str


class RefStore(Protocol):
    def get_ref(self, name: str) -> Cid | None: ...

    def list_refs(self, prefix: str = "") -> dict[str, Cid]: ...

    def cas_ref(self, name: str, old: Cid | None, new: Cid | None, reason: str) -> None:
        """Set ``name`` to ``new`` (None deletes) if it currently is ``old``; else RefConflict."""
        ...

    def reflog(self, name: str) -> list[RefLogEntry]: ...
