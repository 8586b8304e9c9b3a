"""Merging histories: fast-forward, or merge-base + three-way tree merge + merge commit.

The pure decision logic is :mod:`casync.merge.threeway`; this module gathers its inputs from the
repository (flat trees, the last write of each conflicting path on each side), writes
merged content, makes the merge commit (both parents, joined vector clock), and moves
the branch by compare-and-swap and the working tree with the usual dirty checks.

What the histories say (merge bases, a virtual base for criss-cross histories, who
wrote what since) is gathered by :mod:`casync.repo.mergebase`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casync.errors import ConflictError, StateRefused, UsageError, WorktreeDirty
from casync.merge.threeway import (
    Conflict,
    Decision,
    PolicyRules,
    ResolverFn,
)
from casync.model.cid import Cid, cid_str, parse_cid, short
from casync.model.commit import decode_commit
from casync.progress import NULL_PROGRESS, Progress
from casync.repo.mergebase import merge_sides, real_side
from casync.repo.repository import Repository, is_executable
from casync.settings import limits, merge_rules, priorities
from casync.trees.paths import grafted, merged_outside, outside_entries
from casync.trees.unixfs import Entry, update_tree
from casync.trees.walk import EntryLookup
from casync.worktree.checkout import move_worktree, tree_delta, update_worktree
from casync.worktree.disk import WorktreeWriter
from casync.worktree.state import (
    MERGE_STATE_KEY,
    checked_out,
    interrupted_move,
    move_branch_then_files,
    require_current,
)

__all__ = ["MergeOutcome", "OpenConflict", "abort_merge", "continue_merge", "list_conflicts",
           "load_entry_point_resolvers", "merge", "merge_state", "resolve_conflict"]

_STATE_KEY = MERGE_STATE_KEY


@dataclass
class MergeOutcome:
    kind: str  # "up-to-date", "fast-forward", "merged", "conflicts"
    commit: Cid | None
    decisions: list[Decision] = field(default_factory=list)
    siblings: list[Conflict] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def conflict(c: Conflict) -> dict[str, Any]:
            return {"path": c.path, "kind": c.kind, "sibling": c.sibling, "targets": list(c.targets)}

        return {"result": self.kind, "commit": cid_str(self.commit) if self.commit else None,
                "decisions": [{"path": d.path, "policy": d.policy, "winner": d.winner} for d in self.decisions],
                "siblings": [conflict(c) for c in self.siblings],
                "conflicts": [conflict(c) for c in self.conflicts]}


def _priorities(repo: Repository) -> dict[str, int]:
    return priorities(repo.config)  # a bad stored value is a UsageError naming it, not a traceback


def load_entry_point_resolvers() -> dict[str, ResolverFn]:
    """Resolvers registered by installed packages in the ``casync.resolvers`` group."""
    from importlib.metadata import entry_points

    out: dict[str, ResolverFn] = {}
    for ep in entry_points(group="casync.resolvers"):
        out[ep.name] = ep.load()
    return out


def merge(repo: Repository, rev: str, policy: str | None = None, message: str | None = None,
          resolvers: Mapping[str, ResolverFn] | None = None, progress: Progress = NULL_PROGRESS,
          allow_unrelated: bool = False, rules: PolicyRules | None = None,
          replica_priorities: Mapping[str, int] | None = None) -> MergeOutcome:
    """Merge ``rev`` into the current branch (or detached HEAD).

    Histories with no common commit are refused unless ``allow_unrelated``: they are
    usually another repository's data (a mistaken URL, a forged head record).  ``rules`` and
    ``replica_priorities`` replace the repository's ``merge`` and ``priorities`` settings (the
    agent passes the fleet's, from casync.toml)."""
    with repo.store.writer_lock():
        if merge_state(repo) is not None:
            raise StateRefused("a merge is in progress", hint="finish it with 'casync merge --continue' or "
                               "'casync merge --abort'")
        _finish_interrupted_move(repo, progress)
        require_current(repo, "merging")  # a merge on a moved branch would write over the files
        ours = repo.head()
        theirs = repo.resolve(rev)
        branch = repo.current_branch()
        if rules is None:
            rules = merge_rules(repo.config, policy)  # checked: a bad stored value names itself
        cap = limits(repo.config)
        if cap.future_commits == "clamp":  # a commit from a clock far ahead weighs as now + max_future_ms
            rules = dataclasses.replace(rules, time_ceiling_ms=int(time.time() * 1000) + cap.max_future_ms)
        # installed resolvers only when a rule names one (importlib.metadata costs a merge ~30 ms)
        named = any(p.startswith("custom:") for p in (rules.default, *(p for _, p in rules.rules)))
        all_resolvers = {**(load_entry_point_resolvers() if named else {}), **(resolvers or {})}
        if ours is None or repo.graph.is_ancestor(ours, theirs):
            if ours == theirs:
                return MergeOutcome("up-to-date", ours)
            old_tree, new_tree = repo.tree_of(ours) if ours is not None else None, repo.tree_of(theirs)
            st = move_worktree(repo, old_tree, new_tree, f"fast-forward to {rev}", progress=progress, dry_run=True)
            move_branch_then_files(repo, branch, ours, theirs, f"merge {rev}: fast-forward",
                                   lambda: move_worktree(repo, old_tree, new_tree, f"fast-forward to {rev}",
                                                         progress=progress, st=st, commit=theirs))
            return MergeOutcome("fast-forward", theirs)
        if repo.graph.is_ancestor(theirs, ours):
            return MergeOutcome("up-to-date", ours)
        if not allow_unrelated and not repo.graph.merge_bases(ours, theirs):
            raise ConflictError(f"refusing to merge {rev}: it shares no history with {short(ours)}",
                                hint="check where it came from; pass --allow-unrelated-histories if intended")
        outside = _unfetched_merge(repo, ours, theirs)  # before anything: a partial clone may lack what it needs
        our_side = real_side(repo, ours)
        merged = merge_sides(repo, our_side, real_side(repo, theirs), rules, all_resolvers,
                             _priorities(repo) if replica_priorities is None else replica_priorities)
        result, ours_tree = merged.result, our_side.tree
        # the merged tree is ours with the merge's changes: only the directories on their paths
        # are read and written, so a merge costs what the two sides changed, not the tree
        new_tree = update_tree(repo.blocks, ours_tree, _graft(repo, ours_tree, merged.changes, outside),
                               repo.hash_name).cid
        what = f"merge of {rev}"
        st = move_worktree(repo, ours_tree, new_tree, what, progress=progress, dry_run=True)
        if result.conflicts and repo.bare:
            listed = ", ".join(c.path for c in result.conflicts[:5])
            raise ConflictError(f"merge of {rev} has conflicts the 'manual' policy leaves to a person: {listed}",
                                hint="a bare repository cannot stop mid-merge; use another policy")
        if result.conflicts:
            # stopping mid-merge mixes the merge into the working tree; 'merge --abort' must
            # be able to restore HEAD without losing anything, so local edits block it
            in_merged = EntryLookup(repo.blocks, new_tree)
            local = sorted({*st.modified, *st.deleted, *(p for p in st.added if in_merged(p) is not None)})
            if local:
                listed = ", ".join(local[:5]) + (" ..." if len(local) > 5 else "")
                raise WorktreeDirty(f"merge of {rev} stops for conflicts, and these uncommitted changes would be "
                                    f"mixed into it: {listed}",
                                    hint="commit them first, or merge with a policy that does not stop")
            repo.blocks.flush()  # merged/json blocks the user may commit later
            _save_state(repo, theirs, message or f"Merge {rev}", result.conflicts, new_tree)
            try:  # the files become the merged tree; the working tree stays recorded at ours
                delta = tree_delta(repo, ours_tree, new_tree, st.paths())
                update_worktree(repo, delta.old, delta.new, None, what, progress=progress, st=st)
            except WorktreeDirty:  # a file written since the dry run: refused before any file was
                repo.store.write(lambda txn: txn.delete(_STATE_KEY, db=repo.store.db("meta")))
                raise
            return MergeOutcome("conflicts", None, result.decisions, result.siblings, result.conflicts)
        meta = _conflict_meta(result.siblings)
        cid = repo.make_commit(new_tree, [ours, theirs], message or f"Merge {rev}", meta=meta)
        repo.blocks.flush()
        move_branch_then_files(repo, branch, ours, cid, f"merge {rev}",
                               lambda: move_worktree(repo, ours_tree, new_tree, what, progress=progress, st=st,
                                                     commit=cid))
        return MergeOutcome("merged", cid, result.decisions, result.siblings, [])


def _unfetched_merge(repo: Repository, ours: Cid, theirs: Cid) -> dict[str, tuple[Cid, int]]:
    """In a partial clone: the merged tree's entries outside its paths, taken whole from the
    side that changed them (:func:`casync.trees.paths.merged_outside`; both changing one
    is refused, with the hint to fetch it).  Empty in a full repository."""
    partial = repo.partial
    if partial is None:
        return {}
    bases = repo.graph.merge_bases(ours, theirs)
    base = repo.tree_of(bases[0]) if bases else None
    return merged_outside(repo.blocks.get, partial, base, repo.tree_of(ours), repo.tree_of(theirs))


def _graft(repo: Repository, ours_tree: Cid | None, changes: dict[str, Entry | None],
           outside: dict[str, tuple[Cid, int]]) -> dict[str, Entry | None]:
    """The merge's ``changes`` to ours' tree, and in a partial clone those outside its paths:
    each outside entry as :func:`casync.trees.paths.merged_outside` picked it, and ours'
    outside entries it did not keep removed.  A merged file outside the paths is refused."""
    partial = repo.partial
    if partial is None:
        return changes
    grafted({p: e for p, e in changes.items() if e is not None}, {}, partial)  # refuses one outside
    mine = outside_entries(repo.blocks.get, ours_tree, partial) if ours_tree is not None else {}
    out = dict(changes)
    out.update({p: Entry(cid, "file", tsize) for p, (cid, tsize) in outside.items() if mine.get(p) != (cid, tsize)})
    out.update({p: None for p in mine if p not in outside})
    return out


def _conflict_meta(siblings: list[Conflict]) -> dict[str, str]:
    meta: dict[str, str] = {}
    kept = {c.path: c.sibling for c in siblings if c.sibling is not None}
    if kept:
        meta["casync.siblings"] = json.dumps(kept, sort_keys=True)
    kept_by = {c.path: c.kept_by for c in siblings if c.sibling is not None and c.kept_by}
    if kept_by:  # whose version stayed at the path: 'resolve --pick REPLICA' finds it there
        meta["casync.kept"] = json.dumps(kept_by, sort_keys=True)
    renames = {c.path: {"kind": c.kind, "targets": list(c.targets)} for c in siblings if c.targets}
    if renames:
        meta["casync.merge.renames"] = json.dumps(renames, sort_keys=True)
    return meta


def _finish_interrupted_move(repo: Repository, progress: Progress) -> None:
    """A merge killed after it moved the branch, before the files followed: they follow now
    (edits made since are refused as by any checkout), and this merge goes on from there."""
    head = interrupted_move(repo)
    if head is None:
        return
    move_worktree(repo, checked_out(repo).tree, repo.tree_of(head), "finishing the interrupted merge",
                  progress=progress, commit=head)


def _save_state(repo: Repository, theirs: Cid, message: str, conflicts: list[Conflict], written: Cid) -> None:
    state = {"theirs": cid_str(theirs), "message": message, "written_tree": cid_str(written),
             "conflicts": [{"path": c.path, "kind": c.kind, "sibling": c.sibling, "targets": list(c.targets),
                            "ours": _entry_json(c.ours), "theirs": _entry_json(c.theirs)} for c in conflicts]}
    repo.store.put("meta", _STATE_KEY, json.dumps(state).encode())


def merge_state(repo: Repository) -> dict[str, Any] | None:
    raw = repo.store.get("meta", _STATE_KEY)
    return json.loads(raw) if raw else None


def continue_merge(repo: Repository, message: str | None = None) -> Cid:
    """Commit the working tree as the merge commit, once every conflict is resolved."""
    from casync.worktree.checkout import commit_worktree

    state = merge_state(repo)
    if state is None:
        raise StateRefused("no merge in progress", hint="nothing to continue or abort; 'casync conflicts' lists any "
                           "sibling versions left to resolve")
    open_conflicts = [c for c in list_conflicts(repo) if c.source == "merge"]
    if open_conflicts:
        paths = ", ".join(c.path for c in open_conflicts)
        raise ConflictError(f"unresolved conflicts: {paths}",
                            hint="pick a version with 'casync resolve PATH --pick ours|theirs' first")
    with repo.store.writer_lock():
        cid = commit_worktree(repo, message or state["message"], allow_empty=True,
                              extra_parents=(parse_cid(state["theirs"]),),
                              merged_tree=parse_cid(state["written_tree"]) if state.get("written_tree") else None)
        repo.store.write(lambda txn: txn.delete(_STATE_KEY, db=repo.store.db("meta")))
        return cid


def abort_merge(repo: Repository, progress: Progress = NULL_PROGRESS) -> None:
    """Throw the merge away: the paths it wrote go back to HEAD; other uncommitted edits stay."""
    from casync.worktree.edit import abort_merge_worktree

    state = merge_state(repo)
    if state is None:
        raise StateRefused("no merge in progress", hint="nothing to continue or abort; 'casync conflicts' lists any "
                           "sibling versions left to resolve")
    with repo.store.writer_lock():
        resolved = set(state.get("resolved", [])) | set(state.get("resolve_wrote", []))
        owned = {c["path"] for c in state["conflicts"]} | {c["sibling"] for c in state["conflicts"] if c["sibling"]}
        head = repo.head()
        if state.get("written_tree"):
            abort_merge_worktree(repo, parse_cid(state["written_tree"]), owned | resolved, resolved, progress)
        elif head is not None:
            # stopped by a casync that did not record 'written_tree': the conflicted paths and
            # their siblings go back; what else it merged cleanly stays, shown as modified
            abort_merge_worktree(repo, repo.tree_of(head), owned | resolved, owned | resolved, progress)
        repo.store.write(lambda txn: txn.delete(_STATE_KEY, db=repo.store.db("meta")))


def _entry_json(e: Entry | None) -> dict[str, Any] | None:
    return None if e is None else {"cid": cid_str(e.cid), "kind": e.kind, "tsize": e.tsize,
                                   "executable": e.executable}


def _entry_from_json(d: dict[str, Any] | None) -> Entry | None:
    return None if d is None else Entry(parse_cid(d["cid"]), d["kind"], d["tsize"], d["executable"])


@dataclass(frozen=True)
class OpenConflict:
    path: str
    kind: str
    siblings: tuple[str, ...]
    source: str  # "merge" (a merge in progress) or "tree" (siblings committed in HEAD)
    kept_by: str | None = None  # the replica whose version is at the path (siblings merges record it)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "siblings": list(self.siblings), "source": self.source,
                "kept_by": self.kept_by}


def list_conflicts(repo: Repository) -> list[OpenConflict]:
    """Conflicts of a merge in progress, then sibling versions kept in HEAD's tree and
    ambiguous renames that merges recorded and HEAD has not settled."""
    out: list[OpenConflict] = []
    state = merge_state(repo)
    seen: set[str] = set()
    if state is not None:
        for c in state["conflicts"]:
            sib = c.get("sibling")
            alive = sib is not None and (repo.root / sib).exists()
            if c.get("targets"):
                if c["path"] not in state.get("resolved", []):
                    out.append(OpenConflict(c["path"], c["kind"], tuple(c["targets"]), "merge"))
                    seen.add(c["path"])
            elif alive or (sib is None and c["path"] not in state.get("resolved", [])):
                out.append(OpenConflict(c["path"], c["kind"], (sib,) if alive and sib else (), "merge"))
                seen.add(c["path"])
    head = repo.head()
    if head is not None:
        flat = repo.flat_tree(head)
        kept_by: dict[str, str] = {}
        for path, sibs in sorted(_recorded_siblings(repo, head, flat, kept_by).items()):
            if path not in seen:
                out.append(OpenConflict(path, "siblings", tuple(sibs), "tree", kept_by.get(path)))
                seen.add(path)
        for path, (kind, targets) in sorted(_recorded_renames(repo, head, flat).items()):
            if path not in seen:
                out.append(OpenConflict(path, kind, targets, "tree"))
    return out


def _recorded(repo: Repository, cid: Cid, key: str) -> dict[str, Any]:
    """A merge commit's ``meta[key]`` record ({} if none, or unreadable).  The raw block is
    searched for the key first (DAG-CBOR spells map keys out), so the many merges that
    record nothing are not decoded: 'casync conflicts' walks the whole history."""
    raw = repo.blocks.get(cid)
    if key.encode() not in raw:
        return {}
    try:
        recorded = json.loads(decode_commit(raw, cid).meta.get(key, "{}"))
    except ValueError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _recorded_renames(repo: Repository, head: Cid, flat: Mapping[str, Entry]
                      ) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{old path: (kind, new paths)}`` for rename conflicts that merges recorded (commit
    metadata ``casync.merge.renames``) and HEAD has not settled: a ``rename/modify`` while the
    edited file is still at its old path, a ``rename/rename`` while two of its new paths
    exist.  The newest record of a path counts."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    settled: set[str] = set()
    for cid, node in repo.graph.walk_nodes([head]):
        if len(node.parents) < 2:
            continue
        for path, rec in _recorded(repo, cid, "casync.merge.renames").items():
            if path in found or path in settled or not isinstance(rec, dict):
                continue
            kind, targets = rec.get("kind"), rec.get("targets")
            if kind not in ("rename/modify", "rename/rename") or not isinstance(targets, list):
                continue
            present = tuple(t for t in targets if isinstance(t, str) and t in flat)
            open_ = path in flat if kind == "rename/modify" else len(present) >= 2
            if open_:
                found[str(path)] = (kind, present)
            else:
                settled.add(path)
    return found


def _recorded_siblings(repo: Repository, head: Cid, flat: Mapping[str, Entry],
                       kept_by: dict[str, str] | None = None) -> dict[str, list[str]]:
    """``{path: [sibling paths]}`` for sibling versions that merges recorded (commit
    metadata ``casync.siblings``) and HEAD's tree still holds.  A file that merely has
    ``.~`` in its name is the user's, not a conflict.  ``kept_by`` gets, per path, the
    replica whose version the newest such merge left at the path (``casync.kept``)."""
    candidates = {p for p in flat if ".~" in p.rpartition("/")[2]}
    found: dict[str, set[str]] = {}
    if not candidates:
        return {}
    left = set(candidates)
    for cid, node in repo.graph.walk_nodes([head]):
        if len(node.parents) < 2:
            continue
        kept = _recorded(repo, cid, "casync.kept") if kept_by is not None else {}
        for path, sib in _recorded(repo, cid, "casync.siblings").items():
            if isinstance(sib, str) and sib in candidates:
                found.setdefault(str(path), set()).add(sib)
                left.discard(sib)
                if kept_by is not None and isinstance(kept.get(path), str):
                    kept_by.setdefault(str(path), kept[path])
        if not left:
            break
    return {path: sorted(sibs) for path, sibs in found.items()}


def resolve_conflict(repo: Repository, path: str, pick: str | None = None, file_bytes: bytes | None = None
                     ) -> str:
    """Settle one conflict in the working tree: keep ``ours``, ``theirs``, a replica's
    sibling, or given bytes; sibling files go away.  Commit (or ``merge --continue``) after.

    Holds the writer lock throughout (a commit must not snapshot a half-resolved tree)
    and keeps the executable bit of the version picked."""
    repo.require_worktree("resolve", hint="in a bare repository, settle siblings in a transaction: write PATH "
                          "with the version to keep and delete its PATH.~REPLICA files")
    if (pick is None) == (file_bytes is None):
        raise UsageError("give exactly one of --pick or --file")
    with repo.store.writer_lock():
        return _resolve_locked(repo, path, pick, file_bytes)


def _executable(path: Path) -> bool:
    try:
        return is_executable(path.lstat())
    except FileNotFoundError:
        return False


def _resolve_locked(repo: Repository, path: str, pick: str | None, file_bytes: bytes | None) -> str:
    conflicts = {c.path: c for c in list_conflicts(repo)}
    conflict = conflicts.get(path)
    if conflict is None:
        raise UsageError(f"no conflict at {path!r}", hint="list them with 'casync conflicts'")
    writer = WorktreeWriter(repo.root)
    state = merge_state(repo)
    recorded = next((c for c in (state or {}).get("conflicts", []) if c["path"] == path), None)
    chosen: str
    if conflict.kind.startswith("rename/"):
        chosen = _resolve_rename(repo, writer, conflict, pick)
    elif file_bytes is not None:
        writer.write_file(path, [file_bytes], _executable(repo.root / path))
        chosen = "file"
    elif pick == "ours":
        if recorded is not None and recorded["ours"] is None:
            writer.remove(path)
        chosen = "ours"
    elif pick == "theirs" and recorded is not None and conflict.source == "merge" and not conflict.siblings:
        theirs = _entry_from_json(recorded["theirs"])
        if theirs is None:
            writer.remove(path)
        else:
            writer.write_file(path, repo.iter_file(theirs.cid), theirs.executable)
        chosen = "theirs"
    else:
        if pick == "theirs":
            if len(conflict.siblings) != 1:
                raise UsageError(f"{path!r} has {len(conflict.siblings)} sibling versions",
                                 hint="pick one by replica: --pick REPLICA")
            sibling = conflict.siblings[0]
        elif pick is not None and pick == conflict.kept_by:
            sibling = path  # that replica's version is the one at the path: keep it
        else:
            # siblings are named path.~REPLICA, or path.~REPLICA.<hash> when that was taken
            # (an exact name first: replica ids may themselves contain dots)
            hashed = re.compile(rf"{re.escape(pick or '')}\.[0-9a-f]{{8}}")
            matches = [s for s in conflict.siblings if s.rpartition(".~")[2] == pick] or \
                [s for s in conflict.siblings if hashed.fullmatch(s.rpartition(".~")[2])]
            if len(matches) != 1:
                options = ", ".join([*([conflict.kept_by] if conflict.kept_by else []),
                                     *(s.rpartition(".~")[2] for s in conflict.siblings)]) or "none"
                what = "no version" if not matches else f"{len(matches)} versions"
                raise UsageError(f"{what} of {path!r} from {pick!r}",
                                 hint=f"use ours, theirs, or one of: {options}")
            sibling = matches[0]
        if sibling != path:
            data = (repo.root / sibling).read_bytes()
            writer.write_file(path, [data], _executable(repo.root / sibling))
        chosen = sibling
    if not conflict.kind.startswith("rename/"):
        for sib in conflict.siblings:
            writer.remove(sib)
    if state is not None and recorded is not None:
        state.setdefault("resolved", []).append(path)
        if conflict.kind.startswith("rename/"):  # it wrote (or removed) the new paths too: abort puts them back
            wrote = state.setdefault("resolve_wrote", [])
            wrote.extend(p for p in conflict.siblings if p not in wrote)
        repo.store.put("meta", _STATE_KEY, json.dumps(state).encode())
    return chosen


def _resolve_rename(repo: Repository, writer: WorktreeWriter, conflict: OpenConflict, pick: str | None) -> str:
    """``--pick NEW_PATH``: for ``rename/modify`` the edited file moves there (its old
    path goes); for ``rename/rename`` that path stays and the other new paths go."""
    if pick not in conflict.siblings:
        raise UsageError(f"{conflict.path!r} is a {conflict.kind} conflict: pick the path to keep",
                         hint=f"use --pick with one of: {', '.join(conflict.siblings) or 'none'}")
    if conflict.kind == "rename/modify":
        source = repo.root / conflict.path
        if not source.is_file():
            raise UsageError(f"{conflict.path!r} (the edited file to move to {pick}) is not in the working tree",
                             hint=f"restore it with 'casync restore {conflict.path}', or commit without it")
        writer.write_file(pick, [source.read_bytes()], _executable(source))
        writer.remove(conflict.path)
    else:
        for other in conflict.siblings:
            if other != pick:
                writer.remove(other)
    return pick
