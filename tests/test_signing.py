"""Signed commits: the spec's test vector, keys on disk, signing on commit and merge, the
verdicts ``log`` shows, and ``--require-signed`` refusing history from a real ``casync serve``
before any ref moves."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import stat
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import UntrustedHistory
from casync.model.cid import DAG_CBOR, cid_str, compute_cid, parse_cid
from casync.model.commit import Commit, HybridTime, decode_commit, encode_commit
from casync.model.objects import encode_directory
from casync.model.signing import format_signer_line, parse_signers, public_key, sign_commit, verify_commit
from casync.transports.peer.exchange import fetch_from
from casync.transports.peer.http import HttpPeer

from .conftest import Cli, serving, write

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "signing-test-token"


def _vector() -> dict[str, str]:
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("**Test vector** (checked by `tests/test_signing.py`)", 1)[1].split("```")[1]
    out = {}
    for line in block.strip().splitlines():
        m = re.match(r"^(\S.*?)\s{2,}(\S.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_the_documented_test_vector_signs_and_verifies() -> None:
    v = _vector()
    seed = bytes.fromhex(v["seed (private key)"])
    assert base64.b64encode(public_key(seed)).decode() == v["public key"]
    tree = parse_cid(v["commit"].split()[2])
    assert tree == compute_cid(0x70, encode_directory([]), "blake3")
    commit = Commit(tree=tree, parents=(), clock={"site-a": 1}, time=HybridTime(1764547200000, 0),
                    replica="site-a", author="alice", message="first", generation=1, meta={})
    assert commit.signing_bytes().hex() == v["signing bytes"]
    signed = sign_commit(commit, seed)
    assert signed.signature is not None and signed.signature.hex() == v["signature"]
    block = encode_commit(signed)
    assert cid_str(compute_cid(DAG_CBOR, block, "blake3")) == v["signed commit CID"]
    # a verifier reconstructs the signed bytes from the block alone
    decoded = decode_commit(block)
    verdict = verify_commit(decoded, {"site-a": [public_key(seed)]})
    assert verdict.ok and verdict.key_id == v["key id"]
    # any change to a signed field, or to the signature, fails
    assert verify_commit(dataclasses.replace(decoded, message="firsT"), {"site-a": [public_key(seed)]}).status \
        == "invalid"
    bad = dataclasses.replace(decoded, signature=bytes(64))
    assert verify_commit(bad, {"site-a": [public_key(seed)]}).status == "invalid"
    assert verify_commit(decoded, {}).status == "unknown-key"
    assert verify_commit(commit, {"site-a": [public_key(seed)]}).status == "unsigned"


def test_trusted_signers_lines_round_trip_and_bad_lines_are_named() -> None:
    line = format_signer_line("site-a", bytes(range(32)))
    assert parse_signers(f"# comment\n\n{line}\n") == {"site-a": [bytes(range(32))]}
    for bad in ("site-a ed25519", "site-a rsa AAAA", "site-a ed25519 !!!", "../x ed25519 " + line.split()[2],
                "site-a ed25519 " + base64.b64encode(b"short").decode()):
        with pytest.raises(Exception, match=r"signers:1"):
            parse_signers(bad, "signers")


def _init(tmp_path: Path, name: str, replica: str) -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    return Cli(tmp_path / name)


def test_key_generate_keeps_the_private_key_private_and_out_of_every_block(tmp_path: Path) -> None:
    a = _init(tmp_path, "a", "site-a")
    line = a("key", "generate").stdout.strip()
    key = a.cwd / ".casync" / "keys" / "site-a.ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert a("key", "export").stdout.strip() == line
    assert parse_signers(line)["site-a"]
    assert a("key", "generate", ok=False).exit_code == 1  # never silently replaced
    write(a.cwd, "f.txt", "data")
    a("commit", "-m", "signed", "--sign")
    seed = base64.b64decode(key.read_bytes().strip())
    for pack in (a.cwd / ".casync" / "packs").glob("*.pack"):
        data = pack.read_bytes()
        assert seed not in data and key.read_bytes().strip() not in data
    key.chmod(0o644)
    r = a("log", ok=False)
    assert r.exit_code == 1 and "readable by others" in r.stderr


def test_commit_sign_and_config_sign_cover_commits_and_merges(tmp_path: Path) -> None:
    a = _init(tmp_path, "a", "site-a")
    write(a.cwd, "f.txt", "one")
    a("commit", "-m", "unsigned")
    r = a("commit", "--allow-empty", "-m", "no key yet", "--sign", ok=False)
    assert r.exit_code == 2 and "casync key generate" in r.stderr
    a("key", "generate")
    write(a.cwd, "f.txt", "two")
    a("commit", "-m", "signed", "--sign")
    log = json.loads(a("log", "--json").stdout)
    assert [e["signature"]["status"] for e in log] == ["valid", "unsigned"]
    assert log[0]["signature"]["signer"] == "site-a" and log[0]["signature"]["key_id"].startswith("ed25519:")
    assert "signed: valid (ed25519:" in a("log").stdout
    # config sign = true: a merge made by 'merge' is signed too
    a("config", "sign", "true")
    a("branch", "side")
    write(a.cwd, "g.txt", "main side")
    a("commit", "-m", "on main")
    a("switch", "side")
    write(a.cwd, "h.txt", "side")
    a("commit", "-m", "on side")
    a("switch", "main")
    a("merge", "side")
    log = json.loads(a("log", "--json").stdout)
    assert len(log[0]["parents"]) == 2 and log[0]["signature"]["status"] == "valid"
    assert all(e["signature"]["status"] == "valid" for e in log if e["message"] != "unsigned")


def _forge(repo: Repository, tamper: str) -> str:
    """A commit on ``main`` of ``repo`` made with the codec (not make_commit): unsigned, or
    signed and then changed (``bad``)."""
    head = repo.resolve("main")
    parent = repo.load_commit(head)
    with repo.transaction(branch="main", message="new") as tx:  # a tree to commit
        tx.write(f"{tamper}.txt", tamper.encode())
    tip = repo.resolve("main")
    made = repo.load_commit(tip)
    commit = dataclasses.replace(made, signature=None, message=f"forged {tamper}")
    if tamper == "bad":
        from casync.repo.keys import load_seed

        seed = load_seed(repo.root, repo.replica)
        assert seed is not None
        commit = dataclasses.replace(sign_commit(commit, seed), message="changed after signing")
    assert commit.parents == (head,) and parent.generation + 1 == commit.generation
    block = encode_commit(commit)
    cid = compute_cid(DAG_CBOR, block, repo.hash_name)
    repo.blocks.put(cid, block)
    repo.blocks.flush()
    repo.update_branch("main", tip, cid, "forged")
    return cid_str(cid)


@pytest.mark.parametrize("tamper", ["unsigned", "bad"])
def test_require_signed_fetch_from_serve_refuses_and_moves_no_ref(tmp_path: Path, tamper: str) -> None:
    origin = Repository.init(tmp_path / "origin", replica="origin", bare=True)
    o = Cli(tmp_path / "origin")
    line = o("key", "generate").stdout.strip()
    origin.set_config("sign", True)  # this object reads its config once
    with origin.transaction(branch="main", message="signed") as tx:
        tx.write("a.txt", b"a")
    b = Repository.init(tmp_path / "b", replica="site-b", repository_id=origin.repo_id)
    (tmp_path / "b" / "signers").write_text(line + "\n")
    cb = Cli(tmp_path / "b")
    cb("config", "trusted_signers", "signers")
    (tmp_path / "token").write_text(TOKEN)
    try:
        with serving(origin, TOKEN) as srv:
            host, port = srv.server_address[:2]
            cb("remote", "add", "origin", f"http://{host}:{port}", "--token-file", str(tmp_path / "token"))
            cb("fetch", "origin", "--require-signed")
            good = b.refs.get_ref("remotes/origin/main")
            assert good == origin.resolve("main")
            forged = _forge(origin, tamper)
            before = b.refs.list_refs()
            r = cb("fetch", "origin", "--require-signed", ok=False)
            assert r.exit_code == 1 and forged in r.stderr
            assert ("is not signed" if tamper == "unsigned" else "does not verify") in r.stderr
            assert b.refs.list_refs() == before  # no ref moved
            # the same refusal from pull and sync (the config switch), and via the API
            cb("config", "require_signed", "true")
            for args in (("pull", "origin"), ("sync", "origin", "--no-push")):
                r = cb(*args, ok=False)
                assert r.exit_code == 1 and forged in (r.stderr + r.stdout), args
                assert b.refs.list_refs() == before
            with pytest.raises(UntrustedHistory, match=forged):
                fetch_from(b, HttpPeer(f"http://{host}:{port}", TOKEN), "origin", require_signed=True)
            assert b.refs.list_refs() == before
            # without the requirement the history is taken, and audit names the bad commit
            cb("fetch", "origin", "--no-require-signed")
            assert cid_str(b.refs.get_ref("remotes/origin/main") or b"") == forged
            report = json.loads(cb("audit", "remotes/origin/main", "--json", ok=False).stdout)
            kinds = {f["kind"]: f["cid"] for f in report["findings"]}
            assert kinds == {("unsigned" if tamper == "unsigned" else "bad-signature"): forged}
    finally:
        origin.close()
        b.close()


def test_a_serve_with_require_signed_refuses_an_unsigned_push(tmp_path: Path) -> None:
    hub = Repository.init(tmp_path / "hub", replica="hub", bare=True)
    with hub.transaction(branch="main", message="start") as tx:
        tx.write("a.txt", b"a")
    hub.set_config("require_signed", True)
    b = Repository.init(tmp_path / "b", replica="site-b", repository_id=hub.repo_id)
    cb = Cli(tmp_path / "b")
    (tmp_path / "token").write_text(TOKEN)
    try:
        with serving(hub, TOKEN) as srv:
            host, port = srv.server_address[:2]
            cb("remote", "add", "origin", f"http://{host}:{port}", "--token-file", str(tmp_path / "token"))
            cb("pull", "origin", "--no-require-signed")  # the hub's own commit is unsigned
            write(cb.cwd, "b.txt", "from b")
            unsigned = cb("commit", "-m", "unsigned").stdout.strip()
            before = hub.resolve("main")
            r = cb("push", "origin", ok=False)
            assert r.exit_code == 1 and unsigned in r.stderr, r.stderr
            assert hub.resolve("main") == before
            # signed by a key the hub trusts, the same push goes through
            line = cb("key", "generate").stdout.strip()
            (tmp_path / "hub" / "signers").write_text(line + "\n")
            hub.set_config("trusted_signers", "signers")
            write(cb.cwd, "b.txt", "from b, signed")
            cb("commit", "-m", "signed", "--sign")
            r = cb("push", "origin", ok=False)
            assert r.exit_code == 1 and unsigned in r.stderr  # the unsigned parent still bars it
    finally:
        hub.close()
        b.close()
