"""The status page in a real browser (Debian's headless chromium): built from a snapshot of real
repositories (commits, a fetch, a siblings merge, a real peer error), served on 127.0.0.1, checked
in the DOM chromium built, in computed styles at phone width, and in the screenshot's pixels.

A control page proves the checks can fail: in the same browser its script runs and its outside
request reaches the trap proxy, so "no script ran" and "nothing left loopback" mean something."""

from __future__ import annotations

import contextlib
import html
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from casync import Repository, porcelain
from casync.agent.page import CONTENT_SECURITY_POLICY, page_title, render_page
from casync.agent.snapshot import AgentSnapshot, CommitSummary, PeerStatus
from casync.errors import RemoteError
from casync.model.cid import cid_str
from casync.transports.peer.exchange import LocalPeer, fetch_from

from .browser import chromium_render, chromium_visit, read_png

MESSAGE = 'calibrate <probe> & "fix" it'
DEAD_PATH = "/nonexistent/<script>document.title='pwned';document.documentElement.dataset.pwned='1'</script>"
OVERDUE_RED = (0xC6, 0x28, 0x28)  # .badge.bad in casync/agent/page.py
CONTROL = ("<!DOCTYPE html><html><head><title>control</title></head><body><p>control</p>"
           "<img src='http://example.invalid/pixel.png' alt=''>"
           "<script>document.title='script ran'</script></body></html>")
# At phone width: does the page fit without scrolling sideways, and is OVERDUE still a red badge?
PROBE = ("<!DOCTYPE html><html><head><title>probe</title></head><body style='margin:0'>"
         "<iframe id='f' src='/' style='width:390px;height:800px;border:0'></iframe><script>"
         "window.onload=function(){var d=document.getElementById('f').contentDocument;"
         "var b=d.querySelector('tr.overdue .badge');document.title=JSON.stringify({"
         "scroll:d.documentElement.scrollWidth,client:d.documentElement.clientWidth,"
         "badge:b?getComputedStyle(b).backgroundColor:null,"
         "thead:getComputedStyle(d.querySelector('#peers thead')).display})};</script></body></html>")


def _commits(repo: Repository, n: int) -> tuple[CommitSummary, ...]:
    return tuple(CommitSummary(cid_str(e.cid), e.commit.message, e.commit.replica, e.commit.time.wall_ms / 1000)
                 for e in repo.log("main", limit=n))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentSnapshot]:
    """edge-1's view: it fetched hub-1 and merged it with siblings (a real conflict), and one peer is a
    path that does not exist, whose real error text carries a script."""
    tmp = tmp_path_factory.mktemp("page")
    hub = Repository.init(tmp / "hub", replica="hub-1", bare=True)
    edge = Repository.init(tmp / "edge", replica="edge-1", bare=True, repository_id=hub.repo_id)
    started = time.time()
    try:
        with hub.transaction(branch="main", message="seed readings") as tx:
            tx.write("shared.txt", b"base\n")
        peer = LocalPeer(str(hub.root))
        fetch_from(edge, peer, "hub-1")
        porcelain.merge(edge, "hub-1/main")
        with edge.transaction(message=MESSAGE) as tx:
            tx.write("shared.txt", b"edge\n")
        with hub.transaction(message="hub edit") as tx:
            tx.write("shared.txt", b"hub\n")
        fetch_from(edge, peer, "hub-1")
        synced = time.time()
        porcelain.merge(edge, "hub-1/main", policy="siblings")
        peer.close()
        with pytest.raises(RemoteError) as dead:
            LocalPeer(DEAD_PATH)
        assert "<script>" in str(dead.value)
        now = time.time()
        peers = (
            PeerStatus("hub-1", str(hub.root), "us-east", "peer", synced, now, now - synced, 0, 7, None, False),
            PeerStatus("eu-central-1", DEAD_PATH, "eu-central", "peer", None, now, None, 4, 4, str(dead.value), True),
            PeerStatus("kubo-us-east", "ipfs+http://127.0.0.1:5001", "us-east", "ipfs", synced - 40, now,
                       now - synced + 40, 2, 2, "connection refused", False),
        )
        head = edge.resolve_cid("main")
        yield AgentSnapshot(site=edge.replica, region="us-east", role="peer", branch="main", head=head,
                            started=started, now=now, sync_interval=30.0, max_sync_delay=300.0, peers=peers,
                            unresolved_conflicts=len(porcelain.conflicts(edge)),
                            recent_commits=_commits(edge, 5), rounds=2)
    finally:
        edge.close()
        hub.close()


@contextlib.contextmanager
def serving(pages: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server for ``pages`` (path -> HTML), in a thread; yields its URL and the paths asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            data = (body or "not found").encode()
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_control_page_shows_the_checks_can_fail(tmp_path: Path) -> None:
    with serving({"/": CONTROL}) as (url, _):
        visit = chromium_visit(url + "/", tmp_path / "control.png", window=(400, 300))
    assert "<title>script ran</title>" in visit.dom
    assert visit.outside == ["GET http://example.invalid/pixel.png HTTP/1.1"]


def test_the_status_page_renders_in_chromium(site: AgentSnapshot, tmp_path: Path) -> None:
    page = render_page(site)
    assert site.unresolved_conflicts >= 1 and len(site.recent_commits) >= 3
    with serving({"/": page}) as (url, asked):
        dom, png = chromium_render(url + "/", tmp_path / "desktop.png", window=(1280, 900))
    assert set(asked) <= {"/", "/favicon.ico"}, asked  # the page asked for nothing of its own

    # the title is the page's own: the peer error's script did not run, nor became an element
    assert f"<title>{html.escape(page_title(site), quote=False)}</title>" in dom
    assert "pwned" not in dom.split("</title>")[0] and "data-pwned" not in dom and "<script" not in dom
    assert "&lt;script&gt;document.title='pwned'" in dom  # shown as text
    assert f'content="{CONTENT_SECURITY_POLICY}"' in dom

    rows = re.findall(r'<tr class="peer (\w+)" data-peer="([^"]+)">(.*?)</tr>', dom)
    assert [(css, name) for css, name, _ in rows] == [("overdue", "eu-central-1"), ("failing", "kubo-us-east"),
                                                       ("ok", "hub-1")]
    assert '<span class="badge bad">OVERDUE</span>' in rows[0][2] and "OVERDUE" not in rows[1][2] + rows[2][2]
    assert "never" in rows[0][2] and " ago" in rows[2][2] and "UTC" in rows[2][2]
    assert f"{site.unresolved_conflicts} unresolved conflict(s)" in dom
    assert html.escape(MESSAGE, quote=False) in dom and site.head is not None and site.head[:20] in dom
    assert dom.count('data-label="commit"') == len(site.recent_commits)

    image = read_png(png)
    assert (image.width, image.height) == (1280, 900)
    assert image.count(OVERDUE_RED) > 200  # the OVERDUE badge is drawn, in its own colour
    blank, _ = Counter(image.rows).most_common(1)[0]  # the commonest row: page background
    assert sum(row != blank for row in image.rows) > image.height // 4, "the screenshot is mostly blank"
    assert len(image.colours()) > 20  # text, borders and badges, not a few flat colours


def test_the_status_page_fits_a_phone(site: AgentSnapshot, tmp_path: Path) -> None:
    with serving({"/": render_page(site), "/probe": PROBE}) as (url, _):
        dom, png = chromium_render(url + "/probe", tmp_path / "phone.png", window=(390, 844))
    probe = json.loads(html.unescape(dom.split("<title>", 1)[1].split("</title>", 1)[0]))
    assert probe["scroll"] <= probe["client"] == 390, probe  # nothing to scroll sideways
    assert probe["thead"] == "none"  # the tables became one card per row
    assert probe["badge"] == "rgb({}, {}, {})".format(*OVERDUE_RED)
    image = read_png(png)
    assert (image.width, image.height) == (390, 844) and image.count(OVERDUE_RED) > 100


def test_a_hung_page_load_is_killed_with_its_children(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts the connection, never answers
        with pytest.raises(AssertionError, match="did not finish within 3 s"):
            chromium_visit(f"http://127.0.0.1:{silent.getsockname()[1]}/", tmp_path / "hung.png", timeout=3)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if "casync-chromium-" in " ".join(p.info["cmdline"] or [])]
    assert not left, f"chromium processes left behind: {left}"
