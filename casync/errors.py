"""One exception hierarchy for casync.

Every error a user can cause or fix is a :class:`CasyncError` carrying a one-line
message that names the object, path or argument involved, an optional hint saying
what to do, and the process exit code the CLI uses (see ``docs/cli.md``):

* 0 — success
* 1 — the operation failed (missing or corrupt data, conflicts, I/O, remote down), or the
  repository's present state refuses it (:class:`StateRefused`: a merge in progress, a
  detached HEAD, uncommitted changes in the way)
* 2 — usage error: the command as given cannot work (bad arguments or config values, not a
  repository, an unknown revision, path, branch, remote or peer)

Anything that is not a ``CasyncError`` is a bug and is reported with a traceback.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "BlockNotFound",
    "CasyncError",
    "ConflictError",
    "CorruptBlock",
    "InvalidObject",
    "FutureCommit",
    "LimitExceeded",
    "InvalidPath",
    "MonitorFailed",
    "NotARepository",
    "PeerRefused",
    "NothingToCommit",
    "RefConflict",
    "RemoteAuthError",
    "RemoteError",
    "RemoteNotFound",
    "RemoteProtocolError",
    "RemoteTimeout",
    "RemoteUnreachable",
    "StateRefused",
    "StorageError",
    "StorageFull",
    "StrongRefMoved",
    "StrongUnavailable",
    "UnknownRevision",
    "UnstableFile",
    "UnsupportedFormat",
    "UntrustedHistory",
    "UnverifiedBlock",
    "UsageError",
    "WorktreeDirty",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CasyncError(Exception):
    """Base class: a user-facing error with a hint and an exit code."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(CasyncError):
    """The command was called wrongly (bad argument, option or combination)."""

    exit_code = EXIT_USAGE


class NotARepository(UsageError):
    """No ``.casync`` directory at or above the given path."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"not a casync repository (or any parent up to /): {path}",
            hint="run 'casync init' there, or pass -C DIR to point at a repository",
        )
        self.path = path


class UnknownRevision(UsageError):
    """A REV or REV:PATH that does not resolve."""


class InvalidPath(UsageError):
    """A path that is not allowed (escapes the tree, reserved name, ...)."""


class StateRefused(CasyncError):
    """The command is well-formed, but the repository's present state refuses it (a merge
    in progress, a detached HEAD, the checked-out branch): the hint says what to change."""


class UnsupportedFormat(StateRefused):
    """The repository was written by a newer casync (config ``format`` above the one this
    version knows): opening it could misread or damage what the newer version wrote."""


class NothingToCommit(CasyncError):
    """The working tree matches HEAD; not an error for scripts that check first."""

    exit_code = EXIT_FAILURE


class WorktreeDirty(StateRefused):
    """An operation would overwrite uncommitted changes."""


class BlockNotFound(CasyncError):
    """A block that should be present is not in the store."""

    def __init__(self, cid: str, where: str = "store") -> None:
        super().__init__(
            f"block {cid} is missing from the {where}",
            hint="run 'casync fsck' to list all missing blocks; 'casync fsck --repair REMOTE' fetches them "
                 "from a remote that has them",
        )
        self.cid = cid


class CorruptBlock(CasyncError):
    """A block whose bytes do not hash to its CID (bit rot, truncation, a lying peer)."""

    def __init__(self, cid: str, where: str = "store") -> None:
        super().__init__(
            f"block {cid} in the {where} is corrupt: its bytes do not match its CID",
            hint="run 'casync fsck' to list every damaged block; 'casync fsck --repair REMOTE' replaces "
                 "them with good copies from a remote",
        )
        self.cid = cid


class InvalidObject(CasyncError):
    """Bytes that do not decode as the object they claim to be, or break a format rule."""


class LimitExceeded(InvalidObject):
    """An object that decodes but breaks a limit casync sets on what it accepts from
    elsewhere: an integer out of range, a DAG too deep or too wide, a file too big."""


class FutureCommit(InvalidObject):
    """A commit timestamped further into the future than the configured clock skew allows."""


class UntrustedHistory(InvalidObject):
    """History from elsewhere holds a commit without a valid signature by a trusted key,
    and signed history is required (``--require-signed``): refused before any ref moves."""


class UnstableFile(CasyncError):
    """A file kept changing while casync read it for a commit (something is still writing it)."""


class BadVarint(InvalidObject):
    """An unsigned varint that is truncated, not minimally encoded, or wider than 64 bits."""


class RefConflict(CasyncError):
    """A compare-and-swap ref update lost a race: the ref moved meanwhile."""


class StrongRefMoved(RefConflict):
    """A strong branch's compare-and-swap on etcd lost: another site moved the branch first.
    Nothing was overwritten and nothing merged; the hint says where the commit was kept."""


class ConflictError(CasyncError):
    """A merge or update stopped because of conflicts the policy left to the user."""


class StorageError(CasyncError):
    """The local store cannot be opened, written or synced (permissions, I/O errors)."""


class StorageFull(StorageError):
    """The disk or the LMDB map is full; nothing was committed."""


class RemoteError(CasyncError):
    """A remote (IPFS node, peer) failed or could not be reached.  The subclasses say what kind
    of failure it was, so callers (retries, the agent's failure metrics) decide by type."""

    def __init__(self, message: str, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint)
        self.transient = transient


class RemoteUnreachable(RemoteError):
    """No connection to the remote, or it broke before an answer: transient."""

    def __init__(self, message: str, hint: str | None = None, transient: bool = True) -> None:
        super().__init__(message, hint, transient)


class RemoteTimeout(RemoteUnreachable):
    """The remote did not answer in time: transient."""


class RemoteAuthError(RemoteError):
    """The remote wants credentials that were not sent, or refused the ones that were."""


class RemoteNotFound(RemoteError):
    """The remote says it has no such object (a block, a pin, a file): permanent."""


class RemoteProtocolError(RemoteError):
    """The remote answered something this side cannot read: a malformed or inconsistent reply."""
class PeerRefused(RemoteError):
    """A peer understood the request and refused it (HTTP 403: read-only, a push it does not take)."""


class MonitorFailed(CasyncError):
    """The work tree's file-system monitor (``casync monitor``) could not start or could not
    watch the whole tree (out of inotify watches, say); ``status`` walks without it."""


class StrongUnavailable(RemoteUnreachable):
    """A strong branch cannot be read or moved: no etcd member with a majority behind it
    answered in time (this site is cut off, or the cluster has lost its quorum)."""


class UnverifiedBlock(RemoteProtocolError):
    """A trustless read got a block that is not the next one on the path from the root CID
    to the file (wrong, missing or extra): the gateway is refused, whatever else it sent."""

    def __init__(self, cid: str, message: str) -> None:
        super().__init__(message, hint="the gateway sent data that does not verify against the CID you asked "
                                       "for; try another gateway (nothing partial was kept at -o FILE)")
        self.cid = cid
