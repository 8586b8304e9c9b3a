"""The ``casync`` command line: the group, its global options and the error handler; the
commands live in the ``cli_*`` modules (the only modules that print or read the environment).

Exit codes: 0 success, 1 failure, 2 usage error (see docs/cli.md).  User errors print
one ``error:`` line and an optional ``hint:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import errno
import gc
import importlib
import json
import os
import sys
from typing import Any

import click

from casync import __version__
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands in ``--help``, from the summaries in ``_COMMANDS``: no
        command module is imported to print it."""
        ctx.meta[_LISTING] = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            del ctx.meta[_LISTING]

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
@click.version_option(__version__)  # not package_name=: reading the metadata costs --version ~20 ms
@click.pass_context
def main(ctx: click.Context, directory: str, quiet: bool, force_progress: bool) -> None:
    """casync: a git-like, content-addressed, versioned data store on IPFS.

    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    _resume_gc()  # the command's module is imported by now (click resolves it before this runs)
    obj = Context(directory, quiet, force_progress)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# Every command lives in the module of its group and is imported only when it runs:
# `casync status` loads cli.tree and what status needs, not the IPFS client (~70 ms), the
# history walkers or fsck.  `casync --help` lists every command from this table without
# importing any (all of them cost ~50 ms more); tests/test_startup.py checks each summary
# against the real command's help, so the table cannot drift.
# Name -> (module, attribute, the first sentence of its help: what --help shows).
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("repo", "init", "Create a repository in DIRECTORY (default: the current directory)."),
    "config": ("repo", "config_cmd", "Show the configuration, one KEY, or set KEY to VALUE."),
    "fsck": ("repo", "fsck", "Verify every block reachable from refs: present, hash-valid, well-formed."),
    "commit": ("tree", "commit", "Snapshot the whole working tree; print the new commit's CID."),
    "status": ("tree", "status", "Show what changed in the working tree since HEAD."),
    "checkout": ("tree", "checkout", "Make the working tree match REV (a branch name also switches to that branch)."),
    "switch": ("tree", "switch", "Switch the working tree and HEAD to BRANCH."),
    "restore": ("tree", "restore",
                "Restore PATHS in the working tree from --source (files under them that REV lacks are removed)."),
    "rm": ("tree", "rm_cmd", "Stop tracking PATHS: delete them (refused for uncommitted edits), or with --cached "
           "keep them on disk; the next commit records it."),
    "log": ("history", "log", "Show the history reachable from REV (default HEAD), newest first."),
    "show": ("history", "show", "Show one commit and the files it changed relative to its first parent."),
    "ls": ("history", "ls_cmd", "List a directory (or describe a file) in a commit."),
    "cat": ("history", "cat", "Write a committed file's bytes to stdout (streamed)."),
    "diff": ("history", "diff", "Files that differ between REV and the working tree, or between two REVs."),
    "reflog": ("history", "reflog", "Every move of REF (default HEAD: every commit, checkout and switch, detached "
               "or not), newest first: how to find lost commits."),
    "branch": ("history", "branch", "List branches, create NAME at START (default HEAD), or delete one with -d."),
    "merge": ("merge", "merge",
              "Merge REV into the current branch: fast-forward, or a three-way merge under a policy."),
    "conflicts": ("merge", "conflicts",
                  "List unresolved conflicts: those of a merge in progress and sibling versions in HEAD."),
    "resolve": ("merge", "resolve",
                "Settle the conflict at PATH in the working tree (then commit, or merge --continue)."),
    "serve": ("sync", "serve", "Serve this repository to peers over HTTP (fetch, and push unless --read-only)."),
    "sync": ("sync", "sync", "Fetch from each PEER (default: every non-IPFS remote), merge, and push back."),
    "bundle": ("sync", "bundle", "Move history without a network: CAR files you can carry."),
    "remote": ("remote", "remote_cmd",
               "List remotes (IPFS nodes and casync peers), or manage them with a subcommand."),
    "push": ("remote", "push", "Send BRANCH (default: current) to REMOTE (default: origin)."),
    "fetch": ("remote", "fetch", "Download REMOTE's history without merging it."),
    "pull": ("remote", "pull", "Fetch from REMOTE, then fast-forward the current branch, or merge diverged heads."),
    "clone": ("remote", "clone", "Create DIR as a new replica of the repository at URL: an IPFS node "
              "(ipfs+http://HOST:PORT[/REPO-ID][#INDEX]), a 'casync serve' peer (http(s)://HOST:PORT), another "
              "repository (a path or file:// URL), or a full bundle file made with 'casync bundle create' "
              "(FILE.car: a new site set up from a USB stick)."),
    "url": ("remote", "url_cmd", "Print the gateway URL of REV[:PATH]: GATEWAY/ipfs/COMMIT/tree/PATH."),
    "tag": ("tag", "tag", "List tags, tag REV (default HEAD) as NAME, or delete one with -d."),
    "agent": ("agent", "agent", "Serve this site's repository to its peers and sync with them every sync_interval."),
    "gc": ("gc", "gc_cmd", "Delete blocks nothing reaches and rewrite packs to reclaim their space."),
    "retention": ("gc", "retention_cmd",
                  "Forget old commits' trees by a policy (as restic's forget); heads and tags are kept."),
    "audit": ("audit", "audit", "Verify the snapshot REV (default HEAD) or the DAG below CID: every block present "
              "and hash-valid, structure canonical, names valid, clocks consistent along the history, no commit "
              "from the future, signatures valid."),
    "key": ("audit", "key", "This replica's signing key (ed25519): make one, or print its public key."),
    "get": ("get", "get", "Fetch a file as a CAR from any gateway without trusting it: every block must hash to "
            "its CID and be the next one on the path from CID to the file."),
    "import": ("imports", "import_cmd", "Commit CID, a UnixFS DAG from 'ipfs add', on the current branch: its "
               "tree CID is CID (nothing is re-chunked)."),
    "monitor": ("monitor", "monitor_cmd", "Watch the working tree so a clean 'casync status' need not walk it."),
}
_LISTING = "casync.listing"  # ctx.meta key: set while --help lists the commands


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
        if ctx.meta.get(_LISTING) and name in _COMMANDS:  # help's list: the summary is enough
            return click.Command(name, help=_COMMANDS[name][2])
        command = _load_command(name)
        if command is None:
            return None
        main.add_command(_report_json_failures(command))
    return main.commands[name]


main.list_commands = _lazy_list_commands  # type: ignore[method-assign]
main.get_command = _lazy_get_command  # type: ignore[method-assign,assignment]


class _Startup:
    gc_paused = False  # set by console(): the collector is off until the command is loaded


def console() -> None:
    """The ``casync`` command as casync/__main__.py starts it, with the cyclic garbage
    collector already paused: it stays off until the command's module is imported, and
    what the imports built is then frozen (never traced again; it lives until exit)."""
    _Startup.gc_paused = not gc.isenabled()
    try:
        main(prog_name="casync")
    finally:
        _resume_gc()


def _resume_gc() -> None:
    if _Startup.gc_paused:
        _Startup.gc_paused = False
        gc.freeze()
        gc.enable()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(EXIT_USAGE if main() else 0)
