"""The documentation says what the code does: documented signatures match the code, every
abbreviated CID in the docs has the length casync prints, install commands point at the
checkout.  (The README tour itself runs in tests/test_readme_tour.py.)"""

from __future__ import annotations

import inspect
import json
import re
import shlex
from pathlib import Path

import click

from casync import Repository, porcelain
from casync.cli.main import main
from casync.transports.peer import exchange as peer

from .conftest import Cli, write

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FULL_CID = 59  # CIDv1, base32, 32-byte digest (blake3 or sha2-256)
SHORT_CID = 20  # what human output shows (casync.model.cid.short)
_CID = re.compile(r"\bbaf[a-z2-7]{6,}")


def _param_names(text: str) -> list[str]:
    names = []
    for part in re.split(r",(?![^(]*\))", text):
        name = part.split("=")[0].strip()
        if name and name not in ("*", "..."):
            names.append(name)
    return names


def _code_params(fn: object) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]  # type: ignore[arg-type]


def test_documented_signatures_match_the_code() -> None:
    text = (ROOT / "docs" / "python-api.md").read_text()
    found = re.findall(r"^(repo|Repository|porcelain)\.(\w+)\(((?:[^()]|\([^()]*\))*)\)\s*->", text, re.M | re.S)
    assert len(found) >= 15
    assert {name for owner, name, _ in found if owner == "porcelain"} == set(porcelain.__all__)
    for owner, name, params in found:
        documented = _param_names(" ".join(params.split()))
        assert documented == _code_params(getattr(porcelain if owner == "porcelain" else Repository, name)), \
            f"{owner}.{name}"
    for name in ("fetch_from", "push_to"):
        m = re.search(rf"`{name}\(([^`]*?)\) ->", text)
        assert m is not None, f"{name} is not documented"
        assert _param_names(m.group(1)) == _code_params(getattr(peer, name)), name
    for name in peer.FetchResult.__dataclass_fields__:
        assert f"`{name}`" in text, f"FetchResult.{name} is not documented"


def test_abbreviated_cids_in_the_docs_have_the_printed_length() -> None:
    for doc in DOCS:
        for cid in _CID.findall(doc.read_text()):
            assert len(cid) in (SHORT_CID, FULL_CID), f"{doc.name}: {cid} ({len(cid)} characters)"


def test_human_output_abbreviates_every_cid_to_the_same_length(cli: Cli) -> None:
    cli("init", "--replica", "r1")
    write(cli.cwd, "a.txt", "1")
    cli("commit", "-m", "one")
    write(cli.cwd, "a.txt", "2")
    cli("commit", "-m", "two")
    outputs = [cli("log", "--oneline"), cli("checkout", "HEAD~1"), cli("status"), cli("switch", "main"),
               cli("commit", "-m", "none", ok=False), cli("branch", "b"), cli("branch", "-a"), cli("tag", "v1"),
               cli("cat", "HEAD:nope", ok=False), cli("show")]
    seen = 0
    for out in outputs:
        for cid in _CID.findall(out.stdout + out.stderr):
            seen += 1
            assert len(cid) in (SHORT_CID, FULL_CID), f"{cid!r} in {out.stdout + out.stderr!r}"
    assert seen >= 9
    assert all(len(e["cid"]) == FULL_CID for e in json.loads(cli("log", "--json").stdout))


def test_install_commands_point_at_the_checkout() -> None:
    for doc in DOCS:
        for target in re.findall(r"pip install (?:-e )?'?(\.[^\s'\[]*)", doc.read_text()):
            assert (ROOT / target / "pyproject.toml").is_file(), f"{doc.name}: pip install {target}"


# Commands docs/operations.md names before they exist, each with the work that adds it.  A command
# that lands must leave this set (the test below fails until it does), and is then checked like the rest.
PENDING_COMMANDS: dict[str, str] = {}
GLOBAL_OPTIONS = {"-C", "-q", "--quiet", "--progress", "-h", "--help", "--version"}


def _casync_invocations(text: str) -> list[list[str]]:
    """Every ``casync ...`` command line in the code blocks and inline code of a document, as words."""
    code = re.findall(r"```(?:sh|console)?\n(.*?)```", text, re.S)
    code += [span for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
             if span.startswith("casync ")]
    found = []
    for block in code:
        for line in block.splitlines():
            line = line.split("  #", 1)[0]
            for part in re.split(r"&&|\|\||[|;]", line):
                words = shlex.split(part.replace("$(", "").replace(")", ""), posix=True)
                if "casync" in words:
                    found.append(words[words.index("casync") + 1:])
    return found


def _command(words: list[str]) -> tuple[str, click.Command | None, list[str]]:
    """(name, click command, the words after it), past the global options."""
    ctx = click.Context(main)
    while words and words[0] in GLOBAL_OPTIONS:
        words = words[2:] if words[0] == "-C" else words[1:]
    name, rest = words[0], words[1:]
    cmd = main.get_command(ctx, name)
    if isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        name, cmd, rest = f"{name} {rest[0]}", cmd.get_command(ctx, rest[0]), rest[1:]
    return name, cmd, rest


def test_the_operations_guide_uses_real_commands_and_options() -> None:
    invocations = _casync_invocations((ROOT / "docs" / "operations.md").read_text())
    assert len(invocations) >= 25
    seen_pending = set()
    for words in invocations:
        name, cmd, rest = _command(words)
        if name in PENDING_COMMANDS:
            assert cmd is None, f"'casync {name}' exists now: remove it from PENDING_COMMANDS"
            seen_pending.add(name)
            continue
        assert cmd is not None, f"docs/operations.md: 'casync {' '.join(words)}': no command {name!r}"
        known = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)} | {"-h", "--help"}
        for word in rest:
            if word.startswith("-") and word != "-":
                assert word.split("=", 1)[0] in known, f"docs/operations.md: 'casync {name}' has no option {word}"
    assert seen_pending <= set(PENDING_COMMANDS)
