"""Fuzzing every decoder and the request parser with Hypothesis: whatever the bytes, only
casync's own typed errors (:class:`CasyncError`) escape, never a ``RecursionError``,
``ValueError`` or ``KeyError``.  Derandomized and a few hundred examples each, so CI time is
bounded and a failure reproduces; inputs are random bytes and valid objects mutated."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casync import Repository
from casync.errors import CasyncError
from casync.model import cbor, safejson
from casync.model.car import CarWriter, iter_car, read_header
from casync.model.cid import DAG_CBOR, DAG_PB, RAW, compute_cid
from casync.model.commit import decode_commit
from casync.model.objects import decode_pbnode, decode_unixfs
from casync.transports.bundle import _parse_manifest
from casync.transports.ipfs.records import decode_record
from casync.transports.peer.exchange import PeerInfo
from casync.transports.peer.server import PeerApp, _Gate
from casync.trees.unixfs import checked_block

from .hostile.corpus import CASES

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SEEDS = [block for case in CASES[:60] for _cid, block in case.blocks[:3]]
TOKEN = b"fuzz-token"


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = SEEDS) -> bytes:
    """A seed block with a few bytes flipped, inserted, deleted or the tail cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at]
        elif op == "cut":
            del data[at:]
    return bytes(data)


blobs = st.one_of(st.binary(max_size=512), mutated())


def only_typed(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(CasyncError):
        fn()


@FUZZ
@given(blobs)
def test_cbor_decoder(data: bytes) -> None:
    only_typed(lambda: cbor.decode(data))


@FUZZ
@given(blobs)
def test_commit_decoder(data: bytes) -> None:
    only_typed(lambda: decode_commit(data, compute_cid(DAG_CBOR, data)))


@FUZZ
@given(blobs)
def test_dag_pb_and_unixfs_decoders(data: bytes) -> None:
    only_typed(lambda: decode_pbnode(data))
    only_typed(lambda: decode_unixfs(data))


@FUZZ
@given(blobs, st.sampled_from([RAW, DAG_PB, DAG_CBOR]))
def test_checked_block(data: bytes, codec: int) -> None:
    only_typed(lambda: checked_block(compute_cid(codec, data), data))


def _car(blocks: list[bytes]) -> bytes:
    buf = io.BytesIO()
    writer = CarWriter(buf, [compute_cid(RAW, blocks[0])] if blocks else [])
    for b in blocks:
        writer.add(compute_cid(RAW, b), b)
    return buf.getvalue()


CARS = [_car(SEEDS[i:i + 3]) for i in range(0, 30, 3)]


@FUZZ
@given(st.one_of(st.binary(max_size=512), mutated(CARS)))
def test_car_reader(data: bytes) -> None:
    def read() -> None:
        stream = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
        read_header(stream)
        for _ in iter_car(stream):
            pass
    only_typed(read)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=4), max_leaves=20)


@FUZZ
@given(st.one_of(st.binary(max_size=256), st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
                 json_values.map(lambda v: json.dumps(v).encode())))
def test_json_reader(data: bytes) -> None:
    only_typed(lambda: safejson.loads(data))


@FUZZ
@given(st.text(max_size=24))
def test_content_length(value: str) -> None:
    only_typed(lambda: safejson.content_length(value))


INFO = {"repository_id": "r", "replica": "r", "read_only": False, "refs": {}, "hash": "blake3"}


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from([*sorted(INFO), "tags", "scope"]), json_values)
                 .map(lambda d: {**INFO, **d})))
def test_peer_info(value: Any) -> None:
    only_typed(lambda: PeerInfo.from_json(value))


@FUZZ
@given(blobs)
def test_bundle_manifest_and_head_record(data: bytes) -> None:
    only_typed(lambda: _parse_manifest(compute_cid(DAG_CBOR, data), data))
    only_typed(lambda: decode_record(data, "repo", "replica", "fuzz"))


# --- the request parser: waitress's parser with casync's gate, then the WSGI application -------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerApp]:
    repo = Repository.init(Path(tmp_path_factory.mktemp("fuzz")) / "s", replica="s", bare=True)
    with repo.transaction(branch="main", message="base") as tx:
        tx.write("f.txt", b"fuzz")
    yield PeerApp(repo, TOKEN, read_tokens=[b"read-token"])
    repo.close()


PATHS = st.sampled_from(["/v1/info", "/v1/negotiate", "/v1/fetch", "/v1/blocks", "/v1/push", "/v1/tags", "/x", ""])
HEADER_VALUES = st.one_of(st.text(max_size=30), st.sampled_from(["\u00b2", "-1", "99999999999999999999", "0"]))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "X"]), path=PATHS, query=st.text(max_size=60),
       length=st.one_of(st.none(), HEADER_VALUES), auth=st.sampled_from(["", "Bearer fuzz-token", "Bearer read-token",
                                                                          "Bearer x", "Basic x"]),
       body=st.one_of(st.binary(max_size=256), json_values.map(lambda v: json.dumps(v).encode())))
def test_request_handling(app: PeerApp, method: str, path: str, query: str, length: str | None, auth: str,
                          body: bytes) -> None:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                               "HTTP_AUTHORIZATION": auth, "wsgi.input": io.BytesIO(body)}
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    status: list[str] = []
    reply = b"".join(app(environ, lambda s, h: status.append(s)))
    assert status and int(status[0][:3]) in (200, 400, 401, 403, 404, 409, 413), (status, reply[:200])


@FUZZ
@given(head=st.one_of(st.binary(max_size=300), st.builds(
    lambda m, p, h: f"{m} {p} HTTP/1.1\r\n{h}\r\n\r\n".encode("utf-8", "surrogatepass"),
    st.sampled_from(["GET", "POST"]), PATHS, st.text(max_size=120))))
def test_header_parser(app: PeerApp, head: bytes) -> None:
    from waitress.adjustments import Adjustments

    gate = type("Gate", (_Gate,), {"app": app})(Adjustments())
    only_typed(lambda: gate.received(head))
