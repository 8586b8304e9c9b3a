"""The Python API for applications."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.errors import NothingToCommit, RefConflict, UnknownRevision

from .conftest import write


def test_transaction_without_worktree(repo: Repository) -> None:
    with repo.transaction(branch="main", message="first", author="app") as tx:
        tx.write("sensors/t1.json", b'{"t": 21.5}')
        tx.write("big.bin", io.BytesIO(os.urandom(2 << 20)))
    assert tx.commit_cid is not None
    assert repo.read("sensors/t1.json") == b'{"t": 21.5}'
    with repo.transaction(branch="main", message="second") as tx2:
        tx2.delete("sensors/t1.json")
        tx2.write("sensors/t2.json", b"{}")
    log = repo.log("main")
    assert [e.commit.message for e in log] == ["second", "first"]
    assert log[0].commit.parents == (tx.commit,)
    assert tx.commit_cid is not None and tx.commit_cid.startswith("bafyr4i")
    with pytest.raises(UnknownRevision):
        repo.read("sensors/t1.json")
    # the emptied directory keeps its sibling; deleting the last file drops the directory
    with repo.transaction(branch="main", message="third") as tx3:
        tx3.delete("sensors/t2.json")
    assert [c.path for c in repo.diff("HEAD~1", "HEAD")] == ["sensors/t2.json"]
    assert "sensors" not in {p.split("/")[0] for p in repo.flat_tree(repo.resolve("HEAD"))}


def test_transaction_exception_commits_nothing(repo: Repository) -> None:
    with pytest.raises(RuntimeError), repo.transaction(message="boom") as tx:
        tx.write("a", b"x")
        raise RuntimeError("application failed")
    assert repo.head() is None


def test_transaction_on_other_branch_leaves_head(repo: Repository) -> None:
    with repo.transaction(branch="main", message="m") as tx:
        tx.write("a", b"1")
    with repo.transaction(branch="ingest", message="i") as tx:
        tx.write("b", b"2")
    assert repo.read("b", rev="ingest") == b"2"
    assert repo.current_branch() == "main"
    with pytest.raises(UnknownRevision):
        repo.read("b")


def test_open_file_streams(repo: Repository) -> None:
    data = os.urandom(5 << 20)
    with repo.transaction(message="big") as tx:
        tx.write("big", io.BytesIO(data))
    with repo.open_file("big") as f:
        assert f.read(10) == data[:10]
        rest = f.read()
    assert data[10:] == rest


def test_concurrent_transactions_never_lose_a_commit(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", replica="x").close()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        r = Repository.open(tmp_path / "r")
        try:
            for j in range(5):
                while True:
                    try:
                        with r.transaction(message=f"{i}-{j}") as tx:
                            tx.write(f"w{i}/{j}", f"{i}-{j}".encode())
                        break
                    except RefConflict:
                        continue
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            r.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    r = Repository.open(tmp_path / "r")
    assert len(r.log()) == 15
    assert len(r.flat_tree(r.resolve("HEAD"))) == 15
    assert r.fsck().ok
    r.close()


def test_commit_status_checkout_api(repo: Repository) -> None:
    write(repo.root, "a", "1")
    c1 = porcelain.commit(repo, "one", author="me")
    write(repo.root, "a", "2")
    assert porcelain.status(repo).modified == ["a"]
    c2 = porcelain.commit(repo, "two")
    with pytest.raises(NothingToCommit):
        porcelain.commit(repo, "again")
    porcelain.checkout(repo, c1)
    assert (repo.root / "a").read_text() == "1"
    assert repo.resolve_cid("HEAD") == c1
    porcelain.checkout(repo, "main")
    assert repo.resolve_cid("HEAD") == c2
    assert repo.log()[0].commit.author != ""


def test_open_searches_parents(repo: Repository) -> None:
    sub = repo.root / "deep" / "er"
    sub.mkdir(parents=True)
    r2 = Repository.open(sub)
    assert r2.root == repo.root
    r2.close()


def test_sha256_and_fixed_chunker(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / "s", hash="sha2-256", chunker="fixed")
    with r.transaction(message="m") as tx:
        tx.write("f", b"hello")
    from casync.model.cid import cid_str

    assert cid_str(r.resolve("HEAD")).startswith("bafyrei")  # dag-cbor + sha2-256
    assert r.fsck().ok
    r.close()


def test_commit_graph_table_persists(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / "g", replica="g", bare=True)
    with r.transaction(message="a") as tx:
        tx.write("f", b"1")
    with r.transaction(message="b") as tx:
        tx.write("f", b"2")
    first, second = r.resolve("HEAD~1"), r.resolve("HEAD")
    r.close()
    r = Repository.open(tmp_path / "g")
    node = r.store.get_node(second)
    assert node is not None and node.generation == 2 and node.parents == (first,)
    assert r.graph.merge_bases(first, second) == [first]
    r.close()


def test_fsck_reports_a_commit_whose_time_is_not_after_its_parent(repo: Repository) -> None:
    """Every casync commit's hybrid-logical time exceeds its parents' (lww relies on it); a
    commit from elsewhere that breaks this is reported."""
    from casync.model.cid import DAG_CBOR, cid_str, compute_cid
    from casync.model.commit import Commit, encode_commit

    (repo.root / "f").write_bytes(b"x")
    porcelain.commit(repo, "one")
    parent = repo.log()[0].commit
    head = repo.refs.get_ref("heads/main")
    assert head is not None
    bad = Commit(tree=parent.tree, parents=(head,), clock={repo.replica: parent.clock[repo.replica] + 1},
                 time=parent.time, replica=repo.replica, author="x", message="back in time",
                 generation=parent.generation + 1)
    block = encode_commit(bad)
    cid = compute_cid(DAG_CBOR, block)
    with repo.store.writer_lock():
        repo.blocks.put(cid, block)
        repo.blocks.flush()
    repo.update_branch("main", head, cid, "test")
    report = repo.fsck()
    assert not report.ok and "not after its parent" in report.corrupt[cid_str(cid)]


def test_a_later_transaction_change_wins_over_pending_changes_below_it(tmp_path: Path) -> None:
    """delete("e/z.txt") then write("e") used to drop the new file "e": the emptied
    directory's change was applied after it. The later change wins, either way round."""
    repo = Repository.init(tmp_path / "r", replica="site-a", bare=True)
    try:
        with repo.transaction(branch="main", message="base") as tx:
            tx.write("e/z.txt", b"z")
            tx.write("d/x.txt", b"x")
        with repo.transaction(branch="main", message="e becomes a file") as tx:
            tx.delete("e/z.txt")
            tx.write("e", b"now a file")
            tx.write("d/y.txt", b"y")
            tx.write("d", b"d is a file now")
        assert repo.read("e", rev="main") == b"now a file" and repo.read("d", rev="main") == b"d is a file now"
        with repo.transaction(branch="main", message="back to a directory") as tx:
            tx.write("e", b"short-lived")
            tx.write("e/new.txt", b"n")
        assert sorted(repo.flat_tree(repo.resolve("main"))) == ["d", "e/new.txt"]
    finally:
        repo.close()


def test_a_delete_below_a_file_written_earlier_in_the_transaction_keeps_the_file(tmp_path: Path) -> None:
    """write("e") then delete("e/x.txt") (a path below the new file, so nothing) used to drop
    "e": update_tree applied the moot delete after the file and removed it with the directory."""
    repo = Repository.init(tmp_path / "r", replica="site-a", bare=True)
    try:
        with repo.transaction(branch="main", message="base") as tx:
            tx.write("e/x.txt", b"x")
            tx.write("keep.txt", b"k")
        with repo.transaction(branch="main", message="e becomes a file") as tx:
            tx.write("e", b"now a file")
            tx.delete("e/x.txt")
        assert sorted(repo.flat_tree(repo.resolve("main"))) == ["e", "keep.txt"]
        assert repo.read("e", rev="main") == b"now a file"
    finally:
        repo.close()
