"""The agent's status page (``/``) and its JSON twin (``/status.json``): what an operator opens first.

Server-side HTML with inline CSS and no script: the page makes no request of its own (a Content
Security Policy forbids any), so it works on a site with no route to anywhere and leaks nothing.
Replica names, commit messages and peer errors come from other sites, so every text is escaped.
Pure: a snapshot in, a string out; the agent serves it."""

from __future__ import annotations

import dataclasses
import html
import math
import time
from collections.abc import Iterable
from typing import Any

from casync.agent.snapshot import AgentSnapshot, CommitSummary, PeerStatus

__all__ = ["CONTENT_SECURITY_POLICY", "REFRESH_MAX", "REFRESH_MIN", "page_title", "peer_order", "peer_state",
           "refresh_seconds", "render_page", "render_status_json"]

REFRESH_MIN, REFRESH_MAX = 5, 60  # seconds between reloads: the sync interval, within these bounds
SHORT_CID = 20  # the length human CLI output abbreviates CIDs to (casync.model.cid.short)
# No script, no fetch, no frame, no form: only the inline style below.  The agent may send it as a header too.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
:root{color-scheme:light;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:15px}
body{margin:0;padding:12px;background:#f6f7f9;color:#1d232b;line-height:1.35}
h1{font-size:1.3rem;margin:0 0 4px}h2{font-size:1.05rem;margin:18px 0 6px}
.sub{color:#5b6470;margin:0 0 10px}
.banner{padding:8px 12px;border-radius:6px;margin:8px 0;font-weight:600}
.banner.good{background:#e3f4e5;color:#1b5e20}.banner.bad{background:#c62828;color:#fff}
.banner.warn{background:#fff3cd;color:#6d4c00}
dl.site{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0;
 background:#fff;padding:10px 12px;border-radius:6px;border:1px solid #dde1e6}
dt{color:#5b6470}dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e6}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e7eaee;vertical-align:top}
th{background:#eef1f4;font-weight:600;font-size:.9rem}
tr.overdue td{background:#fdecea}tr.failing td{background:#fff8e1}
.badge{display:inline-block;padding:1px 7px;border-radius:4px;font-weight:700;font-size:.85rem}
.badge.bad{background:#c62828;color:#fff}.badge.warn{background:#f9a825;color:#1d232b}
.badge.good{background:#2e7d32;color:#fff}.badge.idle{background:#90a4ae;color:#fff}
code,.cid{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.88rem}
.err{color:#8e1b1b;overflow-wrap:anywhere;font-family:ui-monospace,monospace;font-size:.85rem}
.muted{color:#5b6470;font-size:.85rem}.url{overflow-wrap:anywhere}.t{white-space:nowrap}.none{color:#5b6470;font-style:italic}
@media (max-width:640px){
 table,tbody,tr,td{display:block;width:auto}thead{display:none}
 tr{border-bottom:2px solid #dde1e6;padding:4px 0}td{border:0;padding:2px 8px}
 td::before{content:attr(data-label) ": ";color:#5b6470;font-size:.85rem}}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _utc(t: float | None) -> str:
    if t is None:
        return "never"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return f"{t!r} (not a time)"


def _duration(seconds: float) -> str:
    """Seconds for people: exact under two minutes, then coarser (a lag of days needs no seconds)."""
    if not math.isfinite(seconds):
        return "∞"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def refresh_seconds(snapshot: AgentSnapshot) -> int:
    """How often the page reloads itself: once a sync interval, never faster than 5 s nor slower than 60 s."""
    interval = snapshot.sync_interval
    if not math.isfinite(interval):
        return REFRESH_MAX
    return int(min(REFRESH_MAX, max(REFRESH_MIN, round(interval))))


def _lag_key(peer: PeerStatus) -> float:
    lag = peer.lag_seconds
    return math.inf if lag is None or math.isnan(lag) else lag


def peer_order(peers: Iterable[PeerStatus]) -> list[PeerStatus]:
    """Worst first: overdue, then failing, then the longest lag (never synced counts as the longest),
    then the most consecutive failures, then by name, so the order is stable between reloads."""
    return sorted(peers, key=lambda p: (not p.overdue, p.consecutive_failures == 0, -_lag_key(p),
                                        -p.consecutive_failures, p.name, p.url))


def peer_state(peer: PeerStatus) -> tuple[str, str]:
    """(label, css class) of one peer: what the status column says."""
    if peer.overdue:
        return "OVERDUE", "bad"
    if peer.consecutive_failures > 0:
        return "failing", "warn"
    if peer.last_success is None:
        return "not synced yet", "idle"
    return "ok", "good"


def _summary(snapshot: AgentSnapshot) -> tuple[str, str]:
    overdue = sum(p.overdue for p in snapshot.peers)
    failing = sum(p.consecutive_failures > 0 and not p.overdue for p in snapshot.peers)
    n = len(snapshot.peers)
    if not n:
        return "no sync peers configured", "warn"
    if overdue:
        return f"{overdue} of {n} peer(s) OVERDUE (not synced within {_duration(snapshot.max_sync_delay)})", "bad"
    if failing:
        return f"{failing} of {n} peer(s) failing, none overdue yet", "warn"
    waiting = sum(p.last_success is None for p in snapshot.peers)
    if waiting:
        return f"{n - waiting} of {n} peer(s) synced, {waiting} waiting for a first sync", "good"
    return f"all {n} peer(s) synced within {_duration(snapshot.max_sync_delay)}", "good"


def _site(snapshot: AgentSnapshot) -> str:
    head = (f'<span class="cid" title="{_e(snapshot.head)}">{_e(snapshot.head[:SHORT_CID])}</span>'
            if snapshot.head else '<span class="none">no commits yet</span>')
    rows = [("replica", _e(snapshot.site)), ("region", _e(snapshot.region or "—")), ("role", _e(snapshot.role)),
            ("branch", _e(snapshot.branch)), ("head", head),
            ("uptime", f"{_duration(snapshot.now - snapshot.started)} (since {_utc(snapshot.started)})"),
            ("rounds", f"{snapshot.rounds} sync round(s) completed"),
            ("sync interval", _duration(snapshot.sync_interval)),
            ("max sync delay", _duration(snapshot.max_sync_delay)),
            ("as of", _utc(snapshot.now))]
    return '<dl class="site">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _peer_row(peer: PeerStatus, now: float) -> str:
    label, css = peer_state(peer)
    row_class = "overdue" if peer.overdue else "failing" if peer.consecutive_failures else "ok"
    if peer.last_success is None:
        last = '<span class="none">never</span>'
    else:
        last = (f'<span class="t">{_utc(peer.last_success)}</span><br>'
                f'<span class="muted">{_duration(now - peer.last_success)} ago</span>')
    lag = "—" if peer.lag_seconds is None else _duration(peer.lag_seconds)
    error = f'<span class="err">{_e(peer.last_error)}</span>' if peer.last_error else "—"
    cells = [("status", f'<span class="badge {css}">{label}</span>'),
             ("peer", f'<b class="peer-name">{_e(peer.name)}</b><br><span class="muted url">{_e(peer.url)}</span>'),
             ("kind", _e(peer.kind)), ("region", _e(peer.region or "—")), ("last success", last), ("lag", lag),
             ("failures", f"{peer.consecutive_failures} in a row, {peer.failures_total} total"),
             ("last error", error)]
    tds = "".join(f'<td data-label="{name}">{html_}</td>' for name, html_ in cells)
    return f'<tr class="peer {row_class}" data-peer="{_e(peer.name)}">{tds}</tr>'


def _peers(snapshot: AgentSnapshot) -> str:
    if not snapshot.peers:
        return '<p class="none" id="no-peers">No sync peers or IPFS remotes are configured for this site.</p>'
    head = "".join(f"<th>{h}</th>" for h in ("status", "peer", "kind", "region", "last success", "lag",
                                              "failures", "last error"))
    body = "".join(_peer_row(p, snapshot.now) for p in peer_order(snapshot.peers))
    return f'<table id="peers"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _conflicts(snapshot: AgentSnapshot) -> str:
    n = snapshot.unresolved_conflicts
    if n <= 0:
        return '<p class="banner good" id="conflicts">no unresolved conflicts</p>'
    return (f'<p class="banner bad" id="conflicts">{n} unresolved conflict(s): list them with '
            "<code>casync conflicts</code>, settle each with <code>casync resolve PATH --pick …</code></p>")


def _commit_row(commit: CommitSummary) -> str:
    first_line = commit.message.splitlines()[0] if commit.message.strip() else ""
    cells = [("commit", f'<span class="cid" title="{_e(commit.cid)}">{_e(commit.cid[:SHORT_CID])}</span>'),
             ("replica", _e(commit.replica)), ("time", f'<span class="t">{_utc(commit.time)}</span>'),
             ("message", f'<span class="msg" title="{_e(commit.message)}">{_e(first_line)}</span>')]
    return "<tr>" + "".join(f'<td data-label="{k}">{v}</td>' for k, v in cells) + "</tr>"


def _commits(snapshot: AgentSnapshot) -> str:
    if not snapshot.recent_commits:
        return '<p class="none" id="no-commits">No commits on this branch yet.</p>'
    head = "".join(f"<th>{h}</th>" for h in ("commit", "replica", "time", "message"))
    body = "".join(_commit_row(c) for c in snapshot.recent_commits)
    return f'<table id="commits"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page_title(snapshot: AgentSnapshot) -> str:
    """The tab's title: the site and, when there is one, its worst problem, so a row of tabs reads at a glance."""
    overdue = sum(p.overdue for p in snapshot.peers)
    state = f"{overdue} OVERDUE" if overdue else "ok"
    return f"casync {snapshot.site}: {state}"


def render_page(snapshot: AgentSnapshot) -> str:
    """The whole status page as one HTML document (UTF-8; no script, no external asset)."""
    summary, summary_css = _summary(snapshot)
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">',
        f'<meta http-equiv="refresh" content="{refresh_seconds(snapshot)}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(page_title(snapshot))}</title><style>{_CSS}</style></head><body>",
        f"<h1>casync agent · <span id=\"site\">{_e(snapshot.site)}</span></h1>",
        f'<p class="sub">region {_e(snapshot.region or "—")} · {_e(snapshot.role)} · branch '
        f"{_e(snapshot.branch)} · as of {_utc(snapshot.now)} · reloads every {refresh_seconds(snapshot)} s</p>",
        f'<p class="banner {summary_css}" id="summary">{_e(summary)}</p>',
        _conflicts(snapshot),
        "<h2>This site</h2>", _site(snapshot),
        f"<h2>Peers ({len(snapshot.peers)}, worst first)</h2>", _peers(snapshot),
        f"<h2>Recent commits on {_e(snapshot.branch)}</h2>", _commits(snapshot),
        '<p class="muted">Prometheus metrics: <a href="metrics">/metrics</a></p>',
        "</body></html>\n",
    ])


def render_status_json(snapshot: AgentSnapshot) -> dict[str, Any]:
    """The same facts as the page, as JSON-ready values (peers in the page's worst-first order)."""
    peers = peer_order(snapshot.peers)
    return {
        "site": snapshot.site, "region": snapshot.region, "role": snapshot.role, "branch": snapshot.branch,
        "head": snapshot.head, "started": snapshot.started, "now": snapshot.now,
        "uptime_seconds": max(0.0, snapshot.now - snapshot.started), "rounds": snapshot.rounds,
        "sync_interval": snapshot.sync_interval, "max_sync_delay": snapshot.max_sync_delay,
        "unresolved_conflicts": snapshot.unresolved_conflicts,
        "overdue_peers": [p.name for p in peers if p.overdue],
        "peers": [dict(dataclasses.asdict(p), state=peer_state(p)[0].lower()) for p in peers],
        "recent_commits": [dataclasses.asdict(c) for c in snapshot.recent_commits],
    }
