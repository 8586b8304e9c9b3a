"""CLI commands for IPFS remotes: ``remote``, ``push``, ``fetch``, ``pull``, ``clone``, ``url``.

Loaded on first use by the ``casync`` group (``casync.cli.main._load_command``).  The
context object is the CLI's (``repo()``, ``progress()``, ``directory``); errors are
``CasyncError``s that the group turns into one-line messages and exit codes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casync.cli.common import Context, json_option, lazy_module, pass_context, print_json, retry_policy
from casync.errors import EXIT_FAILURE, BlockNotFound, CorruptBlock, RemoteError, UsageError
from casync.model.cid import Cid, cid_str, short
from casync.settings import remotes as configured_remotes
from casync.transports import config as remotes_config
from casync.trees.paths import normalize_paths

if TYPE_CHECKING:
    from casync.transports import ipfs as rmt
else:  # the IPFS transport (and ipfshttpclient) load only when an IPFS remote is used:
    rmt = lazy_module("casync.transports.ipfs")  # a fetch from a peer never pays for them

__all__ = ["block_source"]


_PEER_COMMANDS = ("push", "fetch", "pull")


def _peer_command(command: str) -> Any:
    """Peers (``casync serve`` URLs, paths) share ``push``/``fetch``/``pull``/``clone`` with
    IPFS remotes; ``casync.cli.sync`` implements them for peers (imported on first use, so
    commands that never reach a peer do not pay for it)."""
    from casync.cli import sync as cli_sync
    assert command in _PEER_COMMANDS
    return {"push": cli_sync.push_peer, "fetch": cli_sync.fetch_peer, "pull": cli_sync.pull_peer}[command]


def _peer_remote(obj: Context, name: str | None, command: str, token_file: str | None = None) -> Any:
    """The peer hook for ``command`` if ``name`` is a casync peer (a remote's name, or a peer
    given directly as a 'casync serve' URL or a repository path, as 'casync sync' takes), else None."""
    repo = obj.repo()
    if name is not None and name not in {r.name for r in remotes_config.list_remotes(repo)} and (
            name.startswith(("http://", "https://", "file://")) or (Path(obj.directory) / name).is_dir()):
        return _peer_command(command)
    r = remotes_config.get_remote(repo, name)
    if r.is_ipfs:
        if token_file is not None:
            raise UsageError(f"--token-file is for 'casync serve' peers, and {r.name!r} is an IPFS node",
                             hint="a Kubo RPC API's credentials come from CASYNC_KUBO_API_AUTH")
        return None
    return _peer_command(command)


def _ipfs_fetch_options(f: Any) -> Any:
    """``-j/--jobs`` and ``--timeout``: how fetch, pull and clone ask an IPFS node for blocks."""
    f = click.option("--timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
                     help="IPFS: seconds the node may spend finding a block it lacks among its peers.")(f)
    return click.option("-j", "--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
                        help="IPFS: blocks requested in parallel.")(f)


token_file_option = click.option(
    "--token-file", metavar="FILE",
    help="For a 'casync serve' peer: file holding its bearer token (default: CASYNC_TOKEN, else the "
         "remote's token_file).")


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.2f} MiB"


@click.group("remote", invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show URLs and gateways.")
@json_option
@click.pass_context
def remote_cmd(ctx: click.Context, verbose: bool, as_json: bool) -> None:
    """List remotes (IPFS nodes and casync peers), or manage them with a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    remotes = remotes_config.list_remotes(ctx.obj.repo())
    if as_json:
        print_json([r.to_json() for r in remotes])
        return
    for r in remotes:
        if verbose:
            gw = f"  (gateway {r.gateway})" if r.gateway else ""
            kind = "" if r.is_ipfs else "  (casync peer)"
            if r.cluster:
                kind = f"  (cluster {r.cluster}, replication {r.replication_min or '-'}..{r.replication_max or '-'})"
            click.echo(f"{r.name}\t{r.url.text}{gw}{kind}")
        else:
            click.echo(r.name)


def _cluster_options(f: Any) -> Any:
    f = click.option("--replication-max", type=click.IntRange(1), metavar="N",
                     help="IPFS Cluster: pin each head on at most N peers (default: the cluster's).")(f)
    f = click.option("--replication-min", type=click.IntRange(1), metavar="N",
                     help="IPFS Cluster: a push waits until each head is pinned on N peers; audit --remote "
                          "checks it (default: the cluster's).")(f)
    return click.option("--cluster", metavar="URL",
                        help="IPFS remote: pin through this IPFS Cluster REST API (http://HOST:9094; "
                             "credentials in CASYNC_CLUSTER_API_AUTH). '' removes it (set-url).")(f)


@remote_cmd.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--gateway", metavar="URL", help="HTTP gateway serving the node's blocks (for 'casync url').")
@click.option("--token-file", metavar="FILE",
              help="For a 'casync serve' peer: file holding its bearer token (the path is stored, not the token).")
@_cluster_options
@pass_context
def remote_add(obj: Context, name: str, url: str, gateway: str | None, token_file: str | None, cluster: str | None,
               replication_min: int | None, replication_max: int | None) -> None:
    """Add remote NAME at URL: ipfs+http://HOST:PORT[/REPO-ID][#INDEX-CID] (a Kubo RPC API;
    REPO-ID picks a repository on a node hosting several, INDEX reads head records published
    on another node), or a casync peer (http(s)://HOST:PORT of 'casync serve', or a path).
    With --cluster, pushes pin through that IPFS Cluster's REST API."""
    repo = obj.repo()
    path = _token_path(obj, token_file) if token_file else None
    r = remotes_config.add_remote(repo, name, url, gateway, cluster, (replication_min, replication_max))
    if path:
        _store_token_file(repo, name, path)
    what = "" if r.is_ipfs else " (a casync peer, for 'casync sync'; an IPFS node is ipfs+http://HOST:PORT)"
    click.echo(f"added remote {r.name}: {r.url.text}{what}", err=True)


@remote_cmd.command("remove")
@click.argument("name")
@pass_context
def remote_remove(obj: Context, name: str) -> None:
    """Forget remote NAME and its remote-tracking refs (nothing on the node changes)."""
    refs = remotes_config.remove_remote(obj.repo(), name)
    click.echo(f"removed remote {name} ({len(refs)} remote-tracking ref(s))", err=True)


def _token_path(obj: Context, token_file: str) -> str:
    """The token file as an absolute path (relative to -C DIR, like every path argument)."""
    path = os.path.abspath(os.path.join(obj.directory, token_file))
    if not os.path.isfile(path):
        raise UsageError(f"token file {path} does not exist", hint="create it with the token 'casync serve' uses")
    return path


def _store_token_file(repo: Any, name: str, path: str | None) -> None:
    entry = configured_remotes(repo.config)[name]
    remotes_config.write_remote(repo, name, replace(entry, token_file=path or None))


@remote_cmd.command("set-url")
@click.argument("name")
@click.argument("url", required=False)
@click.option("--gateway", metavar="URL", help="Set the gateway URL ('' removes it).")
@click.option("--token-file", metavar="FILE", help="Set the bearer-token file of a casync peer ('' removes it).")
@_cluster_options
@pass_context
def remote_set_url(obj: Context, name: str, url: str | None, gateway: str | None, token_file: str | None,
                   cluster: str | None, replication_min: int | None, replication_max: int | None) -> None:
    """Change the URL, the gateway, the token file and/or the IPFS Cluster of remote NAME."""
    replication = (replication_min, replication_max)
    if url is None and gateway is None and token_file is None and cluster is None and replication == (None, None):
        raise click.UsageError("give a URL, --gateway, --token-file, --cluster and/or --replication-min/max")
    repo = obj.repo()
    if token_file is not None:
        remotes_config.get_remote(repo, name)  # names an unknown remote clearly
        _store_token_file(repo, name, _token_path(obj, token_file) if token_file else None)
        if url is None and gateway is None:
            click.echo(f"remote {name}: token file {'set' if token_file else 'removed'}", err=True)
            return
    r = remotes_config.set_remote(repo, name, url, gateway, cluster, replication)
    click.echo(f"remote {r.name}: {r.url.text}" + (f" (gateway {r.gateway})" if r.gateway else "")
               + (f" (cluster {r.cluster})" if r.cluster else ""), err=True)


@remote_cmd.command("show")
@click.argument("name", required=False)
@json_option
@pass_context
def remote_show(obj: Context, name: str | None, as_json: bool) -> None:
    """Show what remote NAME publishes: every replica's heads, the index CID, and the
    pins casync named on that node for this repository."""
    repo = obj.repo()
    r = remotes_config.get_remote(repo, name).require_ipfs()
    with rmt.connect(r.url, retry=retry_policy()) as node:
        errors: list[str] = []
        records = node.records(repo.repo_id, errors=errors)
        mfs = node.index_cid(repo.repo_id)
        from casync.transports.ipfs.index import list_indexes
        from casync.transports.ipfs.util import PIN_PREFIX
        indexes = list_indexes(node, repo.repo_id)
        version = node.version
        pins = node.client.named_pins(f"{PIN_PREFIX}{repo.repo_id}/")
    cluster = _cluster_coverage(r, records)
    index = indexes[0].cid if indexes else None  # the newest linked index pinned there
    if as_json:
        print_json({"remote": r.to_json(), "kubo": version, "index": cid_str(index) if index else None,
               "indexes": [i.to_json() for i in indexes], "mfs_index": cid_str(mfs) if mfs else None,
               "records": {k: v.to_json() for k, v in sorted(records.items())}, "invalid": errors,
               "pins": [{"name": n, "cid": cid_str(c), "type": t} for n, c, t in pins],
               **({"cluster": [{"replica": rep, "branch": b, **cov.to_json()} for rep, b, cov in cluster]}
                  if r.cluster else {})})
    else:
        click.echo(f"remote {r.name}: {r.url.text} (Kubo {version})")
        click.echo(f"index: {cid_str(index) if index else '-'}")
        click.echo(f"mfs index: {cid_str(mfs) if mfs else '-'}")
        for replica, rec in sorted(records.items()):
            for branch, head in sorted(rec.heads.items()):
                click.echo(f"  {replica}/{branch}\t{cid_str(head.commit)}\t(seq {rec.seq})")
        click.echo(f"pins: {len(pins)}")
        for n, c, t in pins:
            click.echo(f"  {n}\t{cid_str(c)}\t({t})")
        if r.cluster:
            click.echo(f"cluster {r.cluster}: {len(cluster)} head pin(s)")
        for replica, branch, cov in cluster:
            click.echo(f"  {replica}/{branch}\t{cov.status.name or '-'}\tpinned on {cov.pinned}/{cov.required} "
                       f"peers{'' if cov.ok else ' (UNDER-REPLICATED)'}")
            for p in cov.status.peers:
                click.echo(f"    {p.peername or p.peer}\t{p.status}" + (f"\t{p.error}" if p.error else ""))
        for e in errors:
            click.echo(f"invalid: {e}", err=True)
    if errors:
        sys.exit(EXIT_FAILURE)


def _cluster_coverage(r: Any, records: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(replica, branch, coverage) of every published head on the remote's cluster."""
    from casync.transports.ipfs.cluster import cluster_pins

    pins = cluster_pins(r, retry_policy())
    if pins is None:
        return []
    return [(replica, branch, pins.coverage(head.commit))
            for replica, rec in sorted(records.items()) for branch, head in sorted(rec.heads.items())]


@click.command()
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@click.option("-f", "--force", is_flag=True,
              help="IPFS: replace this replica's published head even if not a fast-forward.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=16, show_default=True, metavar="MIB",
              help="IPFS: bytes of blocks per upload request (MiB).")
@token_file_option
@json_option
@pass_context
def push(obj: Context, remote: str | None, branch: str | None, force: bool, batch_size: int, token_file: str | None,
         as_json: bool) -> None:
    """Send BRANCH (default: current) to REMOTE (default: origin).

    To an IPFS node: upload its blocks and publish this replica's head.  To a casync peer:
    move the peer's BRANCH, as a fast-forward only.  REMOTE is an IPFS node (ipfs+http://)
    or a casync peer: a 'casync serve' URL or another repository's path.
    """
    hook = _peer_remote(obj, remote, "push", token_file)
    if hook is not None:
        if force:
            raise UsageError("push --force is only for IPFS remotes: a casync peer takes fast-forwards only",
                             hint="pull (fetch and merge) first, then push")
        hook(obj, remote, branch, as_json=as_json, token_file=token_file)
        return
    repo = obj.repo()
    res = rmt.push(repo, remote, branch, force=force, progress=obj.progress(), batch_bytes=batch_size << 20,
                   measure=as_json, retry=retry_policy())
    if as_json:
        print_json(res.to_json())
        return
    if res.up_to_date:
        click.echo(f"{res.remote}: {res.replica}/{res.branch} already at {short(res.head)}")
        return
    old = short(res.old) if res.old else "(new)"
    click.echo(f"{res.remote}: {res.replica}/{res.branch} {old} -> {short(res.head)}  "
               f"({res.blocks_sent} blocks, {_mib(res.bytes_sent)} in {res.batches} request(s)"
               + (f", {res.skipped_present} already there" if res.skipped_present else "") + ")")
    if res.index:
        click.echo(f"index: {cid_str(res.index)}")
    if res.index_error:
        click.echo(f"warning: no index written: {res.index_error}", err=True)


def _report_fetch(res: rmt.FetchResult, level: str = "error") -> None:
    for ref, (old, new) in res.updated.items():
        click.echo(f"  {short(old) if old else '(new)':>20} -> {short(new)}  {ref}")
    for f in res.failed:
        click.echo(f"{level}: {f.replica}/{f.branch} ({cid_str(f.commit)}) not fetched: {f.error}", err=True)
    for e in res.invalid_records:
        click.echo(f"{level}: {e}", err=True)
    from casync.cli.tag import print_tag_report

    print_tag_report(res.tags.to_json() if res.tags is not None else None, res.remote)


@click.command()
@click.argument("remote", required=False)
@_ipfs_fetch_options
@token_file_option
@click.option("--require-signed/--no-require-signed", default=None,
              help="Refuse history holding a commit without a valid signature by a trusted key, before any "
                   "ref moves (default: config require_signed).")
@click.option("--path", "paths", multiple=True, metavar="PATH",
              help="A partial clone: also fetch PATH's history and check it out (repeatable).")
@click.option("--all-paths", is_flag=True, help="A partial clone: fetch every path; the repository is whole again.")
@json_option
@pass_context
def fetch(obj: Context, remote: str | None, jobs: int, timeout: float, token_file: str | None,
          require_signed: bool | None, paths: tuple[str, ...], all_paths: bool, as_json: bool) -> None:
    """Download REMOTE's history without merging it.

    From an IPFS node: every replica's published heads (refs remotes/REMOTE/REPLICA/BRANCH).
    From a casync peer: its branches (refs remotes/REMOTE/BRANCH).  REMOTE is an IPFS node
    (ipfs+http://) or a casync peer: a 'casync serve' URL or another repository's path.
    """
    if paths and all_paths:
        raise UsageError("--path and --all-paths exclude each other", hint="--all-paths fetches every path")
    widen = normalize_paths(paths) if paths else () if all_paths else None  # checked before any transfer
    hook = _peer_remote(obj, remote, "fetch", token_file)
    if hook is not None:
        hook(obj, remote, as_json=as_json, token_file=token_file, require_signed=require_signed, widen=widen)
        return
    if widen is not None:
        raise UsageError("fetch --path / --all-paths is not supported for IPFS remotes yet",
                         hint="widen the clone from a 'casync serve' peer or a repository path")
    res = rmt.fetch(obj.repo(), remote, progress=obj.progress(), concurrency=jobs, wait=timeout, retry=retry_policy(),
                    require_signed=require_signed)
    if as_json:
        print_json(res.to_json())
    else:
        _report_fetch(res)
        click.echo(f"fetched {res.blocks_received} blocks ({_mib(res.bytes_received)}) from {res.remote}",
                   err=True)
    if not res.ok:
        sys.exit(EXIT_FAILURE)


@click.command()
@click.argument("remote", required=False)
@click.option("-f", "--force", is_flag=True, help="IPFS: discard uncommitted changes in the way.")
@click.option("--policy", "-p", help="Merge policy when histories diverged (default: config merge.policy, else lww).")
@_ipfs_fetch_options
@token_file_option
@click.option("--require-signed/--no-require-signed", default=None,
              help="Refuse history holding a commit without a valid signature by a trusted key, before any "
                   "ref moves (default: config require_signed).")
@json_option
@pass_context
def pull(obj: Context, remote: str | None, force: bool, policy: str | None, jobs: int, timeout: float,
         token_file: str | None, require_signed: bool | None, as_json: bool) -> None:
    """Fetch from REMOTE, then fast-forward the current branch, or merge diverged heads.

    REMOTE is an IPFS node (ipfs+http://) or a casync peer: a 'casync serve' URL or another
    repository's path.
    """
    hook = _peer_remote(obj, remote, "pull", token_file)
    if hook is not None:
        hook(obj, remote, force=force, as_json=as_json, policy=policy, token_file=token_file,
             require_signed=require_signed)
        return
    res = rmt.pull(obj.repo(), remote, progress=obj.progress(), force=force, concurrency=jobs, wait=timeout,
                   retry=retry_policy(), policy=policy, require_signed=require_signed)
    if as_json:
        print_json(res.to_json())
    else:
        _report_fetch(res.fetch)
        if res.up_to_date:
            click.echo(f"{res.branch}: already up to date")
        elif res.merged:
            from casync.cli.merge import report_decisions

            new = short(res.new) if res.new else ""
            click.echo(f"{res.branch}: merged {len(res.merged)} diverged head(s) -> {new}")
            for outcome in res.outcomes:
                report_decisions(outcome)
        else:
            click.echo(f"{res.branch}: fast-forward {short(res.old) if res.old else '(empty)'} -> "
                       f"{short(res.new) if res.new else ''}")
    if not res.fetch.ok:
        sys.exit(EXIT_FAILURE)


@click.command()
@click.argument("url")
@click.argument("directory", metavar="DIR")
@click.option("--replica", help="This clone's replica id (default: random r-XXXXXXXXXXXX).")
@click.option("--branch", "-b", help="Branch to check out (default: main if published).")
@click.option("--gateway", metavar="URL", help="Gateway URL to record with the 'origin' remote.")
@_ipfs_fetch_options
@click.option("--token-file", metavar="FILE",
              help="For a 'casync serve' URL: file holding its bearer token (recorded with 'origin').")
@click.option("--path", "paths", multiple=True, metavar="PATH",
              help="A partial clone: fetch and check out only PATH (repeatable); later fetches keep to it.")
@json_option
@pass_context
def clone(obj: Context, url: str, directory: str, replica: str | None, branch: str | None, gateway: str | None,
          jobs: int, timeout: float, token_file: str | None, paths: tuple[str, ...], as_json: bool) -> None:
    """Create DIR as a new replica of the repository at URL: an IPFS node
    (ipfs+http://HOST:PORT[/REPO-ID][#INDEX]), a 'casync serve' peer (http(s)://HOST:PORT),
    another repository (a path or file:// URL), or a full bundle file made with 'casync bundle
    create' (FILE.car: a new site set up from a USB stick).

    Heads that cannot be fetched (or invalid head records) are warnings: the clone
    succeeds with the rest; 'casync fetch' reports them as errors.
    """
    if url.lower().startswith("ipfs+") and not remotes_config.is_ipfs_url(url):
        raise UsageError(f"malformed IPFS URL {url!r}", hint="use ipfs+http://HOST:PORT[/REPO-ID][#INDEX]")
    wanted = normalize_paths(paths) if paths else ()  # a bad path: a usage error before anything is made
    if not remotes_config.is_ipfs_url(url):
        from casync.cli.sync import clone_peer

        clone_peer(obj, url, directory, replica=replica, branch=branch, as_json=as_json,
                   token_file=_token_path(obj, token_file) if token_file else None, paths=wanted)
        return
    path = os.path.join(obj.directory, directory)
    # Ctrl-C: clonestate.CloneInterrupted carries the hint that the partial clone is kept
    repo, res = rmt.clone(url, path, replica=replica, branch=branch, gateway=gateway, progress=obj.progress(),
                          concurrency=jobs, wait=timeout, retry=retry_policy(), paths=wanted)
    repo.close()
    if as_json:
        print_json(res.to_json())
    else:
        _report_fetch(res.fetch, "warning")
        where = f"branch {res.branch} at {short(res.head)}" if res.head else "no commits"
        partial = f"; partial: {', '.join(res.paths)} only" if res.paths else ""
        click.echo(f"cloned repository {res.repository} into {res.root} (replica {res.replica}, {where}{partial})")
        if res.diverged:
            click.echo("warning: the published heads have diverged; checked out the newest", err=True)


@click.command("url")
@click.argument("spec", metavar="REV[:PATH]", default="HEAD")
@click.option("--remote", "remote_name", help="Remote whose gateway to use (default: origin).")
@pass_context
def url_cmd(obj: Context, spec: str, remote_name: str | None) -> None:
    """Print the gateway URL of REV[:PATH]: GATEWAY/ipfs/COMMIT/tree/PATH.

    GATEWAY is the remote's --gateway, else the one its node reports (Addresses.Gateway).
    """
    repo = obj.repo()
    click.echo(rmt.gateway_url(repo, spec, remote_name, retry=retry_policy()))
    commit = repo.entry_at(spec if ":" in spec else spec + ":")[0]
    if not rmt.is_published(repo, commit, remote_name):
        click.echo(f"warning: {short(commit)} has not been pushed to this remote (as far as this replica "
                   "knows): the gateway serves it only once the node has it ('casync push')", err=True)


@contextlib.contextmanager
def block_source(obj: Context, spec: str) -> Iterator[Any]:
    """For ``fsck --repair SPEC``: a function from CIDs to the ``(cid, bytes)`` that SPEC (a
    remote name or URL; an IPFS node, else a casync peer) can give (:data:`casync.repo.repair.BlockSource`)."""
    repo = obj.repo()
    configured = {r.name: r for r in remotes_config.list_remotes(repo)}.get(spec)
    if configured is not None and configured.is_ipfs:
        url = configured.url
    elif configured is None and remotes_config.is_ipfs_url(spec):
        url = remotes_config.parse_url(spec)
    else:
        from casync.cli.sync import peer_block_source

        with peer_block_source(obj, spec) as source:
            yield source
        return
    with rmt.connect(url, retry=retry_policy()) as node:
        store = node.block_store()

        def copies(cids: list[Cid]) -> Iterable[tuple[Cid, bytes]]:
            for cid in cids:
                try:
                    yield cid, store.get(cid)
                except (BlockNotFound, CorruptBlock):
                    continue  # the node has no good copy either
                except RemoteError as err:
                    if err.transient:
                        raise
                    continue

        try:
            yield copies
        finally:
            store.discard()
