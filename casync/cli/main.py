"""The ``casync`` command line: the group, its global options and the error handler; the
commands live in the ``cli_*`` modules (the only modules that print or read the environment).

Exit codes: 0 success, 1 failure, 2 usage error (see docs/cli.md).  User errors print
one ``error:`` line and an optional ``hint:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import click

from casync.cli import history as cli_history
from casync.cli import repo as cli_repo
from casync.cli import tree as cli_tree
from casync.cli.common import Context
from casync.errors import EXIT_FAILURE, EXIT_USAGE, CasyncError, NothingToCommit

__all__ = ["main"]


def _fail(message: str, hint: str | None, code: int, as_json: bool = False, prefix: str = "error: ") -> None:
    click.echo(f"{prefix}{message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    _json_failure(as_json, message, hint, code)
    sys.exit(code)


def _json_failure(as_json: bool, message: str, hint: str | None, code: int) -> None:
    """With --json, a failure is also one JSON object on stdout (the lines above stay on stderr)."""
    if as_json:
        click.echo(json.dumps({"error": message, "hint": hint, "exit_code": code}))


def _note_json(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value and isinstance(ctx.obj, Context):
        ctx.obj.as_json = True
    return value


def _report_json_failures(command: click.Command) -> click.Command:
    """Give every ``--json`` option of ``command`` (and of its subcommands) the callback that
    tells the error handler to answer in JSON, so no command has to remember it."""
    for param in command.params:
        if param.name == "as_json" and param.callback in (None, _note_json):
            param.callback = _note_json
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _report_json_failures(sub)
    return command


class _Group(click.Group):
    """Turns CasyncError and OS errors into one-line messages with exit codes (and, after
    --json, into one JSON object on stdout too)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:  # click prints it; --json also gets the object
            _json_failure(_wants_json(ctx), exc.format_message(), None, exc.exit_code)
            raise
        except NothingToCommit as exc:
            _fail(str(exc), exc.hint, exc.exit_code, _wants_json(ctx), prefix="")
        except CasyncError as exc:
            _fail(exc.message, exc.hint, exc.exit_code, _wants_json(ctx))
        except BrokenPipeError:
            # 'casync log | head': the reader left; not an error worth a message
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except PermissionError as exc:
            _fail(f"permission denied: {exc.filename}", None, EXIT_FAILURE, _wants_json(ctx))
        except FileNotFoundError as exc:
            _fail(f"no such file or directory: {exc.filename}", None, EXIT_FAILURE, _wants_json(ctx))
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # one not mapped to StorageFull below
            _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                  "free disk space and run the same command again" if full else None, EXIT_FAILURE,
                  _wants_json(ctx))
        except KeyboardInterrupt as exc:  # a clone's says that its partial copy is kept
            _fail("interrupted", getattr(exc, "hint", None), 130, _wants_json(ctx), prefix="")


def _wants_json(ctx: click.Context) -> bool:
    return isinstance(ctx.obj, Context) and ctx.obj.as_json


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "directory", default=".", metavar="DIR", help="Run as if started in DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--progress", "force_progress", is_flag=True,
              help="Show progress even when stderr is not a terminal, from the start of each step.")
@click.version_option(package_name="casync")
@click.pass_context
def main(ctx: click.Context, directory: str, quiet: bool, force_progress: bool) -> None:
    """casync: a git-like, content-addressed, versioned data store on IPFS.

    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    obj = Context(directory, quiet, force_progress)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# The everyday commands: their modules import nothing the group does not need already.
for _command in (cli_repo.init, cli_repo.config_cmd, cli_repo.fsck, cli_tree.commit, cli_tree.status,
                 cli_tree.checkout, cli_tree.switch, cli_tree.restore, cli_tree.rm_cmd, cli_history.log,
                 cli_history.show, cli_history.ls_cmd, cli_history.cat, cli_history.diff, cli_history.reflog,
                 cli_history.branch):
    main.add_command(_command)

# Commands defined in their own modules, imported only when one of them runs (the
# IPFS client alone costs ~70 ms of start-up that 'casync status' should not pay).
_COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "cli_merge": ("merge", "conflicts", "resolve"),
    "cli_sync": ("serve", "sync", "bundle"),
    "cli_remote": ("remote", "push", "fetch", "pull", "clone", "url"),
    "cli_tag": ("tag",),
    "agent": ("agent",),
    "cli_gc": ("gc", "retention"),
    "cli_audit": ("audit", "key"),
    "cli_get": ("get",),
    "cli_imports": ("import",),
}


def _load_command(name: str) -> click.Command | None:
    """The command ``name`` from the module of its group, imported here, on first use."""
    if name in _COMMAND_GROUPS["cli_merge"]:
        from casync.cli import merge as cli_merge
        return {"merge": cli_merge.merge, "conflicts": cli_merge.conflicts, "resolve": cli_merge.resolve}[name]
    if name in _COMMAND_GROUPS["cli_sync"]:
        from casync.cli import sync as cli_sync
        return {"serve": cli_sync.serve, "sync": cli_sync.sync, "bundle": cli_sync.bundle}[name]
    if name in _COMMAND_GROUPS["cli_remote"]:
        from casync.cli import remote as cli_remote
        return {"remote": cli_remote.remote_cmd, "push": cli_remote.push, "fetch": cli_remote.fetch,
                "pull": cli_remote.pull, "clone": cli_remote.clone, "url": cli_remote.url_cmd}[name]
    if name in _COMMAND_GROUPS["cli_gc"]:
        from casync.cli import gc as cli_gc

        return {"gc": cli_gc.gc_cmd, "retention": cli_gc.retention_cmd}[name]
    if name == "tag":
        from casync.cli.tag import tag

        return tag
    if name == "agent":
        from casync.cli.agent import agent

        return agent
    if name == "get":
        from casync.cli.get import get

        return get
    if name == "import":
        from casync.cli.imports import import_cmd

        return import_cmd
    if name in _COMMAND_GROUPS["cli_audit"]:
        from casync.cli import audit as cli_audit
        return {"audit": cli_audit.audit, "key": cli_audit.key}[name]
    return None


def _lazy_list_commands(ctx: click.Context) -> list[str]:
    return sorted(set(main.commands).union(*_COMMAND_GROUPS.values()))


def _lazy_get_command(ctx: click.Context, name: str) -> click.Command | None:
    if name in main.commands:
        return _report_json_failures(main.commands[name])
    command = _load_command(name)
    return _report_json_failures(command) if command is not None else None


main.list_commands = _lazy_list_commands  # type: ignore[method-assign]
main.get_command = _lazy_get_command  # type: ignore[method-assign,assignment]


def run() -> None:  # pragma: no cover - console entry for `python -m casync`
    main(prog_name="casync")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(EXIT_USAGE if main() else 0)
