"""The embedded local store: append-only pack files for block bytes, LMDB for everything else.

:class:`LmdbStore` is one ``.casync`` directory.  Its concerns live in sibling modules:
the environment and its transactions (``store.env``), pack files and the block index
(``store.packs``), refs and the reflog (``store.refs``), the commit-graph tables
(``store.commitgraph``), the stat cache (``store.statcache``) and the writer lock
(``store.locks``).  This module adds the config table and the repository format check,
and re-exports the names other modules import from here.

Single writer: :meth:`LmdbStore.writer_lock` takes an exclusive ``flock`` on
``.casync/lock`` for the duration of a write; readers never block.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from casync.errors import UnsupportedFormat
from casync.store.commitgraph import CommitGraphTables
from casync.store.env import INITIAL_MAP_SIZE, MAX_MAP_SIZE
from casync.store.locks import WriterLock
from casync.store.packfile import PACK_MAGIC
from casync.store.packs import PACK_ROTATE_BYTES, SYNC_AHEAD_BYTES, PackBlockStore
from casync.store.refs import LmdbRefStore
from casync.store.statcache import STAT_KEY, STAT_KEY_SIZE, StatCache, StatEntry, stat_entry, stat_records_digest

__all__ = ["FORMAT", "INITIAL_MAP_SIZE", "MAX_MAP_SIZE", "PACK_MAGIC", "PACK_ROTATE_BYTES", "STAT_KEY",
           "STAT_KEY_SIZE", "SYNC_AHEAD_BYTES", "LmdbRefStore", "LmdbStore", "PackBlockStore", "StatEntry",
           "check_format", "stat_entry", "stat_records_digest"]

FORMAT = 1
"""The repository format this casync writes (config key ``format``; docs/design.md §7.4)."""


def check_format(config: dict[str, Any], where: Path) -> None:
    """Refuse a repository whose format this version does not know (a newer casync wrote
    it, or the value is damaged); older formats open (none exists yet below 1)."""
    if "format" not in config:
        return  # a store being created: init writes the format next
    value = config["format"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedFormat(f"repository {where} has an unreadable format {json.dumps(value)} "
                                f"(this casync reads formats 1 to {FORMAT})",
                                hint="the config table is damaged; restore .casync from a backup or clone again")
    if value > FORMAT:
        raise UnsupportedFormat(f"repository {where} has format {value}, newer than this casync "
                                f"understands (format {FORMAT}); nothing was changed",
                                hint="upgrade casync to open it")


class LmdbStore(CommitGraphTables, StatCache, WriterLock):
    """The LMDB environment under ``.casync/`` plus its pack directory."""

    def __init__(self, root: Path, *, create: bool = False, map_size: int = INITIAL_MAP_SIZE,
                 max_map_size: int = MAX_MAP_SIZE, pack_rotate_bytes: int = PACK_ROTATE_BYTES) -> None:
        """The limits are parameters so tests can reach map growth, a map that may not grow
        and pack rotation with small stores (see :class:`LmdbEnv`, :class:`PackBlockStore`)."""
        super().__init__(root, create=create, map_size=map_size, max_map_size=max_map_size)
        try:
            check_format(self.get_config(), root.parent)
        except UnsupportedFormat:
            self.close_env()
            raise
        self.blocks = PackBlockStore(self, rotate_bytes=pack_rotate_bytes)
        self.refs = LmdbRefStore(self)
        self._reclaim_killed_writes()

    def _reclaim_killed_writes(self) -> None:
        """A writer killed mid-batch leaves bytes past the pack's committed end: cut them now
        if no writer holds the lock (a writer holding it may be appending legitimately; the
        next writer cuts them anyway).  A read-only store is left as it is."""
        if not self.pack_dir.is_dir():
            return
        with contextlib.suppress(OSError), self.try_writer_lock() as locked:
            if locked:
                self.blocks.reclaim_tail()

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

    # --- lifecycle ---------------------------------------------------------------------------

    def end_write_session(self) -> None:
        self.blocks.end_session()

    def close(self) -> None:
        if self.env is None:
            return
        self.blocks.close()
        self.close_env()
