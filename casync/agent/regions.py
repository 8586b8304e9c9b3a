"""The fleet's ``[[regions]]``: each region's priority and sync peers, and the replica id ->
priority map the merge uses (:class:`RegionPriorities`), computed from this table alone so every
site given the same table merges alike."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from casync.agent.checks import NAME, bad, replica_id, string, table
from casync.settings import check_value

__all__ = ["Region", "RegionPriorities", "parse_regions"]


@dataclass(frozen=True)
class Region:
    """One region of the fleet (seed: ``regions``): lower ``priority`` wins ties."""

    name: str
    priority: int
    sync_peers: tuple[str, ...]
    replicas: tuple[str, ...] = ()  # replica ids of its sites (explicit; else the name-prefix rule)


class RegionPriorities(Mapping[str, int]):
    """replica id -> its region's priority: an id listed in a region's ``replicas``, else the
    region whose name prefixes the id (``us-east-1`` is in ``us-east``; the longest name wins).
    Unknown ids are absent (the merge's default priority)."""

    def __init__(self, regions: tuple[Region, ...]) -> None:
        self._listed = {r: reg.priority for reg in regions for r in reg.replicas}
        self._by_name = sorted(((reg.name, reg.priority) for reg in regions), key=lambda p: -len(p[0]))

    def __getitem__(self, replica: str) -> int:
        if replica in self._listed:
            return self._listed[replica]
        for name, priority in self._by_name:
            if replica == name or (replica.startswith(name) and replica[len(name)] in "-._"):
                return priority
        raise KeyError(replica)

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed)

    def __len__(self) -> int:
        return len(self._listed)


def parse_regions(raw: Any) -> tuple[Region, ...]:
    """The checked ``[[regions]]`` of ``casync.toml``."""
    if not isinstance(raw, list):
        raise bad("regions", raw, "must be an array of tables [[regions]] with name, priority, sync_peers")
    out: list[Region] = []
    for i, entry in enumerate(raw):
        key = f"regions[{i}]"
        fields = table({key: entry}, key, ("name", "priority", "sync_peers", "replicas"))
        name = string(f"{key}.name", fields.get("name"))
        if not NAME.match(name) or any(r.name == name for r in out):
            raise bad(f"{key}.name", name, "must be a unique name of letters, digits, '.', '_' or '-'")
        prio = fields.get("priority", 100)
        if isinstance(prio, bool) or not isinstance(prio, int):
            raise bad(f"{key}.priority", prio, "must be a whole number (lower wins)")
        peers = fields.get("sync_peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise bad(f"{key}.sync_peers", peers, "must be a list of region names")
        replicas = fields.get("replicas", [])
        if not isinstance(replicas, list):
            raise bad(f"{key}.replicas", replicas, "must be a list of replica ids")
        out.append(Region(name, prio, tuple(peers), tuple(replica_id(f"{key}.replicas", r) for r in replicas)))
    names = {r.name for r in out}
    for i, region in enumerate(out):
        for peer in region.sync_peers:
            if peer not in names:
                raise bad(f"regions[{i}].sync_peers", peer, f"is not a region (regions: {', '.join(sorted(names))})")
    check_value("priorities", {r: reg.priority for reg in out for r in reg.replicas})  # as the repo checks them
    return tuple(out)
