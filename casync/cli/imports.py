"""``casync import``: commit a UnixFS DAG that someone added to IPFS, every block verified."""

from __future__ import annotations

import click

from casync.cli.common import Context, json_option, pass_context, print_json, retry_policy

__all__ = ["import_cmd"]


@click.command("import")
@click.argument("cid")
@click.option("--path", "path", metavar="P", help="Graft the DAG at P (the rest of HEAD's tree kept); without it, "
                                                  "the DAG is the whole tree.")
@click.option("-m", "--message", help="Commit message (default: 'import CID [at P]').")
@click.option("--remote", metavar="R", help="Read from the IPFS remote R (default: origin, or the only remote).")
@click.option("--api", metavar="ADDR", help="Read from the Kubo RPC API at ADDR (http://HOST:PORT) instead.")
@click.option("--timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Seconds the node may spend finding a block it lacks among its peers.")
@json_option
@pass_context
def import_cmd(obj: Context, cid: str, path: str | None, message: str | None, remote: str | None,
               api: str | None, timeout: float, as_json: bool) -> None:
    """Commit CID, a UnixFS DAG from 'ipfs add', on the current branch: its tree CID is CID
    (nothing is re-chunked).  Every block is hash-checked and validated before it is stored;
    nothing is committed if one fails.  Run 'casync checkout' afterwards for the files."""
    from casync import porcelain

    repo = obj.repo()
    res = porcelain.import_dag(repo, cid, path, message, remote=remote, api=api, progress=obj.progress(),
                               retry=retry_policy(), wait=timeout)
    if as_json:
        print_json(res.to_json())
        return
    from casync.model.cid import cid_str, short

    where = f" at {res.path}" if res.path else ""
    click.echo(f"[{repo.current_branch() or 'detached HEAD'} {short(res.commit)}] imported {cid_str(res.root)}"
               f"{where}: {res.blocks} blocks ({res.bytes} bytes) fetched, {res.blocks_new} new")
    if not repo.bare:
        click.echo("hint: run 'casync checkout' to bring the files into the working tree", err=True)
