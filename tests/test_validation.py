"""Notebook 02 §2 (mdlcap.study.validation): the ζ² validation with power, on toy tables whose answer
is known (a perfect ranking against a random one) and on a random small Mistral."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lm_batches
from scipy import stats

from mdlcap.models import random_model
from mdlcap.scores.blocks import Gains
from mdlcap.study import validation as V
from mdlcap.study.params import Params, ScoringParams
from mdlcap.study.stats import INTERVAL_COLUMNS

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2)
OK = {"rel_residual": 1e-4, "iterations": 3}
BAD = {"rel_residual": 0.5, "iterations": 3}


def _batches(n=2, B=3, T=8, seed=0):
    return lm_batches(n, B, T, vocab=64, seed=seed)


def _sp(**kw):
    base = dict(cg_max_iter=200, hessian_tasks=["t"], layerif_train=4, layerif_val=2, validation_steps=2,
                lambda_grid=[1e-2, 1.0], appendix_c_layers=2, appendix_c_iter=2)
    base.update(kw)
    return dataclasses.replace(ScoringParams(), **base)


def _toy(tasks=("a", "b", "c"), n=16, good="cg_ggn", bad="grad_norm", noise=0.3, seed=0, unconverged=()):
    """Results and decreases where `good` ranks the blocks by the targets (up to noise) and `bad` is random;
    cg blocks listed in `unconverged` (task, block index) did not converge."""
    rng = np.random.default_rng(seed)
    results, decs = {}, []
    for task in tasks:
        names = [f"layers.{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(n)]
        y = rng.normal(size=n)
        decs.append(pd.DataFrame({"task": task, "layer": range(n), "block": names, "newton_heldout_decrease": y,
                                  "finetune_heldout_decrease": y + 0.1 * rng.normal(size=n),
                                  "newton_converged": True}))
        for m, vals in ((good, y + noise * rng.normal(size=n)), (bad, rng.normal(size=n))):
            diag = {b: dict(BAD if (task, i) in unconverged else OK) for i, b in enumerate(names)}
            results[(task, m)] = Gains(dict(zip(names, vals)), diag, method=m)
    return results, pd.concat(decs, ignore_index=True)


def test_spearman_matches_scipy_with_ties_and_broadcasting():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, size=20).astype(float), rng.normal(size=20)
    assert V.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    batch = rng.normal(size=(7, 20))
    assert np.allclose(V.spearman(batch, y), [stats.spearmanr(b, y).statistic for b in batch])
    assert V.spearman(np.ones(5), np.arange(5.0)) == 0.0          # no ranking on one side


def test_task_mean_interval_separates_a_perfect_ranking_from_a_random_one():
    rng = np.random.default_rng(0)
    cells = []
    for _ in range(5):
        y = rng.normal(size=16)
        cells.append((y, rng.normal(size=16), y))                # (perfect surrogate, random one, target)
    d = V.task_mean_interval(cells, V.rho_difference, n_resamples=1999)
    assert d["ci_low"] > 0.3 and d["diff"] > 0.5 and d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert d["n_items"] == 80 and d["n_tasks"] == 5 and d["n_seeds"] == 1 and d["mde"] > 0
    # two random surrogates: the interval holds 0
    null = [(rng.normal(size=16), rng.normal(size=16), rng.normal(size=16)) for _ in range(5)]
    dn = V.task_mean_interval(null, V.rho_difference, n_resamples=1999)
    assert dn["ci_low"] < 0 < dn["ci_high"]
    # the pooled interval is narrower than one task's
    one = V.task_mean_interval(cells[:1], V.rho_difference, n_resamples=1999)
    assert (one["ci_high"] - one["ci_low"]) > (d["ci_high"] - d["ci_low"])
    # nothing to resample: no interval; malformed cells: an error
    empty = V.task_mean_interval([])
    assert math.isnan(empty["ci_low"]) and empty["n_items"] == 0 and empty["method"] == "none (no blocks)"
    with pytest.raises(ValueError, match="cells"):
        V.task_mean_interval([(np.arange(3.0), np.arange(4.0))])
    with pytest.raises(ValueError, match="confidence"):
        V.task_mean_interval(cells, confidence=1.5)


def test_block_table_intervals_and_verdict_on_a_known_answer():
    res, dec = _toy(unconverged={("a", 0), ("a", 5)})
    table = V.block_table(res, dec)
    assert len(table) == 3 * 2 * 16 and set(table["method"]) == {"cg_ggn", "grad_norm"}
    assert (~table["score_converged"]).sum() == 2
    assert V.check_validation_design(table, ["a", "b", "c"]) == {"a": 16, "b": 16, "c": 16}
    with pytest.raises(ValueError, match="missing tasks \\['d'\\]"):
        V.check_validation_design(table, ["a", "d"])
    with pytest.raises(ValueError, match="too few"):
        V.check_validation_design(table, ["a"], min_blocks=17)
    rho = V.rank_intervals(table, ["cg_ggn", "grad_norm"], n_resamples=999)
    assert set(rho["task"]) == {"a", "b", "c", "Average"} and rho["assessable"].all()
    a = rho[(rho.task == "a") & (rho.method == "cg_ggn")]
    assert (a["n_blocks"] == 14).all() and (a["n_dropped"] == 2).all()       # unconverged blocks dropped, counted
    avg = rho[(rho.task == "Average") & (rho.method == "cg_ggn")]
    assert (avg["n_blocks"] == 46).all() and (avg["n_tasks"] == 3).all() and (avg["ci_low"] > 0.5).all()
    iv = V.paired_comparisons(table, ["cg_ggn", "grad_norm"], n_resamples=999)
    assert list(iv.columns) == list(INTERVAL_COLUMNS)
    assert set(iv["comparison"]) == {"zeta2 - grad_norm"} and len(iv) == 2 * 4
    assert set(iv["metric"]) == {"spearman:newton_heldout_decrease", "spearman:finetune_heldout_decrease"}
    assert (iv["verdict"] == "positive").all() and iv["claim"].isna().all()
    v = V.zeta_vs_gradnorm(iv)
    assert v["verdict"] == "reproduced" and v["damping"] is None
    t = v["targets"]["finetune_heldout_decrease"]
    assert t["cg_ggn"] == "beats" and t["ci_low"] > 0 and t["n_blocks"] == 46
    # the other way round: ζ² random, ‖g‖² ranks the blocks -> the interval is negative, not reproduced
    res2, dec2 = _toy(good="grad_norm", bad="cg_ggn", seed=3)
    iv2 = V.paired_comparisons(V.block_table(res2, dec2), ["cg_ggn", "grad_norm"], n_resamples=999)
    v2 = V.zeta_vs_gradnorm(iv2)
    assert v2["verdict"] == "not reproduced" and v2["targets"]["newton_heldout_decrease"]["cg_ggn"] == "is beaten by"
    # both random: no resolvable difference
    res3, dec3 = _toy(noise=100.0, seed=5)
    v3 = V.zeta_vs_gradnorm(V.paired_comparisons(V.block_table(res3, dec3), ["cg_ggn", "grad_norm"], n_resamples=999))
    assert {t["verdict"] for t in v3["targets"].values()} == {"no resolvable difference"}


def test_unconverged_solves_enter_nothing():
    every = {(t, i) for t in "abc" for i in range(16)}
    res, dec = _toy(unconverged=every)
    table = V.block_table(res, dec)
    rho = V.rank_intervals(table, ["cg_ggn", "grad_norm"], n_resamples=99)
    cg = rho[rho.method == "cg_ggn"]
    assert not cg["assessable"].any() and (cg[cg.task == "Average"]["n_dropped"] == 48).all()
    assert rho[rho.method == "grad_norm"]["assessable"].all()
    iv = V.paired_comparisons(table, ["cg_ggn", "grad_norm"], n_resamples=99)
    assert (iv["verdict"] == "not assessable").all() and iv["ci_low"].isna().all()
    v = V.zeta_vs_gradnorm(iv)
    assert v["verdict"] == "not assessable" and v["targets"]["newton_heldout_decrease"]["diff"] is None
    # an unconverged Newton solve drops its block from the Newton target only
    dec_bad = dec.assign(newton_converged=[i % 4 != 0 for i in range(len(dec))])
    rho_n = V.rank_intervals(V.block_table(*_toy()[:1], dec_bad), ["grad_norm"], n_resamples=99)
    n = rho_n[rho_n.task == "a"].set_index("target")["n_blocks"]
    assert n["newton_heldout_decrease"] == 12 and n["finetune_heldout_decrease"] == 16
    # no ζ² rows at all: no comparison, and the verdict says so
    assert V.paired_comparisons(table[table.method == "grad_norm"], ["cg_ggn", "grad_norm"]).empty
    assert V.zeta_vs_gradnorm(V.paired_comparisons(table[table.method == "grad_norm"], ["grad_norm"]))["verdict"] \
        == "not assessable"


def test_damping_sensitivity_reads_converged_lambdas_only():
    iv = V.paired_comparisons(V.block_table(*_toy()), ["cg_ggn", "grad_norm"], n_resamples=99)
    by_lam = pd.DataFrame({"damping": [1e-2, 1e-2, 1.0, 1.0], "method": ["cg_ggn", "kfac"] * 2,
                           "spearman_finetune": [0.9, 0.9, 0.8, 0.2], "grad_norm_spearman": [0.5] * 4,
                           "cg_rel_residual_median": [0.4, float("nan"), 1e-4, float("nan")],
                           "converged": [False, True, True, True]})
    d = V.zeta_vs_gradnorm(iv, by_lam)["damping"]
    assert d == {"grad_norm_rho": 0.5, "cg_ggn_beats_at": [1.0], "best_rho": 0.8, "best_damping": 1.0,
                 "unconverged_dampings": [1e-2], "verdict": None, "first_rel_residual": 0.4}
    none = V.zeta_vs_gradnorm(iv, by_lam.assign(converged=False))["damping"]
    assert none["verdict"] == "not assessable" and none["best_rho"] is None and none["cg_ggn_beats_at"] == []


def test_validation_decreases_and_damping_validation():
    model, bs, sp = random_model(**CFG).double(), _batches(n=2), _sp(cg_max_iter=200, blocks="layer")
    held = _batches(n=1, seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    dec = V.validation_decreases(model, sp, bs, held, damping=1e-2, progress=False)
    assert list(dec["layer"]) == [0, 1, 2] and list(dec["block"]) == ["layers.0", "layers.1", "layers.2"]
    assert np.isfinite(dec[list(V.TARGETS)].to_numpy()).all()
    assert dec["newton_converged"].all() and (dec["newton_rel_residual"] <= 1e-3).all() and (dec["newton_damping"] == 1e-2).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))     # parameters restored
    short = V.validation_decreases(model, dataclasses.replace(sp, cg_max_iter=1), bs, held, damping=1e-3, progress=False)
    assert not short["newton_converged"].all()                                     # flagged, not hidden
    fine = V.validation_decreases(model, dataclasses.replace(sp, blocks="attn_mlp", validation_steps=1), bs, held,
                                  damping=1.0, progress=False)
    assert list(fine["block"]) == [f"layers.{i}.{k}" for i in range(3) for k in ("attn", "mlp")]
    by_lam = V.damping_validation(model, sp, bs, dec["finetune_heldout_decrease"].to_numpy())
    assert list(by_lam["damping"]) == [1e-2] * 3 + [1.0] * 3
    assert list(by_lam["method"]) == ["cg_ggn", "diag_fisher", "kfac"] * 2
    assert by_lam["spearman_finetune"].between(-1, 1).all() and by_lam["grad_norm_spearman"].nunique() == 1
    assert by_lam["converged"].all()
    few = V.damping_validation(model, dataclasses.replace(sp, cg_max_iter=1, lambda_grid=[1e-3]), bs,
                               dec["finetune_heldout_decrease"].to_numpy())
    assert few["converged"].tolist() == [False, True, True]


def test_validate_task_one_solve_for_score_and_step_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    model = random_model(**CFG).double()
    data = {"train": _batches(n=2), "validation": _batches(n=1, seed=3)}
    monkeypatch.setattr(V, "scoring_batches", lambda params, tok, task, split: data[split])
    p = Params()
    p.scoring = _sp(damping=1e-2, validation_blocks="attn_mlp")
    methods = ["cg_ggn", "cg_hessian", "diag_fisher", "grad_norm", "layerif_all"]
    got, dec = V.validate_task(model, None, p, "t", methods, progress=False)
    assert list(got) == ["cg_ggn", "cg_hessian", "diag_fisher", "grad_norm"]   # LayerIF is not block-validated
    blocks = [f"layers.{i}.{k}" for i in range(3) for k in ("attn", "mlp")]
    assert all(list(g) == blocks for g in got.values()) and list(dec["block"]) == blocks
    z = got["cg_ggn"]
    assert (dec["newton_damping"] == z.damping).all()                           # the step is the score's solve
    assert dec["newton_converged"].tolist() == [V.block_converged(z.diagnostics[b]) for b in blocks]
    # ζ²/2 is the quadratic model's decrease at d*: the measured Newton decrease has the same order
    assert np.isfinite(dec["newton_heldout_decrease"]).all()
    n_files = len(list((tmp_path / "scores").glob("*.json")))
    monkeypatch.setattr(V, "single_layer_decreases", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again, dec2 = V.validate_task(model, None, p, "t", methods, progress=False)
    assert {m: dict(g) for m, g in again.items()} == {m: dict(g) for m, g in got.items()}
    pd.testing.assert_frame_equal(dec, dec2)
    assert len(list((tmp_path / "scores").glob("*.json"))) == n_files
    table = V.block_table({("t", m): g for m, g in got.items()}, dec.assign(task="t"))
    assert set(table["method"]) == set(got) and len(table) == 4 * 6


def test_params_validation_keys(tmp_path):
    import yaml
    from mdlcap.study import params as P
    assert P.load("params/tiny.yaml").scoring.validation_blocks == "attn_mlp"
    assert V.validation_tasks(P.load("params/tiny.yaml")) == list(P.load("params/tiny.yaml").data.finetune_tasks)
    p = P.Params()
    assert V.validation_methods(p) == list(V.VALIDATION_METHODS)                 # null: every ζ² surrogate and ‖g‖²
    p.scoring = dataclasses.replace(p.scoring, methods=["grad_norm", "layerif_all", "cg_ggn"])
    assert V.validation_methods(p) == ["cg_ggn", "grad_norm"]
    p.scoring = dataclasses.replace(p.scoring, validation_methods=["grad_norm", "kfac", "cg_ggn"])
    assert V.validation_methods(p) == ["cg_ggn", "kfac", "grad_norm"]
    for bad, key in (({"validation_tasks": ["nope"]}, "scoring.validation_tasks"),
                     ({"validation_tasks": []}, "scoring.validation_tasks"),
                     ({"validation_blocks": "module"}, "validation_blocks"),
                     ({"validation_task": "nope"}, "scoring.validation_task"),
                     ({"validation_methods": ["kfac", "grad_norm"]}, "scoring.validation_methods"),
                     ({"validation_methods": ["cg_ggn", "grad_norm", "layerif_all"]}, "scoring.validation_methods")):
        f = tmp_path / "p.yaml"
        f.write_text(yaml.safe_dump({"scoring": bad}))
        with pytest.raises(ValueError, match=key):
            P.load(f)
