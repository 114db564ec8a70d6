"""Notebook 08's tables on hand-made records (no model): intervals, ranks, drift, overhead."""
from __future__ import annotations

import numpy as np
import pandas as pd

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
