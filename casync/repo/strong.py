"""Strong branches: refs whose truth is a key in etcd (docs/design.md, "Strong branches").

:class:`StrongRefStore` has the interface of :class:`~casync.store.refs.LmdbRefStore` (Irmin's
shape: one atomic compare-and-swap ref store), so every command that reads or moves a
branch — commit, merge, transactions, a push received, ``branch -d`` — goes through it and
none of them knows about etcd:

- ``get_ref("heads/B")`` of a strong branch B is a linearizable read of B's key; the head's
  blocks are brought in from the shared block store when missing, then the local copy of
  the ref (a cache, what ``list_refs`` shows) follows.
- ``cas_ref("heads/B", old, new)`` first publishes ``new``'s blocks to the shared store,
  then swaps the key on etcd comparing its ``mod_revision`` (0: the key must not exist):
  the move is acknowledged only when etcd says so.  A lost swap is
  :class:`~casync.errors.StrongRefMoved`, no etcd majority in ``strong.timeout`` seconds
  is :class:`~casync.errors.StrongUnavailable`; either way the new commit is kept on the
  local ref ``strong-pending/B`` and nothing else changes.
- Every other ref (eventual branches, tags, remotes, HEAD) is the local store's, untouched:
  eventual branches work offline beside strong ones.
"""

from __future__ import annotations

import contextlib
import json
from typing import Protocol

from casync.errors import (
    CasyncError,
    InvalidObject,
    RefConflict,
    RemoteError,
    StrongRefMoved,
    StrongUnavailable,
)
from casync.model.cid import Cid, cid_str, parse_cid, short
from casync.settings import StrongSettings
from casync.store.base import RefLogEntry
from casync.store.etcd import EtcdClient, EtcdUnavailable, KeyValue
from casync.store.refs import LmdbRefStore

__all__ = ["PENDING_PREFIX", "BlockShare", "StrongRefStore"]

PENDING_PREFIX = "strong-pending/"
"""Local refs ``strong-pending/BRANCH``: the last commit a strong move did not get acknowledged."""


class BlockShare(Protocol):
    """The block store every site reads (docs/design.md): blocks go there before a strong
    head names them, and come from there when another site's head is read."""

    def publish(self, head: Cid, since: Cid | None) -> None:
        """Make ``head``'s closure readable by every site (``since``'s already is)."""

    def obtain(self, head: Cid) -> None:
        """Bring ``head``'s closure into the local store (verified), if it is not here."""

    def close(self) -> None: ...


class StrongRefStore:
    """Refs of a repository some of whose branches are strong (see the module docstring)."""

    def __init__(self, local: LmdbRefStore, settings: StrongSettings, repository_id: str, replica: str,
                 share: BlockShare | None) -> None:
        self.local = local
        self.settings = settings
        self.repository_id = repository_id
        self.replica = replica
        self.share = share
        self.etcd = EtcdClient(list(settings.etcd_endpoints), timeout=settings.timeout)
        self._seen: dict[str, KeyValue] = {}  # branch -> the key as last read or written

    def close(self) -> None:
        self.etcd.close()
        if self.share is not None:
            self.share.close()

    def strong_branch(self, name: str) -> str | None:
        """The branch ``name`` (a ref name) is, if it is a strong one."""
        if not name.startswith("heads/"):
            return None
        branch = name[len("heads/"):]
        return branch if self.settings.is_strong(branch) else None

    def key(self, branch: str) -> bytes:
        return f"{self.settings.key_prefix}{self.repository_id}/heads/{branch}".encode()

    # --- the ref interface ----------------------------------------------------------------------

    def get_ref(self, name: str) -> Cid | None:
        branch = self.strong_branch(name)
        if branch is None:
            return self.local.get_ref(name)
        kv = self._read(branch, "read")
        head, _replica = self._decode(branch, kv)
        if head is None:  # not in etcd (yet): a branch that exists only here, until a move creates the key
            return self.local.get_ref(name)
        if self.share is not None:
            self.share.obtain(head)  # blocks first: the local copy never names what is not here
        self._mirror(name, head, "strong: read from etcd")
        if self.local.get_ref(PENDING_PREFIX + branch) == head:  # a move that timed out did take effect
            self.local.cas_ref(PENDING_PREFIX + branch, head, None, "strong: found acknowledged on etcd")
        return head

    def list_refs(self, prefix: str = "") -> dict[str, Cid]:
        """The local refs; strong branches as last read or moved here (not a linearizable read)."""
        return self.local.list_refs(prefix)

    def cas_ref(self, name: str, old: Cid | None, new: Cid | None, reason: str) -> None:
        branch = self.strong_branch(name)
        if branch is None:
            self.local.cas_ref(name, old, new, reason)
            return
        seen = self._seen.get(branch)
        if seen is None or self._decode(branch, seen)[0] != old:
            seen = self._read(branch, "move", new)
        current, by = self._decode(branch, seen)
        if current is None and old is not None and old == self.local.get_ref(name):
            current = old  # a branch that existed here before it was strong: this move creates its key
        if current == new and new is not None and current != old:
            self._mirror(name, new, reason)  # already there (a retry after a timed-out swap that took effect)
            return
        if current != old:
            raise self._moved(branch, old, current, by, new)
        if new is not None and self.share is not None:
            try:
                self.share.publish(new, old)
            except CasyncError as exc:
                self._keep(branch, new)
                raise RemoteError(f"strong branch {branch} was not moved: its blocks could not be published to "
                                  f"the shared block store: {exc.message}", hint=self._kept_hint(branch, new),
                                  transient=isinstance(exc, RemoteError) and exc.transient) from exc
        value = None if new is None else json.dumps({"commit": cid_str(new), "replica": self.replica}).encode()
        try:
            result = self.etcd.compare_and_swap(self.key(branch), seen.mod_revision, value)
        except EtcdUnavailable as exc:
            self._seen.pop(branch, None)
            self._keep(branch, new)
            raise self._unavailable(branch, "move", exc, new,
                                    ambiguous=True) from exc
        self._seen[branch] = result.current
        if not result.succeeded:
            current, by = self._decode(branch, result.current)
            if current != new or new is None:  # == new: an attempt whose answer was lost (a 503 in an
                raise self._moved(branch, old, current, by, new)  # election) took effect, then was retried
        self._mirror(name, new, reason)
        pending = self.local.get_ref(PENDING_PREFIX + branch)
        if pending is not None and pending == new:
            self.local.cas_ref(PENDING_PREFIX + branch, pending, None, "strong: acknowledged")

    def set_head(self, value: bytes, reason: str) -> None:
        self.local.set_head(value, reason)

    def reflog(self, name: str) -> list[RefLogEntry]:
        return self.local.reflog(name)

    # --- helpers -----------------------------------------------------------------------------

    def _read(self, branch: str, what: str, new: Cid | None = None) -> KeyValue:
        try:
            kv = self.etcd.get(self.key(branch))
        except EtcdUnavailable as exc:
            self._keep(branch, new)
            raise self._unavailable(branch, what, exc, new) from exc
        self._seen[branch] = kv
        return kv

    def _decode(self, branch: str, kv: KeyValue) -> tuple[Cid | None, str | None]:
        if kv.value is None:
            return None, None
        try:
            value = json.loads(kv.value)
            return parse_cid(value["commit"]), str(value.get("replica") or "?")
        except (ValueError, KeyError, TypeError, CasyncError) as exc:
            raise InvalidObject(f"etcd key {self.key(branch).decode()} does not hold a casync head "
                                f"({kv.value[:80]!r})") from exc

    def _mirror(self, name: str, head: Cid | None, reason: str) -> None:
        """Let the local copy of a strong branch follow etcd (a cache; the reflog records it)."""
        current = self.local.get_ref(name)
        if current == head:
            return
        with contextlib.suppress(RefConflict):  # another process here updated the copy: it read etcd too
            self.local.cas_ref(name, current, head, reason)

    def _keep(self, branch: str, new: Cid | None) -> None:
        if new is None:
            return
        ref = PENDING_PREFIX + branch
        current = self.local.get_ref(ref)
        if current != new:
            self.local.cas_ref(ref, current, new, "strong: move not acknowledged")

    def _kept_hint(self, branch: str, new: Cid | None) -> str:
        kept = f"your commit {short(new)} is kept as {PENDING_PREFIX}{branch}; " if new is not None else ""
        return kept + "the files in the working tree are untouched"

    def _moved(self, branch: str, old: Cid | None, current: Cid | None, by: str | None,
               new: Cid | None) -> StrongRefMoved:
        self._keep(branch, new)
        now = f"{short(current)} (by replica {by})" if current is not None else "nothing (deleted)"
        was = short(old) if old is not None else "nothing"
        return StrongRefMoved(
            f"strong branch {branch} moved on etcd: expected {was}, it is now {now}; nothing was overwritten "
            f"or merged",
            hint=f"{self._kept_hint(branch, new)}: pull the new head ('casync checkout {branch}' reads it from etcd "
                 f"and keeps your edits), then retry")

    def _unavailable(self, branch: str, what: str, exc: EtcdUnavailable, new: Cid | None,
                     ambiguous: bool = False) -> StrongUnavailable:
        verb = "moved" if what == "move" else "read"
        outcome = (" (the request may have reached etcd: the next read of the branch tells whether it took "
                   "effect)" if ambiguous else "")
        return StrongUnavailable(
            f"strong branch {branch} cannot be {verb}: this site is cut off from the etcd majority "
            f"({exc.message}){outcome}",
            hint=f"{self._kept_hint(branch, new)}; retry when etcd is reachable (endpoints: "
                 f"{', '.join(self.settings.etcd_endpoints)}); eventual branches keep working offline")
