"""Params files load and validate; errors name the key and the file."""
from __future__ import annotations

from pathlib import Path

import pytest

from mdlcap.study import params as P

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_params_file_validates(path):
    p = P.load(path)
    assert p.run.name == path.stem
    assert p.model.trust_remote_code is False


def test_seven_b_params_name_hub_models():
    assert P.load(ROOT / "params/mistral-7b.yaml").model.name_or_path == "mistralai/Mistral-7B-v0.1"
    g = P.load(ROOT / "params/gemma-7b.yaml")
    assert g.model.name_or_path == "google/gemma-7b" and g.pruning.rho_max == 0.55


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("pruning:\n  targt: 0.5\n")
    with pytest.raises(P.ParamsError, match=r"bad.yaml.*'pruning.targt'"):
        P.load(f)


def test_wrong_type_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  architecture:\n    num_hidden_layers: eight\n")
    with pytest.raises(P.ParamsError, match=r"'model.architecture.num_hidden_layers' must be int"):
        P.load(f)


def test_bad_literal_and_value_rules(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("run:\n  device: tpu\n")
    with pytest.raises(P.ParamsError, match=r"'run.device' must be one of"):
        P.load(f)
    f.write_text("pruning:\n  target: 0.6\n  rho_max: 0.51\n")
    with pytest.raises(P.ParamsError, match=r"'pruning.target' must not exceed"):
        P.load(f)


def test_missing_file_names_the_argument():
    with pytest.raises(P.ParamsError, match="params_path"):
        P.load("no/such/file.yaml")


def test_yaml_scientific_notation_reads_as_float(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("scoring:\n  damping: 1e-3\n")
    assert P.load(f).scoring.damping == pytest.approx(1e-3)


def test_run_writes_manifest(tmp_path):
    from mdlcap.study import run as R
    import pandas as pd
    r = R.start(ROOT / "params/smoke.yaml", "99_check", results_root=tmp_path)
    r.save_table(pd.DataFrame({"a": [1, 2]}), "t")
    m = r.finish()
    import json
    man = json.loads(m.read_text())
    assert man["params"]["run"]["name"] == "smoke"
    assert "torch" in man["packages"] and "cpu_count" in man["hardware"]
    top = json.loads((tmp_path / "smoke" / "manifest.json").read_text())
    assert "99_check" in top["notebooks"]
    assert (tmp_path / "smoke" / "99_check" / "t.csv").read_text().startswith("a\n1\n2")
