"""Kubo's HTTP RPC API as typed calls: pins, MFS, blocks, ``dag/import``, the node.

Each call is one method over :class:`casync.store.ipfs_rpc.KuboRpc`, which holds the
connections, classifies errors and retries, and is the only module that imports
``ipfshttpclient`` (this one reaches it through the client objects ``KuboRpc.call`` hands
its functions).  Control calls go through ipfshttpclient 0.7.0, the latest release; the
call that moves a fetch's bytes (``block/get``) goes over one plain keep-alive
``http.client`` connection per thread (:meth:`casync.store.ipfs_rpc.KuboRpc.post_bytes`).  Parameters newer than
the library pass through ``opts={...}`` (``cid-codec``, ``mhtype``, ``pin-roots``,
``cid-version``, ``parents``...); every RPC call is a POST.  ``dag/import`` always asks
for ``stats=true`` (without, Kubo answers with no items, and the library asserts on that).
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from casync.errors import BlockNotFound, RemoteError, RemoteNotFound
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_str, parse_cid
from casync.model.objects import MAX_BLOCK_SIZE
from casync.store.ipfs_multipart import MultipartFile
from casync.store.ipfs_rpc import KuboRpc, raw_call

__all__ = ["IpfsClient", "gateway_from_multiaddrs"]

_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}
_UNSPECIFIED = ("0.0.0.0", "::")


def gateway_from_multiaddrs(addrs: Any, api_url: str) -> str | None:
    """``http://HOST:PORT`` of a node's gateway from its ``Addresses.Gateway`` setting (one
    multiaddr or a list; the first TCP one counts), or None when it has none.  A gateway on
    every interface is reached through the host of ``api_url``; one on the node's own
    loopback only when the API is reached there too (else it is not reachable from here)."""
    api_host = urllib.parse.urlsplit(api_url).hostname or "127.0.0.1"
    for addr in [addrs] if isinstance(addrs, str) else addrs if isinstance(addrs, list) else []:
        parts = str(addr).strip("/").split("/")
        if len(parts) < 4 or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp":
            continue  # /unix/..., or something this client cannot dial
        host = parts[1]
        if host in _UNSPECIFIED:
            host = api_host
        elif _is_loopback(host) and not _is_loopback(api_host):
            raise RemoteError(f"the gateway of the IPFS node at {api_url} listens on its own loopback "
                              f"({addr}), which is not reachable from here",
                              hint="give a gateway URL that is: casync remote set-url NAME --gateway URL")
        return f"http://{f'[{host}]' if ':' in host else host}:{parts[3]}"
    return None


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


class IpfsClient(KuboRpc):
    """A typed, retrying wrapper over one Kubo node's RPC API at ``url`` (``http://HOST:PORT``);
    thread-safe, as :class:`KuboRpc` is."""

    # --- node ----------------------------------------------------------------------------------

    def version(self) -> str:
        # a short read timeout: this is the first call, and a port that accepts connections
        # but never answers must fail in seconds, not after the bulk-transfer timeout
        info = self.call("version", lambda c: c.version(timeout=(self.timeout[0], min(self.timeout[1], 10.0))))
        return str(info["Version"])

    def check(self) -> str:
        """Contact the node; return its version or raise a RemoteError naming the URL."""
        version = self.version()
        try:
            numbers = tuple(int(x) for x in version.split("-", 1)[0].split(".")[:2])
        except ValueError:
            numbers = (0, 0)
        if numbers < (0, 15):
            raise RemoteError(f"IPFS node at {self.url} runs Kubo {version}; casync needs >= 0.15 "
                              "(blake3 blocks)")
        return version

    def gateway_url(self) -> str | None:
        """The node's HTTP gateway (``config Addresses.Gateway``) as ``http://HOST:PORT``, or
        None when it has none: for gateway URLs of a remote configured without one."""
        res = self.call("config Addresses.Gateway", lambda c: c.config.set("Addresses.Gateway"))
        return gateway_from_multiaddrs(res.get("Value"), self.url)

    def swarm_peer_count(self) -> int:
        res = self.call("swarm/peers", lambda c: c.swarm.peers())
        return len(res.get("Peers") or [])

    # --- blocks --------------------------------------------------------------------------------

    def block_put(self, data: bytes | memoryview, codec: int, hash_name: str) -> Cid:
        opts = {"cid-codec": _CODEC_NAMES.get(codec, str(codec)), "mhtype": hash_name, "pin": "false"}
        res = self.call("block/put", lambda c: c.block.put(io.BytesIO(bytes(data)), opts=opts))
        return parse_cid(str(res["Key"]))

    def block_get(self, cid: Cid, *, offline: bool = True, wait: float | None = None) -> bytes:
        """The block's bytes as the node sends them (the caller verifies).

        ``offline`` asks only the node's own blockstore (a missing block fails at
        once); otherwise the node may fetch it from peers for up to ``wait`` seconds.
        """
        text = cid_str(cid)
        opts = {} if wait is None or offline else {"timeout": f"{max(wait, 0.001):.3f}s"}
        try:
            if self.url.startswith("http:"):
                params = {"arg": text, **({"offline": "true"} if offline else opts)}
                data = self.post_bytes(f"block/get {text}", "block/get", params)
            else:  # https: requests' certificate handling, not a second TLS setup here
                data = bytes(self.call(f"block/get {text}",
                                       lambda c: c.block.get(text, offline=offline, opts=opts)))
        except RemoteNotFound:
            detail = "" if offline else f" within {wait:g}s" if wait else ""
            raise BlockNotFound(text, f"IPFS node at {self.url}{detail}") from None
        return data

    def block_size(self, cid: Cid) -> int | None:
        """Size of the block if the node holds it locally, else None."""
        text = cid_str(cid)
        res = self._call_if_exists(f"block/stat {text}", lambda c: c.block.stat(text, offline=True))
        return None if res is None else int(res["Size"])

    def block_rm(self, cid: Cid) -> None:
        text = cid_str(cid)

        def rm(c: Any) -> Any:
            return raw_call(c, "/block/rm", text, opts={"force": "true"})

        self._call_if_exists(f"block/rm {text}", rm)  # gone already is fine

    def dag_import(self, car: bytes | Sequence[bytes | memoryview]) -> tuple[int, int]:
        """Import a CAR (roots not pinned); return (blocks, bytes) the node counted.

        ``car`` is the archive or, to stream it without joining, the pieces whose
        concatenation it is (:func:`casync.model.car.car_parts`): they go out as one multipart
        body with a Content-Length, each piece handed to the socket as it is.
        """
        body = MultipartFile([car] if isinstance(car, (bytes, bytearray, memoryview)) else car)
        opts = {"pin-roots": "false", "stats": "true", "allow-big-block": "false"}

        def imprt(c: Any) -> Any:
            return raw_call(c, "/dag/import", data=body, headers=body.headers, opts=opts)

        res = self.call("dag/import", imprt)
        stats: dict[str, Any] = {}
        for item in res if isinstance(res, list) else [res]:
            if isinstance(item, dict) and item.get("Stats"):
                stats = item["Stats"]
        return int(stats.get("BlockCount", 0)), int(stats.get("BlockBytesCount", 0))

    def refs(self, cid: Cid, recursive: bool = True) -> list[Cid]:
        """CIDs linked from ``cid`` (the whole DAG with ``recursive``), listed by the node
        from its local blocks only."""
        text = cid_str(cid)
        opts = {"recursive": "true" if recursive else "false", "unique": "true"}
        res = self.call(f"refs {text}", lambda c: c.unstable.refs(text, offline=True, opts=opts))
        out = []
        for item in res:
            if item.get("Err"):
                raise RemoteError(f"IPFS node at {self.url}: refs {text}: {item['Err']}")
            out.append(parse_cid(str(item["Ref"])))
        return out

    def refs_local(self) -> list[Cid]:
        res = self.call("refs/local", lambda c: c.unstable.refs.local())
        return [parse_cid(str(item["Ref"])) for item in res if not item.get("Err")]

    # --- pins ----------------------------------------------------------------------------------

    def pin_add(self, cid: Cid, name: str | None = None) -> None:
        """Pin ``cid`` and everything it links to, under ``name`` if given (Kubo pin names, so
        an operator can tell casync's pins from others); fails (does not hang) if a block is missing."""
        text = cid_str(cid)
        opts = {"name": name} if name else {}
        self.call(f"pin/add {text}", lambda c: c.pin.add(text, recursive=True, offline=True, opts=opts))

    def pin_rm(self, cid: Cid) -> None:
        text = cid_str(cid)
        try:
            self.call(f"pin/rm {text}", lambda c: c.pin.rm(text, recursive=True))
        except RemoteError as err:
            if isinstance(err, RemoteNotFound):
                return
            raise

    def is_pinned(self, cid: Cid, kind: str = "recursive") -> bool:
        """True if ``cid`` is pinned itself (not only as part of another pin): recursively,
        or with ``kind="direct"`` by a direct pin."""
        text = cid_str(cid)
        try:
            res = self.call(f"pin/ls {text}", lambda c: c.pin.ls(text, type=kind, offline=True))
        except RemoteNotFound:
            return False
        return bool(res.get("Keys"))

    def pin_add_many(self, cids: Sequence[Cid], recursive: bool, name: str | None = None) -> None:
        """Pin many CIDs, a few hundred per call: recursively, or each block by itself
        (``recursive=False``, a direct pin), all under ``name`` if given; fails (does not
        hang) if a block is missing."""
        texts = [cid_str(c) for c in cids]
        opts = {"name": name} if name else {}
        def add(part: list[str]) -> Callable[[Any], Any]:
            return lambda c: c.pin.add(*part, recursive=recursive, offline=True, opts=dict(opts))

        for i in range(0, len(texts), 256):
            part = texts[i:i + 256]
            self.call(f"pin/add ({len(part)} CIDs)", add(part))

    def recursive_pins(self) -> set[Cid]:
        """Every CID the node pins recursively."""
        res = self.call("pin/ls --type=recursive", lambda c: c.pin.ls(type="recursive", offline=True))
        return {parse_cid(str(k)) for k in (res.get("Keys") or {})}

    def pin_name_of(self, cid: Cid) -> str:
        """The name of ``cid``'s own recursive pin ("" when unnamed or not pinned itself)."""
        text = cid_str(cid)
        try:
            res = self.call(f"pin/ls --names {text}", lambda c: c.pin.ls(
                text, type="recursive", offline=True, opts={"names": "true"}))
        except RemoteNotFound:
            return ""
        return next((str((i or {}).get("Name") or "") for i in (res.get("Keys") or {}).values()), "")

    def named_pins(self, prefix: str) -> list[tuple[str, Cid, str]]:
        """(name, CID, type) of every recursive or direct pin whose name starts with
        ``prefix``, sorted (indirect pins carry no name, and listing them walks every DAG)."""
        def ls(kind: str) -> Callable[[Any], Any]:
            return lambda c: c.pin.ls(type=kind, offline=True, opts={"names": "true"})

        out = []
        for kind in ("recursive", "direct"):
            res = self.call(f"pin/ls --names --type={kind}", ls(kind))
            for key, info in (res.get("Keys") or {}).items():
                name = str((info or {}).get("Name") or "")
                if name.startswith(prefix):
                    out.append((name, parse_cid(str(key)), kind))
        return sorted(out, key=lambda t: (t[0], cid_str(t[1])))

    # --- MFS (head records) --------------------------------------------------------------------

    def files_read(self, path: str, limit: int | None = None) -> bytes | None:
        """An MFS file's bytes; with ``limit``, at most ``limit`` + 1 bytes are transferred."""
        opts = {"count": limit + 1} if limit is not None else {}
        data = self._call_if_exists(f"files/read {path}", lambda c: c.files.read(path, opts=opts))
        return None if data is None else bytes(data)

    def files_write(self, path: str, data: bytes, hash_name: str = "sha2-256") -> None:
        """Replace the MFS file ``path`` with ``data`` (parents created; CIDv1, raw leaves)."""
        opts = {"parents": "true", "cid-version": "1", "raw-leaves": "true", "hash": hash_name}
        self.call(f"files/write {path}", lambda c: c.files.write(
            path, io.BytesIO(data), create=True, truncate=True, opts=opts))

    def files_replace(self, path: str, data: bytes) -> None:
        """Make the MFS file ``path`` hold exactly ``data``, as one raw sha2-256 block and in
        one step (``files/cp --force``).  ``files/write --truncate`` instead leaves an empty
        leaf behind on every rewrite: the file's DAG grows with each push, and other nodes
        could not fetch that empty blake3 leaf over bitswap."""
        if len(data) > MAX_BLOCK_SIZE:
            self.files_write(path, data)
            return
        cid = self.block_put(data, RAW, "sha2-256")
        source = f"/ipfs/{cid_str(cid)}"
        self.call(f"files/cp {source} {path}", lambda c: c.files.cp(
            source, path, opts={"force": "true", "parents": "true"}))

    def files_ls(self, path: str) -> list[str] | None:
        """Entry names of the MFS directory ``path`` (None when it does not exist)."""
        res = self._call_if_exists(f"files/ls {path}", lambda c: c.files.ls(path))
        if res is None:
            return None
        return sorted(str(e["Name"]) for e in (res.get("Entries") or []))

    def files_mkdir(self, path: str, hash_name: str = "sha2-256") -> None:
        opts = {"cid-version": "1", "hash": hash_name}
        self.call(f"files/mkdir {path}", lambda c: c.files.mkdir(path, parents=True, opts=opts))

    def files_stat_cid(self, path: str) -> Cid | None:
        res = self._call_if_exists(f"files/stat {path}", lambda c: c.files.stat(path))
        if res is None:
            return None
        return parse_cid(str(res["Hash"]))
