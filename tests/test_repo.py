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
