"""Every ``meta`` key and ref namespace the code writes or reads is in docs/design.md.

The names are found in the source (an AST pass over ``casync/``), not listed by hand: a
``"meta"`` table access or a ``db=...meta...`` transaction call gives a key (a constant,
a module or function constant, or the constant prefix of ``PREFIX + name`` /
``b"pack_end/%d" % n``); a call of a ``*ref*`` function gives a ref name whose part up to
the first ``/`` is its namespace."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "design.md").read_text()


def _constants(scope: ast.AST) -> dict[str, ast.expr]:
    """Names assigned once in ``scope`` (module or function body) to an expression."""
    out: dict[str, ast.expr] = {}
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):  # parameters with a constant default
        params = [*scope.args.posonlyargs, *scope.args.args]
        for arg, default in zip(params[len(params) - len(scope.args.defaults):], scope.args.defaults, strict=True):
            out[arg.arg] = default
        for arg, kw_default in zip(scope.args.kwonlyargs, scope.args.kw_defaults, strict=True):
            if kw_default is not None:
                out[arg.arg] = kw_default
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out.setdefault(node.targets[0].id, node.value)
    return out


def _key(expr: ast.expr, names: dict[str, ast.expr], depth: int = 0) -> str | None:
    """The key an expression names: ``"k"`` exactly, ``"prefix/*"`` for a computed suffix."""
    if depth > 4:
        return None
    if isinstance(expr, ast.Constant) and isinstance(expr.value, (bytes, str)):
        value = expr.value.decode() if isinstance(expr.value, bytes) else expr.value
        return value.split("%")[0] + "*" if "%" in value else value
    if isinstance(expr, ast.Name) and expr.id in names:
        return _key(names[expr.id], names, depth + 1)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Mod)):
        left = _key(expr.left, names, depth + 1)
        return None if left is None else left.rstrip("*") + "*"
    if isinstance(expr, ast.JoinedStr):  # the constant start of an f-string, defaults resolved
        lead = ""
        for part in expr.values:
            value = part if isinstance(part, ast.Constant) else part.value if isinstance(part, ast.FormattedValue) \
                else None
            known = _key(value, names, depth + 1) if value is not None else None
            if known is None or known.endswith("*"):
                break
            lead += known
        return lead + "*" if lead else None
    return None


def _calls() -> list[tuple[str, ast.Call, dict[str, ast.expr]]]:
    out = []
    trees = {path: ast.parse(path.read_text()) for path in sorted((ROOT / "casync").rglob("*.py"))}
    public: dict[str, ast.expr] = {}  # module constants without a leading _, for imported names
    for tree in trees.values():
        public.update({k: v for k, v in _constants(tree).items() if not k.startswith("_")})
    for path, tree in trees.items():
        module = {**public, **_constants(tree)}
        scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        seen: set[int] = set()
        for scope in [*scopes, tree]:
            names = {**module, **(_constants(scope) if scope is not tree else {})}
            for node in ast.walk(scope):
                if isinstance(node, ast.Call) and id(node) not in seen:
                    seen.add(id(node))
                    out.append((str(path.relative_to(ROOT)), node, names))
    return out


def _func_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _on_store(call: ast.Call, where: str) -> bool:
    """``X.store.get(...)`` / ``self.get(...)`` inside casync/store (not ``dict.get``)."""
    assert isinstance(call.func, ast.Attribute)
    receiver = ast.unparse(call.func.value)
    return "store" in receiver or (where.startswith("casync/store/") and receiver == "self")


def _meta_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for where, call, names in _calls():
        name, expr = _func_name(call), None
        if name in ("put", "get") and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant) \
                and call.args[0].value == "meta" and _on_store(call, where):
            expr = call.args[1]
        elif name in ("put", "get", "delete") and call.args and any(
                kw.arg == "db" and "meta" in ast.unparse(kw.value) for kw in call.keywords):
            expr = call.args[0]
        if expr is not None:
            key = _key(expr, names)
            assert key is not None, f"{where}:{call.lineno}: cannot tell which meta key {ast.unparse(expr)} is"
            keys.setdefault(key, f"{where}:{call.lineno}")
    return keys


def _ref_namespaces() -> dict[str, str]:
    spaces: dict[str, str] = {}
    for where, call, names in _calls():
        # get_ref, cas_ref, reflog, ref_named...: "ref" as a word of the name (not removeprefix)
        if not re.search(r"(?:^|_)ref(?:s|log)?(?:_|$)", _func_name(call).lower()) or not call.args:
            continue
        key = _key(call.args[0], names)
        if key is not None and "/" in key:
            spaces.setdefault(key.split("/")[0] + "/", f"{where}:{call.lineno}")
    return spaces


def _meta_table() -> str:
    start = DESIGN.index("`meta` keys:")
    return DESIGN[start : DESIGN.index("\n### ", start)]


def test_every_meta_key_the_code_uses_is_specified() -> None:
    keys = _meta_keys()
    # the pass finds what it should (it is not vacuous)
    assert {"HEAD", "hlc_last", "pack_current", "pack_end/*", "merge_state", "clone_pending",
            "push-pending/*", "worktree", "reach_next_rank", "statcache_digest"} <= set(keys), keys
    table = _meta_table()
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    for key, where in keys.items():
        form = key[:-1] + "<" if key.endswith("*") else key  # a prefix is documented as `prefix<name>`
        assert any(d == key or (key.endswith("*") and d.startswith(form)) for d in documented), \
            f"meta key {key!r} ({where}) is not in design.md §7.1's meta table"


def test_every_ref_namespace_the_code_uses_is_specified() -> None:
    spaces = _ref_namespaces()
    assert {"heads/", "tags/", "remotes/", "partial/", "bundles/", "tag-conflicts/"} <= set(spaces), spaces
    section = DESIGN[DESIGN.index("## 9. Refs") : DESIGN.index("## 10.")]
    for space, where in spaces.items():
        assert f"`{space}<" in section, f"ref namespace {space!r} ({where}) is not in design.md §9"



def _documented_layers(after: str, until: str) -> list[str]:
    """A layer list of design.md §13: the text between ``after`` and ``until``, split at ``→``."""
    section = DESIGN[DESIGN.index("## 13. Layout") : DESIGN.index("## 14. Merge")]
    start = section.index(after) + len(after)
    text = section[start : section.index(until, start)]
    return [" ".join(layer.replace("`", "").split()) for layer in text.split("→")]


def test_the_layer_lists_in_design_md_are_the_contracts() -> None:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = {tuple(c.get("containers", [])): c["layers"] for c in contracts if c["type"] == "layers"}
    assert _documented_layers("are independent: neither imports the other):", " (as `pyproject.toml`") == \
        [" ".join(part.replace("casync.", "").split()) for part in layered[()]]
    section = DESIGN[DESIGN.index("## 13. Layout") : DESIGN.index("## 14. Merge")]
    inside = {m[1]: [" ".join(layer.replace("`", "").split()) for layer in m[2].split("→")]
              for m in re.finditer(r"\*\*Inside `(casync\.[a-z.]+)`\*\*: (.*?)\.(?:\n|\s{2})", section, re.S)}
    assert inside == {c[0]: [" ".join(part.split()) for part in layers]
                      for c, layers in layered.items() if c}


def test_every_package_is_in_the_layout_table() -> None:
    section = DESIGN[DESIGN.index("## 13. Layout") : DESIGN.index("## 14. Merge")]
    listed = set(re.findall(r"^\| `([a-z]+)` \|", section, re.M))
    on_disk = {p.name for p in (ROOT / "casync").iterdir() if (p / "__init__.py").exists()} | \
        {p.stem for p in (ROOT / "casync").glob("[a-z]*.py") if p.stem not in {"errors", "progress"}}
    assert listed == on_disk
