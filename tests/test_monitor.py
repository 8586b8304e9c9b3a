"""The inotify file-system monitor (``casync monitor``): real daemons watching real trees.

Every test proves both sides: a clean ``status`` with the monitor running does not walk
(``"walk": false``), and each kind of change made while it runs is reported, with a walk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casync.worktree import monitord
from casync.worktree.monitor import PROTOCOL, SOCKET_NAME, TOKEN_NAME, Tokens

from .conftest import Cli, age, write

_UNKNOWN = "no earlier token of this monitor (first use, restarted or events lost)"


def _status(cli: Cli) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cli("status", "--json").stdout)
    return out


def _gone(pid: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not monitord._alive(pid):
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def _monitor(cli: Cli, *extra: str) -> Iterator[int]:
    """``casync monitor start``; the daemon is stopped by its PID afterwards, whatever happened."""
    pid = json.loads(cli("monitor", "start", "--json", *extra).stdout)["pid"]
    try:
        yield pid
    finally:
        with contextlib.suppress(Exception):
            monitord.stop(cli.cwd)
        if monitord._alive(pid):
            os.kill(pid, signal.SIGKILL)
            _gone(pid)


def _clean_repo(cli: Cli, files: dict[str, str] | None = None) -> None:
    cli("init")
    for rel, text in (files or {"a.txt": "alpha\n", "d/b.txt": "bravo\n", "d/e/c.txt": "charlie\n"}).items():
        write(cli.cwd, rel, text)
    age(cli.cwd)
    cli("commit", "-m", "one")


def _settle(cli: Cli) -> dict[str, Any]:
    """Two statuses: the first may walk (and records the token), the second is the monitor's."""
    first = _status(cli)
    assert first["clean"], first
    second = _status(cli)
    assert second["clean"] and second["walk"] is False, second
    assert second["monitor"] == "nothing changed since the last clean status"
    return second


def _same_size_same_mtime(wt: Path) -> None:
    p = wt / "d" / "b.txt"
    st = p.stat()
    p.write_text("BRAVO\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rename(wt: Path) -> None:
    os.rename(wt / "a.txt", wt / "z.txt")


def _new_dir_with_file(wt: Path) -> None:
    os.mkdir(wt / "n")
    (wt / "n" / "f.txt").write_text("right after mkdir\n")


def _tree_moved_in(wt: Path) -> None:
    outside = wt.parent / "outside"
    write(outside, "x/y/z.txt", "from outside\n")
    os.rename(outside / "x", wt / "x")


CHANGES: dict[str, tuple[Callable[[Path], object], dict[str, list[str]]]] = {
    "edit-same-size-same-mtime": (_same_size_same_mtime, {"modified": ["d/b.txt"]}),
    "chmod+x": (lambda wt: os.chmod(wt / "a.txt", 0o755), {"modified": ["a.txt"]}),
    "new-file": (lambda wt: write(wt, "d/e/new.txt", "new\n"), {"added": ["d/e/new.txt"]}),
    "delete": (lambda wt: os.unlink(wt / "d" / "e" / "c.txt"), {"deleted": ["d/e/c.txt"]}),
    "rename": (_rename, {"added": ["z.txt"], "deleted": ["a.txt"]}),
    "new-dir-with-file": (_new_dir_with_file, {"added": ["n/f.txt"]}),
    "tree-moved-in": (_tree_moved_in, {"added": ["x/y/z.txt"]}),
}


@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_every_change_is_seen_with_the_monitor_running(cli: Cli, kind: str) -> None:
    _clean_repo(cli)
    change, expected = CHANGES[kind]
    with _monitor(cli):
        _settle(cli)
        change(cli.cwd)
        st = _status(cli)
        assert st["walk"] is True and st["monitor"] == "changed since the last clean status", st
        for field in ("added", "modified", "deleted"):
            assert st[field] == expected.get(field, []), (field, st)


def test_casyncignore_edit_is_seen(cli: Cli) -> None:
    _clean_repo(cli, {"a.txt": "alpha\n"})
    write(cli.cwd, ".casyncignore", "*.log\n.casyncignore\n")
    write(cli.cwd, "x.log", "ignored\n")
    age(cli.cwd)
    with _monitor(cli):
        _settle(cli)
        write(cli.cwd, ".casyncignore", ".casyncignore\n")
        st = _status(cli)
        assert st["walk"] is True and st["added"] == ["x.log"], st


def test_new_directories_get_watches(cli: Cli) -> None:
    """A directory made (or a tree moved in) while the monitor runs is watched at once: a later
    edit deep inside it is seen after the tree was found clean again."""
    _clean_repo(cli)
    with _monitor(cli):
        _settle(cli)
        os.makedirs(cli.cwd / "m" / "n" / "o")
        write(cli.cwd, "m/n/o/deep.txt", "deep\n")
        _tree_moved_in(cli.cwd)
        os.rename(cli.cwd / "d", cli.cwd / "renamed")  # watched paths follow a rename
        age(cli.cwd)
        cli("commit", "-m", "two")
        _settle(cli)
        for rel in ("m/n/o/deep.txt", "x/y/z.txt", "renamed/e/c.txt"):
            p = cli.cwd / rel
            st = p.stat()
            p.write_text(p.read_text().upper())
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            seen = _status(cli)
            assert seen["walk"] is True and seen["modified"] == [rel], seen
            p.write_text(p.read_text().lower())
            age(cli.cwd)
            _settle(cli)
        info = json.loads(cli("monitor", "status", "--json").stdout)
        assert info["running"] and info["watches"] == 8  # root, renamed (was d), its e, m, n, o, x, y


def test_restarted_monitor_means_a_walk(cli: Cli) -> None:
    _clean_repo(cli)
    with _monitor(cli) as pid:
        _settle(cli)
    assert _gone(pid)
    stopped = _status(cli)
    assert stopped["walk"] is True and stopped["monitor"] == "not running", stopped
    with _monitor(cli) as again:
        assert again != pid
        st = _status(cli)
        assert st["walk"] is True and st["monitor"] == _UNKNOWN, st  # a new instance cannot judge old tokens
        _settle(cli)


def test_queue_overflow_means_a_walk(cli: Cli) -> None:
    """The daemon is paused while more events than the kernel queues (max_queued_events)
    happen: the overflow makes every earlier token unknown, and the monitor keeps working."""
    _clean_repo(cli)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with _monitor(cli) as pid:
        _settle(cli)
        a, b = cli.cwd / "a.txt", cli.cwd / "d" / "b.txt"
        sa, sb = a.stat(), b.stat()
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(limit // 2 + 100):  # alternating names: the kernel merges only repeats
                os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
                os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))
        finally:
            os.kill(pid, signal.SIGCONT)
        st = _status(cli)
        assert st["walk"] is True and st["monitor"] == _UNKNOWN and st["clean"], st
        _settle(cli)
        write(cli.cwd, "after.txt", "after the overflow\n")
        assert _status(cli)["added"] == ["after.txt"]


def test_tokens_protocol() -> None:
    t = Tokens("inst")
    first = t.token
    assert t.verdict(None) == "unknown" and t.verdict("") == "unknown"
    assert t.verdict(first) == "unchanged"
    t.changed()
    assert t.verdict(first) == "changed" and t.verdict(t.token) == "unchanged"
    assert t.verdict("other.0:1") == "unknown" and t.verdict(first.replace(":0", ":9")) == "unknown"
    latest = t.token
    t.overflowed()
    assert t.verdict(latest) == "unknown" and t.verdict(first) == "unknown" and t.verdict(t.token) == "unchanged"


def test_kill_9_leaves_status_correct_and_start_recovers(cli: Cli) -> None:
    _clean_repo(cli)
    with _monitor(cli) as pid:
        _settle(cli)
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        assert (cli.cwd / ".casync" / SOCKET_NAME).exists()  # stale: nobody answers on it
        write(cli.cwd, "a.txt", "changed while no monitor ran\n")
        st = _status(cli)
        assert st["walk"] is True and st["modified"] == ["a.txt"], st
        assert st["monitor"].startswith("not reachable"), st
        r = cli("monitor", "status", ok=False)
        assert r.exit_code == 1 and "stale pid file" in r.stdout, r.stdout
        assert "stopped" not in cli("monitor", "stop").stdout  # nothing to stop: idempotent
    write(cli.cwd, "a.txt", "alpha\n")
    age(cli.cwd)
    with _monitor(cli) as again:
        assert again != pid
        _settle(cli)


def test_out_of_watches_refuses_and_cleans_up(cli: Cli) -> None:
    _clean_repo(cli)  # three directories: the root, d, d/e
    r = cli("monitor", "start", "--max-watches", "2", ok=False)
    assert r.exit_code == 1
    assert "out of inotify watches" in r.stderr and "fs.inotify.max_user_watches" in r.stderr, r.stderr
    dot = cli.cwd / ".casync"
    assert not (dot / SOCKET_NAME).exists() and not (dot / monitord.PID_NAME).exists()
    assert _status(cli)["walk"] is True
    with _monitor(cli, "--max-watches", "3") as pid:  # enough now; a new directory is one too many
        _settle(cli)
        os.mkdir(cli.cwd / "more")
        st = _status(cli)  # the daemon sees it cannot watch "more", stops, and status walks
        assert st["walk"] is True and st["clean"], st
        assert _gone(pid)
        r = cli("monitor", "status", ok=False)
        assert r.exit_code == 1 and "out of inotify watches" in r.stdout and "max_user_watches" in r.stdout
        assert not (dot / SOCKET_NAME).exists()


def test_daemon_exits_when_casync_goes(cli: Cli) -> None:
    _clean_repo(cli)
    with _monitor(cli) as pid:
        shutil.rmtree(cli.cwd / ".casync")
        assert _gone(pid, wait=15.0)


def test_socket_is_private_and_wants_the_secret(cli: Cli) -> None:
    _clean_repo(cli)
    dot = cli.cwd / ".casync"
    with _monitor(cli):
        assert (dot / SOCKET_NAME).stat().st_mode & 0o777 == 0o600
        assert (dot / TOKEN_NAME).stat().st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(dot / SOCKET_NAME))
            s.sendall(f"{PROTOCOL} not-the-secret query -\n".encode())
            assert s.recv(100) == b"denied\n"
        assert cli("monitor", "start").stdout.startswith("monitor already running")


def test_status_with_the_monitor_imports_no_ctypes(cli: Cli) -> None:
    """The client side is one socket (the C ``_socket``): the monitored status loads no ctypes,
    no socket.py (its enum set-up alone costs milliseconds) and no daemon code."""
    _clean_repo(cli)
    code = ("import sys, json, io, contextlib\nfrom casync.cli.main import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    try:\n        main(['status', '--json'])\n"
            "    except SystemExit as e:\n        assert not e.code, e.code\n"
            "print(json.loads(buf.getvalue())['walk'])\nprint(' '.join(sorted(sys.modules)))\n")
    with _monitor(cli):
        _settle(cli)
        r = subprocess.run([sys.executable, "-c", code], cwd=cli.cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    walk, loaded = r.stdout.splitlines()[-2:]
    assert walk == "False"
    unwanted = {"ctypes", "socket", "selectors", "subprocess", "casync.worktree.monitord", "casync.worktree.inotify"}
    assert not set(loaded.split()) & unwanted, sorted(set(loaded.split()) & unwanted)


def test_two_starts_at_once_make_one_daemon(cli: Cli) -> None:
    _clean_repo(cli)
    casync = [sys.executable, "-c", "from casync.cli.main import main; main()", "monitor", "start", "--json"]
    procs = [subprocess.Popen(casync, cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    pids = {json.loads(out)["pid"] for out, _ in outs if out}
    try:
        assert [p.returncode for p in procs] == [0, 0], outs
        assert len(pids) == 1, outs
        assert sorted(json.loads(out)["started"] for out, _ in outs) == [False, True]
    finally:
        monitord.stop(cli.cwd)
        for pid in pids:
            assert _gone(pid)


def test_a_monitor_that_does_not_answer_means_a_walk(cli: Cli) -> None:
    """A stopped (SIGSTOP) daemon accepts the connection but never answers: status gives up
    after the client's timeout and walks, and sees the change made meanwhile."""
    _clean_repo(cli)
    with _monitor(cli) as pid:
        _settle(cli)
        os.kill(pid, signal.SIGSTOP)
        try:
            write(cli.cwd, "late.txt", "while the monitor sleeps\n")
            st = _status(cli)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert st["walk"] is True and st["added"] == ["late.txt"] and st["monitor"] == "not reachable (timed out)", st
