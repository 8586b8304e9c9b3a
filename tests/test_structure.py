"""The error rules of docs/python-api.md ("Errors"), checked over the source: every error casync
raises is a specific CasyncError subclass, no broad handler swallows what it catches, and errors
are told apart by type, not by the words of their messages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "casync"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# Kubo's RPC errors are text only (no codes): the IPFS client reads these phrases of Kubo's
# messages, and nothing else may match message text.
KUBO_MESSAGE_PHRASES = ("not pinned", "import failed at block", "deadline exceeded")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return {"<bare>"}
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    return {node.id} if isinstance(node, ast.Name) else {ast.unparse(node)}


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 30 and any(p.name == "errors.py" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_every_raised_error_is_a_specific_class(path: Path) -> None:
    generic = {"CasyncError", "Exception", "BaseException", "RuntimeError"}
    bad = [f"{_name(path)}:{node.lineno}" for node in ast.walk(_tree(path))
           if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
           and isinstance(node.exc.func, ast.Name) and node.exc.func.id in generic]
    assert not bad, "raise a CasyncError subclass from casync/errors.py instead"


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_no_broad_handler_swallows_what_it_caught(path: Path) -> None:
    """``except Exception`` / ``BaseException`` / bare ``except`` only to clean up and re-raise."""
    bad = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ExceptHandler) and _names(node.type) & {"Exception", "BaseException", "<bare>"}:
            reraises = any(isinstance(n, ast.Raise) and n.exc is None for n in ast.walk(node))
            if not reraises:
                bad.append(f"{_name(path)}:{node.lineno}")
    assert not bad, "catch the exception types meant, or clean up and re-raise"


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_errors_are_not_told_apart_by_their_message_text(path: Path) -> None:
    pattern = re.compile(r"\bin (str\(\w+\)|\w+\.(message|args|strerror)\b)|\bin str\(exc|\bstr\(exc\)\.")
    bad = [f"{_name(path)}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
           if pattern.search(line) and not line.lstrip().startswith("for ")
           and not any(p in line for p in KUBO_MESSAGE_PHRASES)]
    assert not bad, "tell errors apart by type (or errno), not by the words of their message"
