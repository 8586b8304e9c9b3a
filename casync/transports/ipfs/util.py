"""Small helpers shared by push, fetch and clone."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from casync.repo.repository import Repository

__all__ = ["PIN_PREFIX", "pin_name", "remote_lock"]

PIN_PREFIX = "casync/"


def pin_name(repo_id: str, replica: str, branch: str) -> str:
    """The Kubo pin name of a pushed head (``casync/<repo-id>/<replica>/<branch>``), so an
    operator can tell casync's pins from any others (``ipfs pin ls --names``)."""
    return f"{PIN_PREFIX}{repo_id}/{replica}/{branch}"


@contextlib.contextmanager
def remote_lock(repo: Repository) -> Iterator[None]:
    """Serialise pushes and fetches of one repository across processes (``.casync/remote.lock``).

    Separate from the store's writer lock so that local commits are not blocked while a
    push waits on the network.
    """
    fd = os.open(repo.store.root / "remote.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
