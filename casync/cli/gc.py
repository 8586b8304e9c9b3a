"""``casync gc`` and ``casync retention``: reclaiming space, forgetting old history."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from casync.cli.common import Context, json_option, pass_context, print_json
from casync.history.retention import Policy, parse_duration
from casync.repo.gc import DEFAULT_PRUNE, GcReport

__all__ = ["gc_cmd", "retention_cmd"]

if TYPE_CHECKING:
    from casync.transports.ipfs.retain import RepinResult


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _print_gc(report: GcReport) -> None:
    verb = "would reclaim" if report.dry_run else "reclaimed"
    click.echo(f"{report.reachable_blocks} reachable block(s) from {report.roots} root(s); "
               f"{report.swept_blocks} unreachable ({_mib(report.swept_bytes)})")
    click.echo(f"packs: {report.packs_before} -> {report.packs_after} ({report.packs_rewritten} rewritten, "
               f"{report.packs_deleted} deleted, {report.packs_kept} kept); "
               f"{_mib(report.pack_bytes_before)} -> {_mib(report.pack_bytes_after)}, "
               f"{verb} {_mib(report.reclaimed_bytes)}")
    if report.reflog_expired:
        click.echo(f"expired {report.reflog_expired} reflog entr{'y' if report.reflog_expired == 1 else 'ies'}")


def _prune_ms(prune: str) -> int | None:
    return None if prune.strip().lower() == "never" else parse_duration(prune)


@click.command("gc")
@click.option("--prune", default=DEFAULT_PRUNE, show_default=True, metavar="AGE",
              help="Reflog entries older than AGE (30m, 12h, 14d, 2w, 'now') stop keeping their commits and "
                   "are expired; 'never' keeps every entry.")
@click.option("--dry-run", is_flag=True, help="Report what would be reclaimed; change nothing.")
@json_option
@pass_context
def gc_cmd(obj: Context, prune: str, dry_run: bool, as_json: bool) -> None:
    """Delete blocks nothing reaches and rewrite packs to reclaim their space.

    Marks from every ref (branches, tags, remote heads), HEAD, reflog entries younger than
    --prune, the stat cache, a stopped merge and pending pushes.  Safe while other
    processes commit: blocks written after gc started are kept."""
    from casync.repo.gc import gc

    report = gc(obj.repo(), prune_ms=_prune_ms(prune), dry_run=dry_run, progress=obj.progress())
    if as_json:
        print_json(report.to_json())
    else:
        _print_gc(report)


@click.command("retention")
@click.option("--keep-last", type=click.IntRange(min=0), default=0, metavar="N", help="Keep the N newest commits.")
@click.option("--keep-daily", type=click.IntRange(min=0), default=0, metavar="N",
              help="Keep the newest commit of each of the N newest days that have one (UTC).")
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0, metavar="N",
              help="Keep the newest commit of each of the N newest ISO weeks that have one.")
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0, metavar="N",
              help="Keep the newest commit of each of the N newest months that have one.")
@click.option("--keep-within", metavar="DURATION",
              help="Keep every commit at most DURATION (e.g. 7d, 2w) older than the newest.")
@click.option("--branch", "branches", multiple=True, metavar="B",
              help="The branch whose history to thin (repeatable; default: every local branch).")
@click.option("--remote", "remotes", multiple=True, metavar="NAME",
              help="IPFS remote whose pins to move to the retained layout, so forgotten trees fall out there "
                   "(repeatable; default: every IPFS remote this replica pushed to).")
@click.option("--dry-run", is_flag=True, help="Show what would be kept and forgotten; change nothing.")
@click.option("--gc/--no-gc", "run_gc", default=True, show_default=True,
              help="Run 'casync gc' afterwards to reclaim the space.")
@json_option
@pass_context
def retention_cmd(obj: Context, keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int,
                  keep_within: str | None, branches: tuple[str, ...], remotes: tuple[str, ...], dry_run: bool,
                  run_gc: bool, as_json: bool) -> None:
    """Forget old commits' trees by a policy (as restic's forget); heads and tags are kept.

    A forgotten commit keeps its commit block (the history, its clocks and ancestry stay
    whole); its tree is no longer kept, so gc reclaims what no kept commit shares.  IPFS
    remotes are re-pinned so the forgotten trees fall out there too."""
    from casync.errors import UsageError
    from casync.repo.retention import apply_retention

    policy = Policy(keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly,
                    keep_within_ms=parse_duration(keep_within) if keep_within is not None else None)
    if policy.empty():
        raise UsageError("no retention policy given: nothing would be kept",
                         hint="give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, "
                              "--keep-within")
    result = apply_retention(obj.repo(), policy, list(branches) or None, dry_run=dry_run, progress=obj.progress())
    repinned = [] if dry_run or not (result.forgotten or result.already_forgotten) else _repin(obj, remotes)
    report = None
    if run_gc and not dry_run and result.forgotten:
        from casync.repo.gc import gc

        # the default prune: reflog entries keep forgotten commits' blocks but not their trees
        report = gc(obj.repo(), prune_ms=parse_duration(DEFAULT_PRUNE), progress=obj.progress())
    if as_json:
        out = result.to_json()
        out["gc"] = report.to_json() if report is not None else None
        out["remotes"] = [r.to_json() for r in repinned]
        print_json(out)
        return
    for line in result.lines():
        click.echo(line)
    for r in repinned:
        click.echo(f"{r.remote}: pinned {r.commits_pinned} commit(s) directly and {r.trees_pinned} kept tree(s); "
                   f"unpinned {len(r.unpinned)}")
    if report is not None:
        _print_gc(report)


def _repin(obj: Context, names: tuple[str, ...]) -> list[RepinResult]:
    """Move the pins on the IPFS remotes (named, or every one this replica pushed to)."""
    from casync.transports.config import list_remotes
    from casync.transports.ipfs.retain import repin

    repo = obj.repo()
    if not names:
        pushed = repo.refs.list_refs("remotes/")
        names = tuple(r.name for r in list_remotes(repo)
                      if r.is_ipfs and any(n.startswith(f"remotes/{r.name}/{repo.replica}/") for n in pushed))
    return [repin(repo, name) for name in names]
