"""Notebook 02's drivers and tables (mdlcap.study.curvature_scores) on a random small Mistral and
on hand-made tables: every table the notebook shows, and the verdict claims.py reads back."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lm_batches

from mdlcap.models import random_model
from mdlcap.scores.blocks import Gains
from mdlcap.scores.registry import SCORE_METHODS, layer_gains
from mdlcap.study import curvature_scores as S
from mdlcap.study.params import ScoringParams

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2)


def _batches(n=2, B=3, T=8, seed=0):
    return lm_batches(n, B, T, vocab=64, seed=seed)


def _sp(**kw):
    base = dict(cg_max_iter=3, hessian_tasks=["t"], layerif_train=4, layerif_val=2,
                validation_steps=2, lambda_grid=[1e-2, 1.0], appendix_c_layers=2, appendix_c_iter=2)
    base.update(kw)
    return dataclasses.replace(ScoringParams(), **base)


def test_take_samples_cuts_the_last_batch():
    bs = _batches(n=3, B=3)
    got = S.take_samples(bs, 5)
    assert [b["input_ids"].shape[0] for b in got] == [3, 2]
    assert torch.equal(got[1]["labels"], bs[1]["labels"][:2])


def test_score_batches_every_method_cached_and_timed(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    model, bs, sp = random_model(**CFG), _batches(), _sp()
    train, val = S.take_samples(_batches(seed=1), 4), S.take_samples(_batches(seed=2), 2)
    res = S.score_batches(model, sp, "t", list(SCORE_METHODS), bs, (train, val), progress=False)
    assert list(res) == [m for m in SCORE_METHODS]
    for m, g in res.items():
        assert len(g) == 3 and all(math.isfinite(v) for v in g.values()), m
        assert g.meta["seconds"] > 0 and g.meta["grad_pass_seconds"] > 0 and g.meta["n_batches"] > 0, m
    assert {g.meta["n_batches"] for m, g in res.items() if not m.startswith("layerif")} == {2}   # same batches for all
    assert res["cg_ggn"].diagnostics["layers.0"]["iterations"] <= 3 and "converged" in res["cg_ggn"].diagnostics["layers.0"]
    assert dict(res["grad_norm"]) == pytest.approx(dict(layer_gains(model, bs, method="grad_norm", progress=False)))
    assert min(res["layerif_pos"].values()) >= 0                       # −sum, shifted onto the simplex
    n_files = len(list((tmp_path / "scores").glob("*.json")))
    assert n_files == len(SCORE_METHODS) - 1                           # the two LayerIF pools share one entry
    again = S.score_batches(model, sp, "t", list(SCORE_METHODS), bs, (train, val), progress=False)
    assert {m: dict(g) for m, g in again.items()} == {m: dict(g) for m, g in res.items()}
    assert again["kfac"].meta == res["kfac"].meta                      # cached: the cost of the computing run
    assert len(list((tmp_path / "scores").glob("*.json"))) == n_files
    # cg_hessian only for the hessian tasks; unknown methods and a missing LayerIF sample set are errors
    other = S.score_batches(model, sp, "u", ["cg_hessian", "grad_norm"], bs, use_cache=False, progress=False)
    assert list(other) == ["grad_norm"]
    with pytest.raises(ValueError, match="methods"):
        S.score_batches(model, sp, "t", ["newton"], bs, progress=False)
    with pytest.raises(ValueError, match="layerif_data"):
        S.score_batches(model, sp, "t", ["layerif_all"], bs, use_cache=False, progress=False)


def _results():
    def g(vals, method, diag=None, **meta):
        names = [f"layers.{i}" for i in range(len(vals))]
        return Gains(dict(zip(names, vals)), {n: dict(diag or {}) for n in names}, method=method,
                     meta={"seconds": 2.0, "grad_pass_seconds": 0.5, "peak_bytes": 2**20, "n_batches": 1,
                           "n_sequences": 4, **meta})
    d = {"iterations": 3, "rel_residual": 0.1, "damping_requested": 1e-3, "damping_needed": 1e-3, "damping_used": 1e-3,
         "damping_raises": 0, "ritz_min_H": 0.5, "ritz_max_H": 2.0, "damping_needed_lower_bound": 0.0, "grad_norm2": 1.0}
    ok = {**d, "rel_residual": 1e-4}
    return {("a", "cg_ggn"): g([1.0, 2.0, 3.0], "cg", ok), ("a", "grad_norm"): g([3.0, 2.0, 1.0], "grad_norm"),
            ("b", "cg_ggn"): g([1.0, 3.0, 2.0], "cg", d), ("b", "grad_norm"): g([1.0, 2.0, 3.0], "grad_norm", seconds=1.0)}


def test_tables_of_section_1_and_4():
    from mdlcap.scores.table import scores_frame
    res = _results()
    scores = scores_frame(res)
    assert S.scored_methods(scores) == ["cg_ggn", "grad_norm"]
    q = S.q_table(scores)
    assert q.shape == (4, 3) and np.allclose(q.sum(axis=1), 1.0)
    diag = S.cg_diagnostics(res)
    assert len(diag) == 6 and set(diag["method"]) == {"cg_ggn"} and list(diag["zeta2"][:3]) == [1.0, 2.0, 3.0]
    assert diag["converged"].tolist() == [True] * 3 + [False] * 3      # rel residual 1e-4 vs 0.1 (threshold 1e-3)
    summ = S.cg_summary(diag)
    assert summ.loc["cg_ggn", "iterations"] == 3 and summ.loc["cg_ggn", "converged"] == 3 and summ.loc["cg_ggn", "solves"] == 6
    per = S.damping_per_task(diag)
    assert per["converged"].tolist() == [True, False] and per["damping_used"].tolist() == [1e-3, 1e-3]
    mixed = diag.copy()
    mixed.loc[0, "damping_used"] = 0.5                                  # one λ per task is the rule
    with pytest.raises(ValueError, match="one per task"):
        S.damping_per_task(mixed)
    rc = S.rank_correlation(scores, ["a", "b"], ["cg_ggn", "grad_norm"])
    assert rc["spearman"].tolist() == pytest.approx([-1.0, 0.5])
    R = S.rank_matrix(rc, ["cg_ggn", "grad_norm"])
    assert R.loc["cg_ggn", "grad_norm"] == R.loc["grad_norm", "cg_ggn"] == pytest.approx(-0.25)
    assert R.loc["cg_ggn", "cg_ggn"] == 1.0
    cost = S.cost_table(res)
    assert cost["grad_passes"].tolist() == [4.0, 4.0, 4.0, 2.0] and cost["peak_MB"].tolist() == [1.0] * 4
    per = S.cost_per_method(cost, ["grad_norm", "cg_ggn", "kfac"])
    assert list(per.index) == ["grad_norm", "cg_ggn"]
    assert per.loc["grad_norm", "grad_passes_median"] == 3.0 and per.loc["grad_norm", "seconds_total"] == 3.0
    assert set(S.optional_libraries()) == {"curvlinops", "kronfluence", "backpack"}


# the validation of the rankings (validation_decreases, damping_validation, the verdict): tests/test_validation.py


def test_damping_policy_one_lambda_per_task():
    from mdlcap.study import cg_solves
    model, bs = random_model(**CFG).double(), _batches(n=2)
    sp = _sp(cg_max_iter=4, damping=1e-3, lambda_grid=[1e-3, 1e-2, 1.0, 10.0], cg_damping_policy="smallest_converged")
    assert cg_solves.damping_candidates(sp) == [1e-3, 1e-2, 1.0, 10.0]
    assert cg_solves.damping_candidates(dataclasses.replace(sp, cg_damping_policy="fixed")) == [1e-3]
    g = cg_solves.cg_gains(model, bs, sp, "ggn", progress=False)
    used = {d["damping_used"] for d in g.diagnostics.values()}
    assert used == {g.damping} and cg_solves.converged(g)               # one λ, every block converged
    tried = g.meta["damping_tried"]
    assert [t["damping"] for t in tried][-1] == g.damping and all(not t["converged"] for t in tried[:-1])
    # the λ chosen is the smallest candidate at which every block converges within cg_max_iter
    for t in tried[:-1]:
        probe = layer_gains(model, bs, method="cg", damping=t["damping"], max_iter=4, tol=sp.cg_tol, progress=False)
        assert not cg_solves.converged(probe)
    fixed = cg_solves.cg_gains(model, bs, dataclasses.replace(sp, cg_damping_policy="fixed", cg_max_iter=1), "ggn",
                               progress=False)
    assert fixed.damping == 1e-3 and not cg_solves.converged(fixed) and not fixed.meta["converged"]
    # exact Hessian: one λ for all blocks, the largest any block needs (each block's need reported)
    h = cg_solves.cg_gains(model, bs, dataclasses.replace(sp, cg_max_iter=100), "hessian", progress=False)
    used = {d["damping_used"] for d in h.diagnostics.values()}
    assert len(used) == 1 and used.pop() == pytest.approx(max(d["damping_needed"] for d in h.diagnostics.values()))


def test_appendix_c_sweep_and_summary():
    from mdlcap.scores.table import scores_frame
    scores = scores_frame(_results())
    from mdlcap.study import appendix_c as C
    assert C.appendix_c_layers(scores, "a", 1) == [2]
    assert C.appendix_c_layers(scores, "a", 2) == [0, 2]
    assert C.appendix_c_layers(scores, "b", 3) == [0, 1, 2]
    model, bs, sp = random_model(**CFG).double(), _batches(n=1), _sp(appendix_c_iter=50, cg_tol=1e-12)
    sweep = C.appendix_c_sweep(model, bs, [0, 2], sp, progress=False)
    assert sweep["cg_converged"].all()
    assert list(sweep["block"]) == ["layers.0"] * 2 + ["layers.2"] * 2
    # Eq 18 (Galerkin identity, every CG iterate) and Eq 19 (0 ≤ λ‖d*‖² ≤ ζ²)
    assert np.allclose(sweep["quadratic_ggn"], sweep["eq18_value"], rtol=1e-6, atol=1e-10)
    ac = C.appendix_c_summary(sweep)
    assert ac["eq18_max_rel_error"] < 1e-6 and ac["bias_bound_holds"] and ac["verdict"] is None
    assert 0 <= ac["true_change_is_decrease_fraction"] <= 1 and ac["n_converged"] == ac["n_rows"] == 4
    assert [r["damping"] for r in ac["ranking"]] == [1e-2, 1.0] and 0 <= ac["ranking_agreement"] <= 1
    one = C.appendix_c_summary(sweep[sweep["block"] == "layers.0"])
    assert one["ranking"] is None and one["ranking_agreement"] is None
    # unconverged rows leave every comparison with the true change: "not assessable", not a number
    half = sweep.assign(cg_converged=sweep["damping"] == 1.0)
    ah = C.appendix_c_summary(half)
    assert ah["n_converged"] == 2 and ah["unconverged_dampings"] == [1e-2]
    assert [r["same"] for r in ah["ranking"]][0] == "not assessable" and ah["rel_error_smallest_lambda"] is not None
    none = C.appendix_c_summary(sweep.assign(cg_converged=False))
    assert none["verdict"] == "not assessable" and none["rel_error_median"] is None and none["ranking_agreement"] is None
    assert none["eq18_max_rel_error"] < 1e-6                          # identities of every iterate still checked


def test_gradient_pass_touches_no_parameter():
    model, bs = random_model(**CFG), _batches()
    before = [p.detach().clone() for p in model.parameters()]
    S.gradient_pass(model, bs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_params_cg_keys_validated(tmp_path):
    import yaml
    from mdlcap.study import params as P
    base = yaml.safe_load(open("params/smoke.yaml"))
    for key, value, match in (("cg_tol", 1e-2, "scoring.cg_tol"), ("cg_preconditioner", "jacobi", "scoring.cg_preconditioner"),
                              ("cg_damping_policy", "per_layer", "scoring.cg_damping_policy")):
        raw = {**base, "scoring": {**base["scoring"], key: value}}
        f = tmp_path / f"{key}.yaml"
        f.write_text(yaml.safe_dump(raw))
        with pytest.raises(P.ParamsError, match=match):
            P.load(f)
    raw = {**base, "scoring": {**base["scoring"], "cg_damping_policy": "smallest_converged", "damping": 1.0,
                               "lambda_grid": [1e-2, 1.0]}}
    f = tmp_path / "grid.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(P.ParamsError, match="lambda_grid value above"):
        P.load(f)
    assert P.load("params/tiny.yaml").scoring.cg_damping_policy == "smallest_converged"
