"""The file-system monitor's protocol and tokens, and the client ``status`` uses (as git's
fsmonitor): a daemon (``casync.worktree.monitord``) watches every directory of the work tree
with inotify and answers, over a Unix socket in ``.casync/``, whether anything changed since
a token it handed out.  ``status`` stores the token it got *before* a walk that found the
tree clean, and next time skips the walk when the daemon says nothing changed since.

This side imports only the C ``_socket`` module, and only when a monitor runs (``status`` pays
for every import); docs/design.md §10.8 is the argument that a clean answer from it is as true
as a walk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casync.model.cid import Cid, cid_str
from casync.repo.repository import Repository

__all__ = ["PROTOCOL", "SOCKET_NAME", "TIMEOUT", "TOKEN_NAME", "Answer", "Tokens", "ask", "known_clean",
           "remember", "request", "socket_path"]

PROTOCOL = "casync-monitor-1"
SOCKET_NAME = "monitor.sock"
TOKEN_NAME = "monitor.token"  # the shared secret (0600) a client must send
TIMEOUT = 0.5  # seconds: a monitor slower than this is not used (status walks instead)
_RECORD_KEY = b"monitor_clean"  # meta: the token and what the clean walk after it found
_UNIX_PATH_MAX = 107


class Tokens:
    """The daemon's change counter and the verdict on a client's token (pure).

    A token is ``<instance>:<seq>``: ``seq`` counts the changes seen by this daemon, whose
    ``instance`` is new at every start and after every queue overflow (events were lost, so
    no earlier token can be judged)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.seq = 0
        self._epoch = 0

    @property
    def token(self) -> str:
        return f"{self.instance}.{self._epoch}:{self.seq}"

    def changed(self) -> None:
        self.seq += 1

    def overflowed(self) -> None:
        self._epoch += 1
        self.seq = 0

    def verdict(self, client: str | None) -> str:
        """``unchanged`` when nothing changed since ``client`` was handed out, ``changed``
        when something did, ``unknown`` when this instance never issued it."""
        if not client:
            return "unknown"
        where, _, seq = client.rpartition(":")
        if where != f"{self.instance}.{self._epoch}" or not seq.isdigit() or int(seq) > self.seq:
            return "unknown"
        return "unchanged" if int(seq) == self.seq else "changed"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the monitor said: ``token`` (None when it was not reached) and ``verdict`` on the
    stored token, or ``why`` it could not be used."""

    token: str | None
    verdict: str
    why: str


def socket_path(dot: Path) -> Path:
    return dot / SOCKET_NAME


def request(dot: Path, line: str, timeout: float = TIMEOUT) -> str:
    """Send one request line (the secret is prepended) and return the answer line; OSError
    when no monitor answers."""
    with open(dot / TOKEN_NAME, encoding="ascii") as f:
        secret = f.read().strip()
    path = str(socket_path(dot))
    if len(path.encode()) > _UNIX_PATH_MAX:
        raise OSError(f"the socket path is longer than a Unix socket allows: {path}")
    import _socket  # the C module (socket.py's enum set-up costs 1-10 ms); only when a monitor runs

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"{PROTOCOL} {secret} {line}\n".encode())
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            piece = s.recv(4096)
            if not piece:
                break
            data += piece
    finally:
        s.close()
    return data.decode("ascii", "replace").strip()


def _record(repo: Repository) -> dict[str, Any] | None:
    raw = repo.store.get("meta", _RECORD_KEY)
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def ask(repo: Repository) -> Answer:
    """Ask the work tree's monitor about the token of the last clean status; never raises
    (no monitor, a stale socket, a timeout: the answer says why and ``status`` walks)."""
    dot = repo.root / ".casync"
    if not os.path.exists(socket_path(dot)):
        return Answer(None, "unknown", "not running")
    record = _record(repo)
    stored = record.get("token") if record else None
    try:
        reply = request(dot, f"query {stored if isinstance(stored, str) and stored else '-'}").split()
    except (OSError, UnicodeError) as exc:
        return Answer(None, "unknown", f"not reachable ({exc.strerror or exc})" if isinstance(exc, OSError)
                      else "not reachable")
    if len(reply) != 3 or reply[0] != "ok" or reply[2] not in ("unchanged", "changed", "unknown"):
        return Answer(None, "unknown", f"unexpected answer {' '.join(reply)[:80]!r}")
    why = {"unchanged": "nothing changed since the last clean status", "changed": "changed since the last clean status",
           "unknown": "no earlier token of this monitor (first use, restarted or events lost)"}[reply[2]]
    return Answer(reply[1], reply[2], why)


def known_clean(repo: Repository, answer: Answer, tree: Cid) -> tuple[list[str], list[str]] | None:
    """The (skipped, ignored_tracked) lists of the last clean status, if it still holds:
    nothing changed on disk since its token, and the checked-out tree and the stat cache are
    the ones it was found clean against."""
    if answer.verdict != "unchanged":
        return None
    record = _record(repo)
    digest = repo.store.stat_cache_digest()
    if (record is None or digest is None or record.get("token") != answer.token
            or record.get("tree") != cid_str(tree) or record.get("digest") != digest.hex()):
        return None
    skipped, ignored = record.get("skipped"), record.get("ignored_tracked")
    if not (isinstance(skipped, list) and isinstance(ignored, list)):
        return None
    return [str(s) for s in skipped], [str(p) for p in ignored]


def remember(repo: Repository, answer: Answer, tree: Cid, skipped: list[str], ignored: list[str]) -> None:
    """After a clean walk: store the token obtained *before* it, with what it found, when
    no writer is busy (never wait; a missed record only costs the next status a walk)."""
    digest = repo.store.stat_cache_digest()
    if answer.token is None or digest is None:
        return
    value = {"token": answer.token, "tree": cid_str(tree), "digest": digest.hex(), "skipped": skipped,
             "ignored_tracked": ignored}
    if _record(repo) == value:
        return
    with repo.store.try_writer_lock() as locked:
        if locked:
            repo.store.put("meta", _RECORD_KEY, json.dumps(value).encode())
