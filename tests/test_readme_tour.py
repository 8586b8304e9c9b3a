"""README's "A short tour", run as written: its shell blocks as one ``bash -eu`` script in an
empty directory (a real ``casync serve`` on loopback, a real Kubo node for the IPFS line),
then its Python block.  If a line of the tour stops being true, this fails."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .kubo_fixture import Kubo

pytestmark = pytest.mark.kubo

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the "A short tour" section."""
    start = text.index("\n## A short tour\n")
    rest = text[start + 1:]
    end = re.search(r"\n#{2,3} ", rest[3:])
    section = rest[: end.start() + 3] if end else rest
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", section, re.S)]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run in its own process group, and end the whole group after (the tour starts a hub
    in the background; a failed line must not leave it running)."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, None)


def test_the_readme_tour_runs_as_written(tmp_path: Path, kubo: Kubo) -> None:
    blocks = tour_blocks(README.read_text())
    shell = [code for lang, code in blocks if lang == "sh"]
    python = [code for lang, code in blocks if lang == "python"]
    assert len(shell) == 2 and len(python) == 1, blocks
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "CASYNC_IPFS_API": kubo.api_url}
    env.pop("CASYNC_TOKEN", None)
    script = tmp_path / "tour.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(shell))
    tour = tmp_path / "tour"
    tour.mkdir()
    res = _run(["bash", "-x", str(script)], tour, env)
    assert res.returncode == 0, res.stdout[-4000:]
    # what the tour claims, checked
    assert "created tag v1" in res.stdout
    assert (tour / "site" / "notes.txt").read_text() == "edge-1 notes\n"  # the hub got the resolved merge
    assert not (tour / "site-b" / "notes.txt.~edge-1").exists()
    assert "bundles/main" in res.stdout
    py = _run([sys.executable, "-c", python[0]], tour, env)
    assert py.returncode == 0, py.stdout[-4000:]
    assert "b'{\"t\": 21.5}'" in py.stdout


def test_tour_extraction_reads_the_tour_section_only() -> None:
    text = "# x\n```sh\nno\n```\n## A short tour\n```sh\na\n```\n```python\nb\n```\n### next\n```sh\nc\n```\n"
    assert tour_blocks(text) == [("sh", "a\n"), ("python", "b\n")]
