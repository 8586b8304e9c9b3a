"""``casync audit`` on real repositories: counts of a clean snapshot, one flipped byte in a
pack (in a block's bytes and in a record header) named with its paths, commits made with
the codec that break the clock rules, non-canonical nodes, a reproducible --sample, the
audit trail, and the recorded outcome."""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_codec, cid_str, compute_cid, varint
from casync.model.commit import encode_commit
from casync.model.objects import UNIXFS_DIRECTORY, PBNode, UnixFSData, decode_pbnode, encode_pbnode, encode_unixfs
from casync.repo.audit import last_audit

from .conftest import Cli, write


@pytest.fixture
def snap(tmp_path: Path) -> Cli:
    """Two commits: a multi-chunk file, a small file, a nested one."""
    Cli(tmp_path)("init", "wt", "--replica", "site-a")
    cli = Cli(tmp_path / "wt")
    write(cli.cwd, "data/big.bin", random.Random(3).randbytes(1_200_000))
    write(cli.cwd, "docs/readme.txt", "hello\n")
    cli("commit", "-m", "first")
    write(cli.cwd, "docs/readme.txt", "hello again\n")
    write(cli.cwd, "deep/er/note.txt", "note\n")
    cli("commit", "-m", "second")
    return cli


def _audit(cli: Cli, *args: str, code: int = 0) -> dict[str, object]:
    r = cli("audit", *args, "--json", ok=False)
    assert r.exit_code == code, (r.stdout, r.stderr)
    out: dict[str, object] = json.loads(r.stdout)
    return out


def _findings(report: dict[str, object]) -> list[dict[str, object]]:
    found = report["findings"]
    assert isinstance(found, list)
    return found


def _location(repo: Repository, cid: Cid) -> tuple[Path, int, int]:
    raw = repo.store.get("index", cid)
    assert raw is not None
    pack, offset, length = struct.unpack("<IQI", raw)
    return repo.root / ".casync" / "packs" / f"{pack:08d}.pack", offset, length


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _leaf_of(repo: Repository, path: str) -> Cid:
    """A raw leaf of the committed file at ``path``."""
    _c, _p, entry = repo.entry_at(f"HEAD:{path}")
    if cid_codec(entry.cid) == RAW:
        return entry.cid
    node = decode_pbnode(repo.blocks.get(entry.cid))
    return node.links[1].cid


def test_a_clean_snapshot_exits_0_with_counts_and_records_the_outcome(snap: Cli) -> None:
    report = _audit(snap)
    assert report["ok"] is True and _findings(report) == []
    with Repository.open(snap.cwd) as repo:
        head = repo.resolve("HEAD")
        fsck = repo.fsck()
        reachable = fsck.checked  # fsck walks every ref; here one branch and HEAD, the same DAG
        total, _ = repo.blocks.pack_bytes()
        recorded = last_audit(repo)
    assert report["root"] == cid_str(head) and report["commits"] == 2
    assert report["blocks"] == reachable
    assert isinstance(report["bytes"], int) and 1_200_000 < report["bytes"] < total
    assert recorded is not None and recorded["ok"] is True and recorded["findings"] == 0
    assert recorded["kind"] == "audit"
    # the human summary, through a real process
    r = subprocess.run([sys.executable, "-m", "casync", "-C", str(snap.cwd), "audit", "--deep"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok") and "2 commit(s)" in r.stdout


def test_a_flipped_byte_in_a_blocks_bytes_is_found_by_deep_with_its_paths(snap: Cli) -> None:
    with Repository.open(snap.cwd) as repo:
        leaf = _leaf_of(repo, "data/big.bin")
        pack, offset, length = _location(repo, leaf)
    _flip(pack, offset + length // 2)
    assert _audit(snap)["ok"] is True  # a leaf is read only with --deep or --sample
    report = _audit(snap, "--deep", code=1)
    found = _findings(report)
    assert [(f["kind"], f["cid"], f["paths"]) for f in found] == [("corrupt", cid_str(leaf), ["data/big.bin"])]
    r = snap("audit", "--deep", ok=False)
    assert r.exit_code == 1 and cid_str(leaf) in r.stdout and "used by: data/big.bin" in r.stdout
    with Repository.open(snap.cwd) as repo:
        assert last_audit(repo) is not None and last_audit(repo)["ok"] is False  # type: ignore[index]


@pytest.mark.parametrize("where", ["cid", "length"])
def test_a_flipped_byte_in_a_record_header_is_found_by_deep(snap: Cli, where: str) -> None:
    """The index still finds the data, so fsck sees nothing; the pack no longer parses."""
    with Repository.open(snap.cwd) as repo:
        _c, _p, entry = repo.entry_at("HEAD:docs/readme.txt")
        target = entry.cid
        pack, offset, length = _location(repo, target)
        assert repo.fsck().ok
    length_bytes = len(varint(length))
    _flip(pack, offset - length_bytes - 1 if where == "cid" else offset - length_bytes)
    with Repository.open(snap.cwd) as repo:
        assert repo.fsck().ok  # what this finds and fsck does not
    assert _audit(snap)["ok"] is True
    found = _findings(_audit(snap, "--deep", code=1))
    records = [f for f in found if f["kind"] == "pack-record"]
    assert [(f["cid"], f["paths"]) for f in records] == [(cid_str(target), ["docs/readme.txt"])]
    # the end-to-end parse of the pack sees it too: a header that no longer parses, or names
    # another CID than the index (named above already), or data no parsed record holds
    pack_level = [f for f in found if f["kind"] == "pack"]
    assert all(f["cid"] != cid_str(target) for f in pack_level)
    if where == "length":
        assert pack_level and all("unparseable" in str(f["detail"]) or "no parsed record" in str(f["detail"])
                                  for f in pack_level)


def _replace_head(repo: Repository, **changes: object) -> str:
    """Rewrite HEAD's commit with ``changes`` through the codec (bypassing make_commit)."""
    head = repo.resolve("main")
    commit = dataclasses.replace(repo.load_commit(head), **changes)  # type: ignore[arg-type]
    block = encode_commit(commit)
    cid = compute_cid(DAG_CBOR, block, repo.hash_name)
    repo.blocks.put(cid, block)
    repo.blocks.flush()
    repo.update_branch("main", head, cid, "tampered")
    return cid_str(cid)


@pytest.mark.parametrize(("changes", "kind", "fsck_sees"), [
    ({"clock": {"site-a": 5}}, "clock", True),
    ({"clock": {"site-a": 2, "ghost": 0}}, None, True),  # an extra zero entry breaks no rule
    ({"generation": 7}, "generation", True),
    ({"time": "future"}, "future", False),
])
def test_commits_that_break_the_clock_rules_are_reported(snap: Cli, changes: dict[str, object], kind: str | None,
                                                         fsck_sees: bool) -> None:
    with Repository.open(snap.cwd) as repo:
        if changes.get("time") == "future":
            from casync.model.commit import HybridTime

            ahead = HybridTime(repo.load_commit(repo.resolve("main")).time.wall_ms + 3_600_000, 0)
            changes = {"time": ahead}
            # made here by a clock running an hour ahead: hlc_last has it (else it is foreign, below)
            repo.store.put("meta", b"hlc_last", f"{ahead.wall_ms}.{ahead.logical}".encode())
        cid = _replace_head(repo, **changes)
        assert repo.fsck().ok is not (fsck_sees and kind is not None)
    report = _audit(snap, code=1 if kind else 0)
    assert [(f["kind"], f["cid"], f["paths"]) for f in _findings(report)] == ([(kind, cid, [])] if kind else [])
    if kind == "future":  # within a configured tolerance it is not
        snap("config", "audit.skew_tolerance_ms", "7200000")
        assert _audit(snap)["ok"] is True


def test_a_commit_of_this_replica_id_later_than_any_made_here_is_foreign(snap: Cli) -> None:
    """Its time is after meta hlc_last, so this repository did not make it (another site uses
    the id): fsck fails and audit reports a foreign-commit finding."""
    with Repository.open(snap.cwd) as repo:
        from casync.model.commit import HybridTime

        last = repo.last_local_time()
        assert last is not None
        cid = _replace_head(repo, time=HybridTime(last.wall_ms + 1, 0))
        report = repo.fsck()
        assert not report.ok and list(report.foreign) == [cid]
    assert [(f["kind"], f["cid"]) for f in _findings(_audit(snap, code=1))] == [("foreign-commit", cid)]


def test_a_non_canonical_unixfs_node_is_reported_with_its_path(snap: Cli) -> None:
    """A directory carrying UnixFS field 8 (mtime): the same directory would have two CIDs.
    The decoder now accepts exactly one encoding and refuses it (on receipt, too); audit names
    the block as invalid, with the path that uses it."""
    with Repository.open(snap.cwd) as repo:
        head = repo.resolve("main")
        commit = repo.load_commit(head)
        root = decode_pbnode(repo.blocks.get(commit.tree))
        docs = next(link for link in root.links if link.name == b"docs")
        node = decode_pbnode(repo.blocks.get(docs.cid))
        odd = encode_pbnode(PBNode(node.links, encode_unixfs(UnixFSData(UNIXFS_DIRECTORY)) + b"\x40\x00"))
        odd_cid = compute_cid(DAG_PB, odd, repo.hash_name)
        repo.blocks.put(odd_cid, odd)
        links = tuple(dataclasses.replace(link, cid=odd_cid) if link.name == b"docs" else link
                      for link in root.links)
        tree = encode_pbnode(PBNode(links, root.data))
        tree_cid = compute_cid(DAG_PB, tree, repo.hash_name)
        repo.blocks.put(tree_cid, tree)
        repo.blocks.flush()
        new = _replace_head(repo, tree=tree_cid)
    found = _findings(_audit(snap, code=1))
    assert [(f["kind"], f["cid"], f["paths"]) for f in found] == [("invalid", cid_str(odd_cid), ["docs"])]
    assert "field" in found[0]["detail"]
    assert new != cid_str(head)


def test_sample_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    Cli(tmp_path)("init", "wt", "--replica", "site-a")
    cli = Cli(tmp_path / "wt")
    for i in range(40):
        write(cli.cwd, f"f/{i:02d}.bin", random.Random(i).randbytes(200))
    cli("commit", "-m", "many leaves")
    with Repository.open(cli.cwd) as repo:
        leaf = _leaf_of(repo, "f/17.bin")
        pack, offset, _length = _location(repo, leaf)
    _flip(pack, offset)
    outcomes = {}
    for seed in range(12):
        r1 = cli("audit", "--sample", "25", "--seed", str(seed), "--json", ok=False)
        r2 = cli("audit", "--sample", "25", "--seed", str(seed), "--json", ok=False)
        a, b = json.loads(r1.stdout), json.loads(r2.stdout)
        assert a == b and a["seed"] == seed and r1.exit_code == r2.exit_code
        # the commit and two directories, and 25 % of 40 leaves (less the damaged one if chosen)
        assert a["read"] == 3 + 10 - r1.exit_code
        outcomes[seed] = r1.exit_code
    assert set(outcomes.values()) == {0, 1}  # some seeds read the damaged leaf, others do not
    # without --seed the seed used is reported, and it reproduces the choice
    report = json.loads(cli("audit", "--sample", "25", "--json", ok=False).stdout)
    again = json.loads(cli("audit", "--sample", "25", "--seed", str(report["seed"]), "--json", ok=False).stdout)
    assert again == report


def test_usage_errors_exit_2(snap: Cli) -> None:
    for args in (("--deep", "--sample", "5"), ("--seed", "3"), ("--sample", "0"), ("--trail", "--deep"),
                 ("no-such-rev",)):
        assert snap("audit", *args, ok=False).exit_code == 2, args


def test_trail_lists_replica_author_signer_time_and_paths(snap: Cli) -> None:
    snap("key", "generate")
    write(snap.cwd, "docs/readme.txt", "signed change\n")
    snap("commit", "-m", "third", "--sign", "--author", "carol")
    trail = json.loads(snap("audit", "--trail", "--json").stdout)
    assert [e["message"] for e in trail] == ["third", "second", "first"]
    assert trail[0]["paths"] == ["docs/readme.txt"] and trail[0]["author"] == "carol"
    assert trail[0]["signature"]["status"] == "valid" and trail[0]["signature"]["signer"] == "site-a"
    assert trail[0]["signature"]["key_id"].startswith("ed25519:") and trail[0]["replica"] == "site-a"
    assert trail[1]["paths"] == ["deep/er/note.txt", "docs/readme.txt"]
    assert trail[1]["signature"] == {"signer": None, "status": "unsigned", "key_id": None}
    assert trail[2]["paths"] == ["data/big.bin", "docs/readme.txt"]
    assert trail[0]["time"]["wall_ms"] >= trail[1]["time"]["wall_ms"]
    human = snap("audit", "--trail", "-n", "1").stdout
    assert "signature valid ed25519:" in human and "    docs/readme.txt" in human and "first" not in human


def test_a_tree_cid_is_audited_alone_with_paths_relative_to_it(snap: Cli) -> None:
    with Repository.open(snap.cwd) as repo:
        _c, _p, data = repo.entry_at("HEAD:data")
        leaf = _leaf_of(repo, "data/big.bin")
        pack, offset, _length = _location(repo, leaf)
    report = _audit(snap, cid_str(data.cid), "--deep")
    assert report["commits"] == 0 and report["root"] == cid_str(data.cid) and report["ok"] is True
    _flip(pack, offset + 1)
    found = _findings(_audit(snap, cid_str(data.cid), "--deep", code=1))
    assert [(f["kind"], f["cid"], f["paths"]) for f in found] == [("corrupt", cid_str(leaf), ["big.bin"])]
