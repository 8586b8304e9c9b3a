"""The ingest pipeline (casync/trees/ingest.py) cuts exactly what a sequential cut does.

The reference is the chunker's own stream cut (``Chunker.chunks``, checked against the
written-down FastCDC in test_chunking_spec.py), one chunk at a time on one thread; the
pipeline reads big blocks, cuts each in one call, carries the tail and stores batches on a
worker.  Any chunk dropped, duplicated, reordered or cut elsewhere changes the list of
(CID, size) compared here."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import casync.trees.ingest as ingest
from casync.model.chunking import CDC_MAX, CDC_MIN, FIXED_SIZE, chunker_for
from casync.model.cid import RAW, Cid, compute_cid
from casync.model.objects import FileLayoutBuilder
from casync.store.memory import MemoryBlockStore
from casync.trees.ingest import FileWriter, leaves
from casync.trees.unixfs import iter_file

_DATA = random.Random(15).randbytes(7 << 20)


def _sequential(chunker: str, data: bytes) -> list[tuple[Cid, int]]:
    return [(compute_cid(RAW, c), len(c)) for c in chunker_for(chunker).chunks(io.BytesIO(data))]


def _root(pairs: list[tuple[Cid, int]]) -> Cid:
    layout = FileLayoutBuilder(lambda cid, block: None)
    for cid, size in pairs or [(compute_cid(RAW, b""), 0)]:
        layout.add_leaf(cid, size)
    return layout.finish()[0]


def _ingested(chunker: str, data: bytes, head: int) -> tuple[list[tuple[Cid, int]], MemoryBlockStore, int]:
    store = MemoryBlockStore()
    spare: list[bytearray] = []
    out = list(leaves(data[:head], io.BytesIO(data[head:]), chunker_for(chunker), "blake3", store.put, spare))
    return out, store, len(spare)


SIZES = [0, 1, CDC_MIN - 1, CDC_MIN, CDC_MIN + 1, CDC_MAX - 1, CDC_MAX, CDC_MAX + 1, 3 << 20, 7 << 20]


@pytest.mark.parametrize("chunker", ["cdc", "fixed"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("block", [CDC_MAX + 4096, 3 << 20, ingest.BLOCK])
def test_the_pipeline_cuts_and_stores_what_a_sequential_cut_gives(chunker: str, size: int, block: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes around the chunk bounds; blocks small enough that many cuts cross a buffer
    boundary (and the tail of one buffer starts the next), and the real block size."""
    monkeypatch.setattr(ingest, "BLOCK", block)
    data = _DATA[:size]
    expected = _sequential(chunker, data)
    for head in sorted({0, 1, min(size, CDC_MIN + 1)}):  # FileWriter reads CDC_MIN + 1 first
        got, store, buffers = _ingested(chunker, data, head)
        assert got == expected, f"head {head}"  # each chunk once, in order, cut where it was
        assert sum(n for _cid, n in got) == size
        assert b"".join(store.get(cid) for cid, _n in got) == data
        assert set(store.iter_cids()) == {cid for cid, _n in expected}
        assert buffers <= ingest.BUFFERS  # memory stays bounded: a few buffers, kept for the next file


@pytest.mark.parametrize("chunker", ["cdc", "fixed"])
def test_a_file_of_many_blocks_gives_the_sequential_dag(chunker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FileWriter over the pipeline (here ~30 blocks of 1 MiB + 4 KiB, BUFFERS of them at
    most in use) writes the DAG a one-thread sequential cut gives, and reuses its buffers."""
    monkeypatch.setattr(ingest, "BLOCK", CDC_MAX + 4096)
    data = _DATA * 4 + b"tail"
    expected = _sequential(chunker, data)
    assert len(expected) > 20
    store = MemoryBlockStore()
    writer = FileWriter(store, chunker_for(chunker), "blake3")
    seen: list[int] = []
    entry = writer.write(io.BytesIO(data), progress=seen.append)
    assert entry.cid == _root(expected)
    assert seen == [n for _cid, n in expected]
    assert b"".join(iter_file(store, entry.cid)) == data
    assert writer.new_blocks == len(set(store.iter_cids()))
    kept = list(writer._buffers)
    assert 2 <= len(kept) <= ingest.BUFFERS
    again = writer.write(io.BytesIO(data[1:]))  # the next file reuses them
    assert again.cid == _root(_sequential(chunker, data[1:]))
    assert sorted(map(id, writer._buffers)) == sorted(map(id, kept))


def test_the_chunkers_cut_a_buffer_as_they_cut_a_stream() -> None:
    """``Chunker.cut`` alone: without ``final`` no chunk starts within ``lookahead`` of the end."""
    for name, lookahead in (("cdc", CDC_MAX), ("fixed", FIXED_SIZE)):
        chunker = chunker_for(name)
        assert chunker.lookahead == lookahead
        data = memoryview(_DATA[: 5 << 20])
        full = [n for _cid, n in _sequential(name, bytes(data))]
        ends = chunker.cut(data, True)
        assert [b - a for a, b in zip([0, *ends], ends, strict=False)] == full
        partial = chunker.cut(data, False)
        assert partial == ends[: len(partial)] and len(data) - partial[-1] < lookahead
        assert chunker.cut(data[:0], True) == [] and chunker.cut(data[:0], False) == []


@pytest.mark.parametrize("chunker", ["cdc", "fixed"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("a bug")])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the bug's traceback
def test_an_error_while_storing_stops_the_file_with_no_thread_left(chunker: str, error: Exception,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A store's error (disk full) is raised by ``write``, and so is a bug's (the worker
    thread ends, the reader does not wait for it forever); no thread is left behind."""
    monkeypatch.setattr(ingest, "BLOCK", CDC_MAX + 4096)

    class Failing(MemoryBlockStore):
        def put(self, cid: bytes, block: bytes | memoryview) -> bool:
            if sum(1 for _ in self.iter_cids()) == 12:
                raise error
            return super().put(cid, block)

    before = threading.active_count()
    with pytest.raises(type(error), match=str(error.args[-1])):
        FileWriter(Failing(), chunker_for(chunker), "blake3").write(io.BytesIO(_DATA))
    assert threading.active_count() == before


def test_a_commit_loads_neither_the_merge_engine_nor_cryptography(tmp_path: Path) -> None:
    """``casync init`` + ``commit`` of a file of several blocks (the worker thread runs) in a
    fresh interpreter: the commit does not import what only merges, signatures or a thread
    pool need (the merge engine ~7 ms, cryptography ~6 ms, concurrent.futures and logging
    ~4 ms: a fifth of the start-up every commit pays)."""
    (tmp_path / "big.bin").write_bytes(_DATA[: 2 * ingest.BLOCK + 12345])
    code = ("import sys\nfrom casync.cli.main import main\n"
            "for argv in (['-q', 'init'], ['-q', 'commit', '-m', 'big']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
            "heavy = ('cryptography', 'concurrent', 'logging', 'casync.merge', 'casync.worktree.merging')\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
            "assert not loaded, loaded\n"
            "assert 'casync.trees.ingest' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CASYNC_AUTHOR": "test"})
    assert r.returncode == 0, r.stdout + r.stderr
    log = subprocess.run([sys.executable, "-m", "casync.cli.main", "log", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert '"big"' in log.stdout, log.stdout + log.stderr
