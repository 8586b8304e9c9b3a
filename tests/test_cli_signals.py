"""How the CLI process ends when the world ends it: a reader that left the pipe, Ctrl-C while
waiting on a peer, and a ``casync serve`` that has run out of connections."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from casync import Repository
from casync.transports.peer.server import PeerServer

from .conftest import Cli, serving, write

CASYNC = [sys.executable, "-m", "casync"]


def _repo(tmp_path: Path, files: int) -> Path:
    wt = tmp_path / "wt"
    Repository.init(wt, replica="a").close()
    for i in range(files):
        write(wt, f"f{i:05d}", str(i))
    Cli(wt)("commit", "-m", "one")
    return wt


def _into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run casync with stdout a pipe whose reader has already gone ('casync log | head' after head exits)."""
    read, write_end = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*CASYNC, *args], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE,
                              timeout=120, check=False)
    finally:
        os.close(write_end)


def test_a_reader_that_left_the_pipe_ends_casync_quietly(tmp_path: Path) -> None:
    wt = _repo(tmp_path, 3000)
    for args in (["log"], ["ls", "HEAD"]):  # one line; far more than a pipe buffer
        r = _into_closed_pipe(args, wt)
        assert (r.returncode, r.stderr) == (0, b""), (args, r.stderr.decode())


def test_ctrl_c_while_waiting_on_a_peer_is_one_line_and_exit_130(tmp_path: Path) -> None:
    wt = _repo(tmp_path, 1)
    (tmp_path / "token").write_text("secret")
    with socket.create_server(("127.0.0.1", 0)) as stalled:  # accepts, never answers
        port = stalled.getsockname()[1]
        p = subprocess.Popen([*CASYNC, "fetch", f"http://127.0.0.1:{port}", "--token-file", str(tmp_path / "token")],
                             cwd=wt, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = stalled.accept()
            with conn:
                assert conn.recv(4096).startswith(b"GET ")  # casync now waits for the reply
                p.send_signal(signal.SIGINT)
                _out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert p.returncode == 130
    assert err.decode() == "interrupted\n"


def test_serve_answers_503_when_its_connections_run_out(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "wt", replica="a")
    idle: list[socket.socket] = []
    try:
        with serving(repo, "secret") as srv:
            host, port = str(srv.server_address[0]), int(srv.server_address[1])
            # every slot held by a client that connected and sent nothing yet
            idle = [socket.create_connection((host, port)) for _ in range(PeerServer.max_connections)]
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", "/v1/info", headers={"Authorization": "Bearer secret"})
            resp = conn.getresponse()
            assert resp.status == 503
            conn.close()
    finally:
        for s in idle:
            s.close()
        repo.close()
