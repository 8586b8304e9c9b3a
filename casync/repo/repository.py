"""Repository plumbing: configuration, refs and HEAD, commits, transactions, reading,
history and integrity checks.

A repository is a working tree with a ``.casync/`` directory holding the embedded
store (:mod:`casync.store.lmdb`).  Working-tree operations (status, checkout,
restore) live in :mod:`casync.worktree.checkout`, which builds on this module; a new
store is built by :mod:`casync.repo.create`, revisions are parsed by :mod:`casync.repo.revisions`.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat as stat_mod
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from casync.errors import (
    CasyncError,
    StateRefused,
    UnknownRevision,
    UsageError,
)
from casync.history import clock as vclock
from casync.history.consistency import check_derived
from casync.history.graph import CommitGraph
from casync.model.chunking import chunker_for
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, compute_cid, short
from casync.model.commit import Commit, HybridTime, decode_commit, encode_commit
from casync.model.names import split_path, validate_branch_name
from casync.model.signing import sign_commit
from casync.progress import NULL_PROGRESS, Progress
from casync.repo import revisions
from casync.repo.create import create_store, find_store
from casync.repo.keys import load_seed
from casync.repo.transaction import Transaction
from casync.settings import author as settings_author
from casync.settings import check_value, partial_paths, sign_commits
from casync.settings import strong as settings_strong
from casync.store.lmdb import LmdbStore
from casync.store.refs import LmdbRefStore
from casync.trees.ingest import FileWriter
from casync.trees.paths import PathFilter, flatten_within
from casync.trees.unixfs import (
    Entry,
    TreeChange,
    flatten_tree,
    iter_file,
    lookup,
    read_symlink,
)
from casync.trees.walk import diff_trees

AUDIT_KEY = b"audit_last"  # meta: the last full fsck's outcome (JSON)

if TYPE_CHECKING:
    from casync.repo.fsck import FsckReport
    from casync.repo.strong import StrongRefStore

__all__ = ["FORGOTTEN_PREFIX", "LogEntry", "Repository", "Transaction"]

# Transaction lives in casync.repo.transaction; re-exported because it is part of this API

FORGOTTEN_PREFIX = b"forgotten/"
"""``meta`` key prefix of commits retention forgot (docs/design.md §8.2): their trees are kept
by nothing, so fsck and gc follow such a commit's parents but not its tree."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    cid: Cid
    commit: Commit

    def to_json(self) -> dict[str, Any]:
        c = self.commit
        return {
            "cid": cid_str(self.cid),
            "tree": cid_str(c.tree),
            "parents": [cid_str(p) for p in c.parents],
            "clock": dict(c.clock),
            "time": {"wall_ms": c.time.wall_ms, "logical": c.time.logical},
            "generation": c.generation,
            "replica": c.replica,
            "author": c.author,
            "message": c.message,
            "meta": dict(c.meta),
        }


class Repository:
    """A casync repository: a working tree plus its ``.casync`` store."""

    def __init__(self, root: Path, store: LmdbStore) -> None:
        self.root = root
        self.store = store
        self.blocks = store.blocks
        cfg = store.get_config()
        self.repo_id: str = cfg["repository_id"]
        self.replica: str = cfg["replica"]
        self.hash_name: str = cfg["hash"]
        self.chunker_name: str = cfg["chunker"]
        self.bare: bool = bool(cfg.get("bare", False))
        self.config = cfg
        self.graph = CommitGraph(self.load_commit, store)
        self._forgotten: set[Cid] = set()
        self._open_refs()

    def _open_refs(self) -> None:
        """The ref store: the local one, wrapped by strong branches' when some are configured
        (:mod:`casync.repo.strong`; imported only then, with its etcd and Kubo clients)."""
        old = getattr(self, "refs", None)
        if old is not None and not isinstance(old, LmdbRefStore):
            old.close()
        self.refs: LmdbRefStore | StrongRefStore = self.store.refs
        configured = settings_strong(self.config)
        if configured is None:
            return
        from casync.repo.strong import StrongRefStore

        share = None
        if configured.ipfs_api is not None:
            from casync.repo.blockshare import KuboShare

            share = KuboShare(configured.ipfs_api, self.blocks, self.graph, self.check_commit_against_parents,
                              timeout=max(configured.timeout, 30.0))
        self.refs = StrongRefStore(self.store.refs, configured, self.repo_id, self.replica, share)

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".", *, replica: str | None = None, hash: str = "blake3",
             chunker: str = "cdc", repository_id: str | None = None, branch: str = "main",
             bare: bool = False, clone_pending: bytes | None = None) -> Self:
        """Create a repository in ``path`` (created if needed) and return it opened.

        ``clone_pending`` (a clone's pending mark, :mod:`casync.transfer.clone`) is written
        in the same step: the new ``.casync`` appears with it or not at all.

        A *bare* repository has no working tree: applications write through
        transactions, merges and pushes move branches without touching files.
        """
        root = Path(path).resolve()
        store = create_store(root, replica=replica, hash=hash, chunker=chunker, repository_id=repository_id,
                             branch=branch, bare=bare, clone_pending=clone_pending)
        return cls(root, store)

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", *, search_parents: bool = True) -> Self:
        """Open the repository at ``path`` or (by default) the nearest one above it."""
        return cls(*find_store(path, search_parents=search_parents))

    def close(self) -> None:
        if not isinstance(self.refs, LmdbRefStore):
            self.refs.close()
        if self.store.env is not None:
            with contextlib.suppress(CasyncError):
                self.graph.save()
        self.store.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require_worktree(self, what: str, hint: str = "use transactions (Python API) or a non-bare clone") -> None:
        if self.bare:
            raise UsageError(f"{what} needs a working tree, and {self.root} is a bare repository", hint=hint)

    def set_config(self, key: str, value: Any) -> None:
        """Set (``None``: remove) one config key; a value casync could not use is refused
        here, naming the key and value (:func:`casync.settings.check_value`)."""
        check_value(key, value)
        self.store.set_config({key: value})
        self.config = self.store.get_config()
        if key == "strong":
            self._open_refs()

    # --- objects -------------------------------------------------------------------------

    def load_commit(self, cid: Cid) -> Commit:
        if cid_codec(cid) != DAG_CBOR:
            raise UnknownRevision(f"{cid_str(cid)} is not a commit")
        return decode_commit(self.blocks.get(cid), cid)

    def new_file_writer(self) -> FileWriter:
        return FileWriter(self.blocks, chunker_for(self.chunker_name), self.hash_name)

    # --- refs and HEAD -------------------------------------------------------------------

    def head_ref(self) -> str | None:
        """The ref HEAD points to (``heads/main``), or None when detached."""
        raw = self.store.get("meta", b"HEAD") or b"heads/main"
        return None if raw.startswith(b"detached:") else raw.decode()

    def current_branch(self) -> str | None:
        ref = self.head_ref()
        return ref[len("heads/"):] if ref else None

    def head(self) -> Cid | None:
        """The commit HEAD names (None in a repository without commits)."""
        raw = self.store.get("meta", b"HEAD") or b"heads/main"
        if raw.startswith(b"detached:"):
            return raw[len(b"detached:"):]
        return self.refs.get_ref(raw.decode())

    def set_head(self, branch: str | None, detached: Cid | None = None, reason: str = "checkout") -> None:
        """Attach HEAD to ``branch`` or detach it at ``detached``; HEAD's reflog records the move."""
        value = f"heads/{branch}".encode() if branch is not None else b"detached:" + (detached or b"")
        self.refs.set_head(value, reason)

    def left_behind(self, commit: Cid) -> list[Cid]:
        """Commits reachable from ``commit`` but from no ref, newest first: what leaving a
        detached HEAD at ``commit`` would leave for only the HEAD reflog to remember."""
        return list(reversed(self.graph.missing([commit], self.refs.list_refs().values())))

    def branches(self) -> dict[str, Cid]:
        return {k[len("heads/"):]: v for k, v in self.refs.list_refs("heads/").items()}

    def update_branch(self, branch: str, old: Cid | None, new: Cid | None, reason: str) -> None:
        validate_branch_name(branch)
        self.refs.cas_ref(f"heads/{branch}", old, new, reason)

    def is_strong(self, branch: str) -> bool:
        """Whether ``branch``'s head lives in etcd (:mod:`casync.repo.strong`): a move of it
        other replicas may already have seen is never undone."""
        strong_branch = getattr(self.refs, "strong_branch", None)
        return strong_branch is not None and strong_branch(f"heads/{branch}") is not None

    # --- revisions -----------------------------------------------------------------------

    def resolve_cid(self, rev: str) -> str:
        """The text CID of the commit ``rev`` names (:meth:`resolve` for callers that want text)."""
        return cid_str(self.resolve(rev))

    def resolve(self, rev: str) -> Cid:
        """A commit CID for ``HEAD``, a branch, a tag, a CID or unique CID prefix, with ``~N``/``^N``
        (:func:`casync.repo.revisions.resolve`)."""
        return revisions.resolve(self, rev)

    def ref_named(self, name: str) -> tuple[str, Cid] | None:
        """(full ref name, commit) for a branch, a tag, or a ref that a name with ``/`` gives in full
        (``remotes/origin/main``, ``bundles/main``) or as a remote-tracking head (``origin/main``);
        the order revisions are resolved in.  None when no ref has that name."""
        return revisions.ref_named(self.refs, name)

    def resolve_path(self, spec: str) -> tuple[Cid, tuple[str, ...]]:
        """Split ``REV:PATH`` into a commit CID and validated path parts."""
        rev, sep, path = spec.partition(":")
        return self.resolve(rev or "HEAD"), split_path(path) if sep else ()

    def tree_of(self, commit: Cid) -> Cid:
        """The commit's tree; a commit retention forgot, whose tree is gone, is refused by
        name (not as a damaged store: nothing is missing that should be there)."""
        tree = self.load_commit(commit).tree
        if not self.blocks.has(tree) and self.store.get("meta", FORGOTTEN_PREFIX + commit) is not None:
            raise StateRefused(f"commit {cid_str(commit)} was forgotten by 'casync retention': its tree "
                               f"{cid_str(tree)} is no longer stored",
                               hint="use a kept commit: 'casync retention --dry-run --keep-...' lists them")
        return tree

    def entry_at(self, spec: str) -> tuple[Cid, str, Entry]:
        commit, parts = self.resolve_path(spec)
        path = "/".join(parts)
        partial = self.partial
        if partial is not None and not partial.holds(path):
            raise UsageError(f"{path!r} lies outside the paths this partial clone holds ({', '.join(partial.paths)})",
                             hint=f"fetch it first: 'casync fetch --path {path}'")
        entry = lookup(self.blocks, self.tree_of(commit), parts)
        if entry is None:
            raise UnknownRevision(f"path {path!r} does not exist in {short(commit)} ({spec})")
        return commit, path, entry

    # --- committing ----------------------------------------------------------------------

    def default_author(self) -> str:
        """Who commits when no author is given (commits, merges, transactions alike):
        $CASYNC_AUTHOR, then config ``author``, then the login name, then ``unknown``."""
        import getpass

        configured = os.environ.get("CASYNC_AUTHOR") or settings_author(self.config)
        if isinstance(configured, str) and configured:
            return configured
        try:
            return getpass.getuser() or "unknown"  # $LOGNAME/$USER, else the password database
        except (OSError, KeyError):
            return "unknown"

    def last_local_time(self) -> HybridTime | None:
        """The hybrid-logical time of the last commit made here (meta ``hlc_last``; None: none yet)."""
        raw = self.store.get("meta", b"hlc_last")
        return HybridTime(*map(int, raw.split(b"."))) if raw else None

    def make_commit(self, tree: Cid, parents: list[Cid], message: str, author: str | None = None,
                    meta: dict[str, str] | None = None, sign: bool | None = None) -> Cid:
        """Write a commit object on ``tree`` (blocks must already be stored) and return its CID.

        ``sign`` (default: config ``sign``) signs it with this replica's key (docs/design.md §4.2);
        every commit casync makes — commits, transactions, merges by pull, sync and the agent —
        comes through here, so the config switch covers them all."""
        seed = self._signing_seed(sign)
        parent_commits = [self.load_commit(p) for p in parents]
        now = vclock.hlc_next(int(time.time() * 1000), self.last_local_time(), [c.time for c in parent_commits])
        commit = Commit(
            tree=tree,
            parents=tuple(parents),
            clock=vclock.tick([c.clock for c in parent_commits], self.replica),
            time=now,
            replica=self.replica,
            author=author or self.default_author(),
            message=message,
            generation=1 + max((c.generation for c in parent_commits), default=0),
            meta=meta or {},
        )
        if seed is not None:
            commit = sign_commit(commit, seed)
        block = encode_commit(commit)
        cid = compute_cid(DAG_CBOR, block, self.hash_name)
        self.blocks.put(cid, block)
        self.graph.remember(cid, commit)
        self.store.put("meta", b"hlc_last", f"{now.wall_ms}.{now.logical}".encode())
        return cid

    def _signing_seed(self, sign: bool | None) -> bytes | None:
        """This replica's private key when the commit is to be signed, else None."""
        if not (sign if sign is not None else sign_commits(self.config)):
            return None
        seed = load_seed(self.root, self.replica)
        if seed is None:
            why = "--sign was given" if sign else "config sign is true"
            raise UsageError(f"{why}, but replica {self.replica} has no signing key",
                             hint="make one with 'casync key generate'")
        return seed

    def commit_tree(self, tree: Cid, message: str, *, branch: str | None = None, author: str | None = None,
                    extra_parents: tuple[Cid, ...] = (), reason: str = "commit", sign: bool | None = None) -> Cid:
        """Commit ``tree`` on top of ``branch`` (default: HEAD's) and move the ref by CAS.

        Blocks are flushed before the ref moves (closure invariant).
        """
        with self.store.writer_lock():
            if branch is None:
                branch = self.current_branch()
            old = self.refs.get_ref(f"heads/{branch}") if branch else self.head()
            parents = ([old] if old else []) + list(extra_parents)
            cid = self.make_commit(tree, parents, message, author, sign=sign)
            self.blocks.flush()
            first_line = message.splitlines()[0] if message else ""
            if branch is not None:
                self.update_branch(branch, old, cid, f"{reason}: {first_line}")
            else:
                self.set_head(None, cid, reason=f"{reason} on a detached HEAD: {first_line}")
            return cid

    def transaction(self, branch: str | None = None, message: str = "", author: str | None = None) -> Transaction:
        """Commit changes without a working tree: ``tx.write(path, data)``, ``tx.delete(path)``.

        ``branch`` defaults to HEAD's branch.  The working tree is not touched: an
        application writing through transactions normally has none; if the branch is
        checked out, commits refuse until ``casync checkout BRANCH`` brings the files up
        to date (see :mod:`casync.worktree.state`).
        """
        branch = branch or self.current_branch() or "main"
        validate_branch_name(branch)
        return Transaction(self, branch, message, author)

    # --- reading -------------------------------------------------------------------------

    def read(self, path: str, rev: str = "HEAD") -> bytes:
        with self.open_file(path, rev) as f:
            return f.read()

    def open_file(self, path: str, rev: str = "HEAD") -> IO[bytes]:
        """A streaming, read-only file object over a committed file."""
        _commit, p, entry = self.entry_at(f"{rev}:{path}")
        if entry.kind == "symlink":
            return io.BytesIO(read_symlink(self.blocks, entry.cid).encode())
        if entry.kind != "file":
            raise UsageError(f"{p!r} in {rev} is a directory, not a file", hint="use 'casync ls' to list it")
        return io.BufferedReader(_ChunkStream(iter_file(self.blocks, entry.cid)), 1 << 20)

    def iter_file(self, cid: Cid) -> Iterator[bytes]:
        return iter_file(self.blocks, cid)

    @property
    def partial(self) -> PathFilter | None:
        """The paths this repository holds when it is a partial clone (config
        ``partial_paths``, written by ``clone --path``); None when it holds every path."""
        paths = partial_paths(self.config)
        return PathFilter(paths) if paths else None

    def flatten(self, tree: Cid, prefix: str = "") -> dict[str, Entry]:
        """``{path: Entry}`` of ``tree``'s files and symlinks (``tree`` lying at ``prefix``), in a
        partial clone those of its paths only (nothing else is held): every view of a working
        tree goes through here."""
        partial = self.partial
        if partial is None:
            return flatten_tree(self.blocks, tree, prefix)
        return flatten_within(self.blocks, tree, partial, prefix)

    def flat_tree(self, commit: Cid | None) -> dict[str, Entry]:
        return self.flatten(self.tree_of(commit)) if commit is not None else {}

    def log(self, rev: str = "HEAD", limit: int | None = None) -> list[LogEntry]:
        out: list[LogEntry] = []
        for cid, commit in self.graph.walk([self.resolve(rev)]):
            if limit is not None and len(out) >= limit:
                break
            out.append(LogEntry(cid, commit))
        return out

    def diff(self, a: str | None, b: str = "HEAD") -> list[TreeChange]:
        """What changed from ``a`` (None: nothing) to ``b``, read in proportion to the change
        (equal subtrees skipped); in a partial clone, within its paths."""
        partial = self.partial
        return diff_trees(self.blocks, self.tree_of(self.resolve(a)) if a is not None else None,
                          self.tree_of(self.resolve(b)), keep=partial.holds if partial is not None else None)

    # --- integrity -----------------------------------------------------------------------

    def record_audit(self, report: FsckReport) -> None:
        """Keep the outcome of a full check (meta key ``audit_last``; docs/design.md §12), which
        ``casync agent`` exports as ``audit_last_result`` for the AuditFailed alert."""
        import json

        findings = len(report.missing) + len(report.corrupt) + len(report.foreign)
        value = {"ok": report.ok, "findings": findings, "time": time.time(), "kind": "fsck",
                 "checked": report.checked, "missing": len(report.missing), "corrupt": len(report.corrupt),
                 "foreign": len(report.foreign), "reused_stamps": len(report.reused_stamps)}
        with self.store.writer_lock():
            self.store.put("meta", AUDIT_KEY, json.dumps(value).encode())

    def last_audit(self) -> dict[str, Any] | None:
        """What :meth:`record_audit` kept last (None: never checked, or unreadable)."""
        import json

        raw = self.store.get("meta", AUDIT_KEY)
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return value if isinstance(value, dict) and isinstance(value.get("ok"), bool) else None

    def fsck(self, progress: Progress = NULL_PROGRESS) -> FsckReport:
        """Check every block reachable from every ref and HEAD (:func:`casync.repo.fsck.fsck`)."""
        from casync.repo.fsck import fsck

        return fsck(self, progress)

    def forgotten_commits(self) -> set[Cid]:
        """The commits ``casync retention`` forgot (meta ``forgotten/``; §8.2)."""
        return {key[len(FORGOTTEN_PREFIX):] for key, _ in self.store.items("meta", FORGOTTEN_PREFIX)}

    def check_commit_against_parents(self, cid: Cid, commit: Commit) -> None:
        """Generation, clock and hybrid-logical time consistent with the parents' (a parent
        not held is not checked here: a walk reports it when it gets there)."""
        parents = []
        for p in commit.parents:
            try:
                parents.append(self.load_commit(p))
            except CasyncError:
                return
        check_derived(cid, commit, parents)


class _ChunkStream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def is_executable(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat_mod.S_IXUSR)
