"""A TCP proxy on a loopback port that injects network faults between casync and a server
(Kubo's RPC API, ``casync serve``), at a set rate per request and from a seeded generator.

A *request* starts when the client sends after the server last answered (or on a new
connection), so HTTP keep-alive connections get one roll per request.  Kinds:

* ``drop``: the connection is closed before the request is passed on (the client sees its
  connection closed before any reply, as after a refused or dead link);
* ``delay``: the request waits 10–150 ms before it is passed on;
* ``truncate``: the request goes through, the reply is cut after 1–4,096 bytes and the
  connection closed (counted only when the reply was that long);
* ``reset``: the connection is reset (RST) either mid-request or at the first reply bytes,
  when the server may already have acted on the request.

Every thread and socket it starts is stopped by :meth:`FaultProxy.close` (or ``with``).
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType

__all__ = ["KINDS", "FaultProxy"]

KINDS = ("drop", "delay", "truncate", "reset")


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], rate: float = 0.1, seed: int = 0,
                 kinds: tuple[str, ...] = KINDS, *, only: bytes | None = None, limit: int | None = None,
                 reset_at: str | None = None, cut: int | None = None) -> None:
        """``only``: fault only requests starting with these bytes (e.g. ``b"POST /v1/push"``);
        ``limit``: at most this many faults; ``reset_at``: ``"request"`` or ``"reply"`` instead of
        either at random; ``cut``: truncate replies after this many bytes."""
        self.upstream = upstream
        self.rate = rate
        self.kinds = kinds
        self.only = only
        self.limit = limit
        self.reset_at = reset_at
        self.cut = cut
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self._rng = random.Random(seed)
        self._pending = 0  # faults rolled, not yet counted
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._live: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._accepting = threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def faults(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def summary(self) -> str:
        with self._lock:
            kinds = ", ".join(f"{k} {self.counts[k]}" for k in KINDS)
            return f"{self.requests} requests, {sum(self.counts.values())} faults ({kinds})"

    def close(self) -> None:
        self._stop.set()
        self._accepting.join(5)
        self._listener.close()
        with self._lock:
            for s in list(self._live):
                _close(s)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._pipe, args=(client,), name="faultproxy-pipe", daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _roll(self, head: bytes) -> tuple[str | None, int, float]:
        """The fault for the next request, and its parameters (cut length, delay), seeded."""
        with self._lock:
            self.requests += 1
            hit = self._rng.random() < self.rate
            if self.only is not None and not head.startswith(self.only):
                hit = False
            if self.limit is not None and sum(self.counts.values()) + self._pending >= self.limit:
                hit = False
            self._pending += hit
            kind = self._rng.choice(self.kinds) if hit else None
            cut = self._rng.randint(1, 4096)
            return kind, self.cut or cut, self._rng.uniform(0.01, 0.15)

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            self._pending -= 1

    def _pipe(self, client: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._live |= {client, up}
        try:
            self._relay(client, up)
        except (OSError, ValueError):  # a socket closed under select by close()
            pass
        finally:
            with self._lock:
                self._live -= {client, up}
            _close(client)
            _close(up)

    def _relay(self, client: socket.socket, up: socket.socket) -> None:
        answered, fault, cut, reset_early = True, None, 0, False
        while not self._stop.is_set():
            ready, _, _ = select.select([client, up], [], [], 0.2)
            if client in ready:
                data = client.recv(1 << 16)
                if not data:
                    return
                if answered:  # a new request on this connection
                    answered = False
                    fault, cut, delay = self._roll(data)
                    reset_early = self.reset_at == "request" if self.reset_at else cut % 2 == 0
                    if fault == "drop":
                        self._count("drop")
                        return
                    if fault == "delay":
                        self._count("delay")
                        time.sleep(delay)
                        fault = None
                up.sendall(data)
                if fault == "reset" and reset_early:
                    self._count("reset")
                    _reset(client)
                    return
            if up in ready:
                data = up.recv(1 << 16)
                if not data:
                    return
                answered = True
                if fault == "reset":
                    self._count("reset")
                    _reset(client)
                    return
                if fault == "truncate":
                    if len(data) >= cut:
                        client.sendall(data[:cut])
                        self._count("truncate")
                        return
                    cut -= len(data)
                client.sendall(data)


def _reset(s: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, zero timeout)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(s)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.close()
