"""The serving side of the peer protocol, over a local repository.

:class:`PeerService` answers the four questions of the protocol
(:mod:`casync.transports.peer.exchange`): ``info``, ``negotiate``, ``fetch`` and ``push``
(and tags, and blocks for ``fsck --repair``).  The local-path peer (:class:`LocalPeer`)
calls it directly and ``casync serve`` (:mod:`casync.transports.peer.app`) over HTTP.
Apart from the client's procedures because a server needs only this side: the checks a
push passes and how it moves a branch, and a checked-out branch's files with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from casync.errors import (
    BlockNotFound,
    CorruptBlock,
    InvalidObject,
    NotARepository,
    RefConflict,
    RemoteError,
    StateRefused,
    UsageError,
)
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, short
from casync.model.names import validate_branch_name
from casync.repo.repository import Repository
from casync.repo.signatures import require_signed_history
from casync.repo.tags import TagUpdate, checked_tags, list_tags, receive_tags
from casync.settings import require_signed as settings_require_signed
from casync.transfer.stream import PackReceiver, TransferStats, blocks_for_commits
from casync.transports.peer.protocol import MAX_TAGS_PER_PUSH, PeerInfo
from casync.trees.paths import PathFilter
from casync.worktree.checkout import move_worktree
from casync.worktree.state import merge_in_progress, move_branch_then_files, moved_since_checkout

__all__ = ["LocalPeer", "PeerService"]


class PeerService:
    """The serving side of the protocol, over a local repository."""

    def __init__(self, repo: Repository, read_only: bool = False) -> None:
        self.repo = repo
        self.read_only = read_only

    def info(self) -> PeerInfo:
        return PeerInfo(self.repo.repo_id, self.repo.replica, self.repo.branches(), self.read_only,
                        self.repo.hash_name, self.repo.chunker_name, list_tags(self.repo))

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        # A commit block is stored only after everything it reaches (closure), so holding
        # the commit means holding its whole DAG.
        present = self.repo.blocks.has_many(haves)
        return [h for h in haves if h in present]

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        """The blocks of ``wants`` beyond ``haves`` (within ``paths``, for a partial clone).
        A partial repository sends only what lies inside its own paths: asked for more, it
        refuses, naming what it holds, rather than send a DAG with holes."""
        for w in wants:
            if not self.repo.blocks.has(w):
                raise UsageError(f"commit {cid_str(w)} is not on this peer")
        wanted = PathFilter(paths) if paths else None
        mine = self.repo.partial
        if mine is not None and (wanted is None or not mine.covers(wanted.paths)):
            asked = ", ".join(wanted.paths) if wanted is not None else "every path"
            raise StateRefused(f"this repository is a partial clone holding only {', '.join(mine.paths)}; "
                               f"it cannot send {asked}",
                               hint="fetch from a full repository, or clone --path within those paths")
        common = self.negotiate(haves)
        missing = self.repo.graph.missing(wants, common)
        return blocks_for_commits(self.repo, missing, wanted)

    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        """The blocks of ``cids`` this peer holds intact, in order (for ``fsck --repair``);
        one it lacks or holds damaged itself is left out, and the caller asks elsewhere."""
        for cid in cids:
            try:
                yield cid, self.repo.blocks.get(cid)
            except (BlockNotFound, CorruptBlock):
                continue

    def check_push(self, branch: str, old: Cid | None, new: Cid) -> None:
        """The checks a push must pass before any of its blocks is worth receiving."""
        if self.read_only:
            raise RemoteError("this peer is read-only; it does not accept pushes")
        partial = self.repo.partial
        if partial is not None:
            raise StateRefused(f"this repository is a partial clone (it holds only {', '.join(partial.paths)}); "
                               "it does not accept pushes", hint="push to the full repository it was cloned from")
        validate_branch_name(branch)
        for cid in (new, old):
            if cid is not None and cid_codec(cid) != DAG_CBOR:
                raise InvalidObject(f"push names {cid_str(cid)}, which is not a commit")

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        """Store the blocks (checked), then move ``branch`` from ``old`` to ``new`` by CAS,
        fast-forward only.  One writer at a time: concurrent pushes serialize on the lock
        and the loser gets a non-fast-forward :class:`RefConflict`."""
        self.check_push(branch, old, new)
        with self.repo.store.writer_lock():
            receiver = PackReceiver(self.repo, [new])
            try:
                for cid, block in blocks:
                    receiver.add(cid, block)
                stats = receiver.finish()
            except BaseException:
                receiver.abort()
                raise
            if settings_require_signed(self.repo.config):  # a hub that takes signed history only
                known = [c for c in self.repo.refs.list_refs().values() if cid_codec(c) == DAG_CBOR]
                require_signed_history(self.repo, [new], known, "the pushed history")
            current = self.repo.refs.get_ref(f"heads/{branch}")
            # a working tree left behind by a branch move (a transaction) stays put: it is
            # brought up to date by 'casync checkout', never moved from the wrong tree
            checked_out = (not self.repo.bare and self.repo.current_branch() == branch
                           and moved_since_checkout(self.repo) is None)
            st = None
            if checked_out and merge_in_progress(self.repo):
                # the files hold a half-done merge: moving them would carry it to the pushed
                # commit, and '--continue' would then commit it there
                raise StateRefused(f"push to the checked-out branch {branch} refused: a merge is stopped "
                                   "there for conflicts",
                                   hint="that replica must finish it ('casync merge --continue') or give it up "
                                        "('casync merge --abort') first; then push again")
            if checked_out and current == old:
                # like git's receive.denyCurrentBranch=updateInstead: the files follow the
                # branch, and a push that would overwrite uncommitted edits is refused
                old_tree = self.repo.tree_of(old) if old is not None else None
                st = move_worktree(self.repo, old_tree, self.repo.tree_of(new),
                                   f"push to the checked-out branch {branch}", dry_run=True)
            if current != old:
                raise RefConflict(f"push to {branch} rejected: the branch moved to "
                                  f"{short(current) if current else 'nothing'} (non-fast-forward)",
                                  hint="fetch and merge, then push again")
            if old is not None and not self.repo.graph.is_ancestor(old, new):
                raise RefConflict(f"push to {branch} rejected: {short(new)} does not contain "
                                  f"{short(old)} (non-fast-forward)", hint="fetch and merge, then push again")
            if checked_out:  # the files follow; an edit made since the dry run undoes the move
                old_tree = self.repo.tree_of(old) if old is not None else None
                move_branch_then_files(self.repo, branch, old, new, "push",
                                       lambda: move_worktree(self.repo, old_tree, self.repo.tree_of(new),
                                                             f"push to {branch}", st=st, commit=new))
            else:
                self.repo.update_branch(branch, old, new, "push")
            return stats

    def check_push_tags(self, tags: dict[str, Cid]) -> None:
        if self.read_only:
            raise RemoteError("this peer is read-only; it does not accept pushes")
        if len(tags) > MAX_TAGS_PER_PUSH:
            raise InvalidObject(f"at most {MAX_TAGS_PER_PUSH} tags per push")
        try:
            checked_tags(tags)
        except ValueError as exc:
            raise InvalidObject(str(exc)) from None

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        """Store the blocks the tags' commits need (checked), then create the tags that are
        new here; an existing tag is never moved (a differing one is a conflict, kept under
        ``tag-conflicts/pushed/NAME``)."""
        self.check_push_tags(tags)
        with self.repo.store.writer_lock():
            receiver = PackReceiver(self.repo, tags.values())
            try:
                for cid, block in blocks:
                    receiver.add(cid, block)
                receiver.finish()
            except BaseException:
                receiver.abort()
                raise
            return receive_tags(self.repo, tags, "pushed")


class LocalPeer:
    """Another repository on this machine (a path or ``file://`` URL)."""

    def __init__(self, path: str) -> None:
        self.url = path
        target = Path(path[len("file://"):] if path.startswith("file://") else path)
        try:
            self.repo = Repository.open(target, search_parents=False)
        except NotARepository:
            raise RemoteError(f"no casync repository at {target}", hint="check the path of the remote") from None
        self.service = PeerService(self.repo)

    def info(self) -> PeerInfo:
        return self.service.info()

    def negotiate(self, haves: list[Cid]) -> list[Cid]:
        return self.service.negotiate(haves)

    def fetch(self, wants: list[Cid], haves: list[Cid], paths: Sequence[str] = ()) -> Iterator[tuple[Cid, bytes]]:
        return self.service.fetch(wants, haves, paths)

    def push(self, branch: str, old: Cid | None, new: Cid, blocks: Iterable[tuple[Cid, bytes]]) -> TransferStats:
        return self.service.push(branch, old, new, blocks)

    def push_tags(self, tags: dict[str, Cid], blocks: Iterable[tuple[Cid, bytes]]) -> TagUpdate:
        return self.service.push_tags(tags, blocks)
    def blocks(self, cids: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
        return self.service.blocks(cids)

    def close(self) -> None:
        self.repo.close()
