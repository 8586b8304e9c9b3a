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


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    maps = [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"].startswith("casync-config-")]
    assert len(maps) == 1, "one generated casync-config ConfigMap"
    return tomllib.loads(maps[0]["data"]["casync.toml"])


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
    assert container["command"] == AGENT_COMMAND
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_config_has_the_seed_shape_and_names_what_is_rendered(overlay: str) -> None:
    docs = render(overlay)
    config = _config(docs)
    for key in ("consistency_model", "conflict_resolution", "sync_interval", "max_sync_delay",
                "clock_skew_tolerance", "regions", "region", "remotes", "repository", "listen", "token_file"):
        assert key in config, key
    assert ("replica" in config) == (overlay != "edge"), "edge nodes take the node's name"
    regions = {r["name"]: r for r in config["regions"]}
    assert config["region"] in regions
    assert all(set(r) == {"name", "priority", "sync_peers"} for r in regions.values())
    remotes = {r["name"]: r for r in config["remotes"]}
    for peer in regions[config["region"]]["sync_peers"]:
        assert remotes[peer]["kind"] == "peer", peer
    # Token files: keys of the Secret casync-tokens, mounted at /etc/casync/tokens/.
    token_dir = "/etc/casync/tokens/"
    tokens = [config["token_file"], *(r["token_file"] for r in remotes.values() if "token_file" in r)]
    assert all(p.startswith(token_dir) for p in tokens), tokens
    example = _one(render(overlay, examples=True), "Secret", "casync-tokens")["stringData"]
    assert {p.removeprefix(token_dir) for p in tokens} <= set(example), "the example Secret lacks a token"
    hosts = _service_hosts(docs)
    urls = [r["url"] for r in remotes.values()] + config.get("strong", {}).get("etcd_endpoints", [])
    for url in urls:
        parts = urlsplit(url)
        if (parts.hostname or "").endswith(".svc.cluster.local"):
            assert parts.port in hosts.get(parts.hostname or "", set()), f"{url}: no rendered Service or pod port"
    kinds = {r["kind"] for r in remotes.values()}
    assert "ipfs" in kinds
    assert ("ipfs-cluster" in kinds) == (overlay == "cluster")
    assert config["consistency_model"] == ("strong" if overlay == "strong" else "eventual")
    if overlay == "strong":
        etcd = _one(docs, "StatefulSet", "etcd")
        assert etcd["spec"]["replicas"] == 3
        assert config["strong"]["etcd_endpoints"] == [
            f"http://etcd-{i}.etcd{CLUSTER_DOMAIN}:2379" for i in range(3)]
    if overlay == "edge":
        assert config["discovery"] == "kubernetes"
        assert config["discovery_service"] == "casync-agent-peers" + CLUSTER_DOMAIN
        assert 8000 in hosts[config["discovery_service"]]


def test_the_overlay_configs_agree_with_the_base_on_the_sync_timing() -> None:
    base = tomllib.loads((DEPLOY / "base" / "casync.toml").read_text())
    for overlay in OVERLAYS:
        config = _config(render(overlay))
        for key in ("sync_interval", "max_sync_delay", "clock_skew_tolerance", "conflict_resolution"):
            assert config[key] == base[key], f"{overlay}: {key}"


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


def _init_repo(tmp_path: Path, config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = DEPLOY / "base" / "init-repo.sh"
    bindir = str(Path(sys.executable).parent)  # casync and python3 of this environment
    environ = {"PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path), "CASYNC_CONFIG": str(config),
               "CASYNC_REPO": str(tmp_path / "data" / "repo"), **env}
    return subprocess.run(["sh", str(script)], env=environ, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("overlay", ["single-node", "edge"])
def test_the_init_container_script_initialises_the_repository_once(tmp_path: Path, overlay: str) -> None:
    config = DEPLOY / "overlays" / overlay / "casync.toml"
    expected = tomllib.loads(config.read_text()).get("replica", "edge-node-1")
    first = _init_repo(tmp_path, config, CASYNC_DEFAULT_REPLICA="edge-node-1")
    assert first.returncode == 0, first.stderr
    assert f"replica {expected}," in first.stdout
    assert (tmp_path / "data" / "repo" / ".casync").is_dir()
    again = _init_repo(tmp_path, config, CASYNC_DEFAULT_REPLICA="other")
    assert again.returncode == 0 and "already a repository" in again.stderr


def test_the_init_container_script_needs_a_replica_id(tmp_path: Path) -> None:
    done = _init_repo(tmp_path, DEPLOY / "overlays" / "edge" / "casync.toml")
    assert done.returncode == 1 and "no replica id" in done.stderr
    assert not (tmp_path / "data").exists()
