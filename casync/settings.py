"""The repository configuration: every key casync reads, with its type, default and check.

:data:`KEYS` lists them (:class:`Key`).  A value is checked when it is written
(``Repository.set_config``, ``casync config``), so a mistake is reported at once, naming the
key and the value, instead of as a failure of a later merge or sync.  Code reads values
through the typed accessors here (:func:`author`, :func:`merge_rules`, :func:`priorities`,
:func:`remotes`), which check a stored value again (one written before checks existed) so it
is a :class:`UsageError` naming it, never a traceback.  :func:`with_remote` is the one way
a new ``remotes`` value is made.  Pure: no I/O (the fleet's agent configuration builds on it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from casync.errors import InvalidPath, UsageError
from casync.model.names import is_replica_name, split_path

if TYPE_CHECKING:
    from casync.merge.threeway import PolicyRules

__all__ = ["DEFAULT_AUDIT_SKEW_MS", "FIXED_KEYS", "KEYS", "KNOWN_KEYS", "Key", "Limits", "RemoteEntry",
           "StrongSettings", "audit_skew_ms", "author", "check_value", "limits", "merge_rules",
           "partial_paths", "priorities", "remotes", "require_signed", "sign_commits", "strong",
           "trusted_signers_path", "with_remote"]

FIXED_KEYS = ("format", "repository_id", "replica", "hash", "chunker", "bare")
_MERGE_FIELDS = ("policy", "rules", "skew_tolerance_ms")
_REMOTE_FIELDS = ("url", "gateway", "token_file", "cluster", "replication_min", "replication_max")
_REPLICATION_FIELDS = ("replication_min", "replication_max")
_STRONG_FIELDS = ("branches", "etcd_endpoints", "key_prefix", "timeout", "ipfs_api")
_STRONG_EXAMPLE = ("casync config strong '{\"branches\": [\"release\"], \"etcd_endpoints\": "
                   "[\"http://127.0.0.1:2379\"], \"ipfs_api\": \"http://127.0.0.1:5001\"}'")
_HTTP_URL = re.compile(r"^http://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?$")
_LIMIT_FIELDS = ("max_future_ms", "future_commits", "max_file_bytes")
FUTURE_ACTIONS = ("refuse", "clamp")
_REMOTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _bad(key: str, value: Any, why: str, hint: str | None = None) -> UsageError:
    return UsageError(f"config {key} = {_shown(value)}: {why}", hint=hint)


def _check_author(value: Any) -> None:
    if not (isinstance(value, str) and value.strip()):
        raise _bad("author", value, "must be a non-empty name", hint="or --unset it to use the login name")


def _check_merge(value: Any) -> None:
    example = "casync config merge.policy siblings; casync config merge.rules '{\"*.json\": \"json\"}'"
    if not isinstance(value, dict):
        raise _bad("merge", value, "must be an object with fields policy, rules, skew_tolerance_ms", example)
    for name in value:
        if name not in _MERGE_FIELDS:
            raise _bad(f"merge.{name}", value[name], f"unknown field (merge has {', '.join(_MERGE_FIELDS)})")
    rules = value.get("rules", {})
    if not isinstance(rules, dict):
        raise _bad("merge.rules", rules, "must map path globs to policy names", example)
    from casync.merge.threeway import PolicyRules, check_policy  # not at import: 'casync status' never merges

    named = [(f"merge.rules[{glob!r}]", policy) for glob, policy in rules.items()]
    for key, policy in [("merge.policy", value.get("policy", "lww")), *named]:
        if not isinstance(policy, str):
            raise _bad(key, policy, "must be a policy name", example)
        try:
            check_policy(policy)
        except UsageError as exc:
            raise _bad(key, policy, exc.message, exc.hint) from None
    skew = value.get("skew_tolerance_ms", 0)
    if isinstance(skew, bool) or not isinstance(skew, int) or skew < 0:
        raise _bad("merge.skew_tolerance_ms", skew, "must be a whole number of milliseconds, 0 or more")
    PolicyRules(value.get("policy", "lww"), tuple(rules.items()), skew)  # as a merge will read it


def _check_priorities(value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad("priorities", value, "must map replica ids to numbers (lower wins)",
                   hint="casync config priorities '{\"site-a\": 1, \"site-b\": 2}'")
    for replica, rank in value.items():
        if not is_replica_name(replica):
            raise _bad(f"priorities[{replica!r}]", rank, f"{replica!r} is not a replica id",
                       hint="replica ids are 1-64 letters, digits, '.', '_' or '-'")
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise _bad(f"priorities.{replica}", rank, "must be a whole number (lower wins)",
                       hint=f"casync config priorities.{replica} 1")


def _check_remotes(value: Any) -> None:
    hint = "manage remotes with 'casync remote add|set-url|remove'"
    if not isinstance(value, dict):
        raise _bad("remotes", value, "must map remote names to {url, gateway, token_file}", hint)
    for name, entry in value.items():
        if not _REMOTE_NAME.match(name):
            raise _bad(f"remotes[{name!r}]", entry, f"{name!r} is not a valid remote name", hint)
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not entry["url"].strip():
            raise _bad(f"remotes.{name}", entry, "must be an object with a 'url'", hint)
        for field, item in entry.items():
            if field not in _REMOTE_FIELDS:
                raise _bad(f"remotes.{name}.{field}", item,
                           f"unknown field (a remote has {', '.join(_REMOTE_FIELDS)})", hint)
            if field in _REPLICATION_FIELDS:
                if item is not None and (isinstance(item, bool) or not isinstance(item, int) or item < 1):
                    raise _bad(f"remotes.{name}.{field}", item, "must be a number of cluster peers (1 or more) "
                                                                 "or null (the cluster's default)", hint)
            elif field != "url" and item is not None and not (isinstance(item, str) and item):
                raise _bad(f"remotes.{name}.{field}", item, "must be a non-empty string or null", hint)
        low, high = entry.get("replication_min"), entry.get("replication_max")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise _bad(f"remotes.{name}.replication_min", low, f"is above replication_max ({high})", hint)
        if (low is not None or high is not None) and not entry.get("cluster"):
            raise _bad(f"remotes.{name}", entry, "replication_min/replication_max need a 'cluster' "
                                                 "(the IPFS Cluster REST API that pins)", hint)


def _check_strong(value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad("strong", value, f"must be an object with fields {', '.join(_STRONG_FIELDS)}", _STRONG_EXAMPLE)
    for name in value:
        if name not in _STRONG_FIELDS:
            raise _bad(f"strong.{name}", value[name], f"unknown field (strong has {', '.join(_STRONG_FIELDS)})")
    branches = value.get("branches", [])
    if not isinstance(branches, list) or not all(isinstance(b, str) and b for b in branches):
        raise _bad("strong.branches", branches, "must be a list of branch names ('*': every branch)", _STRONG_EXAMPLE)
    endpoints = value.get("etcd_endpoints", [])
    if (not isinstance(endpoints, list) or not all(isinstance(u, str) and _HTTP_URL.match(u) for u in endpoints)
            or (branches and not endpoints)):
        raise _bad("strong.etcd_endpoints", endpoints, "must list the etcd members' client URLs (http://HOST:PORT)",
                   _STRONG_EXAMPLE)
    prefix = value.get("key_prefix", "/casync/")
    if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/"):
        raise _bad("strong.key_prefix", prefix, "must start and end with '/'", "the default is /casync/")
    timeout = value.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise _bad("strong.timeout", timeout, "must be a number of seconds, above 0 and at most 600")
    api = value.get("ipfs_api")
    if api is not None and not (isinstance(api, str) and _HTTP_URL.match(api)):
        raise _bad("strong.ipfs_api", api, "must be a Kubo RPC API URL (http://HOST:PORT) or null", _STRONG_EXAMPLE)
def _check_limits(value: Any) -> None:
    example = "casync config limits.max_future_ms 3600000; casync config limits.future_commits clamp"
    if not isinstance(value, dict):
        raise _bad("limits", value, f"must be an object with fields {', '.join(_LIMIT_FIELDS)}", example)
    for name, item in value.items():
        if name not in _LIMIT_FIELDS:
            raise _bad(f"limits.{name}", item, f"unknown field (limits has {', '.join(_LIMIT_FIELDS)})")
        if name == "future_commits":
            if item not in FUTURE_ACTIONS:
                raise _bad("limits.future_commits", item, "must be 'refuse' or 'clamp'", example)
        elif item is not None and (isinstance(item, bool) or not isinstance(item, int) or item < 0):
            raise _bad(f"limits.{name}", item, "must be a whole number, 0 or more (or null)")


@dataclass(frozen=True)
class Limits:
    """What a replica accepts from elsewhere beyond the format's own ranges (docs/design.md §14):
    how far into the future a commit's time may lie (``max_future_ms``) and what happens to
    one beyond it (``future_commits``: refused on receipt, or accepted with its weight in
    last-write-wins clamped), and the largest file a checkout writes (None: free space decides)."""

    max_future_ms: int = 3_600_000
    future_commits: str = "refuse"
    max_file_bytes: int | None = None


def _check_bool(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise _bad(name, value, "must be true or false", hint=f"casync config {name} true")
    return check


def _check_trusted_signers(value: Any) -> None:
    if not (isinstance(value, str) and value.strip()):
        raise _bad("trusted_signers", value, "must be the path of a trusted-signers file",
                   hint="casync config trusted_signers .casync-signers (relative to the working tree)")


_AUDIT_FIELDS = ("skew_tolerance_ms",)
DEFAULT_AUDIT_SKEW_MS = 300_000
"""How far ahead of the auditing clock a commit's time may be (5 minutes) unless configured."""


def _check_audit(value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad("audit", value, "must be an object with field skew_tolerance_ms",
                   hint="casync config audit.skew_tolerance_ms 60000")
    for name, item in value.items():
        if name not in _AUDIT_FIELDS:
            raise _bad(f"audit.{name}", item, f"unknown field (audit has {', '.join(_AUDIT_FIELDS)})")
    skew = value.get("skew_tolerance_ms", DEFAULT_AUDIT_SKEW_MS)
    if isinstance(skew, bool) or not isinstance(skew, int) or skew < 0:
        raise _bad("audit.skew_tolerance_ms", skew, "must be a whole number of milliseconds, 0 or more")


def _check_partial_paths(value: Any) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise _bad("partial_paths", value, "must be a non-empty list of paths",
                   hint="it is written by 'casync clone --path' and widened by 'casync fetch --path'")
    for path in value:
        try:
            if not split_path(path, "partial_paths entry"):
                raise InvalidPath(f"partial_paths entry {path!r} names the whole tree")
        except InvalidPath as exc:
            raise _bad("partial_paths", value, exc.message) from None


@dataclass(frozen=True)
class Key:
    """One configuration key casync reads: its JSON type, the value used when it is unset,
    and the check a value passes (raising :class:`UsageError` naming key and value)."""

    name: str
    kind: str
    default: Any
    check: Callable[[Any], None]


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("author", "string", None, _check_author),
    Key("merge", "object {policy, rules, skew_tolerance_ms}", {}, _check_merge),
    Key("priorities", "object {replica id: integer}", {}, _check_priorities),
    Key("remotes", "object {name: {url, gateway, token_file, cluster, replication_min, replication_max}}", {},
        _check_remotes),
    Key("strong", "object {branches, etcd_endpoints, key_prefix, timeout, ipfs_api}", {}, _check_strong),
    Key("limits", "object {max_future_ms, future_commits, max_file_bytes}", {}, _check_limits),


    Key("sign", "boolean", False, _check_bool("sign")),
    Key("require_signed", "boolean", False, _check_bool("require_signed")),
    Key("trusted_signers", "string (path)", None, _check_trusted_signers),
    Key("audit", "object {skew_tolerance_ms}", {}, _check_audit),
    Key("partial_paths", "list of paths (a partial clone holds only these)", None, _check_partial_paths),
)}
KNOWN_KEYS = (*FIXED_KEYS, *KEYS)


def check_value(key: str, value: Any) -> None:
    """Raise :class:`UsageError` naming ``key`` and ``value`` if casync could not use it;
    ``None`` (unset) always passes.  Keys casync does not read are the application's."""
    if key in FIXED_KEYS:
        raise UsageError(f"config key {key!r} is fixed at init", hint="it is part of the repository's identity")
    known = KEYS.get(key)
    if known is not None and value is not None:
        known.check(value)


def _read(cfg: Mapping[str, Any], key: str) -> Any:
    """The value of a known key, checked (again: it may predate the checks), else its default."""
    raw = cfg.get(key)
    if raw is None:
        return KEYS[key].default
    try:
        KEYS[key].check(raw)
    except UsageError as exc:  # stored already: say how to repair it
        raise UsageError(f"stored {exc.message}", hint=f"set a good value with 'casync config {key} VALUE', "
                         f"or remove it with 'casync config {key} --unset'") from None
    return raw


def author(cfg: Mapping[str, Any]) -> str | None:
    """The configured author name, if any."""
    value: str | None = _read(cfg, "author")
    return value


def merge_rules(cfg: Mapping[str, Any], override: str | None = None) -> PolicyRules:
    """The merge policy and per-path rules; ``override`` (``merge --policy``) replaces both."""
    from casync.merge.threeway import PolicyRules, check_policy

    raw: dict[str, Any] = _read(cfg, "merge")
    if override is not None:
        check_policy(override)
        return PolicyRules(override, (), raw.get("skew_tolerance_ms", 0))
    rules = tuple((str(glob), str(policy)) for glob, policy in raw.get("rules", {}).items())
    return PolicyRules(raw.get("policy", "lww"), rules, raw.get("skew_tolerance_ms", 0))


def limits(cfg: Mapping[str, Any]) -> Limits:
    """The ``limits`` key, with defaults for the fields it leaves out."""
    raw: dict[str, Any] = _read(cfg, "limits")
    default = Limits()
    ahead = raw.get("max_future_ms")
    return Limits(default.max_future_ms if ahead is None else int(ahead),
                  str(raw.get("future_commits", default.future_commits)), raw.get("max_file_bytes"))


def sign_commits(cfg: Mapping[str, Any]) -> bool:
    """Whether every commit made here is signed (config ``sign``)."""
    return bool(_read(cfg, "sign"))


def require_signed(cfg: Mapping[str, Any]) -> bool:
    """Whether fetch, pull and sync refuse history without valid signatures (``require_signed``)."""
    return bool(_read(cfg, "require_signed"))


def trusted_signers_path(cfg: Mapping[str, Any]) -> str | None:
    """The trusted-signers file named by config ``trusted_signers`` (relative to the working tree)."""
    value: str | None = _read(cfg, "trusted_signers")
    return value


def audit_skew_ms(cfg: Mapping[str, Any]) -> int:
    """How far into the future (ms) a commit's HLC time may be before ``audit`` reports it."""
    return int(_read(cfg, "audit").get("skew_tolerance_ms", DEFAULT_AUDIT_SKEW_MS))


def partial_paths(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The paths a partial clone holds (``clone --path``); empty: the repository is whole."""
    value: list[str] | None = _read(cfg, "partial_paths")
    return tuple(value or ())


def priorities(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The ``priorities`` map (replica id -> rank, lower wins)."""
    return dict(_read(cfg, "priorities"))


@dataclass(frozen=True)
class RemoteEntry:
    """One entry of ``remotes``: where the remote is, and (optional) its Kubo gateway, the
    file holding the bearer token of a ``casync serve`` peer, and the IPFS Cluster REST API
    that pins what is pushed to it (with the replication factors to ask for; ``None``: the
    cluster's default)."""

    url: str
    gateway: str | None = None
    token_file: str | None = None
    cluster: str | None = None
    replication_min: int | None = None
    replication_max: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "gateway": self.gateway}
        for key in ("token_file", "cluster", "replication_min", "replication_max"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def remotes(cfg: Mapping[str, Any]) -> dict[str, RemoteEntry]:
    """The configured remotes by name."""
    raw: dict[str, dict[str, Any]] = _read(cfg, "remotes")
    return {name: RemoteEntry(e["url"], e.get("gateway"), e.get("token_file"), e.get("cluster"),
                              e.get("replication_min"), e.get("replication_max")) for name, e in raw.items()}


def with_remote(cfg: Mapping[str, Any], name: str, entry: RemoteEntry | None) -> dict[str, Any] | None:
    """The ``remotes`` value with ``name`` set to ``entry`` (``None``: removed), checked;
    ``None`` when no remote is left (the key is then unset)."""
    out = {n: e.to_json() for n, e in remotes(cfg).items()}  # a changed remote keeps its place
    if entry is None:
        out.pop(name, None)
    else:
        out[name] = entry.to_json()
    if not out:
        return None
    _check_remotes(out)
    return out


@dataclass(frozen=True)
class StrongSettings:
    """Which branches are strong (their heads live in etcd, docs/design.md "Strong branches"),
    where etcd is, the key prefix, the deadline of every etcd call in seconds, and the Kubo
    RPC API every site reads blocks from (``None``: none; then only this site's commits are
    readable, see the docs)."""

    branches: tuple[str, ...]
    etcd_endpoints: tuple[str, ...]
    key_prefix: str
    timeout: float
    ipfs_api: str | None

    def is_strong(self, branch: str) -> bool:
        return "*" in self.branches or branch in self.branches


def strong(cfg: Mapping[str, Any]) -> StrongSettings | None:
    """The ``strong`` settings, or ``None`` when no branch is strong."""
    raw: dict[str, Any] = _read(cfg, "strong")
    if not raw.get("branches"):
        return None
    return StrongSettings(tuple(raw["branches"]), tuple(raw["etcd_endpoints"]), raw.get("key_prefix", "/casync/"),
                          float(raw.get("timeout", 5)), raw.get("ipfs_api"))
