"""Synthetic commit graphs for the graph, reachability and merge tests: one builder, in memory
or stored in a real repository, and the brute-force ancestor sets the walks are checked against."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from casync import Repository
from casync.history.clock import tick
from casync.history.graph import CommitGraph
from casync.model.cid import DAG_CBOR, DAG_PB, Cid, compute_cid
from casync.model.commit import Commit, HybridTime, encode_commit
from casync.model.objects import encode_directory

EMPTY_TREE = compute_cid(DAG_PB, encode_directory([]))


def ancestors(parents_of: Callable[[Cid], Iterable[Cid]], cid: Cid) -> set[Cid]:
    """``cid`` and every commit reachable from it, by plain graph search."""
    out, stack = {cid}, [cid]
    while stack:
        for p in parents_of(stack.pop()):
            if p not in out:
                out.add(p)
                stack.append(p)
    return out


class CommitDag:
    """Commits of the empty tree made from parent lists.  ``graph`` walks them in memory; given
    ``repo``, each commit is also stored there the way receivers do (block, remember; ``save``)."""

    def __init__(self, repo: Repository | None = None) -> None:
        self.repo = repo
        self.commits: dict[Cid, Commit] = {}
        self.graph = CommitGraph(self.commits.__getitem__)

    def add(self, *parents: Cid, replica: str = "r") -> Cid:
        ps = [self.commits[p] for p in parents]
        n = len(self.commits) + 1
        c = Commit(tree=EMPTY_TREE, parents=tuple(parents), clock=tick([p.clock for p in ps], replica),
                   time=HybridTime(n, 0), replica=replica, author="t", message=str(n),
                   generation=1 + max((p.generation for p in ps), default=0))
        block = encode_commit(c)
        cid = compute_cid(DAG_CBOR, block)
        self.commits[cid] = c
        if self.repo is not None:
            self.repo.blocks.put(cid, block)
            self.repo.graph.remember(cid, c)
        return cid

    def save(self) -> None:
        assert self.repo is not None
        self.repo.blocks.flush()
        self.repo.graph.save()

    def ancestors(self, cid: Cid) -> set[Cid]:
        return ancestors(lambda c: self.commits[c].parents, cid)

    def grow(self, rng: random.Random, n: int, *, root_chance: float, window: int | None = None,
             far_chance: float = 0.0, replicas: int = 1, save_chance: float = 0.0) -> list[Cid]:
        """``n`` random commits: a new root with ``root_chance``, else 1-3 parents from the last
        ``window`` commits (any commit with ``far_chance``); stored in batches (``save_chance``)."""
        cids: list[Cid] = []
        for i in range(n):
            replica = f"r{i % replicas}" if replicas > 1 else "r"
            if not cids or rng.random() < root_chance:
                cids.append(self.add(replica=replica))
            else:
                k = rng.choice([1, 1, 1, 2, 2, 3])
                near = not far_chance or rng.random() < 1 - far_chance
                pool = cids[-rng.randint(1, min(len(cids), window or len(cids))):] if near else cids
                cids.append(self.add(*dict.fromkeys(rng.choice(pool) for _ in range(k)), replica=replica))
            if save_chance and rng.random() < save_chance:
                self.save()
        return cids
