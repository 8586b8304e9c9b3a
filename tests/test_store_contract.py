"""One contract, every block store: memory, pack+LMDB (and Kubo, in test_ipfs_store.py,
which reuses :class:`BlockStoreContract`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync.errors import BlockNotFound, CorruptBlock, RefConflict
from casync.model.cid import DAG_CBOR, RAW, compute_cid
from casync.store.base import BlockStore
from casync.store.lmdb import LmdbStore
from casync.store.memory import MemoryBlockStore, MemoryRefStore


def block(n: int, size: int = 100) -> tuple[bytes, bytes]:
    data = (f"block-{n}-".encode() * (size // 8 + 1))[:size]
    return compute_cid(RAW, data), data


class BlockStoreContract:
    """Subclasses provide a ``store`` fixture yielding an empty BlockStore."""

    def test_put_get_roundtrip(self, store: BlockStore) -> None:
        cid, data = block(1)
        assert store.put(cid, data) is True
        store.flush()
        assert store.get(cid) == data
        assert store.has(cid)

    def test_put_is_idempotent(self, store: BlockStore) -> None:
        cid, data = block(2)
        assert store.put(cid, data) is True
        assert store.put(cid, data) is False
        store.flush()
        assert store.put(cid, data) is False
        assert list(store.iter_cids()).count(cid) == 1

    def test_missing_block_names_cid(self, store: BlockStore) -> None:
        cid, _ = block(3)
        assert not store.has(cid)
        with pytest.raises(BlockNotFound) as err:
            store.get(cid)
        assert "bafk" in str(err.value)

    def test_has_many_returns_present_subset(self, store: BlockStore) -> None:
        present = [block(i) for i in range(5)]
        absent = [block(i)[0] for i in range(100, 103)]
        for cid, data in present:
            store.put(cid, data)
        store.flush()
        assert store.has_many([c for c, _ in present] + absent) == {c for c, _ in present}

    def test_delete_then_absent(self, store: BlockStore) -> None:
        cid, data = block(4)
        store.put(cid, data)
        store.flush()
        store.delete(cid)
        assert not store.has(cid)
        with pytest.raises(BlockNotFound):
            store.get(cid)

    def test_iter_lists_everything(self, store: BlockStore) -> None:
        cids = set()
        for i in range(20):
            cid, data = block(i, 50 + i)
            store.put(cid, data)
            cids.add(cid)
        store.flush()
        assert set(store.iter_cids()) >= cids

    def test_large_and_empty_blocks(self, store: BlockStore) -> None:
        big = os.urandom(1 << 20)
        for data in (big, b""):
            cid = compute_cid(RAW, data)
            store.put(cid, data)
        store.flush()
        assert store.get(compute_cid(RAW, big)) == big
        assert store.get(compute_cid(RAW, b"")) == b""

    def test_other_codecs(self, store: BlockStore) -> None:
        data = b"\xa1avb\x01"  # not a valid commit, but a valid block for the store
        cid = compute_cid(DAG_CBOR, data)
        store.put(cid, data)
        store.flush()
        assert store.get(cid) == data


class TestMemoryBlockStore(BlockStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[BlockStore]:
        yield MemoryBlockStore()


class TestPackBlockStore(BlockStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[BlockStore]:
        s = LmdbStore(tmp_path / "s", create=True)
        try:
            yield s.blocks
        finally:
            s.close()

    def test_survives_reopen(self, tmp_path: Path) -> None:
        s = LmdbStore(tmp_path / "s", create=True)
        cid, data = block(9)
        s.blocks.put(cid, data)
        s.blocks.flush()
        s.close()
        s2 = LmdbStore(tmp_path / "s")
        assert s2.blocks.get(cid) == data
        s2.close()

    def test_unflushed_blocks_are_not_durable(self, tmp_path: Path) -> None:
        s = LmdbStore(tmp_path / "s", create=True)
        cid, data = block(10)
        s.blocks.put(cid, data)
        s.blocks.discard()
        assert not s.blocks.has(cid)
        s.close()
        s2 = LmdbStore(tmp_path / "s")
        assert not s2.blocks.has(cid)
        s2.close()

    def test_flipped_byte_on_disk_is_detected(self, tmp_path: Path) -> None:
        s = LmdbStore(tmp_path / "s", create=True)
        cid, data = block(11, 4096)
        s.blocks.put(cid, data)
        s.blocks.flush()
        s.close()
        pack = next((tmp_path / "s" / "packs").glob("*.pack"))
        raw = bytearray(pack.read_bytes())
        raw[-100] ^= 0x01
        pack.write_bytes(bytes(raw))
        s2 = LmdbStore(tmp_path / "s")
        with pytest.raises(CorruptBlock) as err:
            s2.blocks.get(cid)
        assert str(err.value).startswith("block bafk")
        s2.close()


class RefStoreContract:
    def test_cas_create_update_delete(self, refs) -> None:  # type: ignore[no-untyped-def]
        a, _ = block(1)
        b, _ = block(2)
        assert refs.get_ref("heads/main") is None
        refs.cas_ref("heads/main", None, a, "create")
        assert refs.get_ref("heads/main") == a
        with pytest.raises(RefConflict):
            refs.cas_ref("heads/main", None, b, "stale create")
        with pytest.raises(RefConflict):
            refs.cas_ref("heads/main", b, b, "wrong old")
        refs.cas_ref("heads/main", a, b, "update")
        assert refs.list_refs("heads/") == {"heads/main": b}
        refs.cas_ref("heads/main", b, None, "delete")
        assert refs.get_ref("heads/main") is None
        log = refs.reflog("heads/main")
        assert [(e.old, e.new, e.reason) for e in log] == [(None, a, "create"), (a, b, "update"),
                                                           (b, None, "delete")]

    def test_prefix_listing_is_exact(self, refs) -> None:  # type: ignore[no-untyped-def]
        a, _ = block(1)
        refs.cas_ref("heads/x", None, a, "c")
        refs.cas_ref("headsx", None, a, "c")
        refs.cas_ref("remotes/o/main", None, a, "c")
        assert set(refs.list_refs("heads/")) == {"heads/x"}


class TestMemoryRefStore(RefStoreContract):
    @pytest.fixture
    def refs(self) -> MemoryRefStore:
        return MemoryRefStore()


class TestLmdbRefStore(RefStoreContract):
    @pytest.fixture
    def refs(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        s = LmdbStore(tmp_path / "s", create=True)
        yield s.refs
        s.close()


def test_torn_pack_tail_is_cut_and_deleted_bytes_are_reclaimable(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "s", create=True)
    cid, data = block(20, 1000)
    s.blocks.put(cid, data)
    s.blocks.flush()
    pack = next((tmp_path / "s" / "packs").glob("*.pack"))
    clean_size = pack.stat().st_size
    assert s.blocks.pack_bytes() == (clean_size, clean_size)
    with open(pack, "ab") as f:  # what a crash in the middle of an append leaves behind
        f.write(b"\x24" + b"torn")
    cid2, data2 = block(21, 500)
    s.blocks.put(cid2, data2)
    s.blocks.flush()
    assert s.blocks.get(cid2) == data2
    records = pack.read_bytes()[16:]
    assert b"torn" not in records  # the next writer cut the torn tail off first
    s.blocks.delete(cid)
    total, used = s.blocks.pack_bytes()
    assert total - used == 1000 + 1 + len(cid) + 2
    s.close()
