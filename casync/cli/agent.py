"""``casync agent``: run this site's sync agent from a ``casync.toml`` (docs/configuration.md)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import click

from casync.cli.common import Context, pass_context
from casync.errors import UsageError

__all__ = ["agent"]


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535 or host.startswith("["):
        raise UsageError(f"--metrics-addr expects HOST:PORT with a port 0-65535, got {value!r}",
                         hint="e.g. --metrics-addr 127.0.0.1:9470 (IPv6 binds are not supported yet)")
    return host, int(port)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, metavar="FILE",
              help="The agent's casync.toml (docs/configuration.md).")
@click.option("--once", is_flag=True, help="Run one round (no serving) and exit: 0 if every peer synced, else 1.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line on stderr.")
@click.option("--metrics-addr", metavar="HOST:PORT", help="Where /metrics, /healthz and /readyz listen "
              "(default: metrics.bind of the config, else 127.0.0.1:9470).")
@click.option("--replica", metavar="ID", help="This site's replica id, in place of site.replica (one config for "
              "every pod of a DaemonSet: --replica=$(NODE_NAME)).")
@click.option("--advertise-url", metavar="URL", help="In place of serve.advertise_url (the pod's own address).")
@pass_context
def agent(obj: Context, config_path: Path, once: bool, log_format: str, metrics_addr: str | None, replica: str | None,
          advertise_url: str | None) -> None:
    """Serve this site's repository to its peers and sync with them every sync_interval.

    Stops on SIGTERM or Ctrl-C: a transfer in progress stops at its next block, keeping
    whole commits; nothing half-written is left.
    """
    from casync import __version__
    from casync.agent.config import load_config
    from casync.agent.logs import AgentLog
    from casync.agent.runner import Agent

    site = {k: v for k, v in (("replica", replica),) if v is not None}
    cfg = load_config(Path(obj.directory) / config_path, site)
    if advertise_url is not None:
        import dataclasses

        if not advertise_url.startswith(("http://", "https://")):
            raise UsageError(f"--advertise-url {advertise_url!r}: must be the http(s)://HOST:PORT peers reach "
                             "this site at")
        cfg = dataclasses.replace(cfg, advertise_url=advertise_url.rstrip("/"))
    bind = _address(metrics_addr) if metrics_addr is not None else None
    log = AgentLog(log_format, sys.stderr)
    runner = Agent(cfg, log, metrics_bind=bind, version=__version__)

    def stop(signum: int, frame: Any) -> None:
        log.info("stopping", f"got {signal.Signals(signum).name}: stopping", signal=signal.Signals(signum).name)
        runner.stop.set()

    def bug(args: threading.ExceptHookArgs) -> None:  # a job's traceback as one JSON-safe event
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        log.error("bug", f"unexpected error in {args.thread.name if args.thread else 'a thread'}: "
                  f"{args.exc_type.__name__}", traceback=text)

    threading.excepthook = bug
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.open(serving=not once)
    code = 1
    try:
        code = runner.run(once=once)
    finally:
        clean = runner.close()
    if not clean:  # a job is stuck in a read past shutdown_timeout: leave it; the store is transactional
        sys.stderr.flush()
        os._exit(1)
    sys.exit(code)
