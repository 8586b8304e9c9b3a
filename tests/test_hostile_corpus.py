"""Every hostile history of :mod:`tests.hostile.corpus`, delivered through every entry point
(a bundle, a clone and a pull from a hostile peer, a push to ``casync serve``, a fetch from a
real Kubo node): each is refused with a typed casync error naming a CID of it, nothing of it
is stored, no ref moves and ``fsck`` stays clean.  The ``serve`` under attack keeps answering."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casync import Repository
from casync.errors import CasyncError, RemoteError
from casync.model import cbor
from casync.model.car import CarWriter
from casync.model.cid import DAG_CBOR, cid_str, compute_cid
from casync.store.ipfs import IpfsBlockStore, IpfsClient
from casync.transports.ipfs.fetch import DagFetcher
from casync.transports.peer.http import HttpPeer

from .conftest import Cli, serving
from .hostile.corpus import CASES, RID, Case
from .hostile.evil_peer import EvilPeer, evil_peer

TOKEN = "hostile-serve-token"
IDS = [c.name for c in CASES]


def test_the_corpus_holds_at_least_60_attacks() -> None:
    assert len(CASES) >= 60


@pytest.fixture(scope="module")
def peer() -> Iterator[EvilPeer]:
    with evil_peer() as p:
        yield p


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repository, str]]:
    """One bare ``casync serve`` every push attack goes to: it must end as it began."""
    repo = Repository.init(tmp_path_factory.mktemp("hub") / "hub", replica="hub", repository_id=RID, bare=True)
    with serving(repo, TOKEN) as srv:
        host, port = srv.server_address[:2]
        yield repo, f"http://{host}:{port}"
    repo.close()


def _victim(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "victim", replica="victim", repository_id=RID)


def _names_the_case(message: str, case: Case) -> None:
    assert any(name in message for name in case.names()), f"no CID of the case in: {message}"


def _untouched(repo: Repository, case: Case, refs_before: dict[str, bytes]) -> None:
    """Nothing of ``case`` stored, the refs as before, fsck clean."""
    assert repo.refs.list_refs() == refs_before
    held = [cid_str(c) for c, _ in case.blocks if repo.blocks.has(c)]
    assert held == [], held
    report = repo.fsck()
    assert report.ok, report


def _token(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token)
    return path


def _cli_fails_naming(cli: Cli, case: Case, *args: str) -> str:
    result = cli(*args, ok=False)
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    _names_the_case(result.stderr, case)
    return result.stderr


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bundle(case: Case, tmp_path: Path) -> None:
    manifest = cbor.encode({"casync_bundle": 1, "repository_id": RID, "refs": {"main": cbor.Link(case.tip)},
                            "prerequisites": [], "hash": "blake3", "chunker": "cdc"})
    manifest_cid = compute_cid(DAG_CBOR, manifest)
    path = tmp_path / "evil.bundle"
    with open(path, "wb") as f:
        writer = CarWriter(f, [manifest_cid])
        for cid, block in case.blocks:
            writer.add(cid, block)
        writer.add(manifest_cid, manifest)
    repo = _victim(tmp_path)
    before = repo.refs.list_refs()
    repo.close()
    cli = Cli(tmp_path / "victim")
    _cli_fails_naming(cli, case, "bundle", "unbundle", str(path))
    with Repository.open(tmp_path / "victim") as repo:
        _untouched(repo, case, before)


@pytest.mark.parametrize("framed", [False, True], ids=["zstd", "frames"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_peer_clone(case: Case, framed: bool, peer: EvilPeer, tmp_path: Path) -> None:
    peer.serve_history(RID, case.tip, case.blocks)
    peer.framed = framed
    tmp_path.joinpath("here").mkdir()
    cli = Cli(tmp_path / "here")
    _cli_fails_naming(cli, case, "clone", peer.url, str(tmp_path / "clone"), "--token-file",
                      str(_token(tmp_path, peer.token)))
    if (tmp_path / "clone" / ".casync").exists():  # an interrupted clone, kept to resume
        with Repository.open(tmp_path / "clone") as repo:
            _untouched(repo, case, {k: v for k, v in repo.refs.list_refs().items()})
            assert case.tip not in repo.refs.list_refs().values()
    assert sorted(os.listdir(tmp_path)) == sorted({"here", "clone", "token"} & set(os.listdir(tmp_path)))


@pytest.mark.parametrize("framed", [False, True], ids=["zstd", "frames"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_peer_pull(case: Case, framed: bool, peer: EvilPeer, tmp_path: Path) -> None:
    peer.serve_history(RID, case.tip, case.blocks)
    peer.framed = framed
    repo = _victim(tmp_path)
    with repo.transaction(branch="main", message="mine") as tx:
        tx.write("mine.txt", b"kept")
    before = repo.refs.list_refs()
    repo.close()
    _cli_fails_naming(Cli(tmp_path / "victim"), case, "pull", peer.url, "--token-file",
                      str(_token(tmp_path, peer.token)))
    with Repository.open(tmp_path / "victim") as repo:
        _untouched(repo, case, before)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_push_to_serve(case: Case, hub: tuple[Repository, str]) -> None:
    repo, url = hub
    before = repo.refs.list_refs()
    client = HttpPeer(url, TOKEN, timeout=60)
    try:
        with pytest.raises(RemoteError) as caught:
            client.push("main", None, case.tip, iter(case.blocks))
        assert "answered 400" in caught.value.message, caught.value.message
        _names_the_case(caught.value.message, case)
        assert client.info().repository_id == RID  # the server still answers
    finally:
        client.close()
    _untouched(repo, case, before)


@pytest.fixture(scope="module")
def kubo_blocks(kubo: object) -> Iterator[IpfsBlockStore]:
    store = IpfsBlockStore(IpfsClient(kubo.api_url))  # type: ignore[attr-defined]
    for case in CASES:
        for cid, block in case.blocks:
            store.put(cid, block)
    store.flush()
    yield store
    store.close()


@pytest.mark.kubo
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fetch_from_kubo(case: Case, kubo_blocks: IpfsBlockStore, tmp_path: Path) -> None:
    repo = _victim(tmp_path)
    try:
        before = repo.refs.list_refs()
        fetcher = DagFetcher(repo, kubo_blocks, concurrency=4)
        try:
            with pytest.raises(CasyncError) as caught:
                fetcher.fetch(case.tip)
        finally:
            fetcher.close()
        _names_the_case(caught.value.message, case)
        _untouched(repo, case, before)
    finally:
        repo.close()
