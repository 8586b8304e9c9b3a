"""The read-only history commands: ``log``, ``show``, ``diff``, ``ls``, ``cat``, ``reflog``, and ``branch``."""

from __future__ import annotations

import sys
from typing import Any

import click

from casync.cli.common import Context, format_time, json_option, pass_context, print_json, repo_relative
from casync.errors import StateRefused, UnknownRevision, UsageError
from casync.model.cid import RAW, cid_codec, cid_str, short
from casync.repo.repository import Repository
from casync.trees.unixfs import diff_flat, entry_for, file_size, read_dir, read_symlink

__all__ = ["branch", "cat", "diff", "log", "ls_cmd", "reflog", "show"]


class _PathsAfterDashes(click.Command):
    """Keeps what follows ``--`` apart (``log REV -- PATH...``): click would merge it
    into the positional arguments, and a path must never be read as a revision."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["paths"], args = args[at + 1:], args[:at]
        return super().parse_args(ctx, args)


@click.command(cls=_PathsAfterDashes)
@click.argument("rev", default="HEAD")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="Show at most N commits.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@json_option
@pass_context
def log(obj: Context, rev: str, max_count: int | None, oneline: bool, as_json: bool) -> None:
    """Show the history reachable from REV (default HEAD), newest first.

    'casync log [REV] -- PATH...' shows only the commits that changed a PATH (a file or
    a directory; relative to the directory casync runs in).
    """
    repo = obj.repo()
    paths = click.get_current_context().meta.get("paths")
    if paths is not None:
        if not paths:
            raise UsageError("'--' must be followed by at least one PATH")
        from casync.repo.pathlog import path_log

        entries = path_log(repo, rev, [repo_relative(repo, obj.directory, p) for p in paths], max_count)
    else:
        entries = repo.log(rev, limit=max_count)
    from casync.repo.signatures import Verifier, signature_json

    verifier = Verifier(repo)
    if as_json:
        print_json([{**e.to_json(), "signature": signature_json(verifier.verdict(e.commit), e.commit)}
                    for e in entries])
        return
    for e in entries:
        c = e.commit
        if oneline:
            click.echo(f"{short(e.cid)} {c.message.splitlines()[0] if c.message else ''}")
            continue
        click.echo(f"commit {cid_str(e.cid)}")
        if len(c.parents) > 1:
            click.echo("merge:  " + " ".join(short(p) for p in c.parents))
        click.echo(f"author: {c.author}  (replica {c.replica})")
        click.echo(f"date:   {format_time(c.time.wall_ms)}  [hlc {c.time.wall_ms}.{c.time.logical}]")
        click.echo("clock:  " + ", ".join(f"{k}={v}" for k, v in sorted(c.clock.items())))
        if c.signature is not None:
            verdict = verifier.verdict(c)
            click.echo(f"signed: {verdict.status}" + (f" ({verdict.key_id})" if verdict.key_id else ""))
        click.echo("")
        for line in c.message.splitlines() or [""]:
            click.echo(f"    {line}")
        click.echo("")


@click.command()
@click.argument("rev", default="HEAD")
@json_option
@pass_context
def show(obj: Context, rev: str, as_json: bool) -> None:
    """Show one commit and the files it changed relative to its first parent."""
    repo = obj.repo()
    cid = repo.resolve(rev)
    entry = repo.log(cid_str(cid), limit=1)[0]
    parent = entry.commit.parents[0] if entry.commit.parents else None
    repo.tree_of(cid)  # a commit whose own tree retention forgot is refused, by name
    try:
        changes: list[Any] | None = repo.diff(cid_str(parent) if parent is not None else None, cid_str(cid))
    except StateRefused:  # retention forgot the parent's tree: what changed is not known
        changes = None
    if as_json:
        data = entry.to_json()
        data["changes"] = None if changes is None else [{"path": c.path, "status": c.status} for c in changes]
        print_json(data)
        return
    c = entry.commit
    click.echo(f"commit {cid_str(cid)}\ntree   {cid_str(c.tree)}")
    click.echo(f"author: {c.author}  (replica {c.replica})\ndate:   {format_time(c.time.wall_ms)}")
    click.echo("clock:  " + ", ".join(f"{k}={v}" for k, v in sorted(c.clock.items())) + "\n")
    for line in c.message.splitlines() or [""]:
        click.echo(f"    {line}")
    click.echo("")
    if changes is None:
        click.echo("(changes unknown: 'casync retention' forgot the parent's tree)")
    for ch in changes or []:
        click.echo(f"{ch.status[0].upper()}  {ch.path}")


@click.command("ls")
@click.argument("spec", default="HEAD", metavar="REV[:PATH]")
@click.option("-r", "--recursive", is_flag=True, help="List files of all subdirectories.")
@json_option
@pass_context
def ls_cmd(obj: Context, spec: str, recursive: bool, as_json: bool) -> None:
    """List a directory (or describe a file) in a commit."""
    repo = obj.repo()
    _commit, path, entry = repo.entry_at(spec if ":" in spec else spec + ":")
    rows: list[dict[str, Any]] = []
    if entry.kind != "dir":
        rows.append({"path": path, "type": entry.kind, "size": _size(repo, entry), "cid": cid_str(entry.cid),
                     "executable": entry.executable})
    elif recursive:
        for p, e in sorted(repo.flatten(entry.cid, path).items()):
            rows.append({"path": p, "type": e.kind, "size": _size(repo, e), "cid": cid_str(e.cid),
                         "executable": e.executable})
    else:
        partial = repo.partial
        for link in read_dir(repo.blocks, entry.cid):
            child = f"{path}/{link.name}" if path else link.name
            if partial is not None and not partial.holds(child):  # never fetched: its kind is unknown here
                rows.append({"path": child, "type": "unfetched", "size": None, "cid": cid_str(link.cid),
                             "executable": False})
                continue
            e = entry_for(repo.blocks, link.cid, link.tsize)
            rows.append({"path": f"{path}/{link.name}" if path else link.name, "type": e.kind,
                         "size": _size(repo, e), "cid": cid_str(e.cid), "executable": e.executable})
    if as_json:
        print_json(rows)
        return
    for r in rows:
        suffix = "/" if r["type"] == "dir" else ("*" if r["executable"] else "")
        size = "-" if r["size"] is None else str(r["size"])
        click.echo(f"{r['type']:7} {size:>12}  {r['cid']}  {r['path']}{suffix}")


def _size(repo: Repository, e: Any) -> int | None:
    if e.kind != "file":
        return None
    if cid_codec(e.cid) == RAW:
        return int(e.tsize)  # a single-leaf file: the link's size, no need to read the content
    return file_size(repo.blocks, e.cid)  # reads the file's root node only


@click.command()
@click.argument("spec", metavar="REV:PATH")
@pass_context
def cat(obj: Context, spec: str) -> None:
    """Write a committed file's bytes to stdout (streamed)."""
    repo = obj.repo()
    if ":" not in spec:
        raise UsageError(f"expected REV:PATH, got {spec!r}", hint="for example: casync cat HEAD:docs/readme.txt")
    _commit, path, entry = repo.entry_at(spec)
    if entry.kind == "dir":
        raise UsageError(f"{path!r} is a directory", hint=f"use 'casync ls {spec}'")
    out = sys.stdout.buffer
    if entry.kind == "symlink":
        out.write(read_symlink(repo.blocks, entry.cid).encode())
        return
    for chunk in repo.iter_file(entry.cid):
        out.write(chunk)
    out.flush()


@click.command()
@click.argument("rev_a", metavar="REV")
@click.argument("rev_b", metavar="[REV]", required=False)
@json_option
@pass_context
def diff(obj: Context, rev_a: str, rev_b: str | None, as_json: bool) -> None:
    """Files that differ between REV and the working tree, or between two REVs."""
    repo = obj.repo()
    if rev_b is not None:  # two trees: read in proportion to what changed
        changes = repo.diff(rev_a, rev_b)
    else:
        from casync import porcelain  # the working tree's side: hashing, not a read of history

        changes = diff_flat(repo.flat_tree(repo.resolve(rev_a)), porcelain.worktree_entries(repo))
    if as_json:
        print_json([{"path": c.path, "status": c.status,
                "old": cid_str(c.old.cid) if c.old else None,
                "new": cid_str(c.new.cid) if c.new else None} for c in changes])
        return
    for c in changes:
        click.echo(f"{c.status[0].upper()}  {c.path}")


@click.command()
@click.argument("name", required=False)
@click.argument("start", required=False, default="HEAD")
@click.option("-d", "--delete", "delete", metavar="NAME", help="Delete branch NAME.")
@click.option("-r", "--remotes", "list_remotes", is_flag=True, help="List remote-tracking branches.")
@click.option("-a", "--all", "list_all", is_flag=True, help="List local and remote-tracking branches.")
@json_option
@pass_context
def branch(obj: Context, name: str | None, start: str, delete: str | None, list_remotes: bool, list_all: bool,
           as_json: bool) -> None:
    """List branches, create NAME at START (default HEAD), or delete one with -d.

    -r lists remote-tracking branches (what fetch, pull and push last saw, as
    REMOTE/BRANCH, or REMOTE/REPLICA/BRANCH for IPFS remotes); -a lists both.
    """
    repo = obj.repo()
    if (list_remotes or list_all) and (name or delete):
        raise UsageError("-r and -a list branches; they take no NAME and no -d")
    if delete:
        tip = repo.branches().get(delete)
        if tip is None:
            raise UsageError(f"branch {delete!r} not found")
        if repo.current_branch() == delete:
            raise StateRefused(f"cannot delete branch {delete!r}: it is checked out",
                               hint="switch to another branch first")
        repo.update_branch(delete, tip, None, "branch: deleted")
        click.echo(f"deleted branch {delete} (was {short(tip)})")
        return
    if name:
        if name in repo.branches():
            raise UsageError(f"branch {name!r} already exists")
        target = repo.resolve(start)
        repo.update_branch(name, None, target, f"branch: created from {start}")
        click.echo(f"created branch {name} at {short(target)}")
        return
    current = repo.current_branch()
    rows: list[tuple[str, bytes, bool, str | None]] = [] if list_remotes else [
        (b, c, b == current, None) for b, c in repo.branches().items()]
    if list_remotes or list_all:
        for ref, c in repo.refs.list_refs("remotes/").items():
            tracking = ref[len("remotes/"):]
            rows.append((tracking, c, False, tracking.split("/", 1)[0]))
    if as_json:
        print_json([{"name": b, "commit": cid_str(c), "current": cur,
                     **({"remote": r} if list_remotes or list_all else {})} for b, c, cur, r in rows])
        return
    for b, c, cur, r in rows:
        label = f"remotes/{b}" if list_all and r else b
        click.echo(f"{'*' if cur else ' '} {label:20} {short(c)}")


@click.command()
@click.argument("ref", default="HEAD")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="Show at most N entries.")
@json_option
@pass_context
def reflog(obj: Context, ref: str, max_count: int | None, as_json: bool) -> None:
    """Every move of REF (default HEAD: every commit, checkout and switch, detached or not),
    newest first: how to find lost commits."""
    repo = obj.repo()
    if ref == "HEAD":
        full = "HEAD"
        entries = list(reversed(repo.refs.reflog("HEAD")))[:max_count]
    else:
        from casync.repo.revisions import ref_candidates

        found = repo.ref_named(ref)  # the names 'log' takes: main, v1, origin/main, remotes/origin/main, ...
        # a deleted ref has no commit but keeps its reflog
        logs = [(found[0], repo.refs.reflog(found[0]))] if found else \
            [(c, log) for c in ref_candidates(ref) if (log := repo.refs.reflog(c))]
        if not logs:
            raise UnknownRevision(f"no ref named {ref!r}", hint="list branches with 'casync branch', tags with "
                                  "'casync tag'")
        full = logs[0][0]
        entries = list(reversed(logs[0][1]))[:max_count]
    if as_json:
        print_json([{"ref": e.ref, "old": cid_str(e.old) if e.old else None, "new": cid_str(e.new) if e.new else None,
                "time_ms": e.time_ms, "reason": e.reason} for e in entries])
        return
    for i, e in enumerate(entries):
        new = short(e.new) if e.new else "(deleted)"
        click.echo(f"{new}  {full}@{{{i}}}  {format_time(e.time_ms)}  {e.reason}")
