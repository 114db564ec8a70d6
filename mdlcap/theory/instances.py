"""Random instances of the two programs (METHOD.md §2–4), steered toward chosen regimes.

    random_allocation_instance / random_pruning_instance   notebook 01's closed-form checks
    random_joint_instance                                  notebook 07's joint-program checks
    bench_instance                                         a binding instance for timing
    random_instance                                        a (q_S, q_T, args) pair for Theorem 4

They only draw inputs; the checks and tables that use them live with their notebooks
(`mdlcap.study.derivations`, `mdlcap.study.transfer_regret`).
"""
from __future__ import annotations

import numpy as np

from mdlcap.theory.allocation import allocate
from mdlcap.theory.objectives import ALLOCATE, program
from mdlcap.theory.transfer import REGIMES, drift


def random_allocation_instance(rng, K: int, regime: str) -> tuple[tuple, dict]:
    """Allocation instance with the budget "active" (below the unconstrained spend) or
    "inactive" (above it); costs, α, β, γ random, some layers left at n = 0."""
    q = rng.dirichlet(np.full(K, rng.choice([0.3, 1.0, 3.0])))
    cost = rng.uniform(0.2, 2.0, K) / K
    kw = dict(alpha=float(rng.choice([0.5, 0.9, 1.0, 2.0])), beta=float(rng.choice([0.9, 1.0])),
              gamma=float(rng.choice([0.5, 0.9, 1.0, 2.0])))
    free = allocate(q, cost, 1e300, **kw)                                 # unconstrained optimum
    spend = float(cost @ free.n)
    if spend <= 0:                                                           # nothing worth buying:
        kw["alpha"] = 0.1 * float(np.max(kw["beta"] * q ** kw["gamma"] / cost))  # lower α
        spend = float(cost @ allocate(q, cost, 1e300, **kw).n)
    budget = spend * (rng.uniform(0.05, 0.8) if regime == "active" else rng.uniform(1.2, 3.0))
    return (q, cost, budget), kw


def random_pruning_instance(rng, K: int, regime: str) -> tuple[tuple, dict]:
    """Pruning instance: "inactive" (target already met at ν = 0), "active" (inequality binds)
    or "equality"; λ scaled so that some layers are interior and some clipped."""
    q = rng.dirichlet(np.full(K, rng.choice([0.3, 1.0, 3.0]))) + 1e-3 / K
    q /= q.sum()
    N = rng.uniform(0.5, 2.0, K)
    gamma = float(rng.choice([0.5, 1.0, 2.0]))
    rho_max = float(rng.choice([0.51, 0.55, 0.8, 1.0]))
    bits = float(rng.choice([1.0, 16.0]))
    a0 = N / (2 * q ** gamma)
    lam = float(bits * np.median(a0) / (rng.uniform(0.1, 0.6) * rho_max))  # median ρ(0) ≈ 0.1–0.6 ρ_max
    kw = dict(bits=bits, lam=lam, gamma=gamma, rho_max=rho_max, equality=regime == "equality")
    at0 = float(N @ np.clip(bits * a0 / lam, 0, rho_max) / N.sum())        # sparsity at ν = 0
    if regime == "inactive":
        target = at0 * rng.uniform(0.3, 0.95)
    else:
        target = at0 + (0.98 * rho_max - at0) * rng.uniform(0.1, 0.9)
    return (q, N, target), kw


def random_joint_instance(rng, K: int | None = None) -> tuple:
    """(q, cost, sizes, budget, kwargs) of the joint program (METHOD.md §7.1) over its regimes:
    some n_k = 0, some ρ at 0 or ρ_max, b = 0, q_k = 0, equal and unequal costs, budgets from
    just above the floor b ΣN (1 − ρ_max) to far above it; K random unless given."""
    K = int(rng.choice([2, 3, 5, 17, 64, 200], p=[.2, .15, .2, .2, .17, .08])) if K is None else K
    q = rng.dirichlet(np.full(K, float(rng.choice([0.3, 1.0, 5.0]))))
    if K > 3 and rng.random() < 0.15:
        q[rng.integers(K)] = 0.0                           # no gain: n_k = 0, ρ_k = ρ_max
    c = np.full(K, rng.uniform(0.05, 1.0)) if rng.random() < 0.3 else rng.uniform(0.01, 1.0, K)
    N = rng.uniform(1.0, 4.0, K)
    kw = dict(beta=float(rng.choice([0.5, 1.0, 3.0])), lam=float(rng.choice([0.01, 2.0, 100.0])),
              gamma=float(rng.choice([0.5, 1.0, 2.0])), bits=float(rng.choice([0.0, 0.1, 1.0, 16.0])),
              rho_max=float(rng.choice([0.3, 0.6, 1.0])))
    floor = kw["bits"] * N.sum() * (1 - kw["rho_max"])
    B = floor + float(rng.choice([0.01, 0.3, 3.0, 30.0])) * c.sum()
    return q, c, N, B, kw


def bench_instance(name: str, K: int, seed: int = 0) -> tuple[tuple, dict]:
    """A random instance (args, kwargs) where the coupling constraint binds, so the dual search
    actually runs. Allocation: the paper's α=1, β=0.9, γ=0.5, costs ~1/K, budget 0.1.
    Pruning: the paper's b=16, λ=2, γ=1, ρ_max=0.51, s=0.5 with the exact-target variant
    (the inequality one is slack at these values, METHOD.md §3) on sizes in units of the mean
    layer (cvxpy cannot resolve the quadratic term next to raw sizes ~1e8; ours is unaffected).
    """
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K))
    if name == "allocate":
        return (q, rng.uniform(0.5, 1.5, K) / K, 0.1), dict(alpha=1.0, beta=0.9, gamma=0.5)
    if name == "prune":
        q = (q + 1e-3 / K) / (1 + 1e-3)                      # keep every q_k > 0 (Theorem 3)
        return (q, rng.uniform(1.0, 3.0, K), 0.5), dict(bits=16.0, lam=2.0, gamma=1.0,
                                                       rho_max=0.51, equality=True)
    raise ValueError(f"program: must be 'allocate' or 'prune' (got {name!r})")


def random_instance(program_name: str, K: int, delta: float, rng: np.random.Generator,
                    mode: str | None = None) -> dict:
    """A random (q_S, q_T, program_args) aimed at one regime (`mode`; random if None).

    The mode only steers the parameters toward a regime; `evaluate` then classifies what
    the instance really is. Allocation: costs U(0.5, 2) or equal, γ ∈ [0.1, 1.5], α = 1,
    β scaled so the water level gives a few units per layer; pruning: sizes in normalised
    units (N_k / mean N, see METHOD.md §3's warning about raw counts), b = 16, γ ∈ [0.25, 2],
    ρ_max ∈ [0.3, 1], λ scaled so ρ(0) sits below or above ρ_max as the mode needs.
    """
    prog = program(program_name)
    if mode is None:
        mode = REGIMES[rng.integers(len(REGIMES))]
    if mode not in REGIMES:
        raise ValueError(f"mode: must be one of {list(REGIMES)} or None, got {mode!r}")
    if not (isinstance(K, (int, np.integer)) and K >= 2):
        raise ValueError(f"K: must be an integer >= 2, got {K!r}")
    spread = np.exp(rng.uniform(np.log(0.3), np.log(1.0))) if mode == "clipped" else rng.uniform(3.0, 20.0)
    q_t = rng.dirichlet(np.full(K, spread))
    q_t = np.maximum(q_t, 1e-4)
    q_t /= q_t.sum()
    z = rng.standard_normal(K)
    q_s = drift(q_t, delta, z)
    sizes = np.ones(K) if rng.random() < 0.5 else rng.uniform(0.5, 2.0, K)
    if prog is ALLOCATE:
        gamma = float(rng.uniform(0.1, 1.5))
        qg = q_t ** gamma
        scale = rng.uniform(1.5, 5.0) if mode == "clipped" else rng.uniform(20.0, 200.0)
        args = {"cost": sizes, "alpha": 1.0, "beta": float(scale * sizes.mean() / qg.mean()),
                "gamma": gamma, "budget": 1.0}
    else:
        gamma = float(rng.uniform(0.25, 2.0))
        qg = q_t ** gamma
        rho_max = float(rng.uniform(0.3, 1.0))
        scale = rng.uniform(0.3, 1.5) if mode == "clipped" else rng.uniform(3.0, 10.0)
        # ρ_k(0) = b N_k / (2 λ q_k^γ) ≈ ρ_max / scale for a typical layer
        args = {"sizes": sizes, "bits": 16.0, "gamma": gamma, "rho_max": rho_max,
                "lam": float(16.0 * sizes.mean() * scale / (2 * qg.mean() * rho_max)),
                "target": 0.5 * rho_max, "equality": False}
    # set the budget / target relative to what the unconstrained solutions use
    u_s, u_t = (prog.unconstrained_use(q, args) for q in (q_s, q_t))
    lo, hi = min(u_s, u_t), max(u_s, u_t)
    total = float(np.sum(sizes))
    if prog is ALLOCATE:
        if mode == "interior":
            b = hi * rng.uniform(1.05, 2.0)
        elif mode == "both_active":
            b = lo * rng.uniform(0.5, 0.95)
        elif mode == "one_active":
            b = lo + (hi - lo) * rng.uniform(0.1, 0.9) if hi > lo else lo
        else:
            b = max(hi, 1e-6) * rng.uniform(0.2, 1.6)
        args["budget"] = float(max(b, 1e-6))
    else:
        rm = args["rho_max"]
        if mode == "interior":                        # target below what both prune anyway
            t = lo / total * rng.uniform(0.2, 0.95)
        elif mode == "both_active":
            if rng.random() < 0.5:
                args["equality"] = True
                t = rm * rng.uniform(0.2, 0.8)
            else:
                t = hi / total * rng.uniform(1.05, 1.5)
        elif mode == "one_active":
            t = (lo + (hi - lo) * rng.uniform(0.1, 0.9)) / total if hi > lo else lo / total
        else:
            t = rm * rng.uniform(0.05, 0.95)
        args["target"] = float(np.clip(t, 1e-6, rm * 0.999))
    return {"program": prog.name, "mode": mode, "delta": float(delta), "q_source": q_s,
            "q_target": q_t, "direction": z, "args": args}

