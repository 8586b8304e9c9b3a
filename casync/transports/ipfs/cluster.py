"""Pins through an IPFS Cluster: what push, ``remote show`` and ``audit --remote`` do on a remote
with a ``cluster`` (docs/remotes.md#ipfs-cluster).

Blocks still go to the remote's Kubo node (a cluster peer's, or any node the peers reach by
bitswap); the head is then pinned through the cluster's REST API under casync's pin name
(``casync/<repo-id>/<replica>/<branch>``) with the remote's replication factors, and push
waits (bounded) until it is ``pinned`` on at least ``replication_min`` peers before it
publishes the head record: the closure invariant (a record names only what is kept) then
holds on that many peers.  The head this replica published before is unpinned through the
cluster once the new one is pinned, when it still carries this branch's name (no other
replica's head, and no other name, is ever unpinned).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from casync.errors import RemoteError, UsageError
from casync.model.cid import Cid, cid_str
from casync.store.ipfs_cluster import ClusterClient, PinStatus
from casync.store.retry import DEFAULT_RETRY, RetryPolicy
from casync.transports.config import Remote

__all__ = ["EMPTY_BLOCK_PIN", "ClusterPins", "Coverage", "cluster_pins", "refuse_retained"]

_POLL_S = 0.5


@dataclass(frozen=True)
class Coverage:
    """A head's pin across the cluster: on how many peers it is pinned against how many the
    remote asks for, and the peers (``name (id): status``) where it is not pinned."""

    status: PinStatus
    required: int

    @property
    def pinned(self) -> int:
        return len(self.status.pinned_on)

    @property
    def ok(self) -> bool:
        return self.status.replication_min is not None and self.pinned >= self.required  # in the pinset

    @property
    def missing(self) -> list[str]:
        """Every peer that does not report the pin ``pinned`` (``remote``: not allocated to it),
        as ``name (id): status``."""
        return [f"{p.peername or p.peer} ({p.peer}): {p.status}" + (f" ({p.error})" if p.error else "")
                for p in self.status.peers if p.status != "pinned"]

    def to_json(self) -> dict[str, Any]:
        return {**self.status.to_json(), "required": self.required, "ok": self.ok, "missing": self.missing}


EMPTY_BLOCK_PIN = "casync/empty-block"


class ClusterPins:
    """The pins of one remote on its cluster, with the remote's replication factors
    (``None``: the cluster's defaults, sent as 0)."""

    def __init__(self, client: ClusterClient, replication_min: int | None, replication_max: int | None,
                 wait: float = 300.0) -> None:
        self.client = client
        self.replication_min, self.replication_max = replication_min, replication_max
        self.wait = wait

    def is_pinned(self, cid: Cid, name: str) -> bool:
        """Whether the cluster's pinset holds ``cid`` under ``name`` with this remote's factors."""
        entry = self.client.allocation(cid)
        return entry is not None and entry.get("name") == name \
            and self.replication_min in (None, entry.get("replication_factor_min")) \
            and self.replication_max in (None, entry.get("replication_factor_max"))

    def pin_head(self, old: Cid | None, head: Cid, unpin_old: bool, name: str) -> None:
        """Pin ``head`` under ``name``, wait until enough peers hold it, then unpin ``old``
        (this replica's previous head of the branch) if ``unpin_old`` and it carries ``name``."""
        self.client.pin(head, name, self.replication_min or 0, self.replication_max or 0)
        self.wait_pinned(head)
        if unpin_old and old is not None and old != head:
            entry = self.client.allocation(old)
            if entry is not None and entry.get("name") == name:
                self.client.unpin(old)

    def hold_empty_block(self, cid: Cid, hash_name: str) -> None:
        """Have every peer hold the zero-length block ``cid``: bitswap never sends it, so a
        peer fetching a DAG with an empty file would never finish pinning it.  Added once
        through the cluster's ``/add``, pinned everywhere under :data:`EMPTY_BLOCK_PIN`."""
        entry = self.client.allocation(cid)
        if entry is not None and entry.get("replication_factor_min") == -1:
            return
        got = self.client.add_empty_file(hash_name, EMPTY_BLOCK_PIN)
        if got != cid:
            raise RemoteError(f"IPFS Cluster {self.client.url} added the empty file as {cid_str(got)}, "
                              f"not as {cid_str(cid)}",
                              hint="does the cluster support the repository's hash function "
                                   f"({hash_name})? see 'ipfs-cluster-ctl add --help'")

    def coverage(self, cid: Cid) -> Coverage:
        status = self.client.status(cid)
        return Coverage(status, self.required(status))

    def required(self, status: PinStatus) -> int:
        """How many peers must report ``pinned``: the remote's replication_min, else the
        pinset's (-1, or nothing in the pinset: every peer)."""
        low = self.replication_min if self.replication_min is not None else status.replication_min
        return len(status.peers) if low is None or low < 1 else low

    def wait_pinned(self, cid: Cid) -> Coverage:
        """Poll (bounded by ``wait`` seconds) until ``cid`` is pinned on enough peers."""
        deadline = time.monotonic() + self.wait
        while True:
            coverage = self.coverage(cid)
            if coverage.ok:
                return coverage
            if time.monotonic() >= deadline:
                raise RemoteError(f"IPFS Cluster {self.client.url}: {cid_str(cid)} is pinned on {coverage.pinned} "
                                  f"of the {coverage.required} peers asked for after {self.wait:g}s "
                                  f"(not on: {'; '.join(coverage.missing) or 'no peer allocated'})",
                                  hint="are the cluster peers' Kubo nodes connected to the node the blocks "
                                       "went to? ('ipfs swarm peers'); see 'ipfs-cluster-ctl status CID'")
            time.sleep(_POLL_S)


def cluster_pins(remote: Remote, retry: RetryPolicy = DEFAULT_RETRY, wait: float = 300.0) -> ClusterPins | None:
    """The cluster pins of ``remote`` (``None``: it pins on its Kubo node)."""
    if remote.cluster is None:
        return None
    return ClusterPins(ClusterClient(remote.cluster, retry=retry), remote.replication_min, remote.replication_max,
                       wait)


def refuse_retained(remote: Remote) -> None:
    """Retention's retained pin layout (a pin per commit and per kept tree) is Kubo-only."""
    if remote.cluster is not None:
        raise UsageError(f"remote {remote.name!r} pins through IPFS Cluster {remote.cluster}: the retained pin "
                         "layout after retention forgot commits is not supported on cluster remotes yet",
                         hint="push to a remote without a cluster, or keep the full history "
                              "(docs/remotes.md#ipfs-cluster)")
