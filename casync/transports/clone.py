"""Clone from a peer (``casync serve`` or a repository path): a new replica with the same
repository id, hash and chunker.  Resume, cleanup and the replica-id checks are the one
clone procedure every remote uses (:class:`casync.transfer.clone.CloneTarget`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from casync.errors import UsageError
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.settings import RemoteEntry, remotes
from casync.store.retry import DEFAULT_RETRY, RetryPolicy
from casync.transfer.clone import CloneTarget, refuse_replica_in_use, replicas_in_history
from casync.transports.config import write_remote
from casync.transports.locate import Location, open_peer
from casync.transports.peer.exchange import FetchResult, fetch_from

__all__ = ["PeerClone", "clone_peer"]


@dataclass
class PeerClone:
    branch: str | None
    fetch: FetchResult
    paths: tuple[str, ...] = ()  # a partial clone's paths (empty: every path)

    def to_json(self, repo: Repository) -> dict[str, Any]:
        return {"root": str(repo.root), "replica": repo.replica, "repository": repo.repo_id, "branch": self.branch,
                "paths": list(self.paths) or None, **self.fetch.to_json()}


def clone_peer(where: Location, directory: Path, *, token: str | None = None, token_file: str | None = None,
               replica: str | None = None, branch: str | None = None, progress: Progress = NULL_PROGRESS,
               retry: RetryPolicy = DEFAULT_RETRY, paths: tuple[str, ...] = ()
               ) -> tuple[Repository, PeerClone]:
    """Clone the peer at ``where`` into ``directory``; its remote ``origin`` keeps
    ``token_file`` (the path, not the token) for later fetches.  ``paths`` (normalized):
    a partial clone of those paths only, recorded in config ``partial_paths`` before
    anything is fetched (so a resumed clone and every later fetch keep to them)."""
    with CloneTarget(directory, where.url) as target:
        target.refuse_other_replica(replica)
        peer = open_peer(where, token, retry)
        try:
            info = peer.info()
            resumed = target.resumed
            repo = target.open(repository_id=info.repository_id, replica=replica, hash=info.hash,
                               chunker=info.chunker, branch=branch)
            origin = RemoteEntry(where.url)
            if resumed:
                origin = remotes(repo.config).get("origin", origin)
            if token_file:  # a token given on resume replaces the first run's
                origin = replace(origin, token_file=token_file)
            if not resumed or token_file:
                write_remote(repo, "origin", origin)
            target.record_paths(paths)
            chosen = replica is not None
            refuse_replica_in_use(repo.replica, [info.replica], info.repository_id, chosen=chosen)
            result = fetch_from(repo, peer, "origin", progress)
            refuse_replica_in_use(repo.replica, replicas_in_history(repo, info.refs.values()), info.repository_id,
                                  chosen=chosen)
        finally:
            peer.close()
        wanted = branch or target.state.get("branch") or \
            ("main" if "main" in info.refs else next(iter(sorted(info.refs)), None))
        if wanted is not None:
            tip = repo.refs.get_ref(f"remotes/origin/{wanted}")
            if tip is None:
                raise UsageError(f"{where.url} has no branch {wanted!r}")
            target.checkout(tip, wanted, f"clone from {where.url}", progress)
        target.finish()
    return repo, PeerClone(wanted, result, repo.partial.paths if repo.partial is not None else ())

