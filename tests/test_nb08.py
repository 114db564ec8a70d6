"""Notebook 08 (ζ² updated online against AdaLoRA) end to end at smoke size; checks the values of
the tables it writes."""
from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from conftest import ROOT, SMOKE, run_notebook
from mdlcap.study import params as P
from mdlcap.study.stats import INTERVAL_COLUMNS

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def out(smoke_prepared):
    t0 = time.time()
    path = run_notebook("08_online_scores")
    return path, time.time() - t0


@pytest.fixture(scope="module")
def prm():
    return P.load(ROOT / SMOKE)


def test_every_method_meets_one_final_budget_on_the_same_seeds(out, prm):
    res = pd.read_csv(out[0] / "online_results.csv")
    o = prm.online
    assert len(res) == len(o.tasks) * len(o.methods) * len(o.seeds)
    assert res.groupby("method").seed.apply(sorted).apply(lambda s: s == sorted(o.seeds)).all()
    assert res.final_total_rank.eq(res.budget_total_rank).all() and res.final_total_rank.nunique() == 1
    assert (res.final_max_rank <= o.r_max).all() and res.heldout_loss.notna().all()
    assert res.steps.nunique() == 1


def test_ranks_stay_within_the_cap_and_passes_are_counted(out, prm):
    o = prm.online
    ranks = pd.read_csv(out[0] / "online_ranks.csv")
    assert (ranks["rank"] <= o.r_max + 1e-12).all() and (ranks["rank"] >= 0).all()
    L = prm.model.architecture.num_hidden_layers
    final = ranks.sort_values("step").groupby(["method", "seed", "layer"]).tail(1)
    assert (final.groupby(["method", "seed"])["rank"].sum() - o.target_rank * L).abs().max() < 1e-3   # CSV rounding
    ov = pd.read_csv(out[0] / "online_overhead.csv").set_index("method")
    assert ov.loc["uniform", "extra_passes"] == 0 and ov.loc["adalora", "extra_passes"] == 0
    assert ov.loc["online_mdl", "update_passes"] > 0 and ov.loc["static_mdl", "step0_passes"] > 0
    drift = pd.read_csv(out[0] / "online_drift.csv")
    assert (drift.passes.diff().dropna()[drift.step.iloc[1:] > 0] >= 0).all()
    assert (drift.regret <= drift.bound + 1e-9).all()


def test_intervals_verdicts_figures_and_time(out):
    path, seconds = out
    iv = pd.read_csv(path / "intervals.csv")
    assert list(iv.columns) == list(INTERVAL_COLUMNS)
    assert {"online_mdl - adalora", "online_mdl - static_mdl", "online_mdl - uniform", "adalora - uniform"} <= set(iv.comparison)
    lines = json.loads((path / "verdicts.json").read_text())
    assert any("online_mdl - adalora" in x for x in lines) and any("Theorem 4" in x for x in lines)
    for png in ("online_intervals", "online_heldout_loss", "online_rank_trajectories", "online_drift_regret",
                "online_overhead"):
        assert (path / f"{png}.png").exists(), png
    assert seconds < 180, f"notebook 08 at smoke size took {seconds:.0f} s"
