"""Renames in a three-way merge.  Pure logic: chunk lists come from a callable.

A side *renamed* a base path when it removed the path and added others holding the same
file (the same CID, so the same leaves) or, for files of two or more chunks, a similar
one: at least :data:`RENAME_SHARE` of the larger file's chunks are shared.  Files of one
chunk that were renamed *and* edited are not recognised (one chunk tells nothing about
similarity), nor are empty files (all alike).  Only base paths the other side also
changed are looked at: a rename against an unchanged path merges as a plain remove + add.
Nor is a conflict sibling of the path (``p.~<replica>``, made by a ``siblings`` merge) ever
a rename of it: a side that kept one version there and removed ``p`` did not move the file,
and an edit of ``p`` stays at ``p`` (found by the convergence fuzzer, seed 577).

What follows (:class:`RenamePlan`):

* one side renamed ``p`` to exactly one new path ``q``, the other edited ``p``: the edit
  is *carried* to ``q`` (a three-way merge of ``q`` over the base ``p``);
* one side renamed ``p`` to several paths (copies), the other edited ``p``: ambiguous,
  so the edit stays at ``p`` and a ``rename/modify`` conflict lists the new paths;
* both sides renamed ``p``, to different paths: both are kept and a ``rename/rename``
  conflict lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from casync.model.cid import RAW, Cid, cid_codec
from casync.model.objects import Entry, same_entry

__all__ = ["RENAME_SHARE", "SIBLING_MARK", "Carry", "RenameConflict", "RenamePlan", "find_renames"]

RENAME_SHARE = 0.5
SIBLING_MARK = ".~"  # a conflict sibling of path p is p + SIBLING_MARK + replica (threeway.sibling_name)

Side = Literal["ours", "theirs"]
ChunksFn = Callable[[Entry], frozenset[Cid]]


@dataclass(frozen=True)
class Carry:
    """``renamer`` moved ``old`` to ``new``; the other side's edit of ``old`` goes there."""

    old: str
    new: str
    renamer: Side


@dataclass(frozen=True)
class RenameConflict:
    old: str
    kind: Literal["rename/modify", "rename/rename"]
    targets: tuple[str, ...]  # the new paths, sorted


@dataclass
class RenamePlan:
    carries: list[Carry] = field(default_factory=list)
    conflicts: list[RenameConflict] = field(default_factory=list)



class _Added:
    """The files one side added, indexed by CID and (built on first need) by chunk, so a
    lookup costs what the candidates cost, not a scan of every added file."""

    def __init__(self, added: Mapping[str, Entry], chunks: ChunksFn) -> None:
        self.added = added
        self.chunks = chunks
        self.by_cid: dict[Cid, list[str]] = {}
        for path, entry in sorted(added.items()):
            self.by_cid.setdefault(entry.cid, []).append(path)
        self._by_chunk: dict[Cid, set[str]] | None = None

    def by_chunk(self) -> dict[Cid, set[str]]:
        if self._by_chunk is None:
            self._by_chunk = {}
            for path, entry in self.added.items():
                if cid_codec(entry.cid) == RAW:
                    continue  # one chunk: never similar, only the same
                for chunk in self.chunks(entry):
                    self._by_chunk.setdefault(chunk, set()).add(path)
        return self._by_chunk

    def targets(self, path: str, old: Entry) -> tuple[str, ...]:
        """The added paths that hold ``path``'s file (``old``), its conflict siblings excepted."""
        sibling = path + SIBLING_MARK
        return tuple(p for p in self._targets(old) if not p.startswith(sibling))

    def _targets(self, old: Entry) -> tuple[str, ...]:
        exact = self.by_cid.get(old.cid)
        if exact:
            return tuple(exact)
        if cid_codec(old.cid) == RAW:
            return ()
        mine = self.chunks(old)
        if len(mine) < 2:
            return ()
        index = self.by_chunk()
        candidates = set().union(*(index.get(c, set()) for c in mine))
        similar = []
        for path in candidates:
            theirs = self.chunks(self.added[path])
            if len(theirs) >= 2 and len(mine & theirs) >= RENAME_SHARE * max(len(mine), len(theirs)):
                similar.append(path)
        return tuple(sorted(similar))


def find_renames(base: Mapping[str, Entry], ours: Mapping[str, Entry], theirs: Mapping[str, Entry],
                 chunks: ChunksFn) -> RenamePlan:
    """The renames that matter to this merge, and what to do about them.  Symmetric:
    swapping the sides swaps ``renamer`` and nothing else."""
    plan = RenamePlan()
    sides: dict[Side, Mapping[str, Entry]] = {"ours": ours, "theirs": theirs}
    added = {s: _Added({p: e for p, e in flat.items() if p not in base and e.kind == "file"}, chunks)
             for s, flat in sides.items()}
    for old in sorted(base):
        b = base[old]
        o, t = ours.get(old), theirs.get(old)
        if b.kind != "file" or b.tsize == 0 or (o is not None and t is not None):
            continue  # (every empty file is the same file: its "rename" would be a guess)
        if o is None and t is None:
            by_ours, by_theirs = added["ours"].targets(old, b), added["theirs"].targets(old, b)
            if by_ours and by_theirs and set(by_ours) != set(by_theirs):
                plan.conflicts.append(RenameConflict(old, "rename/rename", tuple(sorted({*by_ours, *by_theirs}))))
            continue
        renamer: Side = "ours" if o is None else "theirs"
        other: Side = "theirs" if renamer == "ours" else "ours"
        if same_entry(sides[other].get(old), b):
            continue  # the other side did not change the path: a plain remove + add
        targets = added[renamer].targets(old, b)
        if len(targets) == 1 and targets[0] not in sides[other]:
            plan.carries.append(Carry(old, targets[0], renamer))
        elif targets:
            plan.conflicts.append(RenameConflict(old, "rename/modify", targets))
    return plan
