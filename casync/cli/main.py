"""The ``casync`` command line: the group, its global options and the error handler; the
commands live in the ``cli_*`` modules (the only modules that print or read the environment).

Exit codes: 0 success, 1 failure, 2 usage error (see docs/cli.md).  User errors print
one ``error:`` line and an optional ``hint:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import sys
from typing import Any

import click

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


# Every command lives in the module of its group and is imported only when it runs (or
# when help lists it): `casync status` loads cli.tree and what status needs, not the
# IPFS client (~70 ms), the history walkers or fsck.  Name -> (module, attribute).
_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("repo", "init"), "config": ("repo", "config_cmd"), "fsck": ("repo", "fsck"),
    "commit": ("tree", "commit"), "status": ("tree", "status"), "checkout": ("tree", "checkout"),
    "switch": ("tree", "switch"), "restore": ("tree", "restore"), "rm": ("tree", "rm_cmd"),
    "log": ("history", "log"), "show": ("history", "show"), "ls": ("history", "ls_cmd"),
    "cat": ("history", "cat"), "diff": ("history", "diff"), "reflog": ("history", "reflog"),
    "branch": ("history", "branch"),
    "merge": ("merge", "merge"), "conflicts": ("merge", "conflicts"), "resolve": ("merge", "resolve"),
    "serve": ("sync", "serve"), "sync": ("sync", "sync"), "bundle": ("sync", "bundle"),
    "remote": ("remote", "remote_cmd"), "push": ("remote", "push"), "fetch": ("remote", "fetch"),
    "pull": ("remote", "pull"), "clone": ("remote", "clone"), "url": ("remote", "url_cmd"),
    "tag": ("tag", "tag"), "agent": ("agent", "agent"), "gc": ("gc", "gc_cmd"),
    "retention": ("gc", "retention_cmd"), "audit": ("audit", "audit"), "key": ("audit", "key"),
    "get": ("get", "get"), "import": ("imports", "import_cmd"), "monitor": ("monitor", "monitor_cmd"),
}


def _load_command(name: str) -> click.Command | None:
    """The command ``name`` from the module of its group, imported here, on first use."""
    where = _COMMANDS.get(name)
    if where is None:
        return None
    command = getattr(importlib.import_module(f"casync.cli.{where[0]}"), where[1])
    if not isinstance(command, click.Command) or command.name != name:
        raise AssertionError(f"casync.cli.{where[0]}.{where[1]} is not the {name!r} command")
    return command


def _lazy_list_commands(ctx: click.Context) -> list[str]:
    return sorted(set(main.commands).union(_COMMANDS))


def _lazy_get_command(ctx: click.Context, name: str) -> click.Command | None:
    if name not in main.commands:
        command = _load_command(name)
        if command is None:
            return None
        main.add_command(_report_json_failures(command))
    return main.commands[name]


main.list_commands = _lazy_list_commands  # type: ignore[method-assign]
main.get_command = _lazy_get_command  # type: ignore[method-assign,assignment]


def run() -> None:  # pragma: no cover - console entry for `python -m casync`
    main(prog_name="casync")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(EXIT_USAGE if main() else 0)
