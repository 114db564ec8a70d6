"""Notebook 03's tables (mdlcap.study.allocation), the seed statistics and the paper's numbers,
on small synthetic frames: every table the notebook shows is computed here without a model."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mdlcap.interventions import allocation as ab
from mdlcap.study import allocation as nb03
from mdlcap.study import paper, stats

TASKS = ["cola", "sciq"]


def _results(acc):
    """Long results frame from {(task, method, seed): accuracy}."""
    return pd.DataFrame([{"task": t, "method": m, "seed": s, "accuracy": a} for (t, m, s), a in acc.items()])


def _two_pools(seeds=(0, 1, 2), gap=0.05):
    rng = np.random.default_rng(0)
    acc = {}
    for t in TASKS:
        for s in seeds:
            base = 0.6 + 0.02 * rng.standard_normal()
            acc[(t, "layerif_all", s)] = base
            acc[(t, "mdl_layerif_all", s)] = base + gap
            acc[(t, "layerif_pos", s)] = base
            acc[(t, "mdl_layerif_pos", s)] = base
            acc[(t, "uniform", s)] = base - 0.01
    return _results(acc)


def _scores(L=4):
    rows = []
    for task in TASKS:
        for method, v in (("layerif_all", [3.0, 1.0, 2.0, 4.0]), ("layerif_pos", [1.0, 1.0, 1.0, 1.0]),
                          ("cg_ggn", [0.1, 0.2, 0.3, 0.4])):
            q = np.asarray(v[:L]) / np.sum(v[:L])
            rows += [{"task": task, "method": method, "layer": k, "score": v[k], "q": q[k]} for k in range(L)]
    return pd.DataFrame(rows)


def test_methods_is_the_dispatchers_list():
    assert ab.METHODS[:5] == ("uniform", "mola", "alphalora", "layerif_all", "layerif_pos")
    assert "mdl_cg_ggn" in ab.METHODS and "mdl_layerif_pos" in ab.METHODS
    A = SimpleNamespace(n_min=1, alpha=1.0, beta=0.9, gamma=0.5, budget_scaling=0.0276, layerif_exponent=3.0,
                        alphalora_exponent=2.5)
    with pytest.raises(ValueError, match="unknown allocation method"):
        ab.allocate("mdl_nonsense", n_layers=4, total=8, params=A, scores=_scores(), task="cola")


def test_per_seed_average_needs_every_task():
    r = _results({("a", "m", 0): 0.5, ("b", "m", 0): 0.7, ("a", "m", 1): 0.4})
    avg = stats.per_seed_average(r)
    assert list(avg.seed) == [0] and avg.accuracy.iloc[0] == pytest.approx(0.6)


def test_summary_and_paper_format():
    r = _two_pools()
    s = nb03.summary(r, TASKS)
    assert list(dict.fromkeys(s.task)) == TASKS + ["Average"]
    row = s[(s.task == "cola") & (s.method == "mdl_layerif_all")].iloc[0]
    want = r[(r.task == "cola") & (r.method == "mdl_layerif_all")].accuracy
    assert row["mean"] == pytest.approx(100 * want.mean()) and row["std"] == pytest.approx(100 * want.std())
    assert row["n_seeds"] == 3
    t = nb03.paper_format_table(r, TASKS)
    assert list(t.index) == TASKS + ["Average"] and t.index.name == "Dataset"
    assert list(t.columns) == [("All", "LayerIF"), ("All", "MDL"), ("+ve", "LayerIF"), ("+ve", "MDL")]
    assert t.loc["cola", ("All", "MDL")] == f"{row['mean']:.2f} ± {row['std']:.2f}"
    w = nb03.summary_wide(s, TASKS, ["uniform", "mdl_layerif_all"])
    assert list(w.columns) == ["uniform", "mdl_layerif_all"] and list(w.index) == TASKS + ["Average"]
    assert w.loc["cola", "mdl_layerif_all"] == f"{row['mean']:.2f} ± {row['std']:.2f}"


def test_paired_differences_and_paper_comparison():
    r = _two_pools(gap=0.05)
    d = nb03.paired_differences(r)
    assert set(d.pool) == {"All", "+ve"}
    assert d[d.pool == "All"]["diff"].to_numpy() == pytest.approx(5.0)
    comp = nb03.paper_comparison(r, TASKS, paper_order=["cola", "mrpc", "csqa", "obqa", "sciq"])
    sciq = comp[(comp.pool == "All") & (comp.task == "sciq")].iloc[0]
    assert sciq.paper_task == "ScienceQA" and sciq.mistral_MDL == 79.77 and sciq.mistral_diff == 13.36
    assert sciq.ours_diff == pytest.approx(5.0) and math.isnan(sciq.gemma_MDL)
    pos = comp[(comp.pool == "+ve") & (comp.task == "Average")].iloc[0]
    assert pos.gemma_LayerIF == 87.46 and pos.gemma_diff == 0.06 and pos.ours_diff == pytest.approx(0.0)


def test_allocation_tables(tmp_path):
    import mdlcap.study.params as P

    p = P.load("params/smoke.yaml")
    A = p.allocation
    L = 4
    total = A.total_experts if A.total_experts >= L else L
    p.allocation.total_experts = total
    scores = _scores(L)
    alloc = nb03.allocation_table(p, scores, L, TASKS)
    assert set(alloc.columns) == {"task", "method", "layer", "experts"}
    assert (alloc.groupby(["task", "method"]).experts.sum() == total).all()
    methods, missing = nb03.allocated_methods(alloc, list(A.methods) + ["mdl_kfac"])
    assert "mdl_kfac" in missing and all(m in set(alloc.method) for m in methods)
    wide = nb03.counts_wide(alloc)
    assert list(wide.columns) == list(range(L))
    got = nb03.counts_of(alloc, "cola", methods[0])
    assert got == wide.loc[("cola", methods[0])].astype(int).tolist()
    # LayerIF on uniform +ve scores and MDL on uniform q give the same (uniform) counts
    if {"layerif_pos", "mdl_layerif_pos"} <= set(methods):
        assert ("cola", "layerif_pos", "mdl_layerif_pos") in nb03.identical_pools(alloc, TASKS, methods)
    chk = nb03.budget_check(scores, TASKS, A)
    assert list(chk.scores.unique()) == list(nb03.BUDGET_CHECK_SCORES) and (chk.budget == total).all()
    q = ab.score_vector(scores, "cola", "cg_ggn", "q")
    row = chk[(chk.task == "cola") & (chk.scores == "cg_ggn")].iloc[0]
    assert row.wanted_continuous == ab.literal_unconstrained_total(q, alpha=A.alpha, beta=A.beta, gamma=A.gamma,
                                                                  budget_scaling=A.budget_scaling)


def test_rank_tables():
    A = SimpleNamespace(lora_r=4, gamma=0.5)
    scores = _scores(4)
    assert nb03.rank_allocation(scores, "cola", "uniform", 4, A).tolist() == [4, 4, 4, 4]
    r = nb03.rank_allocation(scores, "cola", "mdl_cg_ggn", 4, A)
    assert r.sum() == 16 and r.min() >= 1 and r[-1] >= r[0]
    assert nb03.rank_allocation(scores, "cola", "mdl_kfac", 4, A) is None
    res = pd.DataFrame({"task": ["cola", "cola", "sciq", "sciq"], "method": ["uniform", "mdl_cg_ggn"] * 2,
                        "accuracy": [0.5, 0.6, 0.7, 0.7]})
    rt = nb03.rank_table(res, TASKS)
    assert list(rt.index) == TASKS + ["Average"] and rt.loc["Average", "mdl_cg_ggn"] == pytest.approx(65.0)
    assert nb03.rank_gains(rt) == {"mdl_cg_ggn": pytest.approx(5.0)}
    ov = nb03.training_overview(pd.DataFrame({"method": ["a", "a"], "loss_first": [1.0, 2.0], "loss_last": [0.5, 0.5],
                                              "trainable_params": [10, 10]}))
    assert ov.loc["a", "loss_first"] == 1.5


def test_paper_numbers():
    t = paper.pruning_table()
    assert list(t.columns) == ["model", "pruner", "paper_mdl", "paper_layerif", "paper_diff"]
    assert len(t) == 6 and t.paper_diff.iloc[0] == pytest.approx(56.23 - 56.41)
    assert paper.table_averages(paper.PAPER_TABLE4, "All") == (83.07, 80.41, 2.66)
    assert paper.table_averages(paper.PAPER_TABLE5, "+ve")[2] == 0.06
    for table in (paper.PAPER_TABLE4, paper.PAPER_TABLE5):
        for row in table.values():
            assert len(row) == len(paper.PAPER_TASKS) + 1
            assert round(sum(row[:-1]) / len(paper.PAPER_TASKS), 2) == pytest.approx(row[-1], abs=0.011)
    assert paper.RHO_MAX_CLIP == {"Mistral-7B": 0.51, "Gemma-7B": 0.55}
    assert all(paper.TABLE3[m]["rho_max"] == paper.RHO_MAX_CLIP[m] for m in paper.RHO_MAX_CLIP)
    assert paper.THRESHOLDS["closed_form_rel_error"] == 1e-5


def test_a_source_with_no_positive_score_gets_no_mdl_counts():
    """All-harmful influence (q NaN in scores.csv): LayerIF still allocates, Algorithm 1 is undefined,
    and notebook 03's budget check skips it instead of stopping."""
    s = _scores()
    bad = (s.task == "cola") & (s.method == "layerif_all")
    s.loc[bad, "score"], s.loc[bad, "q"] = -1.0, np.nan
    A = SimpleNamespace(n_min=1, alpha=1.0, beta=0.9, gamma=0.5, budget_scaling=0.0276, total_experts=8,
                        alphalora_exponent=2.5)
    assert ab.allocate("mdl_layerif_all", n_layers=4, total=8, params=A, scores=s, task="cola") is None
    assert ab.allocate("layerif_all", n_layers=4, total=8, params=A, scores=s, task="cola").sum() == 8
    chk = nb03.budget_check(s, TASKS, A)
    assert not ((chk.task == "cola") & (chk.scores == "layerif_all")).any() and len(chk)
