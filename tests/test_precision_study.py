"""Notebook 06's drivers and tables (mdlcap.study.precision, precision.analysis) on a smoke-size
study: the cache returns what was computed, the tables' invariants hold, the verdict reads the
proposal's range from study.paper."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mdlcap.interventions.precision import analysis as A
from mdlcap.interventions.precision.data import load_image_data
from mdlcap.study import paper
from mdlcap.study import params as P
from mdlcap.study import precision as SP


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MDLCAP_CACHE", str(tmp_path_factory.mktemp("cache")))
    n = torch.get_num_threads()
    try:
        p = P.load("params/smoke.yaml")
        pp = p.precision
        data = load_image_data(pp.dataset, pp.data_path, seed=p.run.seed, max_train=pp.max_train)
        first = SP.run_all(p, data, progress=False)
        again = SP.run_all(p, data, progress=False)            # read back from the cache
        yield p, data, first, again
    finally:
        torch.set_num_threads(n)
        mp.undo()


def test_run_study_cached_tables_equal_computed(study):
    p, _, first, again = study
    assert set(first) == set(SP.TABLES)
    for k in SP.TABLES:
        pd.testing.assert_frame_equal(first[k], again[k], check_dtype=False, rtol=1e-12)
    jobs = {(m, s) for m in p.precision.models for s in p.precision.seeds}
    assert set(map(tuple, first["alloc"][["model", "seed"]].drop_duplicates().to_numpy())) == jobs


def test_layer_stats_mean_waterfall_relaxation(study):
    p, _, t, _ = study
    m = A.layer_stats_mean(t["stats"])
    assert list(m.columns) == A.STAT_COLUMNS and m.index.names == ["model", "layer"]
    model, seed = p.precision.models[0], p.precision.seeds[0]
    r, cw = A.waterfall(t["contrib"], model, seed)
    assert len(cw) > 0 and (cw.eps_rel == r).all() and (cw.model == model).all()
    nonuni = [e for e, g in t["contrib"].groupby("eps_rel") if g["bits"].nunique() > 1]
    assert (r in nonuni) or not nonuni
    relax = A.relaxation_vs_exact(t["alloc"])
    assert set(relax.columns) == {"model", "n", "excess_mean", "excess_max", "worse_frac", "min_excess"}
    assert (relax.min_excess >= -1e-9).all() and relax.worse_frac.between(0, 1).all()


def test_alt_grid_params(study):
    p = study[0]
    alt = SP.alt_grid_params(p)
    if p.precision.alt_bit_choices:
        assert list(alt.precision.bit_choices) == list(p.precision.alt_bit_choices)
        assert {2.0, 3.0} <= set(alt.precision.avg_bits_targets)
        assert alt.precision.models == p.precision.models
    import dataclasses
    none = dataclasses.replace(p, precision=dataclasses.replace(p.precision, alt_bit_choices=[]))
    assert SP.alt_grid_params(none) is None


def _saving(values: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "drop_pts": 1.0, "method": "caq_exact", "saving_vs_uniform": v,
                          "saving_vs_uniform_int": v - 0.1} for m, v in values.items()])


def test_verdict_words_follow_paper_range():
    lo, hi = paper.CLAIMED["caq_saving_range"]
    assert SP.verdict(_saving({"a": lo / 2}))["verdict"] == "does NOT show up (below 15 %)"
    assert SP.verdict(_saving({"a": (lo + hi) / 2}))["verdict"] == "shows up (inside 15-25 %)"
    v = SP.verdict(_saving({"a": hi + 0.1, "b": hi + 0.1}))
    assert v["verdict"] == "shows up and exceeds 25 %" and v["per_model"] == {"a": hi + 0.1, "b": hi + 0.1}
    assert SP.verdict(_saving({"a": np.nan}))["verdict"].startswith("cannot be judged")
    assert SP.verdict(_saving({"a": 0.2}))["drop_pts"] == paper.THRESHOLDS["caq_accuracy_loss_points"]


def test_summary_lines(study):
    p, data, t, _ = study
    alloc = t["alloc"]
    saving = A.memory_saving(alloc)
    tight = A.tightness(alloc, methods=("caq_exact", "uniform", "uniform_int"))
    tables = {"alloc": alloc, "saving": saving, "tightness": tight, "floor_tightness": A.floor_tightness(t["floor"]),
              "robustness": A.robustness(alloc), "relaxation": A.relaxation_vs_exact(alloc),
              "kappa_bits": A.kappa_bits_correlation(A.kappa_vs_bits(alloc, t["stats"])), "saving_alt": saving}
    out, lines = SP.summary(tables, data.describe(), [2, 3])
    assert set(out) == {"within_1pt", "no_drop", "alt_grid"} and out["within_1pt"] == SP.verdict(saving)
    assert lines[0] == f"Data: {data.describe()}"
    assert any(line.startswith("The proposal's expected 15-25% saving") for line in lines)
    assert lines[-1].startswith("On the finer grid [2, 3]: CAQ saves")
    base = SP.baseline_saving(saving)
    assert set(base.index) <= set(SP.BASELINES)
