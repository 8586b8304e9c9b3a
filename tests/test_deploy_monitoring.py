"""deploy/monitoring: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``: each alert fires on the series fed to it and stays silent at or below
its threshold, and those tests fail when a rule is broken); the PrometheusRule carries the same
rules; every metric and label an alert or a dashboard panel names is one the agent exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .deploy_tools import DEPLOY, OVERLAYS, objects, promtool_path, render, run_tool

MONITORING = DEPLOY / "monitoring"

# The metrics the agent exports: name -> (type, labels). The contract with the agent (issue 10);
# the one list every check below uses; tests/test_agent_exports.py checks it against a running agent.
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "sync_lag_seconds": ("gauge", frozenset({"source", "target"})),
    "sync_failures_total": ("counter", frozenset({"peer", "reason"})),
    "unresolved_conflicts": ("gauge", frozenset()),
    "sync_duration_seconds": ("histogram", frozenset({"peer"})),
    "sync_blocks_received_total": ("counter", frozenset({"peer"})),
    "sync_blocks_sent_total": ("counter", frozenset({"peer"})),
    "sync_bytes_received_total": ("counter", frozenset({"peer"})),
    "sync_bytes_sent_total": ("counter", frozenset({"peer"})),
    "last_successful_sync_timestamp_seconds": ("gauge", frozenset({"peer"})),
    "sync_peer_overdue": ("gauge", frozenset({"peer"})),
    "audit_last_result": ("gauge", frozenset()),
    "audit_last_run_timestamp_seconds": ("gauge", frozenset()),
    "casync_agent_info": ("gauge", frozenset({"site", "region", "role", "version"})),
}
FAILURE_REASONS = {"unreachable", "timeout", "auth", "refused", "corrupt", "error"}
SCRAPE_LABELS = frozenset({"instance", "job"})  # added by Prometheus to every scraped series
SEED_ALERTS = {  # the seed's alerts, as it wrote them
    "SyncLagHigh": ("sync_lag_seconds > 300", "2m", "warning"),
    "SyncFailure": ("increase(sync_failures_total[5m]) > 3", "1m", "critical"),
    "ConflictResolutionBacklog": ("unresolved_conflicts > 10", "5m", "warning"),
}
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def _series_names() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name the agent's metrics give (a histogram is _bucket, _sum and _count)."""
    names = {}
    for name, (kind, labels) in METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket": (name, labels | {"le"}), f"{name}_sum": (name, labels),
                      f"{name}_count": (name, labels)}
        else:
            names[name] = (name, labels)
    return names


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses: selectors' names and matchers, grouping
    and matching clauses. Function names, keywords, numbers and durations are not names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body))
    for clause in re.findall(_GROUPING, text):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    text = re.sub(_GROUPING, " ", re.sub(r"\[[^\]]*\]", " ", re.sub(r"\{[^}]*\}", " ", text)))
    names = {m[1] for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text)
             if not m[2] and m[1].lower() not in _KEYWORDS}
    return names, labels


def _check_names(where: str, expr: str, templates: str = "") -> set[str]:
    """Assert EXPR (and label references in TEMPLATES) use only exported metrics and labels."""
    series = _series_names()
    names, labels = promql_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - set(series)
    assert not unknown, f"{where}: {sorted(unknown)} are not metrics the agent exports"
    allowed = SCRAPE_LABELS.union(*(series[n][1] for n in names))
    labels |= set(re.findall(r"\$labels\.(\w+)", templates)) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", templates))
    assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} are not on {sorted(names)}"
    return {series[n][0] for n in names}


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"] for r in g["rules"]]


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [p for p in dashboard["panels"] if p.get("targets")]


def test_the_name_parser_finds_metrics_and_labels() -> None:
    assert promql_names('histogram_quantile(0.95, sum by (le, peer) (rate(sync_duration_seconds_bucket'
                        '{peer!="x"}[5m] offset 1h))) > 2e3 and on (job) up') == \
        ({"sync_duration_seconds_bucket", "up"}, {"le", "peer", "job"})
    assert promql_names("time() - audit_last_run_timestamp_seconds > 2 * 86400") == \
        ({"audit_last_run_timestamp_seconds"}, set())
    with pytest.raises(AssertionError, match="not metrics the agent exports"):
        _check_names("x", "rate(sync_failure_total[5m])")
    with pytest.raises(AssertionError, match="labels"):
        _check_names("x", "sum by (region) (sync_lag_seconds)")


def test_promtool_checks_the_rules() -> None:
    done = run_tool(promtool_path(), "check", "rules", MONITORING / "rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_promtool_rule_tests_pass() -> None:
    done = run_tool(promtool_path(), "test", "rules", "tests.yaml", cwd=MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load((MONITORING / "tests.yaml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for rule in _rules():
        name = rule["alert"]
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name} never fires"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name} is never silent"
    for test in tests:
        for series in test["input_series"]:
            name, _, body = series["series"].partition("{")
            _check_names(f"tests.yaml {test['name']}", series["series"])
            reason = re.search(r'reason="([^"]*)"', body)
            assert reason is None or reason[1] in FAILURE_REASONS, series["series"]


def _mutate(rule: dict[str, Any], always: bool) -> None:
    """Replace the alert's final comparison so it fires on every series, or on none."""
    base, n = re.subn(r"\s*(?:>|==)\s*[\d\s*.]+$", "", rule["expr"])
    assert n == 1, rule["expr"]
    rule["expr"] = f"{base} > -1" if always else f"{base} < -1"


@pytest.mark.parametrize("always", [True, False], ids=["fires-always", "never-fires"])
def test_the_rule_tests_fail_when_a_rule_is_broken(tmp_path: Path, always: bool) -> None:
    promtool = promtool_path()
    tests = yaml.safe_load((MONITORING / "tests.yaml").read_text())
    for index, rule in enumerate(_rules()):
        # Only the test groups about this alert (a group runs every rule over its whole time).
        mine = [g for g in tests["tests"] if any(c["alertname"] == rule["alert"] for c in g["alert_rule_test"])]
        (tmp_path / "tests.yaml").write_text(yaml.safe_dump({**tests, "tests": mine}))
        rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
        flat = [r for g in rules["groups"] for r in g["rules"]]
        _mutate(flat[index], always)
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
        done = run_tool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
        assert done.returncode != 0, f"{rule['alert']} broken ({flat[index]['expr']}), yet its tests pass"
        assert f"alertname: {rule['alert']}" in done.stdout + done.stderr


def test_the_seed_alerts_are_kept_and_the_new_ones_added() -> None:
    rules = {r["alert"]: r for r in _rules()}
    for name, (expr, duration, severity) in SEED_ALERTS.items():
        assert (rules[name]["expr"], rules[name]["for"], rules[name]["labels"]["severity"]) == \
            (expr, duration, severity)
    assert "{{ $labels.source }}" in rules["SyncLagHigh"]["annotations"]["description"]
    assert "{{ $labels.target }}" in rules["SyncLagHigh"]["annotations"]["description"]
    assert rules["AuditFailed"]["expr"] == "audit_last_result == 0"
    assert "sync_peer_overdue" in rules["SyncPeerOverdue"]["expr"]


def test_alerts_name_only_exported_metrics_and_labels() -> None:
    used = set()
    for rule in _rules():
        used |= _check_names(rule["alert"], rule["expr"], json.dumps(rule.get("annotations", {})))
    assert {"sync_lag_seconds", "sync_failures_total", "unresolved_conflicts", "audit_last_result",
            "sync_peer_overdue"} <= used


def test_dashboard_panels_name_only_exported_metrics_and_show_every_one() -> None:
    used = set()
    ids = []
    for panel in _panels():
        ids.append(panel["id"])
        for target in panel["targets"]:
            used |= _check_names(f"panel {panel['title']}", target["expr"], target.get("legendFormat", ""))
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert used == set(METRICS), f"no panel shows {sorted(set(METRICS) - used)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_monitoring_objects_carry_the_files(overlay: str) -> None:
    docs = render(overlay)
    (rule,) = objects(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"]
    (dashboard,) = (d for d in objects(docs, "ConfigMap") if d["metadata"]["name"] == "casync-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["casync.json"] == (MONITORING / "dashboard.json").read_text()
    (monitor,) = objects(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    services = [s for s in objects(docs, "Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
    assert [s["metadata"]["name"] for s in services] == ["casync-agent-peers"]
    assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
