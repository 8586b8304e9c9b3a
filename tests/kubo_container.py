"""Kubo in the ``casync/kubo:<version>`` image (``deploy/images/kubo``) through testcontainers.

Pure helper module, no pytest fixtures. The image is built locally (FROM scratch, nothing is
pulled) by ``deploy/images/kubo/build.sh``; a container runs on the host network with its RPC API
and gateway on free 127.0.0.1 ports, so it is reached exactly like a node from ``kubo_node``::

    with KuboContainer() as c:
        c.api_url, c.gateway_url, c.config()["Gateway"]["NoFetch"]

The image applies the production settings of ``ipfs/config/configure.sh`` at every start.
``TEST_ENV`` adds what keeps a test container on loopback: the ``test`` init profile (loopback
swarm, no bootstrap peers, no AutoConf, no MDNS) and no routing. Needs a Docker engine
(``DOCKER_HOST``; ``.ci/docker.sh start DIR`` starts a private one).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from casync.store.ipfs_auth import auth_headers

from .kubo_node import BUILD_TIMEOUT, KUBO_VERSION, REPO_ROOT, START_TIMEOUT, KuboError

IMAGE = f"casync/kubo:{KUBO_VERSION}"
IMAGE_BUILD_SCRIPT = REPO_ROOT / "deploy" / "images" / "kubo" / "build.sh"

# Nothing here may leave loopback: no bootstrap peers, DHT, AutoConf or MDNS (on top of the
# production settings, which would join the public network).
TEST_ENV = {"CASYNC_KUBO_INIT_PROFILE": "server,test", "CASYNC_KUBO_ROUTING_TYPE": "none"}

# No Ryuk reaper: its image would be pulled, and no registry is reachable. Containers are
# removed by KuboContainer.stop (fixtures call it in finally) and with the engine.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers on DOCKER_HOST (or the default socket), else why not."""
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return "no Docker engine: DOCKER_HOST is not set and /var/run/docker.sock does not exist"
    try:
        import docker  # type: ignore[import-untyped]  # installed with testcontainers
    except ImportError:
        return "the docker package (testcontainers) is not installed"
    try:
        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # docker raises several unrelated types for "no engine"
        return f"no Docker engine answers at {os.environ.get('DOCKER_HOST', '/var/run/docker.sock')}: {exc}"
    return None


def docker_available() -> bool:
    """True if a Docker engine answers."""
    return docker_unavailable_reason() is None


@functools.cache
def kubo_image() -> str:
    """The ``casync/kubo`` tag, built (or found up to date) by deploy/images/kubo/build.sh."""
    try:
        proc = subprocess.run(["bash", str(IMAGE_BUILD_SCRIPT)], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise KuboError(f"{IMAGE_BUILD_SCRIPT} timed out") from exc
    if proc.returncode != 0:
        raise KuboError(f"{IMAGE_BUILD_SCRIPT} failed (exit {proc.returncode}): "
                        f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
    tag = proc.stdout.decode().strip().splitlines()[-1]
    if tag != IMAGE:
        raise KuboError(f"{IMAGE_BUILD_SCRIPT} built {tag!r}, expected {IMAGE!r}")
    return tag


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the container binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KuboContainer:
    """A running ``casync/kubo`` container on the host network, API and gateway on loopback.

    ``env`` adds to (and overrides) ``TEST_ENV``; the API and gateway addresses are chosen here
    unless given. Started on construction unless ``start=False``; stop with :meth:`stop`.
    """

    def __init__(self, env: dict[str, str] | None = None, *, start: bool = True) -> None:
        self.extra_env = dict(env or {})
        self.api_url: str | None = None
        self.gateway_url: str | None = None
        self._container: Any = None
        self._env: dict[str, str] = {}
        if start:
            self.start()

    @property
    def env(self) -> dict[str, str]:
        """The environment the container was started with."""
        return dict(self._env)

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self._env.get("CASYNC_KUBO_API_AUTH", ""))

    def start(self, attempts: int = 3) -> KuboContainer:
        last: Exception | None = None
        for _ in range(attempts):  # a chosen port can be taken before the container binds it
            try:
                return self._start_once()
            except KuboError as exc:
                last = exc
                self.stop()
        assert last is not None
        raise last

    def _start_once(self) -> KuboContainer:
        from testcontainers.core.container import DockerContainer

        image = kubo_image()
        api_port, gateway_port = free_port(), free_port()
        while gateway_port == api_port:
            gateway_port = free_port()
        self._env = {"CASYNC_KUBO_API_ADDRS": f"/ip4/127.0.0.1/tcp/{api_port}",
                     "CASYNC_KUBO_GATEWAY_ADDRS": f"/ip4/127.0.0.1/tcp/{gateway_port}",
                     **TEST_ENV, **self.extra_env}
        container = DockerContainer(image).with_kwargs(network_mode="host")
        for name, value in self._env.items():
            container.with_env(name, value)
        self._client().images.get(image)  # present locally: start() would otherwise pull it
        container.start()
        self._container = container
        self.api_url = _http_url(self._env["CASYNC_KUBO_API_ADDRS"])
        self.gateway_url = _http_url(self._env["CASYNC_KUBO_GATEWAY_ADDRS"])
        self._wait_ready()
        return self

    def _client(self) -> Any:
        import docker

        return docker.from_env()

    def _wrapped(self) -> Any:
        assert self._container is not None, "container not started"
        return self._container.get_wrapped_container()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.rpc("id", timeout=5)
                return
            except (OSError, urllib.error.URLError) as exc:
                wrapped = self._wrapped()
                wrapped.reload()
                if wrapped.status not in ("created", "running"):
                    raise KuboError(f"{IMAGE} container exited ({wrapped.status}):\n{self.logs()}") from exc
                if time.monotonic() > deadline:
                    raise KuboError(f"{IMAGE} API {self.api_url} not up within {START_TIMEOUT}s:\n"
                                    f"{self.logs()}") from exc
            time.sleep(0.2)

    def restart(self) -> KuboContainer:
        """Stop and start the same container (same repo volume, same ports)."""
        self._wrapped().restart(timeout=30)
        self._wait_ready()
        return self

    def stop(self) -> None:
        """Remove the container and its volume (idempotent)."""
        container, self._container = self._container, None
        self.api_url = self.gateway_url = None
        if container is not None:
            container.stop()

    def pid(self) -> int:
        """The host PID of the container's main process (Kubo, which the entrypoint exec'd)."""
        wrapped = self._wrapped()
        wrapped.reload()
        return int(wrapped.attrs["State"]["Pid"])

    def logs(self) -> str:
        return bytes(self._wrapped().logs()).decode(errors="replace")

    def rpc(self, command: str, *args: str, timeout: float = 30, **options: str) -> Any:
        """POST ``/api/v0/<command>?arg=...&option=...`` and decode the JSON answer."""
        assert self.api_url is not None, "container not started"
        query = urllib.parse.urlencode([("arg", a) for a in args] + list(options.items()))
        request = urllib.request.Request(f"{self.api_url}/api/v0/{command}" + (f"?{query}" if query else ""),
                                         method="POST", headers=self.headers)
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())

    def config(self) -> dict[str, Any]:
        """The node's whole config as its RPC API reports it (``config/show``)."""
        cfg = self.rpc("config/show")
        assert isinstance(cfg, dict)
        return cfg

    def __enter__(self) -> KuboContainer:
        return self if self.api_url else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KuboContainer({IMAGE!r}, api={self.api_url!r})"


def run_to_exit(env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run the image with ``env`` (on top of TEST_ENV) until it exits: (exit code, output)."""
    import docker

    client = docker.from_env()
    try:
        image = kubo_image()
        client.images.get(image)
        container = client.containers.run(image, detach=True, network_mode="host",
                                          environment={**TEST_ENV, **env})
        try:
            code = container.wait(timeout=timeout)["StatusCode"]
            return int(code), bytes(container.logs()).decode(errors="replace")
        finally:
            container.remove(force=True, v=True)
    finally:
        client.close()


def _http_url(multiaddrs: str) -> str:
    """``/ip4/127.0.0.1/tcp/N`` (the first of a list) -> ``http://127.0.0.1:N``."""
    parts = multiaddrs.split()[0].strip("/").split("/")
    if len(parts) != 4 or parts[0] != "ip4" or parts[2] != "tcp":
        raise KuboError(f"expected /ip4/HOST/tcp/PORT, got {multiaddrs!r}")
    return f"http://{parts[1]}:{parts[3]}"


__all__ = ["IMAGE", "TEST_ENV", "KuboContainer", "docker_available", "docker_unavailable_reason", "free_port",
           "kubo_image", "run_to_exit"]
