"""The tools the deploy/ tests run (the pinned kustomize, promtool) and the rendered overlays.

A missing tool skips a test on a developer's machine but fails it under ``CI=1`` (or
``CASYNC_REQUIRE_TOOLS=1``): CI installs both with ``.ci/install-tools.sh``."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["DEPLOY", "KUSTOMIZE_VERSION", "NAMESPACE", "OVERLAYS", "ROOT", "containers", "kustomize_build",
           "kustomize_path", "objects", "pod_templates", "promtool_path", "render", "run_tool"]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("single-node", "cluster", "edge", "strong")
NAMESPACE = "sync-system"
KUSTOMIZE_VERSION = "v5.8.2"  # .ci/build-kustomize.sh builds this one (a test checks they agree)
TOOL_TIMEOUT = 120


def _required() -> bool:
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no")
               for v in ("CI", "CASYNC_REQUIRE_TOOLS"))


def _missing(what: str, how: str) -> None:
    msg = f"{what} not found ({how})"
    if _required():
        pytest.fail(msg + "; CI=1, so this is a failure", pytrace=False)
    pytest.skip(msg)


def kustomize_path() -> Path:
    """The kustomize binary: ``CASYNC_KUSTOMIZE_BIN``, else the cache .ci/build-kustomize.sh fills."""
    env = os.environ.get("CASYNC_KUSTOMIZE_BIN")
    cache = Path(os.environ.get("CASYNC_KUSTOMIZE_CACHE", Path.home() / ".cache/casync/kustomize"))
    path = Path(env) if env else cache / KUSTOMIZE_VERSION / "kustomize"
    if not (path.is_file() and os.access(path, os.X_OK)):
        _missing(f"kustomize {KUSTOMIZE_VERSION} at {path}", "run .ci/build-kustomize.sh")
    return path


def promtool_path() -> Path:
    """promtool: ``CASYNC_PROMTOOL_BIN``, else PATH (Debian's prometheus package: /usr/bin)."""
    found = os.environ.get("CASYNC_PROMTOOL_BIN") or shutil.which("promtool") or "promtool"
    if not (os.path.isfile(found) and os.access(found, os.X_OK)):
        _missing(f"promtool ({found})", "run .ci/install-tools.sh (Debian package prometheus)")
    return Path(found)


def run_tool(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion (bounded); the caller checks the exit code."""
    return subprocess.run([os.fspath(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, check=False)


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build DIRECTORY`` as a list of objects; a failed build fails the test."""
    done = run_tool(kustomize_path(), "build", directory)
    assert done.returncode == 0, f"kustomize build {directory} failed:\n{done.stderr}"
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), f"kustomize build {directory}: no objects"
    return docs


def objects(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d.get("kind") == kind)


@functools.cache
def _render(overlay: str, examples: bool) -> tuple[dict[str, Any], ...]:
    if not examples:
        return tuple(kustomize_build(DEPLOY / "overlays" / overlay))
    # The overlay plus the example Secrets, through a throwaway kustomization (kustomize takes
    # only relative paths to other kustomizations).
    with tempfile.TemporaryDirectory(prefix="casync-kustomize-") as tmp:
        def rel(path: Path) -> str:
            return os.path.relpath(path, tmp)

        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [rel(DEPLOY / "overlays" / overlay)],
            "components": [rel(DEPLOY / "components" / "example-secrets")]}))
        return tuple(kustomize_build(Path(tmp)))


def render(overlay: str, *, examples: bool = False) -> list[dict[str, Any]]:
    """The objects of one overlay (rendered once per test session), optionally with the example
    Secrets of deploy/components/example-secrets."""
    return list(_render(overlay, examples))


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("Kind/name", pod template) of every workload: its metadata (labels) and spec."""
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("StatefulSet", "DaemonSet", "Deployment", "ReplicaSet", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", spec["template"]
        elif d["kind"] == "CronJob":
            yield f"CronJob/{d['metadata']['name']}", spec["jobTemplate"]["spec"]["template"]


def containers(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(name, container, is_init) of one pod template."""
    spec = template["spec"]
    for c in spec.get("initContainers", []):
        yield c["name"], c, True
    for c in spec.get("containers", []):
        yield c["name"], c, False
