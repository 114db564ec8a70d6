"""The committed default-run results (results/tiny/) were produced by a run, not edited by hand:
every table, figure and JSON matches the sha256 its notebook's manifest recorded when it wrote
it, and the run used the params file as it stands now."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mdlcap.files import file_sha256

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "results" / "tiny"
NB_DIRS = sorted(p for p in TINY.glob("[0-9][0-9]_*") if p.is_dir()) if TINY.exists() else []


def _tracked(folder: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", str(folder)], cwd=ROOT, capture_output=True, text=True)
    return [ROOT / line for line in out.stdout.splitlines() if line]


@pytest.mark.parametrize("nb", NB_DIRS, ids=[p.name for p in NB_DIRS])
def test_committed_outputs_match_their_manifest(nb: Path):
    manifest = json.loads((nb / "manifest.json").read_text())
    outputs = manifest["outputs"]
    files = [p for p in _tracked(nb) if p.name != "manifest.json" and p.parent == nb]
    assert files, f"{nb.name}: nothing committed"
    for f in files:
        assert f.name in outputs, f"{nb.name}/{f.name} was not written by the run"
        assert file_sha256(f) == outputs[f.name], f"{nb.name}/{f.name} differs from what the run wrote"
    assert manifest["params_sha256"] == file_sha256(ROOT / "params" / "tiny.yaml"), \
        f"{nb.name}: params/tiny.yaml changed since this result was produced; rerun `make all`"


def test_every_notebook_has_committed_results():
    if not TINY.exists():
        pytest.skip("no committed default run yet")
    nbs = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [p.name for p in NB_DIRS] == nbs
    assert (TINY / "REPORT.md").exists()
