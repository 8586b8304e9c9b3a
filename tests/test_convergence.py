"""Convergence: five replicas, random writes, deletes and renames, random pairwise syncs
under partitions, then a full exchange.  Seeded, so CI runs the same histories."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import Cid
from casync.model.commit import HybridTime
from casync.transports.peer.exchange import LocalPeer, fetch_from, push_to
from casync.worktree.merging import merge

PATHS = ["a.txt", "b.txt", "dir/c.txt", "dir/d.txt", "deep/e/f.txt", "g.json"]
REPLICAS = 5


@dataclass
class Op:
    path: str
    content: bytes | None  # None = deleted
    commit: Cid
    replica: str
    time: HybridTime


def sync_pair(x: Repository, y: Repository, policy: str) -> None:
    peer = LocalPeer(str(y.root))
    try:
        fetch_from(x, peer, y.replica)
        merge(x, f"remotes/{y.replica}/main", policy=policy)
        push_to(x, peer, y.replica, "main")
    finally:
        peer.close()


def build(tmp_path: Path) -> list[Repository]:
    first = Repository.init(tmp_path / "r0", replica="r0", bare=True)
    with first.transaction(message="genesis") as tx:
        tx.write("README", b"shared start")
    repos = [first]
    for i in range(1, REPLICAS):
        r = Repository.init(tmp_path / f"r{i}", replica=f"r{i}", repository_id=first.repo_id, bare=True)
        peer = LocalPeer(str(first.root))
        fetch_from(r, peer, "r0")
        peer.close()
        r.update_branch("main", None, r.refs.get_ref("remotes/r0/main"), "start")
        repos.append(r)
    return repos


def run_history(repos: list[Repository], seed: int, policy: str, steps: int = 70) -> list[Op]:
    rng = random.Random(seed)
    ops: list[Op] = []
    partition: tuple[set[int], set[int]] | None = None
    for step in range(steps):
        if step % 20 == 5:
            cut = rng.sample(range(REPLICAS), 2)
            partition = (set(cut), set(range(REPLICAS)) - set(cut))
        elif step % 20 == 15:
            partition = None
        roll = rng.random()
        i = rng.randrange(REPLICAS)
        r = repos[i]
        if roll < 0.55:
            path = rng.choice(PATHS)
            content = f"{r.replica}:{step}:{rng.random()}".encode()
            ops.append(_apply(r, {path: content}))
        elif roll < 0.65:
            present = sorted(p for p in PATHS if p in r.flat_tree(r.resolve("main")))
            if present:
                ops.append(_apply(r, {rng.choice(present): None}))
        elif roll < 0.72:
            tree = r.flat_tree(r.resolve("main"))
            present = [p for p in PATHS if p in tree]
            if present:
                src = rng.choice(present)
                data = r.read(src, rev="main")
                # Merges compare states, not operations (as git does): moving bytes back to a
                # path that held those very bytes in the merge base looks like "no change"
                # (ABA).  So a rename only targets paths these bytes never occupied.
                been = {o.path for o in _ALL if o.content == data}
                absent = [p for p in PATHS if p not in tree and p not in been]
                if absent:
                    ops.append(_apply(r, {src: None, rng.choice(absent): data}, rename=True))
        else:
            j = rng.randrange(REPLICAS)
            if j != i and (partition is None or (i in partition[0]) == (j in partition[0])):
                sync_pair(r, repos[j], policy)
    return [o for o in ops if o is not None]


def _apply(r: Repository, changes: dict[str, bytes | None], rename: bool = False) -> Op:
    with r.transaction(message="rename" if rename else "edit") as tx:
        for path, data in changes.items():
            if data is None:
                tx.delete(path)
            else:
                tx.write(path, data)
    assert tx.commit is not None
    commit = r.load_commit(tx.commit)
    # a rename is recorded as its write (the delete half is a separate op on the source path)
    items = list(changes.items())
    last: Op | None = None
    for path, data in items:
        last = Op(path, data, tx.commit, r.replica, commit.time)
        _ALL.append(last)
    assert last is not None
    return last


_ALL: list[Op] = []


def full_exchange(repos: list[Repository], policy: str) -> None:
    for _round in range(3):
        for i in range(REPLICAS):
            sync_pair(repos[i], repos[(i + 1) % REPLICAS], policy)
        heads = {r.resolve("main") for r in repos}
        if len(heads) == 1:
            return
    raise AssertionError("replicas did not converge after three full rounds")


@pytest.mark.parametrize("seed", [7, 2026])
@pytest.mark.parametrize("policy", ["siblings", "lww"])
def test_replicas_converge(tmp_path: Path, seed: int, policy: str) -> None:
    _ALL.clear()
    repos = build(tmp_path)
    try:
        run_history(repos, seed, policy)
        full_exchange(repos, policy)
        trees = {r.load_commit(r.resolve("main")).tree for r in repos}
        assert len(trees) == 1, "every replica must hold the same head tree"
        final = {p: repos[0].read(p, rev="main") for p in repos[0].flat_tree(repos[0].resolve("main"))}
        graph = repos[0].graph
        if policy == "siblings":
            for op in _ALL:
                if op.content is None:
                    continue
                superseded = any(o is not op and o.path == op.path and o.commit != op.commit
                                 and graph.is_ancestor(op.commit, o.commit) for o in _ALL)
                if superseded:
                    continue
                holders = [p for p, data in final.items()
                           if data == op.content and (p == op.path or p.startswith(op.path + ".~"))]
                assert holders, f"acknowledged write to {op.path} by {op.replica} was lost"
        else:
            for path in PATHS:
                writes = [o for o in _ALL if o.path == path]
                if not writes:
                    continue
                winner = max(writes, key=lambda o: (o.time, o.replica))
                assert final.get(path) == winner.content, f"{path}: lww must keep the highest-time write"
        for r in repos:
            assert r.fsck().ok
    finally:
        for r in repos:
            r.close()
