"""deploy/: every overlay renders with the pinned kustomize and every object it renders is valid,
offline and strictly (unknown fields rejected), against the Kubernetes schemas of the
``kubernetes-validate`` package; the Prometheus Operator's objects, which those schemas do not
cover, against the structural schemas of tests/deploy_schemas.py. Then what the objects say is
checked against each other: configuration, volumes, selectors, the agent's command."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest

from .deploy_schemas import CRD_SCHEMAS
from .deploy_tools import (
    DEPLOY,
    KUSTOMIZE_VERSION,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    containers,
    objects,
    pod_templates,
    render,
)

# A recent Kubernetes (kubernetes-validate ships v1.25-v1.37); the StatefulSet pod-index label
# the cluster overlay reads needs >= 1.28.
K8S_VERSION = "1.35"
AGENT_COMMAND = ["casync", "agent", "--config", "/etc/casync/casync.toml", "--metrics-addr", "0.0.0.0:9464"]
OPERATOR_SECRETS = {"casync-tokens", "ipfs-cluster-secret"}
CLUSTER_DOMAIN = f".{NAMESPACE}.svc.cluster.local"
HUB_OVERLAYS = tuple(o for o in OVERLAYS if o != "edge")


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _config_text(docs: list[dict[str, Any]]) -> str:
    maps = [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"].startswith("casync-config-")]
    assert len(maps) == 1, "one generated casync-config ConfigMap"
    return str(maps[0]["data"]["casync.toml"])


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(_config_text(docs))


def test_the_kustomize_version_is_the_one_the_build_script_builds() -> None:
    script = (ROOT / ".ci" / "build-kustomize.sh").read_text()
    assert f'version="${{CASYNC_KUSTOMIZE_VERSION:-{KUSTOMIZE_VERSION}}}"' in script


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("examples", [False, True], ids=["as-shipped", "with-example-secrets"])
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(overlay: str, examples: bool) -> None:
    docs = render(overlay, examples=examples)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "StatefulSet", "Service", "NetworkPolicy", "ConfigMap", "CronJob",
            "PrometheusRule", "ServiceMonitor"} <= kinds
    assert checked == len(docs)
    secrets = {d["metadata"]["name"] for d in objects(docs, "Secret")}
    assert secrets == (OPERATOR_SECRETS if examples else set()), "Secrets come from the operator only"


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validation above can fail: an unknown field, or a mistyped one, is an error."""
    sts = copy.deepcopy(_one(render("single-node"), "StatefulSet", "kubo"))
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    sts["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    for doc in (d for d in render("single-node") if d["kind"] in CRD_SCHEMAS):
        bad = copy.deepcopy(doc)
        bad["spec"]["unknownField"] = 1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, CRD_SCHEMAS[doc["kind"]])


def test_the_crd_schemas_check_the_rule_fields() -> None:
    rule = copy.deepcopy(_one(render("single-node"), "PrometheusRule", "casync-alerts"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, CRD_SCHEMAS["PrometheusRule"])
    monitor = copy.deepcopy(_one(render("single-node"), "ServiceMonitor", "casync-agent"))
    monitor["spec"]["endpoints"][0]["port"] = 9464
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, CRD_SCHEMAS["ServiceMonitor"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_the_namespace(overlay: str) -> None:
    docs = render(overlay)
    assert [d["metadata"]["name"] for d in objects(docs, "Namespace")] == [NAMESPACE]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, _name(doc)
    enforce = _one(docs, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert enforce == ("privileged" if overlay == "edge" else "restricted")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubo_is_a_statefulset_with_the_production_settings(overlay: str) -> None:
    docs = render(overlay)
    sts = _one(docs, "StatefulSet", "kubo")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"casync/kubo:{(ROOT / 'ipfs' / 'KUBO_VERSION').read_text().strip()}"
    assert "command" not in container, "the image's entrypoint applies ipfs/config/configure.sh"
    assert "--enable-gc" in container["args"], "without it StorageMax is never enforced"
    env = {e["name"]: e for e in container["env"]}
    assert env["IPFS_PATH"]["value"] == "/data/ipfs"
    api = env["CASYNC_KUBO_API_ADDRS"]["value"].split()
    assert "/ip4/127.0.0.1/tcp/5001" in api and not any("/0.0.0.0/" in a or "/::/" in a for a in api)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data/ipfs"} in container["volumeMounts"]
    assert container["readinessProbe"] and container["livenessProbe"]
    expected_replicas = {"cluster": 3}.get(overlay, 1)
    assert sts["spec"]["replicas"] == expected_replicas
    if overlay != "single-node":  # the seed's cas-storage
        assert container["resources"] == {"requests": {"memory": "512Mi", "cpu": "250m"},
                                          "limits": {"memory": "1Gi", "cpu": "500m"}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_runs_the_agent_command_with_its_config_and_tokens(overlay: str) -> None:
    docs = render(overlay)
    kind = "DaemonSet" if overlay == "edge" else "StatefulSet"
    agent = _one(docs, kind, "casync-agent")
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "DaemonSet") and d is not agent
                and d["metadata"]["name"] == "casync-agent"], "one agent workload"
    spec = agent["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"][:len(AGENT_COMMAND)] == AGENT_COMMAND
    extra = container["command"][len(AGENT_COMMAND):]
    assert extra == (["--replica", "$(NODE_NAME)", "--advertise-url", "http://$(POD_IP):8000"]
                     if overlay == "edge" else [])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"peer": 8000, "metrics": 9464}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/casync/tokens"]["name"]]["secret"]["secretName"] == "casync-tokens"
    config_map = volumes[mounts["/etc/casync/casync.toml"]["name"]]["configMap"]["name"]
    assert config_map in {d["metadata"]["name"] for d in objects(docs, "ConfigMap")}
    data = mounts["/data"]["name"]
    if overlay == "edge":
        assert volumes[data]["hostPath"] == {"path": "/opt/edge/sync-data", "type": "DirectoryOrCreate"}
    else:
        assert data not in volumes
        assert [c["metadata"]["name"] for c in agent["spec"]["volumeClaimTemplates"]] == [data]
        assert agent["spec"]["replicas"] == 1, "one agent per site: the config names one replica"
    headless = _one(docs, "Service", "casync-agent-peers")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert agent["spec"]["template"]["metadata"]["labels"].items() >= headless["spec"]["selector"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_configmap_and_claim_exists(overlay: str) -> None:
    docs = render(overlay)
    maps = {d["metadata"]["name"] for d in objects(docs, "ConfigMap")}
    claims = {f"{t['metadata']['name']}-{s['metadata']['name']}-{i}"
              for s in objects(docs, "StatefulSet") for t in s["spec"].get("volumeClaimTemplates", [])
              for i in range(s["spec"]["replicas"])}
    for where, template in pod_templates(docs):
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, f"{where}: {volume}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{where}: {volume}"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in OPERATOR_SECRETS, f"{where}: {volume}"
        for _, container, _ in containers(template):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] in OPERATOR_SECRETS, f"{where}: {env}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_audit_cronjob_checks_the_agents_repository(overlay: str) -> None:
    docs = render(overlay)
    job = _one(docs, "CronJob", "casync-audit")
    template = job["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["casync", "-C", "/data/repo", "fsck", "--json"]
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "casync"
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    data = volumes[next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/data")]
    if overlay == "edge":
        assert data["hostPath"]["path"] == "/opt/edge/sync-data"
        agent = _one(docs, "DaemonSet", "casync-agent")["spec"]["template"]["spec"]
        term = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (expr,) = term["nodeSelectorTerms"][0]["matchExpressions"]
        assert expr["operator"] == "In" and agent["nodeSelector"][expr["key"]] in expr["values"]
    else:
        agent = _one(docs, "StatefulSet", "casync-agent")
        (claim,) = agent["spec"]["volumeClaimTemplates"]
        assert data["persistentVolumeClaim"]["claimName"] == f"{claim['metadata']['name']}-casync-agent-0"
        (term,) = template["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        labels = agent["spec"]["template"]["metadata"]["labels"]
        assert term["labelSelector"]["matchLabels"].items() <= labels.items()


def _service_hosts(docs: list[dict[str, Any]]) -> dict[str, set[int]]:
    """Every in-cluster DNS name the render gives, with the ports behind it: a Service's name and
    its ports, and for the headless Service governing a StatefulSet, each pod's name and the
    pod's container ports."""
    hosts: dict[str, set[int]] = {}
    for svc in objects(docs, "Service"):
        name = svc["metadata"]["name"]
        hosts[name + CLUSTER_DOMAIN] = {p["port"] for p in svc["spec"]["ports"]}
        for sts in objects(docs, "StatefulSet"):
            if sts["spec"]["serviceName"] == name and svc["spec"].get("clusterIP") == "None":
                ports = {p["containerPort"] for _, c, _ in containers(sts["spec"]["template"])
                         for p in c.get("ports", [])}
                for i in range(sts["spec"]["replicas"]):
                    hosts[f"{sts['metadata']['name']}-{i}.{name}{CLUSTER_DOMAIN}"] = ports
    return hosts


_URL = re.compile(r"""["'](\w[\w+.-]*://[^"'\s]+)["']""")
FLEET_OVERLAYS = tuple(o for o in OVERLAYS if o != "single-node")  # the sites of the one example fleet


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_config_has_the_seed_shape_and_names_what_is_rendered(overlay: str) -> None:
    """casync.toml in the agent's format (docs/configuration.md; tests/test_deploy_agent.py
    parses it with the agent's own parser): the seed's keys, tokens that are keys of the
    Secret, and every in-cluster URL in it, commented-out ones too, a rendered Service or pod
    with that port."""
    docs = render(overlay)
    config = _config(docs)
    for key in ("consistency_model", "conflict_resolution", "sync_interval", "max_sync_delay",
                "clock_skew_tolerance", "site", "serve", "ipfs", "discovery"):
        assert key in config, key
    site = config["site"]
    assert site["repository"] == "/data/repo"
    assert ("replica" in site) == (overlay != "edge"), "edge nodes take the node's name (--replica)"
    regions = {r["name"]: r for r in config.get("regions", [])}
    assert (overlay == "single-node") == (not regions), "a fleet site has the fleet's regions"
    peers = config.get("peers", {})
    for name, peer in peers.items():
        assert peer["region"] in regions, name
    if regions:
        mine = regions[site["region"]]
        assert {p["region"] for p in peers.values()} <= {mine["name"], *mine["sync_peers"]}, "peers it syncs with"
    # Token files: keys of the Secret casync-tokens, mounted at /etc/casync/tokens/.
    token_dir = "/etc/casync/tokens/"
    tokens = [config["serve"]["token_file"], *(p["token_file"] for p in peers.values() if "token_file" in p)]
    assert all(p.startswith(token_dir) for p in tokens), tokens
    example = _one(render(overlay, examples=True), "Secret", "casync-tokens")["stringData"]
    assert {p.removeprefix(token_dir) for p in tokens} <= set(example), "the example Secret lacks a token"
    hosts = _service_hosts(docs)
    text = _config_text(docs)
    urls = _URL.findall(text)
    assert len(urls) >= 2
    for url in urls:
        parts = urlsplit(url)
        if (parts.hostname or "").endswith(".svc.cluster.local"):
            assert parts.port in hosts.get(parts.hostname or "", set()), f"{url}: no rendered Service or pod port"
    assert config["consistency_model"] == ("strong" if overlay == "strong" else "eventual")
    if overlay == "cluster":  # pins through the cluster's REST API Service, for the node blocks go to
        [cluster] = config["ipfs_clusters"].values()
        assert cluster["ipfs"] in config["ipfs"] and 1 <= cluster["replication_min"] <= cluster["replication_max"]
    else:
        assert "ipfs_clusters" not in config
    if overlay == "strong":
        etcd = _one(docs, "StatefulSet", "etcd")
        assert etcd["spec"]["replicas"] == 3
        # the agent's [strong] table names each member, and the Kubo node every site reads blocks from
        assert config["strong"]["etcd_endpoints"] == [f"http://etcd-{i}.etcd{CLUSTER_DOMAIN}:2379" for i in range(3)]
        assert config["strong"]["blocks_remote"] in config["ipfs"]
    if overlay == "cluster":
        assert config["ipfs_clusters"]["cluster"]["url"] == f"http://ipfs-cluster-api{CLUSTER_DOMAIN}:9094"
    if overlay == "edge":
        discovery = config["discovery"]
        assert discovery["mode"] == "kubernetes" and discovery["gossip"] is True
        assert discovery["service"] == "casync-agent-peers" + CLUSTER_DOMAIN
        assert discovery["port"] in hosts[discovery["service"]]


def test_the_overlay_configs_agree_with_the_base_on_the_sync_timing_and_the_fleet() -> None:
    base = tomllib.loads((DEPLOY / "base" / "casync.toml").read_text())
    for overlay in OVERLAYS:
        config = _config(render(overlay))
        for key in ("sync_interval", "max_sync_delay", "clock_skew_tolerance", "conflict_resolution",
                    "shutdown_timeout"):
            assert config[key] == base[key], f"{overlay}: {key}"
        if overlay in FLEET_OVERLAYS:  # one regions table for the fleet: every site merges alike
            assert config["regions"] == base["regions"], overlay


def test_the_cluster_peers_pair_with_their_kubo_nodes() -> None:
    docs = render("cluster")
    cluster = _one(docs, "StatefulSet", "ipfs-cluster")
    assert cluster["spec"]["replicas"] == _one(docs, "StatefulSet", "kubo")["spec"]["replicas"] == 3
    (container,) = cluster["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    secret = env["CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "ipfs-cluster-secret", "key": "cluster-secret"}
    assert env["CLUSTER_IPFSHTTP_NODEMULTIADDRESS"]["value"] == f"/dns4/kubo-$(POD_INDEX).kubo{CLUSTER_DOMAIN}/tcp/5001"
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert re.fullmatch(r"/ip4/\$\(POD_IP\)/tcp/9094", env["CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS"]["value"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_reference_names_an_earlier_variable(overlay: str) -> None:
    """Kubernetes expands $(NAME) in env values, command and args only for variables defined
    before it in the container's env; anything else stays literal text."""
    for where, template in pod_templates(render(overlay)):
        for name, container, _ in containers(template):
            defined: set[str] = set()
            for env in container.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    assert ref in defined, f"{where}/{name}: {env['name']} uses $({ref}) before it is set"
                defined.add(env["name"])
            for arg in [*container.get("command", []), *container.get("args", [])]:
                for ref in re.findall(r"\$\((\w+)\)", arg):
                    assert ref in defined, f"{where}/{name}: {arg} uses $({ref}), which is not set"


def _init_repo(tmp_path: Path, overlay: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/base/init-repo.sh for real on the overlay's rendered casync.toml, its
    site.repository moved into ``tmp_path``."""
    text = _config_text(render(overlay))
    assert 'repository = "/data/repo"' in text
    config = tmp_path / "casync.toml"
    config.write_text(text.replace('repository = "/data/repo"', f'repository = "{tmp_path / "data" / "repo"}"'))
    script = DEPLOY / "base" / "init-repo.sh"
    bindir = str(Path(sys.executable).parent)  # casync and python3 of this environment
    environ = {"PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path), "CASYNC_CONFIG": str(config), **env}
    return subprocess.run(["sh", str(script)], env=environ, capture_output=True, text=True, timeout=60, check=False)


def _init_env(overlay: str) -> dict[str, str]:
    """The init container's plain variables (fieldRefs: a node name for spec.nodeName)."""
    docs = render(overlay)
    agent = _one(docs, "DaemonSet" if overlay == "edge" else "StatefulSet", "casync-agent")
    (init,) = [c for c in agent["spec"]["template"]["spec"]["initContainers"] if c["name"] == "init-repo"]
    env = {}
    for e in init.get("env", []):
        if e["name"] == "HOME":
            continue
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = "edge-node-1" if field == "spec.nodeName" else e["value"]
    return env


def _agent_accepts(tmp_path: Path, replica: str) -> None:
    """The agent opens what init-repo.sh made (its replica id and branch are the config's)."""
    from casync.agent.config import load_config
    from casync.agent.logs import AgentLog
    from casync.agent.runner import Agent

    agent = Agent(load_config(tmp_path / "casync.toml", {"replica": replica}), AgentLog("json", sys.stderr))
    agent.open(serving=False)
    assert agent.close()


@pytest.mark.parametrize("overlay", HUB_OVERLAYS)
def test_the_init_container_script_makes_the_first_sites_repository_once(tmp_path: Path, overlay: str) -> None:
    env = _init_env(overlay)
    assert env == {"CASYNC_FIRST_SITE": "true"}, "the base's hub is the fleet's first site"
    replica = tomllib.loads(_config_text(render(overlay)))["site"]["replica"]
    first = _init_repo(tmp_path, overlay, **env)
    assert first.returncode == 0, first.stderr
    assert f"replica {replica}," in first.stdout
    assert (tmp_path / "data" / "repo" / ".casync").is_dir()
    _agent_accepts(tmp_path, replica)
    again = _init_repo(tmp_path, overlay, **env)
    assert again.returncode == 0 and "already a repository" in again.stderr


def test_a_site_with_nothing_to_clone_from_makes_its_repository(tmp_path: Path) -> None:
    first = _init_repo(tmp_path, "single-node")  # no CASYNC_FIRST_SITE: no peers, static discovery
    assert first.returncode == 0 and "replica single-node," in first.stdout, first.stderr
    _agent_accepts(tmp_path, "single-node")


@pytest.mark.parametrize("overlay", ["edge", "strong"])
def test_other_sites_leave_the_repository_to_the_agents_clone(tmp_path: Path, overlay: str) -> None:
    """An edge node (and a hub not the fleet's first) must not make a repository of its own:
    it would be unrelated to the fleet's and refuse to sync; the agent clones it from a peer."""
    env = {**_init_env(overlay), "CASYNC_FIRST_SITE": "false"}
    done = _init_repo(tmp_path, overlay, **env)
    assert done.returncode == 0, done.stderr
    assert "the agent clones it from a peer" in done.stderr
    if overlay == "edge":
        assert "as replica edge-node-1" in done.stderr, "CASYNC_REPLICA is the node's name"
    assert not (tmp_path / "data").exists()


def test_the_init_container_script_needs_a_replica_id(tmp_path: Path) -> None:
    done = _init_repo(tmp_path, "edge", CASYNC_FIRST_SITE="true")
    assert done.returncode == 1 and "casync-init: error: casync.toml: site.replica" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()
