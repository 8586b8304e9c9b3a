"""``casync import`` against real Kubo: a directory added with ``ipfs add -r`` (its defaults:
CIDv0, sha2-256, dag-pb leaves with Data, balanced files; and other layouts) becomes a
commit whose tree CID is the CID Kubo printed; checkout gives the same bytes, status is
clean, diff, log, fsck, clone to a peer and push back to IPFS work on it.  A node serving a
wrong block (a proxy on 127.0.0.1 in front of the real API that flips a byte in one
``block/get`` answer) is refused naming the CID, and nothing is committed."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import parse_cid
from casync.transports.peer.exchange import fetch_from
from casync.transports.peer.http import HttpPeer

from .conftest import Cli, age, serving, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo

BIG = 700_000  # > 256 KiB: three chunks under Kubo's default chunker


def _source(root: Path) -> Path:
    src = root / "src"
    write(src, "big.bin", os.urandom(BIG))
    write(src, "empty", b"")
    write(src, "sub/deep/note.txt", "nested\n")
    write(src, "sub/run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    os.symlink("sub/deep/note.txt", src / "link")
    return src


def _tree_of(root: Path) -> dict[str, tuple[str, bytes]]:
    """What a directory holds, by relative path: ('file', bytes) or ('link', target)."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        if ".casync" in dirs:
            dirs.remove(".casync")
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p).encode())
            elif p.is_file():
                out[rel] = ("file", p.read_bytes())
    return out


def _add(kubo: Kubo, src: Path, *flags: str) -> str:
    """``ipfs add -r`` with Kubo's stock layout spelled out (CIDv0, dag-pb leaves, sha2-256,
    256 KiB chunks; CIDv1 gets raw leaves), whatever the node's ``Import`` config says (the
    casync/kubo image defaults to CIDv1, raw leaves and blake3)."""
    v1 = "--cid-version=1" in flags
    stock = ["--raw-leaves=true"] if v1 else ["--cid-version=0", "--raw-leaves=false"]
    if not any(f.startswith("--hash=") for f in flags):
        stock.append("--hash=sha2-256")
    if not any(f.startswith("--chunker=") for f in flags):
        stock.append("--chunker=size-262144")
    return kubo.ipfs("add", "-r", "-Q", *stock, *flags, str(src)).decode().strip()


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    Cli(tmp_path)("init", "repo", "--replica", "site-a")
    return tmp_path / "repo"


@pytest.mark.parametrize("flags", [(), ("--trickle",), ("--cid-version=1",), ("--chunker=size-65536",),
                                   ("--cid-version=1", "--hash=blake3"), ("--preserve-mode",)],
                         ids=["defaults", "trickle", "v1-raw-leaves", "small-chunks", "blake3", "modes"])
def test_import_of_an_ipfs_add_tree_keeps_its_cid(tmp_path: Path, kubo: Kubo, repo_dir: Path,
                                                   flags: tuple[str, ...]) -> None:
    src = _source(tmp_path)
    root = _add(kubo, src, *flags)
    if not flags:
        assert root.startswith("Qm")  # CIDv0, dag-pb leaves: Kubo's defaults
    cli = Cli(repo_dir)
    r = cli("import", root, "--api", kubo.api_url, "--json")
    report = json.loads(r.stdout)
    assert report["tree"] == root and report["root"] == root
    assert report["blocks"] >= 8 and report["bytes"] > BIG
    with Repository.open(repo_dir) as repo:
        head = repo.head()
        assert head is not None and repo.tree_of(head) == parse_cid(root)
    cli("checkout", "main")
    assert _tree_of(repo_dir) == _tree_of(src)
    assert os.access(repo_dir / "sub" / "run.sh", os.X_OK) == ("--preserve-mode" in flags)
    age(repo_dir)
    status = json.loads(cli("status", "--json").stdout)
    assert not any(status.get(k) for k in ("new", "modified", "deleted")), status
    cli("fsck")


def test_imported_commit_diffs_logs_clones_and_pushes(tmp_path: Path, kubo: Kubo, repo_dir: Path) -> None:
    src = _source(tmp_path)
    root = _add(kubo, src)
    cli = Cli(repo_dir)
    cli("import", root, "--api", kubo.api_url, "-m", "vendor drop")
    assert "vendor drop" in cli("log").stdout
    cli("checkout", "main")
    age(repo_dir)
    write(repo_dir, "sub/deep/note.txt", "changed\n")
    cli("commit", "-m", "edit")
    assert cli("diff", "HEAD~1", "HEAD").stdout.splitlines() == ["M  sub/deep/note.txt"]
    cli("fsck")
    cli("audit")
    # a peer (another repository by path) takes the history, every block checked again
    Cli(tmp_path)("clone", str(repo_dir), str(tmp_path / "peer"), "--replica", "site-b")
    assert _tree_of(tmp_path / "peer")["big.bin"] == _tree_of(src)["big.bin"]
    Cli(tmp_path / "peer")("fsck")
    # a peer over HTTP ('casync serve') fetches it: the CIDv0 blocks travel in the peer protocol's CARs
    with Repository.open(repo_dir) as repo, serving(repo, "import-token") as srv:
        other = Repository.init(tmp_path / "http-peer", replica="site-d", repository_id=repo.repo_id)
        host, port = srv.server_address[:2]
        fetch_from(other, HttpPeer(f"http://{host}:{port}", "import-token"), "origin")
        assert other.refs.get_ref("remotes/origin/main") == repo.head() and other.fsck().ok
        other.close()
    # a bundle carries the CIDv0 blocks as CAR sections; a new site starts from it
    cli("bundle", "create", str(tmp_path / "site.car"), "main")
    Cli(tmp_path)("clone", str(tmp_path / "site.car"), str(tmp_path / "usb"), "--replica", "site-c")
    assert _tree_of(tmp_path / "usb") == _tree_of(repo_dir)
    # and back to IPFS: push carries them in its CAR uploads; the gateway serves the file under the commit
    cli("remote", "add", "origin", kubo.remote_url)
    cli("push")
    with Repository.open(repo_dir) as repo:
        head = repo.head()
    assert head is not None
    from casync.model.cid import cid_str

    assert kubo.gateway_get(f"/ipfs/{cid_str(head)}/tree/big.bin") == _tree_of(src)["big.bin"][1]


def test_import_at_a_path_grafts_it(tmp_path: Path, kubo: Kubo, repo_dir: Path) -> None:
    src = _source(tmp_path)
    root = _add(kubo, src)
    cli = Cli(repo_dir)
    write(repo_dir, "keep.txt", "mine\n")
    cli("commit", "-m", "first")
    report = json.loads(cli("import", root, "--path", "vendor/src/", "--api", kubo.api_url, "--json").stdout)
    assert report["path"] == "vendor/src"
    with Repository.open(repo_dir) as repo:
        flat = repo.flat_tree(repo.head())
        assert set(flat) == {"keep.txt", *(f"vendor/src/{p}" for p in ("big.bin", "empty", "sub/deep/note.txt",
                                                                       "sub/run.sh", "link"))}
        _cid, _kind, entry = repo.entry_at("HEAD:vendor/src")
        assert entry.cid == parse_cid(root)
    cli("checkout", "main")
    assert (repo_dir / "keep.txt").read_text() == "mine\n"
    assert _tree_of(repo_dir / "vendor" / "src") == _tree_of(src)
    age(repo_dir)
    status = json.loads(cli("status", "--json").stdout)
    assert not any(status.get(k) for k in ("new", "modified", "deleted")), status
    r = cli("import", root, "--path", "vendor/src", "--api", kubo.api_url, ok=False)
    assert r.exit_code == 1 and "nothing to commit" in r.stderr


def _lying_api(upstream: str, bad: str) -> ThreadingHTTPServer:
    """A Kubo RPC API that forwards to ``upstream`` but flips a byte of block ``bad``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            req = urllib.request.Request(upstream.rstrip("/") + self.path, data=body, method="POST",
                                         headers={k: v for k, v in self.headers.items()
                                                  if k.lower() in ("content-type", "authorization")})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    status, kind, out = resp.status, resp.headers.get("Content-Type", ""), resp.read()
            except urllib.error.HTTPError as exc:
                status, kind, out = exc.code, exc.headers.get("Content-Type", ""), exc.read()
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if self.path.startswith("/api/v0/block/get") and query.get("arg") == [bad] and out:
                out = out[:-1] + bytes([out[-1] ^ 1])
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def lying_api(http_servers: Callable[[ThreadingHTTPServer], str]) -> Callable[[str, str], str]:
    return lambda upstream, bad: http_servers(_lying_api(upstream, bad))


@pytest.mark.parametrize("which", ["leaf", "directory"])
def test_a_node_serving_a_wrong_block_is_refused(tmp_path: Path, kubo: Kubo, repo_dir: Path,
                                                 lying_api: Callable[[str, str], str], which: str) -> None:
    src = _source(tmp_path)
    root = _add(kubo, src)
    cli = Cli(repo_dir)
    write(repo_dir, "keep.txt", "mine\n")
    cli("commit", "-m", "first")
    before = cli("log", "--json").stdout
    if which == "leaf":  # the last chunk of big.bin
        big = kubo.ipfs("resolve", "-r", f"/ipfs/{root}/big.bin").decode().strip().rsplit("/", 1)[-1]
        bad = kubo.ipfs("refs", big).decode().split()[-1]
    else:
        bad = kubo.ipfs("resolve", "-r", f"/ipfs/{root}/sub/deep").decode().strip().rsplit("/", 1)[-1]
    api = lying_api(kubo.api_url, bad)
    r = cli("import", root, "--api", api, ok=False)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert f"block {bad} " in r.stderr and "corrupt" in r.stderr, r.stderr
    assert cli("log", "--json").stdout == before  # nothing committed
    with Repository.open(repo_dir) as repo:
        assert not repo.blocks.has(parse_cid(root))
    cli("fsck")
    # the same import from the honest node works, and takes what was kept
    cli("import", root, "--api", kubo.api_url)


def test_a_missing_cid_is_a_clear_error(tmp_path: Path, kubo: Kubo, repo_dir: Path) -> None:
    write(tmp_path, "never-added", os.urandom(1000))
    cid = kubo.ipfs("add", "-Q", "--only-hash", str(tmp_path / "never-added")).decode().strip()
    r = Cli(repo_dir)("import", cid, "--path", "x", "--api", kubo.api_url, "--timeout", "1", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0] == f"error: cannot import {cid}: the IPFS node at {kubo.api_url} does not have it"
    assert r.stderr.splitlines()[1].startswith("hint: check the CID")
    r = Cli(repo_dir)("import", "not-a-cid", "--api", kubo.api_url, ok=False)
    assert r.exit_code == 2 and "not a valid CID" in r.stderr


def test_import_refuses_what_it_cannot_represent(tmp_path: Path, kubo: Kubo, repo_dir: Path) -> None:
    """A file as the whole tree is a usage error, an mtime DAG is refused naming the path; a
    HAMT-sharded directory (Kubo shards directories over 256 KiB) imports, inside a tree or as
    the whole tree, keeping its CID."""
    src = _source(tmp_path)
    file_cid = kubo.ipfs("add", "-Q", str(src / "big.bin")).decode().strip()
    r = Cli(repo_dir)("import", file_cid, "--api", kubo.api_url, ok=False)
    assert r.exit_code == 2 and "only a directory can be a whole tree" in r.stderr and "--path" in r.stderr
    mtimes = _add(kubo, src / "sub", "--preserve-mtime")
    r = Cli(repo_dir)("import", mtimes, "--api", kubo.api_url, ok=False)
    assert r.exit_code == 1 and "is not something casync can represent" in r.stderr and "--preserve-mtime" in r.stderr
    wide = src / "wide"
    wide.mkdir()
    for i in range(1500):
        (wide / f"{i:04d}-{'x' * 180}").write_bytes(b"")
    root = _add(kubo, src)
    assert kubo.ipfs("dag", "get", f"{root}/wide").find(b'"Data"') >= 0
    r = Cli(repo_dir)("import", root, "--api", kubo.api_url, "--json")  # HAMTs are read (§3.3.1)
    assert json.loads(r.stdout)["tree"] == root
    Cli(repo_dir)("checkout", "main")
    assert len(os.listdir(repo_dir / "wide")) == 1500
    # a HAMT as the whole tree: its root is a directory like any other
    shard = kubo.ipfs("resolve", "-r", f"/ipfs/{root}/wide").decode().strip().removeprefix("/ipfs/")
    Cli(tmp_path)("init", "sharded", "--replica", "sharded-site")
    r = Cli(tmp_path / "sharded")("import", shard, "--api", kubo.api_url, "--json")
    assert json.loads(r.stdout)["tree"] == shard
