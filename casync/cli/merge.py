"""CLI commands for merging: ``merge``, ``conflicts``, ``resolve``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from casync.cli.common import Context, json_option, pass_context, print_json
from casync.errors import EXIT_FAILURE, UsageError
from casync.merge.threeway import POLICIES
from casync.model.cid import short
from casync.worktree import merging as merger

__all__ = ["report_decisions"]

_POLICY_HELP = f"Conflict policy: {', '.join(POLICIES)} or custom:NAME (default: config merge.policy, else lww)."


@click.command()
@click.argument("rev", required=False)
@click.option("--policy", "-p", help=_POLICY_HELP)
@click.option("-m", "--message", help="Merge commit message.")
@click.option("--continue", "cont", is_flag=True, help="Commit the resolved merge in progress.")
@click.option("--abort", is_flag=True, help="Abandon the merge in progress; the working tree returns to HEAD.")
@click.option("--allow-unrelated-histories", "unrelated", is_flag=True,
              help="Merge even if REV shares no commit with HEAD.")
@json_option
@pass_context
def merge(obj: Context, rev: str | None, policy: str | None, message: str | None, cont: bool, abort: bool,
          unrelated: bool, as_json: bool) -> None:
    """Merge REV into the current branch: fast-forward, or a three-way merge under a policy.

    Exit 1 when a 'manual' policy leaves conflicts (resolve them, then --continue).
    """
    repo = obj.repo()
    if sum(map(bool, (rev, cont, abort))) != 1:
        raise UsageError("give REV, --continue or --abort")
    if cont:
        cid = merger.continue_merge(repo, message)
        click.echo(f"merged: {short(cid)}", err=True) if not as_json else None
        if as_json:
            click.echo(f'{{"result": "merged", "commit": "{short(cid, 100)}"}}')
        return
    if abort:
        merger.abort_merge(repo, progress=obj.progress())
        click.echo("merge aborted", err=True)
        return
    assert rev is not None
    outcome = merger.merge(repo, rev, policy=policy, message=message, progress=obj.progress(),
                           allow_unrelated=unrelated)
    if as_json:
        print_json(outcome.to_json())
    else:
        if outcome.kind == "up-to-date":
            click.echo("already up to date")
        elif outcome.kind == "fast-forward":
            click.echo(f"fast-forward to {short(outcome.commit or b'')}")
        report_decisions(outcome)
        if outcome.kind == "merged":
            click.echo(f"merged: {short(outcome.commit or b'')}")
        for c in outcome.conflicts:
            where = f" (other version: {c.sibling})" if c.sibling else ""
            where += f" (renamed to: {', '.join(c.targets)})" if c.targets else ""
            click.echo(f"CONFLICT ({c.kind}): {c.path}{where}", err=True)
    if outcome.kind == "conflicts":
        click.echo("hint: resolve with 'casync resolve PATH --pick ours|theirs', then 'casync merge --continue'",
                   err=True)
        sys.exit(EXIT_FAILURE)


def report_decisions(outcome: Any) -> None:
    """What a merge decided per path, one line each (also after 'pull' and 'sync')."""
    for d in outcome.decisions:
        click.echo(f"  {d.policy:9} {d.winner:8} {d.path}")
    for c in outcome.siblings:
        if c.targets:
            click.echo(f"  {c.kind}: {c.path} renamed to {', '.join(c.targets)}; see 'casync conflicts'")
        elif c.sibling:
            click.echo(f"  kept both versions of {c.path} (other: {c.sibling})")
        else:  # delete/modify: the modified version is kept, nothing was lost
            click.echo(f"  kept the modified {c.path} ({c.kind})")


@click.command()
@json_option
@pass_context
def conflicts(obj: Context, as_json: bool) -> None:
    """List unresolved conflicts: those of a merge in progress and sibling versions in HEAD."""
    found = merger.list_conflicts(obj.repo())
    if as_json:
        print_json([c.to_json() for c in found])
        return
    if not found:
        click.echo("no conflicts")
    for c in found:
        click.echo(f"{c.kind:14} {c.path}" + (f"  ({', '.join(c.siblings)})" if c.siblings else ""))


@click.command()
@click.argument("path")
@click.option("--pick", help="ours, theirs, a replica id whose sibling version to keep, or (rename conflicts) "
                            "the new path to keep.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this file's content.")
@pass_context
def resolve(obj: Context, path: str, pick: str | None, file_: Path | None) -> None:
    """Settle the conflict at PATH in the working tree (then commit, or merge --continue)."""
    chosen = merger.resolve_conflict(obj.repo(), path, pick, file_.read_bytes() if file_ else None)
    click.echo(f"resolved {path} ({chosen})", err=True)
