"""Repository rules: clean notebooks with a papermill parameters cell, agreeing package lists."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = {_norm(r) for r in pyproject["project"]["dependencies"]}
    wanted |= {_norm(r) for r in pyproject["project"]["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_norm(r) for r in pip_section} == wanted


def test_torch_is_pinned_exactly():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_clean_with_parameters_cell(nb: Path):
    data = json.loads(nb.read_text())
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [], f"{nb.name} is committed with outputs"
            assert cell.get("execution_count") is None, f"{nb.name} has execution counts"
    params_cells = [c for c in data["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params_cells) == 1, f"{nb.name} needs exactly one cell tagged 'parameters'"
    assert "params_path" in "".join(params_cells[0]["source"])


def test_notebooks_are_numbered_without_gaps():
    nums = [int(p.name[:2]) for p in NOTEBOOKS]
    assert nums == list(range(len(nums))), nums


# --------------------------------------------------------------------------- package structure
import ast  # noqa: E402
import sys  # noqa: E402

PKG = ROOT / "mdlcap"
MODULES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
# Layers, in order: a module may import from its own layer and the ones before it (HELPERS.md).
LAYERS = [("files", "cache"), ("theory",), ("default",), ("models",), ("evaluation",), ("scores",),
          ("interventions",), ("study",)]
# Top-level modules that only re-export for users (and the package's own __init__): outside the
# layers, and no package module may import them.
FACADES = {"mdlcap", "mdlcap.programs", "mdlcap.curvature", "mdlcap.transfer", "mdlcap.pruning", "mdlcap.params"}
THEORY_THIRD_PARTY = {"numpy", "scipy", "numba", "cvxpy"}
MAX_LINES = 500


def _modname(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODNAMES = {_modname(p): p for p in MODULES}


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    if mod in FACADES or len(parts) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    return None


def _resolve(node: ast.ImportFrom, mod: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = mod.split(".")
    keep = len(parts) - node.level + (1 if is_pkg else 0)
    return ".".join(parts[:keep] + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    return skip


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, lazy ones included."""
    mod = _modname(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, mod, path.name == "__init__.py")
            names = [a.name for a in node.names]
            out.append((base, names, node.lineno))
    return out


def _edges(path: Path) -> set[str]:
    """mdlcap modules this module imports (a name taken from a package counts as its module
    when it is one)."""
    out = set()
    for base, names, _ in _imports(path):
        if base.split(".")[0] != "mdlcap":
            continue
        subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODNAMES]
        out |= set(subs)
        if not subs or len(subs) < len(names):
            if base in MODNAMES:
                out.add(base)
    out.discard(_modname(path))
    return out


GRAPH = {_modname(p): _edges(p) for p in MODULES}


def test_import_graph_is_acyclic():
    """No cycle among the package's modules (lazy imports inside functions count too)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(GRAPH.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    sys.setrecursionlimit(10000)
    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_underscore_names():
    bad = []
    for p in MODULES:
        mod = _modname(p)
        tree = ast.parse(p.read_text())
        aliases: dict[str, str] = {}      # local name -> mdlcap module it names
        for base, names, line in _imports(p):
            if base.split(".")[0] != "mdlcap":
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in base.split(".")):
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {base}")
            for n in names:
                if n.startswith("_") and not n.startswith("__") and base != mod:
                    bad.append(f"{p.relative_to(ROOT)}:{line} from {base} import {n}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("mdlcap"):
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mdlcap"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODNAMES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, (ast.Name, ast.Attribute))):
                target = aliases.get(ast.unparse(node.value))
                if target and target != mod:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} uses {target}.{node.attr}")
    assert not bad, "underscore names used across modules:\n" + "\n".join(bad)


def test_layering():
    """files, cache -> theory -> default -> models -> evaluation -> scores -> interventions -> study:
    each imports only from its own layer and the ones before it; no package module imports a
    facade; theory needs only numpy/scipy/numba/cvxpy (no torch)."""
    bad = []
    for p in MODULES:
        mod = _modname(p)
        mine = _layer(mod)
        if mine is None:
            continue
        for dep in sorted(GRAPH[mod]):
            if dep in FACADES:
                bad.append(f"{mod} imports the facade {dep} (import the real home)")
            elif _layer(dep) is not None and _layer(dep) > mine:
                bad.append(f"{mod} (layer {'/'.join(LAYERS[mine])}) imports {dep} "
                           f"(later layer {'/'.join(LAYERS[_layer(dep)])})")
        if LAYERS[mine] == ("theory",):
            for base, _, line in _imports(p):
                top = base.split(".")[0]
                if top and top != "mdlcap" and top not in sys.stdlib_module_names and top not in THEORY_THIRD_PARTY:
                    bad.append(f"{p.relative_to(ROOT)}:{line} theory imports {base}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_every_package_module_is_in_a_layer():
    loose = [m for m in MODNAMES if m not in FACADES and _layer(m) is None]
    assert not loose, f"modules in no layer (add them to one, or to FACADES if they only re-export): {loose}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_cells_define_no_functions_or_classes(nb: Path):
    """Notebooks orchestrate and plot; functions and classes live in the package, under test."""
    found = []
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines())
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.append(f"cell {i} ({cell.get('id', '?')}): {type(node).__name__} {node.name}")
    assert not found, f"{nb.name} defines in cells:\n" + "\n".join(found)


def test_modules_are_at_most_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_method_md_code_map_points_at_real_code():
    """Every `mdlcap.…` name that METHOD.md's equation table cites imports and exists."""
    import importlib

    text = (ROOT / "METHOD.md").read_text()
    table = text[text.index("<!-- code-map:start -->"):text.index("<!-- code-map:end -->")]
    names = set(re.findall(r"`(mdlcap(?:\.\w+)+)`", table))
    assert len(names) >= 15, names
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"METHOD.md cites {name}: {attr} not found"
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(f"METHOD.md cites {name}: no such module")


def test_docstrings_cite_nothing_the_repository_lacks():
    """Citations point at METHOD.md (in the repository), not at the SPEC file a reader cannot open."""
    offenders = [str(p.relative_to(ROOT)) for p in list((ROOT / "mdlcap").rglob("*.py")) + NOTEBOOKS
                 if re.search(r"\bSPEC\b(?!IAL)", p.read_text())]
    assert not offenders, offenders


@pytest.mark.parametrize("module, names", [
    ("mdlcap.programs", ("allocate", "allocate_integer", "prune", "scores_from_gains", "joint", "joint_integer")),
    ("mdlcap.curvature", ("layer_gains",)),
    ("mdlcap.transfer", ("regret", "regret_bound")),
    ("mdlcap.pruning", ("prune_model",)),
    ("mdlcap.params", ("load",)),
])
def test_public_names_stay_importable_from_their_documented_paths(module, names):
    """The paths README and users call are re-exports of the real homes, not copies."""
    import importlib

    mod = importlib.import_module(module)
    for name in names:
        obj = getattr(mod, name)
        home = getattr(obj, "__module__", module)
        assert home != module, f"{module}.{name} should be re-exported from its home, not defined here"
