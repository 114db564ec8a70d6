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


# --------------------------------------------------------------------------- make check-results
def _repo(tmp_path: Path) -> Path:
    import os
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run = tmp_path / "results" / "r" / "01_x"
    run.mkdir(parents=True)
    (run / "t.csv").write_text("method,score,seconds,cached\na,0.5,1.2,False\nb,nan,3.4,True\n")
    (run / "kv.csv").write_text("key,value\nloss,4.68\nsolve_K32_s,0.01\n")
    (run / "v.json").write_text(json.dumps({"verdict": "ok", "rows": [1, 2], "elapsed_seconds": 9}))
    (run / "manifest.json").write_text("{}")
    (run / "fig.png").write_bytes(b"png")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "run"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, env=env, capture_output=True)
    return run


def test_check_results_passes_when_only_timings_and_manifests_moved(tmp_path):
    from mdlcap.study import check_results as CR
    run = _repo(tmp_path)
    (run / "t.csv").write_text("method,score,seconds,cached\na,0.5,9.9,True\nb,nan,0.1,False\n")
    (run / "kv.csv").write_text("key,value\nloss,4.68\nsolve_K32_s,7.0\n")
    (run / "v.json").write_text(json.dumps({"verdict": "ok", "rows": [1, 2], "elapsed_seconds": 1}))
    (run / "manifest.json").write_text('{"other": 1}')
    (run / "fig.png").write_bytes(b"other png")
    assert CR.check(tmp_path, "results/r") == {}


def test_check_results_lists_every_changed_value(tmp_path):
    from mdlcap.study import check_results as CR
    run = _repo(tmp_path)
    (run / "t.csv").write_text("method,score,seconds,cached\na,0.51,1.2,False\nb,nan,3.4,True\n")
    (run / "kv.csv").write_text("key,value\nloss,4.6845\nsolve_K32_s,0.01\n")
    (run / "v.json").write_text(json.dumps({"verdict": "moved", "rows": [1, 2, 3]}))
    (run / "new.csv").write_text("a\n1\n")
    report = CR.check(tmp_path, "results/r")
    assert set(report) == {f"results/r/01_x/{n}" for n in ("t.csv", "kv.csv", "v.json", "new.csv")}
    assert report["results/r/01_x/t.csv"] == ["row 0 column 'score': committed 0.5, now 0.51"]
    assert "row 0 column 'value'" in report["results/r/01_x/kv.csv"][0]
    assert any("verdict" in d for d in report["results/r/01_x/v.json"])
    assert any("rows[2]: only now" in d for d in report["results/r/01_x/v.json"])
    assert "results/r/01_x/t.csv" not in CR.check(tmp_path, "results/r", rtol=0.05)
    (run / "t.csv").unlink()
    assert CR.check(tmp_path, "results/r")["results/r/01_x/t.csv"] == ["missing now"]


def test_check_results_shapes_tolerance_and_exit_code(tmp_path, monkeypatch, capsys):
    import pandas as pd
    from mdlcap.study import check_results as CR
    a = pd.DataFrame({"x": [1.0, 2.0], "peak_MB": [1, 2]})
    assert CR.compare_frames(a, a.assign(peak_MB=[5, 6])) == []
    assert CR.compare_frames(a, a.iloc[:1]) == ["rows differ: committed 2, now 1"]
    assert CR.compare_frames(a, a.rename(columns={"x": "y"}))[0].startswith("columns differ")
    assert CR.compare_frames(a, a.assign(x=[1.0, 2.0 + 1e-9])) != []
    assert CR.compare_frames(a, a.assign(x=[1.0, 2.0 + 1e-9]), rtol=1e-6) == []
    run = _repo(tmp_path)
    monkeypatch.setenv("MDLCAP_ROOT", str(tmp_path))
    assert CR.main(["results/r"]) == 0
    (run / "t.csv").write_text("method,score,seconds,cached\na,0.7,1.2,False\nb,nan,3.4,True\n")
    assert CR.main(["results/r"]) == 1
    assert "t.csv: 1 difference" in capsys.readouterr().out


def test_check_results_leaves_out_time_derived_values_only():
    import pandas as pd
    from mdlcap.study import check_results as CR
    speed = pd.DataFrame({"method": ["exact", "cvxpy"], "max_abs_diff_vs_exact": [0.0, 0.011]})
    moved = speed.assign(max_abs_diff_vs_exact=[0.0, 0.042])          # cvxpy's time-limited fallback
    assert CR.compare_frames(speed, moved, drop_rows=CR.TIME_LIMITED_ROWS["speed.csv"]) == []
    wrong = speed.assign(max_abs_diff_vs_exact=[1e-3, 0.011])         # our solver moved: reported
    assert CR.compare_frames(speed, wrong, drop_rows=CR.TIME_LIMITED_ROWS["speed.csv"]) != []
    cost = pd.DataFrame({"method": ["kfac"], "grad_passes": [4.2], "zeta2": [1.5]})
    assert CR.compare_frames(cost, cost.assign(grad_passes=[4.8])) == []
    assert CR.compare_frames(cost, cost.assign(zeta2=[1.6])) != []
    assert CR.volatile("allocate_exact_K32_median_us") and not CR.volatile("rho_max")
    assert CR.volatile("speed_targets_K32_(<=100us, >=1000x)")
