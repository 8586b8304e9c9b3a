"""Revisions: what ``HEAD``, a branch or tag name, a CID or CID prefix, with ``~N``/``^N``, names.

The one parser of revision syntax and the order short names are tried in
(:func:`ref_candidates`: a branch before a tag, as in git).  Apart from
:mod:`casync.repo.repository` because resolving is its own small language over the refs,
HEAD and the commit index; :class:`~casync.repo.repository.Repository` offers it as
``repo.resolve`` and ``repo.ref_named``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from casync.errors import UnknownRevision, UsageError
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, compute_cid, parse_cid

if TYPE_CHECKING:
    from casync.repo.repository import Repository
    from casync.store.base import RefStore

__all__ = ["ref_candidates", "ref_named", "resolve"]

_REV_SUFFIX = re.compile(r"^(.*?)((?:~\d*|\^\d*)*)$")


def ref_candidates(name: str) -> list[str]:
    """The full ref names a short name may mean, in the order they are tried."""
    # a branch of the same name comes before a tag, as in git
    return [f"heads/{name}", f"tags/{name}"] + ([name, f"remotes/{name}"] if "/" in name else [])


def resolve(repo: Repository, rev: str) -> Cid:
    """A commit CID for ``HEAD``, a branch, a tag, a CID or unique CID prefix, with ``~N``/``^N``."""
    m = _REV_SUFFIX.match(rev.strip())
    assert m is not None
    base, suffix = m.group(1), m.group(2)
    cid = _resolve_base(repo, base or "HEAD", rev)
    if cid_codec(cid) != DAG_CBOR:
        raise UnknownRevision(f"{rev!r} names a file or directory block, not a commit",
                              hint="give a commit CID (see 'casync log'); 'casync ls' shows tree CIDs")
    for op in re.findall(r"[~^]\d*", suffix):
        n = int(op[1:]) if len(op) > 1 else 1
        if op[0] == "~":
            for _ in range(n):
                parents = repo.load_commit(cid).parents
                if not parents:
                    raise UnknownRevision(f"revision {rev!r} goes past the first commit")
                cid = parents[0]
        else:
            parents = repo.load_commit(cid).parents
            if n == 0:
                continue
            if n > len(parents):
                raise UnknownRevision(f"revision {rev!r}: commit has {len(parents)} parent(s)")
            cid = parents[n - 1]
    return cid


def ref_named(refs: RefStore, name: str) -> tuple[str, Cid] | None:
    """(full ref name, commit) for a branch, a tag, or a ref that a name with ``/`` gives in full
    (``remotes/origin/main``, ``bundles/main``) or as a remote-tracking head (``origin/main``);
    the order revisions are resolved in.  None when no ref has that name."""
    for full in ref_candidates(name):
        cid = refs.get_ref(full)
        if cid is not None:
            return full, cid
    return None


def _resolve_base(repo: Repository, base: str, rev: str) -> Cid:
    if base == "HEAD":
        head = repo.head()
        if head is None:
            raise UnknownRevision("HEAD has no commits yet", hint="make a first commit with 'casync commit'")
        return head
    named = repo.ref_named(base)
    if named is not None:
        return named[1]
    if len(base) >= 4 and base.isalnum():
        if base.startswith("b") and len(base) > 50:
            with contextlib.suppress(UsageError):
                cid = parse_cid(base)
                if repo.blocks.has(cid):
                    return cid
                raise UnknownRevision(f"commit {base} is not in this repository",
                                      hint="fetch it from a remote first")
        matches = [c for c in _commit_cids(repo) if cid_str(c).startswith(base)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownRevision(f"revision {base!r} is ambiguous ({len(matches)} commits match)",
                                  hint="give more characters of the CID")
    raise UnknownRevision(f"unknown revision {rev!r}",
                          hint="use a branch or tag name, HEAD, HEAD~N or a commit CID (see 'casync log')")


def _commit_cids(repo: Repository) -> Iterator[Cid]:
    prefix = compute_cid(DAG_CBOR, b"", repo.hash_name)[:-32]
    for key, _ in repo.store.items("index", prefix):
        yield key
