"""Remote failures are told apart by type, not by message text (issue 9 item 6): the kinds a
caller acts on differently — unreachable (retry later), timeout, auth (fix the token), not found,
a reply this side cannot read — are RemoteError subclasses, decided once where the failure is
seen (casync.store.ipfs_errors for Kubo, the peer client for casync serve).  The agent's
sync_failures_total{reason} is derived from these types."""

from __future__ import annotations

import socket

import pytest

from casync import Repository, porcelain
from casync.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    RemoteProtocolError,
    RemoteTimeout,
    RemoteUnreachable,
)
from casync.model.cid import compute_cid
from casync.store import ipfs_errors
from casync.store.ipfs_errors import DagImportRejected
from casync.transports.peer.http import HttpPeer

from .conftest import serving, write

TOKEN = "s3cret-token"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_peer_that_is_down_is_unreachable_and_transient() -> None:
    with pytest.raises(RemoteUnreachable) as err:
        HttpPeer(f"http://127.0.0.1:{_closed_port()}", TOKEN, timeout=5).info()
    assert err.value.transient and "cannot reach" in err.value.message


def test_a_peer_that_does_not_answer_in_time_is_a_timeout() -> None:
    with socket.socket() as listener:  # accepts (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(RemoteTimeout) as err:
            HttpPeer(url, TOKEN, timeout=0.5).info()
    assert err.value.transient and isinstance(err.value, RemoteUnreachable)


def test_a_missing_or_refused_token_is_an_auth_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = Repository.init(tmp_path / "s", replica="site-s")
    write(tmp_path / "s", "a.txt", "1")
    porcelain.commit(repo, "one")
    with serving(repo, TOKEN) as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        for token in (None, "wrong"):
            with pytest.raises(RemoteAuthError) as err:
                HttpPeer(url, token).info()
            assert not err.value.transient
        assert HttpPeer(url, TOKEN).info().replica == "site-s"
    repo.close()


def test_kubo_failures_become_typed_errors_in_one_place() -> None:
    where = "IPFS node at http://127.0.0.1:5001"
    assert isinstance(ipfs_errors.command_error(where, "pin/rm", "not pinned or pinned indirectly"),
                      RemoteNotFound)
    assert isinstance(ipfs_errors.command_error(where, "files/stat", "file does not exist"), RemoteNotFound)
    assert isinstance(ipfs_errors.command_error(where, "dag/import", "import failed at block 3: bad"),
                      DagImportRejected)
    going = ipfs_errors.command_error(where, "block/get", "repo not open")  # a node shutting down
    assert type(going) is RemoteError and going.transient
    assert isinstance(ipfs_errors.status_error(where, "id", 401), RemoteAuthError)
    assert isinstance(ipfs_errors.status_error(where, "id", 503), RemoteError)
    assert isinstance(ipfs_errors.raw_error(where, TimeoutError(), "id"), RemoteTimeout)
    assert isinstance(ipfs_errors.raw_error(where, ConnectionRefusedError(), "id"), RemoteUnreachable)
    assert isinstance(ipfs_errors.body_error(where, 500, b'{"Message": "no such file"}', "files/read"),
                      RemoteNotFound)
    assert isinstance(RemoteProtocolError("x"), RemoteError)


@pytest.mark.kubo
def test_a_block_kubo_lacks_is_block_not_found_and_unpinned_is_false(kubo) -> None:  # type: ignore[no-untyped-def]
    from casync.errors import BlockNotFound
    from casync.store.ipfs_client import IpfsClient

    cid = compute_cid(0x55, b"never added to this node " * 3)
    with IpfsClient(kubo.api_url) as client:
        with pytest.raises(BlockNotFound):
            client.block_get(cid, offline=True)
        assert client.is_pinned(cid) is False
