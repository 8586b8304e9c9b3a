"""The first steps of docs/configuration.md and README's "Running a fleet", as a new user
types them: each documented shell block runs as it stands (in a temporary directory holding a
copy of docs/examples/), one agent round runs, and it ends as the text says: both example
peers unreachable, counted, exit 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_docs import ROOT

MARKER = "<!-- tests/test_agent_quickstart.py runs this block as it stands, in a temporary directory -->"


def _documented_steps(doc: str) -> str:
    text = (ROOT / doc).read_text()
    if doc == "README.md":  # the first block of its "Running a fleet" section
        found = re.search(r"\n## Running a fleet\n(?:(?!\n## ).)*?```sh\n(.*?)```", text, re.S)
    else:
        found = re.search(re.escape(MARKER) + r"\n```sh\n(.*?)```", text, re.S)
    assert found is not None, f"{doc} lost its first-steps block"
    return found.group(1)


def _events(stderr: str) -> list[dict[str, object]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # --log-format json: every line is one JSON object
    assert all({"ts", "level", "event", "msg"} <= e.keys() for e in events)
    return events


@pytest.mark.parametrize("doc", ["docs/configuration.md", "README.md"])
def test_the_documented_first_steps_run_one_round(tmp_path: Path, doc: str) -> None:
    steps = _documented_steps(doc)
    assert "casync agent --config casync.toml --once" in steps
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs" / "examples", checkout / "docs" / "examples")
    bindir = str(Path(sys.executable).parent)  # this environment's casync
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    env.pop("CASYNC_TOKEN", None)
    done = subprocess.run(["sh", "-eu", "-c", steps], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    site = checkout / "first-site"
    assert (site / "site" / ".casync").is_dir(), done.stdout + done.stderr
    assert (site / "token").stat().st_mode & 0o077 == 0, "the token is readable by its owner only"
    events = _events(done.stderr)  # casync init reports on stdout; the agent logs on stderr
    assert done.returncode == 1, f"documented: exit 1 (peers unreachable)\n{done.stderr}"
    (round_done,) = [e for e in events if e["event"] == "round_done"]
    assert round_done["synced"] == 0 and round_done["failed"] == 2, round_done
    failed = {e["peer"]: e for e in events if e["event"] == "sync_failed"}
    assert set(failed) == {"us-west-1", "eu-central-1"}
    assert all(e["reason"] == "unreachable" and e["failures"] == 1 for e in failed.values()), failed
    assert "Traceback" not in done.stderr
