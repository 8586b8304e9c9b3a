"""Who to sync with: the static peers of ``casync.toml``, the agents behind a Kubernetes
headless Service (its DNS A/AAAA records, through an injectable resolver), and peers learned
by gossip from other agents' ``GET /v1/peers`` (docs/design.md §15.8).

A discovered address is only a URL until its agent says who it is (its ``/v1/peers`` ``site``
entry): then it becomes a :class:`Target` named by its replica id, kept if its region is one
this site syncs with, dropped if it is this site itself.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

from casync.agent.config import AgentConfig
from casync.agent.state import Target
from casync.errors import CasyncError
from casync.model.names import is_replica_name
from casync.transports.peer.http import HttpPeer

__all__ = ["Resolver", "kubernetes_urls", "learned_target", "parse_directory", "probe", "static_targets",
           "system_resolver"]

Resolver = Callable[[str, int], Iterable[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (a headless Service: one A record per ready pod)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def static_targets(cfg: AgentConfig) -> list[Target]:
    """The configured peers this site syncs with: its master only for a replica, else the
    peers in its own region and the regions its region lists in ``sync_peers``."""
    out = []
    for p in cfg.peers:
        token = cfg.token_path(p.token_file)
        timeout = p.timeout or cfg.peer_timeout
        if cfg.role == "replica":
            if p.name == cfg.master:
                out.append(Target(p.name, p.url, "master", p.region, token, timeout))
        elif cfg.syncs_with_region(p.region):
            out.append(Target(p.name, p.url, "peer", p.region, token, timeout))
    out += [Target(n.name, n.url, "ipfs", cfg.region, None, cfg.peer_timeout) for n in cfg.ipfs if cfg.role == "peer"]
    return out


def kubernetes_urls(cfg: AgentConfig, resolver: Resolver) -> list[str]:
    """``scheme://ADDRESS:port`` for every address of the headless Service (none if it does
    not resolve: a Service with no ready pod has no records)."""
    d = cfg.discovery
    if d.mode != "kubernetes" or d.service is None:
        return []
    try:
        addresses = list(resolver(d.service, d.port))
    except OSError:
        return []
    return [f"{d.scheme}://{f'[{a}]' if ':' in a else a}:{d.port}" for a in addresses]


def parse_directory(value: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the answering site, the peers it knows) from a ``/v1/peers`` answer; entries that are
    not well formed are dropped, never trusted."""
    if not isinstance(value, dict):
        return None, []

    def entry(item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            return None
        name, url, region = item.get("name"), item.get("url"), item.get("region")
        if not (isinstance(name, str) and is_replica_name(name) and isinstance(url, str)
                and url.startswith(("http://", "https://")) and (region is None or isinstance(region, str))):
            return None
        return {"name": name, "url": url.rstrip("/"), "region": region, "role": item.get("role", "peer")}

    peers = value.get("peers")
    listed = [e for e in (entry(i) for i in (peers if isinstance(peers, list) else [])[:256]) if e is not None]
    return entry(value.get("site")), listed


def probe(url: str, token: str | None, timeout: float) -> dict[str, Any] | None:
    """Who answers at ``url`` (its ``/v1/peers`` site entry), or None if nobody, or not an agent."""
    peer = HttpPeer(url, token, timeout)
    try:
        site, _ = parse_directory(peer.directory())
    except CasyncError:
        return None
    finally:
        peer.close()
    return site


def learned_target(cfg: AgentConfig, item: dict[str, Any], origin: str) -> Target | None:
    """A :class:`Target` for a site someone told this one about, if this site syncs with it."""
    if cfg.role != "peer" or item["name"] == cfg.replica or not cfg.syncs_with_region(item["region"]):
        return None
    return Target(item["name"], item["url"], "peer", item["region"], cfg.token_path(cfg.discovery.token_file),
                  cfg.peer_timeout, origin)
