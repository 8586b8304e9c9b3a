"""Validation of names, paths and sizes that arrive from elsewhere.

Paths are data, not instructions: a tree entry name from a remote, a bundle or a
corrupted store must never make casync write outside the working tree or into
``.casync``.  Every path that reaches the file system goes through here first.
"""

from __future__ import annotations

import re
import unicodedata

from casync.errors import InvalidPath, UsageError

__all__ = ["MAX_NAME_BYTES", "REPLICA_RE", "REPO_DIR", "REPO_ID_RE", "TEMP_NAME", "is_plain_name", "is_repo_id",
           "is_reserved_name", "is_replica_name", "split_path", "temp_name", "validate_branch_name", "validate_name",
           "validate_replica_name"]

REPLICA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_replica_name(name: str) -> bool:
    """Replica ids end up in file names (``path.~<replica>``) and refs: a strict charset."""
    return bool(REPLICA_RE.match(name)) and ".." not in name


REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_repo_id(name: str) -> bool:
    """Repository ids end up in MFS paths (``/casync/<id>``) and URLs: a strict charset,
    checked wherever one comes from elsewhere (a peer's info, a bundle, a clone)."""
    return isinstance(name, str) and bool(REPO_ID_RE.fullmatch(name)) and ".." not in name

REPO_DIR = ".casync"
MAX_NAME_BYTES = 255

TEMP_NAME = re.compile(r"\.(?P<name>.+)\.casync-tmp-(?P<pid>[1-9][0-9]{0,9})")
"""casync's temporary names (docs/design.md §10): ``.NAME.casync-tmp-PID``, what a file is
written under before it is renamed to NAME, and ``..casync.casync-tmp-PID``, where
``init`` builds a store.  A scan never stores such a name; what a dead PID left is removed."""


def temp_name(name: str, pid: int) -> str:
    """The temporary name process ``pid`` writes ``name`` under (matches :data:`TEMP_NAME`)."""
    return f".{name}.casync-tmp-{pid}"

# Code points that file systems (HFS+, some normalisers) ignore when comparing names,
# which an attacker can use to disguise ".casync" (cf. git's CVE-2014-9390 handling).
_IGNORABLE = {
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d",
    "\u202e", "\u206a", "\u206b", "\u206c", "\u206d", "\u206e", "\u206f", "\ufeff", "\u00ad",
    "\u2060", "\u2061", "\u2062", "\u2063", "\u2064",
}


def is_reserved_name(name: str) -> bool:
    """True for names that are ``.casync`` in any case, normal form or disguise."""
    folded = unicodedata.normalize("NFKC", name)
    folded = "".join(ch for ch in folded if ch not in _IGNORABLE and unicodedata.category(ch) != "Cf")
    folded = folded.casefold().rstrip(" .")  # Windows drops trailing dots and spaces
    return folded == REPO_DIR or folded.startswith(REPO_DIR + "~") or folded == "casync~1"


_PLAIN_NAME = re.compile(r"[A-Za-z0-9 !#$%&'()*+,\-.:;<=>?@\[\]^_`{|}~]{1,255}")


def is_plain_name(name: str) -> bool:
    """Printable ASCII without ``/`` ``\\`` ``"``, at most 255 bytes, not ``.``/``..``, and
    unable to spell ``.casync``: a name every check here accepts, known without Unicode
    work (most names are like this; casync/_cscan.c mirrors the test)."""
    return bool(_PLAIN_NAME.fullmatch(name)) and name not in (".", "..") and "casync" not in name.lower()


def validate_name(name: str, context: str = "tree entry") -> None:
    """Raise :class:`InvalidPath` unless ``name`` is a safe single path component."""
    if is_plain_name(name):
        return
    if not name:
        raise InvalidPath(f"{context}: empty name")
    if name in (".", ".."):
        raise InvalidPath(f"{context}: name {name!r} is not allowed")
    for bad in ("/", "\\", "\x00"):
        if bad in name:
            raise InvalidPath(f"{context}: name {name!r} contains {bad!r}")
    if any(ord(ch) < 0x20 for ch in name):
        raise InvalidPath(f"{context}: name {name!r} contains a control character")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise InvalidPath(f"{context}: name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if is_reserved_name(name):
        raise InvalidPath(f"{context}: name {name!r} is reserved for the repository directory")


def split_path(path: str, context: str = "path") -> tuple[str, ...]:
    """Split a repository-relative path into validated components.

    Accepts ``a/b/c`` (and tolerates ``./`` and repeated slashes); refuses absolute
    paths, ``..`` and anything :func:`validate_name` refuses.  The empty path (or
    ``.``) is the root and yields ``()``.
    """
    if path.startswith("/"):
        raise InvalidPath(f"{context} {path!r} is absolute", hint="give a path relative to the repository root")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    for part in parts:
        if part == "..":
            raise InvalidPath(f"{context} {path!r} escapes the working tree")
        validate_name(part, f"{context} {path!r}")
    return parts


_BRANCH_RE = re.compile(r"^(?!.*\.\.)(?!.*//)(?!/)(?!.*/$)(?!.*\.lock$)[A-Za-z0-9._/-]+$")


def validate_branch_name(name: str) -> None:
    """Refuse (:class:`UsageError`) a branch name that cannot be a ref ``heads/NAME``."""
    if len(name) > 200 or not _BRANCH_RE.match(name) or name in ("HEAD",) or name.startswith("-"):
        raise UsageError(f"invalid branch name {name!r}",
                         hint="use letters, digits, '.', '_', '-' and '/' (no '..', no leading '-')")


def validate_replica_name(name: str) -> None:
    """Refuse (:class:`UsageError`) what :func:`is_replica_name` does not accept."""
    if not is_replica_name(name):
        raise UsageError(f"invalid replica name {name!r}",
                         hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
