"""``casync audit`` (a snapshot re-verified, or its audit trail) and ``casync key`` (signing keys)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import click

from casync.cli.common import Context, format_time, human_bytes, json_option, pass_context, print_json
from casync.errors import EXIT_FAILURE, StateRefused, UsageError
from casync.model.cid import DAG_CBOR, Cid, cid_codec, cid_str, parse_cid, short

__all__ = ["audit", "key"]

_SHOWN_PER_KIND = 20


@click.command()
@click.argument("target", required=False, default="HEAD", metavar="[REV|CID]")
@click.option("--remote", metavar="NAME", help="Also check that an IPFS remote holds and pins every block, and "
                                               "that its head records agree with the local refs.")
@click.option("--deep", is_flag=True, help="Read and hash every block, and check every pack record.")
@click.option("--sample", "sample_pct", type=click.FloatRange(0, 100, min_open=True), metavar="PCT",
              help="Read and hash a random PCT percent of the file blocks (--seed makes the choice repeatable).")
@click.option("--seed", type=click.IntRange(0), help="Seed of the --sample choice (default: random, reported).")
@click.option("--require-signed/--no-require-signed", default=None,
              help="Report unsigned commits and commits by untrusted keys too (default: config require_signed).")
@click.option("--trail", is_flag=True, help="Show the audit trail instead: per commit its replica, author, "
                                            "signer, time and the paths it changed.")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="--trail: at most N commits.")
@json_option
@pass_context
def audit(obj: Context, target: str, remote: str | None, deep: bool, sample_pct: float | None, seed: int | None,
          require_signed: bool | None, trail: bool, max_count: int | None, as_json: bool) -> None:
    """Verify the snapshot REV (default HEAD) or the DAG below CID: every block present and
    hash-valid, structure canonical, names valid, clocks consistent along the history, no
    commit from the future, signatures valid.  Exit 0 clean, 1 with findings."""
    if trail:
        if remote or deep or sample_pct or seed is not None:
            raise UsageError("--trail shows history; it takes no --remote, --deep, --sample or --seed")
        _trail(obj, target, max_count, as_json)
        return
    if deep and sample_pct:
        raise UsageError("--deep reads every block; --sample reads a share of them", hint="give one of the two")
    if seed is not None and not sample_pct:
        raise UsageError("--seed chooses the blocks of --sample", hint="add --sample PCT")
    if max_count is not None:
        raise UsageError("-n/--max-count is for --trail")
    from casync.repo.audit import AuditOptions, AuditReport, record_audit
    from casync.repo.audit import audit as run_audit

    repo = obj.repo()
    root = _target(obj, target)
    extra = None
    if remote is not None:
        from casync.transports.ipfs.audit import audit_remote

        name = remote

        def extra(report: AuditReport, cids: set[Cid]) -> None:
            audit_remote(repo, name, report, cids)

    options = AuditOptions(deep=deep, sample_pct=sample_pct or 0.0, seed=seed, require_signed=require_signed)
    report = run_audit(repo, root, options, progress=obj.progress(), extra=extra)
    record_audit(repo, report.ok, len(report.findings), time.time())
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(report)
    if not report.ok:
        sys.exit(EXIT_FAILURE)


def _target(obj: Context, target: str) -> Cid:
    """The commit REV names, or the block a CID names (a tree or file may be audited alone)."""
    repo = obj.repo()
    try:
        cid = parse_cid(target)
    except (UsageError, ValueError):
        return repo.resolve(target)
    if cid_codec(cid) != DAG_CBOR:
        if not repo.blocks.has(cid):
            raise UsageError(f"block {target} is not in this repository", hint="fetch it from a remote first")
        return cid
    return repo.resolve(target)


def _print_report(report: Any) -> None:
    read = f", {report.read} read and hashed" + (f" (sample seed {report.seed})" if report.seed is not None else "")
    click.echo(f"audit of {cid_str(report.root)}: {report.commits} commit(s), {report.blocks} block(s), "
               f"{human_bytes(report.bytes)}{read}")
    if report.signatures:
        click.echo("signatures: " + ", ".join(f"{k} {v}" for k, v in sorted(report.signatures.items())))
    shown: Counter[str] = Counter()
    for f in report.findings:
        shown[f.kind] += 1
        if shown[f.kind] > _SHOWN_PER_KIND:
            continue
        click.echo(f"{f.kind:<14} {cid_str(f.cid) if f.cid is not None else '-'}  {f.detail}")
        if f.paths:
            click.echo(f"{'':<14} used by: {', '.join(f.paths)}")
    for kind, count in sorted(shown.items()):
        if count > _SHOWN_PER_KIND:
            click.echo(f"... and {count - _SHOWN_PER_KIND} more {kind} finding(s) (--json lists all)")
    for note in report.notes[:_SHOWN_PER_KIND]:
        click.echo(f"{'note':<14} {cid_str(note.cid) if note.cid is not None else '-'}  {note.kind}: {note.detail}")
    if len(report.notes) > _SHOWN_PER_KIND:
        click.echo(f"... and {len(report.notes) - _SHOWN_PER_KIND} more note(s) (--json lists all)")
    click.echo("ok" if report.ok else f"{len(report.findings)} finding(s)")


def _trail(obj: Context, rev: str, limit: int | None, as_json: bool) -> None:
    from casync.repo.trail import trail

    entries = trail(obj.repo(), rev, limit)
    if as_json:
        print_json([e.to_json() for e in entries])
        return
    for e in entries:
        c, v = e.commit, e.verdict
        signer = f"{v.status}" + (f" {v.key_id}" if v.key_id else "")
        click.echo(f"{short(e.cid)}  {format_time(c.time.wall_ms)}  replica {c.replica}  author {c.author}  "
                   f"signature {signer}")
        for path in e.paths:
            click.echo(f"    {path}")


@click.group()
def key() -> None:
    """This replica's signing key (ed25519): make one, or print its public key."""


@key.command("generate")
@click.option("--force", is_flag=True, help="Replace an existing key (commits it signed verify only where its "
                                            "public key stays trusted).")
@json_option
@pass_context
def key_generate(obj: Context, force: bool, as_json: bool) -> None:
    """Make this replica's private key (.casync/keys/REPLICA.ed25519, mode 0600) and print its public key."""
    from casync.repo.keys import generate_key

    repo = obj.repo()
    public = generate_key(repo.root, repo.replica, force=force)
    _print_public(repo.replica, public, as_json)


@key.command("export")
@json_option
@pass_context
def key_export(obj: Context, as_json: bool) -> None:
    """Print this replica's public key as a trusted-signers line: REPLICA ed25519 BASE64-KEY."""
    from casync.model.signing import public_key
    from casync.repo.keys import load_seed

    repo = obj.repo()
    seed = load_seed(repo.root, repo.replica)
    if seed is None:
        raise StateRefused(f"replica {repo.replica} has no signing key", hint="make one with 'casync key generate'")
    _print_public(repo.replica, public_key(seed), as_json)


def _print_public(replica: str, public: bytes, as_json: bool) -> None:
    import base64

    from casync.model.signing import KEY_TYPE, format_signer_line, key_id

    if as_json:
        print_json({"replica": replica, "type": KEY_TYPE, "public_key": base64.b64encode(public).decode(),
               "key_id": key_id(public), "line": format_signer_line(replica, public)})
    else:
        click.echo(format_signer_line(replica, public))
