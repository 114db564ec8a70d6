"""Notebook 07 §1: pruning and LoRA-MoE experts under one description-length budget (paper
Appendix G ii; METHOD.md §7.1; the solver is `mdlcap.theory.joint`).

    checks = solver_checks(100)                        the solver against cvxpy and its KKT conditions
    cost = expert_bits(model, A, bits)                 c_k: bits one more expert costs at layer k
    plans = joint_plans(q, sizes, cost, params)        joint / separate / uniform: ratios, counts, bits
    results = joint_cells(params, plans, task, ...)    each fine-tuned on its pruned base, paired seeds
    iv = joint_intervals(results, task)                accuracy and held-out loss, paired 95 % intervals

The description length of a configuration, in bits, is b × (kept prunable weights) + Σ_k c_k n_k:
the base model's kept weights at b bits each plus the LoRA experts' parameters at the same b.
One expert at layer k holds LoRA A and B (rank r) on every target module and, where the layer
has more than one expert, one router row per module; `expert_bits` counts the row for every
expert (a single expert has no router), so a layer with one expert is charged Σ d_in × b bits
it does not hold: at most 6 % of an expert here, stated rather than modelled, since it would
make the cost non-linear in n_k.

The three configurations at one budget B (the separate one's spend):
  separate   the paper's pipeline: Algorithm 2 at sparsity s (its exact-target variant, since the
             paper's own constants leave it at ρ_max everywhere: notebook 04), then Algorithm 1
             with `allocation.total_experts`, each on its own budget;
  uniform    ρ_k = s and total_experts / L experts per layer (the same bits as separate: the
             layers have equal shapes here, so equal expert counts cost the same);
  joint      `joint_integer` on B: both halves from one program and one q.
All three take the same q (ζ² of the fine-tune task, `joint.score_method`), so only the program
differs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mdlcap.interventions import allocation as ab
from mdlcap.interventions.pruning import global_sparsity, mdl_ratios, prunable_linears, uniform_ratios
from mdlcap.models import decoder_layers
from mdlcap.study.allocation_evidence import accuracy_and_loss_intervals
from mdlcap.study.cells import Job, run_cells
from mdlcap.study.paper import THRESHOLDS
from mdlcap.study.stats import interval_frame
from mdlcap.theory.instances import random_joint_instance
from mdlcap.theory.joint import joint, joint_integer, joint_spend

JOINT_METHODS = ("joint", "separate", "uniform")
COMPARISONS = (("separate", "joint"), ("uniform", "joint"), ("uniform", "separate"))   # (base, other)
KKT_TOL = THRESHOLDS["program_kkt"]


# --------------------------------------------------------------------------- the solver's checks
def solver_checks(n_instances: int, seed: int = 0) -> pd.DataFrame:
    """`joint` on `n_instances` random instances (`random_joint_instance`) against cvxpy
    (`mdlcap.theory.reference.joint_cvxpy`): per instance K, the relative objective excess over
    cvxpy's (ours − cvxpy, ≤ 0 where we are better), corrected for cvxpy's budget violation by
    μ × overspend (an infeasible reference cannot win), the largest |n − n_cvxpy| relative to
    1 + max n_cvxpy, our KKT residual and cvxpy's status."""
    from mdlcap.theory.reference import joint_cvxpy

    if n_instances < 1:
        raise ValueError(f"n_instances: must be >= 1, got {n_instances}")
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_instances):
        q, c, N, B, kw = random_joint_instance(rng)
        ours, ref = joint(q, c, N, B, **kw), joint_cvxpy(q, c, N, B, **kw)
        over = max(0.0, joint_spend(ref.n, ref.rho, c, N, bits=kw["bits"]) - B)
        rows.append({"instance": i, "K": q.size, "objective": ours.objective, "cvxpy_objective": ref.objective,
                     "obj_rel_excess": (ours.objective - ref.objective - ours.mu * over) / (1 + abs(ref.objective)),
                     "n_rel_diff": float(np.abs(ours.n - ref.n).max() / (1 + ref.n.max())),
                     "kkt_residual": ours.kkt_residual, "cvxpy_status": ref.status})
    return pd.DataFrame(rows)


def solver_verdict(checks: pd.DataFrame) -> str:
    """One line: the worst objective excess and KKT residual against the 1e-9 rule."""
    worst, kkt = float(checks.obj_rel_excess.max()), float(checks.kkt_residual.max())
    ok = worst <= KKT_TOL and kkt <= KKT_TOL
    return (f"{len(checks)} random instances: objective never worse than cvxpy's by more than {worst:.1e} relative, "
            f"largest KKT residual {kkt:.1e}, largest expert-count difference {checks.n_rel_diff.max():.1e} "
            f"(relative) -> {'within' if ok else 'OUTSIDE'} the {KKT_TOL:g} rule")


# --------------------------------------------------------------------------- the three plans
def expert_bits(model, target_modules, r: int, bits: float) -> np.ndarray:
    """c_k: bits of one LoRA expert at each decoder layer (module docstring): b × Σ over the
    layer's target modules of r (d_in + d_out) + d_in (its router row)."""
    if r < 1:
        raise ValueError(f"r: must be >= 1, got {r}")
    out = []
    for layer in decoder_layers(model):
        mods = {n: m for n, m in prunable_linears(layer).items() if n.split(".")[-1] in set(target_modules)}
        if not mods:
            raise ValueError(f"target_modules: none of {list(target_modules)} is a prunable linear of the layers")
        out.append(bits * sum(r * (m.in_features + m.out_features) + m.in_features for m in mods.values()))
    return np.asarray(out, dtype=float)


def description_bits(ratios, counts, sizes, cost, bits: float) -> float:
    """b × kept weights + Σ c_k n_k (module docstring)."""
    return float(bits * np.dot(np.asarray(sizes, float), 1 - np.asarray(ratios, float))
                 + np.dot(np.asarray(cost, float), np.asarray(counts, float)))


def joint_plans(q, sizes, cost, params) -> dict[str, dict]:
    """{method: {"ratios", "counts", "bits", "sparsity"}} for `JOINT_METHODS` at one budget, the
    separate plan's spend (module docstring); the joint one also carries its solver result
    ("result": `JointIntegerResult`, whose `gap` certifies it)."""
    A, pp, J = params.allocation, params.pruning, params.joint
    q, N, c = np.asarray(q, float), np.asarray(sizes, float), np.asarray(cost, float)
    L = q.size
    if N.shape != (L,) or c.shape != (L,):
        raise ValueError(f"sizes/cost: need one value per layer ({L}), got {N.shape} and {c.shape}")
    plans = {
        "separate": {"ratios": mdl_ratios(q, N, pp.target, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                          rho_max=J.rho_max, equality=True),
                     "counts": ab.mdl(q, A.total_experts, gamma=A.gamma, n_min=A.n_min)},
        "uniform": {"ratios": uniform_ratios(N, pp.target), "counts": ab.uniform(L, A.total_experts)},
    }
    budget = description_bits(plans["separate"]["ratios"], plans["separate"]["counts"], N, c, pp.bits)
    res = joint_integer(q, c, N, budget, beta=J.beta, lam=J.lam, gamma=J.gamma, bits=pp.bits, rho_max=J.rho_max)
    plans["joint"] = {"ratios": np.asarray(res.rho, float), "counts": np.asarray(res.counts, int), "result": res}
    for p in plans.values():
        p["counts"] = np.asarray(p["counts"], int)
        p["bits"] = description_bits(p["ratios"], p["counts"], N, c, pp.bits)
        p["sparsity"] = global_sparsity(p["ratios"], N)
    return {m: plans[m] for m in JOINT_METHODS}


def plan_table(plans: dict[str, dict], q, sizes) -> pd.DataFrame:
    """method, layer, q, N_k, ratio, experts: the per-layer plans in long format."""
    return pd.DataFrame([{"method": m, "layer": k, "q": float(q[k]), "N_k": int(sizes[k]), "ratio": float(p["ratios"][k]),
                          "experts": int(p["counts"][k])} for m, p in plans.items() for k in range(len(q))])


def budget_table(plans: dict[str, dict]) -> pd.DataFrame:
    """Per method: total experts, global sparsity, description length (Mbit) and its relative
    difference from the budget (the separate plan's); the joint solve's certified gap."""
    B = plans["separate"]["bits"]
    return pd.DataFrame([{"method": m, "experts": int(p["counts"].sum()), "global_sparsity": p["sparsity"],
                          "description_mbit": p["bits"] / 1e6, "rel_to_budget": p["bits"] / B - 1,
                          "solver_gap": float(p["result"].gap) if "result" in p else float("nan")}
                         for m, p in plans.items()])


# --------------------------------------------------------------------------- fine-tuning and intervals
def joint_jobs(params, plans: dict[str, dict], task: str) -> dict[tuple[str, int], Job]:
    """{(method, seed): Job}: each plan's expert counts fine-tuned on the base pruned by its ratios
    with `joint.pruner`, for every seed of `joint.seeds` (shared by the methods)."""
    J = params.joint
    return {(m, int(s)): Job(task, int(s), counts=tuple(int(x) for x in p["counts"]),
                             prune=(J.pruner, tuple(float(x) for x in p["ratios"])))
            for m, p in plans.items() for s in J.seeds}


def joint_cells(params, plans: dict[str, dict], task: str, *, base=None, tok=None, workers: int = 1) -> pd.DataFrame:
    """One fine-tuning record per (method, seed) (`study.cells.run_cells`, cached), with a
    `heldout_loss` column: the validation loss at the end of training."""
    jobs = joint_jobs(params, plans, task)
    recs = run_cells(params, list(jobs.values()), workers=workers, base=base, tok=tok, desc="joint cells")
    rows = [{**recs[j.key(params)], "method": m} for (m, _), j in jobs.items()]
    out = pd.DataFrame(rows)
    out["heldout_loss"] = [v[-1] if len(v) else float("nan") for v in out["val_losses"]]
    return out


def joint_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: accuracy (%) and held-out loss, mean and std over seeds."""
    g = results.groupby("method", sort=False)
    out = pd.DataFrame({"accuracy_mean": g["accuracy"].mean() * 100, "accuracy_std": g["accuracy"].std() * 100,
                        "heldout_loss_mean": g["heldout_loss"].mean(), "heldout_loss_std": g["heldout_loss"].std(),
                        "n_seeds": g["seed"].nunique()})
    return out.reindex([m for m in JOINT_METHODS if m in out.index]).reset_index()


def joint_intervals(results: pd.DataFrame, task: str, *, n_resamples: int = 4999) -> pd.DataFrame:
    """Paired 95 % intervals of `COMPARISONS` ("other − base"): accuracy in points over seeds and
    test items, and the held-out loss over seeds (lower is better, so "negative" favours other);
    no paper claim exists for either (future work), so the verdict says whether 0 is excluded."""
    methods = set(results.method)
    missing = [c for c in COMPARISONS if not set(c) <= methods]
    if missing:
        raise ValueError(f"results: comparisons {missing} need methods missing from {sorted(methods)}")
    return interval_frame(accuracy_and_loss_intervals(results, task, COMPARISONS, n_resamples=n_resamples))


def verdict_lines(iv: pd.DataFrame) -> list[str]:
    """One line per interval: difference, 95 % CI, MDE, verdict."""
    unit = {"accuracy_points": "points", "heldout_loss": "nats"}
    return [f"{r.comparison} ({r.metric}): {r.diff:+.3f} {unit.get(r.metric, '')}, CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}], "
            f"MDE {r.mde:.3f} ({r.n_seeds} seeds x {r.n_items} items) -> {r.verdict}" for r in iv.itertuples(index=False)]
