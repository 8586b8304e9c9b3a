"""The wrappers every peer transport shares (casync/transports/wrap.py): counting what moves and
bounding calls in flight work around any peer, stacked by open_peer with the retries."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.transports.clone import clone_peer
from casync.transports.locate import locate, open_peer
from casync.transports.peer.exchange import fetch_from, push_to
from casync.transports.wrap import LimitedPeer, TransferCounter

from .conftest import write


def _site(root: Path, replica: str, files: dict[str, str]) -> Repository:
    repo = Repository.init(root, replica=replica)
    for name, text in files.items():
        write(root, name, text)
    porcelain.commit(repo, f"{replica} writes")
    return repo


class _Recorder:
    def __init__(self) -> None:
        self.advanced = 0

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        self.advanced += n

    def finish(self) -> None:
        pass


def test_what_a_fetch_and_a_push_move_is_counted_once(tmp_path: Path) -> None:
    hub = _site(tmp_path / "hub", "hub", {"a.txt": "alpha"})
    edge, _ = clone_peer(locate(str(tmp_path / "hub")), tmp_path / "edge", replica="edge")
    write(tmp_path / "edge", "own.txt", "edge data")
    porcelain.commit(edge, "edge writes")
    write(tmp_path / "hub", "d/b.bin", "beta" * 5000)
    porcelain.commit(hub, "hub writes more")
    progress = _Recorder()
    counter = TransferCounter(progress=progress)
    peer = open_peer(locate(str(tmp_path / "hub")), counter=counter)
    try:
        got = fetch_from(edge, peer, "hub")
        assert counter.blocks_received == got.stats.blocks > 0
        assert counter.bytes_received == got.stats.bytes > 10_000
        assert counter.blocks_sent == 0
        porcelain.merge(edge, "hub/main", policy="lww")
        counter.progress = _Recorder()  # what the push moves, alone
        before = counter.bytes_received
        push_to(edge, peer, "hub", "main")
        assert counter.blocks_sent > 0 and counter.bytes_sent > 0 and counter.bytes_received == before
        assert progress.advanced == before
        assert counter.progress.advanced == counter.bytes_sent  # type: ignore[attr-defined]
    finally:
        peer.close()
        hub.close()
        edge.close()


def test_a_limit_of_one_holds_a_second_call_until_the_stream_ends(tmp_path: Path) -> None:
    hub = _site(tmp_path / "hub", "hub", {f"f{i}.txt": f"file {i} " * 300 for i in range(20)})
    edge = Repository.init(tmp_path / "edge", replica="edge")
    peer = open_peer(locate(str(tmp_path / "hub")), limit=1)
    assert isinstance(peer, LimitedPeer)
    try:
        wants = [hub.head()]  # type: ignore[list-item]
        stream = peer.fetch(wants, [])
        next(stream)  # the stream holds the one slot now
        answered = threading.Event()
        waiter = threading.Thread(target=lambda: (peer.info(), answered.set()), daemon=True)
        waiter.start()
        assert not answered.wait(0.5), "a second call ran while the first stream held the slot"
        for _ in stream:  # drain: the slot is released when the stream ends
            pass
        assert answered.wait(30), "the second call never got the slot"
        waiter.join(30)
        with pytest.raises(ValueError):
            LimitedPeer(peer, 0)
    finally:
        peer.close()
        hub.close()
        edge.close()
