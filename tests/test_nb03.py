"""Notebook 03 at smoke size: allocations spend the budget, every cell is fine-tuned and scored,
and the written tables hold consistent values."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_notebook


@pytest.mark.notebook
@pytest.mark.timeout(600)
def test_nb03_allocation_smoke(smoke_scores):
    import mdlcap.study.params as P
    from mdlcap.interventions import allocation as ab
    from mdlcap.scores.table import load_scores
    from mdlcap.study.allocation import POOLS

    out = run_notebook("03_allocation")
    p = P.load("params/smoke.yaml")
    A = p.allocation
    tasks = list(A.tasks or p.data.finetune_tasks)
    alloc = pd.read_csv(out / "allocations.csv")
    L = alloc["layer"].nunique()
    # every method spends exactly the budget, at least one expert per layer
    totals = alloc.groupby(["task", "method"])["experts"].sum()
    assert (totals == A.total_experts).all() and alloc["experts"].min() >= 1
    scores = load_scores(out.parent)
    for task in tasks:
        # the notebook's LayerIF and MDL counts are the package's on notebook 02's scores
        for m in ("layerif_pos", "mdl_layerif_pos", "mdl_cg_ggn"):
            got = alloc[(alloc.task == task) & (alloc.method == m)].sort_values("layer")["experts"].to_numpy()
            want = ab.allocate(m, n_layers=L, total=A.total_experts, params=A, scores=scores, task=task)
            if want is None:
                assert got.size == 0
            else:
                np.testing.assert_array_equal(got, want)
        got = alloc[(alloc.task == task) & (alloc.method == "mola")].sort_values("layer")["experts"].to_numpy()
        assert np.all(np.diff(got) >= 0) and got[-1] > got[0]

    res = pd.read_csv(out / "results.csv")
    methods = sorted(alloc["method"].unique())
    assert len(res) == len(tasks) * len(methods) * len(A.seeds)
    assert res["accuracy"].between(0, 1).all()
    assert (res["steps"] >= 1).all() and np.isfinite(res["loss_last"]).all()
    # the paper-format table: tasks + Average rows, LayerIF/MDL per pool, values match results.csv
    table = pd.read_csv(out / "table_paper_format.csv", header=[0, 1], index_col=0)
    assert list(table.index) == tasks + ["Average"]
    for pool, (lif, mdl_m) in POOLS.items():
        if lif not in methods or mdl_m not in methods:
            continue
        for label, m in (("LayerIF", lif), ("MDL", mdl_m)):
            for task in tasks:
                mean = float(table.loc[task, (pool, label)].split("±")[0])
                want = res[(res.task == task) & (res.method == m)]["accuracy"].mean() * 100
                assert mean == pytest.approx(want, abs=0.006)
            avg = float(table.loc["Average", (pool, label)].split("±")[0])
            want = res[res.method == m].groupby("seed")["accuracy"].mean().mean() * 100
            assert avg == pytest.approx(want, abs=0.006)

    comp = pd.read_csv(out / "paper_comparison.csv")
    pos = comp[(comp.pool == "+ve") & (comp.task == "Average")].iloc[0]
    assert pos["mistral_LayerIF"] == 83.39 and pos["mistral_MDL"] == 84.06 and pos["gemma_MDL"] == 87.52
    assert pos["ours_diff"] == pytest.approx(pos["ours_MDL"] - pos["ours_LayerIF"], abs=1e-6)
    # the paired intervals: every comparison whose methods ran, per task and averaged, in the one schema
    from mdlcap.study.paper import ALLOCATION_COMPARISONS
    from mdlcap.study.stats import INTERVAL_COLUMNS
    iv = pd.read_csv(out / "intervals.csv")
    assert list(iv.columns) == list(INTERVAL_COLUMNS)
    ran = [c for c, (a, b) in ALLOCATION_COMPARISONS.items() if {a, b} <= set(methods)]
    assert sorted(iv.comparison.unique()) == sorted(ran)
    for c in ran:
        sub = iv[iv.comparison == c]
        assert list(sub.task) == tasks + ["Average"]
        assert (sub.n_seeds == len(A.seeds)).all() and (sub.ci_low <= sub.ci_high + 1e-12).all()
        # the Average row's difference is the mean of the per-task ones (equal item counts)
        assert sub[sub.task == "Average"]["diff"].iloc[0] == pytest.approx(sub[sub.task != "Average"]["diff"].mean())
    lif = iv[(iv.comparison == "MDL - LayerIF (All)") & (iv.task == "Average")]
    if len(lif):
        assert lif.claim.iloc[0] == 2.66
    # per-item correctness behind each accuracy, and the learning table over every (task, method)
    items = json.loads((out / "cell_items.json").read_text())
    for r in res.itertuples():
        s = items[f"{r.task}/{r.method}/{r.seed}"]
        assert set(s) <= {"0", "1"} and np.mean([int(c) for c in s]) == pytest.approx(r.accuracy)
    learning = pd.read_csv(out / "learning.csv")
    assert len(learning) == len(tasks) * len(methods) and (learning.n_seeds == len(A.seeds)).all()
    assert isinstance(json.loads((out / "design_problems.json").read_text()), list)
    # resumable: one cache record per distinct (task, counts, seed) trained, whichever method asked
    distinct = {(t, tuple(g.sort_values("layer")["experts"])) for (t, m), g in alloc.groupby(["task", "method"])}
    from mdlcap import cache
    from mdlcap.interventions.finetune import cell_spec
    assert all(cache.path("finetune", cell_spec(p, t, s, list(c)), prefix=f"{t}_").exists()
               for t, c in distinct for s in A.seeds)
    if A.rank_experiment:
        ranks = pd.read_csv(out / "rank_allocations.csv")
        assert (ranks.groupby(["task", "method"])["rank"].sum() == A.lora_r * L).all()
        rr = pd.read_csv(out / "rank_results.csv")
        assert rr["accuracy"].between(0, 1).all()
    assert all((out / f"{f}.png").exists() for f in ("allocations", "accuracy_bars", "loss_curves", "intervals"))
    assert (out / "manifest.json").exists()
