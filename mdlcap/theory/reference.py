"""The allocation and pruning programs written directly in cvxpy: the independent check.

`mdlcap.theory.programs` solves Eq 11 and Eq 14 through their closed forms; here the same programs are
stated as written in the paper and handed to a general conic solver, so the notebook and tests
compare two unrelated routes to the same optimum.

Solver choice: CLARABEL (interior point, installed with cvxpy) for both. The allocation
objective has log(1+n), which cvxpy turns into exponential cones; CLARABEL handles exp cones
natively and to high accuracy (SCS also does but only to ~1e-4 accuracy by default; OSQP and
HIGHS cannot take cones). The pruning program is a QP; CLARABEL solves it to ~1e-9 where OSQP
(first order) stops near 1e-4, too loose to check a closed form against.

Scaling: the paper's pruning program has raw parameter counts N_k ~ 1e8 and an objective
~1e11. Dividing the objective by a positive constant and the constraint by Σ N changes neither
the minimiser nor the multipliers' meaning after rescaling back, and keeps the interior-point
solver well conditioned; we do exactly that and report the duals in the original units.

`joint_cvxpy` and `prune_psi_cvxpy` do the same for the two future-work programs of METHOD.md §7.

`allocate_integer_milp` states the integer allocation as a 0-1 knapsack over unit increments
(exact because increments decrease along each layer) and solves it with HIGHS.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mdlcap.theory.allocation import allocation_objective
from mdlcap.theory.joint import joint_objective
from mdlcap.theory.pruning import pruning_objective
from mdlcap.theory.pruning_psi import psi_objective

SOLVER = "CLARABEL"
# Tighter than CLARABEL's defaults (1e-8 gap / feasibility): a reference must be more accurate
# than the differences we want to see (the closed forms are exact to ~1e-12).
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "max_iter": 400}


def _solve(prob, solver, solver_opts) -> tuple[str, str]:
    """Solve; if CLARABEL at tight tolerances fails or is inaccurate, retry at its defaults,
    then with SCS at high accuracy. Returns the solver route taken (kept in the result).

    Interior-point methods can stall near the n_k = 0 boundary when only a few of many layers
    are active; the retries keep the reference usable there, and the route says how it was
    obtained so a reader can weigh the comparison.
    """
    import cvxpy as cp

    tries = [(solver, {**(TIGHT if solver == "CLARABEL" else {}), **solver_opts})]
    if solver == "CLARABEL" and not solver_opts:
        tries += [("CLARABEL", {}),
                  ("SCS", {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 20_000, "time_limit_secs": 3})]
    route, kept = "failed (all solvers)", None
    for i, (name, opts) in enumerate(tries):
        label = name + ("" if i == 0 else f" (retry {i})")
        try:
            with warnings.catch_warnings():                  # "may be inaccurate": we retry instead
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=name, **opts)
        except cp.error.SolverError:
            continue
        if prob.status == cp.OPTIMAL:
            return label, prob.status
        if kept is None and prob.status == cp.OPTIMAL_INACCURATE:   # remember the first fallback
            kept = (label, {v: v.value for v in prob.variables()},
                    [c.dual_value for c in prob.constraints], prob.status)
        route = label
    if kept is not None:                                     # restore the first inaccurate answer
        label, values, duals, _ = kept
        for v, val in values.items():
            v.value = val
        for c, dv in zip(prob.constraints, duals):
            c.save_dual_value(dv)
        return label, cp.OPTIMAL_INACCURATE
    return route, prob.status


@dataclass
class ReferenceResult:
    x: np.ndarray                # n (allocation) or ρ (pruning)
    dual: float                  # μ or ν, in the units of the paper's program
    objective: float             # the paper's objective (Eq 11 or Eq 14), recomputed at x
    status: str                  # cvxpy status ("optimal", "optimal_inaccurate", ...)
    solve_time: float            # seconds inside the solver (cvxpy's solver_stats)
    route: str = SOLVER          # solver that produced it (after retries, see _solve)


def allocate_cvxpy(q, cost, budget, *, alpha=1.0, beta=1.0, gamma=0.5, solver=SOLVER,
                   **solver_opts) -> ReferenceResult:
    """Eq 11 in cvxpy: min Σ α c n − β Σ q^γ log(1+n), Σ c n ≤ B, n ≥ 0."""
    import cvxpy as cp

    q = np.asarray(q, float)
    c = np.broadcast_to(np.asarray(cost, float), q.shape).copy()
    w = beta * q ** gamma
    n = cp.Variable(q.size, nonneg=True)
    budget_con = c @ n <= budget
    scale = max(float(w.sum()), 1e-300)          # objective / Σw: same minimiser, O(1) numbers
    prob = cp.Problem(cp.Minimize((alpha * (c @ n) - w @ cp.log1p(n)) / scale), [budget_con])
    route, status = _solve(prob, solver, solver_opts)
    if n.value is None:
        raise RuntimeError(f"cvxpy found no solution ({route}, status {status})")
    x = np.maximum(np.asarray(n.value, float), 0.0)
    mu = float(budget_con.dual_value) * scale
    return ReferenceResult(x=x, dual=mu,
                           objective=allocation_objective(x, q, c, alpha=alpha, beta=beta, gamma=gamma),
                           status=status, solve_time=float(prob.solver_stats.solve_time or np.nan),
                           route=route)


def prune_cvxpy(q, sizes, target, *, bits=16.0, lam=2.0, gamma=1.0, rho_max=1.0, equality=False,
                solver=SOLVER, **solver_opts) -> ReferenceResult:
    """Eq 14 in cvxpy: min Σ b N (1−ρ) + λ Σ q^γ ρ², Σ N ρ ≥ s Σ N (or =), 0 ≤ ρ ≤ ρ_max."""
    import cvxpy as cp

    q, N = np.asarray(q, float), np.asarray(sizes, float)
    pen = lam * q ** gamma
    total = float(N.sum())
    rho = cp.Variable(q.size)
    share = N / total
    con = (share @ rho == target) if equality else (share @ rho >= target)
    # objective / scale with scale = b ΣN + Σ λq^γ: minimiser unchanged, numbers O(1)
    scale = bits * total + float(pen.sum())
    obj = (bits * (N @ (1 - rho)) + cp.sum(cp.multiply(pen, cp.square(rho)))) / scale
    prob = cp.Problem(cp.Minimize(obj), [con, rho >= 0, rho <= rho_max])
    route, status = _solve(prob, solver, solver_opts)
    if rho.value is None:
        raise RuntimeError(f"cvxpy found no solution ({route}, status {status})")
    x = np.clip(np.asarray(rho.value, float), 0.0, rho_max)
    # cvxpy's dual is for share @ ρ (≥ or =) in the scaled objective; back to ν of Eq 17,
    # whose constraint is Σ N ρ ≥ s Σ N: ν = dual · scale / ΣN (sign: cvxpy reports ≥ duals ≥ 0)
    dual = float(np.ravel(con.dual_value)[0]) * scale / total
    if equality:
        dual = -dual                      # cvxpy's equality multiplier enters with the other sign
    return ReferenceResult(x=x, dual=dual,
                           objective=pruning_objective(x, q, N, bits=bits, lam=lam, gamma=gamma),
                           status=status, solve_time=float(prob.solver_stats.solve_time or np.nan),
                           route=route)


def allocate_integer_milp(q, cost, budget, *, alpha=1.0, beta=1.0, gamma=0.5, n_min=0,
                          spend_all=False, n_max=None, solver="HIGHS") -> np.ndarray:
    """Exact integer allocation by a 0-1 knapsack MILP over unit increments (small K only).

    Unit j ≥ 1 above n_min at layer k has value Δ_k(n_min+j−1) (minus α c_k unless spend_all)
    and weight c_k; increments decrease in j, so some optimum takes a prefix per layer and the
    counts are n_min + Σ_j x_kj. `n_max` caps units per layer (default: what the budget allows).
    """
    import cvxpy as cp

    q = np.asarray(q, float)
    K = q.size
    c = np.broadcast_to(np.asarray(cost, float), q.shape).copy()
    w = beta * q ** gamma
    nmin = np.broadcast_to(np.asarray(n_min, dtype=np.int64), q.shape)
    left = budget - float(c @ nmin)
    J = int(np.floor(left / c.min() + 1e-9)) if n_max is None else int(n_max)
    if J <= 0:
        return nmin.copy()
    j = np.arange(J)
    base = nmin[:, None] + j[None, :]                                   # count before the unit
    val = w[:, None] * np.log((base + 2.0) / (base + 1.0))
    if not spend_all:
        val = val - alpha * c[:, None]
    x = cp.Variable((K, J), boolean=True)
    prob = cp.Problem(cp.Maximize(cp.sum(cp.multiply(val, x))),
                      [cp.sum(x, axis=1) @ c <= left + 1e-9 * budget])
    prob.solve(solver=solver)
    return nmin + np.rint(np.asarray(x.value).sum(axis=1)).astype(np.int64)



@dataclass
class JointReferenceResult:
    n: np.ndarray
    rho: np.ndarray
    dual: float                  # μ of the budget, in the program's units
    objective: float             # recomputed at (n, ρ)
    status: str
    solve_time: float
    route: str = SOLVER


def joint_cvxpy(q, cost, sizes, budget, *, beta=1.0, lam=2.0, gamma=1.0, bits=16.0, rho_max=1.0,
                solver=SOLVER, **solver_opts) -> JointReferenceResult:
    """The joint program (METHOD.md §7.1) in cvxpy: min −β Σ q^γ log(1+n) + λ Σ q^γ ρ²,
    Σ c n + b Σ N (1−ρ) ≤ B, n ≥ 0, 0 ≤ ρ ≤ ρ_max. Objective divided by Σ β q^γ and the budget
    row by B (same minimiser, O(1) numbers); the dual is reported in the original units."""
    import cvxpy as cp

    q = np.asarray(q, float)
    c = np.broadcast_to(np.asarray(cost, float), q.shape).copy()
    N = np.broadcast_to(np.asarray(sizes, float), q.shape).copy()
    qg = q ** gamma
    w, pen = beta * qg, lam * qg
    n = cp.Variable(q.size, nonneg=True)
    rho = cp.Variable(q.size)
    con = (c @ n + bits * (N @ (1 - rho))) / budget <= 1
    scale = max(float(w.sum()), 1e-300)
    prob = cp.Problem(cp.Minimize((cp.sum(cp.multiply(pen, cp.square(rho))) - w @ cp.log1p(n)) / scale),
                      [con, rho >= 0, rho <= rho_max])
    route, status = _solve(prob, solver, solver_opts)
    if n.value is None:
        raise RuntimeError(f"cvxpy found no solution ({route}, status {status})")
    x = np.maximum(np.asarray(n.value, float), 0.0)
    r = np.clip(np.asarray(rho.value, float), 0.0, rho_max)
    return JointReferenceResult(n=x, rho=r, dual=float(np.ravel(con.dual_value)[0]) * scale / budget,
                                objective=joint_objective(x, r, q, beta=beta, lam=lam, gamma=gamma),
                                status=status, solve_time=float(prob.solver_stats.solve_time or np.nan),
                                route=route)


def prune_psi_cvxpy(a, p, sizes, target, *, bits=16.0, rho_max=1.0, equality=False, solver=SOLVER,
                    **solver_opts) -> ReferenceResult:
    """The pruning program with ψ_k = a_k ρ^{p_k} (METHOD.md §7.2) in cvxpy: one power atom per
    distinct exponent (exact power cones, `approx=False`; p = 1 is linear). Scaled as prune_cvxpy."""
    import cvxpy as cp

    N = np.asarray(sizes, float)
    a = np.broadcast_to(np.asarray(a, float), N.shape).copy()
    p = np.broadcast_to(np.asarray(p, float), N.shape).copy()
    total = float(N.sum())
    rho = cp.Variable(N.size)
    share = N / total
    con = (share @ rho == target) if equality else (share @ rho >= target)
    scale = bits * total + float(a.sum())
    pen = 0
    for e in np.unique(p):
        idx = np.flatnonzero(p == e)
        pen = pen + (a[idx] @ rho[idx] if e == 1.0 else a[idx] @ cp.power(rho[idx], float(e), approx=False))
    prob = cp.Problem(cp.Minimize((bits * (N @ (1 - rho)) + pen) / scale), [con, rho >= 0, rho <= rho_max])
    with np.errstate(invalid="ignore"):                      # cvxpy evaluates ρ^p at ρ ≈ −1e-12
        route, status = _solve(prob, solver, solver_opts)
    if rho.value is None:
        raise RuntimeError(f"cvxpy found no solution ({route}, status {status})")
    x = np.clip(np.asarray(rho.value, float), 0.0, rho_max)
    dual = float(np.ravel(con.dual_value)[0]) * scale / total
    return ReferenceResult(x=x, dual=-dual if equality else dual,
                           objective=psi_objective(x, a, p, N, bits=bits), status=status,
                           solve_time=float(prob.solver_stats.solve_time or np.nan), route=route)
