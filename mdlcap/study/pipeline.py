"""The notebook graph, and when a notebook's results are stale: by content, not by file times.

Each notebook's output is its manifest, `results/<run>/<notebook>/manifest.json`. What it
depends on (its *inputs*) is

  - the notebook itself (the sources of its cells; outputs and metadata do not count),
  - the params file,
  - the package sources it uses: the closure of the `mdlcap` modules its cells import, found
    by reading the imports (ast) of the cells and then of each module, plus the package's data
    files (the lm-eval base YAML),
  - the outputs of the notebooks it reads (`UPSTREAM`), as the sha256 of each upstream
    manifest's `outputs` table.

`mdlcap.study.run.start()` records these inputs (their hashes) in the manifest, so a manifest
says what it was computed from. `python -m mdlcap.study.pipeline sync --params P` (the Makefile
runs it at parse time, so `make -n` sees its answer) compares, for every notebook, the recorded
inputs with the current ones and

  - writes the dependency rules for make (`.cache/pipeline/<run>/graph.mk`): a manifest depends
    on its notebook, the params file, its sources, its upstream manifests and a stamp;
  - when the recorded inputs are the current ones, makes file times agree: a prerequisite that
    looks newer than the manifest only because `git checkout` wrote it (its time is the one git's
    index recorded, or sync moved it) no longer does, because sync moves the manifest's time just
    past it. A file touched after checkout keeps its time, so make still reruns its notebooks;
  - when they are not (an edited file, results from another revision, a manifest without recorded
    inputs), sets the notebook's stamp to now, so make reruns it whatever the file times say.

The stamp holds the state sync last judged (manifest and inputs); while that state holds, sync
leaves every time alone and make's own rule decides (a `touch` reruns, `-W FILE` works).
Hashing all inputs takes well under a second and needs only the standard library.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mdlcap import files

PACKAGE = "mdlcap"

# What each notebook reads from the others' outputs (results/<run>/<notebook>/...):
#   00 builds the default model and the generated data every model-using notebook loads;
#   02 writes scores.csv, which 03, 04 and 05 allocate / prune / transfer from.
# (05 may find fine-tuning cells 03 computed, but through the one cache, keyed by what the cell
# is: they are the same numbers whoever computes them first, so 05 does not depend on 03.)
UPSTREAM: dict[str, tuple[str, ...]] = {
    "00_prepare": (),
    "01_derivations": (),
    "02_curvature_scores": ("00_prepare",),
    "03_allocation": ("00_prepare", "02_curvature_scores"),
    "04_pruning": ("00_prepare", "02_curvature_scores"),
    "05_transfer_regret": ("00_prepare", "02_curvature_scores"),
    "06_precision_allocation": (),
    "07_joint_and_psi": ("00_prepare", "02_curvature_scores"),
    "08_online_scores": ("00_prepare",),
}

# Modules that cannot change a number a notebook writes (this one only hashes files); kept out of
# the inputs so that work on the pipeline does not mark every result stale.
NOT_INPUTS = frozenset({"mdlcap/study/pipeline.py"})
STAMP_DIR = Path(".cache") / "pipeline"


def notebooks(root: Path) -> list[str]:
    """Names (stems) of the numbered notebooks, in order."""
    return sorted(p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def upstream(notebook: str) -> tuple[str, ...]:
    return UPSTREAM.get(notebook, ())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object (sorted keys)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


# --------------------------------------------------------------------------- notebook cells
def cells(path: Path) -> list[tuple[str, str]]:
    """(cell_type, source) of every cell: what a notebook's results can depend on."""
    nb = json.loads(path.read_text())
    out = []
    for c in nb.get("cells", []):
        src = c.get("source", "")
        out.append((c.get("cell_type", ""), "".join(src) if isinstance(src, list) else src))
    return out


def notebook_digest(path: Path) -> str:
    return digest(cells(path))


def cell_code(source: str) -> str:
    """A code cell as Python: IPython magics and shell escapes (%..., !...) blanked."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


# --------------------------------------------------------------------------- module closure
def module_file(root: Path, name: str) -> Path | None:
    """The file of module `name` (a.b -> a/b.py or a/b/__init__.py), None if it is not there."""
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imported_modules(tree: ast.AST, root: Path, current: str | None = None, is_package: bool = False) -> set[str]:
    """`mdlcap` modules an ast imports, anywhere in it (lazy imports inside functions count)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and current:
                parts = current.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(root, m) is not None}


def with_parents(name: str) -> list[str]:
    """a.b.c -> [a, a.b, a.b.c]: importing a module runs its packages' __init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(root: Path, start: set[str]) -> set[str]:
    """Every `mdlcap` module that importing `start` may run."""
    todo = [m for s in start for m in with_parents(s)]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = module_file(root, m)
        if f is None:
            continue
        try:
            tree = ast.parse(f.read_text(), filename=str(f))
        except SyntaxError:
            continue
        for dep in imported_modules(tree, root, m, f.name == "__init__.py"):
            todo.extend(with_parents(dep))
    return seen


def notebook_modules(root: Path, path: Path) -> set[str]:
    """The `mdlcap` modules a notebook's code cells import, and all they import in turn."""
    start: set[str] = set()
    for kind, src in cells(path):
        if kind != "code":
            continue
        try:
            start |= imported_modules(ast.parse(cell_code(src)), root)
        except SyntaxError:
            continue
    return closure(root, start | {f"{PACKAGE}.study.run"})


def package_data(root: Path) -> list[str]:
    """Non-Python files shipped in the package (lm-eval YAML): inputs of every notebook."""
    out = []
    for p in sorted((root / PACKAGE).rglob("*")):
        if p.is_file() and p.suffix in (".yaml", ".yml", ".json", ".txt") and "__pycache__" not in p.parts:
            out.append(p.relative_to(root).as_posix())
    return out


def sources(root: Path, path: Path) -> list[str]:
    """Repository-relative source files whose content a notebook's results depend on."""
    mods = notebook_modules(root, path)
    files_ = {module_file(root, m).relative_to(root).as_posix() for m in mods}
    return sorted((files_ - NOT_INPUTS) | set(package_data(root)))


# --------------------------------------------------------------------------- inputs record
def manifest_path(results: Path, run: str, notebook: str) -> Path:
    return results / run / notebook / "manifest.json"


def outputs_digest(manifest: Path) -> str | None:
    """sha256 of what a notebook wrote (its manifest's `outputs` table); None if not run."""
    try:
        return digest(files.read_json(manifest).get("outputs", {}))
    except (OSError, ValueError):
        return None


def inputs(root: Path, notebook: str, params_path: str | os.PathLike, results: Path, run: str) -> dict[str, Any]:
    """The inputs record of one notebook run, as `run.start()` stores it in the manifest."""
    root = Path(root)
    nb = root / "notebooks" / f"{notebook}.ipynb"
    params_file = Path(params_path)
    if not params_file.is_absolute():
        params_file = root / params_file
    rec: dict[str, Any] = {
        "notebook": notebook_digest(nb) if nb.exists() else None,
        "params": files.file_sha256(params_file) if params_file.exists() else None,
        "sources": {s: files.file_sha256(root / s) for s in sources(root, nb)} if nb.exists() else {},
        "upstream": {u: outputs_digest(manifest_path(results, run, u)) for u in upstream(notebook)},
    }
    rec["sha256"] = digest(rec)
    return rec


def recorded_inputs(manifest: Path) -> str | None:
    try:
        return files.read_json(manifest).get("inputs", {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


# --------------------------------------------------------------------------- make's view
def git_index_mtimes(root: Path) -> dict[str, int]:
    """mtime (ns) git's index recorded for each tracked file: a file whose time is still that one
    has not been touched since git wrote or last looked at it."""
    try:
        out = subprocess.run(["git", "ls-files", "--debug"], cwd=root, capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    res: dict[str, int] = {}
    name = None
    for line in out.splitlines():
        if not line.startswith(" "):
            name = line
        elif name is not None and line.strip().startswith("mtime:"):
            sec, nsec = line.split(":", 1)[1].strip().split(":")
            res[name] = int(sec) * 1_000_000_000 + int(nsec)
    return res


def mtime_ns(p: Path) -> int:
    return p.stat().st_mtime_ns


def set_mtime_ns(p: Path, t: int) -> None:
    os.utime(p, ns=(t, t))


def prerequisites(root: Path, notebook: str, params_rel: str, run: str) -> list[str]:
    """Files make sees as the manifest's prerequisites (repository-relative), stamp aside."""
    nb = root / "notebooks" / f"{notebook}.ipynb"
    return [nb.relative_to(root).as_posix(), params_rel, *sources(root, nb),
            *(f"results/{run}/{u}/manifest.json" for u in upstream(notebook))]


def stamp_path(root: Path, run: str, notebook: str) -> Path:
    return root / STAMP_DIR / run / f"{notebook}.stamp"


def topological(names: list[str]) -> list[str]:
    order: list[str] = []

    def visit(n: str, path: tuple[str, ...] = ()) -> None:
        if n in order:
            return
        if n in path:
            raise ValueError(f"notebook graph has a cycle through {n}")
        for u in upstream(n):
            if u in names:
                visit(u, path + (n,))
        order.append(n)

    for n in names:
        visit(n)
    return order


def sync(root: Path, params_rel: str, run: str, now_ns: int | None = None) -> dict[str, str]:
    """Judge every notebook by content and set stamps / file times so make agrees (see the module
    docstring). Returns notebook -> 'unchanged' | 'fresh' | 'touched' | 'stale' | 'missing'."""
    root = Path(root)
    results = root / "results"
    index = git_index_mtimes(root)
    moved: set[str] = set()                  # manifests whose time sync set in this pass
    verdict: dict[str, str] = {}
    for nb in topological(notebooks(root)):
        man = manifest_path(results, run, nb)
        stamp = stamp_path(root, run, nb)
        cur = inputs(root, nb, params_rel, results, run)["sha256"]
        state = digest({"inputs": cur, "manifest": files.file_sha256(man) if man.exists() else None})
        if stamp.exists() and stamp.read_text().strip() == state:
            verdict[nb] = "unchanged"
            continue
        files.atomic_write_text(stamp, state + "\n")
        if not man.exists():
            verdict[nb] = "missing"
            continue
        if recorded_inputs(man) != cur:
            set_mtime_ns(stamp, max(now_ns or time.time_ns(), mtime_ns(man) + 1000))
            verdict[nb] = "stale"
            continue
        t_man = mtime_ns(man)
        newer = [(rel, mtime_ns(root / rel)) for rel in prerequisites(root, nb, params_rel, run)
                 if (root / rel).exists() and mtime_ns(root / rel) > t_man]
        as_checked_out = all(rel in moved or index.get(rel) == t for rel, t in newer)
        if newer and as_checked_out:
            t_man = max(t for _, t in newer) + 1000
            set_mtime_ns(man, t_man)
            moved.add(man.relative_to(root).as_posix())
        set_mtime_ns(stamp, t_man)
        verdict[nb] = "fresh" if as_checked_out else "touched"
    return verdict


def graph_mk(root: Path, params_rel: str, run: str) -> str:
    """Make rules: each manifest's prerequisites (the recipe is the Makefile's)."""
    lines = ["# written by `python -m mdlcap.study.pipeline sync`; do not edit"]
    for nb in notebooks(root):
        deps = [*prerequisites(root, nb, params_rel, run), stamp_path(root, run, nb).relative_to(root).as_posix()]
        lines.append(f"results/{run}/{nb}/manifest.json: {' '.join(deps)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdlcap.study.pipeline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sync", help="judge notebooks by content; write stamps and make's rules")
    s.add_argument("--params", required=True, help="params file, repository-relative")
    s.add_argument("--root", default=None, help="repository root (default: mdlcap.files.project_root())")
    s.add_argument("--run", default=None, help="run name (default: the params file's stem)")
    s.add_argument("--mk", default=None, help="where to write the make rules (default: .cache/pipeline/<run>/graph.mk)")
    s.add_argument("-v", "--verbose", action="store_true", help="print each notebook's verdict on stderr")
    a = ap.parse_args(argv)
    root = Path(a.root).resolve() if a.root else files.project_root()
    run = a.run or Path(a.params).stem
    verdict = sync(root, a.params, run)
    mk = Path(a.mk) if a.mk else root / STAMP_DIR / run / "graph.mk"
    text = graph_mk(root, a.params, run)
    if not mk.exists() or mk.read_text() != text:
        files.atomic_write_text(mk, text)
    if a.verbose:
        for nb, v in verdict.items():
            print(f"{nb}: {v}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
