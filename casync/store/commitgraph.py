"""The ``commitgraph`` and ``commitreach`` tables: what graph walks need of each commit,
and its reachability labels (casync/history/reach.py), so walks never decode commit blocks."""

from __future__ import annotations

import struct
from typing import Any

from casync.history.graph import Node
from casync.history.reach import Reach, label
from casync.model.cid import Cid
from casync.model.commit import HybridTime
from casync.store.env import LmdbEnv

__all__ = ["CommitGraphTables"]

_NODE = struct.Struct("<QqIB")  # generation, wall_ms, logical, number of parents; then
# length-prefixed parents, tree and replica id (see docs/design.md, "commitgraph")
_REACH = struct.Struct("<QQI")  # rank, low, first-parent depth; then the length-prefixed skip CID,
# then (labels since spans) the number of spans and each span's two ranks, as <Q
_SPAN = struct.Struct("<QQ")


def _encode_node(node: Node) -> bytes:
    """The ``commitgraph`` value (labels live apart, in ``commitreach``)."""
    value = _NODE.pack(node.generation, node.time.wall_ms, node.time.logical, len(node.parents))
    fields = [*node.parents, node.tree, node.replica.encode()]
    return value + b"".join(bytes((len(f),)) + f for f in fields)


def _encode_reach(r: Reach) -> bytes:
    value = _REACH.pack(r.rank, r.low, r.depth) + bytes((len(r.skip),)) + r.skip
    if r.spans is None:  # as casync wrote labels before spans (older readers ignore what follows)
        return value
    pairs = [r.spans[i : i + 2] for i in range(0, len(r.spans), 2)]
    return value + bytes((len(pairs),)) + b"".join(_SPAN.pack(lo, hi) for lo, hi in pairs)


def _decode_node(raw: bytes) -> Node:
    gen, wall, logical, count = _NODE.unpack_from(raw)
    cids, pos = [], _NODE.size
    for _ in range(count + 2):  # parents, then the tree, then the replica id
        n = raw[pos]
        cids.append(raw[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return Node(gen, HybridTime(wall, logical), tuple(cids[:count]), cids[count], cids[count + 1].decode())


def _decode_reach(raw: bytes) -> Reach:
    rank, low, depth = _REACH.unpack_from(raw)
    at = _REACH.size
    skip_end = at + 1 + raw[at]
    spans: tuple[int, ...] | None = None
    if len(raw) > skip_end:
        count = raw[skip_end]
        spans = tuple(x for i in range(count) for x in _SPAN.unpack_from(raw, skip_end + 1 + i * _SPAN.size))
    return Reach(rank, low, depth, raw[at + 1 : skip_end], spans)


def _parents_first(nodes: dict[Cid, Node]) -> list[tuple[Cid, Node]]:
    """``nodes`` in the order they were given, except that a parent among them always comes
    before its children: ranks then follow arrival order (a fetched branch ranks above
    the local history it joins), which is what makes the rank cut useful."""
    out: list[tuple[Cid, Node]] = []
    done: set[Cid] = set()
    for cid in nodes:
        stack = [(cid, False)]
        while stack:
            c, expanded = stack.pop()
            if c in done:
                continue
            if expanded:
                done.add(c)
                out.append((c, nodes[c]))
                continue
            stack.append((c, True))
            stack.extend((p, False) for p in reversed(nodes[c].parents) if p in nodes and p not in done)
    return out


class CommitGraphTables(LmdbEnv):
    """The commit-graph tables of the store (the ``graph.NodeCache`` protocol)."""

    def get_node(self, cid: Cid) -> Node | None:
        raw = self.get("commitgraph", cid)
        return _decode_node(raw) if raw is not None else None

    def get_reach(self, cid: Cid) -> Reach | None:
        raw = self.get("commitreach", cid)
        return _decode_reach(raw) if raw is not None else None

    def put_nodes(self, nodes: dict[Cid, Node]) -> dict[Cid, Reach]:
        """Store nodes with reachability labels (casync/history/reach.py), assigned inside the write
        transaction so that ranks follow the order commits enter the table, parents first,
        whatever process writes.  Labels already stored are never changed; unlabelled
        ancestors (tables written before labels existed) are labelled on the way.  Labels
        are kept in their own DB, ``commitreach``: versions of casync that predate them
        rewrite ``commitgraph`` entries and must not be able to drop a label."""
        def fn(txn: Any) -> dict[Cid, Reach]:
            db, reach_db = self._dbs["commitgraph"], self._dbs["commitreach"]
            nodes_seen: dict[Cid, Node | None] = {}
            reach_seen: dict[Cid, Reach | None] = {}

            def stored(cid: Cid) -> Node | None:
                if cid not in nodes_seen:
                    raw = txn.get(cid, db=db)
                    nodes_seen[cid] = _decode_node(bytes(raw)) if raw is not None else None
                return nodes_seen[cid]

            def stored_reach(cid: Cid) -> Reach | None:
                if cid not in reach_seen:
                    raw = txn.get(cid, db=reach_db)
                    reach_seen[cid] = _decode_reach(bytes(raw)) if raw is not None else None
                return reach_seen[cid]

            todo: dict[Cid, Node] = {}  # in the order given: that order becomes the ranks
            out: dict[Cid, Reach] = {}
            for cid, node in nodes.items():
                have = stored_reach(cid)
                if have is None:
                    todo[cid] = node
                else:
                    out[cid] = have  # labelled already (another process): kept as it is
            older: dict[Cid, Node] = {}  # unlabelled ancestors already stored (older tables)
            stack = [p for node in todo.values() for p in node.parents]
            while stack:
                p = stack.pop()
                if p in todo or p in older or stored_reach(p) is not None:
                    continue
                parent = stored(p)
                if parent is not None:
                    older[p] = parent
                    stack.extend(parent.parents)
            todo = {**older, **todo}
            order = _parents_first(todo)
            raw_next = txn.get(b"reach_next_rank", db=self._dbs["meta"])
            next_rank = int(raw_next) if raw_next is not None else 0

            def first_parent(cid: Cid) -> Cid | None:
                node = todo.get(cid) or stored(cid)
                return node.parents[0] if node is not None and node.parents else None

            labels, next_rank = label([(c, n.parents) for c, n in order], stored_reach, first_parent, next_rank)
            for cid, node in order:
                txn.put(cid, _encode_node(node), db=db)
                r = labels.get(cid)
                if r is not None:
                    txn.put(cid, _encode_reach(r), db=reach_db, overwrite=False)
                    out[cid] = r
            txn.put(b"reach_next_rank", str(next_rank).encode(), db=self._dbs["meta"])
            return out

        result: dict[Cid, Reach] = self.write(fn)
        return result

    def items_count(self, db: str) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._dbs[db])["entries"])
