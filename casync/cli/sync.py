"""CLI commands for peer-to-peer sync without IPFS: ``serve``, ``sync``, ``bundle``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from casync.cli.common import Context, json_option, pass_context, print_json, retry_policy
from casync.errors import EXIT_FAILURE, CasyncError, RefConflict, StateRefused, UsageError
from casync.model.cid import short
from casync.settings import RemoteEntry, remotes

__all__ = ["bundle", "open_peer", "peer_block_source", "serve", "sync"]


def read_token(token_file: Path | None, remote: RemoteEntry | None = None, base: str = ".",
               root: Path | None = None) -> str | None:
    """The bearer token: --token-file, else CASYNC_TOKEN, else the remote's token_file.

    A relative --token-file is taken relative to ``base`` (the -C directory), like every
    path argument; a relative path in the config relative to ``root`` (the repository)."""
    path = Path(base) / token_file if token_file is not None else None
    if path is None and os.environ.get("CASYNC_TOKEN"):
        return os.environ["CASYNC_TOKEN"]
    if path is None and remote is not None and remote.token_file:
        path = (root or Path(base)) / remote.token_file
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {path}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"token file {path} is empty", hint="put a long random secret in it")
        return token
    return os.environ.get("CASYNC_TOKEN") or None


def peer_target(repo: Any, spec: str, base: str = ".") -> tuple[str, str, RemoteEntry | None]:
    """(remote name, URL, remote config) for a configured remote name, an http(s) URL or a
    path (:func:`casync.transports.locate.locate`), without contacting it; an unknown name or
    an IPFS remote is a usage error (exit 2)."""
    from casync.transports.locate import locate, open_peer

    where = locate(spec, remotes(repo.config), repo.root, base)
    if where.kind == "ipfs":
        open_peer(where)  # raises: IPFS remotes are for pull / push
    return where.name, where.url, where.config


def open_peer(repo: Any, spec: str, token_file: Path | None, base: str = ".") -> tuple[str, Any]:
    """(remote name, peer) for :func:`peer_target`'s ``spec``, retried with backoff on a
    link that drops (``CASYNC_REMOTE_ATTEMPTS``); see :func:`read_token`."""
    from casync.transports.locate import locate
    from casync.transports.locate import open_peer as open_transport

    where = locate(spec, remotes(repo.config), repo.root, base)
    token = read_token(token_file, where.config, base, repo.root) if where.kind == "http" else None
    return where.name, open_transport(where, token, retry_policy())


@contextlib.contextmanager
def peer_block_source(obj: Context, spec: str) -> Iterator[Any]:
    """``fsck --repair`` from a peer (a remote name, a 'casync serve' URL or a path): its
    ``blocks`` call, which answers with the blocks it holds intact."""
    _name, peer = open_peer(obj.repo(), spec, None, obj.directory)
    try:
        yield peer.blocks
    finally:
        peer.close()


@click.command()
@click.option("--bind", default="127.0.0.1:8470", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0 picks a free one). Loopback unless you mean otherwise.")
@click.option("--token-file", type=click.Path(path_type=Path), required=True,
              help="File holding the bearer token clients must present.")
@click.option("--read-token-file", "read_token_files", type=click.Path(path_type=Path), multiple=True,
              help="File holding a token that may fetch but not push (repeatable: one per pulling site).")
@click.option("--read-only", is_flag=True, help="Refuse pushes.")
@click.option("--max-push-bytes", type=click.IntRange(min=0), default=None, metavar="BYTES",
              help="Largest push body accepted (default 4 GiB; the free space bounds it further).")
@click.option("-v", "--verbose", is_flag=True, help="Log every request to stderr.")
@pass_context
def serve(obj: Context, bind: str, token_file: Path, read_token_files: tuple[Path, ...], read_only: bool,
          max_push_bytes: int | None, verbose: bool) -> None:
    """Serve this repository to peers over HTTP (fetch, and push unless --read-only).

    Every request needs 'Authorization: Bearer <token>': the --token-file token may fetch and
    push, a --read-token-file token only fetch.  Stops on Ctrl-C or SIGTERM.
    """
    from casync.transports.peer.server import MAX_PUSH_BYTES
    from casync.transports.peer.server import serve as make_server

    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--bind expects HOST:PORT with a port 0-65535, got {bind!r}")
    if host.startswith("["):
        raise UsageError("IPv6 binds are not supported yet", hint="use 127.0.0.1:PORT")
    token = read_token(token_file, base=obj.directory)
    assert token is not None
    read_tokens = [read_token(path, base=obj.directory) for path in read_token_files]
    repo = obj.repo()
    server = make_server(repo, token.encode(), host.strip("[]"), int(port), read_only, verbose,
                         read_tokens=[t.encode() for t in read_tokens if t is not None],
                         max_push_bytes=MAX_PUSH_BYTES if max_push_bytes is None else max_push_bytes)
    real_host, real_port = str(server.server_address[0]), int(server.server_address[1])
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        click.echo(f"warning: listening on {host}, beyond loopback; use TLS in front of it", err=True)
    click.echo(f"serving {repo.root} on http://{real_host}:{real_port}" + (" (read-only)" if read_only else ""),
               err=True)
    if repo.partial is not None:  # refs name DAGs complete within its paths only
        click.echo(f"note: a partial clone, holding only {', '.join(repo.partial.paths)}: it serves fetches within "
                   "those paths ('clone --path') and refuses full fetches and pushes", err=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        click.echo("stopped", err=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command()
@click.argument("peers", nargs=-1)
@click.option("--policy", "-p", help="Merge policy for diverged histories (default: config merge.policy, else lww).")
@click.option("--token-file", type=click.Path(path_type=Path), help="Bearer token for http(s) peers.")
@click.option("--no-push", is_flag=True, help="Only fetch and merge.")
@click.option("--require-signed/--no-require-signed", default=None,
              help="Refuse a peer's history holding a commit without a valid signature by a trusted key, before "
                   "any ref moves (default: config require_signed).")
@json_option
@pass_context
def sync(obj: Context, peers: tuple[str, ...], policy: str | None, token_file: Path | None, no_push: bool,
         require_signed: bool | None, as_json: bool) -> None:
    """Fetch from each PEER (default: every non-IPFS remote), merge, and push back.

    A PEER is a remote name, an http(s):// URL of 'casync serve', or a repository path.
    """
    from casync.agent.exchange import exchange

    repo = obj.repo()
    branch = repo.current_branch()
    if branch is None:
        raise StateRefused("sync needs a branch checked out (HEAD is detached)", hint="casync switch main")
    targets = list(peers) or [n for n, c in remotes(repo.config).items() if not c.url.startswith("ipfs+")]
    if not targets:
        raise UsageError("no peers to sync with", hint="give PEER arguments or add a remote")
    for spec in targets:  # a mistyped peer is a usage error before any peer is contacted
        peer_target(repo, spec, obj.directory)
    report: list[dict[str, Any]] = []
    exit_code = 0
    for spec in targets:
        entry: dict[str, Any] = {"peer": spec}
        try:
            name, peer = open_peer(repo, spec, token_file, obj.directory)
            try:
                exchange(repo, peer, name, branch, entry, policy=policy, push=not no_push,
                         progress=obj.progress(), require_signed=require_signed)
            finally:
                peer.close()
        except RefConflict as exc:
            entry["error"] = f"{exc.message} (the peer moved during sync; run sync again)"
            exit_code = max(exit_code, exc.exit_code)
        except CasyncError as exc:
            entry["error"] = exc.message
            if exc.hint:
                entry["hint"] = exc.hint
            exit_code = max(exit_code, exc.exit_code)
        report.append(entry)
        if not as_json:
            _print_sync(entry)
    if as_json:
        print_json(report)
    if exit_code:
        sys.exit(exit_code)  # 2 if a peer failed on a usage error (a token file), else 1


def _print_sync(entry: dict[str, Any]) -> None:
    peer = entry["peer"]
    if "error" in entry:
        click.echo(f"{peer}: error: {entry['error']}", err=True)
        if entry.get("hint"):
            click.echo(f"hint: {entry['hint']}", err=True)
        return
    f = entry.get("fetch", {})
    click.echo(f"{peer}: fetched {f.get('commits', 0)} commit(s), {f.get('new_blocks', 0)} new block(s), "
               f"{f.get('new_bytes', 0)} bytes in {f.get('round_trips', 0)} round trip(s)")
    m = entry.get("merge")
    if m:
        click.echo(f"{peer}: merge {m['result']}" + (f" -> {m['commit'][:20]}" if m.get("commit") else ""))
        for d in m.get("decisions", []):
            click.echo(f"  {d['policy']:9} {d['winner']:8} {d['path']}")
    p = entry.get("push")
    if p:
        click.echo(f"{peer}: push {p.get('result')}" + (f" ({p.get('blocks')} blocks)" if "blocks" in p else ""))
    _print_tags(entry)


def _print_tags(entry: dict[str, Any]) -> None:
    """Tags that arrived or left, and any conflict, once per peer (a conflict found by the
    fetch is not repeated for the push)."""
    from casync.cli.tag import print_tag_report

    peer = entry["peer"]
    fetched = entry.get("fetch", {}).get("tags")
    print_tag_report(fetched, peer)
    pushed = (entry.get("push") or {}).get("tags")
    if pushed and fetched:
        pushed = {**pushed, "conflicts": {n: c for n, c in pushed.get("conflicts", {}).items()
                                          if n not in fetched.get("conflicts", {})}}
    print_tag_report(pushed, peer, pushed=True)


@click.group()
def bundle() -> None:
    """Move history without a network: CAR files you can carry."""


@bundle.command("create")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("revs", nargs=-1)
@click.option("--since", multiple=True, metavar="REV", help="Leave out what REV reaches (the receiver has it).")
@json_option
@pass_context
def bundle_create(obj: Context, file: Path, revs: tuple[str, ...], since: tuple[str, ...], as_json: bool) -> None:
    """Write REVS (default HEAD) and everything they reach into FILE."""
    from casync.transports.bundle import create_bundle

    file = Path(obj.directory) / file  # like every path argument: relative to -C DIR
    repo = obj.repo()
    if repo.partial is not None:  # a bundle is a complete DAG; this clone never had the rest
        raise StateRefused(f"a partial clone (holding only {', '.join(repo.partial.paths)}) cannot write a bundle: "
                           "it lacks everything outside its paths", hint="bundle from a full clone, or widen this one "
                           "first with 'casync fetch --all-paths'")
    info = create_bundle(repo, file, list(revs), list(since))
    if as_json:
        print_json(info.to_json())
    else:
        click.echo(f"wrote {file}: {len(info.stats.commits)} commit(s), {info.stats.blocks} blocks, "
                   f"{info.stats.bytes} bytes; refs: " + ", ".join(f"{k}={short(v)}" for k, v in info.refs.items()))


@bundle.command("unbundle")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
@pass_context
def bundle_unbundle(obj: Context, file: Path, as_json: bool) -> None:
    """Verify FILE and store its history; its refs appear as bundles/<name> (merge them)."""
    from casync.transports.bundle import read_bundle

    file = Path(obj.directory) / file
    if not file.is_file():
        raise UsageError(f"no bundle at {file}")
    info = read_bundle(obj.repo(), file)
    if as_json:
        print_json(info.to_json())
    else:
        for name, cid in info.refs.items():
            click.echo(f"bundles/{name} -> {short(cid)}")
        click.echo(f"{info.stats.new_blocks} new block(s), {info.stats.new_bytes} bytes", err=True)
    if info.tag_update is not None:
        from casync.cli.tag import print_tag_report

        print_tag_report(info.tag_update.to_json(), "bundle")


# --- peer remotes behind `casync clone/fetch/pull/push` (dispatched from cli_remote) -----------------


def _emit(as_json: bool, data: dict[str, Any], line: str) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(line)


def _token_arg(token_file: str | None) -> Path | None:
    return Path(token_file) if token_file else None


def fetch_peer(obj: Context, remote: str | None, as_json: bool = False, token_file: str | None = None,
               require_signed: bool | None = None, widen: tuple[str, ...] | None = None) -> None:
    """``casync fetch`` from a peer; ``widen`` (``--path``; ``()``: ``--all-paths``) widens a
    partial clone (:mod:`casync.transports.peer.widen`)."""
    from casync.transports.peer.exchange import fetch_from
    from casync.transports.peer.widen import widen_from

    repo = obj.repo()
    name, peer = open_peer(repo, remote or "origin", _token_arg(token_file), obj.directory)
    try:
        if widen is not None:
            result, held = widen_from(repo, peer, name, widen, obj.progress())
            if not as_json:
                click.echo(f"now holding {', '.join(held) if held else 'every path'}", err=True)
        else:
            result = fetch_from(repo, peer, name, obj.progress(), require_signed=require_signed)
    finally:
        peer.close()
    _emit(as_json, result.to_json(), f"fetched {len(result.stats.commits)} commit(s), {result.stats.new_blocks} new "
          f"block(s) ({result.stats.new_bytes} bytes) from {name} in {result.round_trips} round trip(s)")
    _print_tags({"peer": name, "fetch": result.to_json()})


def pull_peer(obj: Context, remote: str | None, force: bool = False, as_json: bool = False,
              policy: str | None = None, token_file: str | None = None, require_signed: bool | None = None) -> None:
    """Fetch, then merge the remote's counterpart of the current branch (fast-forward when
    possible; a diverged history is merged with the configured policy)."""
    from casync.transports.peer.exchange import fetch_from
    from casync.worktree import merging as merger

    repo = obj.repo()
    branch = repo.current_branch()
    if branch is None:
        raise StateRefused("pull needs a branch checked out (HEAD is detached)", hint="casync switch main")
    if force:
        raise UsageError("pull --force is only for IPFS remotes",
                         hint="commit or move your local changes; a merge never overwrites them")
    name, peer = open_peer(repo, remote or "origin", _token_arg(token_file), obj.directory)
    try:
        fetched = fetch_from(repo, peer, name, obj.progress(), require_signed=require_signed)
    finally:
        peer.close()
    ref = f"remotes/{name}/{branch}"
    if repo.refs.get_ref(ref) is None:
        raise UsageError(f"{name} has no branch {branch!r}")
    outcome = merger.merge(repo, ref, policy=policy, progress=obj.progress())
    data = {"fetch": fetched.to_json(), "merge": outcome.to_json()}
    _emit(as_json, data, f"{branch}: {outcome.kind}" + (f" -> {short(outcome.commit)}" if outcome.commit else ""))
    _print_tags({"peer": name, "fetch": data["fetch"]})
    if not as_json:
        from casync.cli.merge import report_decisions

        report_decisions(outcome)
    if outcome.kind == "conflicts":
        sys.exit(EXIT_FAILURE)


def push_peer(obj: Context, remote: str | None, branch: str | None, as_json: bool = False,
              token_file: str | None = None) -> None:
    from casync.transports.peer.exchange import push_to

    repo = obj.repo()
    branch = branch or repo.current_branch()
    if branch is None:
        raise StateRefused("push needs a branch name (HEAD is detached)", hint="casync push REMOTE BRANCH")
    name, peer = open_peer(repo, remote or "origin", _token_arg(token_file), obj.directory)
    try:
        summary = push_to(repo, peer, name, branch, obj.progress())
    finally:
        peer.close()
    _emit(as_json, summary, f"{name}: {branch} {summary['result']}"
          + (f" ({summary.get('commits', 0)} commit(s), {summary.get('blocks', 0)} blocks, "
             f"{summary.get('bytes', 0)} bytes)" if summary["result"] == "pushed" else ""))
    _print_tags({"peer": name, "push": summary})


def clone_peer(obj: Context, url: str, directory: str, replica: str | None = None, branch: str | None = None,
               as_json: bool = False, token_file: str | None = None, paths: tuple[str, ...] = ()) -> None:
    """A new replica of a peer's repository (or of a bundle file's): same repository id,
    hash and chunker (:func:`casync.transports.clone.clone_peer`)."""
    from casync.transports.clone import clone_peer as clone
    from casync.transports.locate import locate

    target = (Path(obj.directory) / directory).resolve()
    if url.lower().startswith("ipfs+") or ("://" in url and not url.startswith(("http://", "https://", "file://"))):
        raise UsageError(f"unsupported clone URL {url!r}", hint="use ipfs+http://, http(s)://, or a path")
    where = locate(url if "://" in url else str((Path(obj.directory) / url).resolve()), base=obj.directory)
    if where.kind == "bundle":
        if paths:
            raise UsageError("clone --path does not apply to a bundle file (it holds every block already)",
                             hint="clone it whole, or clone --path from the repository it was made from")
        _clone_bundle(obj, Path(where.url), target, replica, branch, as_json)
        return
    token = read_token(Path(token_file) if token_file else None) if where.kind == "http" else None
    repo, done = clone(where, target, token=token, token_file=token_file, replica=replica, branch=branch,
                       progress=obj.progress(), retry=retry_policy(), paths=paths)
    try:
        _emit(as_json, done.to_json(repo), f"cloned {url} into {repo.root} (replica {repo.replica}"
              + (f", branch {done.branch}" if done.branch else ", empty")
              + (f"; partial: {', '.join(done.paths)} only)" if done.paths else ")"))
    finally:
        repo.close()


def _clone_bundle(obj: Context, path: Path, target: Path, replica: str | None, branch: str | None,
                  as_json: bool) -> None:
    """``casync clone FILE.car DIR``: a new site from a bundle carried on a USB stick."""
    from casync.transports.bundle import clone_bundle

    repo, info, wanted = clone_bundle(path, target, replica=replica, branch=branch, progress=obj.progress())
    try:
        data = {"root": str(repo.root), "replica": repo.replica, "repository": repo.repo_id, "branch": wanted,
                "bundle": str(path), **info.to_json()}
        _emit(as_json, data, f"cloned bundle {path} into {repo.root} (replica {repo.replica}, branch {wanted}; "
              f"{len(info.stats.commits)} commit(s), {info.stats.new_blocks} blocks)")
    finally:
        repo.close()
