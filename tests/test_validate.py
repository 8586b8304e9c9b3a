"""Hostile names never reach the file system."""

from __future__ import annotations

import pytest

from casync.errors import InvalidPath
from casync.model.names import is_reserved_name, split_path, validate_name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00b", "x\ny",
                                  ".casync", ".CASYNC", ".casync.", ".casync ", ".cas\u200cync",
                                  "\uff0ecasync", "a" * 256])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(InvalidPath):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", ".casyncignore", "casync", "ü", "file.txt", "a" * 255, "...x"])
def test_good_names_accepted(name: str) -> None:
    validate_name(name)


def test_reserved_detection() -> None:
    assert is_reserved_name(".Casync")
    assert not is_reserved_name(".casyncignore")


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../b", "a/.casync/db"])
def test_split_path_refuses_escapes(path: str) -> None:
    with pytest.raises(InvalidPath):
        split_path(path)


def test_split_path_normalises() -> None:
    assert split_path("./a//b/") == ("a", "b")
    assert split_path("") == ()
