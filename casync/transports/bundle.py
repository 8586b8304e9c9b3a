"""Bundles for sneakernet: a CAR v1 file carrying commits and everything they reach.

The CAR's root is a small DAG-CBOR *manifest* block ``{"casync_bundle": 1,
"repository_id": str, "refs": {name: Link}, "prerequisites": [Link], "tags": {name: Link},
"hash": str, "chunker": str}``.  It is the first block, and the rest follow in root-first
order (:mod:`casync.transfer.dfs`: each block after the block that links to it, as
``ipfs dag export`` writes and streaming verifiers expect).  The header names the manifest
as the CAR's root only when the bundle is complete (no prerequisites), so that ``ipfs dag
import`` pins exactly what it can: a thin bundle's header lists no root (its manifest and
commits link to history it lacks), and Kubo imports its blocks without pinning any.  Older
bundles put the manifest last, after the blocks in post-order; both are read.  ``tags`` (optional) are the
sender's tags on commits the refs reach; the receiver creates the ones it lacks and never moves
one it has (a differing one is kept as ``tag-conflicts/bundle/<name>`` and reported).
``hash`` and ``chunker``, which a clone from a bundle needs, are absent from older bundles:
then the hash comes from the manifest's CID and the chunker is ``cdc``.  ``prerequisites`` are
commits the receiver must already hold (a bundle made with ``--since``); everything else the
refs reach is inside.
Unbundling checks every block exactly like a network fetch (hash, links, no strays),
so a bundle from an untrusted USB stick is as safe as a peer.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casync.errors import CorruptBlock, InvalidObject, UsageError
from casync.model import cbor
from casync.model.car import CarWriter, iter_car, read_header
from casync.model.cbor import Link
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_hash, cid_str, compute_cid, short, verify_block
from casync.model.names import is_repo_id, validate_branch_name
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.repository import Repository
from casync.repo.tags import TagUpdate, checked_tags, receive_tags, tags_reaching
from casync.transfer.clone import CloneTarget, refuse_replica_in_use, replicas_in_history
from casync.transfer.dfs import DfsReceiver, block_links, dfs_blocks
from casync.transfer.stream import MissingLink, PackReceiver, TransferStats
from casync.trees.walk import commit_blocks

__all__ = ["BundleInfo", "BundleManifest", "clone_bundle", "create_bundle", "peek_bundle", "read_bundle"]


@dataclass
class BundleInfo:
    repository_id: str
    refs: dict[str, Cid]
    prerequisites: list[Cid]
    stats: TransferStats
    tags: dict[str, Cid] = field(default_factory=dict)
    tag_update: TagUpdate | None = None  # what unbundling did with the tags

    def to_json(self) -> dict[str, Any]:
        return {"repository_id": self.repository_id, "refs": {k: cid_str(v) for k, v in self.refs.items()},
                "prerequisites": [cid_str(p) for p in self.prerequisites], **self.stats.to_json(),
                "tags": {k: cid_str(v) for k, v in self.tags.items()},
                **({"tag_update": self.tag_update.to_json()} if self.tag_update is not None else {})}


def _manifest(repo: Repository, refs: dict[str, Cid], prerequisites: list[Cid], tags: dict[str, Cid]
              ) -> tuple[Cid, bytes]:
    manifest: dict[str, Any] = {
        "casync_bundle": 1,
        "repository_id": repo.repo_id,
        "refs": {k: Link(v) for k, v in refs.items()},
        "prerequisites": [Link(p) for p in prerequisites],
        "hash": repo.hash_name,
        "chunker": repo.chunker_name,
    }
    if tags:  # absent when there are none: a bundle without tags reads as before
        manifest["tags"] = {k: Link(v) for k, v in tags.items()}
    block = cbor.encode(manifest)
    return compute_cid(DAG_CBOR, block, repo.hash_name), block


def create_bundle(repo: Repository, path: Path, revs: list[str], since: list[str] | None = None) -> BundleInfo:
    """Write a bundle of ``revs`` (branch names keep their names; other revs are named by
    themselves) with everything not reachable from ``since``."""
    refs: dict[str, Cid] = {}
    for rev in revs or ["HEAD"]:
        cid = repo.resolve(rev)
        if rev in repo.branches():
            name = rev
        elif rev == "HEAD" and repo.current_branch():
            name = str(repo.current_branch())
        else:
            name = cid_str(cid)  # HEAD~2, a CID...: named by the commit itself
        refs[name] = cid
    prerequisites = [repo.resolve(s) for s in since or []]
    commits = repo.graph.missing(list(refs.values()), prerequisites)
    tags = tags_reaching(repo, refs.values())
    manifest_cid, manifest = _manifest(repo, refs, prerequisites, tags)
    stats = TransferStats()
    # which blocks: the one tree walker (interior nodes read, leaves not); in what order:
    # root-first from the manifest, each block read once more as it is written
    include = {cid for cid, _size, _data in commit_blocks(repo.blocks.get, repo.graph, commits)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        writer = CarWriter(f, [] if prerequisites else [manifest_cid])
        writer.add(manifest_cid, manifest)
        for cid, block in dfs_blocks(repo.blocks.get, block_links(manifest_cid, manifest), include):
            writer.add(cid, block)
            stats.blocks += 1
            stats.bytes += len(block)
        if include:  # the walker chose a block no chosen block links to
            raise InvalidObject(f"bundle of {len(commits)} commits: {len(include)} blocks unreachable, e.g. "
                                f"{cid_str(next(iter(include)))}")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    stats.commits = commits
    return BundleInfo(repo.repo_id, refs, prerequisites, stats, tags)


_Manifest = tuple[str, dict[str, Cid], list[Cid], dict[str, Cid]]


def _parse_manifest(cid: Cid, block: bytes) -> _Manifest:
    try:
        obj: Any = cbor.decode(block)
        if not isinstance(obj, dict) or obj.get("casync_bundle") != 1:
            raise ValueError("not a casync bundle manifest")
        if not all(isinstance(v, Link) for v in [*obj["refs"].values(), *obj["prerequisites"]]):
            raise ValueError("refs and prerequisites must be links")
        refs = {str(k): bytes(v) for k, v in obj["refs"].items()}
        prereq = [bytes(p) for p in obj["prerequisites"]]
        for name, ref in refs.items():
            validate_branch_name(name)
            if cid_codec(ref) != DAG_CBOR:
                raise ValueError(f"ref {name!r} does not name a commit")
        if any(cid_codec(p) != DAG_CBOR for p in prereq):
            raise ValueError("a prerequisite is not a commit")
        if not is_repo_id(obj["repository_id"]):
            raise ValueError(f"repository id {str(obj['repository_id'])[:80]!r} is not a valid id")
        return str(obj["repository_id"]), refs, prereq, _parse_tags(obj.get("tags", {}))
    except (ValueError, KeyError, TypeError, AttributeError, UsageError, InvalidObject) as exc:
        raise InvalidObject(f"bundle manifest {cid_str(cid)} is malformed ({exc})") from None


def _parse_tags(value: Any) -> dict[str, Cid]:
    if not isinstance(value, dict) or not all(isinstance(v, Link) for v in value.values()):
        raise ValueError("tags must map names to links")
    return checked_tags({str(k): bytes(v) for k, v in value.items()})


def read_bundle(repo: Repository, path: Path, ref_prefix: str = "bundles") -> BundleInfo:
    """Verify and store a bundle's blocks, then set ``<ref_prefix>/<name>`` for its refs."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read bundle {path}: {exc.strerror}") from None
    with f, repo.store.writer_lock():
        reader = io.BufferedReader(f, 1 << 20)
        roots = _bundle_roots(path, read_header(reader))
        blocks = iter_car(reader)
        receiver: DfsReceiver | PackReceiver | None = None
        try:
            first = next(blocks, None)
            if first is None:
                raise InvalidObject(f"bundle {path} is truncated: its manifest is missing")
            if roots == [first[0]] or not roots:  # root-first: the manifest, then the DAG below it
                manifest = _parse_manifest(*first)
                _check_applies(repo, path, manifest)
                receiver = DfsReceiver(repo, block_links(*first))
                _receive(path, receiver, blocks)
            else:  # an older bundle: blocks in post-order, the manifest last
                receiver = PackReceiver(repo, None)
                found = _receive(path, receiver, itertools.chain([first], blocks), roots[0])
                if found is None:
                    raise InvalidObject(f"bundle {path} is truncated: its manifest is missing")
                manifest = _parse_manifest(roots[0], found)
                _check_applies(repo, path, manifest)
                receiver.wants = set(manifest[1].values()) | set(manifest[3].values())
            stats = receiver.finish()
        except BaseException:
            if receiver is not None:
                receiver.abort()
            raise
        repo_id, refs, prereq, tags = manifest
        for name, cid in refs.items():
            ref = f"{ref_prefix}/{name}"
            repo.refs.cas_ref(ref, repo.refs.get_ref(ref), cid, f"unbundle {path.name}")
        info = BundleInfo(repo_id, refs, prereq, stats, tags)
        info.tag_update = receive_tags(repo, tags, "bundle")
        return info


def _bundle_roots(path: Path, roots: list[Cid]) -> list[Cid]:
    """A bundle's CAR names its manifest as its one root, or (a thin bundle) no root."""
    if len(roots) > 1 or (roots and cid_codec(roots[0]) != DAG_CBOR):
        raise InvalidObject(f"{path} is not a casync bundle (its CAR root is not a manifest)")
    return roots


def _check_applies(repo: Repository, path: Path, manifest: _Manifest) -> None:
    repo_id, _refs, prereq, _tags = manifest
    if repo_id != repo.repo_id:
        raise InvalidObject(f"bundle {path} is from repository {repo_id}, not this one")
    lacking = [p for p in prereq if not repo.blocks.has(p)]
    if lacking:
        raise InvalidObject(f"bundle {path} needs commit {cid_str(lacking[0])}, which this repository lacks",
                            hint="it was made with --since: apply the earlier bundle first")


def _receive(path: Path, receiver: DfsReceiver | PackReceiver, blocks: Iterator[tuple[Cid, bytes]],
             manifest: Cid | None = None) -> bytes | None:
    """Feed ``blocks`` to ``receiver``; with ``manifest`` (an older bundle), it must be the
    last block: its bytes are returned."""
    found: bytes | None = None
    try:
        for cid, block in blocks:
            if found is not None:
                raise InvalidObject(f"bundle {path}: block {cid_str(cid)} follows the manifest")
            if cid == manifest:
                found = block
                continue
            receiver.add(cid, block)
    except CorruptBlock as exc:
        raise InvalidObject(f"bundle {path} is damaged: {exc.message}",
                            hint="copy it again, or create it again from the source") from None
    except MissingLink as exc:
        if manifest is None:  # root-first: the prerequisites were checked first, so the file is wrong
            raise InvalidObject(f"bundle {path} is damaged: {exc.message}",
                                hint="copy it again, or create it again from the source") from None
        # an older bundle's manifest (repository id, prerequisites) comes last: say what this usually means
        raise InvalidObject(f"bundle {path} does not apply to this repository: {exc.message}",
                            hint="a bundle made with --since needs the earlier bundle unbundled first; "
                                 "a bundle of another repository never applies") from None
    return found


@dataclass
class BundleManifest:
    repository_id: str
    refs: dict[str, Cid]
    prerequisites: list[Cid]
    hash: str
    chunker: str


def peek_bundle(path: Path) -> BundleManifest:
    """The manifest of the bundle at ``path``, read without storing anything: a quick pass
    over the file that hash-checks the manifest only (:func:`read_bundle` checks the rest)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read bundle {path}: {exc.strerror}") from None
    with f:
        reader = io.BufferedReader(f, 1 << 20)
        roots = _bundle_roots(path, read_header(reader))
        for cid, block in iter_car(reader, verify=False):
            if not roots or cid == roots[0]:
                try:
                    verify_block(cid, block, f"bundle {path}")
                except CorruptBlock as exc:
                    raise InvalidObject(f"bundle {path} is damaged: {exc.message}",
                                        hint="copy it again, or create it again from the source") from None
                repo_id, refs, prereq, _tags = _parse_manifest(cid, block)
                extra: Any = cbor.decode(block)
                hash_name = str(extra.get("hash") or cid_hash(cid) or "blake3")
                return BundleManifest(repo_id, refs, prereq, hash_name, str(extra.get("chunker") or "cdc"))
    raise InvalidObject(f"bundle {path} is truncated: its manifest is missing")


def clone_bundle(path: Path, directory: Path, *, replica: str | None = None, branch: str | None = None,
                 progress: Progress = NULL_PROGRESS) -> tuple[Repository, BundleInfo, str]:
    """Create ``directory`` as a new replica of the repository a full bundle carries (a new
    site set up from a USB stick): same repository id, hash and chunker, a new replica id,
    every block checked as :func:`read_bundle` checks it, ``branch`` (default ``main``, else
    the first) checked out; the bundle's refs stay as ``bundles/<name>``.  Resume and cleanup
    follow the one clone procedure (:class:`casync.transfer.clone.CloneTarget`)."""
    manifest = peek_bundle(path)
    if manifest.prerequisites:
        raise UsageError(f"bundle {path} was made with --since: it lacks the history before "
                         f"{short(manifest.prerequisites[0])}, so no new replica can start from it",
                         hint="create a full bundle for a new site ('casync bundle create FILE main')")
    if not manifest.refs:
        raise UsageError(f"bundle {path} holds no refs")
    wanted = branch or ("main" if "main" in manifest.refs else sorted(manifest.refs)[0])
    if wanted not in manifest.refs:
        raise UsageError(f"bundle {path} has no branch {wanted!r}",
                         hint=f"it holds: {', '.join(sorted(manifest.refs))}")
    with CloneTarget(directory.resolve(), str(path.resolve())) as target:
        target.refuse_other_replica(replica)
        repo = target.open(repository_id=manifest.repository_id, replica=replica, hash=manifest.hash,
                           chunker=manifest.chunker, branch=wanted)
        info = read_bundle(repo, path)
        refuse_replica_in_use(repo.replica, replicas_in_history(repo, info.refs.values()), repo.repo_id,
                              chosen=replica is not None)
        target.checkout(info.refs[wanted], wanted, f"clone from bundle {path.name}", progress)
        target.finish()
    return repo, info, wanted
