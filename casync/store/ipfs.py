"""A Kubo node as a casync block store (:class:`IpfsBlockStore`).

The node's RPC API is :mod:`casync.store.ipfs_client` (over :mod:`casync.store.ipfs_rpc`, the only
module that imports ``ipfshttpclient``), its errors :mod:`casync.store.ipfs_errors`, its credentials
:mod:`casync.store.ipfs_auth`, the upload body :mod:`casync.store.ipfs_multipart`, and the
backoff every remote call shares :mod:`casync.store.retry`.  Every block read from the node
is hash-verified.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future

from casync.errors import RemoteError
from casync.model.car import car_parts, section_size
from casync.model.cid import Cid, cid_codec, cid_str, is_empty_block, verify_block
from casync.model.objects import MAX_BLOCK_SIZE
from casync.store.ipfs_client import IpfsClient, gateway_from_multiaddrs
from casync.store.ipfs_errors import DagImportRejected
from casync.store.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "IpfsBlockStore",
    "IpfsClient",
    "RetryPolicy",
    "gateway_from_multiaddrs",
]

DEFAULT_BATCH_BYTES = 16 << 20
"""Bytes of blocks per ``dag/import`` request."""


class IpfsBlockStore:
    """A :class:`~casync.store.base.BlockStore` on a Kubo node.

    ``put`` stages blocks; they are uploaded as CAR v1 batches through ``dag/import`` when
    the staged bytes reach ``batch_bytes`` and at :meth:`flush` (so "durable at flush"
    holds as for the local store).  Uploaded blocks are not pinned: whoever publishes a
    ref to them pins its root (see :mod:`casync.transports.ipfs`).  ``get`` hash-verifies every
    block and names the CID on a mismatch.

    ``iter_cids`` lists Kubo's blockstore, which is keyed by multihash: every CID comes
    back with the raw codec.  ``delete`` unpins the block (if pinned itself) and removes it.

    ``staged_from`` names where staged blocks come from when the caller did not hash-check
    them (push reads its packs unverified: the node checks every block's hash on import); a
    batch the node refuses is then checked here, so a corrupt block is reported as
    :class:`~casync.errors.CorruptBlock` of that store, not as the node's refusal.
    """

    def __init__(self, client: IpfsClient, *, batch_bytes: int = DEFAULT_BATCH_BYTES,
                 offline: bool = True, wait: float = 60.0, check_remote_on_put: bool = True,
                 on_batch: Callable[[int, int], None] | None = None, upload_concurrency: int = 3,
                 staged_from: str | None = None) -> None:
        self.client = client
        self.batch_bytes = batch_bytes
        self.offline = offline
        self.wait = wait
        self.check_remote_on_put = check_remote_on_put
        self.on_batch = on_batch
        self.upload_concurrency = upload_concurrency
        self.staged_from = staged_from
        self._pending: dict[Cid, bytes] = {}
        self._pending_bytes = 0
        self._in_flight: list[tuple[Future[None], dict[Cid, bytes]]] = []
        self._in_flight_blocks: dict[Cid, bytes] = {}
        self._lock = threading.RLock()
        self.sent_blocks = 0
        self.sent_bytes = 0
        self.batches = 0

    @property
    def where(self) -> str:
        return f"IPFS node at {self.client.url}"

    # --- writing -------------------------------------------------------------------------------

    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        with self._lock:
            if cid in self._pending or cid in self._in_flight_blocks:
                return False
        if self.check_remote_on_put and self.client.block_size(cid) is not None:
            return False
        self.stage(cid, data)
        return True

    def stage(self, cid: Cid, data: bytes | memoryview) -> None:
        """Queue a block for upload without asking the node whether it has it."""
        if len(data) > MAX_BLOCK_SIZE:
            raise RemoteError(f"block {cid_str(cid)} is {len(data)} bytes; the limit is {MAX_BLOCK_SIZE}")
        with self._lock:
            if cid in self._pending or cid in self._in_flight_blocks:
                return
            self._pending[cid] = bytes(data)
            self._pending_bytes += section_size(cid, data)
            full = self._pending_bytes >= self.batch_bytes
        if full:
            self._upload()

    def _upload(self) -> None:
        """Send the staged blocks as one CAR in the background, streamed from the blocks
        themselves (no archive is assembled in memory); at most ``upload_concurrency``
        requests are in flight, so reading the next batch overlaps the node importing the
        last ones, and memory stays within ``(upload_concurrency + 1) * batch_bytes``."""
        with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            self._pending_bytes = 0
            self._in_flight_blocks.update(batch)
        fut = self.client.submit(self._import, car_parts((), batch.items()), batch)
        self._in_flight.append((fut, batch))
        while len(self._in_flight) >= max(1, self.upload_concurrency):
            self._finish_one()

    def _import(self, car: list[bytes | memoryview], batch: dict[Cid, bytes]) -> None:
        try:
            self.client.dag_import(car)
        except RemoteError as err:
            if err.transient:
                raise
            if self.staged_from is not None:  # a block of ours may be the cause: name it
                for cid, data in batch.items():
                    verify_block(cid, data, self.staged_from)
            if not isinstance(err, DagImportRejected):
                raise
            # dag/import decodes every block; bytes that are not valid for their codec are
            # still valid blocks, which block/put stores as they are.
            for cid, data in batch.items():
                got = self.client.block_put(data, cid_codec(cid), _hash_name(cid))
                if got != cid:
                    raise RemoteError(f"{self.where} stored block {cid_str(cid)} as {cid_str(got)}") from None

    def _finish_one(self) -> None:
        """Wait for the first request in flight to end (any of them, so one slow import does
        not hold the pipeline back) and account for it."""
        futures.wait([f for f, _ in self._in_flight], return_when=futures.FIRST_COMPLETED)
        i = next(i for i, (f, _) in enumerate(self._in_flight) if f.done())
        fut, batch = self._in_flight.pop(i)
        try:
            fut.result()
        except BaseException:
            self._drain()  # no request may outlive the failure
            raise
        finally:
            with self._lock:
                for cid in batch:
                    self._in_flight_blocks.pop(cid, None)
        payload = sum(len(d) for d in batch.values())
        self.sent_blocks += len(batch)
        self.sent_bytes += payload
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(batch), payload)

    def _drain(self) -> None:
        """Wait for every request in flight and forget its outcome (after an error)."""
        in_flight, self._in_flight = self._in_flight, []
        for fut, _batch in in_flight:
            with contextlib.suppress(BaseException):
                fut.result()
        with self._lock:
            self._in_flight_blocks.clear()

    def flush(self) -> None:
        self._upload()
        while self._in_flight:
            self._finish_one()

    def discard(self) -> None:
        self._drain()
        with self._lock:
            self._pending.clear()
            self._pending_bytes = 0

    def delete(self, cid: Cid) -> None:
        with self._lock:
            if self._pending.pop(cid, None) is not None:
                return
        if self.client.is_pinned(cid):
            self.client.pin_rm(cid)
        self.client.block_rm(cid)

    # --- reading -------------------------------------------------------------------------------

    def get(self, cid: Cid) -> bytes:
        with self._lock:
            data = self._pending.get(cid, self._in_flight_blocks.get(cid))
        if data is not None:
            return data
        if is_empty_block(cid):  # made here: bitswap would never deliver it (docs/remotes.md)
            return b""
        data = self.client.block_get(cid, offline=self.offline, wait=self.wait)
        if len(data) > MAX_BLOCK_SIZE:
            raise RemoteError(f"block {cid_str(cid)} from the {self.where} is {len(data)} bytes, "
                              f"over the {MAX_BLOCK_SIZE}-byte limit")
        verify_block(cid, data, self.where)
        return data

    def has(self, cid: Cid) -> bool:
        with self._lock:
            if cid in self._pending or cid in self._in_flight_blocks:
                return True
        return self.client.block_size(cid) is not None

    def has_many(self, cids: Iterable[Cid]) -> set[Cid]:
        todo = list(dict.fromkeys(cids))
        with self._lock:
            present = {c for c in todo if c in self._pending or c in self._in_flight_blocks}
        ask = [c for c in todo if c not in present]
        sizes = self.client.map(self.client.block_size, ask)
        return present | {c for c, s in zip(ask, sizes, strict=True) if s is not None}

    def iter_cids(self) -> Iterator[Cid]:
        with self._lock:
            pending = list(self._pending)
        yield from self.client.refs_local()
        yield from pending

    def close(self) -> None:
        self.discard()
        self.client.close()


def _hash_name(cid: Cid) -> str:
    """The multihash function of a CID, by the name Kubo's ``mhtype`` takes."""
    from multiformats import CID

    return str(CID.decode(cid).hashfun.name)
