#!/usr/bin/env python3
"""Sync benchmark: an incremental fetch over ``casync serve`` and merge-base on a big DAG, against git.

Run (from the repository root, inside the venv where casync is installed)::

    python benchmarks/bench_sync.py [--commits 10000] [--dag 100000] [--rounds 5]
                                    [--cap-seconds 300] [--workdir DIR] [--json]

Everything happens in a fresh temporary directory (under ``--workdir``, default the
system temp dir) that is removed at the end.  All traffic stays on 127.0.0.1.

1. Incremental fetch.  Replica A holds ``--commits`` commits; each commit changes one
   small file (about 90 bytes) in a tree of 100 files (10 directories of 10).  The
   history is built directly with ``update_tree`` and hand-made commit objects in one
   writer session, with a single flush.  Replica B is a copy of A made with one
   ``fetch_from`` over ``LocalPeer``, and B's ``main`` points to the fetched tip.  Then,
   ``--rounds`` times: A commits one more change through ``repo.transaction``, and B
   fetches it with ``fetch_from`` and ``HttpPeer``.  The server is
   ``casync.transports.peer.server.serve`` in a thread of this process, and the client talks to it
   through a counting TCP relay on 127.0.0.1.  The relay counts every byte each way
   (HTTP headers, JSON, the zstd CAR stream).  After each fetch, B's ``main``
   fast-forwards.  We record ``FetchResult.round_trips``, the wire bytes and
   ``stats.new_bytes`` (the total length of the blocks B lacked).
   Targets: <= 3 round trips, and wire bytes <= 1.1 x new_bytes + 16 KiB.
   After that, ``--rounds`` more rounds run without the relay, to time the plain HTTP
   fetch.
   Anchor: git on the same history (built with ``git fast-import``; same paths, same
   file contents).  The source repository gets the same one-commit changes.  One bare
   clone fetches them with ``git fetch file://...``; we time that process, and this is
   the time anchor.  A second clone fetches them over ``git://``, from ``git daemon``
   on 127.0.0.1 behind the same counting relay.  That gives git's wire bytes, its
   received pack size (``GIT_TRACE_PACKFILE``, client side only) and its protocol-v2
   commands (``GIT_TRACE_PACKET``).
2. merge-base on a ``--dag``-commit DAG.  The history is made of blocks of 100
   commits: a side branch of 10 commits forks from the main line, the main line goes
   on for 89 commits, and a merge commit joins the two.  All commits share one tree.
   A is the tip plus 3 commits.  B is (i) the tip plus 2 other commits, (ii) one
   commit on the main-line commit 1,000 first-parent steps below the tip, (iii) one
   commit on the root, recorded after the history (as a fetched branch is), or (iv) one
   commit on the root recorded right after the root, before the history: rank and low
   cannot decide it (before rank spans the paint walk covered the whole history, the
   worst case); the tip's spans leave out its rank.
   ``CommitGraph.merge_bases(A, B)`` is timed in a fresh child process, once per case.
   The first call is *cold* (a new process and a new ``CommitGraph``; casync is
   imported beforehand and its import time is reported apart).  The same graph is then
   timed again (*warm*), and new ``CommitGraph`` objects are timed in the warm process
   (*fresh graph*).  Each child is killed after ``--cap-seconds``.
   Target: <= 50 ms.  Anchor: ``git merge-base`` on the same DAG, built with
   fast-import, first without and then with a commit-graph file.  Each git run is a
   process, timed as the median of 5 runs.

Output: a table ``scenario | casync | git | ratio | target | met?``.  ``ratio`` is the git
value divided by the casync value (time or bytes), so higher is better for casync.
With ``--json``, the same data goes to stdout as JSON and the table goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _report import Row, log, rows_table  # benchmarks/_report.py (the script's directory)

from casync.model.cid import DAG_CBOR, Cid, cid_str, compute_cid
from casync.model.commit import Commit, HybridTime, encode_commit
from casync.repo.repository import Repository
from casync.transports.peer.exchange import LocalPeer, fetch_from
from casync.transports.peer.http import HttpPeer
from casync.transports.peer.server import serve
from casync.trees.unixfs import Entry, update_tree

KIB = 1024
TOKEN = "bench-sync-token"
FILES = 100  # files in the tree of scenario 1: d0/f0.txt .. d9/f9.txt
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}
GIT_CONFIG = ("-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "protocol.version=2")
GIT_EPOCH = 1_700_000_000


# --- results -----------------------------------------------------------------------------------


def human(n: float) -> str:
    return f"{n / KIB:.2f} KiB" if n >= KIB else f"{int(n)} B"


def ms(s: float) -> str:
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def ratio(git: float | None, casync: float) -> str:
    return f"{git / casync:.2f}x" if git is not None and casync > 0 else "-"


def render(rows: Sequence[Row]) -> str:
    out = rows_table(rows)
    out += ["", "ratio = git value / casync value (time or bytes; higher is better for casync)."]
    return "\n".join(out)


# --- a counting TCP relay ----------------------------------------------------------------------


class CountingRelay:
    """Listens on 127.0.0.1 and relays each connection to ``upstream``, counting the
    bytes it forwards each way (a byte is counted before it is forwarded, so when the
    client has read a reply every byte of it has been counted)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self.up = self.down = self.connections = 0
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = self.connections = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"up": self.up, "down": self.down, "total": self.up + self.down,
                    "connections": self.connections}

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=60)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
            done = [0]
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, client, server, done),
                                 name="relay-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, a: socket.socket, b: socket.socket,
              done: list[int]) -> None:
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                done[0] += 1
                last = done[0] == 2
            if last:
                a.close()
                b.close()

    def close(self) -> None:
        self._sock.close()


# --- scenario 1: the shared history ------------------------------------------------------------


def file_path(j: int) -> str:
    return f"d{j // 10}/f{j % 10}.txt"


def file_content(j: int, version: int) -> bytes:
    """About 90 bytes of text, different for every (file, version)."""
    digest = hashlib.sha256(f"{j}:{version}".encode()).hexdigest()
    return f"{file_path(j)} version {version} {digest}\n".encode()


def history_change(i: int) -> dict[str, bytes]:
    """What commit ``i`` of the shared history writes: every file first, then one per commit."""
    if i == 0:
        return {file_path(j): file_content(j, 0) for j in range(FILES)}
    return {file_path(i % FILES): file_content(i % FILES, i)}


def build_casync_history(repo: Repository, n: int) -> Cid:
    """``n`` commits on ``main``, written in one writer session with one flush.  Commit
    objects are built as ``make_commit`` builds them (single replica: clock = generation)
    but without its per-commit LMDB write of the HLC; the commit-graph rows are written once
    at the end, as a commit leaves them (a peer that serves them reads the table, not commits)."""
    base_ms = int(time.time() * 1000) - n - 60_000
    tree: Cid | None = None
    parent: Cid | None = None
    with repo.store.writer_lock():
        for i in range(n):
            changes: dict[str, Entry | None] = {
                path: repo.new_file_writer().write(io.BytesIO(data)) for path, data in history_change(i).items()}
            tree = update_tree(repo.blocks, tree, changes, repo.hash_name).cid
            commit = Commit(tree=tree, parents=(parent,) if parent else (), clock={repo.replica: i + 1},
                            time=HybridTime(base_ms + i, 0), replica=repo.replica, author="casync-bench",
                            message=f"commit {i}", generation=i + 1)
            block = encode_commit(commit)
            parent = compute_cid(DAG_CBOR, block, repo.hash_name)
            repo.blocks.put(parent, block)
            repo.graph.remember(parent, commit)  # as a commit does: its commit-graph row
        repo.blocks.flush()
        repo.graph.save()
        assert parent is not None
        repo.update_branch("main", None, parent, "bench history")
    return parent


def fast_import_history(n: int) -> bytes:
    out = io.BytesIO()
    for i in range(n):
        msg = f"commit {i}\n".encode()
        out.write(b"commit refs/heads/main\n")
        out.write(f"committer casync-bench <bench@localhost> {GIT_EPOCH + i} +0000\n".encode())
        out.write(b"data %d\n%s" % (len(msg), msg))
        for path, data in history_change(i).items():
            out.write(f"M 100644 inline {path}\n".encode())
            out.write(b"data %d\n%s\n" % (len(data), data))
        out.write(b"\n")
    return out.getvalue()


def fast_import_one(path: str, data: bytes, when: int, msg: str) -> bytes:
    m = msg.encode() + b"\n"
    return (b"commit refs/heads/main\n"
            + f"committer casync-bench <bench@localhost> {when} +0000\n".encode()
            + b"data %d\n%s" % (len(m), m) + b"from refs/heads/main^0\n"
            + f"M 100644 inline {path}\n".encode() + b"data %d\n%s\n\n" % (len(data), data))


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: bytes | None = None
        ) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["git", *GIT_CONFIG, *args], cwd=cwd, input=stdin, capture_output=True,
                          env={**os.environ, **GIT_ENV, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc


def timed_git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    git(*args, cwd=cwd, env=env)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[int]:
    """``git daemon`` on 127.0.0.1 exporting repositories under ``base``; yields its port."""
    for _attempt in range(5):
        port = free_port()
        proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                                 "--listen=127.0.0.1", f"--port={port}", str(base)],
                                env={**os.environ, **GIT_ENV}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        else:
            proc.kill()
            proc.wait()
            continue
        try:
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise RuntimeError("git daemon did not start on 127.0.0.1")


def scenario_fetch(base: Path, n: int, rounds: int) -> list[Row]:
    # --- casync ------------------------------------------------------------------------------
    log(f"[1] casync: building {n} commits ({FILES}-file tree, one file changed per commit)")
    a = Repository.init(base / "a", replica="a", bare=True)
    t0 = time.perf_counter()
    tip = build_casync_history(a, n)
    build_s = time.perf_counter() - t0
    log(f"    built in {build_s:.1f} s; tip {cid_str(tip)[:20]}")
    b = Repository.init(base / "b", replica="b", repository_id=a.repo_id, bare=True)
    local = LocalPeer(str(a.root))
    t0 = time.perf_counter()
    first = fetch_from(b, local, "origin")
    clone_s = time.perf_counter() - t0
    local.close()
    b.update_branch("main", None, tip, "track origin/main")
    b.close()
    log(f"    initial copy over LocalPeer: {clone_s:.1f} s, {len(first.stats.commits)} commits, "
        f"{first.stats.new_blocks} blocks, {human(first.stats.new_bytes)}")

    server = serve(a, TOKEN.encode())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    relay = CountingRelay(("127.0.0.1", int(server.server_address[1])))
    casync_rounds: list[dict[str, Any]] = []
    process_s: list[float] = []
    version = n
    try:
        for r in range(2 * rounds):
            via_relay = r < rounds
            j = version % FILES
            with a.transaction(branch="main", message=f"round {r}") as tx:
                tx.write(file_path(j), file_content(j, version))
            version += 1
            new_tip = a.refs.get_ref("heads/main")
            port = relay.port if via_relay else int(server.server_address[1])
            peer = HttpPeer(f"http://127.0.0.1:{port}", TOKEN)
            relay.reset()
            with Repository.open(base / "b", search_parents=False) as b:  # as a new `casync sync` would
                t0 = time.perf_counter()
                res = fetch_from(b, peer, "origin")
                seconds = time.perf_counter() - t0
                wire = relay.snapshot()
                got = b.refs.get_ref("remotes/origin/main")
                if got != new_tip:
                    raise RuntimeError("casync fetch did not bring the new commit")
                b.update_branch("main", b.refs.get_ref("heads/main"), got, "fast-forward")
            casync_rounds.append({"via_relay": via_relay, "seconds": seconds, "round_trips": res.round_trips,
                                  "commits": len(res.stats.commits), "blocks": res.stats.blocks,
                                  "bytes": res.stats.bytes, "new_blocks": res.stats.new_blocks,
                                  "new_bytes": res.stats.new_bytes, **({"wire": wire} if via_relay else {})})
            log(f"    round {r + 1}{' (relay)' if via_relay else ' (direct)'}: {ms(seconds)}, "
                f"{res.round_trips} round trips, {res.stats.new_blocks} new blocks / {human(res.stats.new_bytes)}"
                + (f", wire {human(wire['total'])} (up {wire['up']} B, down {wire['down']} B, "
                   f"{wire['connections']} connections)" if via_relay else ""))
        # whole processes, as a site's cron or agent would run it: `casync fetch URL`
        for r in range(rounds):
            j = version % FILES
            with a.transaction(branch="main", message=f"process round {r}") as tx:
                tx.write(file_path(j), file_content(j, version))
            version += 1
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "casync", "-C", str(base / "b"), "-q", "fetch",
                            f"http://127.0.0.1:{server.server_address[1]}"], check=True, capture_output=True,
                           env={**os.environ, "CASYNC_TOKEN": TOKEN})
            process_s.append(time.perf_counter() - t0)
            log(f"    round {r + 1} (casync fetch, whole process): {ms(process_s[-1])}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        relay.close()
        a.close()

    # --- git ---------------------------------------------------------------------------------
    log(f"[1] git: fast-import of the same {n} commits")
    src, c1, c2 = base / "src.git", base / "c1.git", base / "c2.git"
    git("init", "-q", "--bare", "-b", "main", str(src))
    t0 = time.perf_counter()
    git("fast-import", "--quiet", cwd=src, stdin=fast_import_history(n))
    git_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    git("clone", "-q", "--bare", "--no-local", f"file://{src}", str(c1))
    git_clone_s = time.perf_counter() - t0
    git("clone", "-q", "--bare", "--no-local", f"file://{src}", str(c2))
    log(f"    built in {git_build_s:.1f} s; clone --no-local {git_clone_s:.2f} s")
    git_rounds: list[dict[str, Any]] = []
    refspec = "+refs/heads/*:refs/remotes/origin/*"
    with git_daemon(base) as dport:
        relay = CountingRelay(("127.0.0.1", dport))
        try:
            for r in range(rounds):
                j = (n + r) % FILES
                git("fast-import", "--quiet", cwd=src,
                    stdin=fast_import_one(file_path(j), file_content(j, n + r), GIT_EPOCH + n + r, f"round {r}"))
                new_tip = git("rev-parse", "refs/heads/main", cwd=src).stdout.decode().strip()
                file_s = timed_git("fetch", "-q", "--no-tags", f"file://{src}", refspec, cwd=c1)
                packet_log, pack_log = base / f"packet-{r}.log", base / f"pack-{r}.pack"
                relay.reset()
                t0 = time.perf_counter()
                git("fetch", "-q", "--no-tags", f"git://127.0.0.1:{relay.port}/src.git", refspec, cwd=c2,
                    env={"GIT_TRACE_PACKET": str(packet_log), "GIT_TRACE_PACKFILE": str(pack_log)})
                daemon_s = time.perf_counter() - t0
                wire = relay.snapshot()
                trace = packet_log.read_text(errors="replace")
                commands = re.findall(r"> command=(\S+)", trace)
                for repo in (c1, c2):
                    got = git("rev-parse", "refs/remotes/origin/main", cwd=repo).stdout.decode().strip()
                    if got != new_tip:
                        raise RuntimeError("git fetch did not bring the new commit")
                    git("update-ref", "refs/heads/main", got, cwd=repo)
                pack = pack_log.stat().st_size if pack_log.exists() else 0
                objects = int.from_bytes(pack_log.read_bytes()[8:12], "big") if pack >= 12 else 0
                git_rounds.append({"file_seconds": file_s, "git_seconds": daemon_s, "wire": wire,
                                   "commands": commands, "pack_bytes": pack, "pack_objects": objects})
                log(f"    round {r + 1}: file:// {ms(file_s)}; git:// {ms(daemon_s)}, commands {commands}, "
                    f"wire {human(wire['total'])} (up {wire['up']} B, down {wire['down']} B, "
                    f"{wire['connections']} connections), pack {pack} B / {objects} objects")
        finally:
            relay.close()

    # --- rows --------------------------------------------------------------------------------
    relayed = [x for x in casync_rounds if x["via_relay"]]
    direct = [x for x in casync_rounds if not x["via_relay"]]
    worst_rt = max(x["round_trips"] for x in relayed)
    budget = [1.1 * x["new_bytes"] + 16 * KIB for x in relayed]
    wire_ok = all(x["wire"]["total"] <= lim for x, lim in zip(relayed, budget, strict=True))
    med = {k: statistics.median(x["wire"][k] for x in relayed) for k in ("total", "up", "down")}
    new_bytes = statistics.median(x["new_bytes"] for x in relayed)
    new_blocks = statistics.median(x["new_blocks"] for x in relayed)
    g_wire = {k: statistics.median(x["wire"][k] for x in git_rounds) for k in ("total", "up", "down")}
    g_pack = statistics.median(x["pack_bytes"] for x in git_rounds)
    g_objs = statistics.median(x["pack_objects"] for x in git_rounds)
    g_cmds = max(x["commands"] for x in git_rounds)
    t_relay = statistics.median(x["seconds"] for x in relayed)
    t_direct = statistics.median(x["seconds"] for x in direct)
    g_file = statistics.median(x["file_seconds"] for x in git_rounds)
    g_daemon = statistics.median(x["git_seconds"] for x in git_rounds)
    label = f"1. fetch 1 new commit on {n} commits"
    rows = [
        Row(f"{label}: round trips (worst of {rounds})", str(worst_rt),
            f"{1 + len(g_cmds)} (connect, {', '.join(g_cmds)})", "-", "<= 3", worst_rt <= 3,
            {"casync": [x["round_trips"] for x in relayed], "git_commands": [x["commands"] for x in git_rounds]}),
        Row(f"{label}: wire bytes, both ways (median)",
            f"{human(med['total'])} (up {human(med['up'])}, down {human(med['down'])})",
            f"{human(g_wire['total'])} (up {human(g_wire['up'])}, down {human(g_wire['down'])}; git://)",
            ratio(g_wire["total"], med["total"]),
            f"<= 1.1 x new + 16 KiB = {human(statistics.median(budget))}", wire_ok,
            {"casync": [x["wire"] for x in relayed], "casync_budget": budget,
             "git": [x["wire"] for x in git_rounds]}),
        Row(f"{label}: data B lacked (median)", f"{new_blocks:g} new blocks, {human(new_bytes)}",
            f"pack {human(g_pack)}, {g_objs:g} objects", "-", "-", None,
            {"casync_new_bytes": [x["new_bytes"] for x in relayed],
             "casync_new_blocks": [x["new_blocks"] for x in relayed],
             "git_pack_bytes": [x["pack_bytes"] for x in git_rounds]}),
        Row(f"{label}: wall time (median)", f"{ms(t_direct)} (relay: {ms(t_relay)})",
            f"{ms(g_file)} (file://; git://: {ms(g_daemon)})", ratio(g_file, t_direct), "-", None,
            {"casync_direct_s": [x["seconds"] for x in direct], "casync_relay_s": [x["seconds"] for x in relayed],
             "git_file_s": [x["file_seconds"] for x in git_rounds],
             "git_daemon_s": [x["git_seconds"] for x in git_rounds]}),
        Row(f"{label}: casync fetch, whole process (median)", ms(statistics.median(process_s)),
            f"{ms(g_file)} (git fetch file://)", ratio(g_file, statistics.median(process_s)), "<= 200 ms",
            statistics.median(process_s) <= 0.2, {"casync_s": process_s}),
        Row(f"1. setup: build {n} commits", ms(build_s), f"{ms(git_build_s)} (fast-import)", "-", "-", None,
            {"casync_s": build_s, "git_s": git_build_s}),
        Row("1. setup: initial copy (LocalPeer / clone --no-local)", ms(clone_s), ms(git_clone_s),
            ratio(git_clone_s, clone_s), "<= git clone", clone_s <= git_clone_s,
            {"casync_s": clone_s, "git_s": git_clone_s, "casync_blocks": first.stats.new_blocks,
             "casync_bytes": first.stats.new_bytes}),
    ]
    return rows


# --- scenario 2: merge-base --------------------------------------------------------------------


@dataclass
class DagSpec:
    parents: list[tuple[int, ...]]
    main: list[int]  # first-parent chain of the main line, root first
    cases: dict[str, tuple[int, int, int]]  # name -> (a, b, expected merge base)


def dag_spec(n: int) -> DagSpec:
    parents: list[tuple[int, ...]] = []

    def add(*ps: int) -> int:
        parents.append(ps)
        return len(parents) - 1

    root = add()
    b_early = add(root)  # case (iv): recorded before the whole history
    main = [root]
    tip = root
    while len(parents) + 100 <= n:
        side = tip
        for _ in range(10):
            side = add(side)
        m = tip
        for _ in range(89):
            m = add(m)
            main.append(m)
        tip = add(m, side)
        main.append(tip)
    while len(parents) < n - 7:  # the 7 commits added below make exactly n
        tip = add(tip)
        main.append(tip)
    a = tip
    for _ in range(3):
        a = add(a)
    b_near = add(add(tip))
    fork = main[max(0, len(main) - 1 - 1000)]
    b_back = add(fork)
    b_root = add(root)
    cases = {"(i) 3+2 commits on the tip": (a, b_near, tip),
             f"(ii) diverged {len(main) - 1 - main.index(fork)} first-parent commits back": (a, b_back, fork),
             "(iii) diverged at the root, branch recorded last": (a, b_root, root),
             "(iv) diverged at the root, branch recorded first (worst case)": (a, b_early, root)}
    return DagSpec(parents, main, cases)


def build_casync_dag(repo: Repository, spec: DagSpec) -> list[Cid]:
    """Every commit of ``spec`` (one shared one-file tree), one writer session, one flush."""
    base_ms = int(time.time() * 1000) - len(spec.parents) - 60_000
    cids: list[Cid] = []
    gens: list[int] = []
    with repo.store.writer_lock():
        readme = repo.new_file_writer().write(io.BytesIO(b"one tree for every commit\n"))
        tree = update_tree(repo.blocks, None, {"README": readme}, repo.hash_name).cid
        for i, ps in enumerate(spec.parents):
            gen = 1 + max((gens[p] for p in ps), default=0)
            commit = Commit(tree=tree, parents=tuple(cids[p] for p in ps), clock={repo.replica: gen},
                            time=HybridTime(base_ms + i, 0), replica=repo.replica, author="casync-bench",
                            message=f"c{i}", generation=gen)
            block = encode_commit(commit)
            cid = compute_cid(DAG_CBOR, block, repo.hash_name)
            repo.blocks.put(cid, block)
            repo.graph.remember(cid, commit)  # as make_commit and the receivers do
            cids.append(cid)
            gens.append(gen)
        repo.blocks.flush()
        repo.graph.save()  # the commit-graph table (generation, time, parents per commit)
    return cids


def build_git_dag(path: Path, spec: DagSpec) -> list[str]:
    out = io.BytesIO()
    for i, ps in enumerate(spec.parents):
        out.write(b"commit refs/heads/dag\nmark :%d\n" % (i + 1))
        out.write(f"committer casync-bench <bench@localhost> {GIT_EPOCH + i} +0000\n".encode())
        msg = b"c%d\n" % i
        out.write(b"data %d\n%s" % (len(msg), msg))
        if ps:
            out.write(b"from :%d\n" % (ps[0] + 1))
        for p in ps[1:]:
            out.write(b"merge :%d\n" % (p + 1))
        out.write(b"\n")
    marks = path / "marks"
    git("init", "-q", "--bare", "-b", "dag", str(path))
    git("fast-import", "--quiet", f"--export-marks={marks}", cwd=path, stdin=out.getvalue())
    shas = [""] * len(spec.parents)
    for line in marks.read_text().splitlines():
        mark, sha = line.split()
        shas[int(mark[1:]) - 1] = sha
    return shas


CHILD = """\
import json, sys, time
t0 = time.perf_counter()
from casync.history.graph import CommitGraph
from casync.model.cid import cid_str, parse_cid
from casync.repo.repository import Repository
import_s = time.perf_counter() - t0
path, a, b, reps = sys.argv[1], parse_cid(sys.argv[2]), parse_cid(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
repo = Repository.open(path, search_parents=False)
open_s = time.perf_counter() - t0
graph = CommitGraph(repo.load_commit, repo.store)
t0 = time.perf_counter()
bases = graph.merge_bases(a, b)
cold = time.perf_counter() - t0
loaded = len(graph._nodes)  # commits visited (from the table; none decoded)
warm = []
for _ in range(reps):
    t0 = time.perf_counter()
    graph.merge_bases(a, b)
    warm.append(time.perf_counter() - t0)
fresh = []
for _ in range(max(1, reps // 2)):
    g = CommitGraph(repo.load_commit, repo.store)
    t0 = time.perf_counter()
    g.merge_bases(a, b)
    fresh.append(time.perf_counter() - t0)
print(json.dumps({"bases": [cid_str(c) for c in bases], "cold_s": cold, "warm_s": warm, "fresh_graph_s": fresh,
                  "commits_loaded": loaded, "import_casync_s": import_s, "open_s": open_s}))
"""


def scenario_merge_base(base: Path, n: int, cap: float) -> list[Row]:
    spec = dag_spec(n)
    total = len(spec.parents)
    merges = sum(1 for ps in spec.parents if len(ps) > 1)
    log(f"[2] casync: building a {total}-commit DAG ({merges} merges)")
    repo = Repository.init(base / "dag", replica="r", bare=True)
    t0 = time.perf_counter()
    cids = build_casync_dag(repo, spec)
    build_s = time.perf_counter() - t0
    repo.close()
    log(f"    built in {build_s:.1f} s")
    log("[2] git: fast-import of the same DAG")
    t0 = time.perf_counter()
    shas = build_git_dag(base / "dag.git", spec)
    git_build_s = time.perf_counter() - t0
    log(f"    built in {git_build_s:.1f} s")

    results: dict[str, dict[str, Any]] = {}
    for name, (a, b, expect) in spec.cases.items():
        reps = 2 if "root" in name else 5
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(base / "dag"), cid_str(cids[a]), cid_str(cids[b]),
                                   str(reps)], capture_output=True, timeout=cap)
        except subprocess.TimeoutExpired:
            results[name] = {"timeout": True, "cap_s": cap}
            log(f"    casync {name}: over the {cap:g} s cap")
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"merge-base child failed: {proc.stderr.decode(errors='replace')}")
        res = json.loads(proc.stdout)
        res["child_wall_s"] = time.perf_counter() - t0
        res["correct"] = res["bases"] == [cid_str(cids[expect])]
        results[name] = res
        log(f"    casync {name}: cold {ms(res['cold_s'])}, warm {ms(min(res['warm_s']))}, "
            f"fresh graph {ms(min(res['fresh_graph_s']))}, {res['commits_loaded']} commits loaded, "
            f"correct={res['correct']}")

    git_dir = base / "dag.git"

    def git_mb(a: int, b: int, expect: int) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = git("merge-base", shas[a], shas[b], cwd=git_dir).stdout.decode().strip()
            times.append(time.perf_counter() - t0)
            if out != shas[expect]:
                raise RuntimeError(f"git merge-base gave {out}, expected {shas[expect]}")
        return statistics.median(times)

    git_plain = {name: git_mb(*case) for name, case in spec.cases.items()}
    git("commit-graph", "write", "--reachable", cwd=git_dir)
    git_cg = {name: git_mb(*case) for name, case in spec.cases.items()}
    for name in spec.cases:
        log(f"    git {name}: {ms(git_plain[name])} (with commit-graph {ms(git_cg[name])})")

    rows: list[Row] = [Row(f"2. setup: build a {total}-commit DAG ({merges} merges)", ms(build_s),
                           f"{ms(git_build_s)} (fast-import)", "-", "-", None,
                           {"casync_s": build_s, "git_s": git_build_s, "commits": total, "merges": merges})]
    for name in spec.cases:
        res = results[name]
        g, gcg = git_plain[name], git_cg[name]
        git_text = f"{ms(g)} (commit-graph: {ms(gcg)})"
        if res.get("timeout"):
            rows.append(Row(f"2. merge-base {name}: cold", f"> {cap:g} s (cap)", git_text, "-", "<= 50 ms", False,
                            {"timeout": True, "git_s": g, "git_commit_graph_s": gcg}))
            continue
        note = "" if res["correct"] else " WRONG RESULT"
        cold, warm = res["cold_s"], min(res["warm_s"])
        rows.append(Row(f"2. merge-base {name}: cold (fresh process)",
                        f"{ms(cold)}, {res['commits_loaded']} commits visited{note}", git_text, ratio(g, cold),
                        "<= 50 ms", cold <= 0.05 and res["correct"], {**res, "git_s": g, "git_commit_graph_s": gcg}))
        rows.append(Row(f"2. merge-base {name}: warm / fresh graph",
                        f"{ms(warm)} / {ms(min(res['fresh_graph_s']))}", "-", "-", "<= 50 ms",
                        warm <= 0.05 and res["correct"], {}))
    return rows


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--commits", type=int, default=10000, help="shared history for scenario 1 (default 10000)")
    p.add_argument("--dag", type=int, default=100000, help="commits in the merge-base DAG (default 100000)")
    p.add_argument("--rounds", type=int, default=5, help="one-commit fetches per variant (default 5)")
    p.add_argument("--cap-seconds", type=float, default=300.0,
                   help="kill a merge-base child after this long (default 300)")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default: system temp)")
    p.add_argument("--json", action="store_true", help="JSON results on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    if args.commits < 2 or args.dag < 1200 or args.rounds < 1:
        p.error("need --commits >= 2, --dag >= 1200 and --rounds >= 1")
    if shutil.which("git") is None:
        sys.exit("error: git not found on PATH")

    base = Path(tempfile.mkdtemp(prefix="casync-bench-sync-", dir=args.workdir))
    log(f"working in {base}")
    started = dt.datetime.now().astimezone()
    rows: list[Row] = []
    try:
        rows += scenario_fetch(base, args.commits, args.rounds)
        rows += scenario_merge_base(base, args.dag, args.cap_seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    text = render(rows)
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps({
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "git": git_version},
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
        }, indent=2))
    else:
        print(f"casync sync benchmark, {started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, {git_version}\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
