"""``casync audit --remote NAME``: is the audited snapshot whole and kept on an IPFS node?

Every block the local audit reached must be in the node's blockstore (``block/stat``,
offline, many requests in flight on the client's pool) and covered by a recursive pin — the
block is a pinned root or lies below one (the walk is done locally, over the same blocks),
or a pinned commit has the audited commit in its history.  The published head records must
be readable, name commits the node holds, agree with those commits' generation and clock,
and this replica's record must name what its remote-tracking ref says was pushed.

On a remote that pins through IPFS Cluster, coverage is the cluster's instead: every
published head must be ``pinned`` on at least ``replication_min`` peers (an
``under-replicated`` finding names the head, its pin name and the peers where it is not
pinned), and the audited blocks must lie below a head pinned on the cluster; the Kubo node
the blocks were sent to need not keep them itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from casync.errors import CasyncError
from casync.model.cid import DAG_CBOR, RAW, Cid, cid_codec, cid_str
from casync.repo.audit import AuditReport
from casync.repo.repository import Repository
from casync.transports.config import get_remote
from casync.transports.ipfs.cluster import ClusterPins, cluster_pins
from casync.transports.ipfs.records import HeadRecord, RemoteNode, connect
from casync.trees.unixfs import validated_links

__all__ = ["audit_remote"]


def audit_remote(repo: Repository, remote_name: str, report: AuditReport, blocks: Iterable[Cid]) -> None:
    """Add to ``report`` what the remote ``remote_name`` lacks of ``blocks`` (the audited DAG)."""
    remote = get_remote(repo, remote_name).require_ipfs()
    wanted = sorted(set(blocks))
    cluster = cluster_pins(remote)
    if cluster is not None:
        with connect(remote.url) as node:
            _cluster_coverage(repo, remote.name, cluster, node, report, set(wanted))
            _records(repo, remote.name, node, report)
        return
    with connect(remote.url) as node:
        sizes = node.client.map(node.client.block_size, wanted)
        absent = {cid for cid, size in zip(wanted, sizes, strict=True) if size is None}
        for cid in sorted(absent):
            report.add("remote-missing", cid, f"not in the blockstore of {remote.name} ({remote.url.api})")
        covered = _pinned(repo, node.client.recursive_pins(), set(wanted), report.root)
        for cid in wanted:
            if cid not in covered and cid not in absent:
                report.add("unpinned", cid, f"no recursive pin on {remote.name} covers it (garbage collection "
                                            "may remove it)")
        _records(repo, remote.name, node, report)


def _cluster_coverage(repo: Repository, name: str, cluster: ClusterPins, node: RemoteNode, report: AuditReport,
                      wanted: set[Cid]) -> None:
    """A cluster remote: every published head must be pinned on at least ``replication_min``
    peers (each such peer's Kubo then holds its whole DAG), and the audited snapshot must lie
    below one of those heads."""
    covered: set[Cid] = set()
    for replica, record in sorted(node.records(repo.repo_id, errors=[]).items()):
        for branch, head in sorted(record.heads.items()):
            coverage = cluster.coverage(head.commit)
            if coverage.pinned and repo.blocks.has(head.commit):
                covered |= _pinned(repo, {head.commit}, wanted, report.root)
            if coverage.ok:
                continue
            where = f"head {replica}/{branch} ({coverage.status.name or 'no pin name'})"
            if coverage.status.replication_min is None:
                report.add("under-replicated", head.commit, f"{where} is not in the pinset of the cluster of {name} "
                                                            f"({cluster.client.url})")
                continue
            report.add("under-replicated", head.commit,
                       f"{where} is pinned on {coverage.pinned} of the {coverage.required} peers {name}'s cluster "
                       f"asks for; not on: {'; '.join(coverage.missing) or '-'}")
    for cid in sorted(wanted - covered):
        report.add("unpinned", cid, f"no head pinned on the cluster of {name} covers it")


def _pinned(repo: Repository, pins: set[Cid], wanted: set[Cid], root: Cid) -> set[Cid]:
    """The blocks of ``wanted`` below some pin of ``pins``."""
    if cid_codec(root) == DAG_CBOR:
        for pin in pins:
            if pin not in wanted and cid_codec(pin) == DAG_CBOR and repo.blocks.has(pin):
                try:
                    if repo.graph.is_ancestor(root, pin):
                        return set(wanted)
                except CasyncError:
                    continue
    covered: set[Cid] = set()
    stack = [p for p in pins if p in wanted]
    while stack:
        cid = stack.pop()
        if cid in covered:
            continue
        covered.add(cid)
        if cid_codec(cid) == RAW:
            continue
        try:
            stack.extend(validated_links(cid, repo.blocks.get(cid)))
        except CasyncError:
            continue  # a damaged block is a finding of the local audit
    return covered & wanted


def _records(repo: Repository, name: str, node: RemoteNode, report: AuditReport) -> None:
    errors: list[str] = []
    records: dict[str, HeadRecord] = node.records(repo.repo_id, errors=errors)
    for error in errors:
        report.add("record-invalid", None, error)
    for replica, record in sorted(records.items()):
        for branch, head in sorted(record.heads.items()):
            where = f"head record of {replica} on {name}, branch {branch}"
            if node.client.block_size(head.commit) is None:
                report.add("record-dangling", head.commit, f"{where} names a commit the node does not hold")
            if repo.blocks.has(head.commit):
                try:
                    commit = repo.load_commit(head.commit)
                except CasyncError:
                    continue
                if head.generation and (head.generation != commit.generation or dict(head.clock) != commit.clock):
                    report.add("record-mismatch", head.commit, f"{where} gives generation/clock "
                                                               f"{head.generation}/{dict(head.clock)}, the commit "
                                                               f"{commit.generation}/{dict(commit.clock)}")
            if replica == repo.replica:
                tracked = repo.refs.get_ref(f"remotes/{name}/{replica}/{branch}")
                if tracked != head.commit:
                    shown = cid_str(tracked) if tracked is not None else "nothing"
                    report.add("record-mismatch", head.commit, f"{where} differs from the local ref "
                                                               f"remotes/{name}/{replica}/{branch} ({shown})")
