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


def test_method_names_come_from_the_registries(tmp_path):
    from mdlcap.interventions import allocation, pruning
    from mdlcap.scores import registry
    names = P.registries()
    assert names["scoring"] == tuple(registry.SCORE_METHODS)
    assert names["pruners"] == tuple(pruning.PRUNERS) and names["ratios"] == tuple(pruning.RATIO_METHODS)
    assert names["allocation"] == tuple(allocation.METHODS)
    d = P.Params()
    assert d.scoring.methods == list(registry.SCORE_METHODS) and d.pruning.pruners == list(pruning.PRUNERS)
    f = tmp_path / "bad.yaml"
    for text, key in (("scoring:\n  methods: [cg_ggn, hutchinson]\n", "scoring.methods"),
                      ("pruning:\n  pruners: [wanda, obs]\n", "pruning.pruners"),
                      ("pruning:\n  table_methods: [uniform, alpha]\n", "pruning.table_methods"),
                      ("pruning:\n  score_methods: [nope]\n", "pruning.score_methods"),
                      ("transfer:\n  methods: [nope]\n", "transfer.methods"),
                      ("transfer:\n  downstream_method: mdl_nope\n", "transfer.downstream_method"),
                      ("allocation:\n  methods: [uniform, mdl_nope]\n", "allocation.methods")):
        f.write_text(text)
        with pytest.raises(P.ParamsError, match=rf"'{key}'"):
            P.load(f)


def test_run_threads(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("run:\n  threads: 0\n")
    with pytest.raises(P.ParamsError, match=r"'run.threads' must be >= 1"):
        P.load(f)
    assert P.Params().run.threads == 1
    f.write_text("launch:\n  num_processes: 1\n")
    with pytest.raises(P.ParamsError, match=r"unknown key 'launch'"):
        P.load(f)


def test_start_pins_threads_and_manifest_records_determinism_and_inputs(tmp_path):
    import json
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from threadpoolctl import threadpool_info
    from mdlcap.study import run as R
    before = torch.get_num_threads()
    try:
        r = R.start(ROOT / "params/smoke.yaml", "03_allocation", results_root=tmp_path)
        assert torch.get_num_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info())
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        r.save_figure(fig, "f")
        assert not plt.fignum_exists(fig.number)        # shown (in a kernel) and closed
        man = json.loads(r.finish().read_text())
    finally:
        torch.set_num_threads(before)
    det = man["determinism"]
    assert det["threads"] == 1 and det["torch_threads"] == 1 and det["seed"] == 0
    assert det["env"]["OMP_NUM_THREADS"] == "1"
    inp = man["inputs"]
    assert inp["notebook"] and inp["params"] and "mdlcap/study/run.py" in inp["sources"]
    assert set(inp["upstream"]) == {"00_prepare", "02_curvature_scores"}
    assert "f.png" in man["outputs"]


def test_hardware_counts_the_cpus_this_process_may_use():
    """Under taskset the manifest records the affinity, not the machine's total."""
    import os
    from mdlcap.study import run as R
    hw = R.hardware()
    assert hw["cpu_count"] == len(os.sched_getaffinity(0))
    assert hw["cpu_count_machine"] == os.cpu_count()


def test_hardware_names_the_cpu_and_its_kernels():
    """Runs on different CPUs may differ in their last digits: the manifest says which CPU and
    which SIMD kernels torch dispatched to."""
    import os

    import torch
    from mdlcap.study import run as R
    hw = R.hardware()
    assert isinstance(hw["cpu_model"], str)
    if os.path.exists("/proc/cpuinfo") and "model name" in open("/proc/cpuinfo").read():
        assert hw["cpu_model"]
    assert hw["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
