"""Working-tree safety (issue 8): nothing a user wrote in the working tree vanishes.

merge --abort keeps edits it did not cause; a detached commit is not left behind
silently; a transaction into the checked-out branch is not reverted by the next commit;
ignore rules never untrack files; checkouts never write through a symlink."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casync import Repository, porcelain
from casync.errors import InvalidPath
from casync.worktree import disk as worktree
from casync.worktree.disk import WorktreeWriter

from .conftest import Cli, age, write


def _stopped_merge(cli: Cli) -> None:
    """main and other both edit conflict.txt; other also edits merged.txt; the manual
    merge of other stops with conflict.txt unresolved and merged.txt merged."""
    cli("init", "--replica", "site-a")
    write(cli.cwd, "conflict.txt", "base\n")
    write(cli.cwd, "merged.txt", "base\n")
    write(cli.cwd, "notes.txt", "notes\n")
    write(cli.cwd, "gone.txt", "gone\n")
    age(cli.cwd)
    cli("commit", "-m", "base")
    cli("switch", "-c", "other")
    write(cli.cwd, "conflict.txt", "theirs\n")
    write(cli.cwd, "merged.txt", "theirs\n")
    write(cli.cwd, "added-by-merge.txt", "theirs\n")
    age(cli.cwd)
    cli("commit", "-m", "theirs")
    cli("switch", "main")
    write(cli.cwd, "conflict.txt", "ours\n")
    age(cli.cwd)
    cli("commit", "-m", "ours")
    r = cli("merge", "--policy", "manual", "other", ok=False)
    assert r.exit_code == 1 and "CONFLICT" in r.stderr


# --- item 2: merge --abort -------------------------------------------------------------------

def test_merge_abort_keeps_edits_to_paths_the_merge_did_not_touch(cli: Cli) -> None:
    _stopped_merge(cli)
    assert (cli.cwd / "merged.txt").read_text() == "theirs\n"
    write(cli.cwd, "notes.txt", "an edit made while the merge was stopped\n")
    (cli.cwd / "gone.txt").unlink()
    write(cli.cwd, "scratch.txt", "untracked\n")
    r = cli("merge", "--abort")
    assert "merge aborted" in r.stderr
    assert (cli.cwd / "notes.txt").read_text() == "an edit made while the merge was stopped\n"
    assert not (cli.cwd / "gone.txt").exists()
    assert (cli.cwd / "scratch.txt").read_text() == "untracked\n"
    # what the merge wrote is gone: the tree is HEAD's again
    assert (cli.cwd / "conflict.txt").read_text() == "ours\n"
    assert (cli.cwd / "merged.txt").read_text() == "base\n"
    assert not (cli.cwd / "added-by-merge.txt").exists()
    st = json.loads(cli("status", "--json").stdout)
    assert (st["modified"], st["deleted"], st["added"]) == (["notes.txt"], ["gone.txt"], ["scratch.txt"])


def test_merge_abort_refuses_to_drop_an_edit_to_a_path_the_merge_changed(cli: Cli) -> None:
    _stopped_merge(cli)
    write(cli.cwd, "merged.txt", "my own edit on top of the merge\n")
    write(cli.cwd, "added-by-merge.txt", "edited too\n")
    write(cli.cwd, "conflict.txt", "resolved by hand: the merge never wrote this path, abort keeps it\n")
    r = cli("merge", "--abort", ok=False)
    assert r.exit_code == 1
    assert "added-by-merge.txt" in r.stderr and "merged.txt" in r.stderr and "conflict.txt" not in r.stderr
    assert "hint:" in r.stderr
    assert (cli.cwd / "merged.txt").read_text() == "my own edit on top of the merge\n"
    assert json.loads(cli("conflicts", "--json").stdout)  # the merge is still in progress
    # dropping the edits by hand (back to HEAD's version, or deleting a merge-added file) lets it go
    cli("restore", "merged.txt")
    (cli.cwd / "added-by-merge.txt").unlink()
    cli("merge", "--abort")
    assert (cli.cwd / "merged.txt").read_text() == "base\n"
    assert (cli.cwd / "conflict.txt").read_text().startswith("resolved by hand")
    assert not (cli.cwd / "conflict.txt.~site-a").exists()  # the sibling the merge wrote
    assert json.loads(cli("status", "--json").stdout)["modified"] == ["conflict.txt"]


def test_merge_abort_undoes_what_resolve_wrote(cli: Cli) -> None:
    _stopped_merge(cli)
    cli("resolve", "conflict.txt", "--pick", "theirs")
    assert (cli.cwd / "conflict.txt").read_text() == "theirs\n"
    cli("merge", "--abort")
    assert (cli.cwd / "conflict.txt").read_text() == "ours\n"
    assert json.loads(cli("status", "--json").stdout)["clean"] is True


def test_status_says_a_merge_is_in_progress(cli: Cli) -> None:
    _stopped_merge(cli)
    out = cli("status").stdout
    assert "merge in progress" in out and "merge --continue" in out and "merge --abort" in out
    assert json.loads(cli("status", "--json").stdout)["merge_in_progress"] is True
    cli("merge", "--abort")
    assert "merge in progress" not in cli("status").stdout
    assert json.loads(cli("status", "--json").stdout)["merge_in_progress"] is False


# --- item 3: detached HEAD --------------------------------------------------------------------

def test_leaving_a_detached_commit_behind_warns_and_the_head_reflog_keeps_it(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "1")
    c1 = cli("commit", "-m", "one").stdout.strip()
    cli("checkout", c1)
    write(cli.cwd, "f", "detached work")
    lost = cli("commit", "-m", "on a detached HEAD").stdout.strip()
    r = cli("switch", "main")
    assert "leaving 1 commit(s) behind" in r.stderr and lost[:16] in r.stderr
    assert f"casync branch NAME {lost[:16]}" in r.stderr
    log = json.loads(cli("reflog", "HEAD", "--json").stdout)
    assert log[0]["ref"] == "HEAD" and log[0]["old"] == lost and log[0]["new"] == c1
    assert log[1]["new"] == lost and "detached" in log[1]["reason"]
    assert [e["new"] for e in log][:4] == [c1, lost, c1, c1]
    text = cli("reflog", "HEAD").stdout
    assert "HEAD@{1}" in text and lost[:20] in text
    # the hint works, and then nothing is left behind
    cli("branch", "rescued", lost[:16])
    cli("checkout", lost[:16])
    assert "behind" not in cli("switch", "main").stderr
    # a detached checkout of a commit reachable from a branch leaves nothing behind either
    cli("checkout", c1)
    assert "behind" not in cli("checkout", "main").stderr


def test_head_reflog_records_branch_moves_of_the_checked_out_branch(repo: Repository) -> None:
    (repo.root / "f").write_bytes(b"1")
    c1 = porcelain.commit(repo, "one")
    with repo.transaction(message="tx") as tx:
        tx.write("g", b"2")
    entries = repo.refs.reflog("HEAD")
    assert [e.reason for e in entries] == ["commit: one", "transaction: tx"]
    assert entries[0].old is None and entries[1].old == repo.resolve(c1) == entries[0].new
    assert entries[1].new == repo.head()


# --- item 5: a transaction into the checked-out branch ----------------------------------------

def test_commit_after_a_transaction_into_the_checked_out_branch_refuses_instead_of_reverting(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "notes.txt", "1\n")
    age(cli.cwd)
    cli("commit", "-m", "one")
    with Repository.open(cli.cwd) as repo:
        with repo.transaction(message="app writes") as tx:
            tx.write("sensors/api.json", b'{"t": 1}')
    write(cli.cwd, "notes.txt", "a local edit\n")
    st = cli("status").stdout
    assert "moved" in st and "casync checkout main" in st
    assert json.loads(cli("status", "--json").stdout)["modified"] == ["notes.txt"]  # not "deleted api.json"
    r = cli("commit", "-m", "would revert the transaction", ok=False)
    assert r.exit_code == 1 and "moved" in r.stderr and "casync checkout main" in r.stderr
    assert cli("cat", "HEAD:sensors/api.json").stdout == '{"t": 1}'
    cli("checkout", "main")  # brings the transaction's files, keeps the edit
    assert (cli.cwd / "sensors/api.json").read_text() == '{"t": 1}'
    assert (cli.cwd / "notes.txt").read_text() == "a local edit\n"
    cli("commit", "-m", "now fine")
    show = json.loads(cli("show", "--json").stdout)
    assert show["changes"] == [{"path": "notes.txt", "status": "modified"}]
    assert cli("cat", "HEAD:sensors/api.json").stdout == '{"t": 1}'


def test_merge_into_a_moved_checked_out_branch_refuses(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "a", "1")
    cli("commit", "-m", "one")
    cli("branch", "other")
    with Repository.open(cli.cwd) as repo:
        with repo.transaction(branch="other", message="o") as tx:
            tx.write("o", b"o")
        with repo.transaction(message="app") as tx:
            tx.write("app", b"x")
    r = cli("merge", "other", ok=False)
    assert r.exit_code == 1 and "moved" in r.stderr
    cli("checkout", "main")
    cli("merge", "other")
    assert (cli.cwd / "app").read_bytes() == b"x" and (cli.cwd / "o").read_bytes() == b"o"


def test_transaction_into_a_repository_without_commits_is_not_reverted(cli: Cli) -> None:
    cli("init")
    with Repository.open(cli.cwd) as repo:
        with repo.transaction(message="first, by the app") as tx:
            tx.write("data.bin", b"d")
    write(cli.cwd, "mine.txt", "m")
    r = cli("commit", "-m", "x", ok=False)
    assert r.exit_code == 1 and "moved" in r.stderr
    cli("checkout", "main")
    cli("commit", "-m", "mine")
    assert {r["path"] for r in json.loads(cli("ls", "--json").stdout)} == {"data.bin", "mine.txt"}


# --- item 6: ignore rules apply to untracked files only ---------------------------------------

@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_ignore_rules_never_untrack_a_tracked_file(cli: Cli, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(worktree, "_native_walk", None)
    elif worktree._native_walk is None and not os.environ.get("CI"):
        pytest.skip("casync._cscan was not built")
    cli("init")
    write(cli.cwd, "cam/a.raw", "raw a")
    write(cli.cwd, "build/tracked.o", "t")
    write(cli.cwd, "keep.txt", "k")
    age(cli.cwd)
    cli("commit", "-m", "with raws")
    write(cli.cwd, ".casyncignore", "*.raw\nbuild/\n")
    write(cli.cwd, "cam/b.raw", "new raw: ignored")
    write(cli.cwd, "build/untracked.o", "ignored: under an ignored directory")
    age(cli.cwd)
    st = json.loads(cli("status", "--json").stdout)
    assert (st["added"], st["deleted"], st["modified"]) == ([".casyncignore"], [], [])
    assert st["ignored_tracked"] == ["build/tracked.o", "cam/a.raw"]
    text = cli("status").stdout
    assert "cam/a.raw" in text and "rm --cached" in text
    cli("commit", "-m", "ignore file")
    assert json.loads(cli("status", "--json").stdout)["clean"] is True  # both walks agree (fast path)
    write(cli.cwd, "cam/a.raw", "raw a, edited")
    assert json.loads(cli("status", "--json").stdout)["modified"] == ["cam/a.raw"]
    cli("commit", "-m", "edit a tracked, ignored file")
    paths = {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)}
    assert paths == {".casyncignore", "cam/a.raw", "build/tracked.o", "keep.txt"}
    assert cli("cat", "HEAD:cam/a.raw").stdout == "raw a, edited"


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_racily_clean_tracked_file_an_ignore_rule_matches_is_still_seen(cli: Cli, native: bool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path asks the stat cache, not the tree, which files are tracked: a file the
    cache could not trust (written in the commit's second) must still be named by it."""
    if not native:
        monkeypatch.setattr(worktree, "_native_walk", None)
    elif worktree._native_walk is None and not os.environ.get("CI"):
        pytest.skip("casync._cscan was not built")
    cli("init")
    write(cli.cwd, "keep.txt", "k")
    write(cli.cwd, ".casyncignore", "*.raw\n")
    age(cli.cwd)
    cli("commit", "-m", "rules first")
    with Repository.open(cli.cwd) as repo:  # a tracked .raw file (a transaction ignores no rule)
        with repo.transaction(message="raw") as tx:
            tx.write("cam/a.raw", b"aaaa")
    cli("checkout", "main")  # writes it now: racily clean in the cache
    assert json.loads(cli("status", "--json").stdout)["ignored_tracked"] == ["cam/a.raw"]
    p = cli.cwd / "cam/a.raw"
    st = p.stat()
    p.write_bytes(b"bbbb")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert json.loads(cli("status", "--json").stdout)["modified"] == ["cam/a.raw"]
    age(cli.cwd)
    cli("commit", "-m", "edit")
    assert json.loads(cli("status", "--json").stdout)["clean"] is True
    assert cli("cat", "HEAD:cam/a.raw").stdout == "bbbb"


def test_rm_cached_untracks_and_rm_deletes(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "cam/a.raw", "a")
    write(cli.cwd, "cam/b.raw", "b")
    write(cli.cwd, "k.txt", "k")
    cli("commit", "-m", "c")
    write(cli.cwd, ".casyncignore", "*.raw\n")
    cli("commit", "-m", "ignore raws from now on")
    r = cli("rm", "--cached", "cam/a.raw")
    assert "cam/a.raw" in r.stderr
    assert (cli.cwd / "cam/a.raw").read_text() == "a"  # still on disk
    st = json.loads(cli("status", "--json").stdout)
    assert st["deleted"] == ["cam/a.raw"] and st["ignored_tracked"] == ["cam/b.raw"]
    cli("commit", "-m", "untrack a")
    assert json.loads(cli("status", "--json").stdout)["clean"] is True  # ignored now, and untracked
    assert (cli.cwd / "cam/a.raw").exists()
    cli("rm", "k.txt")
    assert not (cli.cwd / "k.txt").exists()
    assert cli("rm", "nope", ok=False).exit_code == 2
    cli("commit", "-m", "rm k")
    assert {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)} == {".casyncignore", "cam/b.raw"}
    # rm of an edited file refuses (it would lose the edit); --cached keeps it on disk
    write(cli.cwd, "cam/b.raw", "edited")
    r = cli("rm", "cam/b.raw", ok=False)
    assert r.exit_code == 1 and "uncommitted" in r.stderr
    cli("rm", "--cached", "cam/b.raw")
    assert (cli.cwd / "cam/b.raw").read_text() == "edited"


def test_rm_cached_is_kept_until_the_next_commit(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "a.raw", "a")
    write(cli.cwd, "b.txt", "b")
    cli("commit", "-m", "c")
    write(cli.cwd, ".casyncignore", "*.raw\n")
    cli("rm", "--cached", "a.raw")
    write(cli.cwd, "b.txt", "b2")
    cli("status")
    cli("commit", "-m", "b2, a untracked")
    assert {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)} == {".casyncignore", "b.txt"}
    assert (cli.cwd / "a.raw").read_text() == "a"


def test_checkout_force_discards_a_pending_rm_cached_too(cli: Cli) -> None:
    """--force discards every local change; a pending 'rm --cached' used to survive it, so
    the next commit still dropped the file from the tree."""
    cli("init")
    write(cli.cwd, "a.txt", "a")
    cli("commit", "-m", "c")
    cli("rm", "--cached", "a.txt")
    assert json.loads(cli("status", "--json").stdout)["deleted"] == ["a.txt"]
    cli("checkout", "--force", "main")
    st = json.loads(cli("status", "--json").stdout)
    assert st["clean"] and st["deleted"] == []
    write(cli.cwd, "b.txt", "b")
    cli("commit", "-m", "b")
    assert {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)} == {"a.txt", "b.txt"}


# --- item 13: the symlink guard ---------------------------------------------------------------

def _repo_with_dir_and_symlinked_copy(cli: Cli, tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("outside the working tree\n")
    cli("init")
    write(cli.cwd, "d/victim", "committed\n")
    write(cli.cwd, "other", "x")
    cli("commit", "-m", "with d/")
    return outside


def test_restore_refuses_to_write_through_a_symlinked_directory(cli: Cli, tmp_path: Path) -> None:
    outside = _repo_with_dir_and_symlinked_copy(cli, tmp_path)
    import shutil

    shutil.rmtree(cli.cwd / "d")
    os.symlink(outside, cli.cwd / "d")
    r = cli("restore", "d/victim", ok=False)
    assert r.exit_code == 2 and "symlink" in r.stderr and "refusing to write d/victim" in r.stderr
    assert (outside / "victim").read_text() == "outside the working tree\n"
    assert sorted(os.listdir(outside)) == ["victim"]


@pytest.mark.parametrize("how", ["checkout", "merge"])
def test_checkout_and_merge_refuse_to_write_through_an_ignored_symlink(cli: Cli, tmp_path: Path, how: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("outside the working tree\n")
    cli("init")
    write(cli.cwd, "base", "b")
    write(cli.cwd, ".casyncignore", "d\n")
    cli("commit", "-m", "base")
    cli("branch", "other")
    with Repository.open(cli.cwd) as repo:  # a tree entry d/victim (ignore rules cannot stop a tree)
        with repo.transaction(branch="other", message="d/victim") as tx:
            tx.write("d/victim", b"written through the link?\n")
    os.symlink(outside, cli.cwd / "d")  # untracked and ignored: expendable, but never followed
    before = cli("log", "--json").stdout
    r = cli(how, "other", ok=False)
    assert r.exit_code == 2 and "symlink" in r.stderr and "refusing to write d/victim" in r.stderr
    assert (outside / "victim").read_text() == "outside the working tree\n"
    assert sorted(os.listdir(outside)) == ["victim"]
    assert cli("log", "--json").stdout == before and cli("status", "--json")  # nothing moved
    assert json.loads(cli("branch", "--json").stdout)[0]["current"] is True  # still on main


def test_push_into_a_checked_out_branch_that_moved_leaves_the_files_for_checkout(tmp_path: Path) -> None:
    """The push used to move the files from the branch's tip, which they were not at: the
    transaction's file then read as deleted, and the next commit deleted it."""
    from casync.transports.peer.exchange import LocalPeer, fetch_from, push_to

    origin = Repository.init(tmp_path / "origin", replica="origin")
    b = Repository.init(tmp_path / "b", replica="b", repository_id=origin.repo_id, bare=True)
    try:
        (origin.root / "notes.txt").write_bytes(b"n")
        porcelain.commit(origin, "first")
        with origin.transaction(message="app") as tx:
            tx.write("sensors/api.json", b"{}")
        peer = LocalPeer(str(origin.root))
        fetch_from(b, peer, "origin")
        b.update_branch("main", None, b.refs.get_ref("remotes/origin/main"), "track")
        with b.transaction(branch="main", message="from b") as tx:
            tx.write("b.txt", b"from b")
        assert push_to(b, peer, "origin", "main")["result"] == "pushed"
        peer.close()
        st = porcelain.status(origin)
        assert st.deleted == []  # was ["sensors/api.json"]
        assert st.moved and st.clean
        porcelain.checkout(origin, "main")
        assert (origin.root / "sensors/api.json").read_bytes() == b"{}"
        assert (origin.root / "b.txt").read_bytes() == b"from b"
        (origin.root / "notes.txt").write_bytes(b"edited")
        porcelain.commit(origin, "edit")
        assert [c.path for c in origin.diff("HEAD~1")] == ["notes.txt"]
    finally:
        origin.close()
        b.close()


def test_an_edit_the_moved_branch_also_changed_has_a_way_out(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "shared.json", "v1")
    age(cli.cwd)
    c1 = cli("commit", "-m", "one").stdout.strip()
    with Repository.open(cli.cwd) as repo:
        with repo.transaction(message="app") as tx:
            tx.write("shared.json", b"app's v2")
    write(cli.cwd, "shared.json", "my v2")
    r = cli("checkout", "main", ok=False)
    assert r.exit_code == 1 and "shared.json" in r.stderr and f"casync branch NAME {c1[:16]}" in r.stderr
    cli("branch", "mine", c1[:16])
    cli("switch", "mine")
    cli("commit", "-m", "my v2")
    assert cli("cat", "mine:shared.json").stdout == "my v2"
    assert cli("cat", "main:shared.json").stdout == "app's v2"


def test_an_ignore_rule_at_one_site_deletes_nothing_at_another(tmp_path: Path, cli: Cli) -> None:
    """The issue's repro: '*.raw' added to one site's ignore file, commit, and the other
    site pulls: its .raw files used to be deleted from its disk."""
    cli("init", "--replica", "site-a")
    write(cli.cwd, "cam/a.raw", "raw bytes")
    write(cli.cwd, "notes.txt", "n")
    cli("commit", "-m", "first")
    b = Cli(tmp_path / "b")
    cli("clone", str(cli.cwd), str(b.cwd), "--replica", "site-b")
    write(cli.cwd, ".casyncignore", "*.raw\n")
    write(cli.cwd, "cam/new.raw", "untracked: ignored")
    cli("commit", "-m", "ignore raw files from now on")
    assert {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)} == {".casyncignore", "cam/a.raw",
                                                                                  "notes.txt"}
    b("pull", "origin")
    assert (b.cwd / "cam/a.raw").read_text() == "raw bytes"
    assert (b.cwd / ".casyncignore").exists() and not (b.cwd / "cam/new.raw").exists()
    assert json.loads(b("status", "--json").stdout)["clean"] is True


def test_merge_continue_after_the_branch_moved_refuses_and_says_how_to_recover(cli: Cli) -> None:
    _stopped_merge(cli)
    with Repository.open(cli.cwd) as repo:
        with repo.transaction(message="app, during the stopped merge") as tx:
            tx.write("app.json", b"{}")
    cli("resolve", "conflict.txt", "--pick", "ours")
    r = cli("merge", "--continue", ok=False)
    assert r.exit_code == 1 and "moved" in r.stderr and "merge --abort" in r.stderr
    cli("merge", "--abort")
    cli("checkout", "main")
    assert (cli.cwd / "app.json").read_bytes() == b"{}"
    assert json.loads(cli("status", "--json").stdout)["clean"] is True


def test_the_writer_itself_never_follows_a_symlinked_directory(tmp_path: Path) -> None:
    """The last line of defence (a link planted after the checks): WorktreeWriter opens
    every component with O_NOFOLLOW, so writes, symlinks and removals stop at the link."""
    root, outside = tmp_path / "wt", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("outside\n")
    os.symlink(outside, root / "d")
    (root / "f").write_text("a file, not a directory")
    writer = WorktreeWriter(root)
    for path in ("d/victim", "d/new", "d/sub/deep"):
        with pytest.raises(InvalidPath, match="refusing to write"):
            writer.write_file(path, [b"through the link?"], False)
    with pytest.raises(InvalidPath, match="refusing to write"):
        writer.write_symlink("d/evil", "/etc/passwd")
    with pytest.raises(InvalidPath, match="f is a file or symlink"):
        writer.write_file("f/x", [b"x"], False)
    writer.remove("d/victim")  # nothing to remove inside the tree; the link is not followed
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "outside\n"
    with pytest.raises(InvalidPath, match="d is a symlink"):
        writer.check_parents(["d/victim"], set())
    writer.check_parents(["d/victim"], {"d"})  # unless the caller removes d first


# --- found in review -------------------------------------------------------------------------

def test_merge_continue_keeps_a_file_the_merge_brought_that_an_ignore_rule_matches(cli: Cli) -> None:
    """other tracks cam.raw; main ignores *.raw.  The stopped merge writes cam.raw, so
    it is tracked (in the merged tree): merge --continue must commit it, or the next
    sync would delete it at every site that has it."""
    cli("init", "--replica", "site-a")
    write(cli.cwd, "a.txt", "base\n")
    age(cli.cwd)
    cli("commit", "-m", "base")
    cli("switch", "-c", "other")
    write(cli.cwd, "a.txt", "theirs\n")
    write(cli.cwd, "cam.raw", "raw bytes")
    age(cli.cwd)
    cli("commit", "-m", "theirs, with a raw file")
    cli("switch", "main")
    write(cli.cwd, "a.txt", "ours\n")
    write(cli.cwd, ".casyncignore", "*.raw\n")
    age(cli.cwd)
    cli("commit", "-m", "ours ignores raw files")
    assert cli("merge", "--policy", "manual", "other", ok=False).exit_code == 1
    assert (cli.cwd / "cam.raw").read_text() == "raw bytes"
    cli("resolve", "a.txt", "--pick", "ours")
    cli("merge", "--continue")
    assert cli("cat", "HEAD:cam.raw").stdout == "raw bytes"
    assert json.loads(cli("status", "--json").stdout)["clean"] is True


def test_checkout_is_refused_while_a_merge_is_stopped(cli: Cli) -> None:
    """A checkout would carry the stopped merge to another commit: --continue would then
    commit it there with the wrong first parent, and --abort would reset to the wrong tree."""
    _stopped_merge(cli)
    cli("branch", "elsewhere", "HEAD~1")
    for args in (("switch", "elsewhere"), ("switch", "--force", "elsewhere"), ("checkout", "HEAD~1"),
                 ("switch", "-c", "fresh")):
        r = cli(*args, ok=False)
        assert r.exit_code == 1 and "merge is in progress" in r.stderr and "merge --abort" in r.stderr, args
        assert json.loads(cli("status", "--json").stdout)["branch"] == "main"
    assert "fresh" not in {b["name"] for b in json.loads(cli("branch", "--json").stdout)}
    assert (cli.cwd / "conflict.txt.~site-a").exists()
    cli("merge", "--abort")
    cli("switch", "elsewhere")


def test_checkout_after_a_move_accepts_a_file_that_already_holds_the_new_version(cli: Cli) -> None:
    """After a transaction, 'casync restore PATH' puts HEAD's version on disk; the checkout
    that brings the rest up to date must not call that an uncommitted change in its way."""
    cli("init")
    write(cli.cwd, "a.txt", "base\n")
    write(cli.cwd, "n.txt", "n\n")
    age(cli.cwd)
    cli("commit", "-m", "base")
    with Repository.open(cli.cwd) as repo:
        with repo.transaction(message="app") as tx:
            tx.write("a.txt", b"from the app\n")
            tx.write("n.txt", b"n, from the app\n")
    cli("restore", "a.txt")
    write(cli.cwd, "n.txt", "a real edit\n")  # still refused: it would be overwritten
    r = cli("checkout", "main", ok=False)
    assert r.exit_code == 1 and "n.txt" in r.stderr and "a.txt" not in r.stderr
    write(cli.cwd, "n.txt", "n\n")
    cli("checkout", "main")
    assert (cli.cwd / "a.txt").read_text() == "from the app\n"
    assert json.loads(cli("status", "--json").stdout)["clean"] is True


@pytest.mark.parametrize("how", ["pull", "checkout"])
def test_an_ignored_local_file_is_never_overwritten(tmp_path: Path, cli: Cli, how: str) -> None:
    """Site b ignores '*.raw' and keeps a local cam.raw; site a commits its own cam.raw. b's pull
    (and a checkout of a's commit) used to replace b's file silently: git's "ignored files are
    expendable" loses data in a data store. Now it is refused like any untracked file in the way."""
    cli("init", "--replica", "site-a")
    write(cli.cwd, "notes.txt", "n")
    cli("commit", "-m", "first")
    b = Cli(tmp_path / "b")
    cli("clone", str(cli.cwd), str(b.cwd), "--replica", "site-b")
    write(b.cwd, ".casyncignore", "*.raw\n")
    write(b.cwd, "cam.raw", "b's own capture")
    write(b.cwd, "old/cam.raw", "b's file in a directory a replaces with a file")
    b("commit", "-m", "b ignores raw files")
    write(cli.cwd, "cam.raw", "a's capture")
    write(cli.cwd, "old", "a file where b has a directory")
    cli("commit", "-m", "a adds cam.raw")
    b("fetch", "origin")
    head = b("log", "--json", "-n", "1").stdout
    r = b("pull", "origin", ok=False) if how == "pull" else b("checkout", "origin/main", ok=False)
    assert r.exit_code == 1 and "cam.raw" in r.stderr and "Traceback" not in r.stderr
    assert b("log", "--json", "-n", "1").stdout == head  # refused before anything moved
    assert (b.cwd / "cam.raw").read_text() == "b's own capture"
    assert (b.cwd / "old/cam.raw").read_text() == "b's file in a directory a replaces with a file"
    (b.cwd / "cam.raw").rename(tmp_path / "kept.raw")
    (b.cwd / "old/cam.raw").rename(tmp_path / "kept2.raw")
    b("pull", "origin") if how == "pull" else b("checkout", "origin/main")
    assert (b.cwd / "cam.raw").read_text() == "a's capture"


def test_merge_abort_of_a_merge_stopped_by_an_older_casync(cli: Cli) -> None:
    """A merge state without 'written_tree' (written before it was recorded) made abort
    raise a KeyError traceback. The conflicted path and its sibling go back; the cleanly
    merged files stay as they are, shown as modified: nothing is lost."""
    _stopped_merge(cli)
    with Repository.open(cli.cwd) as repo:
        raw = repo.store.get("meta", b"merge_state")
        assert raw is not None
        state = json.loads(raw)
        del state["written_tree"]
        repo.store.put("meta", b"merge_state", json.dumps(state).encode())
    r = cli("merge", "--abort")
    assert "Traceback" not in r.stderr
    assert (cli.cwd / "conflict.txt").read_text() == "ours\n"
    assert not [p for p in os.listdir(cli.cwd) if p.startswith("conflict.txt.~")]
    assert (cli.cwd / "merged.txt").read_text() == "theirs\n"  # kept: abort cannot know the merge wrote it
    assert "merge_in_progress" in (st := json.loads(cli("status", "--json").stdout)) and not st["merge_in_progress"]
    assert "merged.txt" in st["modified"]


def test_a_push_into_a_checked_out_branch_with_a_stopped_merge_is_refused(tmp_path: Path, cli: Cli) -> None:
    """The push used to move the files under the half-done merge, so '--continue' then built
    it on the pushed commit. Now it is refused (409 over HTTP) and nothing changes there."""
    from casync.errors import RefConflict
    from casync.transports.peer.exchange import fetch_from, push_to
    from casync.transports.peer.http import HttpPeer

    from .conftest import serving

    _stopped_merge(cli)
    with Repository.open(cli.cwd) as served:
        b = Repository.init(tmp_path / "b", replica="site-b", repository_id=served.repo_id, bare=True)
        try:
            with serving(served, "tok") as srv:
                peer = HttpPeer(f"http://127.0.0.1:{srv.server_address[1]}", "tok")
                try:
                    fetch_from(b, peer, "origin")
                    b.update_branch("main", None, b.refs.get_ref("remotes/origin/main"), "track")
                    with b.transaction(branch="main", message="from b") as tx:
                        tx.write("b.txt", b"from b")
                    before = served.resolve("main")
                    with pytest.raises(RefConflict) as err:
                        push_to(b, peer, "origin", "main")
                finally:
                    peer.close()
            assert "a merge is stopped" in err.value.message and "merge --continue" in (err.value.hint or "")
            assert served.resolve("main") == before and not (cli.cwd / "b.txt").exists()
        finally:
            b.close()
    assert json.loads(cli("status", "--json").stdout)["merge_in_progress"]
