"""Algorithm 1 for LoRA ranks under a fixed total-rank budget with a per-layer cap, and what keeping
an old allocation costs when the scores drift (METHOD.md §2, §4, §7 Appendix G iii).

    ranks = capped_ranks(q, budget=32, r_max=8)            # integer ranks, Σ = 32, 1 <= r_k <= 8
    d = keep_regret(q0, qt, budget=32, r_max=8)            # regret of the step-0 ranks at q(t), Theorem 4

The program. Rank r_k of layer k is the capacity n_k of Eq 11 with equal costs (every decoder
layer of Mistral/Llama has the same shapes, so one rank unit costs the same at every layer, and
the budget counts rank units). Like `mdlcap.interventions.allocation.mdl` the budget is spent in
full (`spend_all`: the comparison with AdaLoRA and uniform LoRA is at one total rank), so the α c n
term is the constant α B and the program is

    max  β Σ_k q_k^γ log(1 + r_k)   s.t.  Σ_k r_k = B,  n_min <= r_k <= r_max          (Eq 11, capped)

Deviation from Algorithm 1: the cap r_max (the rank the LoRA was built with, which masking cannot
exceed; AdaLoRA's `init_r`). `capped_ranks` solves it with the repository's greedy
(`allocation.mdl` → `allocate_integer(spend_all=True)`) and clamps: every layer that the uncapped
solution puts above r_max is fixed at r_max and the rest of the budget is re-solved over the
others, until none exceeds it. This is exact: the capped problem takes the B largest unit
increments β q_k^γ log((n+2)/(n+1)) from the K lists truncated at r_max; truncation removes
increments, so the B-th largest can only fall, and a layer whose first r_max increments all beat
the uncapped threshold beats the capped one too, i.e. sits at r_max in the capped optimum
(ties aside; tested against enumeration).

Regret of keeping the step-0 ranks (Eq 20) at the scores q(t), with the program's own objective
F(r; q) = −β Σ q^γ log(1 + r) (Eq 11 with α = 0, equivalently up to the constant α B):
  - `regret_ranks`, integer: F(r(q0); q(t)) − F(r(q(t)); q(t)), ≥ 0 because r(q(t)) is the exact
    optimum at q(t), 0 when q(t) = q(0);
  - `regret`, continuous: Eq 20 on the program's relaxation, with Theorem 4's bound (Eq 21,
    `bound`) and the constraint-robust one (`vi_bound`) from `mdlcap.theory.transfer`.
Theorem 4 is a statement about the continuous program, so its bound is compared with the continuous
regret (where it must hold), and the integer regret of the ranks actually used is reported beside
it (rounding can make it exceed the bound; that is measured, not assumed). The relaxation keeps the
floor exactly by the substitution r = n_min + (1 + n_min) m: log(1 + r) = log(1 + n_min) +
log(1 + m), so F(r; q) = F_m(m; q) + const with Σ m = (B − K n_min)/(1 + n_min), m >= 0, and the
regret, the drift and the constants of Eq 21 are those of the m-program (`transfer` solves it).
Deviation: the relaxation drops the cap r_max (Theorem 4's constants in `transfer` are for the
uncapped program; a cap that binds makes it a different box-constrained program).
"""
from __future__ import annotations

import numpy as np

from mdlcap.interventions.allocation import largest_remainder, mdl
from mdlcap.theory import transfer
from mdlcap.theory.allocation import allocation_objective

__all__ = ["capped_ranks", "rank_objective", "keep_regret", "relaxed_budget", "DEFAULT_BETA", "DEFAULT_GAMMA"]

DEFAULT_BETA, DEFAULT_GAMMA = 0.9, 0.5          # the paper's Table 3 readings (METHOD.md §2)


def _check(q, budget: int, r_max: int, n_min: int) -> np.ndarray:
    qv = np.asarray(q, dtype=float).ravel()
    if qv.size == 0 or not np.all(np.isfinite(qv)) or np.any(qv < 0) or not qv.sum() > 0:
        raise ValueError(f"q: must be finite, >= 0 and not all 0, got {qv}")
    for name, v in (("budget", budget), ("r_max", r_max), ("n_min", n_min)):
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"{name}: must be an integer, got {v!r}")
    if r_max < 1 or n_min < 0 or n_min > r_max:
        raise ValueError(f"r_max, n_min: need 0 <= n_min <= r_max and r_max >= 1, got n_min={n_min}, r_max={r_max}")
    if not qv.size * n_min <= budget <= qv.size * r_max:
        raise ValueError(f"budget: must lie in [K n_min, K r_max] = [{qv.size * n_min}, {qv.size * r_max}], "
                         f"got {budget}")
    return qv


def capped_ranks(q, budget: int, r_max: int, *, n_min: int = 1, gamma: float = DEFAULT_GAMMA,
                 beta: float = DEFAULT_BETA) -> np.ndarray:
    """Integer ranks maximising β Σ q_k^γ log(1 + r_k) with Σ r_k = budget and n_min <= r_k <= r_max
    (module docstring: the repository's greedy plus clamping at the cap, exact)."""
    qv = _check(q, budget, r_max, n_min)
    K = qv.size
    capped = np.zeros(K, dtype=bool)
    ranks = np.full(K, r_max, dtype=np.int64)
    while True:
        free = ~capped
        left = int(budget - r_max * capped.sum())
        if not free.any():
            break
        if not (qv[free] ** gamma).sum() > 0:          # no free layer gains: spread the rest evenly
            sub = largest_remainder(np.ones(int(free.sum())), left, n_min).astype(np.int64)
        else:
            sub = mdl(qv[free], left, beta=beta, gamma=gamma, n_min=n_min).astype(np.int64)
        over = sub > r_max
        if not over.any():
            ranks[free] = sub
            break
        idx = np.flatnonzero(free)[over]
        capped[idx] = True
    return ranks


def rank_objective(ranks, q, *, beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA) -> float:
    """F(r; q) = −β Σ q^γ log(1 + r): Eq 11 at α = 0 (the spend α Σ r = α B is the same for every r)."""
    r = np.asarray(ranks, dtype=float)
    return allocation_objective(r, np.asarray(q, dtype=float), np.ones_like(r), alpha=0.0, beta=beta, gamma=gamma)


def relaxed_budget(n_layers: int, budget: int, n_min: int) -> float:
    """Σ m of the relaxation r = n_min + (1 + n_min) m (module docstring)."""
    return (budget - n_layers * n_min) / (1.0 + n_min)


def keep_regret(q0, qt, budget: int, r_max: int, *, n_min: int = 1, gamma: float = DEFAULT_GAMMA,
                beta: float = DEFAULT_BETA, ranks0=None) -> dict:
    """What keeping the step-0 allocation costs at q(t): drift ‖q(t) − q(0)‖₂, the integer regret of
    the step-0 ranks, the continuous regret (Eq 20) of the relaxation with Theorem 4's bound (Eq 21)
    and the constraint-robust bound, and the ranks at q(t). `ranks0`: the step-0 ranks if known."""
    a, b = _check(q0, budget, r_max, n_min), _check(qt, budget, r_max, n_min)
    if a.size != b.size:
        raise ValueError(f"qt: length {b.size} must match q0's length {a.size}")
    a, b = a / a.sum(), b / b.sum()
    r0 = capped_ranks(a, budget, r_max, n_min=n_min, gamma=gamma, beta=beta) if ranks0 is None else np.asarray(ranks0)
    rt = capped_ranks(b, budget, r_max, n_min=n_min, gamma=gamma, beta=beta)
    reg_int = rank_objective(r0, b, beta=beta, gamma=gamma) - rank_objective(rt, b, beta=beta, gamma=gamma)
    out = {"drift": float(np.linalg.norm(b - a)), "regret_ranks": float(reg_int), "ranks": rt.tolist()}
    B = relaxed_budget(a.size, budget, n_min)
    if B <= 0:                                       # every layer at the floor: nothing to allocate
        out.update(regret=0.0, bound=0.0, vi_bound=0.0)
        return out
    args = dict(cost=1.0, budget=B, alpha=0.0, beta=beta, gamma=gamma)
    rb = transfer.regret_bound("allocate", a, b, **args)
    out.update(regret=float(transfer.regret("allocate", a, b, **args)), bound=float(rb.bound),
               vi_bound=float(rb.vi_bound))
    return out
