"""Reachability labels (casync/history/reach.py) in a real LMDB commit-graph table: labels never
give a wrong answer, merge bases and ancestry agree with brute force, old tables upgrade."""

from __future__ import annotations

import random
from pathlib import Path

from casync import Repository
from casync.history.reach import MAX_SPANS, Reach, first_parent_ancestor, merge_spans, skip_depth
from casync.store.commitgraph import _encode_node

from .dags import CommitDag


def _stored_dag(path: Path) -> CommitDag:
    return CommitDag(Repository.init(path, replica="r", bare=True))


def test_skip_pointers_reach_any_depth_in_logarithmic_steps() -> None:
    assert [skip_depth(d) for d in range(8)] == [0, 0, 0, 1, 0, 1, 4, 1]
    assert all(0 <= skip_depth(d) < d for d in range(2, 5000))
    chain = [f"c{i}".encode() for i in range(5000)]
    depth = {c: i for i, c in enumerate(chain)}
    skip = {c: chain[skip_depth(i)] if i >= 2 else b"" for i, c in enumerate(chain)}
    steps = 0

    def reach_of(c: bytes):  # type: ignore[no-untyped-def]
        nonlocal steps
        steps += 1
        from casync.history.reach import Reach

        return Reach(depth[c], 0, depth[c], skip[c])

    def first_parent(c: bytes) -> bytes | None:
        return chain[depth[c] - 1] if depth[c] else None

    for target in (0, 1, 2, 77, 2048, 4998, 4999):
        steps = 0
        assert first_parent_ancestor(chain[-1], target, reach_of, first_parent) == chain[target]
        assert steps <= 60  # log2(5000) ~ 12.3; the skip scheme needs at most a few per level
    assert first_parent_ancestor(chain[10], 11, reach_of, first_parent) is None


def test_labels_never_lie_and_walks_agree_with_brute_force(tmp_path: Path) -> None:
    rng = random.Random(4242)
    for trial in range(6):
        dag = _stored_dag(tmp_path / f"r{trial}")
        # arriving in batches (save_chance), as through several fetches and commits
        cids = dag.grow(rng, rng.randint(40, 160), root_chance=0.03, window=30, far_chance=0.2, save_chance=0.1)
        dag.save()
        dag.repo.close()
        repo = Repository.open(tmp_path / f"r{trial}")  # fresh graph: labels come from the table
        graph = repo.graph
        labelled = sum(graph._reach(c) is not None for c in cids)
        assert labelled == len(cids)
        anc = {c: dag.ancestors(c) for c in cids}
        answered = 0
        for _ in range(300):
            a, b = rng.choice(cids), rng.choice(cids)
            quick = graph.labelled_is_ancestor(a, b)
            assert quick in (None, a in anc[b])
            answered += quick is not None
            assert graph.is_ancestor(a, b) == (a in anc[b])
            common = anc[a] & anc[b]
            best = {c for c in common if not any(c != o and c in anc[o] for o in common)}
            assert set(graph.merge_bases(a, b)) == best
        assert answered > 150  # the labels decide most pairs without a walk
        repo.close()


def test_a_late_branch_off_the_root_needs_no_walk(tmp_path: Path) -> None:
    """Case (iii) of benchmarks/bench_sync.py, small: the base is the root of a long chain."""
    dag = _stored_dag(tmp_path / "r")
    root = dag.add()
    tip = root
    for _ in range(3000):
        tip = dag.add(tip)
    dag.save()
    side = dag.add(root)  # fetched later: a replica that diverged at the root
    dag.save()
    dag.repo.close()
    repo = Repository.open(tmp_path / "r")
    assert repo.graph._merge_bases_by_labels(tip, side) == [root]
    assert repo.graph.merge_bases(tip, side) == [root]
    loaded = len(repo.graph._nodes)
    assert loaded < 200, loaded  # log-many skip jumps, not the 3000-commit chain
    repo.close()


def test_a_branch_recorded_before_the_history_needs_no_walk(tmp_path: Path) -> None:
    """Case (iv) of benchmarks/bench_sync.py, small: a branch off the root entered the table
    first (rank 1), then a long history with merges.  rank and low cannot tell it from an
    ancestor of the tip; the tip's spans skip rank 1, so the labels alone prove it is not one
    and the merge base (the root) costs a few lookups, not the whole history."""
    dag = _stored_dag(tmp_path / "r")
    root = dag.add()
    early = dag.add(root)
    dag.save()
    tip = root
    for block in range(30):
        side = tip
        for _ in range(5):
            side = dag.add(side)
        for _ in range(94):
            tip = dag.add(tip)
        tip = dag.add(tip, side)
        if block % 10 == 9:
            dag.save()
    dag.save()
    dag.repo.close()
    repo = Repository.open(tmp_path / "r")
    graph = repo.graph
    assert graph.labelled_is_ancestor(early, tip) is False
    assert graph.merge_bases(tip, early) == [root]
    assert len(graph._nodes) < 100, len(graph._nodes)  # not the 3,000-commit history
    spans = graph._reach(tip).spans  # type: ignore[union-attr]
    assert spans is not None and len(spans) // 2 <= MAX_SPANS
    repo.close()


def test_spans_cover_every_rank_and_stay_bounded() -> None:
    rng = random.Random(7)
    for _ in range(500):
        parts = []
        covered: set[int] = set()
        for _p in range(rng.randint(0, 3)):
            ranks = sorted(rng.sample(range(200), rng.randint(1, 30)))
            part = merge_spans([], ranks[0])
            for r in ranks[1:]:
                part = merge_spans([part], r, limit=rng.randint(1, 8))
            parts.append(part)
            covered |= {x for i in range(0, len(part), 2) for x in range(part[i], part[i + 1] + 1)}
        rank = 200 + rng.randint(0, 5)
        limit = rng.randint(1, 8)
        out = merge_spans(parts, rank, limit)
        got = {x for i in range(0, len(out), 2) for x in range(out[i], out[i + 1] + 1)}
        assert covered | {rank} <= got and len(out) // 2 <= limit
        assert list(out) == sorted(out) and all(out[i] + 1 < out[i + 1] for i in range(1, len(out) - 1, 2))
        holder = Reach(rank, 0, 0, b"", out)
        for r in range(rank + 1):  # the cut passes exactly the ranks the spans cover
            assert Reach(r, r, 0, b"").maybe_ancestor_of(holder) == (r in got)


def test_tables_written_before_labels_are_upgraded(tmp_path: Path) -> None:
    dag = _stored_dag(tmp_path / "r")
    chain = [dag.add()]
    for _ in range(50):
        chain.append(dag.add(chain[-1]))
    dag.save()
    store = dag.repo.store
    assert all(store.get_reach(c) is not None for c in chain)
    # a table from before labels: commitgraph entries, nothing in commitreach
    store.write(lambda txn: txn.drop(store._dbs["commitreach"], delete=False))
    assert all(store.get_reach(c) is None for c in chain)
    new = dag.add(chain[-1])
    dag.save()
    labelled = [store.get_reach(c) for c in [*chain, new]]
    assert all(r is not None for r in labelled)
    ranks = [r.rank for r in labelled if r is not None]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)  # parents before children
    dag.repo.close()


def test_an_older_casync_rewriting_the_table_cannot_drop_labels(tmp_path: Path) -> None:
    """casync before labels rewrote commitgraph entries (e.g. on unbundling commits it
    already held).  Labels live in their own DB, so the ancestors keep theirs and a later
    save cannot relabel them above their labelled descendants (which made m look like no
    ancestor of tip in review)."""
    dag = _stored_dag(tmp_path / "r")
    root = dag.add()
    m = dag.add(root)
    c = dag.add(m)
    tip = dag.add(c)
    dag.save()
    store = dag.repo.store

    def old_version_rewrites(txn) -> None:  # type: ignore[no-untyped-def]
        for cid in (root, m, c):
            node = store.get_node(cid)
            assert node is not None
            txn.put(cid, _encode_node(node), db=store._dbs["commitgraph"])
    store.write(old_version_rewrites)
    side = dag.add(m)
    dag.save()
    dag.repo.close()
    repo = Repository.open(tmp_path / "r")
    assert repo.graph.is_ancestor(m, tip) and repo.graph.merge_bases(tip, side) == [m]
    repo.close()
