"""HAMT-sharded directories without Kubo: the hash, the threshold, canonical shards under
any sequence of edits, one-entry changes that touch one bucket path, and a 20,000-entry
directory through commit, checkout, status, diff and peer sync."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import DAG_PB, RAW, Cid, cid_codec, compute_cid
from casync.model.hamt import HAMT_THRESHOLD, HamtEntry, build_hamt, name_hash
from casync.model.murmur3 import murmur3_x64_64
from casync.model.objects import UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD, decode_pbnode, decode_unixfs
from casync.store.memory import MemoryBlockStore
from casync.transports.peer.exchange import LocalPeer, fetch_from
from casync.trees.unixfs import Entry, build_tree, diff_flat, find_entry, flatten_tree, list_dir, update_tree
from casync.trees.walk import changed_paths, diff_trees

from .conftest import Cli, write

H = "blake3"

# MurmurHash3_x64_128, seed 0, first 64 bits (h1): the published reference vectors.
VECTORS = [
    ("", 0x0000000000000000),
    ("hello", 0xCBD8A7B341BD9B02),
    ("hello, world", 0x342FAC623A5EBC8E),
    ("19 Jan 2038 at 3:14:07 AM", 0xB89E5988B737AFFC),
    ("The quick brown fox jumps over the lazy dog.", 0xCD99481F9EE902C9),
]


@pytest.mark.parametrize(("text", "h1"), VECTORS)
def test_murmur3_x64_64_matches_the_published_vectors(text: str, h1: int) -> None:
    assert murmur3_x64_64(text.encode()) == h1.to_bytes(8, "big")


def _kind(store: MemoryBlockStore, cid: Cid) -> int:
    node = decode_pbnode(store.get(cid))
    assert node.data is not None
    return decode_unixfs(node.data).type


def _files(store: MemoryBlockStore, names: list[str]) -> dict[str, Entry]:
    out = {}
    for name in names:
        data = name.encode()
        cid = compute_cid(RAW, data, H)
        store.put(cid, data)
        out[name] = Entry(cid, "file", len(data))
    return out


def test_a_directory_is_sharded_strictly_above_256_kib_of_names_and_cids() -> None:
    # 4096 names of 28 bytes + 36-byte CIDs: exactly 262,144 -> plain; one byte more -> HAMT
    store = MemoryBlockStore()
    names = [f"{i:028d}" for i in range(4096)]
    assert HAMT_THRESHOLD == 4096 * (28 + 36)
    plain = build_tree(store, _files(store, names), H)
    assert _kind(store, plain.cid) == UNIXFS_DIRECTORY
    sharded = build_tree(store, _files(store, [names[0] + "y", *names[1:]]), H)
    assert _kind(store, sharded.cid) == UNIXFS_HAMT_SHARD
    listed = list_dir(store.get, sharded.cid)
    assert [link.name for link in listed] == sorted([names[0] + "y", *names[1:]])
    assert find_entry(store.get, sharded.cid, names[5]) is not None
    assert find_entry(store.get, sharded.cid, "nope") is None


def test_any_sequence_of_edits_gives_the_shards_a_fresh_build_gives() -> None:
    """Kubo's HAMT is a function of its entry set (sub-shards of one entry collapse), so
    update_tree must land on exactly build_tree's CIDs, plain again below the threshold."""
    rng = random.Random(12)
    store = MemoryBlockStore()
    names = [f"entry-{i:06d}-{'x' * rng.randrange(0, 30)}" for i in range(9000)]
    files = _files(store, names)
    root = build_tree(store, files, H)
    assert _kind(store, root.cid) == UNIXFS_HAMT_SHARD
    current = dict(files)
    for step in range(12):
        changes: dict[str, Entry | None] = {}
        for name in rng.sample(sorted(current), 400 if step < 10 else 2000):
            changes[name] = None
        for name in (f"new-{step}-{i}" for i in range(rng.randrange(0, 150))):
            changes[name] = _files(store, [name])[name]
        for name in rng.sample(sorted(current), 20):
            changes[name] = _files(store, [name + "!"])[name + "!"]
        root = update_tree(store, root.cid, changes, H)
        for name, entry in changes.items():
            if entry is None:
                current.pop(name, None)
            else:
                current[name] = entry
        fresh = build_tree(MemoryBlockStore(), current, H)
        assert root == fresh, step
    assert _kind(store, root.cid) == UNIXFS_DIRECTORY  # 9000 - 4400 - 4000 entries: plain again
    assert flatten_tree(store, root.cid) == current


def test_two_names_of_one_hash_are_refused() -> None:
    with pytest.raises(Exception, match="twice"):
        build_hamt([HamtEntry(name_hash(b"a"), b"a", b"x", 1)] * 2, lambda c, b: None, H)


def _bucket_path(store: MemoryBlockStore, root: Cid, name: str) -> list[Cid]:
    """The shards from ``root`` to the one holding ``name``."""
    h = name_hash(name.encode())
    path = [root]
    for depth in range(8):
        node = decode_pbnode(store.get(path[-1]))
        link = next(x for x in node.links if (x.name or b"")[:2] == b"%02X" % h[depth])
        if link.name != b"%02X" % h[depth]:
            return path
        path.append(link.cid)
    raise AssertionError("too deep")


def test_editing_one_entry_writes_only_the_shards_on_its_bucket_path() -> None:
    store = MemoryBlockStore()
    names = [f"f{i}" for i in range(20_000)]
    root = build_tree(store, {f"big/{k}": v for k, v in _files(store, names).items()}, H)
    big = find_entry(store.get, root.cid, "big")
    assert big is not None and _kind(store, big.cid) == UNIXFS_HAMT_SHARD
    before = set(store.iter_cids())
    new = _files(store, ["changed"])["changed"]
    after_leaf = set(store.iter_cids())
    root2 = update_tree(store, root.cid, {"big/f123": new}, H)
    written = set(store.iter_cids()) - after_leaf
    big2 = find_entry(store.get, root2.cid, "big")
    assert big2 is not None
    path = _bucket_path(store, big2.cid, "f123")
    assert written == {root2.cid, *path}
    assert 2 <= len(path) <= 4 and before.isdisjoint(written)
    assert changed_paths(store.get, root.cid, root2.cid) == {"big/f123"}


def test_a_sharded_directory_round_trips_through_the_command_line(tmp_path: Path) -> None:
    """20,000 entries: commit, clone by peer sync, status and diff of a one-entry change,
    a sync of that change sending only its bucket path, checkout back."""
    Cli(tmp_path)("init", "a", "--replica", "a")
    a = Cli(tmp_path / "a")
    for i in range(20_000):
        write(a.cwd, f"many/file-{i:05d}.txt", f"{i}\n")
    a("commit", "-m", "many")
    repo = Repository.open(a.cwd)
    tree = repo.tree_of(repo.resolve("HEAD"))
    many = find_entry(repo.blocks.get, tree, "many")
    assert many is not None and cid_codec(many.cid) == DAG_PB
    assert decode_unixfs(decode_pbnode(repo.blocks.get(many.cid)).data or b"").type == UNIXFS_HAMT_SHARD
    repo.close()

    b_repo = Repository.init(tmp_path / "b", replica="b", repository_id=Repository.open(a.cwd).repo_id)
    peer = LocalPeer(str(a.cwd))
    first = fetch_from(b_repo, peer, "a")
    assert first.stats.commits
    b_repo.close()

    write(a.cwd, "many/file-01234.txt", "changed\n")
    status = a("status", "--json").stdout
    assert "many/file-01234.txt" in status and "file-01235" not in status
    a("commit", "-m", "one change")
    diff = a("diff", "HEAD~1", "HEAD").stdout
    assert "many/file-01234.txt" in diff and "file-00001" not in diff

    b_repo = Repository.open(tmp_path / "b")
    again = fetch_from(b_repo, peer, "a")
    assert len(again.stats.commits) == 1
    # the new leaf, the shards on its bucket path (root shard and one or two below), the
    # top directory and the commit
    assert again.stats.blocks <= 1 + 3 + 1 + 1, again.stats
    assert b_repo.fsck().ok
    assert b_repo.read("many/file-01234.txt", rev="remotes/a/main") == b"changed\n"
    b_repo.close()
    peer.close()

    a("checkout", "HEAD~1")
    assert (a.cwd / "many/file-01234.txt").read_text() == "1234\n"
    assert len(list((a.cwd / "many").iterdir())) == 20_000


def test_diff_of_two_trees_reads_only_what_changed_and_says_what_diff_flat_says() -> None:
    store = MemoryBlockStore()
    files = {f"d0/{k}": v for k, v in _files(store, [f"entry-{i:05d}" for i in range(7000)]).items()}  # a HAMT
    files |= {f"x/{k}": v for k, v in _files(store, [f"y{i}" for i in range(50)]).items()}
    old = build_tree(store, files, H)
    new_leaf = _files(store, ["new", "file now", "zz"])
    changes: dict[str, Entry | None] = {"d0/entry-00005": new_leaf["new"], "d0/entry-00077": None,
                                        "x": new_leaf["file now"], "z/new": new_leaf["zz"]}
    new = update_tree(store, old.cid, changes, H)
    expected = diff_flat(flatten_tree(store, old.cid), flatten_tree(store, new.cid))
    assert len(expected) == 54  # modified, deleted, 50 gone under x/, the file x, z/new
    assert diff_trees(store, old.cid, new.cid) == expected

    reads: list[bytes] = []

    class Counting(MemoryBlockStore):
        def get(self, cid: bytes) -> bytes:
            reads.append(cid)
            return store.get(cid)

    one = update_tree(store, old.cid, {"d0/entry-01234": new_leaf["new"]}, H)
    assert [c.path for c in diff_trees(Counting(), old.cid, one.cid)] == ["d0/entry-01234"]
    assert len(reads) <= 24, len(reads)  # both bucket paths, twice (diff, lookup), of the ~260 shards of d0
