"""What the command modules share: the context object each command gets, the progress
renderer it hands to the library, JSON output and path helpers.  Imports no command module,
so every command module can import it without a cycle."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from casync.errors import UsageError

if TYPE_CHECKING:
    from casync.repo.repository import Repository
    from casync.store.retry import RetryPolicy

__all__ = ["Context", "F", "ProgressBar", "format_time", "human_bytes", "json_option", "lazy_module", "pass_context",
           "print_json", "quote_path", "repo_relative", "retry_policy"]

F = TypeVar("F", bound=Callable[..., Any])


class ProgressBar:
    """Progress on stderr for work lasting over ``delay`` seconds (1 by default): label, bytes
    done, rate, and with a known total a bar, percentage and time left.  Redrawn at most ten
    times a second; the last draw ends its line, so what is printed next starts on a new one.
    Work reported without a ``start`` (a library caller that only advances) is timed from
    its first ``advance`` and labelled "working", never from the epoch of the clock."""

    def __init__(self, enabled: bool, delay: float = 1.0) -> None:
        self.enabled = enabled
        self.delay = delay
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._t0: float | None = None
        self._drawn = 0.0
        self._shown = False

    def start(self, label: str, total: int | None) -> None:
        self.finish()
        self._label, self._total, self._done, self._t0, self._drawn = label, total, 0, time.monotonic(), 0.0

    def advance(self, n: int) -> None:
        if self._t0 is None:
            self.start("working", None)
        self._done += n
        if not self.enabled:
            return
        now = time.monotonic()
        assert self._t0 is not None
        if now - self._t0 >= self.delay and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - (self._t0 if self._t0 is not None else now), 1e-6)
        rate = self._done / elapsed
        text = f"{self._label}: {human_bytes(self._done)}"
        if self._total:
            frac = min(self._done / self._total, 1.0)
            filled = int(frac * 24)
            left = (self._total - self._done) / rate if rate > 0 and not final else 0.0
            text = (f"{self._label} [{'#' * filled}{'-' * (24 - filled)}] {frac:4.0%} "
                    f"{human_bytes(self._done)}/{human_bytes(self._total)}")
            if not final:
                text += f"  {human_bytes(rate)}/s  {int(left) // 60}:{int(left) % 60:02d} left"
        else:
            text += f"  {human_bytes(rate)}/s"
        sys.stderr.write("\r\x1b[K" + text + ("\n" if final else ""))
        sys.stderr.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._draw(time.monotonic(), final=True)
            self._shown = False
        self._t0 = None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Context:
    def __init__(self, directory: str, quiet: bool, force_progress: bool = False) -> None:
        self.directory = directory
        self.quiet = quiet
        self.as_json = False  # a command's --json was given: failures are reported as JSON too
        self.force_progress = force_progress
        self._repo: Repository | None = None
        self._progress: ProgressBar | None = None

    def repo(self) -> Repository:
        if self._repo is None:
            from casync.repo.repository import Repository  # not at import: --help and usage errors need none

            self._repo = Repository.open(self.directory)
        return self._repo

    def progress(self) -> ProgressBar:
        """One renderer per command, so a bar left drawn is ended before the next starts."""
        if self._progress is None:
            if self.force_progress and not self.quiet:
                self._progress = ProgressBar(enabled=True, delay=0.0)
            else:
                self._progress = ProgressBar(enabled=not self.quiet and sys.stderr.isatty())
        return self._progress

    def close(self) -> None:
        if self._progress is not None:
            self._progress.finish()
        if self._repo is not None:
            self._repo.close()


def pass_context(f: F) -> F:
    @click.pass_obj
    @wraps(f)
    def inner(obj: Context, *args: Any, **kwargs: Any) -> Any:
        return f(obj, *args, **kwargs)

    return inner  # type: ignore[return-value]


def lazy_module(name: str) -> Any:
    """Module ``name``, imported on its first attribute access: a command module names a
    heavy dependency at its top and pays for the import only on the paths that use it."""
    import importlib

    class _Lazy:
        def __getattr__(self, attr: str) -> Any:
            return getattr(importlib.import_module(name), attr)

        def __repr__(self) -> str:
            return f"<lazy module {name!r}>"

    return _Lazy()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")


def quote_path(path: str) -> str:
    """A path as one printable line: with a control character in it (a newline would break
    line-based parsing) it is printed JSON-quoted, as git quotes such paths."""
    return json.dumps(path, ensure_ascii=False) if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path) else path


def format_time(wall_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(wall_ms / 1000))


def repo_relative(repo: Repository, base: str, path: str) -> str:
    """Interpret PATH relative to the directory casync runs in (-C); refuse paths outside the tree."""
    absolute = os.path.abspath(os.path.join(os.path.abspath(base), path))
    root = str(repo.root)
    if absolute != root and not absolute.startswith(root + os.sep):
        raise UsageError(f"path {path!r} is outside the working tree {root}")
    rel = os.path.relpath(absolute, root)
    return "" if rel == "." else rel.replace(os.sep, "/")


def retry_policy() -> RetryPolicy:
    """``CASYNC_REMOTE_ATTEMPTS``: tries per request on transient errors (default 5, with backoff)."""
    from casync.store.retry import DEFAULT_RETRY, RetryPolicy  # only commands that talk to remotes

    raw = os.environ.get("CASYNC_REMOTE_ATTEMPTS")
    if not raw:
        return DEFAULT_RETRY
    try:
        return RetryPolicy(attempts=max(1, int(raw)))
    except ValueError:
        raise UsageError(f"CASYNC_REMOTE_ATTEMPTS must be a number, not {raw!r}") from None
