"""A real headless browser for tests: Debian's ``chromium`` (installed by .ci/install-chromium.sh).

``chromium_render(url, png)`` loads one loopback URL and returns the DOM after scripts ran and a
screenshot.  Chromium is kept off the network: background services are switched off, host names
resolve to nothing, and every request not for loopback goes to a trap proxy on 127.0.0.1 that
records it and answers nothing, so a page (or chromium itself) reaching out is seen, not just
hoped against.  ``read_png`` decodes the screenshot with the standard library (zlib), so tests can
look at pixels without Pillow."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

__all__ = ["Png", "Visit", "chromium_binary", "chromium_render", "chromium_visit", "read_png"]

# Off: everything chromium does by itself that could open a connection.
_QUIET_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-color-profile=srgb",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad",
    "--disable-crash-reporter", "--metrics-recording-only", "--safebrowsing-disable-auto-update",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,"
    "NetworkTimeServiceQuerying,OptimizationGuideModelDownloading,MediaEngagementBypassAutoplayPolicies",
    "--disable-field-trial-config", "--disable-component-extensions-with-background-pages", "--no-pings",
    "--disable-search-engine-choice-screen", "--disable-dev-shm-usage",
    # Debian's build still asks for component updates and signed-in accounts at start: send both to
    # the discard port on loopback, where nothing answers.
    "--component-updater=url-source=http://127.0.0.1:9/", "--gaia-url=http://127.0.0.1:9/",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--password-store=basic", "--use-mock-keychain",
]


_DEBIAN_BINARY = "/usr/lib/chromium/chromium"


def _required() -> bool:
    return any(os.environ.get(k, "").strip() not in ("", "0", "false", "no") for k in ("CI", "CASYNC_REQUIRE_CHROMIUM"))


def chromium_binary() -> str:
    """The chromium executable; a missing one skips the test, or fails it under CI=1.  Debian's
    ``/usr/bin/chromium`` is a wrapper script whose /etc/chromium.d/ turns remote extensions (and their
    update checks) and Google API keys on, so the browser itself is run, with only the flags here."""
    if os.access(_DEBIAN_BINARY, os.X_OK):
        return _DEBIAN_BINARY
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    msg = "chromium is not installed (bash .ci/install-chromium.sh installs Debian's package)"
    if _required():
        pytest.fail(msg + " (CI=1, so this is a failure)", pytrace=False)
    pytest.skip(msg)


@contextlib.contextmanager
def _trap_proxy() -> Iterator[tuple[int, list[str]]]:
    """A proxy on 127.0.0.1 that records the first line of every request and closes: what chromium
    tried to reach outside loopback."""
    seen: list[str] = []
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    seen.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                except OSError:
                    seen.append("(connection without a request line)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host != "localhost":
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        raise AssertionError(f"the test browser loads loopback URLs only, not {url!r}")


@dataclass(frozen=True)
class Visit:
    dom: str                 # the DOM after the page's scripts ran (--dump-dom)
    png: Path                # the screenshot
    outside: list[str]       # request lines chromium sent for anything but loopback (should be none)
    stderr: str


def chromium_visit(url: str, png: Path, *, window: tuple[int, int] = (1280, 900), timeout: float = 90.0) -> Visit:
    """Load ``url`` once in headless chromium; killed (its whole process group) after ``timeout``."""
    _check_loopback(url)
    binary = chromium_binary()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="casync-chromium-") as profile, _trap_proxy() as (port, outside):
        args = [binary, *_QUIET_FLAGS, f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{port}",
                f"--window-size={window[0]},{window[1]}", f"--screenshot={png}", "--dump-dom", url]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                env={**os.environ, "HOME": profile})
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            tail = err.decode(errors="replace")[-2000:]
            raise AssertionError(f"chromium did not finish within {timeout} s (killed): {tail}") from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # renderer or zygote children left behind
        stderr = err.decode(errors="replace")
        if proc.returncode != 0 or "Page load failed" in stderr:  # a failed load still exits 0
            raise AssertionError(f"chromium exited {proc.returncode}: {stderr[-2000:]}")
        return Visit(out.decode("utf-8", errors="replace"), png, list(outside), stderr)


def chromium_render(url: str, png: Path, *, window: tuple[int, int] = (1280, 900),
                    timeout: float = 90.0) -> tuple[str, Path]:
    """(DOM, screenshot path) of ``url``; fails if chromium tried to reach anything but loopback."""
    visit = chromium_visit(url, png, window=window, timeout=timeout)
    assert not visit.outside, f"chromium reached outside loopback: {visit.outside}"
    assert png.is_file(), f"chromium wrote no screenshot: {visit.stderr[-2000:]}"
    return visit.dom, visit.png


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    channels: int            # 3 (RGB) or 4 (RGBA)
    rows: list[bytes]        # unfiltered scanlines, width * channels bytes each

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        row = self.rows[y]
        return tuple(row[x * self.channels:(x + 1) * self.channels][:3])

    def colours(self) -> set[bytes]:
        """The distinct colours (RGB bytes) in the image."""
        c = self.channels
        return {row[i:i + 3] for row in self.rows for i in range(0, len(row), c)}

    def count(self, rgb: tuple[int, int, int]) -> int:
        """How many pixels have exactly this colour."""
        want, c = bytes(rgb), self.channels
        return sum(row[i:i + 3] == want for row in self.rows for i in range(0, len(row), c))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _unfilter(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:
        return bytes((x + b) & 255 for x, b in zip(line, prev, strict=True))
    out = bytearray(line)
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        if kind == 1:
            out[i] = (out[i] + a) & 255
        elif kind == 3:
            out[i] = (out[i] + ((a + prev[i]) >> 1)) & 255
        elif kind == 4:
            out[i] = (out[i] + _paeth(a, prev[i], prev[i - bpp] if i >= bpp else 0)) & 255
        else:
            raise AssertionError(f"PNG filter type {kind} does not exist")
    return bytes(out)


def read_png(path: Path) -> Png:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what chromium writes); anything else is an error."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, header, idat = 8, b"", bytearray()
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0], kind
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * channels
    assert len(raw) == height * (stride + 1), "PNG data has the wrong length"
    rows, prev = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        prev = _unfilter(raw[start], raw[start + 1:start + 1 + stride], prev, channels)
        rows.append(prev)
    return Png(width, height, channels, rows)
