"""casync.toml: every mistake is one error naming the key, the value and what is allowed
(exit 2); the example in docs/ parses; region priorities are the same on every site."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from casync.agent.config import load_config, parse_config, parse_duration
from casync.cli.main import main
from casync.errors import UsageError

DOCS = Path(__file__).resolve().parent.parent / "docs"

GOOD = """
sync_interval = "30s"
max_sync_delay = "5m"
[[regions]]
name = "us-east"
priority = 1
sync_peers = ["us-west"]
[[regions]]
name = "us-west"
priority = 2
sync_peers = ["us-east"]
[site]
replica = "us-east-1"
region = "us-east"
repository = "repo"
[serve]
token_file = "token"
[peers.us-west-1]
url = "http://127.0.0.1:8471"
region = "us-west"
"""


def _run(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "casync.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["agent", "--config", str(path), "--once"])
    return result.exit_code, result.stderr


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.mark.parametrize(("text", "expected"), [
    (_replace('sync_interval = "30s"', 'sync_interval = 30'), ["sync_interval = 30", '"30s"', "units"]),
    (_replace('sync_interval = "30s"', 'sync_interval = "30 sec"'), ["sync_interval = '30 sec'", '"5m"']),
    (_replace('max_sync_delay = "5m"', 'max_sync_delay = "10s"'),
     ["max_sync_delay = '10s'", "at least sync_interval (30s)"]),
    (_replace('sync_interval = "30s"', 'consistency_model = "strong"\nsync_interval = "30s"'),
     ["strong.etcd_endpoints = []", "must list the etcd members", 'consistency_model = "strong"']),
    (_replace('sync_interval = "30s"', 'consistency_model = "causal"\nsync_interval = "30s"'),
     ["consistency_model = 'causal'", "'eventual', 'strong'"]),
    (_replace('sync_interval = "30s"', 'conflict_resolution = "newest"\nsync_interval = "30s"'),
     ["conflict_resolution = 'newest'", "last_write_wins", "lww"]),
    (_replace('sync_interval = "30s"', 'conflict_resolution = "ours"\nsync_interval = "30s"'),
     ["conflict_resolution = 'ours'", "diverge"]),
    (GOOD + '[conflict_resolution]\ndefault = "lww"\nrules = { "*.json" = "jsn" }\n',
     ["conflict_resolution.rules['*.json'] = 'jsn'", "json"]),
    (_replace("priority = 2", 'priority = "high"'), ["regions[1].priority = 'high'", "whole number"]),
    (_replace('sync_peers = ["us-west"]', 'sync_peers = ["us-north"]'),
     ["regions[0].sync_peers = 'us-north'", "is not a region", "us-east, us-west"]),
    (_replace('region = "us-east"\nrepository', 'region = "mars"\nrepository'),
     ["site.region = 'mars'", "us-east, us-west"]),
    (_replace('replica = "us-east-1"', 'replica = "us east 1"'), ["site.replica = 'us east 1'", "replica id"]),
    (_replace('repository = "repo"', 'repository = "repo"\nrole = "follower"'),
     ["site.role = 'follower'", "'peer', 'replica'"]),
    (_replace('repository = "repo"', 'repository = "repo"\nrole = "replica"\nmaster = "nobody"'),
     ["site.master = 'nobody'", "us-west-1"]),
    (_replace('url = "http://127.0.0.1:8471"', 'url = "ipfs+http://127.0.0.1:5001"'),
     ["peers.us-west-1.url", "[ipfs.NAME]"]),
    (_replace('region = "us-west"\n', 'region = "us-west"\ntimeout = "soon"\n'),
     ["peers.us-west-1.timeout = 'soon'", "duration"]),
    (_replace('token_file = "token"', 'bind = "127.0.0.1"\ntoken_file = "token"'),
     ["serve.bind = '127.0.0.1'", "HOST:PORT"]),
    (_replace('token_file = "token"', 'tokenfile = "token"'), ["serve.tokenfile", "unknown key", "token_file"]),
    (_replace('[serve]\ntoken_file = "token"', '[serve]'), ["serve.token_file", "required"]),
    (_replace('sync_interval = "30s"', 'sync_intervall = "30s"'), ["sync_intervall = '30s'", "unknown key"]),
    (_replace('sync_interval = "30s"', 'jitter = 2\nsync_interval = "30s"'), ["jitter = 2", "0 to 0.5"]),
    (GOOD + '[discovery]\nmode = "kubernetes"\n', ["discovery.service", "headless Service"]),
    (GOOD + '[discovery]\nmode = "consul"\n', ["discovery.mode = 'consul'", "'static', 'kubernetes'"]),
    (GOOD + '[ipfs.local]\nurl = "http://127.0.0.1:5001"\n', ["ipfs.local.url", "ipfs+http://"]),
    (GOOD + '[ipfs_clusters.c]\nurl = "http://127.0.0.1:9094"\n', ["ipfs_clusters.c.ipfs", "[ipfs.NAME]"]),
    (GOOD + '[ipfs.k]\nurl = "ipfs+http://127.0.0.1:5001"\n[ipfs_clusters.c]\nurl = "http://127.0.0.1:9094"\n'
            'replication_min = 3\nreplication_max = 2\n', ["ipfs_clusters.c", "above replication_max"]),
    ("sync_interval = ", ["not valid TOML"]),
])
def test_a_bad_value_names_its_key_value_and_what_is_allowed(tmp_path: Path, text: str,
                                                             expected: list[str]) -> None:
    code, err = _run(tmp_path, text)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ") and len(lines) == 2, err
    for part in expected:
        assert part in lines[0], (part, lines[0])


def test_a_missing_config_file_and_a_missing_repository_are_usage_errors(tmp_path: Path) -> None:
    code, err = _run(tmp_path, GOOD)  # valid, but no repository at repo/ and no peer to clone it from
    assert code == 2 and "site.repository" in err and "casync init" in err
    result = CliRunner().invoke(main, ["agent", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "cannot read the agent configuration" in result.stderr
    result = CliRunner().invoke(main, ["agent", "--config", str(tmp_path / "casync.toml"), "--metrics-addr", "x"])
    assert result.exit_code == 2 and "--metrics-addr expects HOST:PORT" in result.stderr


def test_the_documented_example_parses_with_the_seed_names(tmp_path: Path) -> None:
    cfg = load_config(DOCS / "examples" / "casync.toml")
    assert cfg.consistency_model == "eventual" and cfg.policy.default == "lww"
    assert cfg.policy.policy_for("a/b.json") == "json" and cfg.policy.policy_for("config/x") == "priority"
    assert cfg.policy.skew_tolerance_ms == 5000
    assert (cfg.sync_interval, cfg.max_sync_delay, cfg.backoff_cap) == (30.0, 300.0, 300.0)
    assert [r.name for r in cfg.regions] == ["us-east", "us-west", "eu-central"]
    assert cfg.region == "us-east" and cfg.replica == "us-east-1" and cfg.role == "peer"
    assert {p.name for p in cfg.peers} == {"us-west-1", "eu-central-1"}
    assert cfg.serve_bind == ("127.0.0.1", 8470) and cfg.metrics_bind == ("127.0.0.1", 9470)


def test_an_ipfs_cluster_table_pins_for_its_ipfs_node(tmp_path: Path) -> None:
    text = GOOD + ('[ipfs.k]\nurl = "ipfs+http://127.0.0.1:5001"\n[ipfs.other]\nurl = "ipfs+http://127.0.0.1:5002"\n'
                   '[ipfs_clusters.c]\nurl = "http://127.0.0.1:9094/"\nipfs = "k"\nreplication_min = 2\n'
                   'replication_max = 3\n')
    cfg = parse_config(__import__("tomllib").loads(text), tmp_path / "a.toml")
    k, other = cfg.ipfs
    assert (k.cluster, k.replication_min, k.replication_max) == ("http://127.0.0.1:9094", 2, 3)
    assert other.cluster is None


def test_region_priorities_are_the_same_for_every_site(tmp_path: Path) -> None:
    """The merge's replica priorities come from [[regions]] only: a site's own peers or its
    own place in the fleet change nothing."""
    text = GOOD.replace('sync_peers = ["us-west"]', 'sync_peers = ["us-west"]\nreplicas = ["edge-7"]')
    east = parse_config(__import__("tomllib").loads(text), tmp_path / "a.toml")
    west_text = text.replace('replica = "us-east-1"\nregion = "us-east"', 'replica = "us-west-9"\nregion = "us-west"')
    west_text = west_text.replace("[peers.us-west-1]", "[peers.us-east-1]").replace('region = "us-west"\n"""', "")
    west = parse_config(__import__("tomllib").loads(west_text), tmp_path / "b.toml")
    for p in (east.priorities(), west.priorities()):
        assert p.get("us-east-1") == 1 and p.get("us-east-2") == 1 and p.get("edge-7") == 1
        assert p.get("us-west-1") == 2 and p.get("us-westx") is None and p.get("eu-central-1") is None
    assert dict(east.priorities()) == dict(west.priorities()) == {"edge-7": 1}


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h30m", 5400),
                                               ("1.5s", 1.5), ("2d", 172800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("k", text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "m5", "5 m", "-5s", "5s5", "five", 5])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(UsageError, match=r"k = .*duration"):
        parse_duration("k", bad)


def test_replica_and_advertise_url_from_the_command_line(tmp_path: Path) -> None:
    """One config for every pod of a DaemonSet: the replica id comes from --replica."""
    path = tmp_path / "casync.toml"
    path.write_text(GOOD)
    assert load_config(path, {"replica": "us-east-7"}).replica == "us-east-7"
    result = CliRunner().invoke(main, ["agent", "--config", str(path), "--replica", "bad id", "--once"])
    assert result.exit_code == 2 and "site.replica = 'bad id'" in result.stderr
    result = CliRunner().invoke(main, ["agent", "--config", str(path), "--advertise-url", "x:1", "--once"])
    assert result.exit_code == 2 and "--advertise-url 'x:1'" in result.stderr


def test_failure_reasons_are_told_by_type_through_the_wrapping() -> None:
    """casync wraps an OSError in a RemoteError (raise ... from None): the reason still comes from
    the type underneath, never from the message."""
    import socket

    from casync.agent.metrics import classify
    from casync.errors import CorruptBlock, RefConflict, RemoteAuthError, RemoteError
    from casync.model.car import TruncatedCar

    def wrapped(inner: BaseException) -> RemoteError:
        try:
            try:
                raise inner
            except BaseException:
                raise RemoteError("cannot reach the peer: timed out", transient=True) from None
        except RemoteError as exc:
            return exc

    assert classify(wrapped(TimeoutError())) == "timeout"
    assert classify(wrapped(ConnectionRefusedError())) == "unreachable"
    assert classify(wrapped(socket.gaierror())) == "unreachable"
    assert classify(wrapped(TruncatedCar("cut"))) == "unreachable"
    assert classify(wrapped(CorruptBlock("bafy"))) == "corrupt"
    assert classify(RemoteAuthError("refused the token")) == "auth"
    assert classify(RefConflict("timed out")) == "refused"  # the words say timeout; the type decides
    assert classify(RemoteError("timeout")) == "error"
