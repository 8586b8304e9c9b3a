"""The Kubo block store: the shared BlockStore contract on a real node, CAR batching,
error classification and retries (against real local HTTP servers, not mocks)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from casync.errors import BlockNotFound, CorruptBlock, RemoteError, UsageError
from casync.model.car import car_parts, decode_car
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_str, compute_cid
from casync.store.base import BlockStore
from casync.store.ipfs import NO_RETRY, IpfsBlockStore, IpfsClient, RetryPolicy

from .kubo_fixture import Kubo
from .test_store_contract import BlockStoreContract, block

FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, factor=2.0, max_delay=0.05)


class _CleaningStore(IpfsBlockStore):
    """Remembers what a test put so the shared node is clean for the next test."""

    def __init__(self, client: IpfsClient) -> None:
        super().__init__(client)
        self.touched: set[Cid] = set()

    def put(self, cid: Cid, data: bytes | memoryview) -> bool:
        self.touched.add(cid)
        return super().put(cid, data)


@pytest.mark.kubo
class TestIpfsBlockStore(BlockStoreContract):
    @pytest.fixture
    def store(self, kubo: Kubo) -> Iterator[BlockStore]:
        s = _CleaningStore(IpfsClient(kubo.api_url))
        # blocks a previous, crashed session against the same node may have left behind
        for i in (3, 100, 101, 102):
            s.client.block_rm(block(i)[0])
        try:
            yield s
        finally:
            s.discard()
            for cid in s.touched:
                s.delete(cid)
            s.close()

    def test_blocks_land_on_the_node_with_their_codec(self, kubo: Kubo, store: BlockStore) -> None:
        payload = os.urandom(3000)
        items = [(compute_cid(RAW, payload), payload),
                 (compute_cid(DAG_PB, b"\x0a\x02\x08\x01"), b"\x0a\x02\x08\x01"),
                 (compute_cid(DAG_CBOR, b"\xa1avb\x02"), b"\xa1avb\x02"),
                 (compute_cid(RAW, payload[:10], "sha2-256"), payload[:10])]
        for cid, data in items:
            store.put(cid, data)
        store.flush()
        for cid, data in items:
            # read back through the ipfs CLI, not through the code under test
            assert kubo.ipfs("block", "get", cid_str(cid)) == data
            assert store.get(cid) == data

    def test_flush_uploads_car_batches(self, kubo: Kubo) -> None:
        client = IpfsClient(kubo.api_url)
        batches: list[tuple[int, int]] = []
        s = IpfsBlockStore(client, batch_bytes=64 * 1024, check_remote_on_put=False, upload_concurrency=2,
                           on_batch=lambda n, size: batches.append((n, size)))
        blocks = [os.urandom(20_000) for _ in range(10)]
        cids = [compute_cid(RAW, b) for b in blocks]
        try:
            for cid, data in zip(cids, blocks, strict=True):
                s.put(cid, data)
            assert 1 <= len(batches) < 10  # uploads started before flush, several per request
            s.flush()
            assert sum(n for n, _ in batches) == 10
            assert sum(size for _, size in batches) == 200_000
            assert s.sent_blocks == 10 and s.batches == len(batches)
            assert s.has_many(cids) == set(cids)
            assert kubo.ipfs("block", "get", cid_str(cids[7])) == blocks[7]
        finally:
            for cid in cids:
                s.delete(cid)
            s.close()

    def test_get_missing_fails_fast_offline(self, kubo: Kubo) -> None:
        s = IpfsBlockStore(IpfsClient(kubo.api_url))
        cid = compute_cid(RAW, os.urandom(32))
        t0 = time.monotonic()
        with pytest.raises(BlockNotFound) as err:
            s.get(cid)
        assert time.monotonic() - t0 < 5
        assert cid_str(cid) in str(err.value) and kubo.api_url in str(err.value)
        s.close()

    def test_pins_and_refs(self, kubo: Kubo) -> None:
        from casync.model.objects import PBLink, PBNode, UnixFSData, encode_pbnode, encode_unixfs

        leaf = os.urandom(100)
        leaf_cid = compute_cid(RAW, leaf)
        node = encode_pbnode(PBNode((PBLink(leaf_cid, b"", 100),),
                                    encode_unixfs(UnixFSData(2, filesize=100, blocksizes=(100,)))))
        root = compute_cid(DAG_PB, node)
        client = IpfsClient(kubo.api_url)
        s = IpfsBlockStore(client)
        s.put(leaf_cid, leaf)
        s.put(root, node)
        s.flush()
        try:
            assert client.refs(root) == [leaf_cid]
            assert not client.is_pinned(root)
            client.pin_add(root)
            assert client.is_pinned(root)
            assert not client.is_pinned(leaf_cid)  # only indirectly
        finally:
            client.pin_rm(root)
            s.delete(root)
            s.delete(leaf_cid)
            s.close()


# --- fault injection with real local HTTP servers -------------------------------------------------


class _FakeKubo(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 speaking just enough of Kubo's RPC API to lie."""

    def __init__(self, behaviour: dict[str, Any], *, drop_keep_alive: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _KeepAliveDropper if drop_keep_alive else _Handler)
        self.behaviour = behaviour
        self.requests: list[str] = []
        self.args: list[str] = []  # the ``arg`` query parameter of each request
        self.bodies: list[tuple[dict[str, str], bytes]] = []  # (headers, body) of each request
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> _FakeKubo:
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _FakeKubo

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        arg = urllib.parse.parse_qs(query).get("arg", [""])[0]
        self.server.requests.append(path)
        self.server.args.append(arg)
        self.server.bodies.append((dict(self.headers), body))
        action = self.server.behaviour.get(path, ("404", b"404 page not found"))
        if callable(action):
            action = action(len([p for p in self.server.requests if p == path]))
        if isinstance(action, dict):  # per argument, e.g. block/get by CID; others are missing
            action = action.get(arg, ("kubo-error", f"block was not found locally (offline): {arg}"))
        status, body = action
        if status == "json":
            self._send(200, json.dumps(body).encode(), "application/json")
        elif status == "kubo-error":
            self._send(500, json.dumps({"Message": body, "Code": 0, "Type": "error"}).encode(),
                       "application/json")
        else:
            self._send(int(status), body, "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _KeepAliveDropper(_Handler):
    """Answers as HTTP/1.1 without 'Connection: close', then closes anyway: what a client
    sees when the node drops a keep-alive connection that sat idle."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        super().do_POST()
        self.close_connection = True


def test_block_with_wrong_bytes_is_rejected_naming_the_cid() -> None:
    good = b"the real block"
    cid = compute_cid(RAW, good)
    with _FakeKubo({"/api/v0/block/get": ("200", b"the fake block")}) as fake:
        s = IpfsBlockStore(IpfsClient(fake.url, retry=FAST_RETRY))
        with pytest.raises(CorruptBlock) as err:
            s.get(cid)
        s.close()
    assert cid_str(cid) in str(err.value)
    assert fake.url in str(err.value)
    assert fake.requests == ["/api/v0/block/get"]


def test_block_get_reads_blocks_over_kept_alive_connections() -> None:
    data = [os.urandom(n) for n in (1, 5000, 300_000)]
    cids = [compute_cid(RAW, d) for d in data]
    with _FakeKubo({"/api/v0/block/get": {cid_str(c): ("200", d) for c, d in zip(cids, data, strict=True)}}) as fake:
        s = IpfsBlockStore(IpfsClient(fake.url, retry=NO_RETRY))
        assert [s.get(c) for c in cids] == data
        with pytest.raises(BlockNotFound) as err:  # Kubo's error message, not a transport error
            s.get(compute_cid(RAW, b"absent"))
        s.close()
    assert cid_str(compute_cid(RAW, b"absent")) in str(err.value)
    assert fake.args[:3] == [cid_str(c) for c in cids]


def test_block_get_reconnects_once_when_the_node_dropped_an_idle_connection() -> None:
    a, b = b"first block", b"second block"
    ca, cb = compute_cid(RAW, a), compute_cid(RAW, b)
    with _FakeKubo({"/api/v0/block/get": {cid_str(ca): ("200", a), cid_str(cb): ("200", b)}},
                   drop_keep_alive=True) as fake:
        s = IpfsBlockStore(IpfsClient(fake.url, retry=NO_RETRY))  # a reconnect is not a retry
        assert s.get(ca) == a
        assert s.get(cb) == b  # the connection the first answer left open is gone by now
        s.close()
    assert fake.args == [cid_str(ca), cid_str(cb)]


def test_block_get_on_the_gateway_port_gives_the_hint() -> None:
    with _FakeKubo({}) as fake:
        s = IpfsBlockStore(IpfsClient(fake.url, retry=FAST_RETRY))
        with pytest.raises(RemoteError) as err:
            s.get(compute_cid(RAW, b"x"))
        s.close()
    assert "404" in str(err.value) and not err.value.transient
    assert err.value.hint and "RPC API port" in err.value.hint


def _multipart_file(headers: dict[str, str], body: bytes) -> bytes:
    """The one file part of a multipart/form-data body (strictly framed)."""
    ctype = headers["Content-Type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    head, sep, rest = body.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"--" + boundary + b"\r\n") and b'name="file"' in head
    end = b"\r\n--" + boundary + b"--\r\n"
    assert rest.endswith(end) and boundary not in rest[: -len(end)]
    return rest[: -len(end)]


def test_dag_import_streams_the_car_as_one_sized_multipart_body_and_resends_it_on_retry() -> None:
    blocks = [(compute_cid(RAW, d), d) for d in (os.urandom(5000), os.urandom(70_000), b"\r\n--")]
    stats = {"Stats": {"BlockCount": 3, "BlockBytesCount": 75_004}}

    def busy_once(n: int) -> tuple[str, Any]:
        return ("503", b"busy") if n == 1 else ("json", stats)

    with _FakeKubo({"/api/v0/dag/import": busy_once}) as fake:
        client = IpfsClient(fake.url, retry=FAST_RETRY)
        assert client.dag_import(car_parts((), blocks)) == (3, 75_004)
        client.close()
    assert fake.requests == ["/api/v0/dag/import"] * 2
    for headers, body in fake.bodies:
        assert "Transfer-Encoding" not in headers and int(headers["Content-Length"]) == len(body)
        assert decode_car(_multipart_file(headers, body)) == ([], blocks)


def test_transient_5xx_is_retried_then_succeeds() -> None:
    data = b"eventually"
    cid = compute_cid(RAW, data)

    def flaky(n: int) -> tuple[str, bytes]:
        return ("503", b"busy") if n < 3 else ("200", data)

    with _FakeKubo({"/api/v0/block/get": flaky}) as fake:
        s = IpfsBlockStore(IpfsClient(fake.url, retry=RetryPolicy(attempts=4, initial=0.01)))
        assert s.get(cid) == data
        s.close()
    assert fake.requests.count("/api/v0/block/get") == 3


def test_transient_errors_give_up_after_bounded_attempts() -> None:
    cid = compute_cid(RAW, b"x")
    with _FakeKubo({"/api/v0/block/get": ("502", b"bad gateway")}) as fake:
        s = IpfsBlockStore(IpfsClient(fake.url, retry=FAST_RETRY))
        with pytest.raises(RemoteError) as err:
            s.get(cid)
        s.close()
    assert err.value.transient
    assert fake.requests.count("/api/v0/block/get") == 3
    assert "502" in str(err.value) and fake.url in str(err.value) and "3 attempts" in str(err.value)


def test_kubo_command_errors_are_permanent_and_not_retried() -> None:
    with _FakeKubo({"/api/v0/pin/add": ("kubo-error", "pin: something is wrong")}) as fake:
        client = IpfsClient(fake.url, retry=FAST_RETRY)
        with pytest.raises(RemoteError) as err:
            client.pin_add(compute_cid(RAW, b"x"))
        client.close()
    assert not err.value.transient
    assert fake.requests == ["/api/v0/pin/add"]
    assert "something is wrong" in str(err.value)


def test_a_node_shutting_down_repo_not_open_is_transient_and_retried() -> None:
    # a Kubo node that is stopping answers 500 "repo not open" before it refuses connections:
    # the command is fine, the node is going away (the flaky killed-mid-push test hit this)
    data = b"after the restart"
    cid = compute_cid(RAW, data)

    def stopping_once(n: int) -> tuple[str, Any]:
        return ("kubo-error", "repo not open") if n == 1 else ("json", {"Pins": [cid_str(cid)]})

    def stopping_block(n: int) -> tuple[str, Any]:
        return ("kubo-error", "repo not open") if n == 1 else ("200", data)

    with _FakeKubo({"/api/v0/pin/add": stopping_once, "/api/v0/block/get": stopping_block}) as fake:
        client = IpfsClient(fake.url, retry=FAST_RETRY)
        client.pin_add(cid)  # through ipfshttpclient
        s = IpfsBlockStore(client)
        assert s.get(cid) == data  # through the plain-HTTP block reader
        s.close()
    assert fake.requests.count("/api/v0/pin/add") == 2 and fake.requests.count("/api/v0/block/get") == 2


def test_repo_not_open_gives_up_as_transient() -> None:
    with _FakeKubo({"/api/v0/pin/add": ("kubo-error", "repo not open")}) as fake:
        client = IpfsClient(fake.url, retry=FAST_RETRY)
        with pytest.raises(RemoteError) as err:
            client.pin_add(compute_cid(RAW, b"x"))
        client.close()
    assert err.value.transient and "repo not open" in str(err.value)
    assert fake.requests.count("/api/v0/pin/add") == 3


def test_gateway_port_instead_of_api_gives_a_hint() -> None:
    with _FakeKubo({}) as fake:  # every path answers 404, like a gateway for /api/v0
        client = IpfsClient(fake.url, retry=FAST_RETRY)
        with pytest.raises(RemoteError) as err:
            client.check()
        client.close()
    assert "404" in str(err.value) and fake.url in str(err.value)
    assert err.value.hint and "RPC API port" in err.value.hint


def test_connection_refused_is_transient_and_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = IpfsClient(url, retry=FAST_RETRY)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        client.check()
    assert time.monotonic() - t0 < 5
    assert err.value.transient and url in str(err.value) and "refused" in str(err.value)
    client.close()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:5001", "http://", "127.0.0.1:5001", "http://h:99999",
                                 "http://127.0.0.1:5001/api/v0"])
def test_bad_api_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        IpfsClient(url)
