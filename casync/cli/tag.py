"""``casync tag``: named, immutable snapshots (see :mod:`casync.repo.tags`)."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from casync.cli.common import Context, json_option, pass_context, print_json
from casync.errors import UsageError
from casync.model.cid import cid_str, short

__all__ = ["print_tag_report", "tag"]


@click.command()
@click.argument("name", required=False)
@click.argument("rev", required=False, default="HEAD")
@click.option("-d", "--delete", "delete", metavar="NAME", help="Delete tag NAME.")
@click.option("-f", "--force", is_flag=True, help="Re-point an existing tag (tags do not move otherwise).")
@json_option
@pass_context
def tag(obj: Context, name: str | None, rev: str, delete: str | None, force: bool, as_json: bool) -> None:
    """List tags, tag REV (default HEAD) as NAME, or delete one with -d.

    A tag names one commit and never moves: creating an existing tag is refused unless
    --force.  Tags resolve as revisions (casync log v1, casync cat v1:PATH) and travel with
    push, fetch, pull, sync, bundles and IPFS remotes; an incoming tag that differs from
    yours is not applied but kept under tag-conflicts/SOURCE/NAME and reported.
    """
    from casync.repo import tags
    repo = obj.repo()
    if delete:
        if name:
            raise UsageError("give either NAME or -d NAME, not both")
        was = tags.delete_tag(repo, delete)
        _say(as_json, {"deleted": delete, "commit": cid_str(was)}, f"deleted tag {delete} (was {short(was)})")
        return
    if name:
        target = repo.resolve(rev)
        old = tags.create_tag(repo, name, target, force=force)
        if old == target:
            line = f"tag {name} already at {short(target)}"
        elif old is None:
            line = f"created tag {name} at {short(target)}"
        else:
            line = f"moved tag {name} from {short(old)} to {short(target)}"
        _say(as_json, {"name": name, "commit": cid_str(target), "old": cid_str(old) if old else None}, line)
        return
    if force:
        raise UsageError("--force needs a tag NAME")
    _list(repo, as_json)


def _list(repo: Any, as_json: bool) -> None:
    from casync.repo import tags
    local = tags.list_tags(repo)
    conflicts: dict[str, list[tuple[str, Any]]] = {}
    for key, cid in tags.tag_conflicts(repo).items():
        source, _, tag_name = key.partition("/")  # a source has no '/'; a tag name may
        conflicts.setdefault(tag_name, []).append((source, cid))
    names = sorted(set(local) | set(conflicts))
    if as_json:
        print_json([{"name": n, "commit": cid_str(local[n]) if n in local else None,
                                "conflicts": [{"source": s, "commit": cid_str(c)} for s, c in conflicts.get(n, [])]}
                               for n in names])
        return
    for n in names:
        click.echo(f"{n:20} {short(local[n]) if n in local else '(none)':20}")
        for source, cid in conflicts.get(n, []):
            click.echo(f"  conflict: {source} has {n} at {short(cid)} (kept as tag-conflicts/{source}/{n})")


def _say(as_json: bool, data: dict[str, Any], line: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else line)


def print_tag_report(report: dict[str, Any] | None, source: str, pushed: bool = False) -> None:
    """Tell on stderr what happened to tags in a transfer (a ``TagUpdate.to_json()``):
    how many arrived, and a warning with a hint for each that was not applied."""
    if not report:
        return
    if report.get("created"):
        names = ", ".join(sorted(report["created"]))
        click.echo(f"{source}: {'pushed' if pushed else 'new'} tag(s): {names}", err=True)
    conflicts = report.get("conflicts") or {}
    for name, c in conflicts.items():
        ours, theirs = c["ours"][:20], c["theirs"][:20]
        kept = f"kept as {c['kept_as']}" if c.get("kept_as") else "left as it is there"
        click.echo(f"warning: tag {name} differs: yours is {ours}, {source} has {theirs} "
                   f"(not {'replaced' if pushed else 'applied'}; {kept})", err=True)
    if conflicts:
        name, c = next(iter(conflicts.items()))
        if pushed:
            hint = (f"tags never move on their own; a fetch from {source} keeps theirs here under tag-conflicts/; "
                    f"to publish yours, give it another name ('casync tag NEW {name}')")
        else:
            other = f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', source).strip('_.-') or 'theirs'}"
            hint = (f"tags never move on their own; to take theirs: 'casync tag -f {name} {c['theirs']}'; "
                    f"to keep both: 'casync tag {other} {c['theirs']}'")
        click.echo(f"hint: {hint}", err=True)
