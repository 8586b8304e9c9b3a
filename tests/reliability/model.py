"""A reference model of the merge policies (docs/design.md §14, §14.1), computed from the full
history of what the fuzzer wrote, never from the merger's own walks.

What each policy must produce once every replica holds every commit:

* ``lww``: a path's state is its highest write in the whole history, a delete being a write;
  writes are ordered by HLC time ``(wall_ms, logical)``, then the higher priority (the lower
  number), then the larger replica id (skew tolerance 0).
* ``siblings``: no acknowledged write is lost: every write that no later write of the same path
  in its own causal future replaced is still held by some file of the final tree; the highest
  write of a path, when it is not a delete, is the version at the path itself.
* ``json``: per key (nested keys by their full key path), the highest write of the key,
  ordered as for ``lww``; a deleted key is absent.

Renames (delete one path, write its bytes at another) are writes of both paths, but a merge
carries a concurrent edit of the old path to the new one (§14 step 5), which a per-path register
does not describe: paths a rename touched are only held to "no write lost".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casync.model.cid import Cid

__all__ = ["DELETED", "History", "KeyWrite", "PathWrite"]

DELETED = None


@dataclass(frozen=True)
class PathWrite:
    path: str
    content: bytes | None  # None: deleted
    commit: Cid
    order: tuple[int, int, int, str]  # (wall_ms, logical, -priority, replica): larger wins
    rename: bool = False


@dataclass(frozen=True)
class KeyWrite:
    file: str
    key: tuple[str, ...]
    value: str | None  # None: the key deleted
    commit: Cid
    order: tuple[int, int, int, str]


@dataclass
class History:
    """Every commit's parents and every write the fuzzer made, in any order."""

    parents: dict[Cid, tuple[Cid, ...]] = field(default_factory=dict)
    paths: list[PathWrite] = field(default_factory=list)
    keys: list[KeyWrite] = field(default_factory=list)
    renamed: set[str] = field(default_factory=set)
    _below: dict[Cid, frozenset[Cid]] = field(default_factory=dict)

    def ancestors(self, cid: Cid) -> frozenset[Cid]:
        """``cid`` and everything below it, by plain search (memoised per commit)."""
        got = self._below.get(cid)
        if got is None:
            out, stack = {cid}, [cid]
            while stack:
                for p in self.parents[stack.pop()]:
                    if p not in out:
                        known = self._below.get(p)
                        if known is not None:
                            out |= known
                        else:
                            out.add(p)
                            stack.append(p)
            got = self._below[cid] = frozenset(out)
        return got

    # --- what each policy must produce ------------------------------------------------------

    def lww_expected(self) -> dict[str, bytes | None]:
        """Each path no rename touched: the content of its highest write (None: absent)."""
        best: dict[str, PathWrite] = {}
        for w in self.paths:
            if w.path in self.renamed:
                continue
            if w.path not in best or w.order > best[w.path].order:
                best[w.path] = w
        return {p: w.content for p, w in best.items()}

    def live_writes(self) -> list[PathWrite]:
        """Writes of content that no later write in their causal future replaced: the
        acknowledged writes ``siblings`` must keep somewhere.  A rename writes the same bytes
        at a new path, so a content is one file at every path it was written to: an edit of
        the old path made after the bytes were written replaces them too (a merge carries it
        to the new path, §14 step 5).  So is a write at the new path of a rename concurrent
        with the write (a merge carried the write there) made after it."""
        by_path: dict[str, list[PathWrite]] = {}
        by_content: dict[bytes, list[PathWrite]] = {}
        for w in self.paths:
            by_path.setdefault(w.path, []).append(w)
            if w.content is not None:
                by_content.setdefault(w.content, []).append(w)
        renames = self._renames()
        live = []
        for w in self.paths:
            if w.content is None:
                continue
            copies = by_content[w.content]
            commits = {c.commit for c in copies}
            paths = {c.path for c in copies}
            paths |= self._carried(paths, commits, renames)
            replaced = any(o.content != w.content and o.commit not in commits
                           and any(c in self.ancestors(o.commit) for c in commits)
                           for c_path in paths for o in by_path.get(c_path, []))
            if not replaced:
                live.append(w)
        return live

    def _renames(self) -> list[tuple[Cid, str, str]]:
        """(commit, old path, new path) of every rename: a commit of rename writes deletes
        the old path and writes its bytes at the new one."""
        by_commit: dict[Cid, list[PathWrite]] = {}
        for w in self.paths:
            if w.rename:
                by_commit.setdefault(w.commit, []).append(w)
        return [(c, old.path, new.path) for c, ws in by_commit.items()
                for old in ws if old.content is None for new in ws if new.content is not None]

    def _carried(self, paths: set[str], commits: set[Cid], renames: list[tuple[Cid, str, str]]) -> set[str]:
        """Where a merge carries an edit of ``paths`` made in ``commits``: the new paths of
        renames concurrent with the edit (§14 step 5), transitively.  A rename below the edit
        moved its bytes (a copy by content); one above it renamed an older file."""
        out, todo = set(), set(paths)
        while todo:
            path = todo.pop()
            for rc, old, new in renames:
                if old == path and new not in out and new not in paths and all(
                        rc not in self.ancestors(c) and c not in self.ancestors(rc) for c in commits):
                    out.add(new)
                    todo.add(new)
        return out

    def json_expected(self) -> dict[tuple[str, tuple[str, ...]], str | None]:
        """Each (file, key path): the value of its highest write (None: absent)."""
        best: dict[tuple[str, tuple[str, ...]], KeyWrite] = {}
        for w in self.keys:
            k = (w.file, w.key)
            if k not in best or w.order > best[k].order:
                best[k] = w
        return {k: w.value for k, w in best.items()}
