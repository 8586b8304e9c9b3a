"""Tags: named, immutable snapshots (``tags/<name>`` refs naming a commit).

A tag is set once and never moves by itself: ``casync tag -f`` is the only way to
re-point one.  Tags travel with every transport (peers, bundles, IPFS head records),
and a tag that arrives with a target different from the local one is never applied:
the local tag stays, the incoming target is kept under
``tag-conflicts/<source>/<name>`` (so neither commit becomes unreachable) and the
conflict is reported.  A tag is only set once its commit is held, and a held commit's
DAG is complete (closure invariant), so a tag never names an incomplete DAG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from casync.errors import RefConflict, UsageError
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, short
from casync.model.names import validate_branch_name
from casync.repo.repository import Repository

__all__ = ["CONFLICT_PREFIX", "TAG_PREFIX", "TagUpdate", "checked_tags", "create_tag", "delete_tag",
           "list_tags", "receive_tags", "tag_conflicts", "tags_reaching", "validate_tag_name"]

TAG_PREFIX = "tags/"
CONFLICT_PREFIX = "tag-conflicts/"


def validate_tag_name(name: str) -> None:
    """Tag names follow the branch-name rules (they share the revision namespace)."""
    try:
        validate_branch_name(name)
    except UsageError:
        raise UsageError(f"invalid tag name {name!r}",
                         hint="use letters, digits, '.', '_', '-' and '/' (no '..', no leading '-')") from None


def checked_tags(tags: Mapping[str, Cid]) -> dict[str, Cid]:
    """``tags`` from elsewhere (a peer, a bundle, a head record), each name valid and each
    target a commit CID; UsageError or ValueError otherwise (callers word the error)."""
    for name, target in tags.items():
        validate_tag_name(name)
        if cid_codec(target) != DAG_CBOR:
            raise ValueError(f"tag {name!r} does not name a commit")
    return dict(tags)


def list_tags(repo: Repository) -> dict[str, Cid]:
    return {k[len(TAG_PREFIX):]: v for k, v in sorted(repo.refs.list_refs(TAG_PREFIX).items())}


def tag_conflicts(repo: Repository) -> dict[str, Cid]:
    """Incoming tag targets that were not applied: ``<source>/<name>`` -> commit."""
    return {k[len(CONFLICT_PREFIX):]: v for k, v in sorted(repo.refs.list_refs(CONFLICT_PREFIX).items())}


def create_tag(repo: Repository, name: str, target: Cid, *, force: bool = False) -> Cid | None:
    """Point ``tags/<name>`` at ``target``; return the previous target (None if new).

    An existing tag is refused (exit 1) unless ``force``: tags are meant not to move."""
    validate_tag_name(name)
    if cid_codec(target) != DAG_CBOR:
        raise UsageError(f"a tag names a commit, and {cid_str(target)} is not one")
    with repo.store.writer_lock():
        old = repo.refs.get_ref(TAG_PREFIX + name)
        if old == target:
            return old
        if old is not None and not force:
            raise RefConflict(f"tag {name!r} already exists (at {short(old)})",
                              hint="tags do not move; give another name, or pass --force to re-point it")
        repo.refs.cas_ref(TAG_PREFIX + name, old, target, "tag: " + ("moved" if old else "created"))
        _drop_conflicts(repo, name, target)
        return old


def delete_tag(repo: Repository, name: str) -> Cid:
    validate_tag_name(name)
    with repo.store.writer_lock():
        old = repo.refs.get_ref(TAG_PREFIX + name)
        if old is None:
            raise UsageError(f"tag {name!r} not found", hint="list tags with 'casync tag'")
        repo.refs.cas_ref(TAG_PREFIX + name, old, None, "tag: deleted")
        return old


@dataclass
class TagUpdate:
    """What receiving a set of tags did: created, already equal, in conflict, not held."""

    source: str
    created: dict[str, Cid] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    conflicts: dict[str, tuple[Cid, Cid]] = field(default_factory=dict)  # name -> (ours, theirs)
    skipped: dict[str, Cid] = field(default_factory=dict)  # commit not held: not set (closure)
    kept_as: dict[str, str] = field(default_factory=dict)  # name -> the ref keeping the incoming target

    def merge(self, other: TagUpdate) -> None:
        self.created.update(other.created)
        self.unchanged.extend(n for n in other.unchanged if n not in self.unchanged)
        self.conflicts.update(other.conflicts)
        self.kept_as.update(other.kept_as)
        self.skipped.update(other.skipped)

    def to_json(self) -> dict[str, Any]:
        return {"created": {n: cid_str(c) for n, c in self.created.items()},
                "unchanged": self.unchanged,
                "conflicts": {n: {"ours": cid_str(o), "theirs": cid_str(t),
                                  "kept_as": self.kept_as.get(n)}
                              for n, (o, t) in self.conflicts.items()},
                "skipped": {n: cid_str(c) for n, c in self.skipped.items()}}

    @classmethod
    def from_json(cls, source: str, obj: Any) -> TagUpdate:
        """A peer's reply (see :meth:`to_json`); malformed parts raise ValueError/KeyError/TypeError."""
        from casync.model.cid import parse_cid

        out = cls(source)
        out.created = {str(n): parse_cid(c) for n, c in dict(obj.get("created", {})).items()}
        out.unchanged = [str(n) for n in obj.get("unchanged", [])]
        out.conflicts = {str(n): (parse_cid(c["ours"]), parse_cid(c["theirs"]))
                         for n, c in dict(obj.get("conflicts", {})).items()}
        out.skipped = {str(n): parse_cid(c) for n, c in dict(obj.get("skipped", {})).items()}
        return out


def receive_tags(repo: Repository, incoming: Mapping[str, Cid], source: str) -> TagUpdate:
    """Apply tags from elsewhere without ever moving an existing one.

    A new name whose commit is held is created; an equal one is left; a different one is
    a conflict: the local tag stays and the incoming target is kept under
    ``tag-conflicts/<source>/<name>``.  A tag whose commit is not held is skipped.
    ``source`` is one ref segment (a remote name, ``remote@replica``, ``bundle``; '/' becomes '_')."""
    source = source.replace("/", "_") or "unknown"
    result = TagUpdate(source)
    with repo.store.writer_lock():
        for name, target in sorted(incoming.items()):
            validate_tag_name(name)
            if cid_codec(target) != DAG_CBOR or not repo.blocks.has(target):
                result.skipped[name] = target
                continue
            ours = repo.refs.get_ref(TAG_PREFIX + name)
            if ours is None:
                repo.refs.cas_ref(TAG_PREFIX + name, None, target, f"tag: from {source}")
                result.created[name] = target
            elif ours == target:
                result.unchanged.append(name)
            else:
                ref = f"{CONFLICT_PREFIX}{source}/{name}"
                kept = repo.refs.get_ref(ref)
                if kept != target:
                    repo.refs.cas_ref(ref, kept, target, f"tag conflict: {name} from {source}")
                result.conflicts[name] = (ours, target)
                result.kept_as[name] = ref
    return result


def _drop_conflicts(repo: Repository, name: str, target: Cid) -> None:
    """A conflict is settled once the local tag names the incoming target."""
    for key, cid in repo.refs.list_refs(CONFLICT_PREFIX).items():
        if cid == target and key[len(CONFLICT_PREFIX):].partition("/")[2] == name:
            repo.refs.cas_ref(key, cid, None, f"tag conflict settled: {name}")


def tags_reaching(repo: Repository, heads: Iterable[Cid]) -> dict[str, Cid]:
    """The local tags whose commits ``heads`` contain (what a transfer of ``heads`` can carry)."""
    heads = [h for h in dict.fromkeys(heads) if repo.blocks.has(h)]
    out = {}
    for name, target in list_tags(repo).items():
        if any(h == target or repo.graph.is_ancestor(target, h) for h in heads):
            out[name] = target
    return out
