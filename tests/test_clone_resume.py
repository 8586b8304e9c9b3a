"""Resumable clones over a link that breaks: the partial clone is kept, and running the same
clone again fetches only what is missing (casync/transfer/clone.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.transports.peer.server import PeerServer

from .conftest import Cli, serving, write
from .kubo_fixture import Kubo

TOKEN = "resume-token-for-tests"


class FlakyLink:
    """A TCP relay on 127.0.0.1 that forwards to ``upstream`` until ``budget`` bytes have
    gone downstream, then cuts every connection (and refuses new ones) until the budget is
    lifted: a link that dies in the middle of a transfer.  With ``heal``, the link comes back
    by itself right after it cut (or refused) a connection, as a flaky one does."""

    def __init__(self, upstream: tuple[str, int], budget: int | None, heal: bool = False) -> None:
        self.upstream = upstream
        self.budget = budget
        self.heal = heal
        self.cuts = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _dead(self) -> bool:
        return self.budget is not None and self.sent >= self.budget

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._dead():
                self._cut()
                client.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, up]
            threading.Thread(target=self._pump, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if down:
                    with self._lock:
                        if self.budget is not None:
                            data = data[: max(0, self.budget - self.sent)]
                        self.sent += len(data)
                    if not data:
                        break
                dst.sendall(data)
                if down and self._dead():
                    self._cut()
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _cut(self) -> None:
        with self._lock:
            self.cuts += 1
            if self.heal:
                self.budget = None

    def close(self) -> None:
        self._stop = True
        self._server.close()
        with self._lock:
            for s in self._conns:
                s.close()
        self._thread.join(5)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Repository]:
    repo = Repository.init(tmp_path / "origin", replica="origin")
    for i in range(10):  # 20 MB in 10 commits: the receiver keeps whole commits every 8 MiB
        with repo.transaction(message=f"data {i}") as tx:
            tx.write(f"data/{i}.bin", os.urandom(2_000_000))
    yield repo
    repo.close()


@pytest.fixture
def server(origin: Repository) -> Iterator[PeerServer]:
    with serving(origin, TOKEN) as srv:
        yield srv


def test_peer_clone_broken_off_is_kept_and_resumed(tmp_path: Path, origin: Repository, server: PeerServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    host, port = server.server_address[:2]
    link = FlakyLink((str(host), int(port)), budget=14_000_000)  # dies after 14 of 20 MB
    try:
        url = f"http://127.0.0.1:{link.port}"
        r = Cli(tmp_path)("clone", url, "b", ok=False)
        assert r.exit_code == 1 and "is kept" in r.stderr and "Traceback" not in r.stderr
        assert (tmp_path / "b/.casync").is_dir()
        # another URL does not take over the partial clone
        other = Cli(tmp_path)("clone", str(origin.root), "b", ok=False)
        assert other.exit_code == 2 and "interrupted clone of" in other.stderr
        link.budget = None  # the link is back
        sent_before = link.sent
        out = json.loads(Cli(tmp_path)("clone", url, "b", "--json").stdout)
        assert out["branch"] == "main"
        resumed_bytes = link.sent - sent_before
        assert resumed_bytes < 20_000_000 - 8_000_000  # what arrived whole was not sent again
    finally:
        link.close()
    b = Repository.open(tmp_path / "b")
    try:
        assert b.fsck().ok and b.resolve("HEAD") == origin.resolve("HEAD")
        assert (tmp_path / "b/data/9.bin").read_bytes() == origin.read("data/9.bin")
    finally:
        b.close()
    # done: a third clone into the same place is refused
    r = Cli(tmp_path)("clone", url, "b", ok=False)
    assert r.exit_code == 2 and "already holds a repository" in r.stderr


@pytest.mark.kubo
def test_ipfs_clone_broken_off_is_kept_and_resumed(tmp_path: Path, kubo: Kubo,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASYNC_REMOTE_ATTEMPTS", "2")
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    for i in range(4):
        write(a.cwd, f"data/{i}.bin", os.urandom(1_500_000))
    a("commit", "-m", "data")
    a("remote", "add", "origin", kubo.remote_url)
    a("push")
    rid = a("config", "repository_id").stdout.strip()
    api = kubo.api_url.removeprefix("http://").split(":")
    link = FlakyLink((api[0], int(api[1])), budget=2_500_000)
    try:
        url = f"ipfs+http://127.0.0.1:{link.port}/{rid}"
        r = Cli(tmp_path)("clone", url, "b", "--timeout", "5", ok=False)
        assert r.exit_code == 1 and "is kept" in r.stderr and "Traceback" not in r.stderr
        assert (tmp_path / "b/.casync").is_dir()
        link.budget = None
        sent_before = link.sent
        Cli(tmp_path)("clone", url, "b", "--timeout", "5")
        assert link.sent - sent_before < 6_000_000 - 1_000_000  # blocks held were not fetched again
    finally:
        link.close()
    for i in range(4):
        assert (tmp_path / f"b/data/{i}.bin").read_bytes() == (a.cwd / f"data/{i}.bin").read_bytes()


def _broken_off_clone(tmp_path: Path, server: PeerServer, name: str, *args: str) -> tuple[FlakyLink, str]:
    host, port = server.server_address[:2]
    link = FlakyLink((str(host), int(port)), budget=14_000_000)
    url = f"http://127.0.0.1:{link.port}"
    r = Cli(tmp_path)("clone", url, name, *args, ok=False)
    assert r.exit_code == 1 and "is kept" in r.stderr
    link.budget = None
    return link, url


def test_a_resumed_clone_keeps_its_data_whatever_goes_wrong(tmp_path: Path, origin: Repository,
                                                            server: PeerServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume that fails for another reason (a misspelt branch) keeps what arrived; a
    different --replica is refused; files a broken-off checkout left are written over."""
    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    link, url = _broken_off_clone(tmp_path, server, "b", "--replica", "site-b")
    try:
        r = Cli(tmp_path)("clone", url, "b", "--replica", "site-x", ok=False)
        assert r.exit_code == 2 and "replica site-b" in r.stderr
        r = Cli(tmp_path)("clone", url, "b", "--branch", "mian", ok=False)
        assert r.exit_code == 2 and "no branch 'mian'" in r.stderr
        assert (tmp_path / "b/.casync").is_dir()  # kept, and now holds everything
        write(tmp_path / "b", "data/0.bin", origin.read("data/0.bin"))  # as a cut-off checkout leaves it
        write(tmp_path / "b", "data/1.bin", b"half written")
        sent = link.sent
        Cli(tmp_path)("clone", url, "b")
        assert link.sent - sent < 1_000_000  # nothing left to fetch
    finally:
        link.close()
    b = Repository.open(tmp_path / "b")
    try:
        assert b.replica == "site-b" and b.fsck().ok and porcelain.status(b).clean
        assert (tmp_path / "b/data/1.bin").read_bytes() == origin.read("data/1.bin")
    finally:
        b.close()


def test_a_broken_off_clone_someone_went_on_with_is_not_resumed(tmp_path: Path, origin: Repository,
                                                                server: PeerServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    link, url = _broken_off_clone(tmp_path, server, "b")
    try:
        b = Cli(tmp_path / "b")
        b("pull")
        write(b.cwd, "notes.txt", "local work\n")
        mine = b("commit", "-m", "local work").stdout.strip()
        r = Cli(tmp_path)("clone", url, "b", ok=False)
        assert r.exit_code == 2 and "already holds a repository" in r.stderr
        assert b("log", "-n", "1", "--json").stdout.count(mine) == 1  # nothing was deleted
        assert (b.cwd / "notes.txt").read_text() == "local work\n"
    finally:
        link.close()


def test_a_peer_clone_over_a_link_that_drops_is_retried_and_completes(tmp_path: Path, origin: Repository,
                                                                       server: PeerServer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP peers are retried with backoff (casync/transports/wrap.py RetryingPeer): a stream
    cut in the middle is asked for again, and the clone completes in one run."""
    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    host, port = server.server_address[:2]
    link = FlakyLink((str(host), int(port)), budget=14_000_000, heal=True)  # drops once, after 14 of 20 MB
    try:
        out = json.loads(Cli(tmp_path)("clone", f"http://127.0.0.1:{link.port}", "b", "--json").stdout)
        assert out["branch"] == "main" and link.cuts == 1
    finally:
        link.close()
    b = Repository.open(tmp_path / "b")
    try:
        assert b.fsck().ok and b.resolve("HEAD") == origin.resolve("HEAD") and porcelain.status(b).clean
        assert (tmp_path / "b/data/9.bin").read_bytes() == origin.read("data/9.bin")
    finally:
        b.close()


def test_fetch_and_push_retry_a_refused_connection(tmp_path: Path, origin: Repository, server: PeerServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASYNC_TOKEN", TOKEN)
    host, port = server.server_address[:2]
    Cli(tmp_path)("clone", f"http://{host}:{port}", "b")
    b = Cli(tmp_path / "b")
    with origin.transaction(message="more") as tx:
        tx.write("data/new.bin", os.urandom(10_000))
    link = FlakyLink((str(host), int(port)), budget=0, heal=True)  # the first connection is refused
    try:
        url = f"http://127.0.0.1:{link.port}"
        fetched = json.loads(b("fetch", url, "--json").stdout)
        assert fetched["commits"] == 1 and link.cuts == 1
        b("pull", url)
        write(b.cwd, "notes.txt", "from b\n")
        b("commit", "-m", "from b")
        link.budget = 0
        b("push", url)
        assert link.cuts == 2
    finally:
        link.close()
    assert origin.read("notes.txt") == b"from b\n"
