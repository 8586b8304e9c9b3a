"""Transactions: stage writes and deletes, then commit them atomically (``Repository.transaction``).

Kept apart from :mod:`casync.repo.repository` (which creates them) so each file holds one
concern; a transaction uses only the repository's public plumbing.
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, BinaryIO

from casync.errors import UsageError
from casync.model.cid import Cid, cid_str
from casync.model.names import split_path
from casync.trees.unixfs import Entry, build_tree, update_tree, write_symlink

if TYPE_CHECKING:
    from casync.repo.repository import Repository

__all__ = ["Transaction"]


class Transaction:
    """Stage writes and deletes, then commit them atomically on ``__exit__``.

    Blocks are written as data arrives (streams are chunked, never held whole); the new
    tree rewrites only directories on changed paths; the branch moves by compare-and-swap
    against the tip the transaction started from, so a concurrent commit makes this one
    fail with :class:`RefConflict` instead of silently losing either.
    """

    def __init__(self, repo: Repository, branch: str, message: str, author: str | None) -> None:
        self.repo = repo
        self.branch = branch
        self.message = message
        self.author = author
        self.changes: dict[str, Entry | None] = {}
        self.base: Cid | None = None
        self.commit: Cid | None = None
        self._lock: contextlib.ExitStack | None = None

    @property
    def commit_cid(self) -> str | None:
        """The new commit's text CID once the transaction committed (None if nothing changed)."""
        return cid_str(self.commit) if self.commit is not None else None

    def __enter__(self) -> Transaction:
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(self.repo.store.writer_lock())
        try:  # reading a strong branch can fail (etcd out of reach): then no __exit__ frees the lock
            self.base = self.repo.refs.get_ref(f"heads/{self.branch}")
        except BaseException:
            self._lock.close()
            raise
        return self

    def write(self, path: str, data: bytes | BinaryIO, executable: bool = False) -> None:
        parts = split_path(path)
        if not parts:
            raise UsageError("transaction write needs a file path, not the root")
        stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        self._set("/".join(parts), self.repo.new_file_writer().write(stream, executable))

    def symlink(self, path: str, target: str) -> None:
        parts = split_path(path)
        self._set("/".join(parts), write_symlink(self.repo.blocks, target, self.repo.hash_name))

    def delete(self, path: str) -> None:
        parts = split_path(path)
        self._set("/".join(parts), None)

    def _set(self, path: str, entry: Entry | None) -> None:
        """The later change wins: a write or delete of ``path`` supersedes pending changes
        below it (else ``delete("e/z")`` then ``write("e")`` turned the new file "e" back
        into the emptied directory and dropped it)."""
        below = path + "/"
        for pending in [p for p in self.changes if p.startswith(below)]:
            del self.changes[pending]
        self.changes.pop(path, None)  # re-inserted last, after any ancestor's change
        self.changes[path] = entry

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._lock is not None
        try:
            if exc_type is not None:
                self.repo.blocks.discard()
                return
            base_tree = self.repo.tree_of(self.base) if self.base else None
            if base_tree is None and not any(self.changes.values()):
                root = build_tree(self.repo.blocks, {}, self.repo.hash_name)
            else:
                root = update_tree(self.repo.blocks, base_tree, self.changes, self.repo.hash_name)
            if base_tree is not None and root.cid == base_tree:
                self.repo.blocks.discard()
                return
            cid = self.repo.make_commit(root.cid, [self.base] if self.base else [], self.message, self.author)
            self.repo.blocks.flush()
            self.repo.update_branch(self.branch, self.base, cid, f"transaction: {self.message}")
            self.commit = cid
        finally:
            self._lock.close()
