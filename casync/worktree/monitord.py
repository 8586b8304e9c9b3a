"""The file-system monitor daemon (``casync monitor start``) and its life cycle: start it
detached, ask whether it runs, stop it by its PID.  One daemon per work tree; it watches
every directory but ``.casync`` with inotify and answers ``casync.worktree.monitor``
clients over ``.casync/monitor.sock`` (docs/design.md §10.8 has the protocol and why its
"unchanged" is as good as a walk)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from casync.errors import CasyncError, MonitorFailed
from casync.worktree.inotify import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Event,
    Inotify,
    max_user_watches,
)
from casync.worktree.monitor import PROTOCOL, SOCKET_NAME, TOKEN_NAME, Tokens, request

__all__ = ["MonitorInfo", "WatchesExhausted", "running", "start", "stop", "stopped_reason"]

PID_NAME, LOCK_NAME, LOG_NAME, STOPPED_NAME = "monitor.pid", "monitor.lock", "monitor.log", "monitor.stopped"
_CHECK_EVERY = 2.0  # seconds between checks that .casync and our pid file are still there
_MODULE = "casync.worktree.monitord"
_ALREADY = "a monitor already runs for this work tree"


class WatchesExhausted(MonitorFailed):
    """No inotify watch left for a directory: the monitor cannot see the whole tree."""

    def __init__(self, path: str, limit: int | None = None) -> None:
        kernel = max_user_watches()
        what = f"the monitor's --max-watches {limit}" if limit else (
            f"fs.inotify.max_user_watches ({kernel})" if kernel else "fs.inotify.max_user_watches")
        super().__init__(f"out of inotify watches at {path}: {what} is used up",
                         hint="raise it (sudo sysctl fs.inotify.max_user_watches=524288, or a larger "
                              "--max-watches), or stop other watchers; 'casync status' works without the monitor")


@dataclass(frozen=True, slots=True)
class MonitorInfo:
    pid: int
    watches: int
    token: str


# --- the daemon ---------------------------------------------------------------------------


class _Watcher:
    """Every directory of the tree under a watch; events turned into the change counter."""

    def __init__(self, root: Path, max_watches: int | None) -> None:
        self.root = str(root)
        self.inotify = Inotify()
        self.paths: dict[int, str] = {}
        self.max_watches = max_watches
        self.unwatched: set[str] = set()  # directories inotify refused (EACCES): answers are "unknown"
        self.tokens = Tokens(os.urandom(8).hex())
        self.gone = False  # the work tree or its .casync went away: the daemon exits

    def add_tree(self, top: str) -> None:
        """Watch ``top`` and every directory below it.  The watch is added before the
        listing, so a directory made meanwhile is either listed or reported by the watch."""
        stack = [top]
        while stack:
            path = stack.pop()
            try:
                wd = self.inotify.add_watch(path)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise WatchesExhausted(path) from None
                if exc.errno == errno.EACCES:
                    self.unwatched.add(path)
                continue  # ENOENT, ENOTDIR: gone or replaced already; that was an event too
            if wd not in self.paths and self.max_watches is not None and len(self.paths) >= self.max_watches:
                raise WatchesExhausted(path, self.max_watches)  # an inode already watched costs none
            self.paths[wd] = path
            self.unwatched.discard(path)
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False) and not (path == self.root and entry.name == ".casync"):
                            stack.append(entry.path)
            except OSError:
                continue

    def drain(self) -> None:
        """Process every queued event (until the queue reads empty): a consistent cut."""
        while True:
            events = self.inotify.read()
            if not events:
                return
            for event in events:
                self._event(event)

    def _event(self, event: Event) -> None:
        if event.mask & IN_Q_OVERFLOW:  # events were lost: no old token can be judged, new dirs may be unwatched
            self.tokens.overflowed()
            self.add_tree(self.root)
            return
        parent = self.paths.get(event.wd)
        if parent == self.root and event.name == ".casync":
            if event.mask & (IN_DELETE | IN_MOVED_FROM) and not os.path.isdir(os.path.join(self.root, ".casync")):
                self.gone = True
            return
        self.tokens.changed()
        if parent is None:
            return
        if event.mask & IN_IGNORED:
            del self.paths[event.wd]
        elif parent == self.root and not event.name and event.mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            self.gone = True
        elif event.mask & IN_ISDIR and event.mask & (IN_MOVED_TO | IN_CREATE):
            self.add_tree(os.path.join(parent, event.name))  # also renews the paths of a renamed subtree
        elif event.mask & IN_ATTRIB and os.path.join(parent, event.name) in self.unwatched:
            self.add_tree(os.path.join(parent, event.name))  # made readable: watch it now

    def verdict(self, client: str | None) -> str:
        return "unknown" if self.unwatched else self.tokens.verdict(client)


def _answer(watcher: _Watcher, secret: str, line: str) -> str:
    parts = line.split()
    if len(parts) < 3 or parts[0] != PROTOCOL or not _same(parts[1], secret):
        return "denied"
    if parts[2] == "query" and len(parts) == 4:
        watcher.drain()
        if watcher.gone:
            return "gone"
        return f"ok {watcher.tokens.token} {watcher.verdict(None if parts[3] == '-' else parts[3])}"
    if parts[2] == "status":
        return f"status {os.getpid()} {len(watcher.paths)} {watcher.tokens.token}"
    return "unknown-request"


def _same(a: str, b: str) -> bool:
    import hmac
    return hmac.compare_digest(a.encode(), b.encode())


def _serve_one(listener: socket.socket, watcher: _Watcher, secret: str) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(1.0)  # a silent client cannot hold the daemon for long
        data = b""
        try:
            while not data.endswith(b"\n") and len(data) < 4096:
                piece = conn.recv(4096)
                if not piece:
                    break
                data += piece
            conn.sendall((_answer(watcher, secret, data.decode("ascii", "replace")) + "\n").encode())
        except OSError:
            pass


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


def _still_ours(dot: Path, sock_ino: int) -> bool:
    try:
        return (dot / PID_NAME).read_text().strip() == str(os.getpid()) and \
            os.stat(dot / SOCKET_NAME).st_ino == sock_ino
    except (OSError, ValueError):
        return False


def run_daemon(root: Path, max_watches: int | None, out: int) -> int:
    """Set up every watch, bind the socket, say ``ready`` on ``out``, then serve until
    SIGTERM, until the work tree's .casync goes, or until watches run out."""
    import fcntl
    import secrets

    dot = root / ".casync"
    lock = os.open(dot / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.write(out, f"error {_ALREADY}\n".encode())
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(FileNotFoundError):
        (dot / STOPPED_NAME).unlink()
    try:
        watcher = _Watcher(root, max_watches)
        watcher.add_tree(str(root))
    except CasyncError as exc:
        os.write(out, f"error {exc.message}\thint {exc.hint or ''}\n".encode())
        return 1
    except OSError as exc:
        os.write(out, f"error cannot watch the work tree: {exc}\n".encode())
        return 1
    secret = secrets.token_hex(16)
    _write_private(dot / TOKEN_NAME, secret + "\n")
    os.chdir(dot)  # bind by a relative name: no limit from the length of the work tree's path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCKET_NAME)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(SOCKET_NAME)  # created 0600
    finally:
        os.umask(old)
    listener.listen(16)
    sock_ino = os.stat(SOCKET_NAME).st_ino
    _write_private(dot / PID_NAME, f"{os.getpid()}\n")
    os.write(out, f"ready {os.getpid()} {len(watcher.paths)}\n".encode())
    os.close(out)
    try:
        return _loop(dot, watcher, listener, secret, sock_ino)
    except WatchesExhausted as exc:
        _write_private(dot / STOPPED_NAME, f"{exc.message}\n{exc.hint}\n")
        return 1
    finally:
        if _still_ours(dot, sock_ino):
            for name in (SOCKET_NAME, PID_NAME):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dot / name)
        listener.close()


def _loop(dot: Path, watcher: _Watcher, listener: socket.socket, secret: str, sock_ino: int) -> int:
    checked = time.monotonic()
    while not watcher.gone:
        ready, _, _ = select.select([watcher.inotify.fd, listener.fileno()], [], [], _CHECK_EVERY)
        if watcher.inotify.fd in ready:
            watcher.drain()
        if listener.fileno() in ready:
            _serve_one(listener, watcher, secret)
        if time.monotonic() - checked >= _CHECK_EVERY:
            checked = time.monotonic()
            if not dot.is_dir() or not _still_ours(dot, sock_ino):
                return 0
    return 0


def _daemon_main(argv: list[str]) -> int:
    """``python -m casync.worktree.monitord ROOT [MAX_WATCHES]``: fork once more so the
    daemon is no child of the caller (who reaps this process at once), in its own session."""
    root, max_watches = Path(argv[0]).resolve(), int(argv[1]) if len(argv) > 1 and argv[1] != "-" else None
    if os.fork() != 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.dup(1)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    return run_daemon(root, max_watches, out)


# --- life cycle, for the CLI ----------------------------------------------------------------


def running(root: Path) -> MonitorInfo | None:
    """The monitor answering on this work tree's socket, or None."""
    try:
        reply = request(root / ".casync", "status", timeout=2.0).split()
    except (OSError, UnicodeError):
        return None
    if len(reply) != 4 or reply[0] != "status":
        return None
    return MonitorInfo(int(reply[1]), int(reply[2]), reply[3])


def stopped_reason(root: Path) -> str | None:
    """Why the last monitor stopped by itself (watches ran out), or a stale pid file."""
    dot = root / ".casync"
    try:
        return (dot / STOPPED_NAME).read_text().strip().replace("\n", "; hint: ")
    except OSError:
        pass
    pid = _pid_file(dot)
    return f"stale pid file (pid {pid} is no monitor): 'casync monitor start' replaces it" if pid else None


def start(root: Path, max_watches: int | None = None, timeout: float = 300.0) -> tuple[MonitorInfo, bool]:
    """Start the daemon detached (unless one runs); (its info, whether it was started now)."""
    root = root.resolve()
    info = running(root)
    if info is not None:
        return info, False
    dot = root / ".casync"
    _clear_stale(dot, root)
    with open(dot / LOG_NAME, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", _MODULE, str(root), str(max_watches or "-")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, close_fds=True)
    assert proc.stdout is not None
    try:
        line = _read_line(proc.stdout.fileno(), timeout)
    finally:
        proc.stdout.close()
        proc.wait(timeout=30)
    if line.startswith("ready "):
        _, pid, watches = line.split()
        return MonitorInfo(int(pid), int(watches), ""), True
    if line.startswith("error ") and line.endswith(_ALREADY):  # another start won the race
        for _ in range(100):
            info = running(root)
            if info is not None:
                return info, False
            time.sleep(0.05)
    if line.startswith("error "):
        message, _, hint = line[6:].partition("\thint ")
        raise MonitorFailed(message, hint=hint or None)
    raise MonitorFailed("the monitor exited while starting", hint=f"see {dot / LOG_NAME}")


def _read_line(fd: int, timeout: float) -> str:
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        piece = os.read(fd, 4096)
        if not piece:
            break
        data += piece
    return data.decode("utf-8", "replace").strip()


def stop(root: Path, wait: float = 10.0) -> int | None:
    """Stop the monitor by its PID (the one it answers with, else its pid file's when that
    process is this tree's monitor); None when none ran.  Idempotent."""
    root = root.resolve()
    dot = root / ".casync"
    info = running(root)
    pid = info.pid if info is not None else _pid_file(dot)
    if pid is None or not _is_monitor(pid, root):
        _clear_stale(dot, root)
        return None
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, wait):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, wait)
    _clear_stale(dot, root)
    return pid


def _wait_gone(pid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return not _alive(pid)


def _pid_file(dot: Path) -> int | None:
    try:
        return int((dot / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _is_monitor(pid: int, root: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and _MODULE.encode() in args and os.fsencode(str(root)) in args


def _clear_stale(dot: Path, root: Path) -> None:
    """Remove a socket and pid file no live monitor of this tree owns (after kill -9)."""
    pid = _pid_file(dot)
    if pid is not None and _is_monitor(pid, root):
        return
    for name in (SOCKET_NAME, PID_NAME):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dot / name)


if __name__ == "__main__":
    sys.exit(_daemon_main(sys.argv[1:]))
