"""The package's layering, read from the source with `ast` so that it cannot quietly rot.

Layers, lowest first; a module may import its own layer and the layers below, never
one above (function-level imports count too):

    base      types, faults, preference_math
    data      nlhf_jax.data.*           (readers, the world, vocabularies, array datasets)
    models    nlhf_jax.models.*, nlhf_jax.checkpoints.*   (networks and their weights)
    steps     partitioning, train_state, losses, decoding, policy, steps, preference_steps
    loop      trainer, checkpointing, metrics, online, judges, evaluation(.*)
    runs      run_*, demo, main (the entry points), gin_setup (their gin), testing

`tabular` stands alone (it imports only `base`), nothing but `runs` imports gin, an entry
point is imported only by `main` and `demo`, and no module imports itself back through
any chain of imports.
"""

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nlhf_jax")

LAYERS = ["base", "data", "models", "steps", "loop", "runs"]
_BY_NAME = {
    "types": "base", "faults": "base", "preference_math": "base",
    "partitioning": "steps", "train_state": "steps", "losses": "steps", "decoding": "steps",
    "policy": "steps", "steps": "steps", "preference_steps": "steps",
    "trainer": "loop", "checkpointing": "loop", "metrics": "loop", "online": "loop",
    "judges": "loop", "evaluation": "loop", "report": "loop",
    "demo": "runs", "main": "runs", "gin_setup": "runs", "testing": "runs",
}
ENTRY_POINTS = {"demo", "main"}


def _modules() -> dict[str, str]:
    """'nlhf_jax.data.jsonl' -> its file, for every module of the package."""
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG))[:-3]
                name = rel.replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = os.path.join(root, f)
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The package module an import names ('nlhf_jax.data.world.raters.RaterPanel' -> the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> set[str]:
    """Package modules imported anywhere in `module`'s source, function bodies included."""
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("nlhf_jax")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("nlhf_jax"):
                continue
            for alias in node.names:
                found.add(_resolve(f"{base}.{alias.name}"))
    found.discard("")
    found.discard(module)
    return found


def _imports_gin(module: str) -> bool:
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return any((isinstance(n, ast.Import) and any(a.name == "gin" or a.name.startswith("gin.") for a in n.names))
               or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "gin")
               for n in ast.walk(tree))


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package itself
    top = parts[1]
    if top == "tabular":
        return "tabular"
    if top == "data":
        return "data"
    if top in ("models", "checkpoints"):
        return "models"
    if top.startswith("run_"):
        return "runs"
    if top in _BY_NAME:
        return _BY_NAME[top]
    raise AssertionError(f"{module}: no layer assigned; add it to tests/architecture_test.py")


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer(module)
    for dep in sorted(GRAPH[module]):
        theirs = layer(dep)
        if mine == "tabular":
            assert theirs in ("tabular", "base"), f"{module} (tabular stands alone) imports {dep}"
            continue
        assert theirs != "tabular" or mine == "runs", f"{module} imports tabular module {dep}"
        if theirs == "tabular":
            continue
        assert LAYERS.index(theirs) <= LAYERS.index(mine), (
            f"{module} ({mine}) imports {dep} ({theirs}): imports must point down {' <- '.join(LAYERS)}")


def test_entry_points_are_imported_only_by_main_and_demo():
    entry = {m for m in MODULES if m.split(".")[-1].startswith("run_") or m.split(".")[-1] in ENTRY_POINTS}
    for module, deps in GRAPH.items():
        if module.split(".")[-1] in ENTRY_POINTS:
            continue
        bad = sorted(deps & entry)
        assert not bad, f"{module} imports entry point(s) {bad}"


def test_only_runs_import_gin():
    bad = sorted(m for m in MODULES if _imports_gin(m) and layer(m) != "runs")
    assert not bad, f"library modules import gin: {bad}"


def test_no_import_cycles():
    """No module reaches itself through imports (a cycle hides behind function-level
    imports and breaks the first time someone hoists them)."""
    for start in MODULES:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in GRAPH[node]:
                if dep == start:
                    raise AssertionError("import cycle: " + " -> ".join(path + [dep]))
                if dep not in seen and _is_submodule_free(start, dep):
                    seen.add(dep)
                    stack.append((dep, path + [dep]))


def _is_submodule_free(start: str, dep: str) -> bool:
    """A package's __init__ importing its own submodules is not a cycle of interest
    (`nlhf_jax.data.world` re-exports its parts)."""
    return not (start.startswith(dep + ".") and MODULES[dep].endswith("__init__.py"))
