"""Notebook 02 at smoke size: scores.csv honours the contract other notebooks read, and the
validation / Appendix C / cost tables hold values that mean what they say."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mdlcap.study.params as P
from mdlcap.scores.table import load_scores

pytestmark = pytest.mark.notebook


def test_scores_csv_contract(smoke_scores):
    p = P.load("params/smoke.yaml")
    df = pd.read_csv(smoke_scores / "scores.csv")
    assert list(df.columns) == ["task", "method", "layer", "score", "q"]
    tasks = list(p.data.finetune_tasks) + ["calibration"]
    assert set(df["task"]) == set(tasks)
    n_layers = p.model.architecture.num_hidden_layers
    for (task, method), g in df.groupby(["task", "method"]):
        assert sorted(g["layer"]) == list(range(n_layers)), (task, method)
        assert np.all(np.isfinite(g["score"])) and np.all(g["score"] >= 0)
        assert g["q"].sum() == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(g["q"], g["score"] / g["score"].sum(), rtol=1e-4, atol=1e-6)
    every = {"cg_ggn", "diag_fisher", "kfac", "ekfac", "grad_norm", "layerif_all", "layerif_pos"}
    for task in tasks:
        assert every <= set(df[df["task"] == task]["method"]), task
    # the exact-Hessian CG only where params ask for it (the costliest method)
    assert set(df[df["method"] == "cg_hessian"]["task"]) == set(p.scoring.hessian_tasks)
    # the reader other notebooks use
    assert len(load_scores(smoke_scores.parent, task="cola", method="cg_ggn")) == n_layers
    # grad norm ranks agree with the diagonal-Fisher ζ² only partly or fully, but both are real numbers per layer
    assert df[df["method"] == "grad_norm"]["score"].min() > 0


def test_validation_appendix_c_and_cost_tables(smoke_scores):
    from mdlcap.study import validation as V
    from mdlcap.study.stats import INTERVAL_COLUMNS
    p = P.load("params/smoke.yaml")
    tasks = V.validation_tasks(p)
    n_blocks = 2 * p.model.architecture.num_hidden_layers                 # attn_mlp: attention and MLP per layer
    dec = pd.read_csv(smoke_scores / "single_layer_decreases.csv")
    assert {"task", "newton_heldout_decrease", "finetune_heldout_decrease"} <= set(dec.columns)
    assert list(dec["task"].unique()) == tasks and (dec.groupby("task").size() == n_blocks).all()
    assert np.all(np.isfinite(dec[["newton_heldout_decrease", "finetune_heldout_decrease"]].to_numpy()))
    assert {"newton_converged", "newton_rel_residual", "newton_damping"} <= set(dec.columns)
    blocks = pd.read_csv(smoke_scores / "validation_blocks.csv")
    assert V.check_validation_design(blocks, tasks, min_blocks=n_blocks) == {t: n_blocks for t in tasks}
    assert {"cg_ggn", "grad_norm", "diag_fisher", "kfac", "ekfac"} <= set(blocks["method"])
    assert not {"layerif_all", "layerif_pos"} & set(blocks["method"])
    assert set(blocks[blocks["method"] == "cg_hessian"]["task"]) == set(p.scoring.hessian_tasks) & set(tasks)
    val = pd.read_csv(smoke_scores / "validation_rank_correlation.csv")
    assert {"task", "method", "target", "spearman", "ci_low", "ci_high", "n_blocks", "n_dropped", "assessable"} <= set(val)
    assert set(val["task"]) == set(tasks) | {"Average"}
    ok = val[val["assessable"]]
    assert ok["spearman"].between(-1, 1).all() and (ok["ci_low"] <= ok["spearman"] + 1e-9).all() \
        and (ok["spearman"] <= ok["ci_high"] + 1e-9).all()
    gn = val[(val["method"] == "grad_norm") & (val["target"] == "finetune_heldout_decrease")]
    assert gn["assessable"].all() and (gn["n_dropped"] == 0).all()        # no solve: every block enters
    # smoke CG stops after scoring.cg_max_iter = 2 iterations: unconverged blocks are dropped and counted
    cg = val[val["method"] == "cg_ggn"]
    assert (cg["n_dropped"] > 0).all() and (cg["n_blocks"] + cg["n_dropped"] > 0).all()
    iv = pd.read_csv(smoke_scores / "intervals.csv")
    assert list(iv.columns) == list(INTERVAL_COLUMNS)
    assert set(iv["comparison"]) == {V.comparison_name(m) for m in set(blocks["method"]) - {"cg_ggn"}}
    assert set(iv["metric"]) == {V.metric_name(t) for t in V.TARGETS} and "Average" in set(iv["task"])
    assert iv["claim"].isna().all()
    done = iv[iv["verdict"] != "not assessable"]
    assert (done["ci_low"] <= done["ci_high"]).all() and iv[iv["verdict"] == "not assessable"]["ci_low"].isna().all()
    # smoke CG stops after scoring.cg_max_iter = 2 iterations: unconverged, flagged, and kept out of the verdict
    diag = pd.read_csv(smoke_scores / "cg_diagnostics.csv")
    assert {"converged", "rel_residual", "damping_used", "damping_needed"} <= set(diag.columns)
    assert (diag["converged"] == (diag["rel_residual"] <= 1e-3)).all() and not diag["converged"].all()
    assert (diag.groupby(["task", "method"])["damping_used"].nunique() == 1).all()     # one λ per task and method
    per = pd.read_csv(smoke_scores / "cg_damping.csv")
    assert set(per["method"]) <= {"cg_ggn", "cg_hessian"} and len(per) == len(diag.groupby(["task", "method"]))
    by_lam = pd.read_csv(smoke_scores / "validation_vs_damping.csv")
    verdict = V.zeta_vs_gradnorm(iv, by_lam)
    assert verdict["verdict"] in ("reproduced", "partly", "not reproduced", "not assessable")
    for t in verdict["targets"].values():
        assert (t["diff"] is None) == (not t["assessable"])
    cg = by_lam[by_lam["method"] == "cg_ggn"]
    assert verdict["damping"]["unconverged_dampings"] == cg[~cg["converged"]]["damping"].tolist()
    if cg["converged"].any():          # the verdict over λ reads converged rows only
        assert verdict["damping"]["best_damping"] in cg[cg["converged"]]["damping"].tolist()
    else:
        assert verdict["damping"]["verdict"] == "not assessable" and verdict["damping"]["best_rho"] is None
    sweep = pd.read_csv(smoke_scores / "appendix_c_sweep.csv")
    assert "cg_converged" in sweep
    # Eq 18 holds for every CG iterate (Galerkin condition), and Eq 19's bias bound 0 <= λ‖d‖² <= ζ²
    assert np.allclose(sweep["quadratic_ggn"], sweep["eq18_value"], rtol=1e-4, atol=1e-7)
    assert (sweep["bias_term"] >= 0).all() and (sweep["bias_term"] <= sweep["zeta2"] * (1 + 1e-5)).all()
    cost = pd.read_csv(smoke_scores / "cost.csv")
    assert (cost["seconds"] > 0).all() and (cost["grad_passes"] > 0).all()
    rc = pd.read_csv(smoke_scores / "rank_correlation.csv")
    assert rc["spearman"].dropna().between(-1, 1).all()
    for fig in ("scores_by_layer", "rank_correlation", "appendix_c_lambda", "validation_intervals", "validation_vs_damping"):
        assert (smoke_scores / f"{fig}.png").stat().st_size > 1000
