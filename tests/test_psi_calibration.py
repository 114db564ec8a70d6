"""Calibrated ψ_k per pruner (mdlcap.study.psi_calibration): single-layer curves on a random tiny
Mistral with a cheap additive fake evaluation, the fits, the ratio vectors at equal sparsity, the
held-out intervals and the additivity check."""
from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mdlcap.default import data
from mdlcap.default.pretrain import train_tokenizer
from mdlcap.interventions import pruning as P
from mdlcap.models import random_model
from mdlcap.study import pruning as S
from mdlcap.study import psi_calibration as C
from mdlcap.study.params import PruningParams
from mdlcap.study.pruning_ratios import BUDGET_TOL
from mdlcap.theory.pruning_psi import PowerFit, fit_power_penalty

# the same tiny GQA decoder and padded batches as the pruning tests
from test_pruning import batches, model  # noqa: E402,F401

COEF = np.array([0.5, 2.0, 1.0])          # the fake loss: Σ_k COEF_k s_k² (s_k layer k's measured sparsity)
HELDOUT = [f"held {i}" for i in range(12)]
CALIB = [f"cal {i}" for i in range(10)]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    return tmp_path


def _bench(model, batches, monkeypatch, coef=COEF):
    """A Bench whose evaluation is cheap, deterministic and additive over layers: window i of text set
    T has loss base_T + 0.01 i + Σ_k coef_k s_k² (1 + 0.02 i); every call's per-layer sparsity is
    recorded in `bench.seen` as (text set, sparsities)."""
    seen = []

    def fake(m, tok, params, heldout, seq_len, eval_limit, need_accuracy):
        sp = P.measured_sparsity(m)
        seen.append((heldout[0].split()[0], [float(s) for s in sp]))
        pen = float(np.dot(coef, sp ** 2))
        base = 2.0 if heldout[0].startswith("held") else 2.5
        wl = [base + 0.01 * i + pen * (1 + 0.02 * i) for i in range(len(heldout))]
        return {"perplexity": float(np.exp(np.mean(wl))), "window_loss": wl, "accuracy": None}

    monkeypatch.setattr(S, "evaluate", fake)
    monkeypatch.setattr(data, "texts", lambda params, split: CALIB if split == "calibration" else HELDOUT)
    params = SimpleNamespace(pruning=PruningParams(sparsegpt_blocksize=16))
    bench = S.Bench(model, None, params, batches, list(HELDOUT), 16, None, P.layer_sizes(model), {"test": 1})
    bench.seen = seen
    return bench


def test_calibration_bench_evaluates_the_calibration_texts_under_its_own_keys(model, batches, tmp_cache, monkeypatch):
    bench = _bench(copy.deepcopy(model), batches, monkeypatch)
    cal = C.calibration_bench(bench, bench.params)
    assert cal.heldout == CALIB and bench.heldout == HELDOUT
    assert cal.key_extra["eval_texts"] == "calibration" and "eval_texts" not in bench.key_extra
    assert {k: v for k, v in cal.key_extra.items() if k in bench.key_extra} == bench.key_extra
    assert cal.keys == set() and cal.keys is not bench.keys and cal.model is bench.model
    d_held, d_cal = bench.run(None, "dense", need_accuracy=False), cal.run(None, "dense", need_accuracy=False)
    assert d_held["key"] != d_cal["key"] and len(d_cal["window_loss"]) == len(CALIB)
    assert C.mean_loss(d_cal) == pytest.approx(2.5 + 0.045) and C.mean_loss(d_held) == pytest.approx(2.0 + 0.055)
    assert bench.keys == {d_held["key"]} and cal.keys == {d_cal["key"]}


def test_layer_curves_prune_one_layer_at_a_time(model, batches, tmp_cache, monkeypatch):
    held = _bench(copy.deepcopy(model), batches, monkeypatch)
    bench = C.calibration_bench(held, held.params)
    grid = [0.25, 0.5]
    curves = C.layer_curves(bench, ["magnitude", "wanda"], grid, progress=False)
    assert list(curves.columns) == ["pruner", "layer", "rho", "measured", "loss", "dense_loss", "D"]
    assert len(curves) == 2 * 3 * 2 and set(curves.rho) == set(grid) and set(curves.layer) == {0, 1, 2}
    assert np.allclose(curves["D"], curves["loss"] - curves["dense_loss"])
    assert np.allclose(curves["measured"], curves["rho"], atol=0.5 / 32)
    assert (curves["D"] > 0).all()
    # the recorded evaluations: the dense model, then models with exactly one layer pruned
    rec = [sp for _, sp in held.seen]
    assert all(t == "cal" for t, _ in held.seen) and len(rec) == 1 + len(curves)
    assert max(rec[0]) < 1e-6
    for (_, row), sp in zip(curves.iterrows(), rec[1:]):
        others = [s for k, s in enumerate(sp) if k != row.layer]
        assert max(others) == 0.0 and sp[row.layer] == pytest.approx(row.rho, abs=0.5 / 32)
    # the fake loss is Σ COEF_k s_k² (times a window factor whose calibration mean is 1.09)
    for _, row in curves.iterrows():
        assert row.D == pytest.approx(1.09 * COEF[row.layer] * row.measured ** 2, rel=1e-5, abs=1e-6)
    # cached: a second pass evaluates nothing
    n = len(held.seen)
    assert C.layer_curves(bench, ["magnitude", "wanda"], grid, progress=False).equals(curves) and len(held.seen) == n


def test_layer_curve_is_zero_at_the_dense_model(model, batches, tmp_cache, monkeypatch):
    """A ratio so small that no weight is pruned (round(ρ · count) = 0) is the dense model: D = 0 exactly."""
    bench = _bench(copy.deepcopy(model), batches, monkeypatch)
    curves = C.layer_curves(bench, ["magnitude"], [1e-7], progress=False)
    assert (curves["measured"] == 0).all() and (curves["D"] == 0).all()
    assert (curves["dense_loss"] == C.mean_loss(bench.run(None, "dense", need_accuracy=False))).all()


@pytest.mark.parametrize("kw, arg", [(dict(grid=[]), "grid"), (dict(grid=[0.0, 0.5]), "grid"),
                                     (dict(grid=[0.5, 1.0]), "grid"), (dict(grid=[0.3, 0.3]), "grid"),
                                     (dict(grid=[np.nan]), "grid"), (dict(pruners=["nope"]), "pruners"),
                                     (dict(pruners=[]), "pruners"), (dict(pruners=["wanda", "wanda"]), "pruners")])
def test_layer_curves_reject_bad_inputs(model, batches, tmp_cache, monkeypatch, kw, arg):
    bench = _bench(copy.deepcopy(model), batches, monkeypatch)
    args = {"pruners": ["wanda"], "grid": [0.5], **kw}
    with pytest.raises(ValueError, match=rf"^{arg}: "):
        C.layer_curves(bench, args["pruners"], args["grid"], progress=False)
    assert bench.seen == []                     # rejected before anything is evaluated


def _fits():
    """Hand-made fits of two pruners on three layers (mixed exponents for sparsegpt)."""
    rows = [{"pruner": "wanda", "layer": k, "a": a, "p": 2.0} for k, a in enumerate([0.5, 2.0, 1.0])]
    rows += [{"pruner": "sparsegpt", "layer": k, "a": a, "p": p} for k, (a, p) in enumerate([(0.3, 2.5), (1.0, 1.5),
                                                                                            (0.2, 3.0)])]
    return pd.DataFrame(rows)


def test_fit_curves_recovers_a_power_curve():
    rho = np.array([0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    curves = pd.DataFrame([{"pruner": "wanda", "layer": k, "rho": r, "D": a * r ** p}
                           for k, (a, p) in enumerate([(0.3, 2.5), (1.2, 1.3)]) for r in rho])
    fits = C.fit_curves(curves)
    assert list(fits.columns) == ["pruner", "layer", "a", "p", "r2", "n_points", "D_max"] and len(fits) == 2
    f0, f1 = fits.iloc[0], fits.iloc[1]
    assert f0.a == pytest.approx(0.3, rel=1e-6) and f0.p == pytest.approx(2.5, rel=1e-6) and f0.r2 == pytest.approx(1.0)
    assert f1.a == pytest.approx(1.2, rel=1e-6) and f1.p == pytest.approx(1.3, rel=1e-6)
    assert f0.n_points == 6 and f0.D_max == pytest.approx(0.3 * 0.9 ** 2.5)
    # a noisy curve: the origin (the dense model) is one of the fitted points (it moves r², not a, p)
    noisy = curves.assign(D=curves.D + np.tile([0.01, -0.02, 0.0, 0.015, -0.01, 0.02], 2))
    g = noisy[noisy.layer == 0]
    want = fit_power_penalty(np.r_[0.0, g.rho], np.r_[0.0, g.D])
    got = C.fit_curves(noisy).iloc[0]
    assert (got.a, got.p, got.r2) == pytest.approx((want.a, want.p, want.r2), rel=1e-9)
    assert got.r2 != pytest.approx(fit_power_penalty(g.rho, g.D).r2, rel=1e-6)


def test_calibrated_ratios_meet_the_target_exactly():
    sizes = np.array([100.0, 300.0, 200.0])
    for pr in ("wanda", "sparsegpt"):
        rho, res = C.calibrated_ratios(_fits(), pr, sizes, 0.5, bits=16.0, rho_max=0.9)
        assert abs(P.global_sparsity(rho, sizes) - 0.5) <= BUDGET_TOL and res.kkt_residual <= 1e-9
        assert rho.min() >= 0 and rho.max() <= 0.9 and np.ptp(rho) > 0.05    # not uniform
    rho, _ = C.calibrated_ratios(_fits(), "wanda", sizes, 0.5, bits=16.0, rho_max=0.9)
    np.testing.assert_allclose(rho, [4 / 7, 3 / 7, 4 / 7], rtol=1e-12)    # p = 2: ρ ∝ N/a = (200, 150, 200)
    rho, _ = C.calibrated_ratios(_fits(), "wanda", sizes, 0.5, bits=16.0, rho_max=0.55)    # the box binds
    assert rho[0] == rho[2] == 0.55 and abs(P.global_sparsity(rho, sizes) - 0.5) <= BUDGET_TOL
    with pytest.raises(ValueError, match="^pruner: 'magnitude'"):
        C.calibrated_ratios(_fits(), "magnitude", sizes, 0.5, bits=16.0, rho_max=0.9)


def test_ratio_vectors_all_at_exact_sparsity():
    sizes, target, pp = np.array([100.0, 300.0, 200.0]), 0.5, PruningParams()
    q, raw, outl = np.array([0.2, 0.5, 0.3]), np.array([1.0, 3.0, -0.5]), np.array([0.01, 0.03, 0.02])
    vec = C.ratio_vectors(_fits(), ["wanda", "sparsegpt"], q, raw, outl, sizes, target, pp, rho_max=0.9)
    assert set(vec) == {(pr, m) for pr in ("wanda", "sparsegpt") for m in C.PSI_METHODS}
    for v in vec.values():
        assert abs(P.global_sparsity(v, sizes) - target) <= BUDGET_TOL
    np.testing.assert_array_equal(vec[("wanda", "psi_rho2")], P.mdl_ratios(q, sizes, target, bits=pp.bits, lam=pp.lam,
                                                                         gamma=pp.gamma, rho_max=0.9, equality=True))
    for m in ("psi_rho2", "owl", "layerif", "uniform"):
        np.testing.assert_array_equal(vec[("wanda", m)], vec[("sparsegpt", m)])
    np.testing.assert_array_equal(vec[("wanda", "psi_calibrated")],
                                  C.calibrated_ratios(_fits(), "wanda", sizes, target, bits=16.0, rho_max=0.9)[0])
    assert not np.allclose(vec[("wanda", "psi_calibrated")], vec[("sparsegpt", "psi_calibrated")])
    np.testing.assert_array_equal(vec[("wanda", "owl")], P.owl_ratios(outl, sizes, target, lam=pp.owl_lambda))
    with pytest.raises(ValueError, match="^outliers: "):
        C.ratio_vectors(_fits(), ["wanda"], q, raw, None, sizes, target, pp, rho_max=0.9)
    with pytest.raises(ValueError, match="^pruner: 'magnitude'"):
        C.ratio_vectors(_fits(), ["magnitude"], q, raw, outl, sizes, target, pp, rho_max=0.9)


def test_ratio_vectors_refuse_a_vector_off_budget(monkeypatch):
    monkeypatch.setattr(C, "owl_ratios", lambda D, N, t, lam: np.full(len(N), t + 1e-6))
    with pytest.raises(RuntimeError, match=r"\('wanda', 'owl'\): global sparsity"):
        C.ratio_vectors(_fits(), ["wanda"], [0.2, 0.5, 0.3], [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [100, 300, 200], 0.5,
                        PruningParams(), rho_max=0.9)


def test_predicted_increase_is_the_sum_of_the_fitted_curves():
    r = np.array([0.2, 0.6, 0.4])
    f = _fits()[lambda d: d.pruner == "sparsegpt"]
    want = sum(PowerFit(a, p, 1.0)(x) for a, p, x in zip(f.a, f.p, r))
    assert C.predicted_increase(_fits(), "sparsegpt", r) == pytest.approx(want, rel=1e-14)
    assert C.predicted_increase(_fits(), "wanda", r) == pytest.approx(0.5 * 0.04 + 2.0 * 0.36 + 1.0 * 0.16)
    with pytest.raises(ValueError, match="^fits: "):
        C.predicted_increase(_fits(), "wanda", r[:2])


def _results(scale=1.0, pruners=("wanda", "sparsegpt")):
    """A results frame: psi_calibrated's held-out windows 2 % lower than every other method's."""
    rng = np.random.default_rng(0)
    base = 3.0 + rng.normal(0, 0.1, 20)
    rows = []
    for pr in pruners:
        for i, m in enumerate(C.PSI_METHODS):
            shift = -0.02 if m == "psi_calibrated" else 0.0
            pred = 0.1 + 0.05 * i
            rows.append({"pruner": pr, "method": m, "predicted_increase": pred, "measured_increase": scale * pred,
                         "window_loss": list(base + shift + rng.normal(0, 0.002, 20))})
    return pd.DataFrame(rows)


def test_comparison_intervals_and_verdict_lines():
    iv = C.comparison_intervals(_results(), n_resamples=999)
    assert len(iv) == 2 * len(C.COMPARISONS) and list(iv.task.unique()) == ["wanda", "sparsegpt"]
    assert list(iv.comparison[:5]) == [f"{m} - {b}" for m, b in C.COMPARISONS] and (iv.metric == "rel_ppl").all()
    assert (iv.ci_low <= iv["diff"]).all() and (iv["diff"] <= iv.ci_high).all() and iv.claim.isna().all()
    cal = iv[iv.comparison.str.startswith("psi_calibrated")]
    assert (cal.verdict == "negative").all() and np.allclose(cal["diff"], np.exp(-0.02) - 1, atol=2e-3)
    assert (iv[iv.comparison == "psi_rho2 - uniform"].verdict == "no resolvable difference").all()
    lines = C.verdict_lines(iv)
    assert len(lines) == 2 and lines[0].startswith("wanda: ")
    assert "calibrated psi vs psi_rho2 -" in lines[0] and "% ppl [-" in lines[0] and lines[0].count("BETTER") == 2
    worse = iv.assign(verdict=iv.verdict.replace({"negative": "positive"}))
    assert C.verdict_lines(worse)[1].count("WORSE") == 2
    with pytest.raises(ValueError, match="^comparisons: wanda has no results for \\['owl'\\]"):
        C.comparison_intervals(_results()[lambda d: d.method != "owl"])


def test_additivity_and_its_verdict():
    tab = C.additivity(_results())
    assert list(tab.pruner) == ["wanda", "sparsegpt"] and (tab.n == 5).all()
    assert np.allclose(tab[["pearson", "spearman", "mean_ratio"]], 1.0)
    assert "in 2 of 2 pruners" in C.additivity_verdict(tab) and "NOT" not in C.additivity_verdict(tab)
    off = C.additivity(_results(scale=3.0))
    assert np.allclose(off.mean_ratio, 3.0) and np.allclose(off.pearson, 1.0)
    v = C.additivity_verdict(off)
    assert "in 0 of 2 pruners" in v and "NOT within x1.5" in v and "NOT rank-correlated" not in v
    anti = _results().assign(measured_increase=lambda d: 1.0 - d.predicted_increase)
    a = C.additivity(anti)
    assert np.allclose(a.spearman, -1.0) and "NOT rank-correlated" in C.additivity_verdict(a)


def test_end_to_end_on_the_tiny_model(model, batches, tmp_cache, monkeypatch):
    """Curves, fits, vectors and evaluation on the fake additive bench: the fits recover COEF_k ρ², and
    Σ_k ψ_k(ρ_k) predicts the measured whole-model increase (the fake is additive)."""
    held = _bench(copy.deepcopy(model), batches, monkeypatch)
    cal = C.calibration_bench(held, held.params)
    fits = C.fit_curves(C.layer_curves(cal, ["magnitude"], [0.25, 0.5, 0.75], progress=False))
    assert np.allclose(fits["p"], 2.0, atol=0.05) and np.allclose(fits["a"], 1.09 * COEF, rtol=0.05)
    sizes, pp = held.sizes, held.params.pruning
    vec = C.ratio_vectors(fits, ["magnitude"], np.array([0.2, 0.5, 0.3]), np.array([1.0, 3.0, 2.0]),
                          np.array([0.01, 0.03, 0.02]), sizes, 0.5, pp, rho_max=0.9)
    res = C.evaluate_methods(held, cal, vec, held.run(None, "dense", need_accuracy=False),
                             cal.run(None, "dense", need_accuracy=False), fits)
    assert list(res.method) == list(C.PSI_METHODS) and np.allclose(res.global_sparsity, 0.5, atol=1e-12)
    assert np.allclose(res.measured_global, 0.5, atol=0.5 / 32)
    assert (res.window_loss.map(len) == len(HELDOUT)).all() and (res.rel_ppl_vs_dense > 0).all()
    np.testing.assert_allclose(res.measured_increase, res.predicted_increase, rtol=0.05)
    r0 = vec[("magnitude", "psi_calibrated")]     # measured on the calibration texts, ppl on the held-out ones
    assert res.measured_increase[0] == C.mean_loss(cal.run(r0, "magnitude", False)) - C.mean_loss(
        cal.run(None, "dense", False))
    assert res.perplexity[0] == held.run(r0, "magnitude", False)["perplexity"]
    assert res.window_loss[0] == held.run(r0, "magnitude", False)["window_loss"]
    # the calibrated ψ is the exact optimum of the fake's (additive, quadratic) loss: lowest held-out ppl
    assert res.set_index("method").perplexity.idxmin() == "psi_calibrated"
    add = C.additivity(res)
    assert add.pearson.iloc[0] > 0.99 and add.spearman.iloc[0] == pytest.approx(1.0)
    iv = C.comparison_intervals(res, n_resamples=999)
    assert len(iv) == len(C.COMPARISONS) and (iv.ci_low <= iv["diff"]).all() and (iv["diff"] <= iv.ci_high).all()
    assert len(C.verdict_lines(iv)) == 1


def test_uniform_sweep_adds_one_point_per_pruner_and_level(model, batches, monkeypatch, tmp_cache):
    bench = _bench(model, batches, monkeypatch)
    dense = bench.run(None, "dense", need_accuracy=False)
    curves = C.layer_curves(bench, ["magnitude", "wanda"], [0.2, 0.5], progress=False)
    fits = C.fit_curves(curves)
    sw = C.uniform_sweep(bench, dense, fits, ["magnitude", "wanda"], [0.3, 0.6])
    assert len(sw) == 4 and list(sw.method[:2]) == ["uniform@0.3", "uniform@0.6"]
    r = np.full(len(bench.sizes), 0.6)
    assert sw.predicted_increase.iloc[1] == pytest.approx(C.predicted_increase(fits, "magnitude", r))
    assert (sw.measured_increase.iloc[1] > sw.measured_increase.iloc[0])
    with pytest.raises(ValueError, match="grid"):
        C.uniform_sweep(bench, dense, fits, ["magnitude"], [1.5])


def test_layer_curves_in_worker_processes_equal_the_in_process_table(batches, tmp_path, monkeypatch):
    """workers > 1 (spawn processes holding a copy of the bench) writes the same table as one
    process, through the same cache entries: a rerun in-process evaluates nothing."""
    texts = ["the quick brown fox jumps over the lazy dog and then sleeps in the sun " * 3] * 6
    tok = train_tokenizer(texts, 300)
    m = random_model(seed=0, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok))
    params = SimpleNamespace(pruning=PruningParams(sparsegpt_blocksize=16))
    bench = S.Bench(m, tok, params, batches, texts, 16, None, P.layer_sizes(m), {"test": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # as the notebooks (and each worker): one float reduction order
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path / "one"))
    try:
        serial = C.layer_curves(bench, ["magnitude", "wanda"], [0.3, 0.6], progress=False)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path / "two"))
    par_bench = dataclasses.replace(bench, keys=set())
    dense = {k: v.clone() for k, v in m.state_dict().items()}
    parallel = C.layer_curves(par_bench, ["magnitude", "wanda"], [0.3, 0.6], progress=False, workers=2)
    pd.testing.assert_frame_equal(parallel, serial)
    # the workers pruned copies: tensors a spawn pool sends share memory, so pruning the model that
    # arrived would have written into this process's weights (and the other worker's) mid-run
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in dense.items())
    assert len(par_bench.keys) == 1 + len(serial)                  # the dense model and every point
    calls = []
    monkeypatch.setattr(S, "evaluate", lambda *a, **k: calls.append(1))
    assert C.layer_curves(par_bench, ["magnitude", "wanda"], [0.3, 0.6], progress=False).equals(parallel)
    assert calls == []                                             # the workers' entries are the cache's
    with pytest.raises(ValueError, match="^workers: "):
        C.layer_curves(bench, ["magnitude"], [0.3], progress=False, workers=0)
