"""End-to-end CLI behaviour, as a new user would drive it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casync import Repository
from casync.model.cid import parse_cid

from .conftest import Cli, age, write


def test_first_session(cli: Cli) -> None:
    wt = cli.cwd
    cli("init", "--replica", "site-1")
    write(wt, "a.txt", "one\n")
    write(wt, "dir/b.bin", os.urandom(3 << 20))
    first = cli("commit", "-m", "first").stdout.strip()
    write(wt, "a.txt", "two\n")
    write(wt, "later.txt", "added later\n")
    second = cli("commit", "-m", "second").stdout.strip()
    entries = json.loads(cli("log", "--json").stdout)
    assert [e["cid"] for e in entries] == [second, first]
    assert entries[0]["parents"] == [first] and entries[1]["parents"] == []
    assert entries[0]["clock"] == {"site-1": 2}
    assert entries[0]["time"]["wall_ms"] >= entries[1]["time"]["wall_ms"]
    assert entries[0]["replica"] == "site-1" and entries[0]["message"] == "second"
    assert cli("cat", "HEAD:a.txt").stdout_bytes == b"two\n"
    big = (wt / "dir/b.bin").read_bytes()
    cli("checkout", "HEAD~1")
    assert (wt / "a.txt").read_text() == "one\n"
    assert (wt / "dir/b.bin").read_bytes() == big
    assert not (wt / "later.txt").exists()
    assert cli("fsck").exit_code == 0
    cli("checkout", "main")
    assert (wt / "later.txt").read_text() == "added later\n"
    assert json.loads(cli("status", "--json").stdout)["clean"] is True


def test_nothing_to_commit_is_clear(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "x")
    cli("commit", "-m", "one")
    r = cli("commit", "-m", "again", ok=False)
    assert r.exit_code == 1 and "nothing to commit" in r.stderr


def test_status_reports_added_modified_deleted(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "keep", "k")
    write(cli.cwd, "mod", "1")
    write(cli.cwd, "gone", "g")
    age(cli.cwd)
    cli("commit", "-m", "base")
    write(cli.cwd, "mod", "2")
    (cli.cwd / "gone").unlink()
    write(cli.cwd, "new", "n")
    st = json.loads(cli("status", "--json").stdout)
    assert (st["added"], st["modified"], st["deleted"]) == (["new"], ["mod"], ["gone"])
    diff = json.loads(cli("diff", "HEAD", "--json").stdout)
    assert {d["path"]: d["status"] for d in diff} == {"new": "added", "mod": "modified", "gone": "deleted"}


def test_same_size_same_mtime_edit_is_seen(cli: Cli) -> None:
    """A racily-clean file (edited within the stat granularity) is re-hashed."""
    cli("init")
    p = write(cli.cwd, "f", "aaaa")
    cli("commit", "-m", "one")
    st = p.stat()
    p.write_text("bbbb")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert json.loads(cli("status", "--json").stdout)["modified"] == ["f"]


def test_ignore_file(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, ".casyncignore", "*.tmp\nbuild/\n!keep.tmp\n/rootonly\n")
    write(cli.cwd, "a.tmp", "x")
    write(cli.cwd, "keep.tmp", "x")
    write(cli.cwd, "build/out", "x")
    write(cli.cwd, "src/build", "file named build is kept")
    write(cli.cwd, "rootonly", "x")
    write(cli.cwd, "sub/rootonly", "x")
    cli("commit", "-m", "c")
    paths = {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)}
    assert paths == {".casyncignore", "keep.tmp", "src/build", "sub/rootonly"}


def test_ls_show_and_branches(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "d/x", "1")
    write(cli.cwd, "run.sh", "#!/bin/sh\n", mode=0o755)
    c1 = cli("commit", "-m", "c1").stdout.strip()
    rows = json.loads(cli("ls", "HEAD:", "--json").stdout)
    assert [(r["path"], r["type"]) for r in rows] == [("d", "dir"), ("run.sh", "file")]
    assert rows[1]["executable"] is True
    assert json.loads(cli("ls", "HEAD:d/x", "--json").stdout)[0]["size"] == 1
    cli("switch", "-c", "feature")
    write(cli.cwd, "d/y", "2")
    cli("commit", "-m", "c2")
    show = json.loads(cli("show", "--json").stdout)
    assert show["changes"] == [{"path": "d/y", "status": "added"}]
    branches = {b["name"]: b for b in json.loads(cli("branch", "--json").stdout)}
    assert branches["feature"]["current"] and branches["main"]["commit"] == c1
    cli("switch", "main")
    assert not (cli.cwd / "d/y").exists()
    assert os.access(cli.cwd / "run.sh", os.X_OK)
    r = cli("branch", "-d", "main", ok=False)
    assert r.exit_code == 1 and "checked out" in r.stderr
    cli("branch", "-d", "feature")
    assert "feature" not in cli("branch").stdout


def test_rev_syntax(cli: Cli) -> None:
    cli("init")
    cids = []
    for i in range(3):
        write(cli.cwd, "f", str(i))
        cids.append(cli("commit", "-m", str(i)).stdout.strip())
    assert cli("log", "-n", "1", "--json", "HEAD~2").stdout.count(cids[0]) == 1
    assert json.loads(cli("log", "--json", "-n", "1", cids[1][:20]).stdout)[0]["cid"] == cids[1]
    assert json.loads(cli("log", "--json", "-n", "1", "main^").stdout)[0]["cid"] == cids[1]
    r = cli("log", "HEAD~5", ok=False)
    assert r.exit_code == 2 and "past the first commit" in r.stderr


def test_symlinks_roundtrip_and_are_not_followed(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    outside = tmp_path / "outside"
    outside.mkdir()
    write(cli.cwd, "real/file", "data")
    os.symlink("real/file", cli.cwd / "link")
    cli("commit", "-m", "c")
    assert cli("cat", "HEAD:link").stdout == "real/file"
    (cli.cwd / "link").unlink()
    cli("restore", "--source", "HEAD", "link")
    assert os.readlink(cli.cwd / "link") == "real/file"
    # a directory swapped for a symlink to outside the tree is never written through
    (cli.cwd / "real/file").unlink()
    (cli.cwd / "real").rmdir()
    os.symlink(outside, cli.cwd / "real")
    r = cli("restore", "real/file", ok=False)
    assert r.exit_code == 2 and "refusing to write real/file through it" in r.stderr
    cli("checkout", "--force", "main")  # --force replaces the link (not what it points to)
    assert not (cli.cwd / "real").is_symlink() and (cli.cwd / "real/file").read_text() == "data"
    assert os.listdir(outside) == []


def test_checkout_refuses_to_clobber(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "1")
    cli("commit", "-m", "1")
    write(cli.cwd, "f", "2")
    cli("commit", "-m", "2")
    write(cli.cwd, "f", "local edit")
    r = cli("checkout", "HEAD~1", ok=False)
    assert r.exit_code == 1 and "uncommitted changes" in r.stderr and "f" in r.stderr
    assert (cli.cwd / "f").read_text() == "local edit"
    cli("checkout", "--force", "HEAD~1")
    assert (cli.cwd / "f").read_text() == "1"


def test_checkout_keeps_untouched_local_changes(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "a", "1")
    write(cli.cwd, "b", "1")
    cli("commit", "-m", "1")
    write(cli.cwd, "a", "2")
    cli("commit", "-m", "2")
    write(cli.cwd, "b", "local")
    write(cli.cwd, "untracked", "u")
    cli("checkout", "HEAD~1")
    assert (cli.cwd / "a").read_text() == "1"
    assert (cli.cwd / "b").read_text() == "local"
    assert (cli.cwd / "untracked").exists()
    st = json.loads(cli("status", "--json").stdout)
    assert st["modified"] == ["b"] and st["added"] == ["untracked"]


def test_restore_paths(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "d/a", "1")
    write(cli.cwd, "d/b", "1")
    cli("commit", "-m", "1")
    write(cli.cwd, "d/a", "changed")
    write(cli.cwd, "d/new", "new")
    cli("restore", "d")
    assert (cli.cwd / "d/a").read_text() == "1"
    assert (cli.cwd / "d/new").read_text() == "new"  # untracked files are not restore's business


# --- bad input ---------------------------------------------------------------------------------


def test_not_a_repository(cli: Cli) -> None:
    r = cli("log", ok=False)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"error: not a casync repository (or any parent up to /): {cli.cwd}"
    assert "Traceback" not in r.output


def test_unknown_rev_and_path(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "x")
    cli("commit", "-m", "c")
    r = cli("log", "nosuchbranch", ok=False)
    assert r.exit_code == 2 and "unknown revision 'nosuchbranch'" in r.stderr
    r = cli("cat", "HEAD:nope.txt", ok=False)
    assert r.exit_code == 2 and "'nope.txt' does not exist" in r.stderr


@pytest.mark.parametrize("spec", ["HEAD:../etc/passwd", "HEAD:/etc/passwd", "HEAD:.casync/db"])
def test_cat_refuses_escaping_paths(cli: Cli, spec: str) -> None:
    cli("init")
    write(cli.cwd, "f", "x")
    cli("commit", "-m", "c")
    r = cli("cat", spec, ok=False)
    assert r.exit_code == 2 and "error:" in r.stderr and "Traceback" not in r.output


def test_restore_refuses_paths_outside_tree(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "x")
    cli("commit", "-m", "c")
    r = cli("restore", "../outside", ok=False)
    assert r.exit_code == 2 and "outside the working tree" in r.stderr


def test_corrupted_block_is_named(cli: Cli) -> None:
    cli("init")
    data = os.urandom(50_000)  # one chunk: the file is its raw leaf
    write(cli.cwd, "f.bin", data)
    cli("commit", "-m", "c")
    cid = json.loads(cli("ls", "HEAD:f.bin", "--json").stdout)[0]["cid"]
    pack = next((cli.cwd / ".casync" / "packs").glob("*.pack"))
    raw = bytearray(pack.read_bytes())
    at = raw.find(data[1000:1100])
    raw[at] ^= 0xFF
    pack.write_bytes(bytes(raw))
    r = cli("cat", "HEAD:f.bin", ok=False)
    assert r.exit_code == 1 and f"block {cid}" in r.stderr and "corrupt" in r.stderr
    r = cli("fsck", ok=False)
    assert r.exit_code == 1 and f"corrupt  {cid}" in r.stdout
    report = json.loads(cli("fsck", "--json", ok=False).stdout)
    assert list(report["corrupt"]) == [cid] and report["ok"] is False


def test_missing_block_fails_fsck(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "x" * 100)
    cli("commit", "-m", "c")
    repo = Repository.open(cli.cwd)
    cid = json.loads(cli("ls", "HEAD:f", "--json").stdout)[0]["cid"]
    repo.blocks.delete(parse_cid(cid))
    repo.close()
    r = cli("fsck", ok=False)
    assert r.exit_code == 1 and f"missing  {cid}" in r.stdout


def test_init_twice_and_bad_options(cli: Cli) -> None:
    cli("init")
    r = cli("init", ok=False)
    assert r.exit_code == 2 and "already a casync repository" in r.stderr
    r = cli("init", "other", "--hash", "md5", ok=False)
    assert r.exit_code == 2
    r = cli("init", "other2", "--replica", "bad name!", ok=False)
    assert r.exit_code == 2 and "invalid replica name" in r.stderr


def test_help_on_every_command(cli: Cli) -> None:
    import click

    from casync.cli.main import main

    names = main.list_commands(click.Context(main))
    assert {"status", "merge", "push", "agent"} <= set(names)  # the lazily loaded ones are listed too
    for name in names:
        assert cli(name, "--help").exit_code == 0


def test_restore_keeps_untracked_and_removes_tracked_extras(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "d/a", "1")
    write(cli.cwd, "d/tracked-later", "t")
    cli("commit", "-m", "1")
    (cli.cwd / "d/tracked-later").unlink()
    write(cli.cwd, "d/a", "2")
    cli("commit", "-m", "2")
    write(cli.cwd, "d/untracked", "u")
    cli("restore", "--source", "HEAD~1", "d")
    assert (cli.cwd / "d/a").read_text() == "1"
    assert (cli.cwd / "d/tracked-later").read_text() == "t"
    assert (cli.cwd / "d/untracked").read_text() == "u"
    r = cli("restore", "nope", ok=False)
    assert r.exit_code == 2 and "'nope' is not in HEAD" in r.stderr


def test_checkout_of_current_commit_by_cid_detaches(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "1")
    cid = cli("commit", "-m", "1").stdout.strip()
    cli("checkout", cid)
    assert json.loads(cli("status", "--json").stdout)["branch"] is None


def test_unstorable_names_are_skipped_not_committed(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "ok.txt", "fine")
    write(cli.cwd, "inner/.casync/db/x", "a nested repository")
    write(cli.cwd, "back\\slash", "x")
    cli("commit", "-m", "c")
    paths = {r["path"] for r in json.loads(cli("ls", "-r", "--json").stdout)}
    assert paths == {"ok.txt"}
    st = json.loads(cli("status", "--json").stdout)
    assert any("inner/.casync" in s for s in st["skipped"]) and any("back" in s for s in st["skipped"])
    assert cli("fsck").exit_code == 0


def test_reflog_and_config(cli: Cli) -> None:
    cli("init")
    write(cli.cwd, "f", "1")
    c1 = cli("commit", "-m", "one").stdout.strip()
    write(cli.cwd, "f", "2")
    c2 = cli("commit", "-m", "two").stdout.strip()
    log = json.loads(cli("reflog", "--json").stdout)
    assert [e["new"] for e in log] == [c2, c1] and log[0]["old"] == c1
    cli("config", "merge", '{"policy": "siblings", "rules": {"*.json": "json"}}')
    assert json.loads(cli("config", "merge", "--json").stdout) == {"policy": "siblings", "rules": {"*.json": "json"}}
    cli("config", "merge", "--unset")
    assert cli("config", "merge", ok=False).exit_code == 2
    assert cli("config", "replica", "x", ok=False).exit_code == 2
    # one field of an object, as the docs spell it; bad policies are refused, not ignored
    cli("config", "merge.policy", "siblings")
    cli("config", "merge.skew_tolerance_ms", "250")
    assert cli("config", "merge.policy").stdout.strip() == "siblings"
    assert json.loads(cli("config", "merge", "--json").stdout) == {"policy": "siblings", "skew_tolerance_ms": 250}
    bad = cli("config", "merge.policy", "sibilngs", ok=False)
    assert bad.exit_code == 2 and "unknown merge policy 'sibilngs'" in bad.stderr
    assert cli("config", "merge", "siblings", ok=False).exit_code == 2  # not an object
    cli("config", "merge.skew_tolerance_ms", "--unset")
    assert json.loads(cli("config", "merge", "--json").stdout) == {"policy": "siblings"}
    assert 'merge = {"policy": "siblings"}' in cli("config").stdout


def test_status_before_commit_never_leaves_a_commit_without_its_blocks(cli: Cli) -> None:
    """status hashes new and changed files into a throwaway store; the stat cache must not
    keep those CIDs, or the next commit would reference blocks it never stored."""
    import time

    cli("init", "--replica", "site-1")
    write(cli.cwd, "a.txt", "one\n")
    cli("commit", "-m", "c1")
    write(cli.cwd, "b.txt", "a new file\n")
    write(cli.cwd, "a.txt", "one, edited\n")
    time.sleep(1.2)  # old enough for the stat cache to trust them (racy-clean rule)
    st = json.loads(cli("status", "--json").stdout)
    assert st["added"] == ["b.txt"] and st["modified"] == ["a.txt"]
    cli("commit", "-m", "c2")
    assert json.loads(cli("fsck", "--json").stdout)["ok"]
    assert cli("cat", "HEAD:b.txt").stdout == "a new file\n"
    assert cli("cat", "HEAD:a.txt").stdout == "one, edited\n"


@pytest.mark.parametrize("command", [["checkout", "HEAD~1"], ["switch", "old"], ["restore", "-s", "HEAD~1", "x"]])
def test_untracked_files_in_a_directory_replaced_by_a_file_are_protected(cli: Cli, command: list[str]) -> None:
    cli("init", "--replica", "site-1")
    write(cli.cwd, "x", "a file\n")
    cli("commit", "-m", "x is a file")
    cli("branch", "old")
    (cli.cwd / "x").unlink()
    write(cli.cwd, "x/tracked", "t\n")
    cli("commit", "-m", "x is a directory")
    write(cli.cwd, "x/untracked-notes.txt", "my notes\n")
    r = cli(*command, ok=False)
    assert r.exit_code == 1 and "x/untracked-notes.txt" in r.stderr
    assert (cli.cwd / "x/untracked-notes.txt").read_text() == "my notes\n"
    (cli.cwd / "x/untracked-notes.txt").unlink()
    write(cli.cwd, ".casyncignore", "*.tmp\n")
    write(cli.cwd, "x/scratch.tmp", "ignored, but a user's file all the same\n")
    r = cli(*command, ok=False)  # unlike git, ignored files are not expendable either
    assert r.exit_code == 1 and "x/scratch.tmp" in r.stderr
    assert (cli.cwd / "x/scratch.tmp").read_text() == "ignored, but a user's file all the same\n"
    (cli.cwd / "x/scratch.tmp").unlink()
    cli(*command)
    assert (cli.cwd / "x").read_text() == "a file\n"


def test_review_small_fixes(cli: Cli) -> None:
    """An empty first commit needs --allow-empty; ls lists a directory whose single-leaf
    file is damaged (it does not read contents); status prints each skip reason once and
    quotes a path with a newline."""
    cli("init", "--replica", "site-1")
    r = cli("commit", "-m", "empty", ok=False)
    assert r.exit_code == 1 and "working tree is empty" in r.stderr
    cli("commit", "-m", "empty", "--allow-empty")
    write(cli.cwd, "hello.txt", "hello\n")
    cli("commit", "-m", "hello")
    repo = Repository.open(cli.cwd)
    leaf = repo.resolve("HEAD")
    entry = repo.entry_at("HEAD:hello.txt")[2]
    repo.close()
    assert leaf
    # flip a byte of the file's block in its pack
    packs = sorted((cli.cwd / ".casync/packs").iterdir())
    data = bytearray(packs[-1].read_bytes())
    at = bytes(data).find(b"hello\n")
    data[at] ^= 1
    packs[-1].write_bytes(bytes(data))
    rows = json.loads(cli("ls", "HEAD", "--json").stdout)
    assert [(r["path"], r["size"]) for r in rows] == [("hello.txt", 6)]
    assert cli("cat", "HEAD:hello.txt", ok=False).exit_code == 1
    assert entry.tsize == 6
    os.mkfifo(cli.cwd / "fifo")
    write(cli.cwd, "two\nlines", "x")
    out = cli("status").stdout
    assert out.count("not a regular file or symlink") == 1
    assert '  skipped:   "two\\nlines (' in out  # one line, quoted, with its reason
