"""Shared fixtures.  Tests use real stores (LMDB + packs on tmp_path, or the in-memory
store) and a real Kubo node for IPFS tests; nothing is mocked."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from casync import Repository
from casync.cli.main import main
from casync.transports.peer.server import PeerServer, serve

pytest_plugins = ["tests.kubo_fixture", "tests.etcd_fixture", "tests.cluster_fixture"]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository.init(tmp_path / "wt", replica="test-a")
    try:
        yield r
    finally:
        r.close()


class Cli:
    """Runs the real CLI in-process against one working directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, input: bytes | None = None) -> Result:
        result = self.runner.invoke(main, ["-C", str(self.cwd), *args], input=input, catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"casync {' '.join(args)} exited {result.exit_code}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    wt = tmp_path / "wt"
    wt.mkdir()
    return Cli(wt)


def write(root: Path, rel: str, data: bytes | str, mode: int | None = None) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(p, mode)
    return p


def age(root: Path, seconds: float = 10.0) -> None:
    """Back-date every file so the stat cache may trust it (not 'racily clean')."""
    for dirpath, _dirs, files in os.walk(root):
        if ".casync" in dirpath.split(os.sep):
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)), follow_symlinks=False)


def flip_pack_byte(repo_root: Path, cid: bytes) -> None:
    """Flip one byte in the middle of ``cid``'s bytes in its pack file (bit rot)."""
    with Repository.open(repo_root) as repo:
        raw = repo.store.get("index", cid)
        assert raw is not None
        pack, offset, length = struct.unpack("<IQI", raw)
        path = repo.store.pack_dir / f"{pack:08d}.pack"
    with open(path, "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x01]))


@contextlib.contextmanager
def serving(repo: Repository, token: str) -> Iterator[PeerServer]:
    """``casync serve`` for ``repo`` on a free loopback port, in a thread; stopped after."""
    srv = serve(repo, token.encode())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


@pytest.fixture
def http_servers() -> Iterator[Callable[[ThreadingHTTPServer], str]]:
    """Serve a test's stand-in HTTP servers (a lying gateway, a lying Kubo API) on threads:
    ``url = http_servers(server)``; every one is shut down and closed after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(server: ThreadingHTTPServer) -> str:
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def serve_process(repo: Path, token_file: Path) -> Iterator[str]:
    """``casync serve`` on ``repo`` as a real child process on a free loopback port; its URL.
    Stopped (terminate, wait) when the block ends, also when the test fails."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "casync", "serve", "--bind", "127.0.0.1:0", "--token-file",
                             str(token_file)], cwd=repo, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert m, line
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
def served_repo(tmp_path: Path) -> Iterator[Repository]:
    """A bare repository with one commit on main (``f.txt`` = ``served``), for serve tests."""
    repo = Repository.init(tmp_path / "s", replica="site-s", bare=True)
    with repo.transaction(branch="main", message="base") as tx:
        tx.write("f.txt", b"served")
    yield repo
    repo.close()

