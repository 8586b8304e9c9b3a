"""The sync commands as a user runs them: two clones, `casync serve` as a real process,
`sync` with a policy, a wrong token, bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import serve_process, write

CASYNC = [sys.executable, "-m", "casync"]


def run(cwd: Path, *args: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CASYNC, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, **(env or {})})
    if ok and r.returncode != 0:
        raise AssertionError(f"casync {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    a = tmp_path / "a"
    run(tmp_path, "init", str(a), "--replica", "site-a")
    write(a, "shared.txt", "base\n")
    write(a, "a-only/readme", "a")
    run(a, "commit", "-m", "base")
    token = tmp_path / "token"
    token.write_text("correct horse battery staple\n")
    with serve_process(a, token) as url:
        yield a, url, token


def test_two_clones_sync_through_serve(tmp_path: Path, served: tuple[Path, str, Path]) -> None:
    a, url, token = served
    b = tmp_path / "b"
    run(tmp_path, "clone", url, str(b), "--replica", "site-b", env={"CASYNC_TOKEN": token.read_text().strip()})
    assert (b / "shared.txt").read_text() == "base\n"
    # different files and the same file on both sides
    write(a, "from-a.txt", "A")
    write(a, "shared.txt", "edited on a\n")
    run(a, "commit", "-m", "a edits")
    time.sleep(0.01)
    write(b, "from-b.txt", "B")
    write(b, "shared.txt", "edited on b\n")
    run(b, "commit", "-m", "b edits")
    r = run(b, "sync", "origin", "--policy", "lww", "--token-file", str(token), "--json")
    report = json.loads(r.stdout)[0]
    assert report["merge"]["result"] == "merged" and report["push"]["result"] == "pushed"
    tree_b = json.loads(run(b, "log", "-n", "1", "--json").stdout)[0]["tree"]
    tree_a = json.loads(run(a, "log", "-n", "1", "--json", "main").stdout)[0]["tree"]
    assert tree_a == tree_b
    assert run(b, "cat", "HEAD:shared.txt").stdout == "edited on b\n"  # later HLC write wins
    assert run(a, "cat", "main:from-b.txt").stdout == "B" and run(a, "cat", "main:from-a.txt").stdout == "A"


def test_wrong_token_is_refused(tmp_path: Path, served: tuple[Path, str, Path]) -> None:
    _a, url, _token = served
    r = run(tmp_path, "clone", url, str(tmp_path / "c"), env={"CASYNC_TOKEN": "wrong"}, ok=False)
    assert r.returncode == 1 and "refused the token (401)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c" / ".casync").exists()


def test_bundle_sneakernet(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run(tmp_path, "init", str(a), "--replica", "a")
    write(a, "f", "1")
    run(a, "commit", "-m", "1")
    run(a, "bundle", "create", str(tmp_path / "x.car"), "main")
    repo_id = json.loads(run(a, "config", "--json").stdout)["repository_id"]
    from casync import Repository

    Repository.init(b, replica="b", repository_id=repo_id).close()
    out = run(b, "bundle", "unbundle", str(tmp_path / "x.car"))
    assert out.stdout.startswith("bundles/main -> ")
    run(b, "merge", "bundles/main")
    assert (b / "f").read_text() == "1"


def test_remote_with_token_file_fetch_and_pull(tmp_path: Path, served: tuple[Path, str, Path]) -> None:
    a, url, token = served
    c = tmp_path / "c"
    run(tmp_path, "clone", url, str(c), "--replica", "site-c", env={"CASYNC_TOKEN": token.read_text().strip()})
    run(c, "remote", "remove", "origin")
    run(c, "remote", "add", "hub", url, "--token-file", str(token))
    config = run(c, "config", "--json").stdout
    assert token.read_text().strip() not in config  # the path is stored, never the token itself
    assert json.loads(config)["remotes"]["hub"]["token_file"] == str(token)
    write(a, "new.txt", "n")
    run(a, "commit", "-m", "more")
    out = json.loads(run(c, "pull", "hub", "--json").stdout)
    assert out["merge"]["result"] == "fast-forward"
    assert (c / "new.txt").read_text() == "n"


def test_token_sources_paths_and_refusals(tmp_path: Path, served: tuple[Path, str, Path]) -> None:
    """clone --token-file records the file; --token-file beats CASYNC_TOKEN beats the
    remote's file (as documented); a relative token path is taken relative to -C; a push
    a dirty served working tree refuses is a 409 with a hint, not a 500."""
    a, url, token = served
    c = tmp_path / "c"
    run(tmp_path, "clone", url, "c", "--token-file", "token", "--replica", "site-c")
    cfg = json.loads(run(c, "config", "--json").stdout)
    assert cfg["remotes"]["origin"]["token_file"] == str(token)
    run(c, "fetch", "origin", env={"CASYNC_TOKEN": ""})  # the recorded file is enough
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not it\n")
    run(tmp_path, "-C", "c", "remote", "set-url", "origin", "--token-file", "wrong-token", ok=False)
    run(tmp_path, "-C", "c", "remote", "set-url", "origin", "--token-file", "../wrong-token")
    assert json.loads(run(c, "config", "--json").stdout)["remotes"]["origin"]["token_file"] == str(wrong)
    r = run(c, "fetch", "origin", ok=False, env={"CASYNC_TOKEN": ""})
    assert r.returncode == 1 and "401" in r.stderr and "--token-file" in r.stderr
    run(c, "fetch", "origin", env={"CASYNC_TOKEN": token.read_text().strip()})  # the environment wins

    write(c, "shared.txt", "edited on c\n")
    run(c, "commit", "-m", "c edits")
    write(a, "shared.txt", "uncommitted on the served replica\n")
    r = run(c, "push", "origin", ok=False, env={"CASYNC_TOKEN": token.read_text().strip()})
    assert r.returncode == 1 and "uncommitted" in r.stderr and "hint: commit or discard" in r.stderr
    assert "500" not in r.stderr and "Traceback" not in r.stderr
    assert (a / "shared.txt").read_text() == "uncommitted on the served replica\n"


def test_a_refused_request_closes_its_connection(served: tuple[Path, str, Path]) -> None:
    """A 401 leaves the request body unread: the server must not parse it as the next request."""
    import socket

    _a, url, _token = served
    host, port = url.removeprefix("http://").split(":")
    body = b'{"haves": []}'
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/negotiate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401") and b"Connection: close" in reply
    assert reply.count(b"HTTP/1.1") == 1  # the body was not answered as a second request


def test_fetch_pull_push_take_a_path_or_url_as_sync_does(tmp_path: Path, served: tuple[Path, str, Path]) -> None:
    """Their help says REMOTE may be a repository's path or a 'casync serve' URL: it used to be
    refused as "no remote named '../a'" unless added with 'remote add' first."""
    a, url, token = served
    c = tmp_path / "c"
    run(tmp_path, "clone", str(a), str(c), "--replica", "site-c")
    write(a, "more.txt", "more")
    run(a, "commit", "-m", "a adds")
    r = run(c, "fetch", "../a")
    assert "fetched 1 commit(s)" in r.stdout
    run(c, "pull", "../a")
    assert (c / "more.txt").read_text() == "more"
    write(c, "from-c.txt", "C")
    run(c, "commit", "-m", "c adds")
    r = run(c, "push", url, "main", env={"CASYNC_TOKEN": token.read_text().strip()})
    assert "pushed" in r.stdout
    assert run(a, "log", "--oneline", "main").stdout.count("\n") == 3
    r = run(c, "fetch", "nosuchremote", ok=False)  # neither a remote nor a path: usage
    assert r.returncode == 2 and "no remote named 'nosuchremote'" in r.stderr


def test_a_fetch_from_a_peer_loads_no_ipfs_code(tmp_path: Path, served: tuple[Path, str, Path]) -> None:
    """``fetch``/``pull``/``push`` live with the IPFS commands in cli/remote.py; a fetch from
    ``casync serve`` imported the IPFS transport and ipfshttpclient (requests, urllib3) on the
    way, a third of a one-commit sync's whole-process time."""
    a, url, token = served
    b = tmp_path / "b"
    env = {"CASYNC_TOKEN": token.read_text().strip()}
    run(tmp_path, "clone", url, str(b), "--replica", "site-b", env=env)
    write(a, "new.txt", "new\n")
    run(a, "commit", "-m", "new")
    code = ("import sys\nfrom casync.cli.main import main\n"
            "try:\n    main(['fetch', 'origin'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('ipfshttpclient', 'casync.transports.ipfs')))\n"
            "assert not loaded, loaded\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=b, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    assert run(b, "log", "-n", "1", "--json", "origin/main").stdout == run(a, "log", "-n", "1", "--json").stdout
