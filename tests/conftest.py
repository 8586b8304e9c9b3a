"""Shared fixtures.  Tests use real stores (LMDB + packs on tmp_path, or the in-memory
store) and a real Kubo node for IPFS tests; nothing is mocked."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from casync import Repository, porcelain
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


def settle() -> None:
    """Wait out the racily-clean second (``RACY_NS``): the stat cache then trusts the files
    written before."""
    time.sleep(1.1)


def committed_grid(root: Path, dirs: int, files: int) -> Repository:
    """A repository at ``root`` with ``dirs`` directories of ``files`` files
    (``dNN/fNN.txt`` holding ``file D F``), committed once they are settled."""
    repo = Repository.init(root, replica="site-a")
    for d in range(dirs):
        for f in range(files):
            write(repo.root, f"d{d:02}/f{f:02}.txt", f"file {d} {f}\n")
    settle()
    porcelain.commit(repo, "base")
    return repo


def refuse_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of a whole tree fail the test (the caller must read in proportion to a change)."""
    def refuse(*_args: object, **_kw: object) -> object:
        raise AssertionError("the whole tree was flattened")
    monkeypatch.setattr(Repository, "flatten", refuse)
    monkeypatch.setattr(Repository, "flat_tree", refuse)


def assert_cache_describes_tree(repo: Repository) -> None:
    """docs/design.md §10.2's invariant: the stat cache describes the checked-out tree, one
    entry per file of it, each with the tree's CID and tsize."""
    from casync.worktree import state as workstate

    tree = workstate.checked_out(repo).tree
    assert tree is not None and repo.store.get("meta", b"statcache_tree") == tree
    flat = repo.flatten(tree)
    cache = repo.store.load_stat_cache()
    assert cache.keys() == flat.keys()
    assert all(cache[p][6] == e.cid and cache[p][5] == e.tsize for p, e in flat.items())


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

