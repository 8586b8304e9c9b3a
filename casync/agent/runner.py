"""``casync agent``: one process per site.  It serves the repository to peers (the ``casync
serve`` protocol plus ``GET /v1/peers``), and every ``sync_interval`` (with jitter) starts a
job per due peer on a thread of its own, so a dead or slow peer delays no other: each has its
own timeout and backoff.  Jobs write through the store's writer lock, one at a time.

Stopping (SIGTERM, SIGINT): no job starts; running ones stop at their next block (whole
commits are kept, no ref moves to a partial one) or after ``shutdown_timeout`` are left.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from typing import Any

from casync.agent.bootstrap import clone_site
from casync.agent.config import AgentConfig
from casync.agent.discovery import (
    Resolver,
    kubernetes_urls,
    learned_target,
    parse_directory,
    probe,
    static_targets,
    system_resolver,
)
from casync.agent.jobs import Abandoned, JobResult, read_token, run_job
from casync.agent.logs import AgentLog
from casync.agent.metrics import AgentMetrics, classify
from casync.agent.snapshot import AgentSnapshot
from casync.agent.state import PeerState, Target
from casync.agent.status import RepoStatus, read_status
from casync.errors import CasyncError, NotARepository, UsageError
from casync.repo.repository import Repository
from casync.transports.peer.server import PeerServer, serve

__all__ = ["Agent"]

MAX_JOBS = 8


class Agent:
    """The agent of one site; :meth:`open`, then :meth:`run`, then :meth:`close`."""

    def __init__(self, cfg: AgentConfig, log: AgentLog, *, metrics_bind: tuple[str, int] | None = None,
                 resolver: Resolver = system_resolver, version: str = "0") -> None:
        self.cfg, self.log, self.resolver = cfg, log, resolver
        self.metrics_bind = metrics_bind or cfg.metrics_bind
        self.stop = threading.Event()
        self.metrics = AgentMetrics(cfg.replica, cfg.region, cfg.role, version)
        self.started = time.time()
        self.rounds = 0
        self.states: dict[str, PeerState] = {}
        self._lock = threading.Lock()                       # states, learned, _jobs
        self._slots = threading.BoundedSemaphore(MAX_JOBS)
        self._jobs: dict[str, threading.Thread] = {}
        self._learned: dict[str, dict[str, Any]] = {}       # gossip and Kubernetes: name -> site entry
        self._identified: dict[str, dict[str, Any] | None] = {}
        self._repo: Repository | None = None
        self._server: PeerServer | None = None
        self._server_thread: threading.Thread | None = None
        self._ops: Any = None
        self._status = RepoStatus()

    # --- start and stop ---------------------------------------------------------------------

    def open(self, serving: bool = True) -> None:
        """Open the repository and check it is this site's; ``serving``: start the peer server
        and the operator port."""
        cfg = self.cfg
        try:
            repo = Repository.open(cfg.repository, search_parents=False)
        except NotARepository:
            repo = clone_site(cfg, self.resolver, self.log)
        self._repo = repo
        if repo.replica != cfg.replica:
            raise UsageError(f"casync.toml: site.replica = {cfg.replica!r}: the repository at {cfg.repository} is "
                             f"replica {repo.replica!r}", hint="each site commits under its own replica id: "
                             "put the repository's id in site.replica")
        if repo.current_branch() != cfg.branch:
            raise UsageError(f"casync.toml: site.branch = {cfg.branch!r}: the repository has "
                             f"{repo.current_branch() or 'a detached HEAD'!r} checked out",
                             hint=f"casync -C {cfg.repository} switch {cfg.branch}")
        self._register_ipfs(repo)
        if cfg.strong is not None and repo.config.get("strong") != cfg.strong:
            repo.set_config("strong", cfg.strong)  # its heads move only by compare-and-swap on etcd (§16)
            self.log.info("strong_configured", f"strong branches {', '.join(cfg.strong['branches'])} on etcd",
                          endpoints=cfg.strong["etcd_endpoints"])
        synced = {t.name for t in static_targets(cfg)}
        for peer in cfg.peers:
            if peer.name not in synced:
                self.log.info("peer_skipped", f"{peer.name} is configured but not synced from here ("
                              + ("a replica syncs with its master only)" if cfg.role == "replica" else
                                 f"region {peer.region} is not {cfg.region} nor in its sync_peers)"),
                              peer=peer.name, region=peer.region)
        if serving:
            from casync.agent.httpd import OperatorServer

            token = read_token(self.cfg.serve_token_file)
            host, port = cfg.serve_bind
            self._server = serve(repo, token.encode(), host, port, read_only=cfg.role == "replica",
                                 directory=self.directory)
            self._server_thread = threading.Thread(target=self._server.serve_forever, name="casync-serve",
                                                   daemon=True)
            self._server_thread.start()
            self._ops = OperatorServer(*self.metrics_bind, self.routes())
            self._ops.start()
            for what, (bound, _port) in (("serve.bind", cfg.serve_bind), ("metrics address", self.metrics_bind)):
                if bound not in ("127.0.0.1", "localhost", "::1"):
                    self.log.warning("not_loopback", f"{what} listens on {bound}, beyond loopback: put TLS and "
                                     "a network policy in front of it", address=bound)
            self.log.info("started", f"serving {cfg.repository} to peers", site=cfg.replica, region=cfg.region,
                          role=cfg.role, serve=self.serve_url, metrics=self.metrics_url)
        self.refresh_repository()

    @property
    def serve_url(self) -> str | None:
        return f"http://{self._server.server_address[0]}:{self._server.server_address[1]}" if self._server else None

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self._ops.address[0]}:{self._ops.address[1]}" if self._ops else None

    def _register_ipfs(self, repo: Repository) -> None:
        """IPFS nodes of casync.toml become repository remotes (so 'casync push NAME' works by
        hand too); one already there under the name with another URL is a usage error."""
        from casync.settings import RemoteEntry, remotes
        from casync.transports.config import write_remote

        have = remotes(repo.config)
        for node in self.cfg.ipfs:
            known = have.get(node.name)
            if known is not None and known.url != node.url:
                raise UsageError(f"casync.toml: ipfs.{node.name}.url = {node.url!r}: the repository has remote "
                                 f"{node.name!r} at {known.url!r}", hint="rename one of them")
            pins = {"cluster": node.cluster, "replication_min": node.replication_min,
                    "replication_max": node.replication_max}  # casync.toml's [ipfs_clusters] decide these
            if known is None:
                write_remote(repo, node.name, RemoteEntry(node.url, node.gateway, None, node.cluster,
                                                          node.replication_min, node.replication_max))
            elif any(getattr(known, k) != v for k, v in pins.items()):
                write_remote(repo, node.name, dataclasses.replace(
                    known, cluster=node.cluster, replication_min=node.replication_min,
                    replication_max=node.replication_max))

    def close(self) -> bool:
        """Stop: wait for running jobs (each stops at its next block) up to shutdown_timeout.
        False if some were still running then (the caller exits the process at once)."""
        self.stop.set()
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        with self._lock:
            jobs = list(self._jobs.items())
        for _name, thread in jobs:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [name for name, thread in jobs if thread.is_alive()]
        if stuck:
            self.log.error("shutdown_stuck", "jobs still running at shutdown_timeout; leaving them (the store's "
                           "writes are transactions: nothing half-written stays)", peers=stuck)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._ops is not None:
            self._ops.stop()
        if self._repo is not None and not stuck:
            self._repo.close()
        self.log.info("stopped", "agent stopped", rounds=self.rounds)
        return not stuck

    # --- rounds -----------------------------------------------------------------------------

    def run(self, once: bool = False) -> int:
        """Rounds until :attr:`stop` is set; with ``once``, one round: 0 if every target synced."""
        if once:
            results = self.round(wait=True)
            failed = sorted(n for n, ok in results.items() if not ok)
            self.log.info("round_done", "one round done" + (f"; failed: {', '.join(failed)}" if failed else ""),
                          synced=len(results) - len(failed), failed=len(failed))
            return 1 if failed else 0
        while not self.stop.is_set():
            self.round(wait=False)
            spread = self.cfg.jitter * self.cfg.sync_interval
            self.stop.wait(self.cfg.sync_interval + random.uniform(-spread, spread))
        return 0

    def round(self, wait: bool) -> dict[str, bool]:
        """Start a job for every due target (``wait``: and wait for them all, the IPFS pushes
        after the peers, so they publish what the peers' merges made)."""
        targets = self.discover()
        self._forget(targets)
        results: dict[str, bool] = {}
        phases = [[t for t in targets if t.kind != "ipfs"], [t for t in targets if t.kind == "ipfs"]] if wait \
            else [targets]
        for phase in phases:
            started = self._start(phase, results, wait)
            if wait:
                for thread in started:
                    thread.join()
        self.rounds += 1
        self.refresh_repository()
        self._note_overdue()
        return results

    def _start(self, targets: list[Target], results: dict[str, bool], force: bool) -> list[threading.Thread]:
        now = time.time()
        started: list[threading.Thread] = []
        with self._lock:
            for target in targets:
                state = self.states.get(target.name)
                if state is None:
                    state = self.states[target.name] = PeerState(target, now)
                    self.metrics.add_peer(target.name)
                    self.log.info("peer_added", f"syncing with {target.name}", peer=target.name, url=target.url,
                                  kind=target.kind, region=target.region, origin=target.origin)
                state.target = target
                if state.running or (state.next_try > now and not force):
                    continue
                state.running = True
                thread = threading.Thread(target=self._job, args=(state, results), name=f"sync-{target.name}",
                                          daemon=True)
                self._jobs[target.name] = thread
                started.append(thread)
        for thread in started:
            thread.start()
        return started

    def _job(self, state: PeerState, results: dict[str, bool]) -> None:
        target = state.target
        with self._slots:
            if self.stop.is_set():
                with self._lock:
                    state.running = False
                return
            try:
                result = run_job(self.cfg, target, self.stop, self.cfg.discovery.gossip and self.cfg.role == "peer")
            except BaseException as exc:  # a bug: count it and free the peer for the next round, then report it
                self._record(state, JobResult(False, 0.0, error=exc))
                raise
        self._record(state, result)
        results[target.name] = result.ok

    def _record(self, state: PeerState, result: JobResult) -> None:
        name, m, now = state.target.name, self.metrics, time.time()
        m.duration.labels(peer=name).observe(result.seconds)
        m.blocks_received.labels(peer=name).inc(result.received_blocks)
        m.bytes_received.labels(peer=name).inc(result.received_bytes)
        m.blocks_sent.labels(peer=name).inc(result.sent_blocks)
        m.bytes_sent.labels(peer=name).inc(result.sent_bytes)
        if isinstance(result.error, Abandoned):  # stopping: not the peer's failure
            with self._lock:
                state.running = False
                self._jobs.pop(name, None)
            self.log.info("sync_abandoned", f"sync with {name} abandoned: the agent is stopping", peer=name,
                          seconds=round(result.seconds, 4))
            return
        with self._lock:
            state.running = False
            self._jobs.pop(name, None)
            if result.ok:
                state.succeeded(now, self.cfg.sync_interval)
                m.last_success.labels(peer=name).set(now)
                self._learn(state, result.directory)
            else:
                assert result.error is not None
                error = _one_line(result.error)
                delay = state.failed(now, error, self.cfg.sync_interval, self.cfg.backoff_cap)
                reason = classify(result.error)
                m.failures.labels(peer=name, reason=reason).inc()
        fields = {"peer": name, "kind": state.target.kind, "seconds": round(result.seconds, 4),
                  "blocks_received": result.received_blocks, "bytes_received": result.received_bytes,
                  "blocks_sent": result.sent_blocks, "bytes_sent": result.sent_bytes}
        if result.ok:
            merged = (result.entry.get("merge") or {}).get("result")
            pushed = (result.entry.get("push") or {}).get("result")
            self.log.info("synced", f"synced with {name}", merge=merged, push=pushed, **fields)
        else:
            self.log.warning("sync_failed", f"sync with {name} failed: {error}", reason=reason,
                             error_type=type(result.error).__name__, failures=state.consecutive_failures,
                             retry_in=round(delay, 3), **fields)

    # --- discovery and gossip -----------------------------------------------------------------

    def discover(self) -> list[Target]:
        """The static peers, then the Kubernetes Service's agents, then those learned by gossip."""
        found = {t.name: t for t in static_targets(self.cfg)}
        urls = {t.url for t in found.values()}
        for url in kubernetes_urls(self.cfg, self.resolver):
            site = self._identified.get(url)
            if site is None:
                token_path = self.cfg.token_path(self.cfg.discovery.token_file)
                site = self._identified[url] = probe(url, read_token(token_path), min(self.cfg.peer_timeout, 5.0))
            if site is not None:
                target = learned_target(self.cfg, {**site, "url": url}, "kubernetes")
                if target is not None and target.name not in found:
                    found[target.name] = target
                    urls.add(url)
        if self.cfg.discovery.gossip:
            with self._lock:
                learned = list(self._learned.values())
            for item in learned:
                target = learned_target(self.cfg, item, "gossip")
                if target is not None and target.name not in found and target.url not in urls:
                    found[target.name] = target
                    urls.add(target.url)
        return list(found.values())

    def _forget(self, targets: list[Target]) -> None:
        """Drop discovered peers that are gone: a Kubernetes one no longer in the Service's
        records, a gossiped one not synced within max_sync_delay (it is learned again if a peer
        still lists it).  Configured peers are never dropped: they stay overdue."""
        current, now = {t.name for t in targets}, time.time()
        with self._lock:
            for name, state in list(self.states.items()):
                origin = state.target.origin
                gone = (origin == "kubernetes" and name not in current) or \
                    (origin == "gossip" and state.overdue(now, self.cfg.max_sync_delay))
                if origin == "static" or state.running or not gone:
                    continue
                del self.states[name]
                self._learned.pop(name, None)
                self.metrics.remove_peer(name, self.cfg.replica)
                self.log.info("peer_forgotten", f"{name} is gone from {origin} discovery; no longer synced",
                              peer=name, origin=origin, last_error=state.last_error)

    def _learn(self, state: PeerState, directory: Any) -> None:
        """Remember who ``state``'s peer is and the sites it told of (caller holds the lock)."""
        source = state.target.name
        site, listed = parse_directory(directory)
        if site is not None:
            state.identity = site
        known = {s.target.url for s in self.states.values()} | {s.identity["name"] for s in self.states.values()
                                                                 if s.identity is not None}
        for item in listed:
            if (item["name"] in (self.cfg.replica, source) or item["name"] in self._learned or item["url"] in known
                    or item["name"] in known):
                continue
            if item["name"] not in self.states:
                self._learned[item["name"]] = item
                self.log.info("peer_learned", f"{source} told of {item['name']}", peer=item["name"],
                              url=item["url"], region=item["region"], source=source)

    def directory(self) -> dict[str, Any]:
        """``GET /v1/peers``: this site, and the peers it has synced with (never hearsay)."""
        with self._lock:
            known = [s.identity or {"name": s.target.name, "url": s.target.url, "region": s.target.region,
                                    "role": "peer"}
                     for s in self.states.values() if s.target.kind != "ipfs" and s.last_success is not None]
        return {"site": {"name": self.cfg.replica, "region": self.cfg.region, "url": self.cfg.advertise_url,
                         "role": self.cfg.role}, "peers": known}

    # --- what operators see ---------------------------------------------------------------------

    def refresh_repository(self) -> None:
        """Audit result, head, conflicts and recent commits, from the repository."""
        try:
            self._status = read_status(self.cfg.repository, self._status)
        except CasyncError as exc:
            self.log.warning("status_failed", f"cannot read the repository's status: {exc.message}")
            return
        audit = self._status.audit
        if audit is not None:
            self.metrics.audit_result.set(1 if audit["ok"] else 0)
            self.metrics.audit_time.set(float(audit.get("time", 0)))
        self.metrics.conflicts.set(self._status.conflicts)

    def _note_overdue(self) -> None:
        now = time.time()
        with self._lock:
            for state in self.states.values():
                if state.overdue(now, self.cfg.max_sync_delay) and not state.overdue_logged:
                    state.overdue_logged = True
                    self.log.warning("peer_overdue", f"{state.target.name} not synced for {state.lag(now):.0f}s "
                                     f"(max_sync_delay {self.cfg.max_sync_delay:g}s)", peer=state.target.name,
                                     lag_seconds=round(state.lag(now), 3), last_error=state.last_error)

    def update_gauges(self) -> None:
        """Lag and overdue as of now (called at every scrape)."""
        now = time.time()
        with self._lock:
            for s in self.states.values():
                self.metrics.lag.labels(source=s.target.name, target=self.cfg.replica).set(s.lag(now))
                self.metrics.overdue.labels(peer=s.target.name).set(1 if s.overdue(now, self.cfg.max_sync_delay)
                                                                   else 0)

    def not_ready(self) -> list[str]:
        """Why ``/readyz`` says 503 (empty: ready)."""
        now = time.time()
        reasons = []
        if self._server_thread is not None and not self._server_thread.is_alive():
            reasons.append("the peer server is not running")
        with self._lock:
            for s in sorted(self.states.values(), key=lambda s: s.target.name):
                if s.overdue(now, self.cfg.max_sync_delay):
                    reasons.append(f"peer {s.target.name} not synced for {s.lag(now):.0f}s (max_sync_delay "
                                   f"{self.cfg.max_sync_delay:g}s)" + (f": {s.last_error}" if s.last_error else ""))
        return reasons

    def snapshot(self) -> AgentSnapshot:
        now = time.time()
        with self._lock:
            peers = tuple(s.status(now, self.cfg.max_sync_delay) for s in sorted(self.states.values(),
                                                                                key=lambda s: s.target.name))
        st = self._status
        return AgentSnapshot(self.cfg.replica, self.cfg.region, self.cfg.role, self.cfg.branch, st.head,
                             self.started, now, self.cfg.sync_interval, self.cfg.max_sync_delay, peers,
                             st.conflicts, st.recent, self.rounds)

    def routes(self) -> Any:
        from casync.agent.httpd import agent_routes

        return agent_routes(self.metrics.text, self.update_gauges, self.not_ready, self.snapshot)


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, CasyncError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]
