"""``casync.toml``: the agent's configuration, parsed into frozen dataclasses.

:func:`load_config` reads one file (tomllib); :func:`parse_config` checks a parsed mapping and
is pure.  Every error is a :class:`UsageError` (exit 2) naming the key, the value and what is
allowed.  Policy names, replica ids and remote URLs go through the same checks as the
repository configuration (:mod:`casync.settings`, :mod:`casync.merge.threeway`), and the seed's names
(``last_write_wins``, ``vector_clock``) map to casync's policies.

Region priorities feed the merge: :meth:`AgentConfig.priorities` maps a replica id to its
region's priority from the fleet-wide ``regions`` table only (never from this site's own
peers), so every site given the same file computes the same merge.
"""

from __future__ import annotations

import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from casync.agent.checks import NAME as _NAME
from casync.agent.checks import bad as _bad
from casync.agent.checks import choice as _choice
from casync.agent.checks import parse_duration
from casync.agent.checks import replica_id as _replica
from casync.agent.checks import string as _string
from casync.agent.checks import table as _table
from casync.agent.regions import Region, RegionPriorities, parse_regions
from casync.errors import UsageError
from casync.merge.threeway import PolicyRules, check_policy
from casync.settings import check_value
from casync.store.ipfs_cluster import check_cluster_url

__all__ = ["SEED_POLICIES", "AgentConfig", "Discovery", "IpfsNode", "PeerEntry", "Region", "RegionPriorities",
           "load_config", "parse_config", "parse_duration"]

SEED_POLICIES = {"last_write_wins": "lww", "vector_clock": "siblings", "region_priority": "priority"}
_TOP_KEYS = ("consistency_model", "conflict_resolution", "sync_interval", "max_sync_delay", "clock_skew_tolerance",
             "jitter", "peer_timeout", "backoff_cap", "shutdown_timeout", "regions", "site", "serve", "metrics",
             "peers", "ipfs", "ipfs_clusters", "discovery", "strong")


@dataclass(frozen=True)
class PeerEntry:
    """A casync agent (or ``casync serve``) this site may sync with."""

    name: str
    url: str
    region: str | None = None
    token_file: str | None = None  # relative: to the configuration file's directory
    timeout: float | None = None   # None: the global peer_timeout


@dataclass(frozen=True)
class IpfsNode:
    """A Kubo node this site pushes its branch to every round; with ``cluster`` (from an
    ``[ipfs_clusters.NAME]`` table naming it), the pushed heads are pinned through that IPFS
    Cluster's REST API on ``replication_min``..``replication_max`` peers."""

    name: str
    url: str
    gateway: str | None = None
    cluster: str | None = None
    replication_min: int | None = None
    replication_max: int | None = None


@dataclass(frozen=True)
class Discovery:
    mode: str = "static"                  # "static" | "kubernetes"
    service: str | None = None            # kubernetes: the headless Service's DNS name
    port: int = 8470                      # kubernetes: the agents' serve port
    scheme: str = "http"
    gossip: bool = True                   # learn peers from peers' /v1/peers
    token_file: str | None = None         # for discovered peers; None: serve.token_file


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``casync agent`` reads; durations are seconds, paths absolute."""

    path: Path
    repository: Path
    replica: str
    region: str | None
    branch: str
    role: str                              # "peer" | "replica"
    master: str | None                     # replica: the peer it pulls from
    consistency_model: str
    policy: PolicyRules
    sync_interval: float
    max_sync_delay: float
    clock_skew_tolerance: float
    jitter: float                          # fraction of sync_interval, 0..0.5
    peer_timeout: float
    backoff_cap: float
    shutdown_timeout: float
    regions: tuple[Region, ...]
    peers: tuple[PeerEntry, ...]
    ipfs: tuple[IpfsNode, ...]
    discovery: Discovery
    serve_bind: tuple[str, int]
    serve_token_file: Path
    advertise_url: str
    metrics_bind: tuple[str, int]
    strong: dict[str, Any] | None = None   # consistency_model = "strong": the repository's `strong` key

    def priorities(self) -> RegionPriorities:
        return RegionPriorities(self.regions)

    def region_of(self, name: str) -> Region | None:
        return next((r for r in self.regions if r.name == name), None)

    def syncs_with_region(self, region: str | None) -> bool:
        """Whether a peer in ``region`` is one of this site's sync peers: its own region and
        the regions its region lists in ``sync_peers`` (no regions configured: every peer)."""
        if not self.regions or self.region is None:
            return True
        mine = self.region_of(self.region)
        return region is not None and mine is not None and (region == mine.name or region in mine.sync_peers)

    def token_path(self, token_file: str | None) -> Path:
        return self.serve_token_file if token_file is None else (self.path.parent / token_file).resolve()


def load_config(path: Path, site: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and check ``path``; ``site`` overrides keys of its ``[site]`` table (``--replica``:
    one ConfigMap for every pod of a DaemonSet, each with its own replica id)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the agent configuration {path}: {exc.strerror}",
                         hint="pass --config FILE (docs/examples/casync.toml is a commented example)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", hint="see docs/examples/casync.toml") from None
    if site:
        table = raw.setdefault("site", {})
        if isinstance(table, dict):
            table.update(site)
    return parse_config(raw, path.resolve())


def _address(key: str, value: Any) -> tuple[str, int]:
    allowed = 'must be "HOST:PORT" with a port 0-65535 (0 picks a free one), e.g. "127.0.0.1:8470"'
    host, _, port = _string(key, value, allowed).rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535 or host.startswith("["):
        raise _bad(key, value, allowed + " (IPv6 binds are not supported yet)" if host.startswith("[") else allowed)
    return host, int(port)


def _policy(key: str, value: Any) -> str:
    name = SEED_POLICIES.get(value, value) if isinstance(value, str) else value
    allowed = ("must be a policy: " + ", ".join(SEED_POLICIES) + " (the seed's names), or casync's "
               "lww, siblings, ours, theirs, priority, json, manual, custom:NAME")
    if not isinstance(name, str):
        raise _bad(key, value, allowed)
    try:
        check_policy(name)
    except UsageError:
        raise _bad(key, value, allowed) from None
    if name in ("ours", "theirs"):  # asymmetric: two sites would keep different trees
        raise _bad(key, value, "'ours' and 'theirs' depend on which site merges, so a fleet would diverge; "
                               "use last_write_wins, priority, json, siblings or manual")
    return name


def _conflicts(raw: Any, skew_ms: int) -> PolicyRules:
    key = "conflict_resolution"
    if isinstance(raw, str):
        return PolicyRules(_policy(key, raw), (), skew_ms)
    table = _table({key: raw}, key, ("default", "rules"))
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise _bad(f"{key}.rules", rules, 'must map path globs to policies, e.g. { "*.json" = "json" }')
    checked = tuple((str(glob), _policy(f"{key}.rules[{glob!r}]", p)) for glob, p in rules.items())
    return PolicyRules(_policy(f"{key}.default", table.get("default", "last_write_wins")), checked, skew_ms)


def _peers(raw: Any, regions: tuple[Region, ...]) -> tuple[PeerEntry, ...]:
    if not isinstance(raw, dict):
        raise _bad("peers", raw, "must be a table of [peers.NAME] tables with url, region, token_file")
    out = []
    for name, entry in raw.items():
        key = f"peers.{name}"
        if not _NAME.match(name):
            raise _bad(key, entry, "the peer name must be 1-64 letters, digits, '.', '_' or '-'")
        fields = _table({key: entry}, key, ("url", "region", "token_file", "timeout"))
        url = _string(f"{key}.url", fields.get("url"), 'must be a "http(s)://HOST:PORT" URL of a casync agent')
        try:
            parts = urllib.parse.urlsplit(url)
            _ = parts.port  # raises on a port that is not a number 0-65535
            port_ok = True
        except ValueError:
            port_ok = False
        if not url.startswith(("http://", "https://")) or not port_ok or not parts.hostname:
            raise _bad(f"{key}.url", url, 'must be a "http(s)://HOST:PORT" URL of a casync agent '
                                          "(IPFS nodes go under [ipfs.NAME])")
        region = fields.get("region")
        if region is not None and all(r.name != region for r in regions):
            raise _bad(f"{key}.region", region, "is not a region of [[regions]]")
        token = fields.get("token_file")
        if token is not None:
            _string(f"{key}.token_file", token, "must be the path of a file holding the peer's token")
        timeout = parse_duration(f"{key}.timeout", fields["timeout"]) if "timeout" in fields else None
        out.append(PeerEntry(name, url, region, token, timeout))
    return tuple(out)


def _ipfs(raw: Any) -> tuple[IpfsNode, ...]:
    if not isinstance(raw, dict):
        raise _bad("ipfs", raw, "must be a table of [ipfs.NAME] tables with url, gateway")
    out = []
    for name, entry in raw.items():
        key = f"ipfs.{name}"
        fields = _table({key: entry}, key, ("url", "gateway"))
        url = _string(f"{key}.url", fields.get("url"), 'must be an "ipfs+http://HOST:PORT" URL of a Kubo RPC API')
        gateway = fields.get("gateway")
        try:
            check_value("remotes", {name: {"url": url, "gateway": gateway}})
        except UsageError as exc:
            raise _bad(key, entry, exc.message) from None
        if not url.startswith("ipfs+"):
            raise _bad(f"{key}.url", url, 'must be an "ipfs+http://HOST:PORT" URL of a Kubo RPC API')
        out.append(IpfsNode(name, url, gateway))
    return tuple(out)


def _clusters(raw: Any, nodes: tuple[IpfsNode, ...]) -> tuple[IpfsNode, ...]:
    """``[ipfs_clusters.NAME]``: an IPFS Cluster (``url``: a peer's REST API) that pins what is
    pushed to the ``[ipfs.X]`` node named by ``ipfs`` (default: the only one), on
    ``replication_min``..``replication_max`` peers (default: the cluster's own)."""
    if not isinstance(raw, dict):
        raise _bad("ipfs_clusters", raw, "must be a table of [ipfs_clusters.NAME] tables with url, ipfs, "
                                         "replication_min, replication_max")
    by_name = {n.name: n for n in nodes}
    for name, entry in raw.items():
        key = f"ipfs_clusters.{name}"
        fields = _table({key: entry}, key, ("url", "ipfs", "replication_min", "replication_max"))
        url = _string(f"{key}.url", fields.get("url"), 'must be the "http://HOST:9094" REST API of a cluster peer')
        target = fields.get("ipfs", next(iter(by_name)) if len(by_name) == 1 else None)
        node = by_name.get(target) if isinstance(target, str) else None
        if node is None:
            raise _bad(f"{key}.ipfs", target, "must name the [ipfs.NAME] node the blocks go to ("
                       + (", ".join(by_name) or "none configured") + ")")
        if node.cluster is not None:
            raise _bad(f"{key}.ipfs", target, "already pins through another [ipfs_clusters] table")
        low, high = fields.get("replication_min"), fields.get("replication_max")
        try:
            cluster = check_cluster_url(url)
            check_value("remotes", {node.name: {"url": node.url, "cluster": cluster, "replication_min": low,
                                                "replication_max": high}})
        except UsageError as exc:
            raise _bad(key, entry, exc.message) from None
        by_name[node.name] = replace(node, cluster=cluster, replication_min=low, replication_max=high)
    return tuple(by_name[n.name] for n in nodes)


def _discovery(raw: Any) -> Discovery:
    fields = _table({"discovery": raw}, "discovery", ("mode", "service", "port", "scheme", "gossip", "token_file"))
    mode = _choice("discovery.mode", fields.get("mode", "static"), ("static", "kubernetes"))
    service = fields.get("service")
    if mode == "kubernetes":
        service = _string("discovery.service", service, "must name the agents' headless Service "
                          '(e.g. "casync-agent.sync-system.svc.cluster.local") when mode = "kubernetes"')
    port = fields.get("port", 8470)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _bad("discovery.port", port, "must be a port number 1-65535")
    gossip = fields.get("gossip", True)
    if not isinstance(gossip, bool):
        raise _bad("discovery.gossip", gossip, "must be true or false")
    token = fields.get("token_file")
    if token is not None:
        _string("discovery.token_file", token)
    return Discovery(mode, service, port, _choice("discovery.scheme", fields.get("scheme", "http"),
                                                   ("http", "https")), gossip, token)


def parse_config(raw: Mapping[str, Any], path: Path) -> AgentConfig:
    """Check a parsed ``casync.toml`` (``path``: where it was read, for relative paths)."""
    for key in raw:
        if key not in _TOP_KEYS:
            raise _bad(key, raw[key], f"unknown key (allowed: {', '.join(_TOP_KEYS)})")
    model = _choice("consistency_model", raw.get("consistency_model", "eventual"), ("eventual", "strong"))
    skew = parse_duration("clock_skew_tolerance", raw.get("clock_skew_tolerance", "0s"))
    policy = _conflicts(raw.get("conflict_resolution", "last_write_wins"), round(skew * 1000))
    interval = parse_duration("sync_interval", raw.get("sync_interval", "30s"))
    if interval <= 0:
        raise _bad("sync_interval", raw.get("sync_interval"), "must be more than 0s")
    max_delay = parse_duration("max_sync_delay", raw.get("max_sync_delay", "5m"))
    if max_delay < interval:
        raise _bad("max_sync_delay", raw.get("max_sync_delay"), f"must be at least sync_interval ({interval:g}s)")
    jitter = raw.get("jitter", 0.1)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 0.5:
        raise _bad("jitter", jitter, "must be a fraction of sync_interval from 0 to 0.5")
    regions = parse_regions(raw.get("regions", []))
    site = _table(raw, "site", ("replica", "region", "repository", "branch", "role", "master"))
    replica = _replica("site.replica", site.get("replica"))
    region = site.get("region")
    if regions and region is None:
        raise _bad("site.region", None, "must name this site's region when [[regions]] are configured")
    if region is not None and all(r.name != region for r in regions):
        raise _bad("site.region", region, "is not a region of [[regions]] ("
                   + (", ".join(r.name for r in regions) or "none configured") + ")")
    repository = (path.parent / _string("site.repository", site.get("repository"),
                                         "must be the path of this site's repository")).resolve()
    branch = _string("site.branch", site.get("branch", "main"))
    role = _choice("site.role", site.get("role", "peer"), ("peer", "replica"))
    peers = _peers(raw.get("peers", {}), regions)
    master = site.get("master")
    if role == "replica" and master not in {p.name for p in peers}:
        raise _bad("site.master", master, "must name one of [peers.NAME] when role = 'replica' ("
                   + (", ".join(p.name for p in peers) or "no peers configured") + ")")
    if role == "peer" and master is not None:
        raise _bad("site.master", master, "is only for role = 'replica'")
    serve = _table(raw, "serve", ("bind", "token_file", "advertise_url"))
    serve_bind = _address("serve.bind", serve.get("bind", "127.0.0.1:8470"))
    token = _string("serve.token_file", serve.get("token_file"), "must be the path of the file holding the "
                    "token peers present (required: the agent never serves without one)")
    advertise = serve.get("advertise_url", f"http://{serve_bind[0]}:{serve_bind[1]}")
    if not isinstance(advertise, str) or not advertise.startswith(("http://", "https://")):
        raise _bad("serve.advertise_url", advertise, 'must be the "http(s)://HOST:PORT" URL peers reach this site at')
    metrics = _table(raw, "metrics", ("bind",))
    ipfs = _clusters(raw.get("ipfs_clusters", {}), _ipfs(raw.get("ipfs", {})))
    strong = _strong(raw, model, branch, ipfs)
    return AgentConfig(
        path=path, repository=repository, replica=replica, region=region, branch=branch, role=role,
        master=master, consistency_model=model, policy=policy, sync_interval=interval, max_sync_delay=max_delay,
        clock_skew_tolerance=skew, jitter=float(jitter),
        peer_timeout=_positive("peer_timeout", raw.get("peer_timeout", "30s")),
        backoff_cap=_positive("backoff_cap", raw.get("backoff_cap", "5m")),
        shutdown_timeout=_positive("shutdown_timeout", raw.get("shutdown_timeout", "10s")),
        regions=regions, peers=peers, ipfs=ipfs, discovery=_discovery(raw.get("discovery", {})),
        serve_bind=serve_bind, serve_token_file=(path.parent / token).resolve(), advertise_url=advertise.rstrip("/"),
        metrics_bind=_address("metrics.bind", metrics.get("bind", "127.0.0.1:9470")), strong=strong)


def _strong(raw: Mapping[str, Any], model: str, branch: str, ipfs: tuple[IpfsNode, ...]) -> dict[str, Any] | None:
    """``consistency_model = "strong"``: the ``[strong]`` table as the repository's ``strong``
    key (docs/design.md §16.1), checked by the same rules ``casync config strong`` uses."""
    if model != "strong":
        if "strong" in raw:
            raise _bad("strong", raw["strong"], "is read only with consistency_model = \"strong\"")
        return None
    table = _table(raw, "strong", ("branches", "etcd_endpoints", "key_prefix", "timeout", "blocks_remote"))
    value: dict[str, Any] = {"branches": table.get("branches", [branch]),
                             "etcd_endpoints": table.get("etcd_endpoints", [])}
    if "key_prefix" in table:
        value["key_prefix"] = table["key_prefix"]
    if "timeout" in table:
        value["timeout"] = parse_duration("strong.timeout", table["timeout"])
    remote = table.get("blocks_remote")
    if remote is not None:  # the Kubo node every site reads strong heads' blocks from
        node = next((n for n in ipfs if n.name == remote), None)
        if node is None:
            raise _bad("strong.blocks_remote", remote, "must name one of [ipfs.NAME] ("
                       + (", ".join(n.name for n in ipfs) or "none configured") + ")")
        value["ipfs_api"] = node.url.removeprefix("ipfs+")
    if not value["etcd_endpoints"]:
        raise _bad("strong.etcd_endpoints", value["etcd_endpoints"],
                   "must list the etcd members' client URLs with consistency_model = \"strong\"")
    try:
        check_value("strong", value)
    except UsageError as exc:
        raise UsageError(f"casync.toml: [strong]: {exc.message}", hint=exc.hint) from None
    return value


def _positive(key: str, value: Any) -> float:
    seconds = parse_duration(key, value)
    if seconds <= 0:
        raise _bad(key, value, "must be more than 0s")
    return seconds
