"""`.casyncignore` follows gitignore's glob rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from casync.worktree.disk import IGNORE_FILE, Ignore, native_stat_records, scan


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


@pytest.mark.parametrize(("line", "path", "ignored"), [
    ("foo\\ ", "foo ", True),  # an escaped trailing space is part of the name (the old parser dropped it)
    ("foo\\ ", "foo", False),
    ("foo\\  ", "foo ", True),  # ... and the unescaped one after it is not
    ("foo   ", "foo", True),  # unescaped trailing spaces are not part of the pattern
    ("a\\ b", "a b", True),
])
def test_trailing_spaces_as_git_reads_them(line: str, path: str, ignored: bool) -> None:
    assert Ignore([line]).ignored(path, False) is ignored


def test_a_pattern_git_cannot_use_is_skipped_not_an_error() -> None:
    rules = Ignore(["bad\\", "*.o"])  # a lone trailing backslash matches nothing in git
    assert rules.rules == ["*.o"] and rules.ignored("x.o", False) and not rules.ignored("bad", False)


def test_both_walks_take_the_same_ignore_decision_for_escaped_spaces(tmp_path: Path) -> None:
    """The native walk asks Ignore.ignored, as scan() does: one decision for both."""
    (tmp_path / "foo ").write_bytes(b"ignored by the escaped space")
    (tmp_path / "foo").write_bytes(b"kept")
    (tmp_path / IGNORE_FILE).write_text("foo\\ \n")
    ignore = Ignore.load(tmp_path)
    files, _ = scan(tmp_path, ignore)
    assert sorted(files) == [IGNORE_FILE, "foo"]
    native = native_stat_records(tmp_path, ignore)
    if native is not None:
        assert b"foo \0" not in native[0] and b"foo\0" in native[0]


def test_the_quick_no_rule_matches_answer_agrees_with_pathspec() -> None:
    """Ignore answers paths no rule matches with one joined regex; every answer must be
    the one pathspec's GitIgnoreSpec gives."""
    from pathspec import GitIgnoreSpec

    rules = ["*.log", "!keep.log", "build/", "/top", "a/**/b", "[!x]y?", "data/**", "\\#z", "logs/*.gz", "foo\\ "]
    paths = ["x.log", "d/keep.log", "build", "build/o", "top", "s/top", "a/b", "a/q/r/b", "zy1", "xy1", "data",
             "data/1", "#z", "logs/1.gz", "logs/s/1.gz", "foo ", "foo", "plain.txt", "d/e/f.txt"]
    ignore, spec = Ignore(rules), GitIgnoreSpec.from_lines(rules)
    for path in paths:
        for is_dir in (False, True):
            asked = f"{path}/" if is_dir else path
            assert ignore.ignored(path, is_dir) is spec.match_file(asked), (path, is_dir)
