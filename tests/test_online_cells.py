"""Notebook 08's tables on hand-made records (no model): intervals, ranks, drift, overhead."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mdlcap.study import online_cells as oc
from mdlcap.study.stats import INTERVAL_COLUMNS

METHODS = ("uniform", "static_mdl", "adalora", "online_mdl")


def _rec(method: str, seed: int, acc_shift: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = (rng.random(20) < 0.5).astype(int).tolist()
    if method == "online_mdl":
        items = [1] * (10 + acc_shift) + items[10 + acc_shift:]
    online = method == "online_mdl"
    return {"task": "sciq", "method": method, "seed": seed, "accuracy": float(np.mean(items)), "items": items,
            "heldout_loss": 1.0 - 0.1 * online + 0.01 * seed, "val_steps": [0, 2], "val_losses": [3.0, 1.0],
            "steps": 4, "final_total_rank": 8, "budget_total_rank": 8, "final_max_rank": 4,
            "rank_trajectory": [{"step": 0, "ranks": [4.0, 4.0]}] + ([{"step": 2, "ranks": [3.0, 1.0]}] if online else []),
            "online_trajectory": ([{"step": 0, "phase": "start", "drift": 0.0, "regret_ranks": 0.0, "regret": 0.0,
                                    "bound": 0.0, "vi_bound": 0.0, "update_passes": 1, "passes": 1},
                                   {"step": 2, "phase": "final", "drift": 0.1, "regret_ranks": 0.0, "regret": 1e-3,
                                    "bound": 2e-3, "vi_bound": 3e-3, "update_passes": 1, "passes": 2}] if online else []),
            "step0_passes": int(method in ("static_mdl", "online_mdl")), "update_passes": int(online),
            "penalty_pass_fraction": 1e-3 if method == "adalora" else 0.0, "train_seconds": 1.0, "eval_seconds": 0.5}


RECS = [_rec(m, s) for m in METHODS for s in (0, 1, 2)]


def test_intervals_have_the_schema_and_the_sign_of_the_difference():
    res = oc.results_table(RECS)
    iv = oc.online_intervals(res, n_resamples=199)
    assert list(iv.columns) == list(INTERVAL_COLUMNS)
    assert set(iv.comparison) == {f"{o} - {b}" for b, o in oc.COMPARISONS}
    loss = iv[(iv.metric == "heldout_loss") & (iv.comparison == "online_mdl - uniform")].iloc[0]
    assert np.isclose(loss["diff"], -0.1)
    ok = iv.dropna(subset=["ci_low", "ci_high"])
    assert ((ok.ci_low <= ok["diff"] + 1e-12) & (ok["diff"] <= ok.ci_high + 1e-12)).all()


def test_intervals_skip_absent_methods():
    res = oc.results_table([r for r in RECS if r["method"] in ("uniform", "adalora")])
    iv = oc.online_intervals(res, n_resamples=99)
    assert set(iv.comparison) == {"adalora - uniform"}


def test_summary_ranks_drift_overhead_and_verdicts():
    res = oc.results_table(RECS)
    s = oc.summary_table(res)
    assert list(s.method) == list(METHODS) and (s.n_seeds == 3).all()
    r = oc.rank_table(RECS)
    assert len(r) == 2 * len(RECS) + 2 * 3 and r["rank"].max() <= 4
    d = oc.drift_table(RECS)
    assert len(d) == 6 and np.allclose(d[d.step == 2].regret_over_bound, 0.5) and d[d.step == 0].regret_over_bound.isna().all()
    o = oc.overhead_table(res).set_index("method")
    assert o.loc["online_mdl", "extra_passes"] == 2 and o.loc["uniform", "extra_passes"] == 0
    assert o.loc["adalora", "extra_passes"] == 0 and o.loc["adalora", "penalty_pass_fraction_per_step"] > 0
    lines = oc.verdict_lines(oc.online_intervals(res, n_resamples=99), d, oc.overhead_table(res))
    assert any("bound holds" in x for x in lines) and any(x.startswith("overhead adalora") for x in lines)
    assert len(oc.loss_table(RECS)) == 2 * len(RECS)


def test_cell_spec_ignores_the_cell_lists_but_not_the_design():
    from mdlcap.study import params as P
    p = P.load("params/smoke.yaml")
    a = oc.cell_spec(p, "csqa", "adalora", 0)
    p.online.seeds = [7, 8, 9]
    assert oc.cell_spec(p, "csqa", "adalora", 0) == a
    p.online.r_max = p.online.r_max + 1
    assert oc.cell_spec(p, "csqa", "adalora", 0) != a and oc.cell_spec(p, "csqa", "uniform", 0) != a


def test_cell_spec_follows_the_cells_lr_not_the_grid():
    from mdlcap.study import params as P
    p = P.load("params/smoke.yaml")
    a = oc.cell_spec(p, "csqa", "uniform", 0)
    assert oc.cell_spec(p, "csqa", "uniform", 0, lr=p.allocation.lr) == a        # the recipe's lr: the same cell
    p.online.lr_grid = {"adalora": [1e-4, 2e-4]}
    p.online.tuning_seed = 77
    assert oc.cell_spec(p, "csqa", "uniform", 0) == a                            # the grid chooses cells
    b = oc.cell_spec(p, "csqa", "adalora", 0, lr=1e-2)
    assert b != oc.cell_spec(p, "csqa", "adalora", 0) and b["alloc"]["lr"] == 1e-2
    assert p.allocation.lr != 1e-2                                               # params itself untouched


def _tuning_rec(lr: float, loss: float, task: str = "sciq", method: str = "adalora") -> dict:
    return {"task": task, "method": method, "seed": 1000, "lr": lr, "heldout_loss": loss, "accuracy": 0.5}


def test_lr_selection_takes_the_lowest_finite_heldout_loss():
    t = [_tuning_rec(3e-3, 1.6), _tuning_rec(1e-2, 1.1), _tuning_rec(3e-2, float("nan")),
         _tuning_rec(1e-3, 2.0, task="csqa"), _tuning_rec(3e-3, 2.0, task="csqa")]
    assert oc.lr_selection(t) == {("sciq", "adalora"): 1e-2, ("csqa", "adalora"): 1e-3}   # tie: the smaller lr
    tab = oc.lr_table(t)
    assert tab.chosen.sum() == 2 and tab[tab.chosen].lr.tolist() == [1e-2, 1e-3]
    with pytest.raises(ValueError, match="tuning"):
        oc.lr_selection([_tuning_rec(1e-2, float("inf"))])
    assert list(oc.lr_table([]).columns) == ["task", "method", "seed", "lr", "heldout_loss", "accuracy", "chosen"]


def test_online_cells_run_the_candidates_first_and_train_the_tuned_method_at_the_chosen_lr(monkeypatch):
    """The scheduling alone (no model): a tuned method's compared cells wait for its candidates and
    use the lr with the lowest held-out loss; the others run at allocation.lr from the start."""
    from mdlcap.interventions import finetune as ft
    from mdlcap.study import params as P
    p = P.load("params/smoke.yaml")
    p.online.lr_grid = {"adalora": [1e-3, 1e-2, 3e-2]}
    calls = []

    def fake(base, tok, params, task, method, seed, batches=None, lr=None):
        calls.append((method, seed, lr))
        return {"task": task, "method": method, "seed": seed, "lr": params.allocation.lr if lr is None else lr,
                "heldout_loss": abs(np.log10(lr) + 2) if method == "adalora" else 1.0, "accuracy": 0.5}

    monkeypatch.setattr(oc, "cached_online_cell", fake)
    monkeypatch.setattr(ft, "task_train_batches", lambda params, tok, task: [])
    recs = oc.online_cells(p, workers=1)
    o = p.online
    assert [(r["method"], r["seed"]) for r in recs] == [(m, s) for m in o.methods for s in o.seeds]
    assert {r["lr"] for r in recs if r["method"] == "adalora"} == {1e-2}
    assert {r["lr"] for r in recs if r["method"] != "adalora"} == {p.allocation.lr}
    first_ada = min(i for i, c in enumerate(calls) if c[0] == "adalora" and c[1] in o.seeds)
    assert {c[2] for c in calls[:first_ada] if c[1] == o.tuning_seed} == {1e-3, 1e-2, 3e-2}
    assert len(calls) == len(o.methods) * len(o.seeds) + 3
    assert [r["lr"] for r in oc.tuning_cells(p)] == [1e-3, 1e-2, 3e-2]


def test_meaning_lines_read_the_direction_and_the_reach_of_each_interval():
    res = oc.results_table(RECS)
    iv = oc.online_intervals(res, n_resamples=199)
    lines = oc.meaning_lines(iv, oc.drift_table(RECS), oc.lr_table([_tuning_rec(1e-2, 1.1), _tuning_rec(3e-2, 1.2)]))
    loss = [x for x in lines if x.startswith("sciq, held-out loss") and "online_mdl − uniform" in x]
    assert loss and "online_mdl beats uniform" in loss[0]                      # lower loss is better
    ada = iv[(iv.comparison == "online_mdl - adalora") & (iv.metric == "accuracy_points")].iloc[0]
    if ada.verdict == "no resolvable difference":
        assert any("cannot be told apart" in x and "MDE" in x for x in lines)
    assert any("Theorem 4's bound" in x and "holds" in x for x in lines)
    assert any("adalora trains at lr 0.01" in x and "smaller lr" in x for x in lines)
    assert any(x.startswith("Only adalora had its lr tuned") and "online_mdl" in x for x in lines)
    flipped = iv.assign(verdict=np.where(iv.metric == "heldout_loss", "positive", iv.verdict))
    assert any("uniform beats online_mdl" in x for x in oc.meaning_lines(flipped))
