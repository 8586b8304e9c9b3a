"""The block store every site reads, for strong branches: a Kubo node (or IPFS Cluster's
proxy, which speaks the same RPC API), named by the ``strong.ipfs_api`` setting.

Why Kubo and not a casync peer hub: a hub (``casync serve``) takes blocks only with a move
of one of its own branches, so it cannot hold commits that name no branch there yet; a
Kubo node takes any verified block, and pinning the head (recursive, offline) both keeps
it from garbage collection and proves its whole DAG is on the node before etcd names it.

:class:`KuboShare` implements :class:`~casync.repo.strong.BlockShare`:

- ``publish(head, since)`` sends the blocks of the commits between ``since`` (published and
  pinned before its own swap, so its closure is on the node; when it is not pinned there,
  everything) and ``head`` (the same tree walk every transfer uses,
  :func:`casync.trees.walk.commit_blocks`), then pins ``head``.
- ``obtain(head)`` fetches what the local store lacks, depth first, and stores it children
  first (a block here always has its closure here), each block hash-verified, tree names
  validated and every commit checked against its parents before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable

from casync.history.graph import CommitGraph
from casync.model.cid import DAG_CBOR, Cid, cid_codec
from casync.model.commit import Commit, decode_commit
from casync.store.ipfs import IpfsBlockStore, IpfsClient
from casync.store.packs import PackBlockStore
from casync.trees.unixfs import validated_links
from casync.trees.walk import commit_blocks

__all__ = ["KuboShare"]


class KuboShare:
    """A Kubo node as the shared block store of strong branches (see the module docstring)."""

    def __init__(self, url: str, blocks: PackBlockStore, graph: CommitGraph,
                 check_commit: Callable[[Cid, Commit], None], *, timeout: float = 30.0) -> None:
        self.client = IpfsClient(url, timeout=timeout, connect_timeout=min(timeout, 5.0))
        self.remote = IpfsBlockStore(self.client, offline=True)
        self.blocks = blocks
        self.graph = graph
        self.check_commit = check_commit

    def close(self) -> None:
        self.remote.discard()
        self.client.close()

    def publish(self, head: Cid, since: Cid | None) -> None:
        if since is not None and not self.client.is_pinned(since):
            since = None  # not published here (a branch that became strong later, a new node): send it all
        commits = self.graph.missing([head], [since] if since is not None else [])
        for cid, _size, data in commit_blocks(self.blocks.get, self.graph, commits):
            self.remote.put(cid, data if data is not None else self.blocks.get(cid))
        self.remote.flush()
        self.client.pin_add(head)  # fails, offline, if any block of head's DAG is not on the node

    def obtain(self, head: Cid) -> None:
        if self.blocks.has(head):
            return
        fetched: dict[Cid, bytes] = {}
        stack: list[tuple[Cid, bool]] = [(head, False)]
        while stack:
            cid, children_done = stack.pop()
            if children_done:  # every link is stored: now this block may be
                data = fetched.pop(cid)
                if cid_codec(cid) == DAG_CBOR:
                    self.check_commit(cid, decode_commit(data, cid))
                self.blocks.put(cid, data)
                continue
            if cid in fetched or self.blocks.has(cid):
                continue
            data = self.remote.get(cid)  # hash-verified
            links = validated_links(cid, data)
            fetched[cid] = data
            stack.append((cid, True))
            stack.extend((link, False) for link in links if link not in fetched and not self.blocks.has(link))
        self.blocks.flush()
