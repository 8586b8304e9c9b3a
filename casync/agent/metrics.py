"""The agent's Prometheus metrics, on a registry of its own (never the process-global one).

The names are a contract with the alerts and dashboards in ``deploy/`` (the seed's
SyncLagHigh, SyncFailure, ConflictResolutionBacklog, and AuditFailed): change none of them.
:func:`classify` turns a failed sync into the ``reason`` label by the exception's type (and
the types it was raised from), never by its message.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from casync.errors import (
    BlockNotFound,
    ConflictError,
    CorruptBlock,
    InvalidObject,
    PeerRefused,
    RefConflict,
    RemoteAuthError,
    RemoteTimeout,
    RemoteUnreachable,
    StateRefused,
)
from casync.model.car import TruncatedCar

__all__ = ["REASONS", "AgentMetrics", "classify"]

REASONS = ("unreachable", "timeout", "auth", "refused", "corrupt", "error")
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from or during (casync wraps an OSError in a RemoteError)."""
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def classify(exc: BaseException) -> str:
    """The ``sync_failures_total`` reason for ``exc`` (one of :data:`REASONS`)."""
    chain = _chain(exc)
    order: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
        ("auth", (RemoteAuthError, ssl.SSLCertVerificationError)),
        ("timeout", (RemoteTimeout, TimeoutError, socket.timeout)),
        ("unreachable", (TruncatedCar,)),  # a stream cut short is the link, not a lying block
        ("corrupt", (CorruptBlock, InvalidObject, BlockNotFound)),
        ("refused", (RefConflict, PeerRefused, StateRefused, ConflictError)),
        ("unreachable", (RemoteUnreachable, ConnectionError, socket.gaierror, http.client.HTTPException, OSError)),
    )
    for reason, types in order:
        if any(isinstance(e, types) for e in chain):
            return reason
    return "error"


class AgentMetrics:
    """Every metric the agent exports, on :attr:`registry`."""

    def __init__(self, site: str, region: str | None, role: str, version: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double every counter and no alert reads them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lag = Gauge("sync_lag_seconds", "Seconds since this site last synced with the peer "
                         "(source: the peer, target: this site)", ["source", "target"], registry=r)
        self.failures = Counter("sync_failures_total", "Failed syncs by peer and reason", ["peer", "reason"],
                                registry=r)
        self.conflicts = Gauge("unresolved_conflicts", "Conflicts kept as siblings or stopped merges that wait "
                               "for a person", registry=r)
        self.duration = Histogram("sync_duration_seconds", "Wall time of one sync with a peer", ["peer"],
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.blocks_received = Counter("sync_blocks_received_total", "Blocks received from the peer",
                                       ["peer"], registry=r)
        self.blocks_sent = Counter("sync_blocks_sent_total", "Blocks pushed to the peer", ["peer"], registry=r)
        self.bytes_received = Counter("sync_bytes_received_total", "Bytes of the blocks received from the peer",
                                      ["peer"], registry=r)
        self.bytes_sent = Counter("sync_bytes_sent_total", "Bytes of blocks pushed to the peer", ["peer"],
                                  registry=r)
        self.last_success = Gauge("last_successful_sync_timestamp_seconds", "Unix time of the last sync with "
                                  "the peer that succeeded", ["peer"], registry=r)
        self.overdue = Gauge("sync_peer_overdue", "1 when the peer was not synced within max_sync_delay",
                             ["peer"], registry=r)
        self.audit_result = Gauge("audit_last_result", "Last 'casync fsck' of this repository: 1 ok, 0 failed",
                                  registry=r)
        self.audit_time = Gauge("audit_last_run_timestamp_seconds", "Unix time of the last 'casync fsck'",
                                registry=r)
        self.info = Gauge("casync_agent_info", "This agent (value 1)", ["site", "region", "role", "version"],
                          registry=r)
        self.info.labels(site=site, region=region or "", role=role, version=version).set(1)
        self.site = site

    def add_peer(self, name: str) -> None:
        """Make the peer's series exist at 0 before its first sync (so rates and alerts see it)."""
        for reason in REASONS:
            self.failures.labels(peer=name, reason=reason)
        for counter in (self.blocks_received, self.blocks_sent, self.bytes_received, self.bytes_sent):
            counter.labels(peer=name)
        self.overdue.labels(peer=name).set(0)

    def remove_peer(self, name: str, site: str) -> None:
        """Drop a forgotten peer's series (a gone pod must not alert forever)."""
        for reason in REASONS:
            _remove(self.failures, name, reason)
        _remove(self.lag, name, site)
        for metric in (self.duration, self.blocks_received, self.blocks_sent, self.bytes_received, self.bytes_sent,
                       self.last_success, self.overdue):
            _remove(metric, name)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)
