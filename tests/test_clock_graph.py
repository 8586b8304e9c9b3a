"""Vector clocks, HLC and the commit graph (pure logic over an in-memory DAG)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import BlockNotFound, CorruptBlock, RemoteError
from casync.history.clock import Order, compare, hlc_next, join, tick
from casync.history.graph import CommitGraph
from casync.model import cbor
from casync.model.cid import DAG_CBOR, Cid, cid_str, compute_cid
from casync.model.commit import Commit, HybridTime, decode_commit
from casync.store.ipfs import IpfsBlockStore, IpfsClient, RetryPolicy

from .dags import EMPTY_TREE, CommitDag


def test_compare_all_orders() -> None:
    assert compare({"a": 1}, {"a": 1}) is Order.EQUAL
    assert compare({"a": 2}, {"a": 1}) is Order.AFTER
    assert compare({"a": 1}, {"a": 1, "b": 1}) is Order.BEFORE
    assert compare({"a": 2}, {"a": 1, "b": 1}) is Order.CONCURRENT
    assert compare({}, {}) is Order.EQUAL


def test_tick_and_join() -> None:
    assert join([{"a": 2, "b": 1}, {"b": 3}]) == {"a": 2, "b": 3}
    assert tick([{"a": 2}, {"b": 3}], "a") == {"a": 3, "b": 3}


def test_hlc_monotonic_under_clock_skew() -> None:
    t1 = hlc_next(1000, None)
    assert t1 == HybridTime(1000, 0)
    t2 = hlc_next(900, t1)  # wall clock went backwards
    assert t2 > t1 and t2 == HybridTime(1000, 1)
    t3 = hlc_next(950, t2, [HybridTime(5000, 7)])  # a parent from a replica whose clock is ahead
    assert t3 == HybridTime(5000, 8)
    assert hlc_next(6000, t3) == HybridTime(6000, 0)


def test_walk_is_topological_newest_first() -> None:
    d = CommitDag()
    a = d.add(replica="x")
    b = d.add(a, replica="x")
    c = d.add(a, replica="y")
    m = d.add(b, c, replica="x")
    order = [cid for cid, _ in d.graph.walk([m])]
    assert order[0] == m and order[-1] == a and set(order) == {a, b, c, m}


def test_is_ancestor() -> None:
    d = CommitDag()
    a = d.add(replica="x")
    b = d.add(a, replica="x")
    c = d.add(a, replica="y")
    assert d.graph.is_ancestor(a, b) and d.graph.is_ancestor(a, c)
    assert not d.graph.is_ancestor(b, c) and not d.graph.is_ancestor(c, b)
    assert d.graph.is_ancestor(b, b)


def test_merge_base_simple_fork() -> None:
    d = CommitDag()
    a = d.add(replica="x")
    b = d.add(a, replica="x")
    b2 = d.add(b, replica="x")
    c = d.add(a, replica="y")
    assert d.graph.merge_bases(b2, c) == [a]
    assert d.graph.merge_bases(b2, b) == [b]


def test_merge_base_criss_cross_returns_both() -> None:
    d = CommitDag()
    root = d.add(replica="x")
    a1 = d.add(root, replica="x")
    b1 = d.add(root, replica="y")
    a2 = d.add(a1, b1, replica="x")  # criss-cross: each side merges the other
    b2 = d.add(b1, a1, replica="y")
    assert sorted(d.graph.merge_bases(a2, b2)) == sorted([a1, b1])


def test_clock_concurrency_matches_dag() -> None:
    d = CommitDag()
    a = d.add(replica="x")
    b = d.add(a, replica="x")
    c = d.add(a, replica="y")
    assert compare(d.commits[b].clock, d.commits[c].clock) is Order.CONCURRENT
    assert compare(d.commits[a].clock, d.commits[b].clock) is Order.BEFORE


def test_merge_bases_is_ancestor_and_missing_match_brute_force_on_random_dags() -> None:
    """Seeded random DAGs with several roots, merges of 2-3 parents and long chains: the
    walks must agree with set arithmetic over full ancestor sets."""
    import random

    rng = random.Random(20261126)
    for _dag in range(25):
        d = CommitDag()
        cids = d.grow(rng, rng.randint(5, 60), root_chance=0.05, replicas=4)
        anc = {c: d.ancestors(c) for c in cids}
        for _pair in range(30):
            a, b = rng.choice(cids), rng.choice(cids)
            common = anc[a] & anc[b]
            best = {c for c in common if not any(c != o and c in anc[o] for o in common)}
            assert set(d.graph.merge_bases(a, b)) == best
            assert d.graph.is_ancestor(a, b) == (a in anc[b])
            wants, haves = rng.sample(cids, rng.randint(1, 3)), rng.sample(cids, rng.randint(0, 3))
            expected = set().union(*(anc[w] for w in wants)) - set().union(*(anc[h] for h in haves))
            missing = d.graph.missing(wants, haves)
            assert set(missing) == expected and len(missing) == len(expected)
            position = {c: i for i, c in enumerate(missing)}  # oldest first: parents before children
            assert all(position[p] < position[c] for c in missing for p in d.commits[c].parents if p in position)


def test_missing_ignores_haves_it_does_not_hold_but_not_a_store_that_fails(tmp_path: Path) -> None:
    """A peer's 'have' this repository lacks is a hint to ignore; a store that cannot answer
    (an IPFS node that is down) is an error, not a reason to send the whole history."""
    with Repository.init(tmp_path / "r", replica="r", bare=True) as repo:
        d = CommitDag(repo)
        a = d.add()
        b = d.add(a)
        d.save()
        stranger = CommitDag().add(replica="elsewhere")
        not_a_commit = cbor.encode({"not": "a commit"})  # held, DAG-CBOR, but no commit
        other = compute_cid(DAG_CBOR, not_a_commit)
        repo.blocks.put(other, not_a_commit)
        repo.blocks.flush()
        assert repo.graph.missing([b], [stranger, other, EMPTY_TREE]) == [a, b]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = IpfsBlockStore(IpfsClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=1)))
    try:
        graph = CommitGraph(lambda cid: d.commits[cid] if cid in d.commits else decode_commit(down.get(cid)))
        with pytest.raises(RemoteError, match="cannot connect"):
            graph.missing([b], [stranger])
    finally:
        down.close()


def test_missing_ignores_haves_it_does_not_hold_but_not_a_corrupt_one() -> None:
    d = CommitDag()
    a = d.add()
    b = d.add(a)
    unknown, rotten = compute_cid(DAG_CBOR, b"unknown"), compute_cid(DAG_CBOR, b"rotten")

    def load(cid: Cid) -> Commit:
        if cid == rotten:
            raise CorruptBlock(cid_str(cid))
        if cid not in d.commits:
            raise BlockNotFound(cid_str(cid))
        return d.commits[cid]

    graph = CommitGraph(load)
    assert graph.missing([b], [unknown, a]) == [b]  # a peer's hint we lack: ignored
    with pytest.raises(CorruptBlock):  # the store's damage is reported, not taken for "not held"
        graph.missing([b], [rotten])
