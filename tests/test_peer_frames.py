"""casync-frames/1, the framed fetch reply: the real server sends it only to a client that
asks (older clients keep their zstd CAR), the real client reads both, and a hostile framed
reply (a bad block, a frame past its bound, a zstd bomb, a cut) is refused before anything
is stored.  The hostile corpus also runs over frames (tests/test_hostile_corpus.py)."""

from __future__ import annotations

import http.client
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from casync.errors import CorruptBlock, InvalidObject
from casync.model.car import encode_car, iter_car, read_header
from casync.model.cid import RAW, Cid, cid_str, compute_cid
from casync.repo.repository import Repository
from casync.transports.peer.exchange import fetch_from
from casync.transports.peer.frames import (
    FRAMES_HEADER,
    FRAMES_TYPE,
    MAX_FRAME,
    FrameReader,
    frame_batches,
)
from casync.transports.peer.http import HttpPeer

from .conftest import serving
from .hostile.evil_peer import EvilPeer, evil_peer

TOKEN = "frames-token-0123456789"
_HEAD = struct.Struct(">BI")


def _block(data: bytes) -> tuple[Cid, bytes]:
    return compute_cid(RAW, data), data


def _read_frames(body: bytes) -> tuple[list[Cid], list[tuple[Cid, bytes]]]:
    reader = io.BufferedReader(FrameReader(io.BytesIO(body), "test"), 1 << 16)
    return read_header(reader), list(iter_car(reader))


def test_frames_carry_the_car_byte_for_byte_stored_or_compressed() -> None:
    random_block, text_block = _block(os.urandom(300_000)), _block(b"the same line again\n" * 20_000)
    batches = [[random_block], [text_block], [random_block, text_block]]
    body = b"".join(frame_batches([random_block[0]], batches))
    kinds = []
    at = 0
    while at < len(body):
        kind, length = _HEAD.unpack_from(body, at)
        kinds.append(kind)
        at += _HEAD.size + length
    assert kinds == [0, 1, 1]  # random bytes are sent as they are; text (and a batch holding some) compressed
    assert len(body) < 2 * 300_000 + 100_000
    assert _read_frames(body) == ([random_block[0]], [random_block, text_block, random_block, text_block])


def test_an_empty_reply_is_the_header_alone() -> None:
    assert _read_frames(b"".join(frame_batches([], []))) == ([], [])


def _framed(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


def _car_frames(blocks: list[tuple[Cid, bytes]]) -> bytes:
    return _framed(0, encode_car([], blocks))


@pytest.mark.parametrize("attack", ["bomb", "no-size", "big-stored", "big-zstd", "kind", "cut-head", "cut-stored",
                                    "cut-zstd", "corrupt-zstd"])
def test_a_hostile_framing_is_refused(attack: str) -> None:
    car = encode_car([], [_block(b"x" * 1000)])
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (MAX_FRAME + 1))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(car)
    body = {
        "bomb": _framed(1, bomb),  # tiny on the wire, past the bound decompressed
        "no-size": _framed(1, unsized),
        "big-stored": _HEAD.pack(0, MAX_FRAME + 1) + car,
        "big-zstd": _HEAD.pack(1, MAX_FRAME + 1) + car,
        "kind": _framed(7, car),
        "cut-head": _framed(0, car) + b"\0\0",
        "cut-stored": _framed(0, car)[:-10],
        "cut-zstd": _framed(1, zstandard.ZstdCompressor().compress(car))[:-3],
        "corrupt-zstd": _framed(1, b"\x28\xb5\x2f\xfd" + b"\xff" * 40),
    }[attack]
    with pytest.raises(InvalidObject):
        _read_frames(body)


def _victim(tmp_path: Path, rid: str) -> Repository:
    return Repository.init(tmp_path / "victim", replica="victim", repository_id=rid, bare=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Repository, str]]:
    repo = Repository.init(tmp_path / "src", replica="src", bare=True)
    with repo.transaction(branch="main", message="one") as tx:
        tx.write("random.bin", os.urandom(3 << 20))
        tx.write("text.txt", b"compressible\n" * 100_000)
    with serving(repo, TOKEN) as srv:
        host, port = srv.server_address[:2]
        yield repo, f"http://{host}:{port}"
    repo.close()


def _post_fetch(url: str, tip: Cid, framed: bool) -> http.client.HTTPResponse:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
               **({FRAMES_HEADER: "1"} if framed else {})}
    conn.request("POST", "/v1/fetch", body=f'{{"wants": ["{cid_str(tip)}"]}}'.encode(), headers=headers)
    return conn.getresponse()


def test_serve_frames_only_a_client_that_asks(served: tuple[Repository, str]) -> None:
    repo, url = served
    tip = repo.refs.get_ref("heads/main")
    assert tip is not None
    old = _post_fetch(url, tip, framed=False)  # a client from before frames
    assert old.getheader("Content-Encoding") == "zstd"
    reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(old), 1 << 16)
    assert read_header(reader) == [tip]
    old_blocks = list(iter_car(reader))
    new = _post_fetch(url, tip, framed=True)
    assert new.getheader("Content-Type") == FRAMES_TYPE and new.getheader("Content-Encoding") is None
    assert _read_frames(new.read()) == ([tip], old_blocks)


def test_the_client_fetches_from_serve_over_frames(served: tuple[Repository, str], tmp_path: Path) -> None:
    repo, url = served
    victim = _victim(tmp_path, repo.repo_id)
    peer = HttpPeer(url, TOKEN)
    try:
        result = fetch_from(victim, peer, "origin")
    finally:
        peer.close()
    assert victim.refs.get_ref("remotes/origin/main") == repo.refs.get_ref("heads/main")
    assert result.stats.new_blocks == len(list(repo.blocks.iter_cids()))
    assert all(victim.blocks.has(cid) for cid in repo.blocks.iter_cids())
    victim.close()


@pytest.fixture
def peer() -> Iterator[EvilPeer]:
    with evil_peer() as p:
        yield p


def test_a_framed_block_that_does_not_match_its_cid_is_refused(peer: EvilPeer, tmp_path: Path) -> None:
    """Fails if the framed path hands on a block before its hash is checked."""
    good = _block(b"a block of data" * 100)
    peer.framed = True
    peer.raw_frames = _car_frames([(good[0], b"a block of dat4" * 100)])
    client = HttpPeer(peer.url, peer.token)
    try:
        with pytest.raises(CorruptBlock):
            list(client.fetch([good[0]], []))
    finally:
        client.close()
    assert peer.requests == ["POST /v1/fetch"]


def test_a_stored_frame_is_few_pieces_and_large_blocks_are_not_copied() -> None:
    small = [_block(b"%d" % i) for i in range(50)]
    large = [_block(os.urandom(100_000)) for _ in range(2)]
    pieces = list(frame_batches([], [small + large]))
    # the header and the small sections (with the first large block's section head) joined,
    # then each large block as it is, and its successor's section head
    assert len(pieces) == 4 and all(pieces)
    assert pieces[1] is large[0][1] and pieces[3] is large[1][1]
    assert _read_frames(b"".join(pieces)) == ([], small + large)


@pytest.mark.parametrize("shape", ["large", "tiny"])
def test_a_big_batch_is_cut_into_frames_the_client_accepts(shape: str) -> None:
    """/v1/blocks answers up to 1024 blocks of 1 MiB in one batch; a fetch batch may hold
    many tiny blocks: no frame may pass MAX_FRAME, or the client refuses the reply."""
    blocks = [_block(os.urandom(1 << 20)) for _ in range(12)] if shape == "large" else \
        [_block(b"%d" % i) for i in range(250_000)]
    body = b"".join(frame_batches([], [blocks]))
    at, frames = 0, 0
    while at < len(body):
        _kind, length = _HEAD.unpack_from(body, at)
        assert length <= MAX_FRAME
        at += _HEAD.size + length
        frames += 1
    assert frames > 1
    assert _read_frames(body) == ([], blocks)
