"""``casync monitor start|stop|status``: the work tree's inotify file-system monitor, which
lets a clean ``casync status`` skip its walk (as git's fsmonitor)."""

from __future__ import annotations

from pathlib import Path

import click

from casync.cli.common import Context, json_option, pass_context, print_json
from casync.worktree import monitord

__all__ = ["monitor_cmd"]


def _root(obj: Context) -> Path:
    """The work tree's absolute path: the daemon is found again by it (its command line)."""
    repo = obj.repo()
    repo.require_worktree("monitor")
    return repo.root.resolve()


@click.group("monitor")
def monitor_cmd() -> None:
    """Watch the working tree so a clean 'casync status' need not walk it."""


@monitor_cmd.command("start")
@click.option("--max-watches", type=click.IntRange(min=1), default=None,
              help="Refuse (and stop) rather than use more inotify watches than this (default: the kernel's limit).")
@json_option
@pass_context
def start(obj: Context, max_watches: int | None, as_json: bool) -> None:
    """Start the monitor in the background (nothing happens when it runs already)."""
    info, started = monitord.start(_root(obj), max_watches)
    if as_json:
        print_json({"running": True, "started": started, "pid": info.pid, "watches": info.watches})
        return
    click.echo(f"monitor {'started' if started else 'already running'} (pid {info.pid}), "
               f"watching {info.watches} directories")


@monitor_cmd.command("stop")
@json_option
@pass_context
def stop(obj: Context, as_json: bool) -> None:
    """Stop the monitor by its PID (nothing happens when none runs)."""
    pid = monitord.stop(_root(obj))
    if as_json:
        print_json({"stopped": pid is not None, "pid": pid})
        return
    click.echo(f"monitor stopped (pid {pid})" if pid is not None else "monitor not running")


@monitor_cmd.command("status")
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Say whether the monitor runs and how many directories it watches (exit 1: not running)."""
    obj = ctx.find_object(Context)
    assert obj is not None
    root = _root(obj)
    info = monitord.running(root)
    why = None if info is not None else monitord.stopped_reason(root)
    if as_json:
        print_json({"running": info is not None, "pid": info.pid if info else None,
                    "watches": info.watches if info else None, "token": info.token if info else None, "why": why})
    elif info is not None:
        click.echo(f"monitor running (pid {info.pid}), watching {info.watches} directories")
    else:
        click.echo("monitor not running" + (f": {why}" if why else ""))
    if info is None:
        ctx.exit(1)
