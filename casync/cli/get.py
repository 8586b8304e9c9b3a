"""``casync get``: read one file from an untrusted IPFS gateway, verified block by block."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import click

from casync.cli.common import Context, pass_context

__all__ = ["get"]


@click.command()
@click.argument("target", metavar="GATEWAY-URL/ipfs/CID[/PATH] | CID[:PATH]")
@click.option("--gateway", metavar="URL", help="The gateway to read from (for a CID[:PATH] target).")
@click.option("-o", "--output", metavar="FILE", help="Write the file here (default: stdout). Nothing is left "
                                                      "at FILE unless the whole file verified.")
@pass_context
def get(obj: Context, target: str, gateway: str | None, output: str | None) -> None:
    """Fetch a file as a CAR from any gateway without trusting it: every block must hash to
    its CID and be the next one on the path from CID to the file.  Exit 1 if one is not."""
    from casync.transports.ipfs.gateway import fetch_verified, parse_target

    where = parse_target(target, gateway)
    if output is None:
        fetch_verified(where, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    folder = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".casync-get-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            size = fetch_verified(where, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not obj.quiet:
        click.echo(f"{output}: {size} bytes, every block verified", err=True)
