"""The two MDL programs of the paper, solved in closed form (paper §2.3, §3.1–3.2; METHOD.md §1–3).

    q = scores_from_gains(zeta2)                         # Eq 10: q_k = ζ_k² / Σ_j ζ_j²
    a = allocate(q, cost, budget, alpha=1, beta=0.9)     # Eq 11–13: curvature-weighted water-filling
    z = allocate_integer(q, cost, budget, n_min=1)       # integer expert counts (greedy, exact for equal costs)
    p = prune(q, sizes, 0.5, rho_max=0.51)               # Eq 14–15: curvature-protected pruning ratios
    j = joint(q, cost, sizes, budget)                    # both under one budget (METHOD.md §7.1, App. G ii)

One import for both programs; their code lives in `mdlcap.theory.allocation` (Theorem 2,
Algorithm 1) and `mdlcap.theory.pruning` (Theorem 3, Algorithm 2), the exact breakpoint kernels
in `mdlcap.theory.breakpoints`, the bisection in `mdlcap.theory.bisection`, the argument checks
in `mdlcap.theory.validate`. Every result carries the dual value, whether the coupling
constraint is active, the objective and a scale-free KKT residual (computed on first access).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mdlcap.theory.allocation import (AllocationResult, IntegerAllocationResult, allocate, allocate_integer,
                                      allocation_kkt, allocation_objective, water_filling)
from mdlcap.theory.joint import JointIntegerResult, JointResult, joint, joint_integer
from mdlcap.theory.pruning import PruningResult, critical_lambda, prune, pruning_kkt, pruning_objective, pruning_ratios
from mdlcap.theory.validate import scores

__all__ = [
    "AllocationResult", "IntegerAllocationResult", "PruningResult",
    "scores_from_gains", "allocate", "allocate_integer", "prune",
    "allocation_objective", "pruning_objective", "allocation_kkt", "pruning_kkt",
    "water_filling", "pruning_ratios", "critical_lambda",
    "JointResult", "JointIntegerResult", "joint", "joint_integer",
]


def scores_from_gains(zeta2):
    """Eq 10: normalised scores q_k = max(ζ_k², 0) / Σ_j max(ζ_j², 0) (on the simplex).

    `zeta2` is an array of layer gains, or a mapping name → gain (as `curvature.layer_gains`
    returns); a mapping gives back a dict with the same keys and order.

    The one place where a negative score becomes 0 (METHOD.md §1): a layer with no positive
    gain gets no capacity. ζ² of Eq 9 is ≥ 0 whenever the damped curvature is positive definite,
    but other scores are signed — LayerIF's −Σ_i I_k(i) is negative for a layer whose training
    samples raise the validation loss — and the programs take q ≥ 0 (q_k = 0 as the limit of
    their closed forms: n_k = 0 in Eq 13, ρ_k = ρ_max in Eq 15). No shift is applied: a shift by
    the most negative value would give the least useful layer q = 0 and change every other q by
    an arbitrary offset. Gains must be finite and at least one must be > 0.
    """
    if isinstance(zeta2, Mapping):
        keys = list(zeta2)
        q = scores_from_gains(np.array([float(zeta2[k]) for k in keys]) if keys else np.empty(0))
        return dict(zip(keys, q.tolist()))
    z = np.asarray(zeta2, dtype=float)
    if z.ndim == 1 and z.size and np.isfinite(z).all():
        z = np.maximum(z, 0.0)
    z = scores(z, "zeta2")
    return z / z.sum()
