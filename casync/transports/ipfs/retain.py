"""Pins on an IPFS remote once retention forgot commits (docs/remotes.md#retention).

A push pins this replica's head recursively, and a commit links its parents, so that one pin
holds every tree of the whole history: nothing retention forgets could fall out.  Once the
repository has forgotten commits (meta ``forgotten/``), this replica's history is pinned in
the *retained layout* instead: a direct pin on every commit block (the history stays whole
on the node) and a recursive pin on the tree of every commit not forgotten.  :func:`repin`
moves a remote to it (and unpins the forgotten trees and this replica's recursive head
pins, and turns the repository's recursive index pins into direct ones); :func:`pin_retained`
is what push does in that layout.  Kubo's own GC
(``ipfs repo gc``) then removes what no pin holds.  Heads pinned by other replicas still
hold their histories: their pins are theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from casync.model.cid import Cid, cid_str
from casync.repo.repository import FORGOTTEN_PREFIX, Repository
from casync.transports.config import get_remote
from casync.transports.ipfs.cluster import refuse_retained
from casync.transports.ipfs.index import demote_indexes
from casync.transports.ipfs.records import RemoteNode, connect
from casync.transports.ipfs.util import pin_name, remote_lock

__all__ = ["RepinResult", "forgotten_commits", "pin_retained", "repin"]


def forgotten_commits(repo: Repository) -> set[Cid]:
    return {key[len(FORGOTTEN_PREFIX):] for key, _ in repo.store.items("meta", FORGOTTEN_PREFIX)}


@dataclass
class RepinResult:
    remote: str
    commits_pinned: int = 0
    trees_pinned: int = 0
    unpinned: list[Cid] = field(default_factory=list)  # forgotten trees and this replica's head pins

    def to_json(self) -> dict[str, Any]:
        return {"remote": self.remote, "commits_pinned": self.commits_pinned, "trees_pinned": self.trees_pinned,
                "unpinned": [cid_str(c) for c in self.unpinned]}


def _history(repo: Repository, heads: Iterable[Cid], stop: Iterable[Cid] = ()) -> list[tuple[Cid, Cid]]:
    """(commit, tree) of every commit reachable from ``heads`` and not from ``stop``."""
    below = {cid for cid, _ in repo.graph.walk_nodes([c for c in stop if repo.blocks.has(c)])}
    return [(cid, node.tree) for cid, node in repo.graph.walk_nodes(heads) if cid not in below]


def pin_retained(node: RemoteNode, repo: Repository, old: Cid | None, head: Cid, name: str | None = None) -> None:
    """Pin what ``head`` adds to ``old`` in the retained layout (push, after retention),
    every pin under ``name``."""
    forgotten = forgotten_commits(repo)
    added = _history(repo, [head], [old] if old is not None else [])
    trees = list(dict.fromkeys(t for c, t in added if c not in forgotten))
    node.client.pin_add_many(trees, recursive=True, name=name)
    held = node.client.recursive_pins()  # Kubo refuses a direct pin on a recursively pinned CID
    node.client.pin_add_many([c for c, _ in added if c not in held], recursive=False, name=name)


def repin(repo: Repository, remote_name: str) -> RepinResult:
    """Move this replica's pins on ``remote_name`` to the retained layout."""
    remote = get_remote(repo, remote_name).require_ipfs()
    refuse_retained(remote)  # Kubo pins only (a remote with a cluster pins through it)
    result = RepinResult(remote.name)
    with remote_lock(repo), connect(remote.url) as node:
        records = node.records(repo.repo_id, errors=[])
        mine = records.get(repo.replica)
        if mine is None:
            return result
        heads = [h.commit for h in mine.heads.values() if repo.blocks.has(h.commit)]
        others = {h.commit for r in records.values() if r.replica != repo.replica for h in r.heads.values()}
        forgotten = forgotten_commits(repo)
        history = _history(repo, heads)
        kept_trees = list(dict.fromkeys(t for c, t in history if c not in forgotten))
        # kept trees first, then the commits: nothing kept is unpinned at any moment, except
        # this replica's head commits between losing their recursive pin and getting a
        # direct one (Kubo refuses a direct pin on a recursively pinned CID)
        name = pin_name(repo.repo_id, repo.replica, "*")  # shared by all of this replica's branches
        node.client.pin_add_many(kept_trees, recursive=True, name=name)
        pinned = node.client.recursive_pins()
        node.client.pin_add_many([c for c, _ in history if c not in pinned], recursive=False, name=name)
        result.commits_pinned, result.trees_pinned = len(history), len(kept_trees)
        keep = set(kept_trees) | others
        for tree in dict.fromkeys(t for c, t in history if c in forgotten and t in pinned and t not in keep):
            node.client.pin_rm(tree)
            result.unpinned.append(tree)
        for h in dict.fromkeys(heads):
            if h in pinned and h not in keep:
                node.client.pin_rm(h)
                node.client.pin_add_many([h], recursive=False, name=name)
                result.unpinned.append(h)
        result.unpinned.extend(demote_indexes(node, repo.repo_id))  # recursive index pins: now direct
    return result
