"""Notebook 04's paired intervals (mdlcap.study.pruning_intervals) and the statistics they rest on
(mdlcap.study.stats: equivalence_verdict, stratified_interval); per-window losses (evaluation)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mdlcap.study import paper
from mdlcap.study import pruning_intervals as I
from mdlcap.study import pruning_ratios as R
from mdlcap.study.params import PruningParams
from mdlcap.study.stats import INTERVAL_COLUMNS, equivalence_verdict, stratified_interval


# --------------------------------------------------------------------------- equivalence rule
@pytest.mark.parametrize("lo,hi,verdict", [
    (-0.5, 0.8, "equivalent"), (-1.0, 1.0, "equivalent"), (0.2, 0.9, "equivalent"),
    (1.2, 3.0, "differ"), (-4.0, -1.01, "differ"),
    (-0.5, 1.5, "inconclusive"), (-2.0, 2.0, "inconclusive"), (0.5, 1.5, "inconclusive"),
    (math.nan, math.nan, "not assessable")])
def test_equivalence_verdict(lo, hi, verdict):
    assert equivalence_verdict(lo, hi, 1.0) == verdict


def test_equivalence_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="margin"):
        equivalence_verdict(-0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match="ci_low"):
        equivalence_verdict(0.5, -0.5, 1.0)


# --------------------------------------------------------------------------- stratified bootstrap
def test_stratified_interval_is_the_mean_of_task_means_with_the_stratified_se():
    rng = np.random.default_rng(0)
    # unequal strata: the pooled item mean (≈ stratum b's) differs from the mean of the two task means
    a, b = np.ones(20), rng.normal(0.0, 1.0, 400)
    r = stratified_interval([a, b], n_resamples=999)
    assert r["diff"] == pytest.approx((1 + b.mean()) / 2) and r["diff"] != pytest.approx(np.r_[a, b].mean())
    assert r["n_items"] == 420 and r["n_strata"] == 2 and r["ci_low"] < r["diff"] < r["ci_high"]
    # stratum a has no spread: the s.e. is stratum b's alone, halved (the statistic averages two strata)
    assert r["se"] == pytest.approx(b.std() / math.sqrt(b.size) / 2, rel=0.1)
    assert r["mde"] == pytest.approx((1.959964 + 0.841621) * r["se"], rel=1e-4)


def test_stratified_interval_degenerate_and_bad_input():
    assert stratified_interval([np.zeros(5), np.full(3, 2.0)])["ci_low"] == 1.0       # no spread: the point
    assert math.isnan(stratified_interval([np.array([1.0]), np.array([2.0])])["ci_low"])
    with pytest.raises(ValueError, match="strata"):
        stratified_interval(np.zeros(4))
    with pytest.raises(ValueError, match="strata"):
        stratified_interval([np.zeros(3), np.array([])])
    with pytest.raises(ValueError, match="finite"):
        stratified_interval([np.array([0.0, math.nan])])


# --------------------------------------------------------------------------- the two metrics
def test_ppl_rel_interval_is_the_perplexity_ratio():
    rng = np.random.default_rng(1)
    base = rng.normal(4.0, 0.4, 130)
    method = base + 0.05 + rng.normal(0, 0.02, 130)
    r = I.ppl_rel_interval(method, base, n_resamples=999)
    ppl = lambda x: math.exp(np.mean(x))  # noqa: E731
    assert r["diff"] == pytest.approx(ppl(method) / ppl(base) - 1, rel=1e-12)
    assert 0 < r["ci_low"] < r["diff"] < r["ci_high"] < 0.1
    assert r["n_items"] == 130 and r["se"] > 0
    with pytest.raises(ValueError, match="same windows"):
        I.ppl_rel_interval(method[:-1], base)


def test_zeroshot_interval_points_and_pairing():
    a = {"t1": [1, 1, 0, 1], "t2": [0, 1, 1, 1, 1, 0]}
    b = {"t1": [1, 0, 0, 1], "t2": [0, 1, 0, 1, 1, 0]}
    r = I.zeroshot_interval(a, b, ["t1", "t2"], n_resamples=499)
    assert r["diff"] == pytest.approx(100 * (1 / 4 + 1 / 6) / 2) and r["n_items"] == 10
    with pytest.raises(ValueError, match="same"):
        I.zeroshot_interval(a, {"t1": [1, 0, 0], "t2": b["t2"]}, ["t1", "t2"])
    # identical answers: not a zero-width interval (that would read as exact parity) but ±mean 3/n_t
    same = I.zeroshot_interval(a, a, ["t1", "t2"])
    assert same["diff"] == 0 and same["ci_high"] == pytest.approx(100 * (3 / 4 + 3 / 6) / 2) == -same["ci_low"]
    with pytest.raises(ValueError, match="t3"):
        I.zeroshot_interval(a, b, ["t3"])


# --------------------------------------------------------------------------- zero-shot power
def test_zeroshot_power_table_and_check():
    assert I.zeroshot_items_needed(7, 1.0) == 358       # 0.25 / (7 · 1e-4) = 357.1
    assert I.zeroshot_items_needed(7, 1.0, p=0.9) < 358
    items = {f"t{k}": [1] * 128 + [0] * 128 for k in range(7)}           # p = 0.5, n = 256
    tab = I.zeroshot_power_table(items)
    avg = tab[tab.task == paper.AVERAGE_TASK].iloc[0]
    assert avg.se_points == pytest.approx(100 * math.sqrt(7 * 0.25 / 256) / 7) and avg.se_points > 1
    assert not I.zeroshot_power_ok(tab)
    big = I.zeroshot_power_table({f"t{k}": [1] * 179 + [0] * 179 for k in range(7)})   # n = 358
    assert I.zeroshot_power_ok(big) and I.zeroshot_power_ok(big, worst_case=True)
    assert "NOT met" in I.zeroshot_power_verdict(tab) and "met" in I.zeroshot_power_verdict(big)
    swapped = I.zeroshot_power_table({"b": [1, 0], "a": [1, 1]})        # rows in name order, not arrival order
    assert list(swapped.task) == ["a", "b", paper.AVERAGE_TASK]
    with pytest.raises(ValueError, match="Average"):
        I.zeroshot_power_ok(tab[tab.task != paper.AVERAGE_TASK])
    with pytest.raises(ValueError, match="items"):
        I.zeroshot_power_table({})


# --------------------------------------------------------------------------- the comparison rows
def _scores():
    rows = []
    for method, q in (("cg_ggn", [0.2, 0.3, 0.5]), ("layerif_all", [0.5, 0.25, 0.25])):
        rows += [{"task": "calibration", "method": method, "layer": k, "score": 4.0 * v, "q": v}
                 for k, v in enumerate(q)]
    return pd.DataFrame(rows)


class FakeBench:
    """Entries that depend only on (ratio vector, pruner): loss per window = 4 + Σρ² + noise fixed by
    the vector, items drawn from a seed of the same; zero-shot only where `scored` says."""
    def __init__(self, sizes, tasks=("a", "b")):
        self.sizes = np.asarray(sizes)
        self.params = SimpleNamespace(data=SimpleNamespace(zeroshot_tasks=list(tasks)),
                                      pruning=PruningParams(zeroshot_methods=["uniform", "layerif", "mdl", "mdl_eq"],
                                                            zeroshot_score_methods=["layerif_all"]))
        self.scored = set()

    def entry(self, v, pr, with_items):
        v = np.round(np.asarray(v, float), 9)
        seed = abs(hash((tuple(v), pr))) % 2 ** 32
        rng = np.random.default_rng(seed)
        wl = (4 + float((v ** 2).sum()) + rng.normal(0, 0.05, 40)).tolist()
        items = {t: rng.integers(0, 2, 30).tolist() for t in self.params.data.zeroshot_tasks} if with_items else None
        return {"window_loss": wl, "items": items}

    def run(self, v, pr, need_accuracy=True):
        key = tuple(np.round(np.asarray(v, float), 9))
        return self.entry(v, pr, (key, pr) in self.scored)


def test_comparison_intervals_rows_names_and_claims():
    sizes = np.array([100, 100, 100])
    pp = PruningParams()
    vec = R.plan_vectors(R.ratio_plan(_scores(), sizes, np.array([0.01, 0.02, 0.05]), pp))
    configs = list(vec)
    bench = FakeBench(sizes)
    for pr in ("magnitude", "wanda"):
        for k in configs:
            if R.zeroshot_listed(k, bench.params.pruning):
                bench.scored.add((tuple(np.round(vec[k], 9)), pr))
    dense = bench.entry(np.zeros(3), "dense", True)
    df = I.comparison_intervals(bench, vec, configs, ["magnitude", "wanda"], dense, ["layerif_all", "cg_ggn"],
                                n_resamples=199)
    assert list(df.columns) == list(INTERVAL_COLUMNS)
    assert set(df.task) == {"magnitude", "wanda"} and set(df.metric) <= set(paper.PRUNING_METRICS)
    names = set(df.comparison)
    primary = {"mdl_eq - uniform", "mdl_eq_free - uniform", "layerif - uniform", "owl - uniform",
               "mdl_eq - layerif", "mdl - layerif@mdl", "mdl - uniform@mdl", "uniform50 - dense"}
    assert primary <= names                                               # the paper's source: plain names
    assert "mdl_eq - layerif [cg_ggn/calibration]" in names and "owl - uniform [cg_ggn/calibration]" not in names
    claim = df[df.comparison.isin(I.CLAIM_COMPARISONS) & (df.metric == "zeroshot_points")]
    assert len(claim) == 4                                                # 2 claims x 2 pruners
    assert set(claim.verdict) <= {"equivalent", "differ", "inconclusive"}
    mistral = paper.pruning_table().query("model == 'Mistral-7B'").set_index("pruner").paper_diff
    assert np.allclose(claim.claim, [mistral[t] for t in claim.task])
    # zero-shot only where both sides were scored: never for OWL, MDL-eq-free or the cg_ggn source (whose
    # paper-program row is the same model as the scored uniform@mdl: one cache entry, so it has items)
    zs = df[(df.metric == "zeroshot_points") & ~df.comparison.str.startswith("mdl - uniform@mdl")]
    assert len(zs) and not zs.comparison.str.contains("owl|cg_ggn|mdl_eq_free").any()
    # the paper's program is uniform at rho_max: the same model as uniform@mdl, a zero difference
    same = df[df.comparison == "mdl - uniform@mdl"]
    assert (same["diff"] == 0).all()
    assert (same[same.metric == "perplexity_rel"].ci_low == 0).all()          # same windows: exactly zero
    assert (same[same.metric == "zeroshot_points"].ci_high == 100 * 3 / 30).all()   # rule of three, n = 30
    ppl = df[df.metric == "perplexity_rel"]
    assert (ppl.n_items == 40).all() and (ppl.ci_low <= ppl["diff"]).all() and (ppl["diff"] <= ppl.ci_high).all()
    dens = ppl[ppl.comparison == "uniform50 - dense"]
    assert (dens["diff"] > 0).all()                                     # Σρ² of uniform 0.5 > 0
    text = I.intervals_verdict(df)
    assert text.count("PARITY") == 4 and "DESIGN" in text and "WIDTH perplexity_rel" in text
    # unequal budgets are refused
    bad = dict(vec)
    bad[("layerif", "layerif_all", "calibration")] = vec[("layerif", "layerif_all", "calibration")] * 0.9
    with pytest.raises(ValueError, match="global sparsity"):
        I.comparison_intervals(bench, bad, configs, ["magnitude"], dense, ["layerif_all"], n_resamples=99)


def test_resolve_and_primary_source():
    vec = {("uniform", "-", "-"): 0, ("layerif", "s", "t"): 1, ("mdl", "s", "t"): 2}
    assert I.resolve(vec, "uniform", ("s", "t")) == ("uniform", "-", "-")
    assert I.resolve(vec, "layerif@mdl", ("s", "t")) == ("layerif", "s", "t")     # the program met the target
    assert I.resolve(vec, "owl", ("s", "t")) is None and I.resolve(vec, "layerif", None) is None
    assert I.primary_source(["cg_ggn", "layerif_all"], ["cola", "calibration"]) == ("layerif_all", "calibration")
    assert I.primary_source(["cg_ggn"], ["cola"]) == ("cg_ggn", "cola") and I.primary_source([], ["x"]) is None


def test_zeroshot_listed():
    pp = PruningParams(zeroshot_methods=["uniform", "layerif", "mdl"], zeroshot_score_methods=["layerif_all"])
    assert R.zeroshot_listed(("uniform", "-", "-"), pp) and not R.zeroshot_listed(("owl", "-", "-"), pp)
    assert R.zeroshot_listed(("layerif@mdl", "layerif_all", "c"), pp)
    assert not R.zeroshot_listed(("layerif", "cg_ggn", "c"), pp)
    assert not R.zeroshot_listed(("layerif@mdl", "layerif_all", "c"), PruningParams(zeroshot_methods=["layerif"]))
    assert R.zeroshot_listed(("mdl_eq", "cg_ggn", "c"), PruningParams())                  # default: everything


# --------------------------------------------------------------------------- per-window losses
def test_window_losses_give_the_perplexity():
    import torch
    from mdlcap import evaluation as E
    from mdlcap import models as M
    from mdlcap.study import params as P
    p = P.load("params/smoke.yaml")
    model, tok = M.load(p, progress=False)
    texts = ["the cat sat on the mat and looked at the dog " * 6, "a quick brown fox jumps over it " * 5]
    wl = E.window_losses(model, tok, texts, 16)
    assert len(wl) == sum(len(b["input_ids"]) for b in E.lm_batches(tok, texts, 16, 8)) and min(wl) > 0
    assert math.exp(np.mean(wl)) == pytest.approx(E.perplexity(model, tok, texts, 16), rel=1e-5)
    assert not model.training and torch.is_grad_enabled()
    with pytest.raises(ValueError, match="texts"):
        E.window_losses(model, tok, [], 16)
