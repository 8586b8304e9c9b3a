"""What the deploy/ manifests and the operator rely on, checked against a REAL running agent:
the metric contract the alerts and the dashboard use (tests/test_deploy_monitoring.py METRICS)
is exactly what /metrics exports, the promtool rule tests feed only series the agent exports,
and the status page on the operator port renders in headless chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .agents import AgentProc, casync, http_get, make_sites, running
from .browser import chromium_render, read_png
from .deploy_tools import DEPLOY
from .test_deploy_monitoring import METRICS

SCRAPE_LABELS = {"instance", "job"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """us-east-1 synced with us-west-1 once, then us-west-1 stopped until it is overdue: every
    series exists (a success, then failures with a reason, an overdue peer)."""
    tmp = tmp_path_factory.mktemp("agents")
    east, west = make_sites(tmp, ("us-east-1", "us-east"), ("us-west-1", "us-west"))
    east.commit({"east.txt": "from east <b>bold</b>\n"}, "east writes <script>document.title='x'</script>")
    casync("-C", str(east.repo), "fsck")  # audit_last_result
    with running(east, east.config([west], max_sync_delay='"2s"')) as agent:
        with running(west, west.config([east])):
            agent.wait_event("synced", peer="us-west-1")
        agent.wait_event("sync_failed", peer="us-west-1", timeout=60)
        agent.wait_for(lambda: http_get(agent.site.metrics + "/readyz")[0] == 503, 60, "us-west-1 overdue")
        yield agent


def _exported(agent: AgentProc) -> dict[str, tuple[str, frozenset[str]]]:
    status, text = http_get(agent.site.metrics + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for s in family.samples:
            labels |= set(s.labels) - {"le"}
        if family.name.startswith(("python_", "process_")):
            continue
        out[family.name] = (family.type, frozenset(labels))
    return out


def test_the_metric_contract_is_what_the_agent_exports(live: AgentProc) -> None:
    exported = _exported(live)
    contract = {name: (kind, labels) for name, (kind, labels) in METRICS.items()}
    # prometheus_client names a counter's family without its _total suffix
    normalised = {(n + "_total" if kind == "counter" else n): (kind, labels) for n, (kind, labels) in exported.items()}
    assert normalised == contract


def test_the_promtool_rule_tests_use_only_series_the_agent_exports(live: AgentProc) -> None:
    status, text = http_get(live.site.metrics + "/metrics")
    assert status == 200
    samples = {s.name: set(s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples}
    tests = yaml.safe_load((DEPLOY / "monitoring" / "tests.yaml").read_text())["tests"]
    fed = [series["series"] for t in tests for series in t.get("input_series", [])]
    assert fed
    for series in fed:
        m = re.fullmatch(r"(\w+)\{(.*)\}", series.strip())
        assert m, series
        name, labels = m[1], set(re.findall(r"(\w+)\s*=", m[2])) - SCRAPE_LABELS
        assert name in samples, f"the rule tests feed {name}, which the agent does not export"
        assert labels <= samples[name], f"{series}: labels {labels - samples[name]} are not the agent's"


def test_the_status_page_renders_in_chromium(live: AgentProc, tmp_path: Path) -> None:
    status, html = http_get(live.site.metrics + "/")
    assert status == 200 and "<html" in html
    dom, png = chromium_render(live.site.metrics + "/", tmp_path / "status.png")
    assert "us-east-1" in dom and "us-west-1" in dom and "OVERDUE" in dom
    assert "<script>document.title" not in dom and "&lt;script&gt;" in dom  # the message shown as text
    image = read_png(png)
    assert (image.width, image.height) == (1280, 900) and len(image.colours()) > 8
