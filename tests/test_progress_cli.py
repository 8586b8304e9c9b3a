"""The progress renderer as a user sees it (``--progress`` draws it without a terminal and from
the start of each step): every bar has its label, a true rate, and ends its line before the
next output; ``sync`` shows its transfer and its working-tree check."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from click.testing import Result

from casync.cli.common import ProgressBar

from .conftest import Cli, write

_LABEL = re.compile(r"^(?P<label>[A-Za-z][\w .:/-]*?)(?:: | \[[#-]+\] )")
_RATE = re.compile(r"  (?P<rate>[\d.]+) (?P<unit>[KMG]?B)/s")
_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def _bars(output: str) -> list[str]:
    """The bar lines drawn (``\\r\\x1b[K`` + text); checks that the last draw of a bar ends
    its line, so nothing printed next shares the line with it."""
    parts = output.split("\r\x1b[K")
    drawn = []
    for i, part in enumerate(parts[1:], start=1):
        line, newline, _rest = part.partition("\n")
        drawn.append(line)
        redrawn_next = i + 1 < len(parts)
        assert newline or redrawn_next, f"bar {line!r} is not ended before what follows"
        assert "\r" not in line and not (redrawn_next and not newline and _rest), line
    return drawn


def _rate(line: str) -> float:
    m = _RATE.search(line)
    assert m, line
    return float(m["rate"]) * _UNITS[m["unit"]]


def _labels(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        m = _LABEL.match(line)
        assert m and m["label"].strip(), f"a bar without a label: {line!r}"
        if not out or out[-1] != m["label"]:
            out.append(m["label"])
    return out


def test_status_bar_has_label_true_rate_and_is_ended(tmp_path: Path) -> None:
    Cli(tmp_path)("init", "wt", "--replica", "r1")
    cli = Cli(tmp_path / "wt")
    write(cli.cwd, "big.bin", b"a")
    cli("commit", "-m", "one")
    size = 8_000_000
    write(cli.cwd, "big.bin", os.urandom(size))  # modified: status hashes it
    t0 = time.monotonic()
    r: Result = cli("--progress", "status")
    took = time.monotonic() - t0
    bars = _bars(r.output)
    assert _labels(bars) == ["checking the working tree"]
    # the rate is bytes over the time the step took: at least what the whole command averaged
    # (it was bytes over the clock's epoch, about 1000x too low, with no label)
    assert _rate(bars[-1]) >= 0.9 * size / took
    assert "modified" in r.output.split(bars[-1], 1)[1]  # printed after the bar's line ended


def test_sync_shows_the_transfer_and_the_working_tree_check(tmp_path: Path) -> None:
    Cli(tmp_path)("init", "a", "--replica", "site-a")
    a = Cli(tmp_path / "a")
    write(a.cwd, "seed.txt", "seed")
    a("commit", "-m", "seed")
    Cli(tmp_path)("clone", "a", "b", "--replica", "site-b")
    size = 6_000_000
    write(a.cwd, "data/new.bin", os.urandom(size))
    a("commit", "-m", "new data")
    b = Cli(tmp_path / "b")
    t0 = time.monotonic()
    r = b("--progress", "sync", "../a", "--no-push")
    took = time.monotonic() - t0
    bars = _bars(r.output)
    labels = _labels(bars)
    assert labels[0].startswith("fetching from ") and "checking out" in labels
    fetch_done = [line for line in bars if line.startswith("fetching from ")][-1]
    assert "6.0 MB" in fetch_done and _rate(fetch_done) >= 0.9 * size / took
    assert "../a: fetched 1 commit(s)" in r.output.split(bars[-1], 1)[1]
    assert (b.cwd / "data/new.bin").stat().st_size == size


def test_advance_without_start_is_labelled_and_timed_from_the_first_advance(capsys: object) -> None:
    p = ProgressBar(enabled=True, delay=0.0)
    p.advance(5_000_000)  # a caller that never said start
    p.finish()
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    bars = _bars(err)
    assert _labels(bars) == ["working"]
    assert _rate(bars[-1]) > 1e9  # 5 MB in microseconds, not over the time since boot
