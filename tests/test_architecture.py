"""The package's layers, read from its import statements (ast: nothing is imported).

* `refedit.utils` is a leaf: its modules import other `refedit.utils` modules only.
* A method does not import a sibling method. Allowed inside `refedit.methods`: `base` (the engine every method is
  assembled on), the package itself (`load_method`), and a method's own parts module: `<x>_parts` belongs to `<x>`
  (`magdiff_parts` holds MagDiff's building blocks, kept apart so they can be tested alone) and only `<x>` may
  import it. Shared helpers belong to `backbone/`.
* No import cycle between refedit's top-level units (each subpackage, and each top-level module, is one node).
* No private (underscore) name of a refedit module is used from another module.

Function-level (lazy) imports count as much as top-level ones: they are dependencies all the same.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: methods modules any method may import (see the module docstring)
METHOD_SHARED = {"refedit.methods", "refedit.methods.base"}
PARTS_SUFFIX = "_parts"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    """{dotted module name: file} of every module under src/refedit."""
    return {module_name(p, src): p for p in sorted((src / "refedit").rglob("*.py"))}


def _resolve_relative(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports(mod: str, path: Path, known: set[str]) -> list[tuple[str, str | None, int]]:
    """(imported refedit module, imported name or None, line) for every import statement in the file.
    `from refedit.x import y` yields module `refedit.x.y` when that is a module, else (`refedit.x`, `y`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "refedit"]
        elif isinstance(node, ast.ImportFrom):
            src = (_resolve_relative(mod, path.name == "__init__.py", node.level, node.module) if node.level
                   else node.module or "")
            if src.split(".")[0] != "refedit":
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                out.append((sub, None, node.lineno) if sub in known else (src, a.name, node.lineno))
    return out


class Graph(dict):
    """{module: [(imported refedit module, name or None, line)]}, with the files it was read from."""

    def __init__(self, src: Path = SRC):
        self.files = modules(src)
        self.src = src
        known = set(self.files)
        super().__init__({m: imports(m, p, known) for m, p in self.files.items()})

    def where(self, mod: str, line: int) -> str:
        return f"{self.files[mod].relative_to(self.src.parent)}:{line}"


def unit(mod: str) -> str:
    """The top-level unit a module belongs to: refedit.<subpackage> or refedit.<module>."""
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else mod


# ------------------------------------------------------------------------------------------------ checks
def utils_violations(g) -> list[str]:
    return [f"{g.where(m, ln)}: {m} imports {t}" for m, imps in g.items() if unit(m) == "refedit.utils"
            for t, _, ln in imps if unit(t) != "refedit.utils"]


def method_violations(g) -> list[str]:
    bad = []
    for m, imps in g.items():
        if unit(m) != "refedit.methods" or m in METHOD_SHARED:
            continue
        own = m.removesuffix(PARTS_SUFFIX)
        for t, _, ln in imps:
            if unit(t) != "refedit.methods" or t in METHOD_SHARED:
                continue
            if t == f"{own}{PARTS_SUFFIX}" and t != m:  # a method's own parts
                continue
            bad.append(f"{g.where(m, ln)}: {m} imports the sibling method module {t}")
    return bad


def unit_edges(g) -> dict[str, dict[str, tuple[str, int]]]:
    """unit -> {imported unit: (one importing module, line)}."""
    edges: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    for m, imps in g.items():
        for t, _, ln in imps:
            a, b = unit(m), unit(t)
            if a != b and b != "refedit":
                edges[a].setdefault(b, (m, ln))
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(edges) | {w for d in edges.values() for w in d}):
        if v not in index:
            visit(v)
    return out


def private_violations(g) -> list[str]:
    """`from refedit.x import _y`, and `x._y` on a name bound to a refedit module by an import."""
    bad = [f"{g.where(m, ln)}: {m} imports the private name {t}.{name}" for m, imps in g.items()
           for t, name, ln in imps if name and name.startswith("_") and not name.startswith("__") and t != m]
    mods = g.files
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("refedit.") and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("refedit"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != m):
                bad.append(f"{g.where(m, node.lineno)}: {m} uses the private {aliases[node.value.id]}.{node.attr}")
    return bad


# ------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def import_graph():
    g = Graph()
    assert "refedit.methods.base" in g and "refedit.utils.config" in g, "the source tree was not found"
    return g


def test_utils_is_a_leaf(import_graph):
    bad = utils_violations(import_graph)
    assert not bad, "refedit.utils may import refedit.utils only:\n" + "\n".join(bad)


def test_no_method_imports_a_sibling_method(import_graph):
    bad = method_violations(import_graph)
    assert not bad, ("a method imports another method (shared helpers belong to refedit.backbone):\n"
                     + "\n".join(bad))


def test_no_cycles_between_top_level_units(import_graph):
    g = import_graph
    edges = unit_edges(g)
    found = cycles(edges)
    lines = []
    for comp in found:
        members = set(comp)
        for a in comp:
            for b, (m, ln) in sorted(edges[a].items()):
                if b in members:
                    lines.append(f"  {a} -> {b} ({g.where(m, ln)})")
    assert not found, f"import cycles between refedit's top-level units {found}:\n" + "\n".join(lines)


def test_no_private_name_used_across_modules(import_graph):
    bad = private_violations(import_graph)
    assert not bad, "private (underscore) names used outside their module:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- the checks catch what they should
def test_checks_catch_known_violations(tmp_path):
    """The checks fire on a planted tree: a utils module importing eval, a method importing a sibling, a
    two-unit cycle and a private helper used across modules (and accept a method's own parts module)."""
    root = tmp_path / "src" / "refedit"
    files = {
        "__init__.py": "",
        "utils/__init__.py": "", "utils/config.py": "from refedit.eval import adapters\n",
        "eval/__init__.py": "", "eval/adapters.py": "import refedit.utils.config\ndef _frames(): pass\n",
        "eval/benchmark.py": "from refedit.eval import adapters\nadapters._frames()\n",
        "methods/__init__.py": "from refedit.methods.base import X\n", "methods/base.py": "X = 1\n",
        "methods/a.py": "from refedit.methods.b import helper\nfrom refedit.methods.a_parts import p\n",
        "methods/a_parts.py": "p = 1\n", "methods/b.py": "def helper(): pass\n",
        "methods/c.py": "from refedit.methods.a_parts import p\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    g = Graph(tmp_path / "src")
    assert [v.split(": ")[1] for v in utils_violations(g)] == ["refedit.utils.config imports refedit.eval.adapters"]
    assert sorted(v.split(": ")[1] for v in method_violations(g)) == [
        "refedit.methods.a imports the sibling method module refedit.methods.b",
        "refedit.methods.c imports the sibling method module refedit.methods.a_parts"]
    assert cycles(unit_edges(g)) == [["refedit.eval", "refedit.utils"]]
    assert [v.split(": ")[1] for v in private_violations(g)] == [
        "refedit.eval.benchmark uses the private refedit.eval.adapters._frames"]


# ------------------------------------------------------------------------------------------ method hooks
#: what a method may provide beyond build/conditions/denoise, each declared on LatentEditModule with its default
HOOKS = ("prepare_edit_batch", "export_diffusers", "edit_native_size", "data_transform", "prepare_start",
         "condition_image", "init_latents", "decode")


def test_every_method_hook_is_declared_on_the_base_with_a_default():
    from refedit.methods.base import LatentEditModule

    assert [h for h in HOOKS if h not in vars(LatentEditModule)] == []
    fake = type("Fake", (), {"name": "some_method"})()
    batch = {"source": object()}
    assert LatentEditModule.prepare_edit_batch(fake, batch) is batch
    assert LatentEditModule.edit_native_size is False
    with pytest.raises(NotImplementedError, match="'some_method' has no diffusers export"):
        LatentEditModule.export_diffusers(fake, "out")


def test_no_caller_discovers_a_hook_by_hasattr(import_graph):
    """Callers call the hooks: `hasattr(model, 'export_diffusers')` / `getattr(model, 'edit_native_size', ...)`
    would hide a misspelt override and keep a second default outside the base class."""
    bad = []
    for m, path in import_graph.files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS):
                bad.append(f"{import_graph.where(m, node.lineno)}: {node.func.id}(..., {node.args[1].value!r})")
    assert not bad, "method hooks looked up by name instead of called:\n" + "\n".join(bad)


# ------------------------------------------------------------------------------------------ one place each
def _definitions(g, pred) -> list[str]:
    out = []
    for m, path in g.files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if pred(node):
                out.append(f"{m}:{node.lineno}")
    return out


def test_frozen_modules_stay_in_eval_mode_through_one_train_override(import_graph):
    """`LatentEditModule.train` keeps every `frozen_modules` entry in eval mode; no module overrides `train`
    on its own (four near-copies did)."""
    found = _definitions(import_graph, lambda n: isinstance(n, ast.FunctionDef) and n.name == "train"
                         and [a.arg for a in n.args.args][:2] == ["self", "mode"])
    assert [f.split(":")[0] for f in found] == ["refedit.methods.base"], found


def test_unused_parameter_probe_is_one_function(import_graph):
    """Which parameters an output reaches is asked in one place (`backbone.unet.parameters_reached`)."""
    found = _definitions(import_graph, lambda n: isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                         and n.func.attr == "grad" and any(k.arg == "allow_unused" for k in n.keywords))
    assert [f.split(":")[0] for f in found] == ["refedit.backbone.unet"], found


def test_importing_utils_loads_no_other_refedit_package(import_graph):
    """The same rule at run time, in a fresh interpreter (`python -c`): importing every refedit.utils module
    (and what it imports at module level) puts no other refedit package into sys.modules."""
    import os
    import subprocess
    import sys

    utils = sorted(m for m in import_graph.files if m.startswith("refedit.utils"))
    code = ("import importlib, sys\n"
            f"for m in {utils!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('refedit.'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.split()
    assert set(utils) <= set(loaded)
    assert [m for m in loaded if unit(m) != "refedit.utils"] == []
