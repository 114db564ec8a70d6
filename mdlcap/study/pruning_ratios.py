"""Notebook 04, §2: the per-layer ratios of every ratio method (uniform, OWL, LayerIF/AlphaPruning,
MDL as the paper states it and its equality variants) at one global target, their summary, and
METHOD.md §3's check that Algorithm 2 under the paper's hyper-parameters is uniform at ρ_max.
No model is evaluated here (that is `mdlcap.study.pruning`)."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from mdlcap.interventions.pruning import (
    RATIO_METHODS, global_sparsity, layerif_ratios, mdl_ratios, owl_ratios, uniform_ratios)
from mdlcap.study.paper import RHO_MAX_CLIP, THRESHOLDS
from mdlcap.theory import pruning as program


def select_scores(all_scores: pd.DataFrame, pp):
    """The scores.csv rows the pruning study uses: (scores, score methods present, score methods
    missing, score source tasks)."""
    want_m = [m for m in pp.score_methods if m in set(all_scores["method"])]
    missing = sorted(set(pp.score_methods) - set(want_m))
    scores = all_scores[all_scores["method"].isin(want_m)]
    if pp.score_tasks:
        scores = scores[scores["task"].isin(pp.score_tasks)]
    return scores, want_m, missing, list(dict.fromkeys(scores["task"]))


def first_source(score_tasks: Sequence[str]) -> str | None:
    """The score source shown in the ratio figure and used by the sweep: calibration if present."""
    return "calibration" if "calibration" in score_tasks else (score_tasks[0] if score_tasks else None)


def sweep_scores(scores: pd.DataFrame, score_methods: Sequence[str], source: str | None):
    """The one score vector the sweep uses: the first score method at `source` (None without scores)."""
    sm0 = score_methods[0] if score_methods else None
    return scores[(scores.method == sm0) & (scores.task == source)] if sm0 else None


def ratio_plan(scores, sizes, outliers, pp, target: float | None = None, rho_max: float | None = None,
               methods: Sequence[str] = RATIO_METHODS):
    """Per-layer ratios of every ratio method at one global target, as a long DataFrame
    (ratio_method, score_method, score_task, layer, ratio).

    `scores`: rows (task, method, layer, q) as from `mdlcap.scores.table.load_scores`; `pp`: the
    params' pruning section (bits, lam, gamma, rho_max, layerif_epsilon, owl_lambda). Score-free
    methods (uniform, OWL) get score_method = score_task = "-". MDL runs as the paper states it
    (raw N_k, inequality target, clip at ρ_max) and as the equality variant ("mdl_eq")."""
    s = pp.target if target is None else float(target)
    rmax = pp.rho_max if rho_max is None else float(rho_max)
    N = np.asarray(sizes, dtype=float)
    rows = []

    def add(method, smethod, stask, r):
        rows.extend({"ratio_method": method, "score_method": smethod, "score_task": stask, "layer": k,
                     "ratio": float(v)} for k, v in enumerate(r))

    if "uniform" in methods:
        add("uniform", "-", "-", uniform_ratios(N, s))
    if "owl" in methods and outliers is not None:
        add("owl", "-", "-", owl_ratios(outliers, N, s, lam=pp.owl_lambda))
    if scores is not None and len(scores):
        for (smethod, stask), g in scores.groupby(["method", "task"], sort=False):
            q = g.sort_values("layer")["q"].to_numpy(float)
            if q.size != N.size:
                raise ValueError(f"scores: {smethod}/{stask} has {q.size} layers, the model {N.size}")
            if not np.all(q > 0):        # q_k^{-γ} needs q > 0: say so and leave this source out
                warnings.warn(f"scores: {smethod}/{stask} has q <= 0 at layers {np.flatnonzero(q <= 0).tolist()}; "
                              "left out of the ratio plan")
                continue
            if "layerif" in methods:
                add("layerif", smethod, stask, layerif_ratios(q, N, s, epsilon=pp.layerif_epsilon))
            if "mdl" in methods:
                add("mdl", smethod, stask, mdl_ratios(q, N, s, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                                      rho_max=rmax))
            if "mdl_eq" in methods:
                add("mdl_eq", smethod, stask, mdl_ratios(q, N, s, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                                         rho_max=rmax, equality=True))
            if "mdl_eq_free" in methods:     # equality variant without the paper's clip (rho_max = 1)
                add("mdl_eq_free", smethod, stask, mdl_ratios(q, N, s, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                                              rho_max=1.0, equality=True))
    return pd.DataFrame(rows)


def plan_vectors(plan: pd.DataFrame) -> dict[tuple, np.ndarray]:
    """{(ratio_method, score_method, score_task): ratio vector by layer} of a ratio plan."""
    return {k: g.sort_values("layer")["ratio"].to_numpy() for k, g in
            plan.groupby(["ratio_method", "score_method", "score_task"], sort=False)}


def ratios_summary(vectors: dict[tuple, np.ndarray], sizes) -> pd.DataFrame:
    """Global sparsity, min, max and spread of each ratio vector."""
    return pd.DataFrame([{"ratio_method": k[0], "score_method": k[1], "score_task": k[2],
                          "global_sparsity": global_sparsity(v, sizes), "min": v.min(), "max": v.max(),
                          "spread": v.max() - v.min()} for k, v in vectors.items()])


def mdl_degeneracy(scores: pd.DataFrame, sizes, pp, sizes_7b: dict[str, np.ndarray]) -> pd.DataFrame:
    """METHOD.md §3's degeneracy check: Algorithm 2 under the params' (b, λ, γ) for our layer sizes
    and for the 7B models' (`sizes_7b`, at the paper's ρ_max clip), with uniform scores and, for
    ours, every score vector (for the 7B shapes: our most uneven one, stretched to their depth).
    One row per (model, q): ν, whether the target is active, the ratios' range and global mean."""
    L = len(sizes)
    shapes = {"ours": (int(sizes[0]), L, pp.rho_max)}
    shapes.update({name: (int(s7[0]), len(s7), RHO_MAX_CLIP[name]) for name, s7 in sizes_7b.items()})
    q_ours = {f"{k[0]}/{k[1]}": g.sort_values("layer")["q"].to_numpy() for k, g in scores.groupby(["method", "task"])}
    rows = []
    for name, (nk, nl, rmax) in shapes.items():
        qs = {"uniform q": np.full(nl, 1 / nl)}
        if name == "ours":
            qs.update(q_ours)
        else:   # the most uneven of our score vectors, stretched to this depth
            if q_ours:
                qv = max(q_ours.values(), key=lambda v: v.max() / v.min())
                qi = np.interp(np.linspace(0, 1, nl), np.linspace(0, 1, len(qv)), qv)
                qs["our most uneven q, stretched"] = qi / qi.sum()
        for qname, q in qs.items():
            res = program.prune(q, np.full(nl, float(nk)), pp.target, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                 rho_max=rmax)
            rho0 = pp.bits * nk / (2 * pp.lam * q.max() ** pp.gamma)   # smallest unconstrained ratio
            rows.append({"model": name, "q": qname, "N_k": nk, "rho_max": rmax, "min_rho_k(nu=0)": rho0,
                         "nu": res.nu, "target_active": bool(res.active), "rho_min": res.rho.min(),
                         "rho_max_got": res.rho.max(), "spread": res.rho.max() - res.rho.min(),
                         "global": float(res.rho.mean())})
    return pd.DataFrame(rows)


def degeneracy_verdict(degenerate: pd.DataFrame, pp) -> str:
    """Whether the paper's MDL ratios are uniform in every case of `mdl_degeneracy`."""
    all_uniform = bool((degenerate["spread"] < THRESHOLDS["uniform_ratio_spread"]).all())
    text = ("VERDICT: under the paper's hyper-parameters (b={:g}, lambda={:g}, gamma={:g}, raw N_k) the MDL ratios "
            "are {} in every case computed above: the smallest unconstrained ratio rho_k(nu=0) is {:.3g}, and the "
            "sparsity constraint is {}.").format(
        pp.bits, pp.lam, pp.gamma, "UNIFORM" if all_uniform else "NOT uniform",
        degenerate["min_rho_k(nu=0)"].min(),
        "inactive (nu = 0)" if (degenerate["nu"] == 0).all() else "active in some cases")
    if all_uniform and (degenerate["rho_min"] >= degenerate["rho_max"] - 1e-12).all():
        text += ("\nEvery layer is clipped at rho_max, i.e. uniform pruning at rho_max (global sparsity {} instead "
                 "of {}).").format(sorted(set(degenerate["rho_max"].round(3))), pp.target)
    return text
