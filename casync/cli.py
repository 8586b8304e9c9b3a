"""The ``casync`` command line.  The only module that prints or reads the environment.

Exit codes: 0 success, 1 failure, 2 usage error (see docs/cli.md).  User errors print
one ``error:`` line and an optional ``hint:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from casync.api import Repository
from casync.dag import diff_flat, entry_for, file_size, flatten_tree, read_dir, read_symlink
from casync.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CasyncError,
    NothingToCommit,
    StateRefused,
    UnknownRevision,
    UsageError,
)
from casync.ids import RAW, cid_codec, cid_str, short
from casync.repo import FsckReport

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class _Progress:
    """Progress on stderr for work lasting over ``delay`` seconds (1 by default): label, bytes
    done, rate, and with a known total a bar, percentage and time left.  Redrawn at most ten
    times a second; the last draw ends its line, so what is printed next starts on a new one.
    Work reported without a ``start`` (a library caller that only advances) is timed from
    its first ``advance`` and labelled "working", never from the epoch of the clock."""

    def __init__(self, enabled: bool, delay: float = 1.0) -> None:
        self.enabled = enabled
        self.delay = delay
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._t0: float | None = None
        self._drawn = 0.0
        self._shown = False

    def start(self, label: str, total: int | None) -> None:
        self.finish()
        self._label, self._total, self._done, self._t0, self._drawn = label, total, 0, time.monotonic(), 0.0

    def advance(self, n: int) -> None:
        if self._t0 is None:
            self.start("working", None)
        self._done += n
        if not self.enabled:
            return
        now = time.monotonic()
        assert self._t0 is not None
        if now - self._t0 >= self.delay and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - (self._t0 if self._t0 is not None else now), 1e-6)
        rate = self._done / elapsed
        text = f"{self._label}: {_human(self._done)}"
        if self._total:
            frac = min(self._done / self._total, 1.0)
            filled = int(frac * 24)
            left = (self._total - self._done) / rate if rate > 0 and not final else 0.0
            text = (f"{self._label} [{'#' * filled}{'-' * (24 - filled)}] {frac:4.0%} "
                    f"{_human(self._done)}/{_human(self._total)}")
            if not final:
                text += f"  {_human(rate)}/s  {int(left) // 60}:{int(left) % 60:02d} left"
        else:
            text += f"  {_human(rate)}/s"
        sys.stderr.write("\r\x1b[K" + text + ("\n" if final else ""))
        sys.stderr.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._draw(time.monotonic(), final=True)
            self._shown = False
        self._t0 = None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _Context:
    def __init__(self, directory: str, quiet: bool, force_progress: bool = False) -> None:
        self.directory = directory
        self.quiet = quiet
        self.as_json = False  # a command's --json was given: failures are reported as JSON too
        self.force_progress = force_progress
        self._repo: Repository | None = None
        self._progress: _Progress | None = None

    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository.open(self.directory)
        return self._repo

    def progress(self) -> _Progress:
        """One renderer per command, so a bar left drawn is ended before the next starts."""
        if self._progress is None:
            if self.force_progress and not self.quiet:
                self._progress = _Progress(enabled=True, delay=0.0)
            else:
                self._progress = _Progress(enabled=not self.quiet and sys.stderr.isatty())
        return self._progress

    def close(self) -> None:
        if self._progress is not None:
            self._progress.finish()
        if self._repo is not None:
            self._repo.close()


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
    if value and isinstance(ctx.obj, _Context):
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
            _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), None, EXIT_FAILURE, _wants_json(ctx))
        except KeyboardInterrupt as exc:  # a clone's says that its partial copy is kept
            _fail("interrupted", getattr(exc, "hint", None), 130, _wants_json(ctx), prefix="")


def _wants_json(ctx: click.Context) -> bool:
    return isinstance(ctx.obj, _Context) and ctx.obj.as_json


def _pass(f: F) -> F:
    @click.pass_obj
    @wraps(f)
    def inner(obj: _Context, *args: Any, **kwargs: Any) -> Any:
        return f(obj, *args, **kwargs)

    return inner  # type: ignore[return-value]


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")


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
    obj = _Context(directory, quiet, force_progress)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


@main.command()
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
@_pass
def init(obj: _Context, directory: str | None, replica: str | None, hash_name: str, chunker: str,
         branch: str, bare: bool, repository_id: str | None) -> None:
    """Create a repository in DIRECTORY (default: the current directory)."""
    path = os.path.join(obj.directory, directory) if directory else obj.directory
    if repository_id is not None:
        from casync.remote.config import validate_repo_id  # the rule IPFS paths use

        validate_repo_id(repository_id)
    repo = Repository.init(path, replica=replica, hash=hash_name, chunker=chunker, branch=branch, bare=bare,
                           repository_id=repository_id)
    click.echo(f"Initialized casync repository in {repo.root} (replica {repo.replica}, {hash_name}, {chunker})")
    repo.close()


@main.command()
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--author", help="Author name (default: $CASYNC_AUTHOR, config 'author', then the login name).")
@click.option("--allow-empty", is_flag=True, help="Commit even if nothing changed.")
@_pass
def commit(obj: _Context, message: str, author: str | None, allow_empty: bool) -> None:
    """Snapshot the whole working tree; print the new commit's CID."""
    repo = obj.repo()
    cid = repo.commit(message, author=author, allow_empty=allow_empty,
                      progress=obj.progress())
    click.echo(cid)


@main.command()
@json_option
@_pass
def status(obj: _Context, as_json: bool) -> None:
    """Show what changed in the working tree since HEAD."""
    st = obj.repo().status(progress=obj.progress())
    if as_json:
        _json(st.to_json())
        return
    where = f"on branch {st.branch}" if st.branch else f"HEAD detached at {short(st.head)}" if st.head else ""
    click.echo(where + ("" if st.head else " (no commits yet)"))
    if st.moved:
        at = f"commit {short(st.checked_out)}" if st.checked_out else "an older tree"
        click.echo(f"{'branch ' + st.branch if st.branch else 'HEAD'} moved since the working tree was checked out "
                   f"(a transaction, a push): the files are still at {at}, and changes below are against it")
        click.echo(f"  (use 'casync checkout {st.branch or 'HEAD'}' to bring them up to date, keeping your edits)")
    if st.merge_in_progress:
        click.echo("merge in progress: resolve the conflicts ('casync conflicts'), then 'casync merge --continue'")
        click.echo("  (use 'casync merge --abort' to give it up)")
    if st.clean:
        click.echo("nothing to commit, working tree clean")
    for label, paths in (("new", st.added), ("modified", st.modified), ("deleted", st.deleted),
                         ("skipped", st.skipped)):  # skipped entries carry their reason
        for p in paths:
            click.echo(f"  {label + ':':10} {_quote_path(p)}")
    if st.ignored_tracked:
        click.echo("tracked, though .casyncignore matches (still committed; untrack with 'casync rm --cached PATH'):")
        for p in st.ignored_tracked:
            click.echo(f"  {'ignored:':10} {_quote_path(p)}")


def _quote_path(path: str) -> str:
    """A path as one printable line: with a control character in it (a newline would break
    line-based parsing) it is printed JSON-quoted, as git quotes such paths."""
    return json.dumps(path, ensure_ascii=False) if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path) else path


def _format_time(wall_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(wall_ms / 1000))


class _PathsAfterDashes(click.Command):
    """Keeps what follows ``--`` apart (``log REV -- PATH...``): click would merge it
    into the positional arguments, and a path must never be read as a revision."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["paths"], args = args[at + 1:], args[:at]
        return super().parse_args(ctx, args)


@main.command(cls=_PathsAfterDashes)
@click.argument("rev", default="HEAD")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="Show at most N commits.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@json_option
@_pass
def log(obj: _Context, rev: str, max_count: int | None, oneline: bool, as_json: bool) -> None:
    """Show the history reachable from REV (default HEAD), newest first.

    'casync log [REV] -- PATH...' shows only the commits that changed a PATH (a file or
    a directory; relative to the directory casync runs in).
    """
    repo = obj.repo()
    paths = click.get_current_context().meta.get("paths")
    if paths is not None:
        if not paths:
            raise UsageError("'--' must be followed by at least one PATH")
        from casync.history import path_log

        entries = path_log(repo, rev, [_repo_relative(repo, obj.directory, p) for p in paths], max_count)
    else:
        entries = repo.log(rev, limit=max_count)
    if as_json:
        _json([e.to_json() for e in entries])
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
        click.echo(f"date:   {_format_time(c.time.wall_ms)}  [hlc {c.time.wall_ms}.{c.time.logical}]")
        click.echo("clock:  " + ", ".join(f"{k}={v}" for k, v in sorted(c.clock.items())))
        click.echo("")
        for line in c.message.splitlines() or [""]:
            click.echo(f"    {line}")
        click.echo("")


@main.command()
@click.argument("rev", default="HEAD")
@json_option
@_pass
def show(obj: _Context, rev: str, as_json: bool) -> None:
    """Show one commit and the files it changed relative to its first parent."""
    repo = obj.repo()
    cid = repo.resolve(rev)
    entry = repo.log(cid_str(cid), limit=1)[0]
    parent = entry.commit.parents[0] if entry.commit.parents else None
    changes = diff_flat(repo.flat_tree(parent), repo.flat_tree(cid))
    if as_json:
        data = entry.to_json()
        data["changes"] = [{"path": c.path, "status": c.status} for c in changes]
        _json(data)
        return
    c = entry.commit
    click.echo(f"commit {cid_str(cid)}\ntree   {cid_str(c.tree)}")
    click.echo(f"author: {c.author}  (replica {c.replica})\ndate:   {_format_time(c.time.wall_ms)}")
    click.echo("clock:  " + ", ".join(f"{k}={v}" for k, v in sorted(c.clock.items())) + "\n")
    for line in c.message.splitlines() or [""]:
        click.echo(f"    {line}")
    click.echo("")
    for ch in changes:
        click.echo(f"{ch.status[0].upper()}  {ch.path}")


@main.command("ls")
@click.argument("spec", default="HEAD", metavar="REV[:PATH]")
@click.option("-r", "--recursive", is_flag=True, help="List files of all subdirectories.")
@json_option
@_pass
def ls_cmd(obj: _Context, spec: str, recursive: bool, as_json: bool) -> None:
    """List a directory (or describe a file) in a commit."""
    repo = obj.repo()
    _commit, path, entry = repo.entry_at(spec if ":" in spec else spec + ":")
    rows: list[dict[str, Any]] = []
    if entry.kind != "dir":
        rows.append({"path": path, "type": entry.kind, "size": _size(repo, entry), "cid": cid_str(entry.cid),
                     "executable": entry.executable})
    elif recursive:
        for p, e in sorted(flatten_tree(repo.blocks, entry.cid, path).items()):
            rows.append({"path": p, "type": e.kind, "size": _size(repo, e), "cid": cid_str(e.cid),
                         "executable": e.executable})
    else:
        for link in read_dir(repo.blocks, entry.cid):
            e = entry_for(repo.blocks, link.cid, link.tsize)
            rows.append({"path": f"{path}/{link.name}" if path else link.name, "type": e.kind,
                         "size": _size(repo, e), "cid": cid_str(e.cid), "executable": e.executable})
    if as_json:
        _json(rows)
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


@main.command()
@click.argument("spec", metavar="REV:PATH")
@_pass
def cat(obj: _Context, spec: str) -> None:
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


@main.command()
@click.argument("rev_a", metavar="REV")
@click.argument("rev_b", metavar="[REV]", required=False)
@json_option
@_pass
def diff(obj: _Context, rev_a: str, rev_b: str | None, as_json: bool) -> None:
    """Files that differ between REV and the working tree, or between two REVs."""
    repo = obj.repo()
    old = repo.flat_tree(repo.resolve(rev_a))
    if rev_b is not None:
        changes = diff_flat(old, repo.flat_tree(repo.resolve(rev_b)))
    else:
        changes = diff_flat(old, repo.worktree_entries())
    if as_json:
        _json([{"path": c.path, "status": c.status,
                "old": cid_str(c.old.cid) if c.old else None,
                "new": cid_str(c.new.cid) if c.new else None} for c in changes])
        return
    for c in changes:
        click.echo(f"{c.status[0].upper()}  {c.path}")


@main.command()
@click.argument("rev")
@click.option("-f", "--force", is_flag=True, help="Discard uncommitted changes that are in the way.")
@_pass
def checkout(obj: _Context, rev: str, force: bool) -> None:
    """Make the working tree match REV (a branch name also switches to that branch)."""
    repo = obj.repo()
    cid = _checkout(obj, repo, rev, force)
    branch = repo.current_branch()
    click.echo(f"switched to branch {branch} at {short(repo.resolve(cid))}" if branch and branch == rev
               else f"HEAD is now at {short(repo.resolve(cid))} (detached)", err=True)


@main.command()
@click.option("--source", "-s", default="HEAD", show_default=True, help="Revision to restore from.")
@click.argument("paths", nargs=-1, required=True)
@_pass
def restore(obj: _Context, source: str, paths: tuple[str, ...]) -> None:
    """Restore PATHS in the working tree from --source (files under them that REV lacks are removed)."""
    repo = obj.repo()
    rel = [_repo_relative(repo, obj.directory, p) for p in paths]
    written = repo.restore(rel, source=source, progress=obj.progress())
    click.echo(f"restored {len(written)} file(s) from {source}", err=True)


def _repo_relative(repo: Repository, base: str, path: str) -> str:
    """Interpret PATH relative to the directory casync runs in (-C); refuse paths outside the tree."""
    absolute = os.path.abspath(os.path.join(os.path.abspath(base), path))
    root = str(repo.root)
    if absolute != root and not absolute.startswith(root + os.sep):
        raise UsageError(f"path {path!r} is outside the working tree {root}")
    rel = os.path.relpath(absolute, root)
    return "" if rel == "." else rel.replace(os.sep, "/")


@main.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("--cached", is_flag=True, help="Keep the files on disk; only stop tracking them.")
@click.option("-r", "recursive", is_flag=True, help="Remove the tracked files under a directory.")
@_pass
def rm_cmd(obj: _Context, paths: tuple[str, ...], cached: bool, recursive: bool) -> None:
    """Stop tracking PATHS: delete them (refused for uncommitted edits), or with --cached
    keep them on disk; the next commit records it."""
    repo = obj.repo()
    done = repo.remove([_repo_relative(repo, obj.directory, p) for p in paths], cached=cached, recursive=recursive)
    for p in done:
        click.echo(f"{'untracked' if cached else 'removed'} {_quote_path(p)}", err=True)


@main.command()
@click.argument("name", required=False)
@click.argument("start", required=False, default="HEAD")
@click.option("-d", "--delete", "delete", metavar="NAME", help="Delete branch NAME.")
@click.option("-r", "--remotes", "list_remotes", is_flag=True, help="List remote-tracking branches.")
@click.option("-a", "--all", "list_all", is_flag=True, help="List local and remote-tracking branches.")
@json_option
@_pass
def branch(obj: _Context, name: str | None, start: str, delete: str | None, list_remotes: bool, list_all: bool,
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
        _json([{"name": b, "commit": cid_str(c), "current": cur, **({"remote": r} if list_remotes or list_all else {})}
               for b, c, cur, r in rows])
        return
    for b, c, cur, r in rows:
        label = f"remotes/{b}" if list_all and r else b
        click.echo(f"{'*' if cur else ' '} {label:20} {short(c)}")


@main.command()
@click.argument("branch_name", metavar="BRANCH")
@click.option("-c", "--create", is_flag=True, help="Create BRANCH at HEAD first.")
@click.option("-f", "--force", is_flag=True, help="Discard uncommitted changes that are in the way.")
@_pass
def switch(obj: _Context, branch_name: str, create: bool, force: bool) -> None:
    """Switch the working tree and HEAD to BRANCH."""
    repo = obj.repo()
    if create:
        from casync.workstate import refuse_mid_merge

        refuse_mid_merge(repo, "switch")  # before the branch is made, not after
        if branch_name in repo.branches():
            raise UsageError(f"branch {branch_name!r} already exists")
        head = repo.head()
        if head is None:
            raise StateRefused("cannot create a branch before the first commit",
                               hint="make a first commit with 'casync commit'")
        repo.update_branch(branch_name, None, head, "switch -c")
    elif branch_name not in repo.branches():
        raise UsageError(f"no branch named {branch_name!r}", hint="create it with 'casync switch -c NAME'")
    _checkout(obj, repo, branch_name, force)
    click.echo(f"switched to branch {branch_name}", err=True)


def _checkout(obj: _Context, repo: Repository, rev: str, force: bool) -> str:
    """Check out REV; leaving a detached HEAD whose commits no ref reaches says so (they
    are then only in HEAD's reflog), as git does."""
    detached = repo.head() if repo.current_branch() is None else None
    cid = repo.checkout(rev, force=force, progress=obj.progress())
    if detached is not None and repo.head() != detached:
        behind = repo.left_behind(detached)
        if behind:
            tip = short(behind[0])
            listed = ", ".join(short(c) for c in behind[:3]) + (" ..." if len(behind) > 3 else "")
            click.echo(f"warning: leaving {len(behind)} commit(s) behind, on no branch: {listed}", err=True)
            click.echo(f"hint: keep them with 'casync branch NAME {tip}' ('casync reflog HEAD' lists them later)",
                       err=True)
    return cid


@main.command()
@click.option("--repair", "remote", metavar="REMOTE",
              help="Fetch good copies of missing or damaged blocks from REMOTE (a remote name, a "
                   "'casync serve' URL, a path or an ipfs+http:// URL) and store them in place.")
@json_option
@_pass
def fsck(obj: _Context, remote: str | None, as_json: bool) -> None:
    """Verify every block reachable from refs: present, hash-valid, well-formed.  Exit 1 if not."""
    if remote is not None:
        _repair(obj, remote, as_json)
        return
    report = obj.repo().fsck(progress=obj.progress())
    if as_json:
        _json(report.to_json())
    else:
        _print_fsck(report)
    if not report.ok:
        sys.exit(EXIT_FAILURE)


def _repair(obj: _Context, remote: str, as_json: bool) -> None:
    from casync.cli_remote import block_source
    from casync.repair import repair

    with block_source(obj, remote) as source:
        result = repair(obj.repo(), source, progress=obj.progress())
    if as_json:
        _json(result.to_json())
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
    for stamp, cids in report.reused_stamps.items():
        click.echo(f"reused   replica:counter {stamp} stamps {len(cids)} different commits: {', '.join(cids)}")
    summary = f"{len(report.missing)} missing, {len(report.corrupt)} corrupt"
    if report.reused_stamps:
        summary += f", {len(report.reused_stamps)} reused replica stamp(s)"
    click.echo(f"checked {report.checked} blocks: " + ("ok" if report.ok else summary))
    if report.reused_stamps:
        click.echo("hint: two sites commit under one replica id: make one of them a new replica "
                   "('casync clone SOURCE DIR --replica NEW-ID') and retire the old copy", err=True)
    if report.damaged:
        click.echo("hint: 'casync fsck --repair REMOTE' fetches good copies from a remote that has them",
                   err=True)


@main.command()
@click.argument("ref", default="HEAD")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="Show at most N entries.")
@json_option
@_pass
def reflog(obj: _Context, ref: str, max_count: int | None, as_json: bool) -> None:
    """Every move of REF (default HEAD: every commit, checkout and switch, detached or not),
    newest first: how to find lost commits."""
    repo = obj.repo()
    if ref == "HEAD":
        full = "HEAD"
        entries = list(reversed(repo.refs.reflog("HEAD")))[:max_count]
    else:
        from casync.repo import ref_candidates

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
        _json([{"ref": e.ref, "old": cid_str(e.old) if e.old else None, "new": cid_str(e.new) if e.new else None,
                "time_ms": e.time_ms, "reason": e.reason} for e in entries])
        return
    for i, e in enumerate(entries):
        new = short(e.new) if e.new else "(deleted)"
        click.echo(f"{new}  {full}@{{{i}}}  {_format_time(e.time_ms)}  {e.reason}")


@main.command("config")
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Remove KEY.")
@json_option
@_pass
def config_cmd(obj: _Context, key: str | None, value: str | None, unset: bool, as_json: bool) -> None:
    """Show the configuration, one KEY, or set KEY to VALUE.

    VALUE is stored as JSON when it parses as JSON (numbers, objects such as
    merge = {"policy": "lww", "rules": {"*.json": "json"}}), else as a string.  KEY may
    name one field of an object: 'casync config merge.policy siblings'.
    """
    from casync.settings import FIXED_KEYS, KNOWN_KEYS

    repo = obj.repo()
    if key is None:
        if as_json:
            _json(repo.config)
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


# Commands defined in their own modules, imported only when one of them runs (the
# IPFS client alone costs ~70 ms of start-up that 'casync status' should not pay).
_COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "cli_merge": ("merge", "conflicts", "resolve"),
    "cli_sync": ("serve", "sync", "bundle"),
    "cli_remote": ("remote", "push", "fetch", "pull", "clone", "url"),
    "cli_tag": ("tag",),
}


def _load_command(name: str) -> click.Command | None:
    """The command ``name`` from the module of its group, imported here, on first use."""
    if name in _COMMAND_GROUPS["cli_merge"]:
        from casync import cli_merge

        return {"merge": cli_merge.merge, "conflicts": cli_merge.conflicts, "resolve": cli_merge.resolve}[name]
    if name in _COMMAND_GROUPS["cli_sync"]:
        from casync import cli_sync

        return {"serve": cli_sync.serve, "sync": cli_sync.sync, "bundle": cli_sync.bundle}[name]
    if name in _COMMAND_GROUPS["cli_remote"]:
        from casync import cli_remote

        return {"remote": cli_remote.remote_cmd, "push": cli_remote.push, "fetch": cli_remote.fetch,
                "pull": cli_remote.pull, "clone": cli_remote.clone, "url": cli_remote.url_cmd}[name]
    if name == "tag":
        from casync.cli_tag import tag

        return tag
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
