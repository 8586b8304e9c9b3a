"""A new site: its repository cloned from the first peer that answers, so a site needs only its
configuration and one seed peer (static, or behind the Kubernetes Service)."""

from __future__ import annotations

from casync.agent.config import AgentConfig
from casync.agent.discovery import Resolver, kubernetes_urls, static_targets
from casync.agent.jobs import read_token
from casync.agent.logs import AgentLog
from casync.errors import CasyncError, UsageError
from casync.repo.repository import Repository
from casync.store.retry import RetryPolicy

__all__ = ["clone_site"]


def clone_site(cfg: AgentConfig, resolver: Resolver, log: AgentLog) -> Repository:
    """Clone ``site.repository`` as replica ``site.replica`` with ``site.branch`` checked out
    from the first peer that answers; none answering is a usage error saying what was tried."""
    from casync.transports.clone import clone_peer
    from casync.transports.locate import Location

    seeds = [(t.name, t.url, t.token_file) for t in static_targets(cfg) if t.kind != "ipfs"]
    token_path = cfg.token_path(cfg.discovery.token_file)
    seeds += [(url, url, token_path) for url in kubernetes_urls(cfg, resolver)]
    tried = []
    for name, url, token_file in seeds:
        try:
            token = read_token(token_file) if token_file is not None else None
            repo, done = clone_peer(Location("http", url, name), cfg.repository, token=token,
                                    token_file=str(token_file) if token_file else None, replica=cfg.replica,
                                    branch=cfg.branch, retry=RetryPolicy(attempts=2))
        except CasyncError as exc:
            tried.append(f"{name}: {exc.message}")
            continue
        log.info("cloned", f"no repository at {cfg.repository}: cloned it from {name}", peer=name, url=url,
                 branch=done.branch, blocks=done.fetch.stats.new_blocks)
        return repo
    raise UsageError(f"casync.toml: site.repository = {str(cfg.repository)!r}: no casync repository there"
                     + (f", and no peer to clone it from answered ({'; '.join(tried)[:400]})" if tried else ""),
                     hint=f"create it: 'casync init {cfg.repository} --replica {cfg.replica}' (the first site), "
                          "or start a peer it can clone from")
