"""Errors as a user meets them (issue 8, item 10 and the CLI UX list): config values checked
when set, exit codes by the rule (0 ok, 1 failure or state refusal, 2 usage), hints that name
real commands, --json failures as one JSON object, peer tokens, and gateway URLs."""

from __future__ import annotations

import ast
import http.client
import json
import re
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from casync import Repository, porcelain
from casync.cli.main import main
from casync.errors import RemoteError, StateRefused, UsageError
from casync.store.ipfs import gateway_from_multiaddrs
from casync.transports.peer.http import HttpPeer

from .conftest import Cli, serving, write
from .kubo_fixture import Kubo

TOKEN = "correct horse battery staple"


def _repo(tmp_path: Path, name: str = "wt", replica: str = "site-a") -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    cli = Cli(tmp_path / name)
    write(cli.cwd, "f.txt", "base\n")
    cli("commit", "-m", "base")
    return cli


def _stopped_for_conflicts(cli: Cli) -> None:
    """A manual merge stopped on a conflict in f.txt."""
    cli("branch", "other")
    write(cli.cwd, "f.txt", "ours\n")
    cli("commit", "-m", "ours")
    cli("switch", "other")
    write(cli.cwd, "f.txt", "theirs\n")
    cli("commit", "-m", "theirs")
    cli("switch", "main")
    assert cli("merge", "other", "--policy", "manual", ok=False).exit_code == 1


# --- config values ----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "named"), [
    ("priorities", '{"a": "high"}', "priorities.a = 'high'"),
    ("priorities.site-b", "high", "priorities.site-b = 'high'"),
    ("priorities", '{"not a replica": 1}', "'not a replica' is not a replica id"),
    ("priorities", '[1, 2]', "config priorities = [1, 2]"),
    ("merge.policy", "lwww", "merge.policy = 'lwww': unknown merge policy 'lwww'"),
    ("merge.rules", '{"*.json": "jsn"}', "merge.rules['*.json'] = 'jsn': unknown merge policy"),
    ("merge.rules", '{"*.json": 5}', "merge.rules['*.json'] = 5"),
    ("merge.rules", '["*.json"]', "merge.rules = [\"*.json\"]"),
    ("merge.polcy", "lww", "merge.polcy = 'lww': unknown field"),
    ("merge.skew_tolerance_ms", '"soon"', "merge.skew_tolerance_ms = 'soon'"),
    ("merge", '"lww"', "config merge = 'lww'"),
    ("author", '""', "author = ''"),
    ("remotes", '{"origin": {"url": ""}}', "remotes.origin"),
    ("remotes", '{"origin": {"url": "/x", "tokenfile": "t"}}', "remotes.origin.tokenfile"),
])
def test_config_values_are_checked_when_set(tmp_path: Path, key: str, value: str, named: str) -> None:
    cli = _repo(tmp_path)
    before = cli("config", "--json").stdout
    r = cli("config", key, value, ok=False)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and named in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert cli("config", "--json").stdout == before  # nothing was stored


def test_config_checks_hold_for_the_python_api_and_for_values_stored_before(tmp_path: Path) -> None:
    cli = _repo(tmp_path)
    _stopped_for_conflicts(cli)
    cli("merge", "--abort")
    with Repository.open(cli.cwd) as repo:
        with pytest.raises(UsageError, match=r"priorities\.a = 'high'"):
            repo.set_config("priorities", {"a": "high"})
        repo.store.set_config({"priorities": {"a": "high"}})  # as an older casync could store it
    r = cli("merge", "other", ok=False)
    assert r.exit_code == 2 and "priorities.a = 'high'" in r.stderr and "Traceback" not in r.stderr
    cli("config", "priorities", '{"a": 1, "site-a": 2}')
    cli("config", "merge.skew_tolerance_ms", "500")
    cli("merge", "other")  # good values still merge


def test_unknown_config_key_is_stored_with_a_warning(tmp_path: Path) -> None:
    cli = _repo(tmp_path)
    r = cli("config", "auther", "Alice")
    assert "warning: casync does not read config key 'auther'" in r.stderr and "author" in r.stderr
    assert cli("config", "auther").stdout.strip() == "Alice"


# --- bare repositories, hints -----------------------------------------------------------------


def test_resolve_in_a_bare_repository_is_a_clear_error(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "bare", replica="site-a", bare=True)
    try:
        with repo.transaction(branch="main", message="base") as tx:
            tx.write("f.txt", b"base")
        repo.update_branch("other", None, repo.resolve("main"), "test")
        with repo.transaction(branch="other", message="theirs") as tx:
            tx.write("f.txt", b"theirs")
        with repo.transaction(branch="main", message="ours") as tx:
            tx.write("f.txt", b"ours")
        assert porcelain.merge(repo, "other", policy="siblings").siblings
        assert [c.path for c in porcelain.conflicts(repo)] == ["f.txt"]
        with pytest.raises(UsageError, match="bare repository") as err:
            porcelain.resolve_conflict(repo, "f.txt", "site-a")
        assert err.value.hint and "transaction" in err.value.hint
    finally:
        repo.close()
    r = Cli(tmp_path / "bare")("resolve", "f.txt", "--pick", "site-a", ok=False)
    assert r.exit_code == 2 and "error: resolve needs a working tree" in r.stderr
    assert "hint: in a bare repository, settle siblings in a transaction" in r.stderr


def _casync_commands() -> set[str]:
    ctx = click.Context(main)
    return set(main.list_commands(ctx))


def test_every_hint_names_a_command_that_exists() -> None:
    """Hints and messages that tell the user to run 'casync X ...' name a real command X (and
    a real subcommand of a group): 'casync gc' was suggested, and does not exist."""
    ctx = click.Context(main)
    commands = _casync_commands()
    src = Path(__file__).resolve().parent.parent / "casync"
    wrong = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            # a command as messages quote it: 'casync X ...', `casync X`, or a hint "casync X ..."
            for word, sub in re.findall(r"(?:^|['`])casync ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", node.value):
                command = main.get_command(ctx, word)
                if command is None:
                    wrong.append(f"{path.name}: casync {word}")
                elif isinstance(command, click.Group) and sub and command.get_command(ctx, sub) is None:
                    wrong.append(f"{path.name}: casync {word} {sub}")
    assert not wrong, wrong
    assert {"merge", "sync", "remote", "fsck"} <= commands


# --- exit codes -------------------------------------------------------------------------------


def test_state_refusals_exit_1_and_usage_errors_exit_2(tmp_path: Path) -> None:
    cli = _repo(tmp_path)
    _stopped_for_conflicts(cli)
    r = cli("commit", "-m", "plain commit mid-merge", ok=False)
    assert r.exit_code == 1 and "error: a merge is in progress" in r.stderr and "hint: " in r.stderr
    assert cli("merge", "other", ok=False).exit_code == 1  # a second merge while one is stopped
    cli("merge", "--abort")
    for args in (("merge", "--continue"), ("merge", "--abort")):  # no merge in progress
        r = cli(*args, ok=False)
        assert r.exit_code == 1 and "no merge in progress" in r.stderr, args
    r = cli("branch", "-d", "main", ok=False)  # the checked-out branch
    assert r.exit_code == 1 and "checked out" in r.stderr
    peer = _repo(tmp_path, "peer", "site-p")
    cli("remote", "add", "peer", str(peer.cwd))
    cli("checkout", "HEAD~1")  # detached
    for args in (("sync", "peer"), ("push", "peer"), ("pull", "peer")):
        r = cli(*args, ok=False)
        assert r.exit_code == 1 and "detached" in r.stderr and "Traceback" not in r.stderr, args
    assert "checkout" in cli("reflog").stdout  # HEAD's own reflog works detached too
    cli("switch", "main")
    # usage: an unknown peer, remote, branch or ref
    r = cli("sync", "nosuchpeer", ok=False)
    assert r.exit_code == 2 and "no remote named 'nosuchpeer'" in r.stderr
    assert cli("reflog", "nosuch", ok=False).exit_code == 2
    assert cli("branch", "-d", "nosuch", ok=False).exit_code == 2
    Cli(tmp_path)("init", "empty")
    r = Cli(tmp_path / "empty")("switch", "-c", "topic", ok=False)  # no commit yet: a state
    assert r.exit_code == 1 and "first commit" in r.stderr
    assert isinstance(StateRefused("x"), Exception) and StateRefused("x").exit_code == 1


def test_sync_with_an_unknown_peer_contacts_none(tmp_path: Path) -> None:
    """A typo in the peer list is a usage error before any peer is synced."""
    other = _repo(tmp_path, "other", "site-b")
    write(other.cwd, "b.txt", "b")
    other("commit", "-m", "b")
    cli = _repo(tmp_path)
    r = cli("sync", str(other.cwd), "nosuchpeer", ok=False)
    assert r.exit_code == 2 and "nosuchpeer" in r.stderr
    with Repository.open(cli.cwd) as repo:
        assert repo.refs.list_refs("remotes/") == {}


# --- --json failures --------------------------------------------------------------------------


def _json_commands() -> Iterator[tuple[list[str], click.Command]]:
    ctx = click.Context(main)
    for name in sorted(main.list_commands(ctx)):
        command = main.get_command(ctx, name)
        assert command is not None
        yield [name], command
        if isinstance(command, click.Group):
            for sub in sorted(command.commands):
                yield [name, sub], command.commands[sub]


def test_every_json_failure_prints_one_json_object(tmp_path: Path) -> None:
    """Each command with --json, run where it fails (not a repository, or dummy arguments):
    stdout is exactly one JSON object {"error", "hint", "exit_code"}; stderr keeps the line."""
    (tmp_path / "empty").mkdir()
    cli = Cli(tmp_path / "empty")
    seen = 0
    for words, command in _json_commands():
        if not any(p.name == "as_json" for p in command.params):
            continue
        dummies = [f"nosuch{i}" for i, p in enumerate(command.params)
                   if isinstance(p, click.Argument) and p.required]
        r = cli(*words, *dummies, "--json", ok=False)
        assert r.exit_code in (1, 2), (words, r.exit_code, r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert set(out) == {"error", "hint", "exit_code"} and out["exit_code"] == r.exit_code, (words, out)
        assert f"error: {out['error']}" in r.stderr, (words, r.stderr)
        seen += 1
    assert seen >= 12


def test_json_failure_inside_a_repository(tmp_path: Path) -> None:
    cli = _repo(tmp_path)
    r = cli("log", "nosuch", "--json", ok=False)
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "unknown revision 'nosuch'"
    r = cli("merge", "--continue", "--json", ok=False)
    assert json.loads(r.stdout) == {"error": "no merge in progress", "hint": json.loads(r.stdout)["hint"],
                                    "exit_code": 1}
    r = cli("log", "--json", "-n", "many", ok=False)  # an option click itself refuses
    assert r.exit_code == 2 and json.loads(r.stdout)["exit_code"] == 2
    r = cli("log", "nosuch", ok=False)  # without --json: nothing on stdout
    assert r.stdout == "" and r.stderr.startswith("error: ")


# --- reflog names, push/fetch/pull help -------------------------------------------------------


def test_reflog_takes_the_names_log_takes(tmp_path: Path) -> None:
    other = _repo(tmp_path, "other", "site-b")
    Cli(tmp_path)("clone", "other", "wt", "--replica", "site-a")
    cli = Cli(tmp_path / "wt")
    write(other.cwd, "more.txt", "more")
    other("commit", "-m", "more")
    cli("fetch", "origin")
    log_cid = json.loads(cli("log", "origin/main", "--json").stdout)[0]["cid"]
    for name in ("origin/main", "remotes/origin/main"):
        rows = json.loads(cli("reflog", name, "--json").stdout)
        assert rows[0]["ref"] == "remotes/origin/main" and rows[0]["new"] == log_cid and len(rows) == 2, name
    assert json.loads(cli("reflog", "main", "--json").stdout)[0]["ref"] == "heads/main"
    r = cli("reflog", "origin/nosuch", ok=False)
    assert r.exit_code == 2 and "no ref named 'origin/nosuch'" in r.stderr


def test_push_fetch_pull_help_speaks_of_peers(tmp_path: Path) -> None:
    for command in ("push", "fetch", "pull"):
        text = " ".join(Cli(tmp_path)(command, "--help").stdout.split())
        assert "'casync serve' URL" in text and "repository's path" in text and "IPFS" in text, command
        assert "--token-file FILE" in text, command


# --- peer tokens ------------------------------------------------------------------------------


def _served_repo(tmp_path: Path) -> Repository:
    repo = Repository.init(tmp_path / "served", replica="site-s")
    write(repo.root, "s.txt", "served\n")
    porcelain.commit(repo, "served")
    return repo


def test_401_says_whether_a_token_was_missing_or_refused(tmp_path: Path) -> None:
    repo = _served_repo(tmp_path)
    try:
        with serving(repo, TOKEN) as srv:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            replies = {}
            for name, headers in (("none", {}), ("wrong", {"Authorization": "Bearer wrong"}),
                                  ("empty", {"Authorization": "Bearer "})):
                conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
                conn.request("GET", "/v1/info", headers=headers)
                resp = conn.getresponse()
                replies[name] = (resp.status, resp.getheader("WWW-Authenticate"), json.loads(resp.read()))
                conn.close()
            assert replies["none"][0] == replies["wrong"][0] == 401
            assert replies["none"][2]["reason"] == replies["empty"][2]["reason"] == "missing"
            assert replies["wrong"][2]["reason"] == "refused" and 'error="invalid_token"' in replies["wrong"][1]
            assert replies["none"][2]["error"] != replies["wrong"][2]["error"]

            with pytest.raises(RemoteError, match="none was sent") as missing:
                HttpPeer(url, None).info()
            with pytest.raises(RemoteError, match="refused the token") as refused:
                HttpPeer(url, "wrong").info()
            assert missing.value.hint and "--token-file" in missing.value.hint
            assert refused.value.hint and "must match" in refused.value.hint
            assert HttpPeer(url, TOKEN).info().replica == "site-s"

            cli = _repo(tmp_path)
            (cli.cwd / "wrong").write_text("wrong\n")
            r = cli("sync", url, ok=False)
            assert r.exit_code == 1 and "none was sent" in r.stderr
            r = cli("sync", url, "--token-file", "wrong", ok=False)
            assert r.exit_code == 1 and "refused the token" in r.stderr
    finally:
        repo.close()


def test_token_files_are_relative_to_C_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve, sync, push, fetch and pull take a relative --token-file relative to -C DIR, as
    remote add and clone do; the process runs from elsewhere."""
    monkeypatch.delenv("CASYNC_TOKEN", raising=False)
    elsewhere = tmp_path / "x" / "elsewhere"  # where ../token names nothing
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    served = _served_repo(tmp_path)
    served.close()
    (tmp_path / "token").write_text(TOKEN + "\n")  # beside the repositories, outside their trees
    proc = subprocess.Popen([sys.executable, "-m", "casync", "-C", str(tmp_path / "served"), "serve",
                             "--bind", "127.0.0.1:0", "--token-file", "../token"],
                            cwd=elsewhere, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert m, line + proc.stderr.read()
        url = m.group(1)
        Cli(tmp_path)("clone", url, "wt", "--replica", "site-a", "--token-file", "token")
        cli = Cli(tmp_path / "wt")
        cli("remote", "add", "hub", url)  # no token stored: each command gives it
        report = json.loads(cli("sync", "hub", "--token-file", "../token", "--json").stdout)[0]
        assert "error" not in report, report
        cli("fetch", "hub", "--token-file", "../token")
        write(cli.cwd, "new.txt", "n")
        cli("commit", "-m", "new")
        cli("push", "hub", "main", "--token-file", "../token")
        cli("pull", "hub", "--token-file", "../token")
        r = cli("push", "hub", "main", ok=False)
        assert r.exit_code == 1 and "none was sent" in r.stderr
    finally:
        proc.terminate()
        proc.wait(20)
    with Repository.open(tmp_path / "served") as repo:
        assert repo.read("new.txt", "main") == b"n"


# --- gateway URLs -----------------------------------------------------------------------------


def test_gateway_from_the_nodes_addresses() -> None:
    api = "http://127.0.0.1:5001"
    assert gateway_from_multiaddrs("/ip4/127.0.0.1/tcp/8080", api) == "http://127.0.0.1:8080"
    assert gateway_from_multiaddrs(["/unix/run/gw.sock", "/ip4/0.0.0.0/tcp/8081"], api) == "http://127.0.0.1:8081"
    assert gateway_from_multiaddrs("/ip4/0.0.0.0/tcp/8080", "http://node.example:5001") == \
        "http://node.example:8080"
    assert gateway_from_multiaddrs("/ip6/::1/tcp/8080", api) == "http://[::1]:8080"
    assert gateway_from_multiaddrs([], api) is None and gateway_from_multiaddrs(None, api) is None
    with pytest.raises(RemoteError, match="own loopback"):
        gateway_from_multiaddrs("/ip4/127.0.0.1/tcp/8080", "http://10.1.2.3:5001")


@pytest.mark.kubo
def test_url_asks_the_node_when_the_remote_has_no_gateway(tmp_path: Path, kubo: Kubo) -> None:
    if not kubo.gateway_url:
        pytest.skip("the node under test has no gateway")
    cli = _repo(tmp_path)
    cli("remote", "add", "origin", kubo.remote_url)  # no --gateway
    cli("push")
    head = json.loads(cli("log", "-n", "1", "--json").stdout)[0]["cid"]
    url = cli("url", "HEAD:f.txt").stdout.strip()
    assert url == f"{kubo.gateway_url}/ipfs/{head}/tree/f.txt"
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.read() == b"base\n"


@pytest.mark.kubo
def test_url_when_the_node_serves_no_gateway(tmp_path: Path, kubo_factory: object) -> None:
    node = kubo_factory()  # type: ignore[operator]
    node.ipfs("config", "--json", "Addresses.Gateway", "[]")  # the config the node reports
    cli = _repo(tmp_path)
    cli("remote", "add", "origin", node.remote_url)
    r = cli("url", "HEAD:f.txt", ok=False)
    assert r.exit_code == 2 and "its node serves none" in r.stderr and "--gateway" in r.stderr


def test_url_when_the_node_cannot_be_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASYNC_REMOTE_ATTEMPTS", "1")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = _repo(tmp_path)
    cli("remote", "add", "origin", f"ipfs+http://127.0.0.1:{port}")
    r = cli("url", "HEAD:f.txt", ok=False)
    assert r.exit_code == 1 and "has no gateway URL, and its node could not be asked" in r.stderr
    assert urllib.parse.quote("f.txt") not in r.stdout
