"""Files into UnixFS DAGs (:class:`FileWriter`): the raw leaves cut and stored on two cores.

The file is read in big blocks (:data:`BLOCK`) with ``readinto`` into a few reused buffers;
each block is cut in one :meth:`Chunker.cut` call, and the uncut tail (less than the
chunker's lookahead) is carried to the start of the next buffer, so the chunks are exactly
those of a sequential cut of the whole stream.  A block's chunks go to one worker thread
as one batch, which hashes (blake3 releases the GIL) and stores them (the pack writes
release it too) while this thread reads and cuts the next block (FastCDC releases it):
one hand-off per block, not per chunk, and no chunk is copied on the way.

The leaves are hashed and stored from the buffer they were read into, so a file changing
while it is read cannot give a block whose bytes differ from its CID; the caller compares
the file's stat before and after (``worktree.checkout``) and reads it again if it moved.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from queue import SimpleQueue
from typing import Any, BinaryIO

from casync.errors import CasyncError
from casync.model.chunking import Chunker
from casync.model.cid import RAW, Cid, compute_cid
from casync.model.objects import Entry, FileLayoutBuilder
from casync.store.base import BlockStore

__all__ = ["BLOCK", "BUFFERS", "EMPTY_FILE", "EXEC_MODE", "Emit", "FileWriter", "leaves"]

EXEC_MODE = 0o755
EMPTY_FILE = b""

BLOCK = 4 << 20
"""Bytes read per ``readinto``: one batch for the worker (~15 chunks of the CDC chunker).
Measured: 4, 8, 16 MiB and a whole 256 MiB buffer cut at the same speed."""
BUFFERS = 3
"""Buffers in use at most (at least 2): one being read and cut, the rest queued or being
stored (so ~3 x 5 MiB of memory whatever the file size)."""

Emit = Callable[[Cid, "bytes | memoryview"], None]


class FileWriter:
    """Chunk a stream into raw leaves and a balanced UnixFS File DAG, storing each block."""

    def __init__(self, store: BlockStore, chunker: Chunker, hash_name: str) -> None:
        self.store = store
        self.chunker = chunker
        self.hash_name = hash_name
        self.new_blocks = 0
        self.new_bytes = 0
        self._count_lock = threading.Lock()
        self._buffers: list[bytearray] = []  # ingest's read buffers, kept from file to file

    def _emit(self, cid: Cid, block: bytes | memoryview) -> None:
        if self.store.put(cid, block):  # from two threads for a big file (see trees.ingest)
            with self._count_lock:
                self.new_blocks += 1
                self.new_bytes += len(block)

    def write(self, stream: BinaryIO, executable: bool = False,
              progress: Callable[[int], None] | None = None) -> Entry:
        # Most files in a tree are small: one read and one leaf, no chunker set-up
        # (and no 5 MiB read buffer; those are kept from one bigger file to the next).
        limit = self.chunker.single_chunk_limit
        head = stream.read(limit + 1)
        if len(head) <= limit and not executable:
            cid = compute_cid(RAW, head, self.hash_name)
            self._emit(cid, head)
            if progress is not None:
                progress(len(head))
            return Entry(cid, "file", len(head), False)
        layout = FileLayoutBuilder(self._emit, self.hash_name)
        count = 0
        for cid, size in leaves(head, stream, self.chunker, self.hash_name, self._emit, self._buffers):
            layout.add_leaf(cid, size)
            count += 1
            if progress is not None:
                progress(size)
        if count == 0:
            cid = compute_cid(RAW, EMPTY_FILE, self.hash_name)
            self._emit(cid, EMPTY_FILE)
            layout.add_leaf(cid, 0)
        root, tsize = layout.finish(EXEC_MODE if executable else None)
        return Entry(root, "file", tsize, executable)


def leaves(head: bytes, stream: Any, chunker: Chunker, hash_name: str, emit: Emit,
           spare: list[bytearray]) -> Iterator[tuple[Cid, int]]:
    """(CID, size) of each leaf of the file that is ``head`` (at most :data:`BLOCK` bytes,
    already read) followed by the rest of ``stream`` (read with ``readinto``), in order,
    each leaf stored through ``emit`` before it is yielded.  A file that fits one block is
    done on this thread alone.  ``spare``: buffers kept from earlier files (taken and given back: allocating and
    zeroing 5 MiB would cost a file of 100 KiB more than hashing it)."""
    size = BLOCK + chunker.lookahead
    taken: list[bytearray] = []

    def buffer() -> bytearray:
        while spare:
            buf = spare.pop()
            if len(buf) == size:
                taken.append(buf)
                return buf
        taken.append(bytearray(size))
        return taken[-1]

    try:
        view = memoryview(buffer())
        filled, final = _fill(view, head, stream)
        ends = chunker.cut(view[:filled], final)
        if final:
            yield from _stored(view, 0, ends, hash_name, emit)
        else:
            yield from _pipelined(view, filled, ends, stream, chunker, hash_name, emit, buffer)
    finally:
        spare.extend(taken)


def _fill(view: memoryview, tail: bytes | memoryview, stream: Any) -> tuple[int, bool]:
    """Put ``tail`` at the start of ``view`` and read the stream after it until ``view`` is
    full: (bytes in ``view``, whether the stream ended)."""
    filled = len(tail)
    view[:filled] = tail
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            return filled, True
        filled += n
    return filled, False


def _stored(view: memoryview, start: int, ends: list[int], hash_name: str, emit: Emit) -> list[tuple[Cid, int]]:
    """Hash and store the chunks of ``view`` that end at ``ends`` (the first starts at ``start``)."""
    out = []
    for end in ends:
        chunk = view[start:end]
        cid = compute_cid(RAW, chunk, hash_name)
        emit(cid, chunk)
        out.append((cid, end - start))
        start = end
    return out


def _pipelined(view: memoryview, filled: int, ends: list[int], stream: Any, chunker: Chunker,
               hash_name: str, emit: Emit, buffer: Callable[[], bytearray]) -> Iterator[tuple[Cid, int]]:
    """Cut here, store on a worker: block ``k + 1`` is read and cut while block ``k`` is
    hashed and stored.  A buffer is reused only once its batch is stored and its tail was
    carried (the tail is copied from the newest batch's buffer, never the oldest's)."""
    worker = _Worker(hash_name, emit)
    queued: deque[memoryview] = deque()
    free: list[memoryview] = []
    final = False
    try:
        while True:
            worker.submit(view, ends)
            queued.append(view)
            if final:
                break
            tail = view[ends[-1] if ends else 0 : filled]
            if not free and len(queued) >= BUFFERS:
                yield from worker.result()
                free.append(queued.popleft())
            view = free.pop() if free else memoryview(buffer())
            filled, final = _fill(view, tail, stream)
            del tail
            ends = chunker.cut(view[:filled], final)
        while queued:
            yield from worker.result()
            queued.popleft()
    finally:
        worker.close()  # no store write outlives the file (an error, or a stop)


class _Worker:
    """One thread hashing and storing batches in the order submitted; after an error it
    skips the rest.  (Not a ThreadPoolExecutor: concurrent.futures imports logging, ~4 ms
    of every command's start-up.)"""

    def __init__(self, hash_name: str, emit: Emit) -> None:
        self._tasks: SimpleQueue[tuple[memoryview, list[int]] | None] = SimpleQueue()
        self._done: SimpleQueue[tuple[list[tuple[Cid, int]], BaseException | None]] = SimpleQueue()
        self._failed = False
        self._thread = threading.Thread(target=self._run, args=(hash_name, emit), name="casync-ingest",
                                        daemon=True)  # (closed by its file; never keeps a process alive)
        self._thread.start()

    def _run(self, hash_name: str, emit: Emit) -> None:
        try:
            while (task := self._tasks.get()) is not None:
                if self._failed:
                    continue
                try:
                    self._done.put((_stored(task[0], 0, task[1], hash_name, emit), None))
                except (CasyncError, OSError) as exc:  # a store's errors: raised in the reading thread
                    self._failed = True
                    self._done.put(([], exc))
        finally:  # anything else (a bug) ends the thread: the reader gets it too, never waits forever
            if not self._failed:
                self._failed = True
                self._done.put(([], sys.exc_info()[1] or CasyncError("the ingest worker stopped")))

    def submit(self, view: memoryview, ends: list[int]) -> None:
        self._tasks.put((view, ends))

    def result(self) -> list[tuple[Cid, int]]:
        """The next batch's leaves, in submission order (its error, raised here)."""
        out, exc = self._done.get()
        if exc is not None:
            raise exc
        return out

    def close(self) -> None:
        self._failed = True  # what is still queued is skipped
        self._tasks.put(None)
        self._thread.join()
