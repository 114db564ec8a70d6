"""Notebook 07 (the joint program and ψ calibrated per pruner) end to end at smoke size; checks
the values of the tables it writes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SMOKE, run_notebook
from mdlcap.study import params as P
from mdlcap.study.stats import INTERVAL_COLUMNS

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def out(smoke_scores):
    return run_notebook("07_joint_and_psi")


@pytest.fixture(scope="module")
def prm():
    return P.load(ROOT / SMOKE)


def test_the_solver_meets_cvxpy_and_its_kkt_rule(out, prm):
    checks = pd.read_csv(out / "solver_checks.csv")
    assert len(checks) == prm.joint.solver_instances
    assert (checks.kkt_residual <= 1e-9).all() and (checks.obj_rel_excess <= 1e-9).all()


def test_the_three_plans_spend_one_description_length(out, prm):
    b = pd.read_csv(out / "joint_budget.csv").set_index("method")
    assert list(b.index) == ["joint", "separate", "uniform"]
    assert np.allclose(b.loc[["separate", "uniform"], "rel_to_budget"], 0.0, atol=1e-12)
    assert (b.rel_to_budget <= 1e-12).all()
    plans = pd.read_csv(out / "joint_plans.csv")
    L = prm.model.architecture.num_hidden_layers
    assert len(plans) == 3 * L and (plans.ratio <= prm.joint.rho_max + 1e-12).all()
    assert plans.groupby("method").experts.sum()[["separate", "uniform"]].eq(prm.allocation.total_experts).all()


def test_every_plan_is_fine_tuned_on_the_same_seeds(out, prm):
    res = pd.read_csv(out / "joint_results.csv")
    assert res.groupby("method").seed.apply(sorted).apply(lambda s: s == sorted(prm.joint.seeds)).all()
    assert res.task.eq(prm.joint.task).all() and res.heldout_loss.notna().all()


def test_psi_curves_fits_and_equal_sparsity(out, prm):
    ps = prm.psi
    L = prm.model.architecture.num_hidden_layers
    curves = pd.read_csv(out / "psi_curves.csv")
    assert len(curves) == len(ps.pruners) * L * len(ps.grid)
    assert np.allclose(curves.D, curves.loss - curves.dense_loss, atol=2e-5)        # the CSV rounds the losses
    fits = pd.read_csv(out / "psi_fits.csv")
    assert len(fits) == len(ps.pruners) * L and (fits.p >= 1).all() and (fits.a > 0).all()
    res = pd.read_csv(out / "psi_results.csv")
    assert set(res.pruner) == set(ps.pruners)
    assert np.allclose(res.global_sparsity, prm.pruning.target, atol=0.5 / 64)     # measured, mask rounding
    r = pd.read_csv(out / "psi_ratios.csv")
    assert (r.ratio <= ps.rho_max + 1e-12).all()


def test_intervals_and_verdicts(out):
    iv = pd.read_csv(out / "intervals.csv")
    assert list(iv.columns) == list(INTERVAL_COLUMNS)
    assert {"joint - separate", "joint - uniform", "psi_calibrated - psi_rho2"} <= set(iv.comparison)
    ok = iv.dropna(subset=["ci_low", "ci_high"])
    assert ((ok.ci_low <= ok["diff"] + 1e-12) & (ok["diff"] <= ok.ci_high + 1e-12)).all()
    lines = json.loads((out / "verdicts.json").read_text())
    assert any("joint - separate" in x for x in lines) and any("additiv" in x.lower() for x in lines)
    for png in ("joint_allocation", "joint_vs_separate", "psi_curves", "psi_ratios", "psi_intervals", "psi_additivity"):
        assert (out / f"{png}.png").exists(), png
