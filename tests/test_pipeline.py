"""The Makefile's notebook graph (mdlcap.study.pipeline), without running a notebook: fabricated
manifests in a fresh clone of a copy of the repository, then `make -n all` tells what would run."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mdlcap.study import pipeline

ROOT = Path(__file__).resolve().parents[1]
PARAMS = "params/smoke.yaml"
RUN = "smoke"
NBS = pipeline.notebooks(ROOT)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


def _fabricate(repo: Path) -> None:
    """Manifests as a run would leave them: outputs, and the inputs they were computed from."""
    results = repo / "results"
    for nb in pipeline.topological(NBS):
        man = pipeline.manifest_path(results, RUN, nb)
        man.parent.mkdir(parents=True, exist_ok=True)
        rec = pipeline.inputs(repo, nb, PARAMS, results, RUN)
        man.write_text(json.dumps({"notebook": nb, "outputs": {"t.csv": pipeline.digest(nb)}, "inputs": rec}))


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A committed copy of the working tree's Makefile, package, notebooks and params, with a
    committed fabricated run (like results/tiny)."""
    repo = tmp_path_factory.mktemp("origin")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc", ".ipynb_checkpoints")
    for d in ("mdlcap", "notebooks", "params"):
        shutil.copytree(ROOT / d, repo / d, ignore=ignore)
    (repo / ".gitignore").write_text(".venv\n.cache/\nresults/*/*.ipynb\n")
    _git(repo, "init", "-q")
    _fabricate(repo)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "fabricated run")
    return repo


@pytest.fixture
def clone(origin, tmp_path) -> Path:
    """A fresh clone: file times are whatever checkout gave them."""
    c = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(c))
    (c / ".venv").symlink_to(ROOT / ".venv")
    return c


def would_run(repo: Path, *make_args: str) -> list[str]:
    """Notebooks `make -n all` would run (papermill lines), in order."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env["MDLCAP_ROOT"] = str(repo)
    out = subprocess.run(["make", "-n", *make_args, "all", f"PARAMS={PARAMS}"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sync failed" not in out.stderr, out.stderr
    return re.findall(r"papermill .*? notebooks/(\S+)\.ipynb ", out.stdout)


def downstream(nbs: set[str]) -> set[str]:
    out = set(nbs)
    changed = True
    while changed:
        changed = False
        for nb in NBS:
            if nb not in out and set(pipeline.upstream(nb)) & out:
                out.add(nb)
                changed = True
    return out


def test_fresh_clone_reruns_nothing(clone):
    assert would_run(clone) == []
    assert would_run(clone) == []             # and stays so once the stamps exist


def test_what_if_notebook_03_changed(clone):
    nb03 = next(n for n in NBS if n.startswith("03_"))
    ran = would_run(clone, "-W", f"notebooks/{nb03}.ipynb")
    assert set(ran) == downstream({nb03})
    assert not {n for n in ran if n[:2] in ("00", "01", "02")}


def test_touched_notebook_03_reruns_it_and_its_readers(clone):
    nb03 = next(n for n in NBS if n.startswith("03_"))
    would_run(clone)                          # sync has seen the clone (stamps written)
    os.utime(clone / "notebooks" / f"{nb03}.ipynb")
    assert set(would_run(clone)) == downstream({nb03})


def test_touched_before_the_first_make_counts(clone):
    nb03 = next(n for n in NBS if n.startswith("03_"))
    os.utime(clone / "notebooks" / f"{nb03}.ipynb")   # fresh clone, then touch, then make -n
    assert set(would_run(clone)) == downstream({nb03})


def test_edited_notebook_02_reruns_its_readers(clone):
    nb02 = next(n for n in NBS if n.startswith("02_"))
    path = clone / "notebooks" / f"{nb02}.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["edited"]})
    mtime = path.stat().st_mtime_ns
    path.write_text(json.dumps(nb))
    os.utime(path, ns=(mtime, mtime))          # content changed, file time not: content decides
    assert set(would_run(clone)) == downstream({nb02})


def test_metadata_only_edit_reruns_nothing(clone):
    nb = NBS[0]
    path = clone / "notebooks" / f"{nb}.ipynb"
    data = json.loads(path.read_text())
    data["metadata"]["edited"] = True
    mtime = path.stat().st_mtime_ns
    path.write_text(json.dumps(data))
    os.utime(path, ns=(mtime, mtime))
    assert would_run(clone) == []


def test_edited_source_reruns_the_notebooks_that_import_it(clone):
    srcs = {nb: set(pipeline.sources(clone, clone / "notebooks" / f"{nb}.ipynb")) for nb in NBS}
    # a module only some notebooks use
    counts = {s: sum(s in v for v in srcs.values()) for v in srcs.values() for s in v}
    src = min((s for s in counts if s.endswith(".py")), key=lambda s: (counts[s], s))
    users = {nb for nb, v in srcs.items() if src in v}
    assert users != set(NBS)
    with open(clone / src, "a") as f:
        f.write("\n# edited\n")
    assert set(would_run(clone)) == downstream(users)


def test_params_change_reruns_everything(clone):
    with open(clone / PARAMS, "a") as f:
        f.write("\n# edited\n")
    assert set(would_run(clone)) == set(NBS)


def test_manifest_without_inputs_is_stale(clone):
    nb = NBS[-1]
    man = pipeline.manifest_path(clone / "results", RUN, nb)
    data = json.loads(man.read_text())
    del data["inputs"]
    t = man.stat().st_mtime_ns
    man.write_text(json.dumps(data))
    os.utime(man, ns=(t, t))
    assert set(would_run(clone)) == downstream({nb})


def test_graph_is_acyclic_and_names_real_notebooks():
    assert set(pipeline.UPSTREAM) == set(NBS)
    order = pipeline.topological(NBS)
    for nb in NBS:
        assert all(order.index(u) < order.index(nb) for u in pipeline.upstream(nb))


def test_notebook_digest_ignores_outputs_and_metadata(tmp_path):
    cell = {"cell_type": "code", "metadata": {}, "source": ["x = 1\n"], "outputs": [], "execution_count": None}
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    a.write_text(json.dumps({"cells": [cell], "metadata": {}}))
    b.write_text(json.dumps({"cells": [{**cell, "outputs": [{"text": "1"}], "execution_count": 3}],
                             "metadata": {"kernelspec": {}}}))
    assert pipeline.notebook_digest(a) == pipeline.notebook_digest(b)


def test_closure_follows_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "mdlcap"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "sub/__init__.py", "c.py", "d.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("def f():\n    from mdlcap.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\nfrom . import e\n")
    (pkg / "sub" / "e.py").write_text("")
    mods = pipeline.closure(tmp_path, {"mdlcap.a"})
    assert mods == {"mdlcap", "mdlcap.a", "mdlcap.sub", "mdlcap.sub.b", "mdlcap.c", "mdlcap.sub.e"}
