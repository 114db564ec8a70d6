"""Appendix C on the real model (METHOD.md §1, Eq 18–19), notebook 02 §3: for the blocks with the
largest and smallest cg_ggn ζ², the predicted decrease ½ζ², the GGN and exact-Hessian quadratics at
d*(λ) and the true loss change, as λ varies; summaries read only converged solves (study.cg_solves).

    pick = appendix_c_layers(scores, task, 2)
    sweep = appendix_c_sweep(model, batches, pick, params.scoring)
    summary = appendix_c_summary(sweep)
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import resolve_blocks
from mdlcap.scores.newton import applied_step, block_quadratic
from mdlcap.scores.registry import layer_gains
from mdlcap.study.cg_solves import NOT_ASSESSABLE, block_converged


def damping_sweep(model, batches, blocks: Mapping[str, list], lambdas, *, max_iter: int = 20, tol: float = 1e-3,
                  loss_fn=None, progress: bool = True, preconditioner: str = "none"):
    """Appendix C on a real model: for each block and λ, predicted decrease ½ζ², the layer-restricted
    quadratic at d* under the GGN (= −½ζ² − (λ/2)‖d*‖² by Lemma 1 / Eq 18) and under the exact
    Hessian, the true loss change L(θ + d*) − L(θ), and whether the solve converged
    (`cg_converged`, study.cg_solves). Returns a DataFrame."""
    base = ag.mean_loss(model, batches, loss_fn)
    rows = []
    for name, params in blocks.items():
        for lam in tqdm(list(lambdas), desc=f"λ sweep {name}", disable=ag.progress_off(progress)):
            r = layer_gains(model, batches, method="cg", curvature="ggn", damping=float(lam), blocks={name: params},
                            loss_fn=loss_fn, max_iter=max_iter, tol=tol, progress=False, return_steps=True,
                            preconditioner=preconditioner)
            d = r.steps[name]
            qg = block_quadratic(model, batches, params, d, curvature="ggn", loss_fn=loss_fn)
            qh = block_quadratic(model, batches, params, d, curvature="hessian", loss_fn=loss_fn)
            with applied_step(params, d):
                true = ag.mean_loss(model, batches, loss_fn) - base
            z2 = r[name]
            rows.append({"block": name, "damping": float(lam), "zeta2": z2, "predicted_decrease": 0.5 * z2,
                         "quadratic_ggn": qg["quadratic"], "quadratic_hessian": qh["quadratic"],
                         "eq18_value": -0.5 * z2 - 0.5 * lam * qg["d_norm2"], "bias_term": lam * qg["d_norm2"],
                         "true_change": true, "step_norm": math.sqrt(qg["d_norm2"]),
                         "cg_iterations": r.diagnostics[name]["iterations"],
                         "cg_rel_residual": r.diagnostics[name]["rel_residual"],
                         "cg_converged": block_converged(r.diagnostics[name]),
                         "ritz_min_H": r.diagnostics[name]["ritz_min_H"]})
    return pd.DataFrame(rows)


def appendix_c_layers(scores: pd.DataFrame, task: str, n: int) -> list[int]:
    """The n layers the sweep looks at: those with the largest (⌈n/2⌉) and smallest (⌊n/2⌋) cg_ggn ζ²."""
    cg_val = scores[(scores["task"] == task) & (scores["method"] == "cg_ggn")].sort_values("score")
    order = cg_val["layer"].to_list()
    return sorted(set(order[::-1][: max(1, n // 2 + n % 2)] + order[: n // 2]))[:n]


def appendix_c_sweep(model, batches, layers, sp, *, progress: bool = True) -> pd.DataFrame:
    """damping_sweep over sp.lambda_grid for the given blocks of sp.blocks (indices as scores.csv's
    `layer`; CG on the GGN, sp.appendix_c_iter iterations, sp.cg_preconditioner)."""
    blocks = resolve_blocks(model, None if sp.blocks == "layer" else sp.blocks)
    names = list(blocks)
    return damping_sweep(model, batches, {names[k]: blocks[names[k]] for k in layers}, sp.lambda_grid,
                         max_iter=sp.appendix_c_iter, tol=sp.cg_tol, progress=progress,
                         preconditioner=sp.cg_preconditioner)


def appendix_c_summary(sweep: pd.DataFrame) -> dict:
    """Eq 18's identity error and Eq 19's bias bound over every row (both hold at every CG iterate:
    Galerkin condition, so they test the solver, not ζ²); over the CONVERGED rows only (cg_converged;
    a missing column counts as unconverged): how often the true change is the predicted decrease,
    the relative error of −½ζ² (median, at the smallest and largest converged λ) and, with two or
    more blocks, per λ whether ζ² and the true decrease pick the same block (a λ with an unconverged
    block says "not assessable"). No converged row: those entries are None, verdict "not assessable"."""
    eq18_err = (sweep["quadratic_ggn"] - sweep["eq18_value"]).abs() / sweep["eq18_value"].abs()
    bias_ok = ((sweep["bias_term"] >= 0) & (sweep["bias_term"] <= sweep["zeta2"] * (1 + 1e-6))).all()
    ok = sweep["cg_converged"].astype(bool) if "cg_converged" in sweep else pd.Series(False, index=sweep.index)
    conv = sweep[ok]
    out = {"eq18_max_rel_error": float(eq18_err.max()), "bias_bound_holds": bool(bias_ok),
           "n_rows": len(sweep), "n_converged": int(ok.sum()),
           "unconverged_dampings": sorted(set(sweep[~ok]["damping"].tolist())),
           "verdict": None if len(conv) else NOT_ASSESSABLE, "true_change_is_decrease_fraction": None,
           "rel_error_median": None, "rel_error_smallest_lambda": None, "rel_error_largest_lambda": None,
           "ranking": None, "ranking_agreement": None}
    if len(conv):
        sign_ok = (np.sign(conv["true_change"]) == np.sign(-conv["predicted_decrease"])).mean()
        rel_err = (conv["true_change"] + conv["predicted_decrease"]).abs() / conv["predicted_decrease"].abs()
        lo, hi = conv["damping"].min(), conv["damping"].max()
        out.update({"true_change_is_decrease_fraction": float(sign_ok), "rel_error_median": float(rel_err.median()),
                    "rel_error_smallest_lambda": float(rel_err[conv["damping"] == lo].median()),
                    "rel_error_largest_lambda": float(rel_err[conv["damping"] == hi].median())})
    z = sweep.pivot(index="damping", columns="block", values="zeta2")
    t = -sweep.pivot(index="damping", columns="block", values="true_change")
    lam_ok = ok.groupby(sweep["damping"]).all()
    if z.shape[1] >= 2:   # Appendix C: is the ranking of layers by ζ² the ranking by the true decrease, at each λ?
        out["ranking"] = []
        for lam in z.index:
            same = bool(z.loc[lam].idxmax() == t.loc[lam].idxmax())
            out["ranking"].append({"damping": float(lam), "largest_zeta2": z.loc[lam].idxmax(),
                                   "largest_true_decrease": t.loc[lam].idxmax(), "assessable": bool(lam_ok[lam]),
                                   "same": same if lam_ok[lam] else NOT_ASSESSABLE})
        judged = [r["same"] for r in out["ranking"] if r["assessable"]]
        out["ranking_agreement"] = float(np.mean(judged)) if judged else None
    return out
