"""Pytest plugin: real Kubo (IPFS) nodes for the ``@pytest.mark.kubo`` tests.

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.kubo_fixture"]``.

``kubo`` (session scope) is one node, from the first source that works:

1. ``CASYNC_TEST_IPFS_API`` (and optionally ``CASYNC_TEST_IPFS_GATEWAY``): an existing node;
2. the pinned local Kubo binary (``ipfs/build-kubo.sh``; ``CASYNC_KUBO_BIN`` overrides):
   a fresh node for this session on random 127.0.0.1 ports (``tests/kubo_node.py``);
3. the ``casync/kubo:<pinned version>`` image (``deploy/images/kubo``, built locally) through
   testcontainers, where a Docker engine answers (``tests/kubo_container.py``).

``CASYNC_KUBO_BACKEND`` selects: ``native`` (2 only), ``testcontainers`` (3 only: CI's second
Kubo run), unset/``auto`` (2, else 3). With ``testcontainers`` the tests that start their own
native nodes (``kubo_factory``) are deselected: they already ran on the native binary.

``kubo_factory`` starts extra throwaway nodes (local binary only), e.g. for two-node
tests or to kill a node mid-push; ``kubo_container_factory`` starts ``casync/kubo`` containers
with a given environment. Every node they start is stopped at the end.

When no source works the tests are skipped with the reasons, except when
``CASYNC_REQUIRE_KUBO=1`` or ``CI`` is set (CI sets both): then a missing Kubo or Docker engine
fails them.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from . import kubo_container, kubo_node
from .kubo_container import KuboContainer
from .kubo_node import KuboError, KuboNode

BACKENDS = ("auto", "native", "testcontainers")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _required() -> bool:
    return _truthy("CASYNC_REQUIRE_KUBO") or _truthy("CI")


def backend() -> str:
    """The Kubo source the ``kubo`` fixture uses (``CASYNC_KUBO_BACKEND``)."""
    value = os.environ.get("CASYNC_KUBO_BACKEND", "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise pytest.UsageError(f"CASYNC_KUBO_BACKEND={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def _unavailable(reasons: list[str]) -> None:
    msg = "no Kubo node available: " + "; ".join(reasons)
    if _required():
        pytest.fail(msg + " (CI or CASYNC_REQUIRE_KUBO=1 is set, so this is a failure)", pytrace=False)
    pytest.skip(msg)


def api_multiaddr(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    proto = "ip6" if ":" in host else "ip4" if host.replace(".", "").isdigit() else "dns"
    return f"/{proto}/{host}/tcp/{parts.port}"


@dataclass
class Kubo:
    """A reachable Kubo node: its RPC API and gateway URLs, and how it was obtained."""

    api_url: str
    gateway_url: str | None
    source: str
    node: KuboNode | None = None
    container: KuboContainer | None = None
    _extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api_port(self) -> int:
        port = urllib.parse.urlsplit(self.api_url).port
        assert port is not None
        return port

    @property
    def remote_url(self) -> str:
        """The casync remote URL for this node."""
        return "ipfs+" + self.api_url

    def ipfs(self, *args: str | os.PathLike[str], input: bytes | None = None, timeout: float = 120) -> bytes:
        """Run the ``ipfs`` CLI against this node's API (``--api``); needs the local binary."""
        binary = kubo_node.kubo_binary()
        return kubo_node._run([binary, "--api", api_multiaddr(self.api_url), *args], input=input,
                              timeout=timeout, what="ipfs " + " ".join(map(str, args)))

    def gateway_get(self, path: str, timeout: float = 30) -> bytes:
        assert self.gateway_url, f"{self.source} node has no gateway URL"
        with urllib.request.urlopen(self.gateway_url.rstrip("/") + path, timeout=timeout) as resp:
            return bytes(resp.read())


def _local_binary(reasons: list[str]) -> str | None:
    try:
        binary = kubo_node.kubo_binary()
    except (KuboError, OSError) as exc:
        reasons.append(f"local Kubo binary unavailable ({str(exc).splitlines()[0][:200]})")
        return None
    if not os.access(binary, os.X_OK):
        reasons.append(f"local Kubo binary {binary} is not an executable file")
        return None
    return binary


@pytest.fixture(scope="session")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubo]:
    reasons: list[str] = []
    api = os.environ.get("CASYNC_TEST_IPFS_API")
    if api:
        yield Kubo(api.rstrip("/"), os.environ.get("CASYNC_TEST_IPFS_GATEWAY"), "CASYNC_TEST_IPFS_API")
        return
    reasons.append("CASYNC_TEST_IPFS_API is not set")
    chosen = backend()
    if chosen != "testcontainers" and _local_binary(reasons) is not None:
        node = KuboNode(tmp_path_factory.mktemp("kubo-session"))
        try:
            assert node.api_url is not None
            yield Kubo(node.api_url, node.gateway_url, "local binary", node)
        finally:
            node.stop()
        return
    if chosen != "native":
        why = kubo_container.docker_unavailable_reason()
        if why is None:
            container = KuboContainer()
            try:
                assert container.api_url is not None
                yield Kubo(container.api_url, container.gateway_url, "testcontainers", container=container)
            finally:
                container.stop()
            return
        reasons.append(f"testcontainers: {why}")
    _unavailable(reasons)


@pytest.fixture
def kubo_container_factory() -> Iterator[Callable[..., KuboContainer]]:
    """Start ``casync/kubo`` containers with extra environment (each removed after the test)."""
    why = kubo_container.docker_unavailable_reason()
    if why is not None:
        _unavailable([f"testcontainers: {why}"])
    started: list[KuboContainer] = []

    def start(env: dict[str, str] | None = None) -> KuboContainer:
        container = KuboContainer(env, start=False)
        started.append(container)
        return container.start()

    try:
        yield start
    finally:
        for container in started:
            container.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``CASYNC_KUBO_BACKEND=testcontainers``, drop the tests that start native nodes."""
    if backend() != "testcontainers":
        return
    native = [it for it in items if "kubo_factory" in getattr(it, "fixturenames", ())]
    if native:
        config.hook.pytest_deselected(items=native)
        dropped = {id(it) for it in native}
        items[:] = [it for it in items if id(it) not in dropped]


@pytest.fixture
def kubo_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Kubo]]:
    """Start fresh local nodes on demand (each stopped after the test)."""
    started: list[KuboNode] = []
    reasons: list[str] = []
    if _local_binary(reasons) is None:
        _unavailable([*reasons, "this test starts its own nodes, which needs the local binary"])

    def start() -> Kubo:
        node = KuboNode(tmp_path_factory.mktemp("kubo"))
        started.append(node)
        assert node.api_url is not None
        return Kubo(node.api_url, node.gateway_url, "local binary", node)

    try:
        yield start
    finally:
        errors = []
        for node in started:
            try:
                node.stop()
            except KuboError as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


def restart(k: Kubo) -> Kubo:
    """Start a stopped factory node again (same repository; same ports when they are free)."""
    assert k.node is not None
    k.node.start()
    assert k.node.api_url is not None
    k.api_url, k.gateway_url = k.node.api_url, k.node.gateway_url
    return k


__all__ = ["Kubo", "api_multiaddr", "backend", "kubo", "kubo_container_factory", "kubo_factory", "restart"]
