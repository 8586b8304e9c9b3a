"""Three-way tree merge under a conflict policy.  Pure logic: conflicts are values.

Inputs are flat trees (``{path: Entry}``) for the merge base and both sides, plus, for
every path both sides changed, a :class:`Write` per side saying when and where that
side last wrote it, and the renames :mod:`casync.merge.renames` found (an edit follows a
rename; an ambiguous rename is a conflict).  The json policy asks, through a callable,
when each side last wrote one key, so each key is a last-writer-wins register.  The
result is the merged flat tree, the decisions taken, and the
conflicts the policy left open (``manual``) or kept as siblings (``siblings``).

Every replica must compute the same merge from the same inputs, so nothing here
depends on which side is "local" except the ``ours``/``theirs`` policies, which are
explicitly asymmetric.  Invariant 4 (nothing lost): a concurrent write is only
dropped by a policy that decides to drop it, and every such decision is reported.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from casync.errors import UsageError
from casync.merge.renames import SIBLING_MARK, RenamePlan
from casync.model.commit import HybridTime
from casync.model.names import is_replica_name
from casync.model.objects import Entry, same_entry

__all__ = [
    "POLICIES",
    "clamped",
    "Conflict",
    "Decision",
    "MergeInput",
    "MergeResult",
    "PolicyRules",
    "ResolverFn",
    "Side",
    "Write",
    "json_merge",
    "merge_trees",
    "sibling_name",
]

POLICIES = ("lww", "siblings", "ours", "theirs", "priority", "json", "manual")

Side = Literal["ours", "theirs"]


@dataclass(frozen=True, slots=True)
class Write:
    """When and by whom a side last wrote a path (since the merge base)."""

    time: HybridTime
    replica: str
    priority: int = 0  # lower number = higher priority, as the seed's regions use it


@dataclass(frozen=True, slots=True)
class Conflict:
    path: str
    kind: Literal["modify/modify", "add/add", "delete/modify", "modify/delete", "file/directory",
                  "rename/modify", "rename/rename"]
    base: Entry | None
    ours: Entry | None
    theirs: Entry | None
    sibling: str | None = None  # where the other version was kept, for siblings/manual
    targets: tuple[str, ...] = ()  # rename conflicts: the paths the file was renamed to
    kept_by: str | None = None  # siblings: the replica whose version stayed at the path


@dataclass(frozen=True, slots=True)
class Decision:
    path: str
    policy: str
    winner: str  # "ours", "theirs", "merged", "siblings", "deleted"


@dataclass
class MergeResult:
    tree: dict[str, Entry]
    decisions: list[Decision] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)  # left for the user (manual)
    siblings: list[Conflict] = field(default_factory=list)  # kept both (siblings)

    @property
    def clean(self) -> bool:
        return not self.conflicts


ResolverFn = Callable[[str, bytes | None, bytes | None, bytes | None], bytes | None]


@dataclass(frozen=True)
class PolicyRules:
    """The default policy plus per-path glob rules (first match wins)."""

    default: str = "lww"
    rules: tuple[tuple[str, str], ...] = ()
    skew_tolerance_ms: int = 0
    # ``limits.future_commits = clamp``: a write's wall time counts as at most this in
    # last-write-wins (a replica whose clock runs ahead cannot win every merge); None: as is
    time_ceiling_ms: int | None = None

    def __post_init__(self) -> None:
        for policy in (self.default, *(p for _, p in self.rules)):
            check_policy(policy)

    def policy_for(self, path: str) -> str:
        for pattern, policy in self.rules:
            if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern):
                return policy
        return self.default


def check_policy(policy: str) -> None:
    if policy not in POLICIES and not policy.startswith("custom:"):
        raise UsageError(f"unknown merge policy {policy!r}",
                         hint=f"use one of: {', '.join(POLICIES)}, or custom:NAME for a registered resolver")


@dataclass
class MergeInput:
    base: Mapping[str, Entry]
    ours: Mapping[str, Entry]
    theirs: Mapping[str, Entry]
    writes: Mapping[tuple[str, Side], Write]  # last write per (path, side) for changed paths
    rules: PolicyRules = field(default_factory=PolicyRules)
    load: Callable[[Entry], bytes] | None = None  # needed by json and custom policies
    store_bytes: Callable[[bytes], Entry] | None = None  # ditto, to write merged content
    resolvers: Mapping[str, ResolverFn] = field(default_factory=dict)
    # Paths each side wrote since the base (any commit changed them), when known.  With
    # them the merge is faithful to operations, not only states: a side that deleted a
    # path it had added, or wrote a file back to its base bytes, still wrote it (ABA),
    # so a later delete wins under lww instead of vanishing as "no change".
    touched_ours: frozenset[str] | None = None
    touched_theirs: frozenset[str] | None = None
    # renames found by casync.merge.renames.find_renames (the writes of a carried edit's new
    # path are keyed by that path on both sides)
    renames: RenamePlan | None = None
    # when each side last wrote one key (a path of keys from the top object) of a JSON
    # file, for the json policy's per-key lww; without it a tie goes to the file's winner
    key_write: Callable[[str, Side, tuple[str, ...]], Write] | None = None
    # whether a side wrote one key since the base, when known: a side that set a key and then
    # deleted it, or set it back to the base's value, still wrote it (ABA, as for paths), so
    # a later delete of a key is not undone by an older write of it
    key_changed: Callable[[str, Side, tuple[str, ...]], bool] | None = None
    # whether ours or theirs has a file at a path, for maps that hold only the paths the
    # sides changed (a sibling name must not land on a file neither side changed)
    occupied: Callable[[str], bool] | None = None


def sibling_name(path: str, replica: str) -> str:
    """``path.~<replica>``; a replica id that is not a safe name (it came from a peer)
    is replaced by a hash of it, so the sibling can never be a path instruction."""
    if not is_replica_name(replica):
        import hashlib

        replica = "x" + hashlib.sha256(replica.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{path}{SIBLING_MARK}{replica}"



def clamped(write: Write, ceiling_ms: int | None) -> Write:
    """``write`` with its time capped at ``ceiling_ms`` (its weight in last-write-wins)."""
    if ceiling_ms is None or write.time.wall_ms <= ceiling_ms:
        return write
    return Write(HybridTime(ceiling_ms, 0), write.replica, write.priority)


def lww_winner(ours: Write, theirs: Write, tolerance_ms: int) -> Side:
    """The later HLC time wins.  Times within ``tolerance_ms`` of each other (clock skew
    the fleet tolerates) count as simultaneous; then the higher replica priority (lower
    number), then the larger replica id wins.  Symmetric: swapping the sides swaps the
    answer, so every replica computes the same winner."""
    simultaneous = (abs(ours.time.wall_ms - theirs.time.wall_ms) <= tolerance_ms if tolerance_ms > 0
                    else ours.time == theirs.time)
    if not simultaneous:
        return "ours" if ours.time > theirs.time else "theirs"
    if ours.priority != theirs.priority:
        return "ours" if ours.priority < theirs.priority else "theirs"
    if ours.replica != theirs.replica:
        return "ours" if ours.replica > theirs.replica else "theirs"
    return "ours" if ours.time >= theirs.time else "theirs"


def priority_winner(ours: Write, theirs: Write, tolerance_ms: int) -> Side:
    if ours.priority != theirs.priority:
        return "ours" if ours.priority < theirs.priority else "theirs"
    return lww_winner(ours, theirs, tolerance_ms)


def merge_trees(inp: MergeInput) -> MergeResult:
    """Merge ``theirs`` into ``ours`` relative to ``base``."""
    result = MergeResult(tree={})
    handled = _apply_renames(inp, result) if inp.renames is not None else set()
    paths = set(inp.base) | set(inp.ours) | set(inp.theirs)
    for path in sorted(paths - handled):
        b, o, t = inp.base.get(path), inp.ours.get(path), inp.theirs.get(path)
        if same_entry(o, t):
            if o is not None:
                result.tree[path] = o
            continue
        if inp.touched_ours is not None and inp.touched_theirs is not None:
            wrote_o, wrote_t = path in inp.touched_ours, path in inp.touched_theirs
            if wrote_o and wrote_t:
                _resolve(inp, result, path, b, o, t)
                continue
            if wrote_o != wrote_t:
                kept = o if wrote_o else t
                if kept is not None:
                    result.tree[path] = kept
                continue
        if same_entry(b, t):
            if o is not None:
                result.tree[path] = o
        elif same_entry(b, o):
            if t is not None:
                result.tree[path] = t
        else:
            _resolve(inp, result, path, b, o, t)
    _fix_file_directory_clashes(inp, result)
    return result


def _apply_renames(inp: MergeInput, result: MergeResult) -> set[str]:
    """Carry edits to renamed paths and record the ambiguous renames; returns the paths
    settled here, which the path-by-path merge leaves alone."""
    assert inp.renames is not None
    handled: set[str] = set()
    for carry in inp.renames.carries:
        b = inp.base[carry.old]
        moved = (inp.ours if carry.renamer == "ours" else inp.theirs)[carry.new]
        edited = (inp.theirs if carry.renamer == "ours" else inp.ours)[carry.old]
        handled |= {carry.old, carry.new}
        if same_entry(moved, b):  # a plain rename: the edit goes to the new path
            result.tree[carry.new] = edited
            result.decisions.append(Decision(carry.new, "rename", "theirs" if carry.renamer == "ours" else "ours"))
        else:  # renamed and edited: both edits meet at the new path
            pair = (moved, edited) if carry.renamer == "ours" else (edited, moved)
            _resolve(inp, result, carry.new, b, *pair)
    for rc in inp.renames.conflicts:
        mine, other = inp.ours.get(rc.old), inp.theirs.get(rc.old)
        if rc.kind == "rename/modify":  # the edit stays where it was; nothing is lost
            kept = mine if mine is not None else other
            assert kept is not None
            result.tree[rc.old] = kept
            handled.add(rc.old)
        conflict = Conflict(rc.old, rc.kind, inp.base.get(rc.old), mine, other, None, rc.targets)
        policy = inp.rules.policy_for(rc.old)
        (result.conflicts if policy == "manual" else result.siblings).append(conflict)
        result.decisions.append(Decision(rc.old, "rename", "siblings"))
    return handled


def _kind(b: Entry | None, o: Entry | None, t: Entry | None) -> Any:
    if o is None and t is None:
        return "delete/modify"
    if o is None:
        return "delete/modify"
    if t is None:
        return "modify/delete"
    return "add/add" if b is None else "modify/modify"


def _resolve(inp: MergeInput, result: MergeResult, path: str, b: Entry | None, o: Entry | None,
             t: Entry | None) -> None:
    policy = inp.rules.policy_for(path)
    wo = clamped(inp.writes.get((path, "ours")) or Write(HybridTime(0, 0), "", 0), inp.rules.time_ceiling_ms)
    wt = clamped(inp.writes.get((path, "theirs")) or Write(HybridTime(0, 0), "", 0), inp.rules.time_ceiling_ms)
    kind = _kind(b, o, t)

    def take(side: Side, name: str = policy) -> None:
        entry = o if side == "ours" else t
        if entry is not None:
            result.tree[path] = entry
        result.decisions.append(Decision(path, name, side if entry is not None else "deleted"))

    if policy == "ours":
        take("ours")
    elif policy == "theirs":
        take("theirs")
    elif policy == "lww":
        take(lww_winner(wo, wt, inp.rules.skew_tolerance_ms))
    elif policy == "priority":
        take(priority_winner(wo, wt, inp.rules.skew_tolerance_ms))
    elif policy == "json" and o is not None and t is not None and inp.load and inp.store_bytes:
        key_changed = inp.key_changed
        changed = (lambda side, keys: key_changed(path, side, keys)) if key_changed is not None else None
        merged = json_merge(inp.load(b) if b else None, inp.load(o), inp.load(t), _key_tie(inp, path, wo, wt),
                            changed)
        if merged is None:  # not JSON objects: fall back to the default policy for the whole file
            take(lww_winner(wo, wt, inp.rules.skew_tolerance_ms), "json->lww")
        else:
            result.tree[path] = inp.store_bytes(merged)
            result.decisions.append(Decision(path, "json", "merged"))
    elif policy.startswith("custom:"):
        name = policy[len("custom:"):]
        fn = inp.resolvers.get(name)
        if fn is None or inp.load is None or inp.store_bytes is None:
            raise UsageError(f"merge policy {policy!r} for {path!r}: no resolver named {name!r} is registered",
                             hint="register it with repo.merge(..., resolvers={...}) or the 'casync.resolvers' "
                                  "entry point group")
        out = fn(path, inp.load(b) if b else None, inp.load(o) if o else None, inp.load(t) if t else None)
        if out is not None:
            result.tree[path] = inp.store_bytes(out)
        result.decisions.append(Decision(path, policy, "merged" if out is not None else "deleted"))
    else:  # siblings, manual, and json on a delete/modify: keep every version
        _keep_both(inp, result, path, b, o, t, wo, wt, kind, policy)


def _keep_both(inp: MergeInput, result: MergeResult, path: str, b: Entry | None, o: Entry | None,
               t: Entry | None, wo: Write, wt: Write, kind: Any, policy: str) -> None:
    if o is None or t is None:
        # delete/modify: keeping the modified version loses nothing
        kept = o if o is not None else t
        assert kept is not None
        result.tree[path] = kept
        conflict = Conflict(path, kind, b, o, t, None)
    else:
        # 'manual' shows ours at the path (the person merging decides); 'siblings' keeps the
        # lww winner there and the other write beside it, so two replicas merging the same
        # heads in opposite directions build the same tree (and the next sync nests nothing)
        keep_ours = policy == "manual" or lww_winner(wo, wt, inp.rules.skew_tolerance_ms) == "ours"
        kept, other, other_write = (o, t, wt) if keep_ours else (t, o, wo)
        fallback = "theirs" if keep_ours else "ours"
        sib = sibling_name(path, other_write.replica or fallback)
        if sib in inp.ours or sib in inp.theirs or (inp.occupied is not None and inp.occupied(sib)):
            sib = sibling_name(path, f"{other_write.replica or fallback}.{other.cid.hex()[-8:]}")
        result.tree[path] = kept
        result.tree[sib] = other
        kept_by = None if policy == "manual" else ((wo if keep_ours else wt).replica or None)
        conflict = Conflict(path, kind, b, o, t, sib, kept_by=kept_by)
    if policy == "manual":
        result.conflicts.append(conflict)
    else:
        result.siblings.append(conflict)
    result.decisions.append(Decision(path, policy, "siblings"))


def _fix_file_directory_clashes(inp: MergeInput, result: MergeResult) -> None:
    """A path that is a file on one side and a directory on the other: the directory
    keeps the name, the file moves to a sibling name; reported as a conflict."""
    tree = result.tree
    dirs: set[str] = set()
    for p in tree:
        parts = p.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    for path in sorted(dirs & set(tree)):
        entry = tree.pop(path)
        side: Side = "ours" if same_entry(inp.ours.get(path), entry) else "theirs"
        replica = (inp.writes.get((path, side)) or Write(HybridTime(0, 0), side)).replica or side
        sib = sibling_name(path, replica)
        tree[sib] = entry
        conflict = Conflict(path, "file/directory", inp.base.get(path), inp.ours.get(path),
                            inp.theirs.get(path), sib)
        policy = inp.rules.policy_for(path)
        (result.conflicts if policy == "manual" else result.siblings).append(conflict)
        result.decisions.append(Decision(path, policy, "siblings"))


_MISSING = object()


KeyTie = Side | Callable[[tuple[str, ...]], Side]


def _key_tie(inp: MergeInput, path: str, wo: Write, wt: Write) -> KeyTie:
    """A key both sides changed goes to the side that wrote *that key* later (lww per
    key, from the histories); without key histories, to the file's lww winner."""
    tol = inp.rules.skew_tolerance_ms
    key_write = inp.key_write
    if key_write is None:
        return lww_winner(wo, wt, tol)
    cap = inp.rules.time_ceiling_ms
    return lambda keys: lww_winner(clamped(key_write(path, "ours", keys), cap),
                                   clamped(key_write(path, "theirs", keys), cap), tol)


KeyChanged = Callable[[Side, tuple[str, ...]], bool]


def json_merge(base: bytes | None, ours: bytes, theirs: bytes, tie: KeyTie,
               changed: KeyChanged | None = None) -> bytes | None:
    """Key-level three-way merge of JSON objects (recursively); a key both sides changed
    differently goes to ``tie`` (a side, or a function of the key's path from the top
    object).  A side whose value equals the base's changed the key only if ``changed``
    (from the histories) says so; without it, never.  None if not JSON objects, or nested too
    deep to merge key by key (the file may come from a hostile peer: the whole-file policy
    decides then)."""
    try:
        b = json.loads(base) if base else {}
        o, t = json.loads(ours), json.loads(theirs)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not (isinstance(b, dict) and isinstance(o, dict) and isinstance(t, dict)):
        return None
    try:
        merged = _merge_obj(b, o, t, tie, (), changed)
        json.dumps(merged)  # (its depth, once: the writes below then cannot recurse too deep)
    except RecursionError:
        return None
    try:
        return (json.dumps(merged, sort_keys=True, ensure_ascii=False, indent=2) + "\n").encode()
    except UnicodeEncodeError:  # an unpaired surrogate escape ("\ud800") has no UTF-8 form: escape all
        return (json.dumps(merged, sort_keys=True, ensure_ascii=True, indent=2) + "\n").encode()


def _wrote(changed: KeyChanged | None, side: Side, keys: tuple[str, ...], value: Any, base: Any) -> bool:
    """Whether ``side`` wrote the key since the base: its value differs from the base's, or
    the histories say it was written and set back (ABA)."""
    return value != base or (changed is not None and changed(side, keys))


def _merge_obj(b: dict[str, Any], o: dict[str, Any], t: dict[str, Any], tie: KeyTie,
               where: tuple[str, ...], changed: KeyChanged | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(set(b) | set(o) | set(t)):
        bv, ov, tv = b.get(key, _MISSING), o.get(key, _MISSING), t.get(key, _MISSING)
        keys = (*where, key)
        objects = isinstance(ov, dict) and isinstance(tv, dict) and (isinstance(bv, dict) or bv is _MISSING)
        if ov == tv:
            value = ov
        elif objects and (changed is not None or (ov != bv and tv != bv)):
            # both changed it, or (with the histories) an object equal to the base's may hide
            # a nested write (a key set and deleted again): decided key by key
            value = _merge_obj(bv if isinstance(bv, dict) else {}, ov, tv, tie, keys, changed)
        elif not _wrote(changed, "theirs", keys, tv, bv):
            value = ov
        elif not _wrote(changed, "ours", keys, ov, bv):
            value = tv
        else:
            side = tie(keys) if callable(tie) else tie
            value = ov if side == "ours" else tv
        if value is not _MISSING:
            out[key] = value
    return out
