"""One sync with one peer: fetch, merge the peer's branch, push back.  ``casync sync`` and the
agent both run this, so a site synced by hand and one synced by its agent end the same."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from casync.errors import ConflictError
from casync.merge.threeway import PolicyRules
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.transports.peer.protocol import Peer

__all__ = ["exchange"]


def exchange(repo: Repository, peer: Peer, name: str, branch: str, entry: dict[str, Any], *,
             policy: str | None = None, rules: PolicyRules | None = None,
             priorities: Mapping[str, int] | None = None, push: bool = True,
             progress: Progress = NULL_PROGRESS, require_signed: bool | None = None) -> dict[str, Any]:
    """Fetch every branch of ``peer`` into ``remotes/<name>/``, merge its ``branch`` into ours,
    and (``push``) push ours back unless the peer is read-only.  ``entry`` is filled as each
    step ends (``fetch``, ``merge``, ``push``), so a step that raises leaves what the earlier
    ones did in it; a merge stopped on conflicts raises :class:`ConflictError`.
    ``require_signed`` (default: config ``require_signed``) refuses unsigned or untrusted
    history from the peer before any ref moves (:func:`fetch_from`)."""
    from casync.transports.peer.exchange import fetch_from, push_to
    from casync.worktree import merging as merger

    fetched = fetch_from(repo, peer, name, progress, require_signed=require_signed)
    entry["fetch"] = fetched.to_json()
    if repo.refs.get_ref(f"remotes/{name}/{branch}") is not None:
        outcome = merger.merge(repo, f"remotes/{name}/{branch}", policy=policy, progress=progress, rules=rules,
                               replica_priorities=priorities)
        entry["merge"] = outcome.to_json()
        if outcome.kind == "conflicts":
            raise ConflictError(f"merge with {name} stopped on conflicts",
                                hint="resolve them, 'casync merge --continue', then sync again")
    if push:
        info = peer.info()
        if info.read_only:
            entry["push"] = {"result": "skipped: peer is read-only"}
        else:
            entry["push"] = push_to(repo, peer, name, branch, progress)
    return entry
