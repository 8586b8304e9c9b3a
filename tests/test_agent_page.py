"""The status page as a pure function of a snapshot: everything from elsewhere is escaped, peers
come worst first, and the odd cases (no peers, never synced, no commits, conflicts) read right.
(The page in a real browser: tests/test_agent_page_browser.py.)"""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser

import pytest

from casync.agent.page import (
    CONTENT_SECURITY_POLICY,
    page_title,
    peer_order,
    refresh_seconds,
    render_page,
    render_status_json,
)
from casync.agent.snapshot import AgentSnapshot, CommitSummary, PeerStatus

NOW = 1_795_675_115.0
HOSTILE = "<script>document.title='pwned'</script>\"'&<img src=x onerror=alert(1)>"
CID = "bafyr4ide7pzbbukvjo3c5ab3efhqyal5a775mjvecwwp3thmcta5oeiape"


def peer(name: str, *, last_success: float | None = NOW - 10, overdue: bool = False, consecutive: int = 0,
         error: str | None = None, region: str | None = "us-east", kind: str = "peer") -> PeerStatus:
    return PeerStatus(name=name, url=f"http://{name}.example:8470", region=region, kind=kind,
                      last_success=last_success, last_attempt=NOW - 1,
                      lag_seconds=None if last_success is None else NOW - last_success,
                      consecutive_failures=consecutive, failures_total=consecutive + 3, last_error=error,
                      overdue=overdue)


def snapshot(**changes: object) -> AgentSnapshot:
    base = AgentSnapshot(site="edge-1", region="us-east", role="peer", branch="main", head=CID, started=NOW - 3700,
                         now=NOW, sync_interval=30.0, max_sync_delay=300.0, peers=(peer("hub-1"),),
                         unresolved_conflicts=0,
                         recent_commits=(CommitSummary(CID, "first readings\nsecond line", "edge-1", NOW - 60),),
                         rounds=12)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class Parsed(HTMLParser):
    """Start tags with their attributes, and the text as a browser would show it (entities decoded)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)

    def values(self, attr: str) -> list[str]:
        return [a[attr] or "" for _, a in self.tags if attr in a]


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "b", "br", "code", "dl",
                "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "a"}


def test_everything_from_elsewhere_is_escaped() -> None:
    hostile = snapshot(site="edge-1" + HOSTILE, region=HOSTILE, branch="main" + HOSTILE, head=CID,
                       peers=(peer("p" + HOSTILE, error="refused: " + HOSTILE, region=HOSTILE),),
                       recent_commits=(CommitSummary(CID + HOSTILE, "fix " + HOSTILE, "r" + HOSTILE, NOW),))
    page = render_page(hostile)
    parsed = Parsed(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS  # no <script>, no <img> made of the data
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    text = parsed.all_text()
    for shown in ("edge-1" + HOSTILE, "refused: " + HOSTILE, "fix " + HOSTILE, "r" + HOSTILE):
        assert shown in text  # shown as text, whole
    assert "p" + HOSTILE in parsed.values("data-peer")  # attributes hold it as a value, quotes and all
    assert page.count("<script") == 0 and HOSTILE not in page


def test_the_page_asks_for_nothing() -> None:
    parsed = Parsed(render_page(snapshot()))
    assert not parsed.values("src")
    assert all(not href.startswith(("http:", "https:", "//")) for href in parsed.values("href"))
    csp = [a.get("content") for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [CONTENT_SECURITY_POLICY] and "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert [t for t, a in parsed.tags if t == "meta" and a.get("name") == "viewport"]


def test_peers_come_worst_first() -> None:
    peers = (peer("ok-old", last_success=NOW - 100), peer("ok-new", last_success=NOW - 5),
             peer("failing", consecutive=2, error="timeout"), peer("pending", last_success=None),
             peer("overdue-400", last_success=NOW - 400, overdue=True, consecutive=9),
             peer("overdue-never", last_success=None, overdue=True, consecutive=1))
    expected = ["overdue-never", "overdue-400", "failing", "pending", "ok-old", "ok-new"]
    assert [p.name for p in peer_order(peers)] == expected
    assert [p.name for p in peer_order(reversed(peers))] == expected
    snap = snapshot(peers=peers)
    assert Parsed(render_page(snap)).values("data-peer") == expected
    status = render_status_json(snap)
    assert [p["name"] for p in status["peers"]] == expected
    assert status["overdue_peers"] == ["overdue-never", "overdue-400"]
    assert [p["state"] for p in status["peers"]] == ["overdue", "overdue", "failing", "not synced yet", "ok", "ok"]


def test_overdue_peers_are_marked_and_counted() -> None:
    snap = snapshot(peers=(peer("hub-1"), peer("eu-1", last_success=NOW - 900, overdue=True, consecutive=3,
                                                   error="connection refused")))
    page = render_page(snap)
    assert '<tr class="peer overdue" data-peer="eu-1"><td data-label="status"><span class="badge bad">OVERDUE' in page
    assert "1 of 2 peer(s) OVERDUE (not synced within 5 min)" in Parsed(page).all_text()
    assert page_title(snap) == "casync edge-1: 1 OVERDUE" and page_title(snapshot()) == "casync edge-1: ok"
    assert "3 in a row, 6 total" in page and "15 min ago" in page and "connection refused" in page


def test_a_site_without_peers() -> None:
    page = render_page(snapshot(peers=()))
    assert 'id="no-peers"' in page and 'id="peers"' not in page
    assert "no sync peers configured" in page
    assert render_status_json(snapshot(peers=()))["peers"] == []


def test_a_peer_never_synced() -> None:
    page = render_page(snapshot(peers=(peer("new-site", last_success=None),)))
    row = page[page.index('data-peer="new-site"'):]
    assert 'class="badge idle">not synced yet' in row and '<span class="none">never</span>' in row
    assert '<td data-label="lag">—</td>' in row and " ago" not in row.split("</tr>")[0]
    assert "0 of 1 peer(s) synced, 1 waiting for a first sync" in page
    assert "all 1 peer(s) synced within 5 min" in render_page(snapshot())


def test_before_the_first_commit() -> None:
    page = render_page(snapshot(head=None, recent_commits=(), rounds=0))
    assert "no commits yet" in page and 'id="no-commits"' in page and "0 sync round(s)" in page


def test_unresolved_conflicts_are_highlighted() -> None:
    assert '<p class="banner good" id="conflicts">no unresolved conflicts' in render_page(snapshot())
    page = render_page(snapshot(unresolved_conflicts=4))
    assert '<p class="banner bad" id="conflicts">4 unresolved conflict(s)' in page
    assert "casync conflicts" in page


def test_site_facts_are_shown() -> None:
    text = Parsed(render_page(snapshot())).all_text()
    for fact in ("edge-1", "us-east", "main", CID[:20], "62 min (since 2026-11-26 05:36:55 UTC)", "12 sync round(s)",
                 "30 s", "5 min", "2026-11-26 06:38:35 UTC", "first readings"):
        assert fact in text, fact
    assert "second line" not in text  # the table shows a message's first line (the title has all of it)


@pytest.mark.parametrize(("interval", "refresh"), [(1.0, 5), (30.0, 30), (3600.0, 60), (float("inf"), 60)])
def test_the_page_reloads_once_a_sync_interval_within_bounds(interval: float, refresh: int) -> None:
    snap = snapshot(sync_interval=interval)
    assert refresh_seconds(snap) == refresh
    assert f'<meta http-equiv="refresh" content="{refresh}">' in render_page(snap)


def test_odd_times_do_not_break_the_page() -> None:
    page = render_page(snapshot(peers=(peer("skewed", last_success=NOW + 50),), started=float("nan"),
                                recent_commits=(CommitSummary(CID, "", "edge-1", 1e300),)))
    assert "0 s ago" in page and "(not a time)" in page


def test_the_json_status_has_the_pages_facts() -> None:
    snap = snapshot(unresolved_conflicts=2, peers=(peer("a"), peer("b", overdue=True, last_success=None)))
    status = json.loads(json.dumps(render_status_json(snap)))
    assert status["site"] == "edge-1" and status["head"] == CID and status["unresolved_conflicts"] == 2
    assert status["uptime_seconds"] == 3700 and status["rounds"] == 12 and status["max_sync_delay"] == 300
    assert status["peers"][0] == {**dataclasses.asdict(snap.peers[1]), "state": "overdue"}
    assert status["recent_commits"] == [dataclasses.asdict(c) for c in snap.recent_commits]
