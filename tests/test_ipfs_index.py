"""The linked head index (transports/ipfs/index.py) against real Kubo nodes: a DAG-CBOR root
whose paths a gateway resolves, whose pin or CAR export holds the whole repository, and
which stays readable while pinned."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import CasyncError
from casync.model.cid import DAG_CBOR, cid_codec, cid_str, parse_cid
from casync.transports.config import parse_url
from casync.transports.ipfs import connect
from casync.transports.ipfs.index import KEEP_INDEXES, index_pin_name, list_indexes, read_index
from casync.transports.ipfs.push import PushResult, all_blocks
from casync.transports.ipfs.push import push as push_branch

from .conftest import Cli, write
from .kubo_fixture import Kubo
from .kubo_node import KuboError

pytestmark = pytest.mark.kubo


def _origin(tmp_path: Path, kubo: Kubo, replica: str = "site-a", name: str = "a") -> Cli:
    Cli(tmp_path)("init", name, "--replica", replica)
    cli = Cli(tmp_path / name)
    cli("remote", "add", "origin", kubo.remote_url)
    return cli


def _push(cli: Cli, *args: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(cli("push", "--json", *args).stdout)
    return out


def _repo_id(cli: Cli) -> str:
    return cli("config", "repository_id").stdout.strip()


def _clone(tmp_path: Path, url: str, name: str) -> Cli:
    Cli(tmp_path)("clone", url, name, "--replica", name)
    return Cli(tmp_path / name)


def test_gateway_resolves_a_file_through_the_index(tmp_path: Path, kubo: Kubo) -> None:
    a = _origin(tmp_path, kubo)
    payload = os.urandom(700_000)
    write(a.cwd, "sensors/t1.bin", payload)
    write(a.cwd, "notes.txt", "through the index\n")
    a("commit", "-m", "one")
    pushed = _push(a)
    index = str(pushed["index"])
    assert index.startswith("bafy") and cid_codec(parse_cid(index)) == DAG_CBOR
    assert pushed["index_pin"] == "direct"  # the head's recursive pin holds what it links
    assert kubo.gateway_get(f"/ipfs/{index}/heads/site-a/main/tree/sensors/t1.bin") == payload
    assert kubo.gateway_get(f"/ipfs/{index}/heads/site-a/main/tree/notes.txt") == b"through the index\n"
    # the per-replica metadata is in the linked record block
    record = json.loads(kubo.ipfs("dag", "get", f"{index}/records/site-a"))
    assert record["format"] == "casync-heads/1" and record["seq"] == 1
    assert record["heads"]["main"]["commit"] == {"/": pushed["head"]}
    show = json.loads(a("remote", "show", "--json").stdout)
    assert show["index"] == index and show["indexes"][0]["by"] == "site-a"


def test_dag_stat_of_the_index_counts_every_block_of_the_repository(tmp_path: Path, kubo: Kubo) -> None:
    a = _origin(tmp_path, kubo)
    write(a.cwd, "x/big.bin", os.urandom(900_000))
    for i in range(30):
        write(a.cwd, f"x/small-{i}.txt", f"file {i}\n")
    a("commit", "-m", "one")
    write(a.cwd, "x/small-0.txt", "edited\n")
    a("commit", "-m", "two")
    a("branch", "dev")
    index = str(_push(a)["index"])
    index = str(_push(a, "origin", "dev")["index"])
    repo = Repository.open(a.cwd)
    try:
        blocks = all_blocks(repo, [repo.refs.get_ref("heads/main"), repo.refs.get_ref("heads/dev")])
    finally:
        repo.close()
    stat = json.loads(kubo.ipfs("dag", "stat", "--progress=false", "--enc=json", index))
    assert stat["UniqueBlocks"] == len(blocks) + 2  # + the index and the replica's record block
    assert stat["TotalSize"] >= sum(blocks.values())


def test_dag_export_of_the_index_moves_the_whole_repository(tmp_path: Path,
                                                            kubo_factory: Callable[[], Kubo]) -> None:
    node_a, node_b = kubo_factory(), kubo_factory()  # never connected to each other
    a = _origin(tmp_path, node_a)
    payload = os.urandom(1_500_000)
    write(a.cwd, "data/payload.bin", payload)
    a("commit", "-m", "one")
    write(a.cwd, "data/second.txt", "second\n")
    a("commit", "-m", "two")
    index = str(_push(a)["index"])
    car = tmp_path / "repo.car"
    car.write_bytes(node_a.ipfs("dag", "export", index, timeout=120))
    node_b.ipfs("dag", "import", str(car))  # pins the root (recursively) by default
    node_b.ipfs("repo", "gc")
    b = _clone(tmp_path, f"{node_b.remote_url}#{index}", "b")
    assert (b.cwd / "data/payload.bin").read_bytes() == payload
    assert (b.cwd / "data/second.txt").read_text() == "second\n"
    assert b("log", "--json").stdout == a("log", "--json").stdout


def test_pinned_indexes_survive_gc_and_old_ones_are_unpinned(tmp_path: Path,
                                                            kubo_factory: Callable[[], Kubo]) -> None:
    node, reader = kubo_factory(), kubo_factory()
    assert node.node is not None and reader.node is not None
    a = _origin(tmp_path, node)
    write(a.cwd, "f.txt", "v1\n")
    a("commit", "-m", "v1")
    first = _push(a)
    write(a.cwd, "f.txt", "v2\n")
    a("commit", "-m", "v2")
    second = _push(a)
    # rewind main to v1 and force it: v2's DAG is then held by the second index's pin alone
    # (pinned directly until then: the push pins it recursively before dropping v2's head pin)
    repo = Repository.open(a.cwd)
    try:
        repo.refs.cas_ref("heads/main", parse_cid(str(second["head"])), parse_cid(str(first["head"])), "rewind")
    finally:
        repo.close()
    third = _push(a, "--force")
    assert third["head"] == first["head"] and len({first["index"], second["index"], third["index"]}) == 3
    node.ipfs("repo", "gc")
    for pushed, text in [(first, b"v1\n"), (second, b"v2\n"), (third, b"v1\n")]:
        path = f"/ipfs/{pushed['index']}/heads/site-a/main/tree/f.txt"
        assert node.ipfs("--offline", "cat", path) == text
    # a node with no records of its own reads the old index (and v2) from it over bitswap
    reader.node.connect(node.node)
    c = _clone(tmp_path, f"{reader.remote_url}#{second['index']}", "c")
    assert (c.cwd / "f.txt").read_text() == "v2\n"
    name = index_pin_name(_repo_id(a), "site-a")

    def pinned(kind: str) -> list[str]:
        return sorted(line.split()[0] for line in node.ipfs("pin", "ls", "--names", f"--type={kind}").decode()
                      .splitlines() if line.split()[-1] == name)

    assert pinned("recursive") == [second["index"]]  # only the one linking a dropped head
    assert pinned("direct") == sorted(str(p["index"]) for p in (first, third))
    # the newest KEEP_INDEXES stay pinned; older ones are unpinned, and gc takes them
    extra = []
    a("checkout", "main")  # the files follow the rewound branch
    for i in range(KEEP_INDEXES - 2):
        write(a.cwd, f"more-{i}.txt", "more\n")
        a("commit", "-m", f"more {i}")
        extra.append(_push(a))
    with connect(parse_url(node.remote_url)) as remote:
        listed = [cid_str(i.cid) for i in list_indexes(remote, _repo_id(a))]
    assert len(listed) == KEEP_INDEXES and str(first["index"]) not in listed
    assert listed[0] == extra[-1]["index"] and str(second["index"]) in listed
    node.ipfs("repo", "gc")
    with pytest.raises(KuboError):
        node.ipfs("--offline", "block", "stat", str(first["index"]))
    assert node.ipfs("--offline", "cat", f"/ipfs/{second['index']}/heads/site-a/main/tree/f.txt") == b"v2\n"


def test_an_index_alone_keeps_what_it_names(tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    """A second node that holds only an old index (pinned), no MFS records: a clone from it
    gets that index's heads, whatever the first node did since."""
    node_a, node_b = kubo_factory(), kubo_factory()
    assert node_a.node is not None and node_b.node is not None
    a = _origin(tmp_path, node_a)
    write(a.cwd, "f.txt", "v1\n")
    a("commit", "-m", "v1")
    old = _push(a)
    node_b.node.connect(node_a.node)
    node_b.ipfs("pin", "add", "--name", "kept-by-hand", str(old["index"]), timeout=120)
    write(a.cwd, "f.txt", "v2\n")
    a("commit", "-m", "v2")
    _push(a)
    node_b.ipfs("swarm", "disconnect", node_a.node.swarm_addr)
    node_b.ipfs("repo", "gc")
    b = _clone(tmp_path, f"{node_b.remote_url}#{old['index']}", "b")
    assert (b.cwd / "f.txt").read_text() == "v1\n"


def _rewind(cli: Cli, to: object) -> None:
    """Point the branch ``main`` of ``cli``'s repository back at the commit ``to``."""
    repo = Repository.open(cli.cwd)
    try:
        repo.refs.cas_ref("heads/main", repo.refs.get_ref("heads/main"), parse_cid(str(to)), "rewind")
    finally:
        repo.close()


def test_direct_indexes_lose_nothing_they_link_to_gc(tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    """Indexes are pinned directly; the heads' pins hold what they link.  After fast-forwards
    of two replicas and a forced push that drops a head other replicas' indexes still link,
    ``repo gc`` leaves every pinned index whole (``dag stat --offline`` walks every block)."""
    node = kubo_factory()
    a = _origin(tmp_path, node)
    write(a.cwd, "a.bin", os.urandom(300_000))
    a("commit", "-m", "a1")
    pushed = [_push(a)]
    b = _clone(tmp_path, f"{node.remote_url}/{_repo_id(a)}", "b")
    base = json.loads(b("log", "--json").stdout)[0]["cid"]
    write(b.cwd, "b.bin", os.urandom(300_000))
    b("commit", "-m", "b1")
    b1 = _push(b)  # links a's head and b1
    write(a.cwd, "a.bin", os.urandom(300_000))
    a("commit", "-m", "a2")
    pushed.append(_push(a))  # fast-forward: a1 held by a2's pin; this index links b1 too
    assert {p["index_pin"] for p in [*pushed, b1]} == {"direct"}
    _rewind(b, base)  # b drops b1: only the indexes still link it
    b("checkout", "main")
    write(b.cwd, "b.bin", os.urandom(300_000))
    b("commit", "-m", "b1 again")
    pushed += [b1, _push(b, "--force")]
    node.ipfs("repo", "gc")
    with connect(parse_url(node.remote_url)) as remote:
        indexes = list_indexes(remote, _repo_id(a))
    assert {cid_str(i.cid) for i in indexes} == {str(p["index"]) for p in pushed}
    for info in indexes:
        node.ipfs("--offline", "dag", "stat", "--progress=false", cid_str(info.cid), timeout=120)
    promoted = {cid_str(i.cid) for i in indexes if i.pin == "recursive"}
    assert promoted == {str(b1["index"]), str(pushed[1]["index"])}  # the two that link b1
    path = f"/ipfs/{b1['index']}/heads/b/main/tree/b.bin"
    assert len(node.ipfs("--offline", "cat", path)) == 300_000


def _push_into(repo: Repository, results: list[object], i: int, start: threading.Barrier) -> None:
    start.wait(timeout=30)
    try:
        results[i] = push_branch(repo, "origin")
    except CasyncError as exc:
        results[i] = exc


def test_concurrent_pushes_of_two_replicas_both_appear(tmp_path: Path, kubo: Kubo) -> None:
    a = _origin(tmp_path, kubo)
    write(a.cwd, "base.txt", "base\n")
    a("commit", "-m", "base")
    _push(a)
    b = _clone(tmp_path, f"{kubo.remote_url}/{_repo_id(a)}", "b")
    for rounds in range(3):
        write(a.cwd, f"a-{rounds}.txt", os.urandom(200_000))
        a("commit", "-m", f"a {rounds}")
        write(b.cwd, f"b-{rounds}.txt", os.urandom(200_000))
        b("commit", "-m", f"b {rounds}")
        repos = [Repository.open(a.cwd), Repository.open(b.cwd)]
        results: list[object] = [None, None]
        start = threading.Barrier(2)

        threads = [threading.Thread(target=_push_into, args=(repos[i], results, i, start)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        heads = {r.replica: r.refs.get_ref("heads/main") for r in repos}
        for r in repos:
            r.close()
        assert all(isinstance(res, PushResult) for res in results), results
        with connect(parse_url(kubo.remote_url)) as remote:
            records = remote.records(_repo_id(a), errors=None, index=False)
            assert {k: records[k].heads["main"].commit for k in ("site-a", "b")} == heads
            # the later publisher re-read the records after its own: its index links both heads
            seen = []
            for res in results:
                assert isinstance(res, PushResult) and res.index is not None
                url = parse_url(f"{kubo.remote_url}#{cid_str(res.index)}")
                with connect(url) as by_index:
                    store = by_index.block_store()
                    recs = read_index(store, res.index, _repo_id(a), None)
                    seen.append({r.replica: r.heads["main"].commit for r in recs})
        assert heads in seen, (rounds, seen)


def test_old_mfs_indexes_still_read_v0_and_v1(tmp_path: Path, kubo: Kubo) -> None:
    """Remotes pushed by the previous version printed the MFS directory as the index: a
    dag-pb directory of JSON records.  Such URLs keep working (CIDv1 and CIDv0 alike)."""
    a = _origin(tmp_path, kubo)
    write(a.cwd, "f.txt", "old style\n")
    a("commit", "-m", "one")
    _push(a)
    rid = _repo_id(a)
    mfs = kubo.ipfs("files", "stat", "--hash", f"/casync/{rid}").decode().strip()
    show = json.loads(a("remote", "show", "--json").stdout)
    assert show["mfs_index"] == mfs
    c1 = _clone(tmp_path, f"{kubo.remote_url}#{mfs}", "c1")
    assert (c1.cwd / "f.txt").read_text() == "old style\n"
    # a CIDv0 directory (Kubo's default for `files mkdir`) holding the same heads/
    v0dir = f"/casync-test-v0-{rid}"
    kubo.ipfs("files", "mkdir", "--cid-version=0", v0dir)
    kubo.ipfs("files", "cp", f"/casync/{rid}/heads", f"{v0dir}/heads")
    v0 = kubo.ipfs("files", "stat", "--hash", v0dir).decode().strip()
    assert v0.startswith("Qm")
    assert cid_str(parse_cid(v0)) == v0  # printed as Kubo prints it, never as base32 'bciq...'
    c2 = _clone(tmp_path, f"{kubo.remote_url}#{v0}", "c2")
    assert (c2.cwd / "f.txt").read_text() == "old style\n"
    assert json.loads(c2("remote", "-v", "--json").stdout)[0]["index"] == v0
    kubo.ipfs("files", "rm", "-r", v0dir)


def test_after_retention_index_pins_are_direct(tmp_path: Path, kubo_factory: Callable[[], Kubo]) -> None:
    """A recursive index would hold the trees retention let go: ``retention`` turns the
    repository's index pins into direct ones, and later pushes of any replica pin directly."""
    node = kubo_factory()
    a = _origin(tmp_path, node)
    for i in range(3):
        write(a.cwd, "data.bin", os.urandom(100_000))
        a("commit", "-m", f"c{i}")
    first = _push(a)
    b = _clone(tmp_path, f"{node.remote_url}/{_repo_id(a)}", "b")
    write(b.cwd, "from-b.txt", "b\n")
    b("commit", "-m", "b")
    by_b = _push(b)
    assert first["index_pin"] == by_b["index_pin"] == "direct"

    def pins(kind: str) -> set[str]:
        out = node.ipfs("pin", "ls", "--names", f"--type={kind}").decode().splitlines()
        return {line.split()[0] for line in out if "/.index/" in line.split()[-1]}

    # as an older casync pinned them (recursively; a forced push promotes them too)
    for pushed, replica in [(first, "site-a"), (by_b, "b")]:
        node.ipfs("pin", "add", "--name", index_pin_name(_repo_id(a), replica), str(pushed["index"]))
    assert {first["index"], by_b["index"]} <= pins("recursive")
    out = json.loads(a("retention", "--keep-last", "1", "--json").stdout)
    assert set(out["remotes"][0]["unpinned"]) >= {first["index"], by_b["index"]}
    assert not pins("recursive") and {first["index"], by_b["index"]} <= pins("direct")
    write(a.cwd, "data.bin", os.urandom(100_000))
    a("commit", "-m", "after")
    after = _push(a)
    write(b.cwd, "from-b.txt", "b again\n")
    b("commit", "-m", "b again")
    again = _push(b)  # b forgot nothing, but a pins in the retained layout on this node
    assert after["index_pin"] == again["index_pin"] == "direct" and not pins("recursive")
    node.ipfs("repo", "gc")
    path = f"/ipfs/{again['index']}/heads/b/main/tree/from-b.txt"
    assert node.ipfs("--offline", "cat", path) == b"b again\n"
    record = json.loads(node.ipfs("--offline", "dag", "get", f"{after['index']}/records/site-a"))
    assert record["heads"]["main"]["commit"] == {"/": after["head"]}
