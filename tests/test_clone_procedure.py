"""One clone procedure for every kind of remote (casync/transfer/clone.py CloneTarget): a path,
a 'casync serve' URL, a bundle file and an IPFS node behave the same when a clone fails.

* A failure a retry cannot fix removes what the clone wrote and nothing else: a file the
  user put into DIR meanwhile stays (the IPFS clone emptied the directory), and no
  checked-out file is left behind (the peer clone left them).
* Ctrl-C keeps the partial clone, says so in its hint, and the same clone resumes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.errors import InvalidObject
from casync.progress import NULL_PROGRESS
from casync.transfer.clone import CloneInterrupted
from casync.transports.bundle import clone_bundle, create_bundle
from casync.transports.clone import clone_peer
from casync.transports.ipfs.clone import clone as clone_ipfs
from casync.transports.locate import locate

from .conftest import Cli, serving, write

TOKEN = "clone-procedure-token"
KINDS = ["path", "http", "bundle", pytest.param("ipfs", marks=pytest.mark.kubo)]


class FailDuringCheckout:
    """A progress sink that, once the checkout has written its first file, lets ``meanwhile``
    run (what a user does while the clone runs) and then raises ``exc``."""

    def __init__(self, exc: BaseException, meanwhile: Callable[[], None] = lambda: None) -> None:
        self.exc = exc
        self.meanwhile = meanwhile
        self.checking_out = False
        self.fired = False

    def start(self, label: str, total: int | None) -> None:
        self.checking_out = label == "checking out"

    def advance(self, n: int) -> None:
        if self.checking_out and not self.fired:
            self.fired = True
            self.meanwhile()
            raise self.exc

    def finish(self) -> None:
        pass


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Repository]:
    repo = Repository.init(tmp_path / "origin", replica="origin")
    with repo.transaction(message="files") as tx:
        for i in range(6):
            tx.write(f"dir{i}/f.bin", os.urandom(100_000))
            tx.write(f"top{i}.txt", f"file {i}\n".encode())
    yield repo
    repo.close()


def _cloner(kind: str, origin: Repository, tmp_path: Path, request: pytest.FixtureRequest
            ) -> Iterator[Callable[..., Repository]]:
    """``clone(directory, progress=...)`` for ``kind``, the source set up and torn down."""
    if kind == "path":
        yield lambda d, progress: clone_peer(locate(str(origin.root)), d, progress=progress)[0]
    elif kind == "http":
        with serving(origin, TOKEN) as srv:
            where = locate(f"http://127.0.0.1:{srv.server_address[1]}")
            yield lambda d, progress: clone_peer(where, d, token=TOKEN, progress=progress)[0]
    elif kind == "bundle":
        path = tmp_path / "origin.car"
        create_bundle(origin, path, ["main"])
        yield lambda d, progress: clone_bundle(path, d, progress=progress)[0]
    else:
        kubo = request.getfixturevalue("kubo")
        a = Cli(origin.root)
        a("remote", "add", "origin", kubo.remote_url)
        a("push")
        url = f"{kubo.remote_url}/{origin.repo_id}"
        yield lambda d, progress: clone_ipfs(url, d, progress=progress)[0]


@pytest.fixture
def cloner(request: pytest.FixtureRequest, origin: Repository, tmp_path: Path) -> Iterator[Callable[..., Repository]]:
    yield from _cloner(request.param, origin, tmp_path, request)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("cloner", KINDS, indirect=True)
def test_a_failed_clone_removes_what_it_wrote_and_nothing_else(tmp_path: Path, cloner: Callable[..., Repository]
                                                                ) -> None:
    target = tmp_path / "b"
    target.mkdir()

    def user_writes() -> None:
        write(target, "notes.txt", "mine\n")

    with pytest.raises(InvalidObject):
        cloner(target, progress=FailDuringCheckout(InvalidObject("a block lies"), user_writes))
    assert _files(target) == {"notes.txt"}  # no .casync, no checked-out file; the user's file stays
    fresh = tmp_path / "c"
    with pytest.raises(InvalidObject):
        cloner(fresh, progress=FailDuringCheckout(InvalidObject("a block lies")))
    assert not fresh.exists()  # a directory the clone made goes with it


@pytest.mark.parametrize("cloner", KINDS, indirect=True)
def test_ctrl_c_keeps_the_partial_clone_and_the_same_clone_resumes_it(tmp_path: Path, origin: Repository,
                                                                     cloner: Callable[..., Repository]) -> None:
    target = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt) as caught:
        cloner(target, progress=FailDuringCheckout(KeyboardInterrupt()))
    assert isinstance(caught.value, CloneInterrupted) and "is kept" in caught.value.hint
    assert (target / ".casync").is_dir()
    cloner(target, progress=NULL_PROGRESS).close()
    repo = Repository.open(target)
    try:
        assert repo.fsck().ok and porcelain.status(repo).clean
        assert repo.resolve("HEAD") == origin.resolve("HEAD")
        assert (target / "dir5/f.bin").read_bytes() == origin.read("dir5/f.bin")
    finally:
        repo.close()

