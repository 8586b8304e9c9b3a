"""Creating and finding a repository's ``.casync`` store on disk.

``init``'s parameters are checked here (hash, chunker, replica, branch and repository id),
and the store is built beside its place, under a name no scan stores (``names.TEMP_NAME``),
and renamed into place whole: a kill leaves either no
``.casync`` or a complete one (docs/design.md §7.4); what killed inits left behind is
removed or replaced here.  Apart from :mod:`casync.repo.repository` because this is the
one part that deals in directories, renames and fsyncs rather than an open store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from casync.errors import NotARepository, UsageError
from casync.model.chunking import CHUNKERS
from casync.model.cid import HASHES
from casync.model.names import REPO_DIR, TEMP_NAME, is_repo_id, temp_name, validate_branch_name, validate_replica_name
from casync.store.lmdb import LmdbStore
from casync.store.locks import process_gone

__all__ = ["create_store", "find_store", "unfinished_init"]


def create_store(root: Path, *, replica: str | None, hash: str, chunker: str, repository_id: str | None,
                 branch: str, bare: bool, clone_pending: bytes | None) -> LmdbStore:
    """The new store of a repository at ``root`` (created if needed), opened: the parameters
    checked and written as its config (``None``: a new replica or repository id), HEAD on
    ``branch``, ``clone_pending`` (a clone's pending mark) in the same step.  Refused when
    ``root`` holds a repository already (an older casync's killed init, an empty store
    without config, is replaced)."""
    import shutil
    import uuid  # init-only: read commands start without it

    if hash not in HASHES:
        raise UsageError(f"unsupported hash {hash!r}", hint=f"use one of: {', '.join(HASHES)}")
    if chunker not in CHUNKERS:
        raise UsageError(f"unknown chunker {chunker!r}", hint=f"use one of: {', '.join(CHUNKERS)}")
    replica = replica or f"r-{uuid.uuid4().hex[:12]}"
    validate_replica_name(replica)
    validate_branch_name(branch)
    if repository_id is not None and not is_repo_id(repository_id):
        raise UsageError(f"invalid repository id {repository_id[:80]!r}",
                         hint="1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    target = root / REPO_DIR
    if target.exists() or target.is_symlink():
        if not unfinished_init(target):
            raise UsageError(f"{root} is already a casync repository ({target} exists)")
        shutil.rmtree(target)  # an older casync's killed init: an empty store without config
    root.mkdir(parents=True, exist_ok=True)
    _remove_killed_builds(root)
    # built beside under a name no scan stores (worktree.disk.TEMP_NAME), renamed into
    # place whole: a kill leaves either no .casync or a complete one (docs/design.md §7.4)
    build = root / temp_name(REPO_DIR, os.getpid())
    if build.exists():
        shutil.rmtree(build)
    try:
        _build(build, f"heads/{branch}".encode(), bare, clone_pending, {
            "format": 1,
            "repository_id": repository_id or uuid.uuid4().hex,
            "replica": replica,
            "hash": hash,
            "chunker": chunker,
            "bare": bare,
        })
        os.rename(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _fsync_dir(root)
    return LmdbStore(target)


def find_store(path: str | os.PathLike[str], *, search_parents: bool) -> tuple[Path, LmdbStore]:
    """(root, opened store) of the repository at ``path`` or (``search_parents``) the nearest
    one above it; :class:`NotARepository` when there is none."""
    start = Path(path).resolve()
    candidates = [start, *start.parents] if search_parents else [start]
    for cand in candidates:
        if (cand / REPO_DIR / "db").is_dir():
            store = LmdbStore(cand / REPO_DIR)
            if "repository_id" not in store.get_config():
                store.close()
                raise UsageError(f"not a casync repository: {cand} (its {REPO_DIR} was left by a killed "
                                 "'casync init' and holds nothing)",
                                 hint="run 'casync init' (or the same 'casync clone') there again")
            return cand, store
    raise NotARepository(str(start))


def _build(build: Path, head: bytes, bare: bool, clone_pending: bytes | None, config: dict[str, Any]) -> None:
    """A complete store at ``build``, durable before init renames it into place."""
    store = LmdbStore(build, create=True)
    meta = store.db("meta")

    def fn(txn: Any) -> None:
        txn.put(b"HEAD", head, db=meta)
        if not bare:  # the working tree holds nothing yet (the record of casync.worktree.state)
            txn.put(b"worktree", b'{"tree": null, "commit": null}', db=meta)
        if clone_pending is not None:
            txn.put(b"clone_pending", clone_pending, db=meta)
    try:
        store.set_config(config)
        store.write(fn)
        store.env.sync(True)
    finally:
        store.close()
    _fsync_dir(build / "db")
    _fsync_dir(build)



def unfinished_init(store_dir: Path) -> bool:
    """``store_dir`` (a ``.casync``) is what a killed ``init`` of an older casync left: a
    store without config, no block in its index and no ref.  Nothing of a user's is in it."""
    if store_dir.is_symlink() or not store_dir.is_dir():
        return False
    if not (store_dir / "db" / "data.mdb").exists():
        return not any(p.stat().st_size for p in (store_dir / "packs").glob("*") if p.is_file())
    store = LmdbStore(store_dir)
    try:
        return not store.get_config() and not store.items_count("index") and not store.items_count("refs")
    finally:
        store.close()


def _remove_killed_builds(root: Path) -> None:
    """Remove the half-built stores of killed inits here (their process is gone)."""
    import shutil  # init-only (as uuid in Repository.init): read commands start without them

    for build in root.glob(f".{REPO_DIR}.casync-tmp-*"):
        match = TEMP_NAME.fullmatch(build.name)
        if match and process_gone(int(match["pid"])) and build.is_dir() and not build.is_symlink():
            shutil.rmtree(build, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
