"""`.casyncignore` follows gitignore's glob rules."""

from __future__ import annotations

import pytest

from casync.worktree import Ignore


@pytest.mark.parametrize(("pattern", "path", "ignored"), [
    ("docs/**/*.bak", "docs/q.bak", True),
    ("docs/**/*.bak", "docs/a/b/q.bak", True),
    ("**/foo", "foo", True),
    ("**/foo", "a/foo", True),
    ("a?b", "a/b", False),
    ("a?b", "axb", True),
    ("\\#x", "#x", True),
    ("data/**", "data/a/b", True),
    ("data/**", "data", False),
    ("*.tmp", "x/y.tmp", True),
    ("*.tmp", "x/y.tmpl", False),
    ("/root", "sub/root", False),
    ("/root", "root", True),
    ("[!a]x", "bx", True),
    ("[!a]x", "ax", False),
    ("a/*/c", "a/b/c", True),
    ("a/*/c", "a/b/x/c", False),
])
def test_glob(pattern: str, path: str, ignored: bool) -> None:
    assert Ignore([pattern]).ignored(path, False) is ignored


def test_last_match_wins_and_dir_only() -> None:
    rules = Ignore(["*.log", "!keep.log", "build/", "# comment", ""])
    assert rules.ignored("x.log", False) and not rules.ignored("keep.log", False)
    assert rules.ignored("build", True) and not rules.ignored("build", False)
