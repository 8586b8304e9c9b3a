"""The working-tree commands: ``status``, ``commit``, ``checkout``, ``switch``, ``restore``, ``rm``."""

from __future__ import annotations

import click

from casync import porcelain
from casync.cli.common import Context, json_option, pass_context, print_json, quote_path, repo_relative
from casync.errors import StateRefused, UsageError
from casync.model.cid import short
from casync.repo.repository import Repository

__all__ = ["checkout", "commit", "restore", "rm_cmd", "status", "switch"]


@click.command()
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--author", help="Author name (default: $CASYNC_AUTHOR, config 'author', then the login name).")
@click.option("--allow-empty", is_flag=True, help="Commit even if nothing changed.")
@click.option("--sign/--no-sign", default=None,
              help="Sign the commit with this replica's key ('casync key generate'); default: config 'sign'.")
@pass_context
def commit(obj: Context, message: str, author: str | None, allow_empty: bool, sign: bool | None) -> None:
    """Snapshot the whole working tree; print the new commit's CID."""
    repo = obj.repo()
    cid = porcelain.commit(repo, message, author=author, allow_empty=allow_empty,
                      progress=obj.progress(), sign=sign)
    click.echo(cid)


@click.command()
@json_option
@pass_context
def status(obj: Context, as_json: bool) -> None:
    """Show what changed in the working tree since HEAD."""
    st = porcelain.status(obj.repo(), progress=obj.progress())
    if as_json:
        print_json(st.to_json())
        return
    where = f"on branch {st.branch}" if st.branch else f"HEAD detached at {short(st.head)}" if st.head else ""
    click.echo(where + ("" if st.head else " (no commits yet)"))
    if st.partial:
        click.echo(f"partial clone: holds only {', '.join(st.partial)} (widen with 'casync fetch --path PATH')")
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
            click.echo(f"  {label + ':':10} {quote_path(p)}")
    if st.ignored_tracked:
        click.echo("tracked, though .casyncignore matches (still committed; untrack with 'casync rm --cached PATH'):")
        for p in st.ignored_tracked:
            click.echo(f"  {'ignored:':10} {quote_path(p)}")


@click.command()
@click.argument("rev")
@click.option("-f", "--force", is_flag=True, help="Discard uncommitted changes that are in the way.")
@pass_context
def checkout(obj: Context, rev: str, force: bool) -> None:
    """Make the working tree match REV (a branch name also switches to that branch)."""
    repo = obj.repo()
    cid = _checkout(obj, repo, rev, force)
    branch = repo.current_branch()
    click.echo(f"switched to branch {branch} at {short(repo.resolve(cid))}" if branch and branch == rev
               else f"HEAD is now at {short(repo.resolve(cid))} (detached)", err=True)


@click.command()
@click.option("--source", "-s", default="HEAD", show_default=True, help="Revision to restore from.")
@click.argument("paths", nargs=-1, required=True)
@pass_context
def restore(obj: Context, source: str, paths: tuple[str, ...]) -> None:
    """Restore PATHS in the working tree from --source (files under them that REV lacks are removed)."""
    repo = obj.repo()
    rel = [repo_relative(repo, obj.directory, p) for p in paths]
    written = porcelain.restore(repo, rel, source=source, progress=obj.progress())
    click.echo(f"restored {len(written)} file(s) from {source}", err=True)


@click.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("--cached", is_flag=True, help="Keep the files on disk; only stop tracking them.")
@click.option("-r", "recursive", is_flag=True, help="Remove the tracked files under a directory.")
@pass_context
def rm_cmd(obj: Context, paths: tuple[str, ...], cached: bool, recursive: bool) -> None:
    """Stop tracking PATHS: delete them (refused for uncommitted edits), or with --cached
    keep them on disk; the next commit records it."""
    repo = obj.repo()
    done = porcelain.remove(repo, [repo_relative(repo, obj.directory, p) for p in paths], cached=cached,
                            recursive=recursive)
    for p in done:
        click.echo(f"{'untracked' if cached else 'removed'} {quote_path(p)}", err=True)


@click.command()
@click.argument("branch_name", metavar="BRANCH")
@click.option("-c", "--create", is_flag=True, help="Create BRANCH at HEAD first.")
@click.option("-f", "--force", is_flag=True, help="Discard uncommitted changes that are in the way.")
@pass_context
def switch(obj: Context, branch_name: str, create: bool, force: bool) -> None:
    """Switch the working tree and HEAD to BRANCH."""
    repo = obj.repo()
    if create:
        from casync.worktree.state import refuse_mid_merge

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


def _checkout(obj: Context, repo: Repository, rev: str, force: bool) -> str:
    """Check out REV; leaving a detached HEAD whose commits no ref reaches says so (they
    are then only in HEAD's reflog), as git does."""
    detached = repo.head() if repo.current_branch() is None else None
    cid = porcelain.checkout(repo, rev, force=force, progress=obj.progress())
    if detached is not None and repo.head() != detached:
        behind = repo.left_behind(detached)
        if behind:
            tip = short(behind[0])
            listed = ", ".join(short(c) for c in behind[:3]) + (" ..." if len(behind) > 3 else "")
            click.echo(f"warning: leaving {len(behind)} commit(s) behind, on no branch: {listed}", err=True)
            click.echo(f"hint: keep them with 'casync branch NAME {tip}' ('casync reflog HEAD' lists them later)",
                       err=True)
    return cid
