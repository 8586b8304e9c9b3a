"""The agent's operator port (``--metrics-addr``, loopback by default): ``/`` (the status page,
:mod:`casync.agent.page`), ``/metrics`` (Prometheus text), ``/healthz`` (the process answers),
``/readyz`` (503 with the reasons while a peer is overdue or the peer server is down),
``/status.json`` (the same facts as the page, as JSON).  Reading them changes nothing, so no token."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST

from casync.agent.page import CONTENT_SECURITY_POLICY, render_page, render_status_json

__all__ = ["OperatorServer", "Routes", "agent_routes"]

Routes = dict[str, Callable[[], tuple[int, str, bytes]]]


def json_reply(status: int, value: Any) -> tuple[int, str, bytes]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return status, "application/json", json.dumps(value, indent=1).encode()


def metrics_reply(text: bytes) -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, text


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[Routes] = {}
    server_version = "casync-agent"

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            status, kind, body = route()
        except Exception:  # a bug: answer 500, and the server logs it (the port stays up)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")
            raise
        self._send(status, kind, body)

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if kind.startswith("text/html"):  # the page asks for nothing; the browser is told to allow nothing
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s would flood the log
        return


class OperatorServer:
    """A small threaded HTTP server on its own thread."""

    def __init__(self, host: str, port: int, routes: Routes) -> None:
        handler = type("Handler", (_Handler,), {"routes": routes})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.address: tuple[str, int] = (str(self._server.server_address[0]), int(self._server.server_address[1]))
        self._thread = threading.Thread(target=self._server.serve_forever, name="casync-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def agent_routes(metrics: Callable[[], bytes], refresh: Callable[[], None], not_ready: Callable[[], list[str]],
                 snapshot: Callable[[], Any]) -> Routes:
    """The agent's pages: ``refresh`` brings the time-dependent gauges up to date before a scrape."""

    def scrape() -> tuple[int, str, bytes]:
        refresh()
        return metrics_reply(metrics())

    def ready() -> tuple[int, str, bytes]:
        reasons = not_ready()
        return json_reply(503 if reasons else 200, {"ready": not reasons, "reasons": reasons})

    def page() -> tuple[int, str, bytes]:
        refresh()
        return 200, "text/html; charset=utf-8", render_page(snapshot()).encode()

    def status() -> tuple[int, str, bytes]:
        refresh()
        return json_reply(200, render_status_json(snapshot()))

    return {"/": page, "/metrics": scrape, "/healthz": lambda: json_reply(200, {"ok": True}), "/readyz": ready,
            "/status.json": status}
