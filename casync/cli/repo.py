"""``casync init``, ``config`` and ``fsck``: making a repository, its settings, checking it."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from casync.cli.common import Context, json_option, pass_context, print_json
from casync.errors import EXIT_FAILURE, UsageError
from casync.model.cid import cid_str
from casync.repo.fsck import FsckReport
from casync.repo.repository import Repository

__all__ = ["config_cmd", "fsck", "init"]


@click.command()
@click.argument("directory", required=False, default=None)
@click.option("--replica", help="This replica's id (default: random r-XXXXXXXXXXXX).")
@click.option("--hash", "hash_name", type=click.Choice(["blake3", "sha2-256"]), default="blake3", show_default=True)
@click.option("--chunker", type=click.Choice(["cdc", "fixed"]), default="cdc", show_default=True,
              help="cdc: content-defined (dedupes insertions); fixed: 256 KiB, same CIDs as 'ipfs add'.")
@click.option("--branch", default="main", show_default=True, help="Name of the initial branch.")
@click.option("--bare", is_flag=True, help="No working tree (servers, applications using transactions).")
@click.option("--repository-id", metavar="ID",
              help="Join an existing repository as a new replica (its id: 'casync remote show' or a bundle's "
                   "--json), e.g. before 'casync bundle unbundle'; default: a new repository.")
@pass_context
def init(obj: Context, directory: str | None, replica: str | None, hash_name: str, chunker: str,
         branch: str, bare: bool, repository_id: str | None) -> None:
    """Create a repository in DIRECTORY (default: the current directory)."""
    path = os.path.join(obj.directory, directory) if directory else obj.directory
    if repository_id is not None:
        from casync.transports.config import validate_repo_id  # the rule IPFS paths use

        validate_repo_id(repository_id)
    repo = Repository.init(path, replica=replica, hash=hash_name, chunker=chunker, branch=branch, bare=bare,
                           repository_id=repository_id)
    click.echo(f"Initialized casync repository in {repo.root} (replica {repo.replica}, {hash_name}, {chunker})")
    repo.close()


@click.command()
@click.option("--repair", "remote", metavar="REMOTE",
              help="Fetch good copies of missing or damaged blocks from REMOTE (a remote name, a "
                   "'casync serve' URL, a path or an ipfs+http:// URL) and store them in place.")
@json_option
@pass_context
def fsck(obj: Context, remote: str | None, as_json: bool) -> None:
    """Verify every block reachable from refs: present, hash-valid, well-formed.  Exit 1 if not."""
    if remote is not None:
        _repair(obj, remote, as_json)
        return
    repo = obj.repo()
    report = repo.fsck(progress=obj.progress())
    repo.record_audit(report)
    if as_json:
        print_json(report.to_json())
    else:
        _print_fsck(report)
    if not report.ok:
        sys.exit(EXIT_FAILURE)


def _repair(obj: Context, remote: str, as_json: bool) -> None:
    from casync.cli.remote import block_source
    from casync.repo.repair import repair

    with block_source(obj, remote) as source:
        result = repair(obj.repo(), source, progress=obj.progress())
    obj.repo().record_audit(result.fsck)
    if as_json:
        print_json(result.to_json())
    else:
        for cid in result.repaired:
            click.echo(f"repaired {cid_str(cid)}")
        _print_fsck(result.fsck)
        click.echo(f"repaired {len(result.repaired)} block(s) from {remote}"
                   + (f"; {len(result.unrepaired)} still missing or damaged ({remote} has no good copy)"
                      if result.unrepaired else ""))
    if not result.ok:
        sys.exit(EXIT_FAILURE)


def _print_fsck(report: FsckReport) -> None:
    for cid, where in report.missing.items():
        click.echo(f"missing  {cid}  (needed by {where})")
    for cid, why in report.corrupt.items():
        click.echo(f"corrupt  {cid}  {why}")
    for cid, why in report.foreign.items():
        click.echo(f"foreign  {cid}  {why}")
    for stamp, cids in report.reused_stamps.items():
        click.echo(f"note     replica:counter {stamp} stamps {len(cids)} different commits: {', '.join(cids)} "
                   "(commits on two branches of one replica, or two sites sharing a replica id)")
    summary = f"{len(report.missing)} missing, {len(report.corrupt)} corrupt"
    if report.foreign:
        summary += f", {len(report.foreign)} commit(s) of this replica id not made here"
    unfetched = f" ({report.unfetched} entries outside a partial clone's paths, never fetched)" \
        if report.unfetched else ""
    click.echo(f"checked {report.checked} blocks: " + ("ok" if report.ok else summary) + unfetched)
    if report.foreign:
        click.echo("hint: another site commits under this repository's replica id: make one of them a new replica "
                   "('casync clone SOURCE DIR --replica NEW-ID') and retire the old copy", err=True)
    if report.damaged:
        click.echo("hint: 'casync fsck --repair REMOTE' fetches good copies from a remote that has them",
                   err=True)


@click.command("config")
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Remove KEY.")
@json_option
@pass_context
def config_cmd(obj: Context, key: str | None, value: str | None, unset: bool, as_json: bool) -> None:
    """Show the configuration, one KEY, or set KEY to VALUE.

    VALUE is stored as JSON when it parses as JSON (numbers, objects such as
    merge = {"policy": "lww", "rules": {"*.json": "json"}}), else as a string.  KEY may
    name one field of an object: 'casync config merge.policy siblings'.
    """
    from casync.settings import FIXED_KEYS, KNOWN_KEYS

    repo = obj.repo()
    if key is None:
        if as_json:
            print_json(repo.config)
        else:
            for k, v in sorted(repo.config.items()):
                click.echo(f"{k} = {json.dumps(v)}")
        return
    top, _, sub = key.partition(".")  # KEY or OBJECT.FIELD (e.g. merge.policy)
    if top in FIXED_KEYS and (unset or value is not None):
        raise UsageError(f"config key {key!r} is fixed at init", hint="it is part of the repository's identity")
    current = repo.config.get(top)
    if sub and current is not None and not isinstance(current, dict):
        raise UsageError(f"config key {top!r} is not an object, so it has no field {sub!r}")
    present = top in repo.config if not sub else isinstance(current, dict) and sub in current
    if unset:
        if not present:
            raise UsageError(f"config key {key!r} is not set")
        if sub:
            assert isinstance(current, dict)
            rest = {k: v for k, v in current.items() if k != sub}
            repo.set_config(top, rest or None)
        else:
            repo.set_config(top, None)
        return
    if value is None:
        if not present:
            raise UsageError(f"config key {key!r} is not set")
        shown = current[sub] if sub and isinstance(current, dict) else current
        click.echo(json.dumps(shown) if as_json or not isinstance(shown, str) else shown)
        return
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    new_value = {**(current if isinstance(current, dict) else {}), sub: parsed} if sub else parsed
    repo.set_config(top, new_value)  # checked there: an unusable value is refused, naming key and value
    if top not in KNOWN_KEYS:
        click.echo(f"warning: casync does not read config key {top!r} (it reads: "
                   f"{', '.join(k for k in KNOWN_KEYS if k not in FIXED_KEYS)}); stored as given", err=True)
