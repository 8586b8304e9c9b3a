"""The working tree on disk: scanning (with ``.casyncignore``) and safe writes.

Writes never follow symlinks: every path is opened component by component relative to
a directory file descriptor with ``O_NOFOLLOW``, so a symlink planted in the tree (or a
hostile tree entry) cannot redirect a checkout outside the working tree.  Files are
written to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat as stat_mod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from casync.errors import InvalidPath, StorageFull
from casync.model.names import (
    REPO_DIR,
    TEMP_NAME,
    is_plain_name,
    is_reserved_name,
    split_path,
    temp_name,
    validate_name,
)
from casync.store.env import DISK_FULL
from casync.store.locks import process_gone

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

__all__ = ["IGNORE_FILE", "TEMP_REASON", "FileStat", "Ignore", "UntrackedIgnore", "WorktreeWriter", "directory_entries",
           "native_stat_records", "remove_stale_temps", "scan", "unstorable"]

try:  # optional native walk (casync/_cscan.c); the pure-Python scan() below is the reference
    from casync._cscan import walk as _native_walk
except ImportError:  # pragma: no cover - a build without a C compiler
    _native_walk = None  # type: ignore[assignment]

IGNORE_FILE = ".casyncignore"

TEMP_REASON = "a temporary file of casync"


def remove_stale_temps(root: Path, skipped: Iterable[str]) -> list[str]:
    """Delete the temporary files a killed checkout left, among a scan's ``skipped`` lines.

    Called with the writer lock held (no casync process writes this tree meanwhile); a
    file goes only if its name matches ``TEMP_NAME`` exactly, it is a regular file and
    the process its name carries is gone (:func:`casync.store.locks.process_gone`).  Returns the
    paths removed.
    """
    suffix = f" ({TEMP_REASON})"
    removed: list[str] = []
    for line in skipped:
        if not line.endswith(suffix):
            continue
        path = line[: -len(suffix)]
        match = TEMP_NAME.fullmatch(path.rpartition("/")[2])
        if match is None:
            continue
        if not process_gone(int(match["pid"])):
            continue
        full = root / path
        with contextlib.suppress(OSError):
            if stat_mod.S_ISREG(os.lstat(full).st_mode):
                os.unlink(full)
                removed.append(path)
    return removed


def _trim_trailing_spaces(line: str) -> str:
    """A line without its trailing spaces, except those escaped with ``\\`` (as git reads
    ``.gitignore``: ``foo\\ `` names ``foo ``)."""
    cut: int | None = None
    i = 0
    while i < len(line):
        if line[i] == " ":
            cut = i if cut is None else cut
        else:
            cut = None
            i += line[i] == "\\"  # the escaped character is kept, whatever it is
        i += 1
    return line if cut is None else line[:cut]


def _spec(lines: list[str]) -> tuple[list[str], GitIgnoreSpec]:
    """The lines git could use (it silently skips the others, such as a lone trailing
    ``\\``) and their matcher.  pathspec is imported here, once rules exist: it costs
    ~15 ms, which a command in a tree without ``.casyncignore`` need not pay."""
    from pathspec import GitIgnoreSpec
    from pathspec.patterns.gitignore import GitIgnorePatternError

    def usable(line: str) -> bool:
        try:
            GitIgnoreSpec.from_lines([line])
        except (GitIgnorePatternError, ValueError):
            return False
        return True

    kept = [line for line in lines if usable(line)]
    return kept, GitIgnoreSpec.from_lines(kept)


def _any_rule(spec: GitIgnoreSpec) -> re.Pattern[str] | None:
    """One regex that matches a path wherever one of the rules' regexes does (their named
    groups made plain), or None if a rule's regex cannot be joined.  Most paths match no
    rule: this answers them with one C-level match instead of pathspec's Python loop over
    the rules (0.5 µs instead of 1.8 µs a path with six rules; 100,000 paths a status)."""
    parts = []
    for pattern in spec.patterns:
        regex = getattr(pattern, "regex", None)
        if pattern.include is None:
            continue  # a no-op pattern
        if not isinstance(regex, re.Pattern) or regex.flags & ~re.UNICODE or "(?P=" in regex.pattern:
            return None
        parts.append("(?:" + re.sub(r"\(\?P<\w+>", "(?:", regex.pattern) + ")")
    return re.compile("|".join(parts) or "(?!)")


class Ignore:
    """The rules of the root ``.casyncignore``, with git's ``.gitignore`` semantics, as
    ``pathspec.GitIgnoreSpec`` implements them (comments, ``!`` negation, ``dir/``,
    anchoring ``/``, ``*``, ``?``, ``[...]``, ``**``, ``\\`` escapes; the last matching rule
    wins).  ``rules`` holds the pattern lines in use: none means nothing is ignored.
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        kept = (_trim_trailing_spaces(raw.rstrip("\r\n")) for raw in lines)
        patterns = [line for line in kept if line and not line.startswith("#")]
        self.rules: list[str] = []
        self._spec: GitIgnoreSpec | None = None
        self._any: re.Pattern[str] | None = None
        if patterns:
            self.rules, self._spec = _spec(patterns)
            self._any = _any_rule(self._spec)

    @classmethod
    def load(cls, root: Path) -> Ignore:
        try:
            text = (root / IGNORE_FILE).read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            return cls()
        return cls(text.splitlines())

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether a rule ignores ``path`` (``/``-separated, relative to the root); both
        walks (:func:`scan` and the native one) ask this same method."""
        if self._spec is None:
            return False
        path = f"{path}/" if is_dir else path
        if self._any is not None and self._any.match(path) is None:
            return False  # no rule matches: what pathspec would answer, sooner
        return self._spec.match_file(path)

    def untracked_only(self, tracked: Callable[[str, bool], bool]) -> UntrackedIgnore:
        """These rules as git applies them: to untracked paths only (see UntrackedIgnore)."""
        return UntrackedIgnore(self, tracked)


class UntrackedIgnore(Ignore):
    """Ignore rules that leave tracked paths alone: a tracked file a rule matches is
    still scanned (and committed with its changes), a directory a rule matches is
    descended when it holds tracked files, and untracked files inside it stay ignored.

    ``tracked(path, is_dir)`` is asked only about paths a rule matches.  A walk (scan,
    or the native one) asks about a directory before its contents, which is what lets a
    child know its parent was kept only for its tracked files.  ``tracked_ignored``
    collects, during one walk, the tracked files a rule matches (for ``status``).
    """

    def __init__(self, rules: Ignore, tracked: Callable[[str, bool], bool]) -> None:
        super().__init__()
        self.rules, self._spec, self._any = rules.rules, rules._spec, rules._any
        self._tracked = tracked
        self._kept_dirs: set[str] = set()
        self.tracked_ignored: list[str] = []

    def ignored(self, path: str, is_dir: bool) -> bool:
        parent = path.rpartition("/")[0]
        if not (parent in self._kept_dirs or super().ignored(path, is_dir)):
            return False
        if not self._tracked(path, is_dir):
            return True
        if is_dir:
            self._kept_dirs.add(path)
        else:
            self.tracked_ignored.append(path)
        return False


class FileStat(NamedTuple):
    """The part of an ``lstat`` result casync uses, with the same attribute names: a
    ``stat_result`` costs about 700 bytes, this about 200, which counts at 100,000 files."""

    st_mtime_ns: int
    st_ctime_ns: int
    st_size: int
    st_ino: int
    st_mode: int


def directory_entries(rel: str, abs_dir: str, ignore: Ignore,
                      skipped: list[str]) -> Iterator[tuple[str, str, FileStat | None]]:
    """One directory's entries as :func:`scan` keeps them, in the order the file system
    lists them: ``(name, path, lstat)`` for a regular file or symlink, ``(name, path, None)``
    for a subdirectory; what cannot be stored goes to ``skipped`` with its reason.  A
    directory that vanished (or is no longer one) mid-walk simply has no entries."""
    has_rules = bool(ignore.rules)
    try:
        it = os.scandir(abs_dir)
    except (FileNotFoundError, NotADirectoryError):
        return
    with it:
        for de in it:
            name = de.name
            path = f"{rel}/{name}" if rel else name
            if name == REPO_DIR and not rel:
                continue
            problem = unstorable(name)
            if problem:
                skipped.append(f"{path} ({problem})")
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            mode = st.st_mode
            if stat_mod.S_ISDIR(mode):
                if not (has_rules and ignore.ignored(path, True)):
                    yield name, path, None
                continue
            if has_rules and ignore.ignored(path, False):
                continue
            if stat_mod.S_ISREG(mode) or stat_mod.S_ISLNK(mode):
                yield name, path, FileStat(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, mode)
            else:
                skipped.append(f"{path} (not a regular file or symlink)")


def scan(root: Path, ignore: Ignore) -> tuple[dict[str, FileStat], list[str]]:
    """``({path: lstat}, skipped)`` for every regular file and symlink under ``root``.

    Skips ``.casync`` and ignored paths.  ``skipped`` lists, with the reason, what cannot
    be stored: sockets, FIFOs, devices, names that are not UTF-8 or that tree validation
    refuses (``\\``, control characters, nested ``.casync`` repositories in any disguise) —
    so a commit never writes a tree that checkout would refuse.  Paths use ``/``.
    """
    files: dict[str, FileStat] = {}
    skipped: list[str] = []
    stack = [("", str(root))]
    while stack:
        rel, abs_dir = stack.pop()
        for name, path, st in directory_entries(rel, abs_dir, ignore, skipped):
            if st is None:
                stack.append((path, os.path.join(abs_dir, name)))
            else:
                files[path] = st
    return files, skipped


def native_stat_records(root: Path, ignore: Ignore) -> tuple[bytes, list[str]] | None:
    """The same walk as :func:`scan`, done natively, as one canonical byte string.

    ``records`` is, for every file :func:`scan` returns and sorted by UTF-8 path, the path,
    a NUL byte and the packed stat key (``<qqqQI``: mtime_ns, ctime_ns, size, inode,
    mode), so comparing a whole tree's stat data with the stat cache is one digest
    comparison (``LmdbStore.stat_cache_digest``).  None when the extension is not built.
    """
    if _native_walk is None:
        return None
    return _native_walk(str(root), ignore.ignored if ignore.rules else None, unstorable)


_CHECKED: dict[str, str | None] = {}


def unstorable(name: str) -> str | None:
    """Why a file name cannot go into a tree (None if it can).

    Plain printable-ASCII names that cannot spell ``.casync`` skip the Unicode checks, and
    answers are memoised (trees repeat names), so scanning stays I/O bound."""
    if is_plain_name(name):
        return None
    known = _CHECKED.get(name, "")
    if known != "":
        return known
    answer = _check_name(name)
    if len(_CHECKED) < 100_000:
        _CHECKED[name] = answer
    return answer


def _check_name(name: str) -> str | None:
    if TEMP_NAME.fullmatch(name):
        return TEMP_REASON
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    try:
        validate_name(name)
    except InvalidPath as exc:
        if is_reserved_name(name):
            return "reserved name: a nested repository or a disguised .casync"
        return exc.message.split(": ", 1)[-1]
    return None


class WorktreeWriter:
    """Applies file writes and removals under ``root`` without following symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def _parent_fd(self, parts: tuple[str, ...], create: bool) -> Iterator[int]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o777, dir_fd=fd)
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except (NotADirectoryError, OSError) as exc:
                    if not isinstance(exc, NotADirectoryError) and exc.errno != 40:  # ELOOP
                        raise
                    sub = "/".join(parts[: i + 1])
                    raise InvalidPath(f"{sub} is a file or symlink, not a directory; refusing to write "
                                      f"{'/'.join(parts)} through it",
                                      hint="move it away (checkout and switch replace it with --force)") from None
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def check_parents(self, paths: Iterable[str], removed: set[str]) -> None:
        """Refuse, before anything is written, what :meth:`write_file` would refuse half-way:
        a path whose directory is a symlink or a file on disk (unless it is in ``removed``,
        which the caller deletes first)."""
        checked: set[str] = set()
        for path in paths:
            cut = path.find("/")
            while cut != -1:
                parent = path[:cut]
                if parent not in checked:
                    checked.add(parent)
                    try:
                        mode = os.lstat(self.root / parent).st_mode
                    except (FileNotFoundError, NotADirectoryError):
                        break  # the write creates it
                    if not stat_mod.S_ISDIR(mode) and parent not in removed:
                        kind = "symlink" if stat_mod.S_ISLNK(mode) else "file"
                        raise InvalidPath(f"{parent} is a {kind}, not a directory; refusing to write {path} "
                                          "through it", hint=f"move {parent} away, then retry")
                cut = path.find("/", cut + 1)

    def write_file(self, path: str, chunks: Iterable[bytes], executable: bool) -> None:
        parts = split_path(path)
        with self._parent_fd(parts, create=True) as dfd:
            name = parts[-1]
            self._clear_dir_at(dfd, name)
            tmp = temp_name(name, os.getpid())
            mode = 0o777 if executable else 0o666
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb", closefd=True) as f:
                    for chunk in chunks:
                        f.write(chunk)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                    raise StorageFull(f"disk full writing {path} into the working tree",
                                      hint="free disk space and run the same command again (files not yet "
                                           "written keep their old content)") from None
                raise

    def write_symlink(self, path: str, target: str) -> None:
        parts = split_path(path)
        with self._parent_fd(parts, create=True) as dfd:
            name = parts[-1]
            self._clear_dir_at(dfd, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
            os.symlink(target, name, dir_fd=dfd)

    def _clear_dir_at(self, dfd: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat_mod.S_ISDIR(st.st_mode):
            self._rmtree_at(dfd, name)

    def _rmtree_at(self, dfd: int, name: str) -> None:
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            for entry in os.listdir(sub):
                st = os.stat(entry, dir_fd=sub, follow_symlinks=False)
                if stat_mod.S_ISDIR(st.st_mode):
                    self._rmtree_at(sub, entry)
                else:
                    os.unlink(entry, dir_fd=sub)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dfd)

    def remove(self, path: str) -> None:
        """Remove a file or symlink, then any parent directories left empty."""
        parts = split_path(path)
        try:
            with self._parent_fd(parts, create=False) as dfd:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(parts[-1], dir_fd=dfd)
        except (FileNotFoundError, InvalidPath):
            return
        for i in range(len(parts) - 1, 0, -1):
            try:
                os.rmdir(self.root.joinpath(*parts[:i]))
            except OSError:
                break
