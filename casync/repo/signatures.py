"""Verifying commit signatures in a repository, and refusing unsigned history.

:class:`Verifier` checks commits against the repository's trusted keys
(:func:`casync.repo.keys.trusted_keys`); :func:`require_signed_history` is what fetch, pull
and sync call with ``--require-signed`` (or config ``require_signed``) after the blocks
arrived and before any ref moves: every commit the new heads bring that no ref held
before must carry a valid signature, or nothing moves and the error names the commit.
"""

from __future__ import annotations

from collections.abc import Iterable

from casync.errors import UntrustedHistory
from casync.model.cid import Cid, cid_str
from casync.model.commit import Commit
from casync.model.signing import Verdict, verify_commit
from casync.repo.keys import trusted_keys
from casync.repo.repository import Repository

__all__ = ["Verifier", "require_signed_history", "signature_json"]

_WHY = {"unsigned": "is not signed", "invalid": "has a signature that does not verify",
        "unknown-key": "is signed, but no key is trusted for its replica"}


class Verifier:
    """Signature checks against one repository's trusted keys (read once)."""

    def __init__(self, repo: Repository) -> None:
        self.trusted = trusted_keys(repo.root, repo.replica, repo.config)

    def verdict(self, commit: Commit) -> Verdict:
        return verify_commit(commit, self.trusted)


def signature_json(verdict: Verdict, commit: Commit) -> dict[str, str | None]:
    """What ``log --json`` and ``audit --trail`` say of a commit's signature."""
    return {"signer": commit.replica if commit.signature is not None else None, **verdict.to_json()}


def require_signed_history(repo: Repository, heads: Iterable[Cid], known: Iterable[Cid], source: str) -> int:
    """Raise :class:`UntrustedHistory` naming the first commit reachable from ``heads`` but
    not from ``known`` without a valid signature; return how many commits were checked."""
    verifier = Verifier(repo)
    new = repo.graph.missing(list(heads), list(known))
    for cid in new:
        commit = repo.load_commit(cid)
        verdict = verifier.verdict(commit)
        if not verdict.ok:
            raise UntrustedHistory(
                f"commit {cid_str(cid)} from {source} {_WHY[verdict.status]} (replica {commit.replica}); "
                "signed history is required, so no ref was moved",
                hint="add the replica's key to the trusted signers file ('casync key export' there), "
                     "or fetch without --require-signed")
    return len(new)
