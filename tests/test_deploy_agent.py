"""deploy/ and the real agent fit together: every rendered casync.toml is a configuration the
agent's own parser (:func:`casync.agent.config.parse_config`) accepts with the command-line
overrides the manifest passes; every flag the manifests pass is one ``casync agent`` has (its
click parameters, and ``--help``); the probes ask the agent's routes on the ``--metrics-addr``
port; the ports, Service, audit and grace period agree with the parsed configuration."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest

from casync.agent.config import AgentConfig, parse_config
from casync.agent.httpd import agent_routes
from casync.cli.agent import agent as agent_command
from casync.errors import UsageError

from .deploy_tools import OVERLAYS, containers, objects, pod_templates, render
from .test_docs import _command

CONFIG_MOUNT = Path("/etc/casync/casync.toml")
# What the kubelet puts in $(VAR) for the fieldRefs the manifests use (examples of a node).
FIELD_VALUES = {"spec.nodeName": "edge-node-1", "status.podIP": "10.1.2.3", "metadata.name": "casync-agent-0"}


def _agent(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (workload,) = [d for d in docs if d["kind"] in ("StatefulSet", "DaemonSet")
                   and d["metadata"]["name"] == "casync-agent"]
    return workload


def _agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in _agent(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    return container


def _expand(container: dict[str, Any], words: list[str]) -> list[str]:
    """$(VAR) as Kubernetes expands it in command and args, from the container's env."""
    values = {}
    for env in container.get("env", []):
        field = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field is not None:
            values[env["name"]] = FIELD_VALUES[field]
        elif "value" in env:
            values[env["name"]] = env["value"]
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], w) for w in words]


def _agent_params(container: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``casync agent`` words parsed by the real click command (an unknown flag
    or a bad value raises)."""
    words = _expand(container, [*container["command"], *container.get("args", [])])
    assert words[:2] == ["casync", "agent"], words
    with agent_command.make_context("agent", words[2:]) as ctx:
        return dict(ctx.params)


def _config_text(docs: list[dict[str, Any]]) -> str:
    (config,) = [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"].startswith("casync-config-")]
    return str(config["data"][CONFIG_MOUNT.name])


def _parsed(text: str, params: dict[str, Any]) -> AgentConfig:
    """As ``casync agent`` reads it: TOML, --replica in place of site.replica, the parser,
    then --advertise-url in place of serve.advertise_url (casync/cli/agent.py)."""
    raw = tomllib.loads(text)
    if params.get("replica") is not None:
        raw.setdefault("site", {})["replica"] = params["replica"]
    cfg = parse_config(raw, CONFIG_MOUNT)
    if params.get("advertise_url") is not None:
        cfg = dataclasses.replace(cfg, advertise_url=params["advertise_url"].rstrip("/"))
    return cfg


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_casync_toml_is_a_configuration_the_agent_accepts(overlay: str) -> None:
    docs = render(overlay)
    container = _agent_container(docs)
    params = _agent_params(container)
    assert Path(params["config_path"]) == CONFIG_MOUNT
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(CONFIG_MOUNT)]["subPath"] == CONFIG_MOUNT.name
    cfg = _parsed(_config_text(docs), params)  # raises UsageError (the agent's exit 2) on any mistake
    if overlay == "edge":
        assert cfg.replica == FIELD_VALUES["spec.nodeName"], "--replica $(NODE_NAME)"
    assert cfg.repository == Path("/data/repo") and "/data" in mounts
    token_dir = "/etc/casync/tokens"
    assert token_dir in mounts
    targets = [cfg.serve_token_file, *(cfg.token_path(p.token_file) for p in cfg.peers),
               cfg.token_path(cfg.discovery.token_file)]
    assert all(str(t).startswith(token_dir + "/") for t in targets), targets
    assert cfg.ipfs, "every site pushes to its Kubo"
    if overlay == "edge":
        assert cfg.discovery.mode == "kubernetes" and cfg.discovery.gossip
        assert cfg.advertise_url == f"http://{FIELD_VALUES['status.podIP']}:{cfg.serve_bind[1]}"
    else:
        assert params["replica"] is None and params["advertise_url"] is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_grace_period_are_the_agents(overlay: str) -> None:
    docs = render(overlay)
    workload = _agent(docs)
    container = _agent_container(docs)
    params = _agent_params(container)
    cfg = _parsed(_config_text(docs), params)
    host, _, metrics_port = params["metrics_addr"].rpartition(":")
    assert host == "0.0.0.0" and int(metrics_port) == _port(container, "metrics")
    assert cfg.serve_bind == ("0.0.0.0", _port(container, "peer")), "serve.bind is the container port 'peer'"
    routes = agent_routes(lambda: b"", lambda: None, list, lambda: None)
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes, probe
        assert get["port"] == "metrics", f"{probe}: the --metrics-addr port"
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == int(metrics_port)
    assert annotations["prometheus.io/path"] in routes
    (service,) = [s for s in objects(docs, "Service") if s["metadata"]["name"] == "casync-agent-peers"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["peer"]["port"] == cfg.serve_bind[1] and ports["metrics"]["port"] == int(metrics_port)
    if cfg.discovery.mode == "kubernetes":
        assert cfg.discovery.port == ports["peer"]["port"], "discovery asks each agent on its serve port"
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= cfg.shutdown_timeout + 10, "SIGTERM: shutdown_timeout, then closing, within the grace period"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_casync_command_in_the_manifests_is_real(overlay: str) -> None:
    """Every flag of every ``casync`` container is a parameter of its click command (the
    agent's also in ``casync agent --help``); the audit reads the agent's repository."""
    docs = render(overlay)
    cfg = _parsed(_config_text(docs), _agent_params(_agent_container(docs)))
    helptext = subprocess.run([sys.executable, "-m", "casync", "agent", "--help"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    seen = 0
    for where, template in pod_templates(docs):
        for name, container, _ in containers(template):
            words = [*container.get("command", []), *container.get("args", [])]
            if words[:1] != ["casync"]:
                continue
            seen += 1
            words = _expand(container, words)
            sub, command, rest = _command(words[1:])
            assert isinstance(command, click.Command), f"{where}/{name}: no command {sub!r}"
            with command.make_context(sub, rest):  # an unknown flag or a bad value raises
                pass
            if sub == "agent":
                for flag in (w.split("=", 1)[0] for w in rest if w.startswith("--")):
                    assert flag in helptext, f"{where}/{name}: {flag} not in 'casync agent --help'"
            if sub == "fsck":
                assert words[1:3] == ["-C", str(cfg.repository)], f"{where}: the agent's repository"
                assert "--repair" not in rest, "repair stays a person's decision"
    assert seen == 2, "the agent and the audit"


def test_the_checks_fail_on_a_config_or_flag_the_agent_does_not_know() -> None:
    """What the tests above rely on can fail: the old pre-agent keys, 'strong', an IPFS
    Cluster table with a URL that is not its REST API and an unknown flag are all refused by
    the real parser and command."""
    docs = render("single-node")
    params = _agent_params(_agent_container(docs))
    text = _config_text(docs)
    for bad in ('listen = "0.0.0.0:8000"\n', 'consistency_model = "strong"\n', 'discovery_service = "x"\n'):
        with pytest.raises(UsageError):
            _parsed(bad + text.replace('consistency_model = "eventual"\n', ""), params)
    with pytest.raises(UsageError, match="ipfs_clusters"):
        _parsed(text + '\n[ipfs_clusters.cluster]\nurl = "ipfs-cluster+http://x:9094"\n', params)
    container = dict(_agent_container(docs))
    container["command"] = [*container["command"], "--listen", "0.0.0.0:8000"]
    with pytest.raises(click.NoSuchOption):
        _agent_params(container)
