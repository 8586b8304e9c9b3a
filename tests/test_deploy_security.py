"""deploy/'s security rules, checked on every rendered overlay: the admin APIs (Kubo RPC 5001,
IPFS Cluster REST 9094, etcd clients 2379) only on ClusterIP Services whose pods a NetworkPolicy
closes to everything but the named client pods; no host networking; pinned images; containers
non-root, read-only, without capabilities, with resources and probes."""

from __future__ import annotations

import copy
import re
import tomllib
from typing import Any

import pytest

from .deploy_tools import OVERLAYS, ROOT, containers, objects, pod_templates, render

# Admin port -> the pods (app.kubernetes.io/name) allowed to reach it.
ADMIN_PORTS = {5001: {"casync", "ipfs-cluster"}, 9094: {"casync"}, 2379: {"casync", "etcd"}}
# The only container that runs as root: it chowns the edge hostPath, with CAP_CHOWN alone.
ROOT_CONTAINERS = {("edge", "DaemonSet/casync-agent", "prepare-hostpath"): ["CHOWN"]}
_PINNED = re.compile(r"^[a-z0-9./-]+:v?[0-9]+\.[0-9]+\.[0-9]+$")


def _images() -> dict[str, str]:
    """Each image deploy/ may use, with the one tag it must have."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return {"casync/casync": version, "casync/kubo": (ROOT / "ipfs" / "KUBO_VERSION").read_text().strip(),
            "casync/ipfs-cluster": "v1.1.6", "casync/etcd": "v3.6.16"}


def _container_ports(docs: list[dict[str, Any]], selector: dict[str, str]) -> dict[str, int]:
    """Named container ports of the pods a selector picks."""
    named = {}
    for _, template in pod_templates(docs):
        if selector.items() <= template["metadata"].get("labels", {}).items():
            for _, c, _ in containers(template):
                named |= {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    return named


def _admin_ports(docs: list[dict[str, Any]], svc: dict[str, Any]) -> set[int]:
    named = _container_ports(docs, svc["spec"].get("selector", {}))
    ports = set()
    for p in svc["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        ports |= {p["port"], named.get(target, 0) if isinstance(target, str) else target}
    return ports & set(ADMIN_PORTS)


def _admitted_clients(docs: list[dict[str, Any]], selector: dict[str, str], port: int) -> set[str] | None:
    """The app names admitted to PORT of the pods SELECTOR picks, over every NetworkPolicy that
    selects them; None when some rule admits any source."""
    policies = [np for np in objects(docs, "NetworkPolicy")
                if np["spec"]["podSelector"].get("matchLabels", {}).items() <= selector.items()
                and not np["spec"]["podSelector"].get("matchExpressions")]
    assert any("Ingress" in np["spec"].get("policyTypes", []) for np in policies), \
        f"no NetworkPolicy restricts ingress to the pods of {selector}"
    admitted: set[str] = set()
    for np in policies:
        for rule in np["spec"].get("ingress", []):
            rule_ports = rule.get("ports")
            if rule_ports is not None and all(p.get("port") != port for p in rule_ports):
                continue
            sources = rule.get("from")
            if not sources:
                return None
            for peer in sources:
                if set(peer) != {"podSelector"} or set(peer["podSelector"]) != {"matchLabels"}:
                    return None  # namespaceSelector, ipBlock or expressions: wider than named pods
                admitted.add(peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name", "*"))
    return admitted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_admin_apis_are_clusterip_only_and_closed_by_a_networkpolicy(overlay: str) -> None:
    docs = render(overlay)
    seen = set()
    for svc in objects(docs, "Service"):
        ports = _admin_ports(docs, svc)
        if not ports:
            continue
        spec = svc["spec"]
        where = f"Service/{svc['metadata']['name']}"
        assert spec.get("type", "ClusterIP") == "ClusterIP", f"{where} exposes {ports} beyond the cluster"
        assert not spec.get("externalIPs") and not spec.get("loadBalancerIP"), where
        for port in ports:
            admitted = _admitted_clients(docs, spec["selector"], port)
            assert admitted is not None and admitted <= ADMIN_PORTS[port], \
                f"{where}: port {port} admits {admitted or 'any source'}"
            seen.add(port)
    expected = {5001} | ({9094} if overlay == "cluster" else set()) | ({2379} if overlay == "strong" else set())
    assert seen == expected


def test_the_networkpolicy_check_catches_an_open_rpc_port() -> None:
    docs = copy.deepcopy(render("single-node"))
    (policy,) = (np for np in objects(docs, "NetworkPolicy") if np["metadata"]["name"] == "kubo")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert _admitted_clients(docs, selector, 5001) == {"casync"}
    policy["spec"]["ingress"][1]["ports"].append({"port": 5001, "protocol": "TCP"})
    assert _admitted_clients(docs, selector, 5001) is None
    policy["spec"]["ingress"] = [{"from": [{"namespaceSelector": {}}]}]
    assert _admitted_clients(docs, selector, 5001) is None
    docs.remove(policy)
    with pytest.raises(AssertionError, match="no NetworkPolicy"):
        _admitted_clients(docs, selector, 5001)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_uses_the_host_network_or_host_ports(overlay: str) -> None:
    for where, template in pod_templates(render(overlay)):
        spec = template["spec"]
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        for name, c, _ in containers(template):
            assert not any("hostPort" in p for p in c.get("ports", [])), f"{where}/{name}"
        host_paths = [v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v]
        assert host_paths == (["/opt/edge/sync-data"] if overlay == "edge" and where != "StatefulSet/kubo"
                              else []), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(overlay: str) -> None:
    pins = _images()
    used = set()
    for where, template in pod_templates(render(overlay)):
        for name, c, _ in containers(template):
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert _PINNED.match(image) and tag != "latest", f"{where}/{name}: {image} is not pinned"
            assert pins.get(repo) == tag, f"{where}/{name}: {image}, expected {repo}:{pins.get(repo)}"
            used.add(repo)
    assert {"casync/casync", "casync/kubo"} <= used


def test_the_agent_dockerfile_builds_the_pinned_python_base() -> None:
    text = (ROOT / "deploy" / "images" / "casync" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and set(bases) == {"python:3.11-slim"}
    assert re.search(r"^USER\s+10001", text, re.M), "the image runs as the uid the manifests expect"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_are_locked_down(overlay: str) -> None:
    roots = set()
    for where, template in pod_templates(render(overlay)):
        pod = template["spec"].get("securityContext", {})
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert template["spec"].get("automountServiceAccountToken") is False, where
        for name, c, _ in containers(template):
            sc = c.get("securityContext", {})
            what = f"{where}/{name}"
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("privileged"), what
            key = (overlay, where, name)
            if key in ROOT_CONTAINERS:
                assert sc["runAsUser"] == 0 and sc["capabilities"].get("add") == ROOT_CONTAINERS[key], what
                roots.add(key)
                continue
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, what
            assert sc.get("runAsUser", pod.get("runAsUser", 0)) > 0, what
            assert "add" not in sc.get("capabilities", {}), what
    assert roots == {k for k in ROOT_CONTAINERS if k[0] == overlay}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_have_resources_and_servers_have_probes(overlay: str) -> None:
    for where, template in pod_templates(render(overlay)):
        for name, c, init in containers(template):
            what = f"{where}/{name}"
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), what
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), what
            if not init and not where.startswith("CronJob/"):
                assert "readinessProbe" in c and "livenessProbe" in c, what
