"""``casync get`` reads a file from a real Kubo gateway as a CAR and verifies it; a lying
gateway (a proxy on 127.0.0.1 in front of the real one that flips a byte in one block,
drops a block or adds one) is refused with the CID named, and nothing is left at -o FILE."""

from __future__ import annotations

import io
import os
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from casync.model.car import car_parts, iter_car, read_header

from .conftest import Cli, write
from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo


def _proxy(upstream: str, mode: str) -> ThreadingHTTPServer:
    """A gateway that forwards to ``upstream`` and then lies in the CAR as ``mode`` says:
    ``flip`` a byte of the last block's data, ``drop`` the second block, ``extra`` one more."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            req = urllib.request.Request(upstream.rstrip("/") + self.path,
                                         headers={"Accept": self.headers.get("Accept", "")})
            with urllib.request.urlopen(req, timeout=30) as resp:
                kind, body = resp.headers["Content-Type"], resp.read()
            stream = io.BytesIO(body)
            roots = read_header(stream)
            blocks = list(iter_car(stream))
            if mode == "flip":
                cid, data = blocks[-1]
                blocks[-1] = (cid, data[:-1] + bytes([data[-1] ^ 1]))
            elif mode == "drop":
                del blocks[1]
            elif mode == "extra":
                blocks.append(blocks[0])
            out = b"".join(bytes(p) for p in car_parts(roots, blocks))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def lying(http_servers: Callable[[ThreadingHTTPServer], str]) -> Callable[[str, str], str]:
    return lambda upstream, mode: http_servers(_proxy(upstream, mode))


@pytest.fixture
def added(tmp_path: Path, kubo: Kubo) -> tuple[str, bytes]:
    """A directory added to Kubo: root CID, and the bytes of sub/deep/big.bin (3 chunks)."""
    data = os.urandom(600_000)
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "sub" / "deep" / "big.bin").write_bytes(data)
    (src / "sub" / "other.txt").write_text("other\n")
    root = kubo.ipfs("add", "-r", "-Q", "--cid-version", "1", str(src)).decode().strip()
    return root, data


def test_get_reads_and_verifies_a_file(tmp_path: Path, kubo: Kubo, added: tuple[str, bytes]) -> None:
    root, data = added
    assert kubo.gateway_url
    cli = Cli(tmp_path)
    out = tmp_path / "big.bin"
    cli("get", f"{kubo.gateway_url.rstrip('/')}/ipfs/{root}/sub/deep/big.bin", "-o", str(out))
    assert out.read_bytes() == data
    r = cli("get", f"{root}:sub/other.txt", "--gateway", kubo.gateway_url)
    assert r.stdout == "other\n"


def test_get_reads_a_committed_and_pushed_file_by_its_url(tmp_path: Path, kubo: Kubo) -> None:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    data = os.urandom(700_000)
    write(a.cwd, "data/x.bin", data)
    a("commit", "-m", "first")
    a("remote", "add", "origin", kubo.remote_url)
    a("push")
    url = a("url", "HEAD:data/x.bin", "--remote", "origin").stdout.strip()
    assert "/tree/data/x.bin" in url
    out = tmp_path / "x.bin"
    a("get", url, "-o", str(out))
    assert out.read_bytes() == data


@pytest.mark.parametrize("mode", ["flip", "drop", "extra"])
def test_get_refuses_a_lying_gateway(tmp_path: Path, kubo: Kubo, added: tuple[str, bytes],
                                     lying: Callable[[str, str], str], mode: str) -> None:
    root, _data = added
    assert kubo.gateway_url
    gateway = lying(kubo.gateway_url, mode)
    out = tmp_path / "big.bin"
    r = Cli(tmp_path)("get", f"{gateway}/ipfs/{root}/sub/deep/big.bin", "-o", str(out), ok=False)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "error: gateway sent block b" in r.stderr, r.stderr  # the CID is named
    assert {"flip": "do not match its CID", "drop": "belongs", "extra": "after the whole file"}[mode] in r.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".casync-get-")]
