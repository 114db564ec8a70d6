"""Notebook 02's drivers and tables (mdlcap.study.curvature_scores) on a random small Mistral and
on hand-made tables: every table the notebook shows, and the verdict claims.py reads back."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mdlcap.models import random_model
from mdlcap.scores.blocks import Gains
from mdlcap.scores.registry import SCORE_METHODS, layer_gains
from mdlcap.study import curvature_scores as S
from mdlcap.study.params import ScoringParams

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2)


def _batches(n=2, B=3, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (B, T), generator=g)
        lab = ids.clone()
        lab[:, : T // 2] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab})
    return out


def _sp(**kw):
    base = dict(cg_max_iter=3, cg_batches=1, hessian_tasks=["t"], layerif_train=4, layerif_val=2,
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
    assert res["cg_ggn"].meta["n_batches"] == 1                        # CG on the first cg_batches only
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
    d = {"iterations": 3, "rel_residual": 0.1, "damping_used": 1e-3, "damping_raises": 0, "ritz_min_H": 0.5,
         "ritz_max_H": 2.0, "damping_needed_lower_bound": 0.0, "grad_norm2": 1.0}
    return {("a", "cg_ggn"): g([1.0, 2.0, 3.0], "cg", d), ("a", "grad_norm"): g([3.0, 2.0, 1.0], "grad_norm"),
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
    assert S.cg_summary(diag).loc["cg_ggn", "iterations"] == 3
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


def test_validation_tables_and_verdict():
    from mdlcap.scores.table import scores_frame
    scores = scores_frame(_results())
    dec = pd.DataFrame({"layer": [0, 1, 2], "newton_heldout_decrease": [0.1, 0.2, 0.3],
                        "finetune_heldout_decrease": [0.3, 0.1, 0.2]})
    val = S.validation_rank_correlation(scores, dec, "a", ["cg_ggn", "grad_norm"])
    got = val.set_index(["method", "target"])["spearman"]
    assert got["cg_ggn", "newton_heldout_decrease"] == pytest.approx(1.0)
    assert got["grad_norm", "newton_heldout_decrease"] == pytest.approx(-1.0)
    assert got["cg_ggn", "finetune_heldout_decrease"] == pytest.approx(-0.5)
    v = S.zeta_vs_gradnorm(val)
    assert v["damping"] is None
    t = v["targets"]["newton_heldout_decrease"]
    assert t["best_zeta2"] == "cg_ggn" and t["n_zeta2_beating"] == 1 and t["n_zeta2"] == 1
    assert t["cg_ggn_beats_grad_norm"] and t["cg_ggn_rho"] == pytest.approx(1.0)
    f = v["targets"]["finetune_heldout_decrease"]
    assert f["grad_norm"] == pytest.approx(0.5) and not f["cg_ggn_beats_grad_norm"]
    by_lam = pd.DataFrame({"damping": [1e-2, 1e-2, 1.0, 1.0], "method": ["cg_ggn", "kfac"] * 2,
                           "spearman_finetune": [0.1, 0.9, 0.8, 0.2], "grad_norm_spearman": [0.5] * 4,
                           "cg_rel_residual_median": [0.4, float("nan"), 0.01, float("nan")]})
    d = S.zeta_vs_gradnorm(val, by_lam)["damping"]
    assert d == {"grad_norm_rho": 0.5, "cg_ggn_beats_at": [1.0], "best_rho": 0.8, "best_damping": 1.0,
                 "first_rel_residual": 0.4}


def test_validation_decreases_and_damping_validation():
    model, bs, sp = random_model(**CFG).double(), _batches(n=2), _sp()
    held = _batches(n=1, seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    dec = S.validation_decreases(model, sp, bs[:1], bs, held, progress=False)
    assert list(dec["layer"]) == [0, 1, 2] and list(dec["block"]) == ["layers.0", "layers.1", "layers.2"]
    assert np.isfinite(dec[list(S.TARGETS)].to_numpy()).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))     # parameters restored
    by_lam = S.damping_validation(model, sp, bs[:1], bs, dec["finetune_heldout_decrease"].to_numpy())
    assert list(by_lam["damping"]) == [1e-2] * 3 + [1.0] * 3
    assert list(by_lam["method"]) == ["cg_ggn", "diag_fisher", "kfac"] * 2
    assert by_lam["spearman_finetune"].between(-1, 1).all() and by_lam["grad_norm_spearman"].nunique() == 1
    assert by_lam["cg_rel_residual_median"].notna().tolist() == [True, False, False] * 2


def test_appendix_c_sweep_and_summary():
    from mdlcap.scores.table import scores_frame
    scores = scores_frame(_results())
    assert S.appendix_c_layers(scores, "a", 1) == [2]
    assert S.appendix_c_layers(scores, "a", 2) == [0, 2]
    assert S.appendix_c_layers(scores, "b", 3) == [0, 1, 2]
    model, bs, sp = random_model(**CFG).double(), _batches(n=1), _sp(appendix_c_iter=50, cg_tol=1e-12)
    sweep = S.appendix_c_sweep(model, bs, [0, 2], sp, progress=False)
    assert list(sweep["block"]) == ["layers.0"] * 2 + ["layers.2"] * 2
    # Eq 18 (Galerkin identity, every CG iterate) and Eq 19 (0 ≤ λ‖d*‖² ≤ ζ²)
    assert np.allclose(sweep["quadratic_ggn"], sweep["eq18_value"], rtol=1e-6, atol=1e-10)
    ac = S.appendix_c_summary(sweep)
    assert ac["eq18_max_rel_error"] < 1e-6 and ac["bias_bound_holds"]
    assert 0 <= ac["true_change_is_decrease_fraction"] <= 1
    assert [r["damping"] for r in ac["ranking"]] == [1e-2, 1.0] and 0 <= ac["ranking_agreement"] <= 1
    one = S.appendix_c_summary(sweep[sweep["block"] == "layers.0"])
    assert one["ranking"] is None and "ranking_agreement" not in one


def test_gradient_pass_touches_no_parameter():
    model, bs = random_model(**CFG), _batches()
    before = [p.detach().clone() for p in model.parameters()]
    S.gradient_pass(model, bs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
