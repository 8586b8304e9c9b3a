"""The embedded local store: append-only pack files for block bytes, LMDB for everything else.

Why not block bytes in LMDB?  Measured on our machines (docs/design.md): LMDB with
default flags writes big values at 0.15–0.2 GB/s (overflow pages, copy-on-write);
``writemap=True`` reaches 1.2 GB/s but turns a full disk into SIGBUS instead of an
error.  Appending to a pack file and fsyncing runs at ~1.5 GB/s and a full disk is a
clean ``ENOSPC``.  LMDB (default, safe flags) keeps the small, hot, transactional
data: the block index (CID -> pack, offset, length), refs (compare-and-swap in a
write transaction), the reflog, config, metadata and the stat cache.

Durability order (the closure invariant): block bytes are appended and fsynced, then
their index entries are committed in one LMDB transaction, and only after that may a
ref name them.  A crash between the two leaves unreferenced bytes at the end of a pack,
never a ref to a missing block; the next writer truncates the pack back to the end
recorded with the last committed batch (``meta`` key ``pack_end/N``), so packs stay
parseable from start to end.  ``casync fsck`` reports pack bytes no index entry uses
(deleted blocks) as reclaimable.

Single writer: :meth:`LmdbStore.writer_lock` takes an exclusive ``flock`` on
``.casync/lock`` for the duration of a write; readers never block.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from casync.errors import BlockNotFound, CasyncError, CorruptBlock, RefConflict, StorageError, StorageFull
from casync.graph import Node
from casync.ids import Cid, cid_str, varint, verify_block
from casync.objects import HybridTime
from casync.reach import Reach, label
from casync.store.base import RefLogEntry

__all__ = ["STAT_KEY", "STAT_KEY_SIZE", "LmdbRefStore", "LmdbStore", "PackBlockStore", "StatEntry",
           "stat_records_digest"]

_LOC = struct.Struct("<IQI")  # pack number, data offset, data length
_STAT = struct.Struct("<qqqQIQ")  # mtime_ns, ctime_ns, size, inode, st_mode, tsize
STAT_KEY = struct.Struct("<qqqQI")  # the part compared against a fresh lstat
STAT_KEY_SIZE = STAT_KEY.size
PACK_MAGIC = b"CASYNCPACK\x00\x00\x00\x00\x00\x01"  # 16 bytes: name + format version 1
PACK_ROTATE_BYTES = 1 << 30
INITIAL_MAP_SIZE = 1 << 32
SYNC_AHEAD_BYTES = 64 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
MAX_MAP_SIZE = 1 << 40




StatEntry = tuple[int, int, int, int, int, int, Cid]
"""(mtime_ns, ctime_ns, size, inode, st_mode, tsize, cid) of a file when it was last hashed."""


_ENVS: dict[str, list[Any]] = {}  # realpath -> [env, refcount, {db name: handle}]
_ENVS_LOCK = threading.Lock()
_DB_NAMES = ("index", "refs", "reflog", "config", "meta", "statcache", "commitgraph", "commitreach")
_NODE = struct.Struct("<QqIB")  # generation, wall_ms, logical, number of parents; then
# length-prefixed parents, tree and replica id (see docs/design.md, "commitgraph")


def _open_env(path: Path, create: bool, map_size: int) -> tuple[Any, dict[str, Any]]:
    """py-lmdb allows one Environment per path per process: share it, refcounted.

    Named databases are opened once per environment, under the registry lock: opening
    them runs a write transaction, and concurrent ones from several threads deadlock.
    """
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        held = _ENVS.get(key)
        if held is not None:
            held[1] += 1
            return held[0], held[2]
        try:
            env = lmdb.open(key, map_size=map_size, max_dbs=16, subdir=True, create=create,
                            readahead=False)
            dbs = {name: env.open_db(name.encode()) for name in _DB_NAMES}
        except lmdb.Error as exc:
            raise StorageError(f"cannot open the store at {key}: {exc}",
                              hint="check permissions and free disk space") from None
        _ENVS[key] = [env, 1, dbs]
        return env, dbs


def _close_env(env: Any) -> None:
    with _ENVS_LOCK:
        for key, held in list(_ENVS.items()):
            if held[0] is env:
                held[1] -= 1
                if held[1] == 0:
                    del _ENVS[key]
                    env.close()
                return


_REACH = struct.Struct("<QQI")  # rank, low, first-parent depth; then the length-prefixed skip CID


def _encode_node(node: Node) -> bytes:
    """The ``commitgraph`` value (labels live apart, in ``commitreach``)."""
    value = _NODE.pack(node.generation, node.time.wall_ms, node.time.logical, len(node.parents))
    fields = [*node.parents, node.tree, node.replica.encode()]
    return value + b"".join(bytes((len(f),)) + f for f in fields)


def _encode_reach(r: Reach) -> bytes:
    return _REACH.pack(r.rank, r.low, r.depth) + bytes((len(r.skip),)) + r.skip


def _decode_node(raw: bytes) -> Node:
    gen, wall, logical, count = _NODE.unpack_from(raw)
    cids, pos = [], _NODE.size
    for _ in range(count + 2):  # parents, then the tree, then the replica id
        n = raw[pos]
        cids.append(raw[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return Node(gen, HybridTime(wall, logical), tuple(cids[:count]), cids[count], cids[count + 1].decode())


def _decode_reach(raw: bytes) -> Reach:
    rank, low, depth = _REACH.unpack_from(raw)
    at = _REACH.size
    return Reach(rank, low, depth, raw[at + 1 : at + 1 + raw[at]])


def _parents_first(nodes: dict[Cid, Node]) -> list[tuple[Cid, Node]]:
    """``nodes`` in the order they were given, except that a parent among them always comes
    before its children: ranks then follow arrival order (a fetched branch ranks above
    the local history it joins), which is what makes the rank cut useful."""
    out: list[tuple[Cid, Node]] = []
    done: set[Cid] = set()
    for cid in nodes:
        stack = [(cid, False)]
        while stack:
            c, expanded = stack.pop()
            if c in done:
                continue
            if expanded:
                done.add(c)
                out.append((c, nodes[c]))
                continue
            stack.append((c, True))
            stack.extend((p, False) for p in reversed(nodes[c].parents) if p in nodes and p not in done)
    return out


def stat_records_digest(records: bytes | bytearray) -> bytes:
    """blake3 of canonical stat records (path, NUL, packed stat key; sorted by path)."""
    import blake3

    return bytes(blake3.blake3(records).digest())


class LmdbStore:
    """The LMDB environment under ``.casync/`` plus its pack directory."""

    def __init__(self, root: Path, *, create: bool = False, map_size: int = INITIAL_MAP_SIZE,
                 max_map_size: int = MAX_MAP_SIZE, pack_rotate_bytes: int = PACK_ROTATE_BYTES) -> None:
        """``map_size`` (the first LMDB map; it doubles when full, up to ``max_map_size``) and
        ``pack_rotate_bytes`` (a pack this long is closed for a new one) are parameters so
        tests can reach map growth and pack rotation with small stores."""
        self.root = root
        self.max_map_size = max_map_size
        self.pack_rotate_bytes = pack_rotate_bytes
        self.db_path = root / "db"
        self.pack_dir = root / "packs"
        if create:
            self.db_path.mkdir(parents=True, exist_ok=True)
            self.pack_dir.mkdir(parents=True, exist_ok=True)
        self.env, self._dbs = _open_env(self.db_path, create, map_size)
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._thread_lock = threading.RLock()  # flock excludes processes; this, threads
        self.blocks = PackBlockStore(self)
        self.refs = LmdbRefStore(self)

    def db(self, name: str) -> Any:
        return self._dbs[name]

    # --- transactions with map growth ------------------------------------------------------

    def write(self, fn: Any) -> Any:
        """Run ``fn(txn)`` in a write transaction; grow the map and retry when it is full."""
        for _attempt in range(8):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                size = self.env.info()["map_size"]
                if size >= self.max_map_size:
                    raise StorageFull(f"LMDB map at {self.db_path} is full ({size} bytes); nothing was written",
                                      hint="there is no garbage collection yet: 'casync clone' "
                                           "this repository into a new directory for a fresh index that "
                                           "holds only the reachable history") from None
                self.env.set_mapsize(min(size * 2, self.max_map_size))
            except lmdb.DiskError as exc:
                raise StorageFull(f"cannot write {self.db_path}: {exc}", hint="free disk space and retry") from None
            except lmdb.Error as exc:
                # py-lmdb reports I/O failures as a plain Error whose ``code`` is the errno
                if exc.code in _DISK_FULL:
                    raise StorageFull(f"disk full writing {self.db_path} ({exc})",
                                      hint="free disk space and retry; nothing was committed") from None
                if exc.code > 0:  # an errno (LMDB's own codes are negative: those are bugs)
                    raise StorageError(f"cannot write {self.db_path}: {exc.reason}; nothing was committed",
                                       hint="check the disk (dmesg) and the file system, then retry") from None
                raise
        raise StorageFull(f"LMDB map at {self.db_path} could not grow", hint="free disk space and retry")

    def get(self, db: str, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(key, db=self._dbs[db])
            return bytes(value) if value is not None else None

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.write(lambda txn: txn.put(key, value, db=self._dbs[db]))

    def items(self, db: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._dbs[db])
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out.append((bytes(key), bytes(value)))
        return out

    # --- commit-graph table (graph.NodeCache) -------------------------------------------------

    def get_node(self, cid: Cid) -> Node | None:
        raw = self.get("commitgraph", cid)
        return _decode_node(raw) if raw is not None else None

    def get_reach(self, cid: Cid) -> Reach | None:
        raw = self.get("commitreach", cid)
        return _decode_reach(raw) if raw is not None else None

    def put_nodes(self, nodes: dict[Cid, Node]) -> dict[Cid, Reach]:
        """Store nodes with reachability labels (casync/reach.py), assigned inside the write
        transaction so that ranks follow the order commits enter the table, parents first,
        whatever process writes.  Labels already stored are never changed; unlabelled
        ancestors (tables written before labels existed) are labelled on the way.  Labels
        are kept in their own DB, ``commitreach``: versions of casync that predate them
        rewrite ``commitgraph`` entries and must not be able to drop a label."""
        def fn(txn: Any) -> dict[Cid, Reach]:
            db, reach_db = self._dbs["commitgraph"], self._dbs["commitreach"]
            nodes_seen: dict[Cid, Node | None] = {}
            reach_seen: dict[Cid, Reach | None] = {}

            def stored(cid: Cid) -> Node | None:
                if cid not in nodes_seen:
                    raw = txn.get(cid, db=db)
                    nodes_seen[cid] = _decode_node(bytes(raw)) if raw is not None else None
                return nodes_seen[cid]

            def stored_reach(cid: Cid) -> Reach | None:
                if cid not in reach_seen:
                    raw = txn.get(cid, db=reach_db)
                    reach_seen[cid] = _decode_reach(bytes(raw)) if raw is not None else None
                return reach_seen[cid]

            todo: dict[Cid, Node] = {}  # in the order given: that order becomes the ranks
            out: dict[Cid, Reach] = {}
            for cid, node in nodes.items():
                have = stored_reach(cid)
                if have is None:
                    todo[cid] = node
                else:
                    out[cid] = have  # labelled already (another process): kept as it is
            older: dict[Cid, Node] = {}  # unlabelled ancestors already stored (older tables)
            stack = [p for node in todo.values() for p in node.parents]
            while stack:
                p = stack.pop()
                if p in todo or p in older or stored_reach(p) is not None:
                    continue
                parent = stored(p)
                if parent is not None:
                    older[p] = parent
                    stack.extend(parent.parents)
            todo = {**older, **todo}
            order = _parents_first(todo)
            raw_next = txn.get(b"reach_next_rank", db=self._dbs["meta"])
            next_rank = int(raw_next) if raw_next is not None else 0

            def first_parent(cid: Cid) -> Cid | None:
                node = todo.get(cid) or stored(cid)
                return node.parents[0] if node is not None and node.parents else None

            labels, next_rank = label([(c, n.parents) for c, n in order], stored_reach, first_parent, next_rank)
            for cid, node in order:
                txn.put(cid, _encode_node(node), db=db)
                r = labels.get(cid)
                if r is not None:
                    txn.put(cid, _encode_reach(r), db=reach_db, overwrite=False)
                    out[cid] = r
            txn.put(b"reach_next_rank", str(next_rank).encode(), db=self._dbs["meta"])
            return out

        result: dict[Cid, Reach] = self.write(fn)
        return result

    def items_count(self, db: str) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._dbs[db])["entries"])

    # --- config (JSON values) ----------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return {k.decode(): json.loads(v) for k, v in self.items("config")}

    def set_config(self, values: dict[str, Any]) -> None:
        def fn(txn: Any) -> None:
            for k, v in values.items():
                if v is None:
                    txn.delete(k.encode(), db=self._dbs["config"])
                else:
                    txn.put(k.encode(), json.dumps(v).encode(), db=self._dbs["config"])
        self.write(fn)

    # --- stat cache ----------------------------------------------------------------------------

    def load_stat_cache(self) -> dict[str, StatEntry]:
        out: dict[str, StatEntry] = {}
        size = _STAT.size
        with self.env.begin(buffers=True) as txn:
            for key, value in txn.cursor(db=self._dbs["statcache"]):
                v = bytes(value)
                out[bytes(key).decode("utf-8", "surrogateescape")] = (*_STAT.unpack_from(v), v[size:])
        return out

    def load_stat_cache_raw(self) -> dict[str, bytes]:
        """``{path: packed value}``: the first :data:`STAT_KEY_SIZE` bytes are the packed
        stat key, so an unchanged-tree check compares bytes without unpacking."""
        with self.env.begin() as txn:
            return {k.decode("utf-8", "surrogateescape"): v
                    for k, v in txn.cursor(db=self._dbs["statcache"]).iternext()}

    def stat_cache_digest(self) -> bytes | None:
        """The digest of the stat cache's records in the form ``worktree.native_stat_records``
        produces, so an unchanged tree is recognised without loading the cache."""
        return self.get("meta", b"statcache_digest")

    def refresh_stat_cache_digest(self) -> None:
        """Recompute the digest from the cache itself (caches written before the digest
        existed have none).  Caller holds the writer lock."""
        def fn(txn: Any) -> None:
            records = bytearray()  # compact: ~60 bytes a file, no object per piece
            for key, value in txn.cursor(db=self._dbs["statcache"]).iternext():
                records += key
                records += b"\0"
                records += value[:STAT_KEY_SIZE]
            txn.put(b"statcache_digest", stat_records_digest(records), db=self._dbs["meta"])
        self.write(fn)

    def stat_cache_complete(self) -> bool:
        """Whether the cache, when it describes a tree, names every file of it (as every
        write since casync knew ignore rules only for untracked files does)."""
        return self.get("meta", b"statcache_complete") is not None

    def stat_cache_tracks(self, path: str, is_dir: bool) -> bool:
        """Does the stat cache name ``path`` (a directory: a file under it)?  When it
        describes a tree (``statcache_tree``) it names every file of that tree."""
        key = path.encode("utf-8", "surrogateescape") + (b"/" if is_dir else b"")
        with self.env.begin() as txn:
            if not is_dir:
                return txn.get(key, db=self._dbs["statcache"]) is not None
            cur = txn.cursor(db=self._dbs["statcache"])
            return bool(cur.set_range(key)) and bytes(cur.key()).startswith(key)

    def save_stat_cache(self, entries: dict[str, StatEntry], tree: Cid | None, commit: Cid | None = None) -> None:
        """Replace the stat cache; ``tree`` is the tree whose files it describes exactly —
        ``entries`` then name every file of it, an untrusted one with ``st_mode`` 0 — (and
        ``commit`` a commit with that tree, so status can skip decoding HEAD)."""
        def fn(txn: Any) -> None:
            db = self._dbs["statcache"]
            txn.drop(db, delete=False)
            encoded = sorted((p.encode("utf-8", "surrogateescape"), e) for p, e in entries.items())
            records = bytearray()
            for key, (m, c, s, i, mode, tsize, cid) in encoded:
                value = _STAT.pack(m, c, s, i, mode, tsize)
                txn.put(key, value + cid, db=db, append=True)
                records += key
                records += b"\0"
                records += value[:STAT_KEY_SIZE]
            txn.put(b"statcache_digest", stat_records_digest(records), db=self._dbs["meta"])
            if tree is None:
                txn.delete(b"statcache_tree", db=self._dbs["meta"])
            else:
                txn.put(b"statcache_tree", tree, db=self._dbs["meta"])
            # caches of older versions describing a tree could leave out racy files
            txn.put(b"statcache_complete", b"1", db=self._dbs["meta"])
            if commit is None or tree is None:
                txn.delete(b"statcache_commit", db=self._dbs["meta"])
            else:
                txn.put(b"statcache_commit", commit, db=self._dbs["meta"])
        self.write(fn)

    # --- writer lock ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive across processes (flock) and threads, re-entrant within a thread."""
        self._thread_lock.acquire()
        if self._lock_depth == 0:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                self._thread_lock.release()
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self.blocks.end_session()
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
            self._thread_lock.release()

    @contextlib.contextmanager
    def try_writer_lock(self) -> Iterator[bool]:
        """Take the writer lock only if it is free; yields whether it was taken."""
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        if self._lock_depth:
            try:
                yield True
            finally:
                self._thread_lock.release()
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._thread_lock.release()
            yield False
            return
        self._lock_fd, self._lock_depth = fd, 1
        try:
            yield True
        finally:
            self.blocks.end_session()
            self._lock_depth = 0
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._thread_lock.release()

    def close(self) -> None:
        if self.env is None:
            return
        self.blocks.close()
        _close_env(self.env)
        self.env = None


class _PackMissing(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


class PackBlockStore:
    """Blocks appended to ``packs/NNNNNNNN.pack``, located through the LMDB ``index`` DB.

    Pack format: a 16-byte magic, then records ``varint(len(cid)) cid varint(len(data))
    data``.  Packs are self-describing, so the index can be rebuilt from them.
    """

    def __init__(self, store: LmdbStore) -> None:
        self._store = store
        self._pending: dict[Cid, tuple[int, int, int]] = {}
        self._replacing: set[Cid] = set()  # pending entries that repoint an existing index entry
        self._writer: Any = None
        self._writer_no = 0
        self._writer_durable = 0
        self._writer_pos = 0
        self._readers: dict[int, int] = {}
        self._lock = threading.RLock()
        self._put_txn: Any = None  # one read snapshot per write session, for dedupe checks
        self._unsynced = 0
        self._syncer: threading.Thread | None = None

    # --- reading ---------------------------------------------------------------------------

    def _location(self, cid: Cid) -> tuple[int, int, int] | None:
        loc = self._pending.get(cid)
        if loc is not None:
            return loc
        raw = self._store.get("index", cid)
        if raw is None:
            return None
        pack, offset, length = _LOC.unpack(raw)
        return pack, offset, length

    def _reader(self, pack: int) -> int:
        fd = self._readers.get(pack)
        if fd is None:
            path = self._store.pack_dir / f"{pack:08d}.pack"
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise _PackMissing(path) from None
            self._readers[pack] = fd
        return fd

    def get(self, cid: Cid) -> bytes:
        with self._lock:
            loc = self._location(cid)
            if loc is None:
                raise BlockNotFound(cid_str(cid), "local store")
            pack, offset, length = loc
            if self._writer is not None and pack == self._writer_no:
                self._writer.flush()
            try:
                data = os.pread(self._reader(pack), length, offset)
            except _PackMissing as exc:
                raise BlockNotFound(cid_str(cid), f"local store (pack file {exc.path.name} is missing)") from None
        if len(data) != length:
            raise CorruptBlock(cid_str(cid), "local store (truncated pack)")
        verify_block(cid, data, "local store")
        return data

    def has(self, cid: Cid) -> bool:
        return cid in self._pending or self._store.get("index", cid) is not None

    def has_many(self, cids: Iterable[Cid]) -> set[Cid]:
        out: set[Cid] = set()
        db = self._store.db("index")
        with self._store.env.begin() as txn:
            for cid in cids:
                if cid in self._pending or txn.get(cid, db=db) is not None:
                    out.add(cid)
        return out

    def iter_cids(self) -> Iterator[Cid]:
        with self._store.env.begin() as txn:
            keys = [bytes(k) for k in txn.cursor(db=self._store.db("index")).iternext(values=False)]
        yield from keys
        yield from list(self._pending)

    def pack_bytes(self) -> tuple[int, int]:
        """(bytes in pack files, bytes the indexed records and pack headers occupy)."""
        packs = list(self._store.pack_dir.glob("*.pack"))
        total = sum(p.stat().st_size for p in packs)
        used = len(PACK_MAGIC) * len(packs)
        with self._store.env.begin() as txn:
            for k, v in txn.cursor(db=self._store.db("index")):
                length = _LOC.unpack(bytes(v))[2]
                used += len(varint(len(k))) + len(k) + len(varint(length)) + length
        return total, used

    # --- writing ---------------------------------------------------------------------------

    def _open_writer(self) -> None:
        meta = self._store.get("meta", b"pack_current")
        number = int(meta) if meta else 1
        path = self._store.pack_dir / f"{number:08d}.pack"
        if path.exists() and path.stat().st_size >= self._store.pack_rotate_bytes:
            number += 1
            path = self._store.pack_dir / f"{number:08d}.pack"
        if meta is None or int(meta) != number:
            self._store.put("meta", b"pack_current", str(number).encode())
        durable = self._store.get("meta", b"pack_end/%d" % number)
        if durable is not None and path.exists() and path.stat().st_size > int(durable):
            # bytes past the last committed batch: a crash mid-append (torn or orphaned);
            # nothing indexes them, so cut them off and keep the pack parseable
            os.truncate(path, int(durable))
        f = open(path, "ab")  # noqa: SIM115 - kept open across puts, closed in close()
        if f.tell() == 0:
            f.write(PACK_MAGIC)
        self._writer, self._writer_no = f, number
        self._writer_pos = f.tell()
        self._writer_durable = self._writer_pos

    def _held(self, cid: Cid) -> bool:
        if cid in self._pending:
            return True
        if self._put_txn is None:
            self._put_txn = self._store.env.begin()
        return self._put_txn.get(cid, db=self._store.db("index")) is not None

    def end_session(self) -> None:
        """Drop the read snapshot used by :meth:`put` (called when the writer lock is released)."""
        with self._lock:
            if self._put_txn is not None:
                self._put_txn.abort()
                self._put_txn = None

    def _background_sync(self) -> None:
        """Start writing dirty pages out while hashing goes on, so the final fsync is short."""
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._writer.flush()
        fd = self._writer.fileno()

        def run() -> None:
            with contextlib.suppress(OSError):  # the final fdatasync reports errors
                os.fdatasync(fd)

        self._syncer = threading.Thread(target=run, name="casync-pack-sync", daemon=True)
        self._syncer.start()
        self._unsynced = 0

    def _join_syncer(self) -> None:
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None

    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        with self._lock:
            if self._held(cid):
                return False
            self._append(cid, data)
            return True

    def replace(self, cid: Cid, data: bytes | memoryview) -> None:
        """Store a good copy of a block held damaged (or whose pack is gone), for repair.

        Nothing is overwritten: the copy is appended to the current pack like any new block
        and, at :meth:`flush`, the index entry is repointed to it in the same LMDB
        transaction as the batch (after the pack is fsynced).  A crash before that leaves
        the old entry, so the block is still reported damaged and can be repaired again;
        the old bytes become reclaimable (``fsck`` counts them)."""
        verify_block(cid, data, "repair source")
        with self._lock:
            self._append(cid, data)
            self._replacing.add(cid)

    def _append(self, cid: Cid, data: bytes | memoryview) -> None:
        """Write one record to the current pack; indexed at :meth:`flush` (caller holds the lock)."""
        if self._writer is None:
            self._open_writer()
        header = varint(len(cid)) + cid + varint(len(data))
        try:
            self._writer.write(header)
            self._writer.write(data)
        except OSError as exc:
            self._abort_writes()
            if exc.errno in _DISK_FULL:
                raise StorageFull(f"disk full writing pack {self._writer_no:08d}",
                                  hint="free disk space and retry; nothing was committed") from None
            raise StorageError(f"cannot write pack {self._writer_no:08d} in {self._store.pack_dir}: "
                               f"{exc.strerror or exc}; nothing was committed",
                               hint="check the disk (dmesg) and the file system, then retry") from None
        offset = self._writer_pos + len(header)
        self._pending[cid] = (self._writer_no, offset, len(data))
        self._writer_pos = offset + len(data)
        self._unsynced += len(data)
        if self._unsynced >= SYNC_AHEAD_BYTES:
            self._background_sync()

    def _abort_writes(self) -> None:
        """Forget unflushed blocks and cut the pack back to its last durable length."""
        self._pending.clear()
        self._replacing.clear()
        self._join_syncer()
        self.end_session()
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            with contextlib.suppress(OSError):
                os.truncate(self._store.pack_dir / f"{self._writer_no:08d}.pack", self._writer_durable)
            self._writer = None

    def flush(self) -> None:
        """fsync the pack, then commit the index entries in one LMDB transaction."""
        with self._lock:
            if not self._pending:
                return
            try:
                self._writer.flush()
                self._join_syncer()
                os.fdatasync(self._writer.fileno())
            except OSError as exc:
                self._abort_writes()
                if exc.errno in _DISK_FULL:
                    raise StorageFull("disk full syncing pack", hint="free disk space and retry") from None
                raise StorageError(f"cannot sync pack {self._writer_no:08d} in {self._store.pack_dir}: "
                                   f"{exc.strerror or exc}; nothing was committed",
                                   hint="check the disk (dmesg) and the file system, then retry") from None
            pending = sorted(self._pending.items())
            db = self._store.db("index")

            end = self._writer_pos
            meta_db = self._store.db("meta")
            replacing = set(self._replacing)

            def fn(txn: Any) -> None:
                for cid, loc in pending:
                    txn.put(cid, _LOC.pack(*loc), db=db, overwrite=cid in replacing)
                txn.put(b"pack_end/%d" % self._writer_no, str(end).encode(), db=meta_db)

            try:
                self._store.write(fn)
            except CasyncError:
                self._abort_writes()
                raise
            self._pending.clear()
            self._replacing.clear()
            self.end_session()
            self._unsynced = 0
            # Close after every durable batch: the next batch re-reads the pack's length,
            # so another writer (process or object) appending meanwhile cannot skew offsets.
            self._writer.close()
            self._writer = None
            if self._writer_pos >= self._store.pack_rotate_bytes:
                self._store.put("meta", b"pack_current", str(self._writer_no + 1).encode())

    def discard(self) -> None:
        """Drop blocks put since the last flush (a failed commit)."""
        with self._lock:
            self._abort_writes()

    def delete(self, cid: Cid) -> None:
        """Forget a block.  Its bytes stay in the pack until a repack reclaims them."""
        with self._lock:
            self._pending.pop(cid, None)
            self._store.write(lambda txn: txn.delete(cid, db=self._store.db("index")))

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self.discard()
            self.end_session()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()


class LmdbRefStore:
    """Refs in the ``refs`` DB; every change is a compare-and-swap inside a write
    transaction (LMDB serialises writers), logged to the ``reflog`` DB."""

    def __init__(self, store: LmdbStore) -> None:
        self._store = store

    def get_ref(self, name: str) -> Cid | None:
        return self._store.get("refs", name.encode())

    def list_refs(self, prefix: str = "") -> dict[str, Cid]:
        return {k.decode(): v for k, v in self._store.items("refs", prefix.encode())}

    def cas_ref(self, name: str, old: Cid | None, new: Cid | None, reason: str) -> None:
        refs, meta = self._store.db("refs"), self._store.db("meta")
        key = name.encode()

        def fn(txn: Any) -> None:
            current = txn.get(key, db=refs)
            current = bytes(current) if current is not None else None
            if current != old:
                raise RefConflict(
                    f"ref {name} moved: expected {cid_str(old) if old else 'nothing'}, "
                    f"found {cid_str(current) if current else 'nothing'}",
                    hint="another writer updated it; re-read and retry",
                )
            if new is None:
                txn.delete(key, db=refs)
            else:
                txn.put(key, new, db=refs)
            self._log(txn, key, old, new, reason)
            if bytes(txn.get(b"HEAD", db=meta) or b"heads/main") == key:
                self._log(txn, b"HEAD", old, new, reason)  # HEAD's reflog: every move of HEAD

        self._store.write(fn)

    def set_head(self, value: bytes, reason: str) -> None:
        """Point HEAD (meta ``HEAD``) at ``heads/<branch>`` or ``detached:<CID>``, logging
        the move in HEAD's reflog (ref name ``HEAD``) when the value changes."""
        refs, meta = self._store.db("refs"), self._store.db("meta")

        def target(txn: Any, raw: bytes) -> Cid | None:
            if raw.startswith(b"detached:"):
                return raw[len(b"detached:"):] or None
            found = txn.get(raw, db=refs)
            return bytes(found) if found is not None else None

        def fn(txn: Any) -> None:
            current = bytes(txn.get(b"HEAD", db=meta) or b"heads/main")
            if current == value:
                return
            txn.put(b"HEAD", value, db=meta)
            self._log(txn, b"HEAD", target(txn, current), target(txn, value), reason)

        self._store.write(fn)

    def _log(self, txn: Any, key: bytes, old: Cid | None, new: Cid | None, reason: str) -> None:
        entry = {"old": cid_str(old) if old else None, "new": cid_str(new) if new else None,
                 "time_ms": int(time.time() * 1000), "reason": reason}
        log = self._store.db("reflog")
        cur = txn.cursor(db=log)
        seq = 0
        if cur.set_range(key + b"\x00\xff"):
            pass
        if cur.prev() and bytes(cur.key()).startswith(key + b"\x00"):
            seq = struct.unpack(">Q", bytes(cur.key())[len(key) + 1 :])[0] + 1
        txn.put(key + b"\x00" + struct.pack(">Q", seq), json.dumps(entry).encode(), db=log)

    def reflog(self, name: str) -> list[RefLogEntry]:
        from casync.ids import parse_cid

        out = []
        for _k, v in self._store.items("reflog", name.encode() + b"\x00"):
            e = json.loads(v)
            out.append(RefLogEntry(name, parse_cid(e["old"]) if e["old"] else None,
                                   parse_cid(e["new"]) if e["new"] else None, e["time_ms"], e["reason"]))
        return out
