"""Vector clocks, HLC and the commit graph (pure logic over an in-memory DAG)."""

from __future__ import annotations

import pytest

from casync.clock import Order, compare, hlc_next, join, tick
from casync.graph import CommitGraph
from casync.ids import DAG_CBOR, DAG_PB, Cid, compute_cid
from casync.objects import Commit, HybridTime, encode_commit, encode_directory

TREE = compute_cid(DAG_PB, encode_directory([]))


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


class Dag:
    def __init__(self) -> None:
        self.commits: dict[Cid, Commit] = {}
        self.graph = CommitGraph(self.commits.__getitem__)
        self.n = 0

    def add(self, replica: str, *parents: Cid) -> Cid:
        self.n += 1
        ps = [self.commits[p] for p in parents]
        c = Commit(tree=TREE, parents=tuple(parents), clock=tick([p.clock for p in ps], replica),
                   time=HybridTime(self.n, 0), replica=replica, author="t", message=str(self.n),
                   generation=1 + max((p.generation for p in ps), default=0))
        cid = compute_cid(DAG_CBOR, encode_commit(c))
        self.commits[cid] = c
        return cid


def test_walk_is_topological_newest_first() -> None:
    d = Dag()
    a = d.add("x")
    b = d.add("x", a)
    c = d.add("y", a)
    m = d.add("x", b, c)
    order = [cid for cid, _ in d.graph.walk([m])]
    assert order[0] == m and order[-1] == a and set(order) == {a, b, c, m}


def test_is_ancestor() -> None:
    d = Dag()
    a = d.add("x")
    b = d.add("x", a)
    c = d.add("y", a)
    assert d.graph.is_ancestor(a, b) and d.graph.is_ancestor(a, c)
    assert not d.graph.is_ancestor(b, c) and not d.graph.is_ancestor(c, b)
    assert d.graph.is_ancestor(b, b)


def test_merge_base_simple_fork() -> None:
    d = Dag()
    a = d.add("x")
    b = d.add("x", a)
    b2 = d.add("x", b)
    c = d.add("y", a)
    assert d.graph.merge_bases(b2, c) == [a]
    assert d.graph.merge_bases(b2, b) == [b]


def test_merge_base_criss_cross_returns_both() -> None:
    d = Dag()
    root = d.add("x")
    a1 = d.add("x", root)
    b1 = d.add("y", root)
    a2 = d.add("x", a1, b1)  # criss-cross: each side merges the other
    b2 = d.add("y", b1, a1)
    assert sorted(d.graph.merge_bases(a2, b2)) == sorted([a1, b1])


def test_clock_concurrency_matches_dag() -> None:
    d = Dag()
    a = d.add("x")
    b = d.add("x", a)
    c = d.add("y", a)
    assert compare(d.commits[b].clock, d.commits[c].clock) is Order.CONCURRENT
    assert compare(d.commits[a].clock, d.commits[b].clock) is Order.BEFORE


def _ancestors(d: Dag, cid: Cid) -> set[Cid]:
    out, stack = {cid}, [cid]
    while stack:
        for p in d.commits[stack.pop()].parents:
            if p not in out:
                out.add(p)
                stack.append(p)
    return out


def test_merge_bases_is_ancestor_and_missing_match_brute_force_on_random_dags() -> None:
    """Seeded random DAGs with several roots, merges of 2-3 parents and long chains: the
    walks must agree with set arithmetic over full ancestor sets."""
    import random

    rng = random.Random(20261126)
    for _dag in range(25):
        d = Dag()
        cids: list[Cid] = []
        for i in range(rng.randint(5, 60)):
            if not cids or rng.random() < 0.05:
                cids.append(d.add(f"r{i % 4}"))
                continue
            k = rng.choice([1, 1, 1, 2, 2, 3])
            window = cids[-rng.randint(1, len(cids)):]
            parents = list(dict.fromkeys(rng.choice(window) for _ in range(k)))
            cids.append(d.add(f"r{i % 4}", *parents))
        anc = {c: _ancestors(d, c) for c in cids}
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


def test_missing_ignores_haves_it_does_not_hold_but_not_a_corrupt_one() -> None:
    from casync.errors import BlockNotFound, CorruptBlock
    from casync.ids import cid_str

    d = Dag()
    a = d.add("x")
    b = d.add("x", a)
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
