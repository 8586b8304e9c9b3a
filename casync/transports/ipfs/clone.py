"""Clone a repository from an IPFS remote, and gateway URLs for committed paths."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casync.errors import ConflictError, RemoteError, UsageError
from casync.model.cid import Cid, cid_str
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.store.retry import DEFAULT_RETRY, RetryPolicy
from casync.transfer.clone import CloneTarget, refuse_replica_in_use, replicas_in_history
from casync.transports.config import Remote, add_remote, get_remote, list_remotes, parse_url
from casync.transports.ipfs.fetch import FetchResult, fast_forward_target, fetch_from
from casync.transports.ipfs.records import connect

__all__ = ["CloneResult", "clone", "gateway_url"]


@dataclass
class CloneResult:
    root: Path
    repository: str
    replica: str
    branch: str | None
    head: Cid | None
    fetch: FetchResult
    diverged: bool = False
    seconds: float = 0.0
    paths: tuple[str, ...] = ()  # a partial clone's paths (empty: every path)

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "repository": self.repository, "replica": self.replica,
                "branch": self.branch, "head": cid_str(self.head) if self.head else None,
                "paths": list(self.paths) or None, "diverged": self.diverged, "fetch": self.fetch.to_json(),
                "seconds": round(self.seconds, 3)}


def clone(url: str, directory: str | os.PathLike[str], *, replica: str | None = None, remote_name: str = "origin",
          branch: str | None = None, gateway: str | None = None, progress: Progress = NULL_PROGRESS,
          concurrency: int = 8, wait: float = 60.0, retry: RetryPolicy = DEFAULT_RETRY,
          paths: tuple[str, ...] = ()) -> tuple[Repository, CloneResult]:
    """Create ``directory`` as a new replica of the repository at ``url`` (same repository
    id, new replica id), fetch every published head, and check out ``branch`` (default
    ``main`` if published, else the first branch name).  Resume and cleanup follow the one
    clone procedure (:class:`casync.transfer.clone.CloneTarget`).  ``paths`` (normalized):
    a partial clone of those paths only (:meth:`CloneTarget.record_paths`)."""
    t0 = time.monotonic()
    parsed = parse_url(url)
    with CloneTarget(Path(directory).resolve(), parsed.text) as target, contextlib.ExitStack() as stack:
        target.refuse_other_replica(replica)
        node = stack.enter_context(connect(parsed, retry=retry, wait=wait))
        repo_id = node.resolve_repo_id()
        errors: list[str] = []
        records = node.records(repo_id, errors=errors)
        if not records:
            detail = f" ({'; '.join(errors)})" if errors else ""
            raise RemoteError(f"no head records for repository {repo_id} at {parsed.text}{detail}",
                              hint="check the repository id in the URL ('casync remote show' on a replica "
                                   "prints it); a second node needs the index: URL#INDEX-CID")
        first = records[sorted(records, key=lambda r: (-records[r].seq, r))[0]]
        branches = sorted({b for r in records.values() for b in r.heads})
        branch = branch or target.state.get("branch")
        if branch is None:
            branch = "main" if "main" in branches else branches[0] if branches else "main"
        resumed = target.resumed
        repo = target.open(repository_id=repo_id, replica=replica, hash=first.hash, chunker=first.chunker,
                           branch=branch)
        published = set(records) | {r for rec in records.values() for h in rec.heads.values() for r in h.clock}
        refuse_replica_in_use(repo.replica, published, repo_id, chosen=replica is not None)
        target.record_paths(paths)
        # a first run killed before it added the remote left none to resume with
        known = resumed and any(r.name == remote_name for r in list_remotes(repo))
        remote = get_remote(repo, remote_name) if known else add_remote(repo, remote_name, parsed.text, gateway)
        result = fetch_from(repo, remote, node, progress=progress, concurrency=concurrency, wait=wait)
        heads = [cid for ref, cid in repo.refs.list_refs(f"remotes/{remote_name}/").items()
                 if ref.split("/", 3)[-1] == branch]
        if not heads and result.failed:
            f = result.failed[0]
            raise RemoteError(f"clone failed: {f.replica}/{f.branch} ({cid_str(f.commit)}): {f.error}",
                              transient=True)
        fetched = repo.refs.list_refs(f"remotes/{remote_name}/").values()
        refuse_replica_in_use(repo.replica, replicas_in_history(repo, fetched), repo_id,
                              chosen=replica is not None)
        head, diverged = _choose(repo, heads)
        if head is not None:
            target.checkout(head, branch, f"clone from {parsed.text}", progress)
        target.finish()
    out = CloneResult(repo.root, repo_id, repo.replica, branch, head, result, diverged,
                      paths=repo.partial.paths if repo.partial is not None else ())
    out.seconds = time.monotonic() - t0
    return repo, out


def _choose(repo: Repository, heads: list[Cid]) -> tuple[Cid | None, bool]:
    if not heads:
        return None, False
    try:
        return fast_forward_target(repo, None, heads), False
    except ConflictError:
        # diverged replicas: start from the newest (generation, then HLC, then CID)
        best = max(heads, key=lambda c: (repo.graph.get(c).generation, repo.graph.get(c).time, c))
        return best, True


def is_published(repo: Repository, commit: Cid, remote_name: str | None = None) -> bool:
    """Whether ``commit`` is in the history of a head this repository last saw on the
    remote (its remote-tracking refs): if not, the remote's node may not hold it."""
    remote = get_remote(repo, remote_name)
    heads = list(repo.refs.list_refs(f"remotes/{remote.name}/").values())
    return any(repo.graph.is_ancestor(commit, h) for h in heads)


def gateway_url(repo: Repository, spec: str, remote_name: str | None = None,
                retry: RetryPolicy = DEFAULT_RETRY) -> str:
    """``<gateway>/ipfs/<commit-cid>/tree/<path>`` for ``REV[:PATH]``: Kubo's gateway follows
    the commit's ``tree`` link (DAG-CBOR path traversal) into the UnixFS tree."""
    remote = get_remote(repo, remote_name).require_ipfs()
    commit, path, entry = repo.entry_at(spec if ":" in spec else spec + ":")
    gateway = remote.gateway or _ask_gateway(remote, retry)
    quoted = "/".join(urllib.parse.quote(part, safe="") for part in path.split("/")) if path else ""
    suffix = "/" if entry.kind == "dir" and quoted else ""
    return f"{gateway}/ipfs/{cid_str(commit)}/tree/{quoted}{suffix}"


def _ask_gateway(remote: Remote, retry: RetryPolicy) -> str:
    """A remote configured without a gateway: the one its node serves (not stored, so a node
    that moves its gateway is asked again next time)."""
    set_one = f"set one: casync remote set-url {remote.name} --gateway http://HOST:PORT"
    try:
        with connect(remote.url, retry=retry) as node:
            gateway = node.client.gateway_url()
    except RemoteError as err:
        raise RemoteError(f"remote {remote.name!r} has no gateway URL, and its node could not be asked for "
                          f"one: {err.message}", hint=err.hint or set_one, transient=err.transient) from None
    if gateway is None:
        raise UsageError(f"remote {remote.name!r} has no gateway URL, and its node serves none "
                         "(Addresses.Gateway is empty)", hint=set_one)
    return gateway
