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

`allocate_integer_milp` states the integer allocation as a 0-1 knapsack over unit increments
(exact because increments decrease along each layer) and solves it with HIGHS.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mdlcap.theory import programs as P

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
    return route


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
                           objective=P.allocation_objective(x, q, c, alpha=alpha, beta=beta, gamma=gamma),
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
                           objective=P.pruning_objective(x, q, N, bits=bits, lam=lam, gamma=gamma),
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


# --------------------------------------------------------------------------- timing comparison
def bench_instance(program: str, K: int, seed: int = 0) -> tuple[tuple, dict]:
    """A random instance (args, kwargs) where the coupling constraint binds, so the dual search
    actually runs. Allocation: the paper's α=1, β=0.9, γ=0.5, costs ~1/K, budget 0.1.
    Pruning: the paper's b=16, λ=2, γ=1, ρ_max=0.51, s=0.5 with the exact-target variant
    (the inequality one is slack at these values, METHOD.md §3) on sizes in units of the mean
    layer (cvxpy cannot resolve the quadratic term next to raw sizes ~1e8; ours is unaffected).
    """
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K))
    if program == "allocate":
        return (q, rng.uniform(0.5, 1.5, K) / K, 0.1), dict(alpha=1.0, beta=0.9, gamma=0.5)
    if program == "prune":
        q = (q + 1e-3 / K) / (1 + 1e-3)                      # keep every q_k > 0 (Theorem 3)
        return (q, rng.uniform(1.0, 3.0, K), 0.5), dict(bits=16.0, lam=2.0, gamma=1.0,
                                                       rho_max=0.51, equality=True)
    raise ValueError(f"program: must be 'allocate' or 'prune' (got {program!r})")


def median_call_time(fn, *, min_time: float = 0.2, min_calls: int = 5, max_calls: int = 20_000) -> tuple[float, int]:
    """Median wall time of single calls of fn() (each call timed on its own), and the count."""
    import time

    fn()                                                     # warm up (imports, caches)
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def timing_table(Ks=(32, 1_000, 100_000, 1_000_000), programs=("allocate", "prune"),
                 cvxpy_max_K: int = 10_000, cvxpy_time_limit: float = 20.0, min_time: float = 0.2,
                 progress: bool = True):
    """Median time per call for bisection, exact and cvxpy (same instances, same process).

    cvxpy is timed as a user calls it (build, canonicalise, solve: `*_cvxpy`), with the time
    inside the solver alone in `cvxpy_solver_s`; it is skipped above `cvxpy_max_K` or once a
    call took longer than `cvxpy_time_limit` seconds. Speed-ups are cvxpy time / our time.
    Returns a pandas DataFrame (one row per program, K, method).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    solve = {"allocate": P.allocate, "prune": P.prune}
    ref = {"allocate": allocate_cvxpy, "prune": prune_cvxpy}
    rows = []
    jobs = [(p, int(K)) for p in programs for K in Ks]
    too_slow = set()
    for prog, K in tqdm(jobs, desc="timing", **({} if progress else {"disable": True})):
        args, kw = bench_instance(prog, K)
        exact = solve[prog](*args, method="exact", **kw)
        x_exact = exact.n if prog == "allocate" else exact.rho
        base = {}
        for method in ("bisection", "exact"):
            res = solve[prog](*args, method=method, **kw)
            t, calls = median_call_time(lambda: solve[prog](*args, method=method, **kw), min_time=min_time)
            x = res.n if prog == "allocate" else res.rho
            base[method] = t
            rows.append(dict(program=prog, K=K, method=method, median_s=t, calls=calls,
                             active=bool(res.active), kkt_residual=res.kkt_residual,
                             max_abs_diff_vs_exact=float(np.max(np.abs(x - x_exact))),
                             cvxpy_solver_s=np.nan))
        if K <= cvxpy_max_K and prog not in too_slow:
            out = ref[prog](*args, **kw)
            t, calls = median_call_time(lambda: ref[prog](*args, **kw), min_time=min_time, min_calls=3)
            solver_t = float(out.solve_time)
            if t > cvxpy_time_limit:
                too_slow.add(prog)
            rows.append(dict(program=prog, K=K, method="cvxpy", median_s=t, calls=calls,
                             active=None, kkt_residual=np.nan,
                             max_abs_diff_vs_exact=float(np.max(np.abs(out.x - x_exact))),
                             cvxpy_solver_s=solver_t, cvxpy_route=out.route))
            for r in rows:
                if r["program"] == prog and r["K"] == K and r["method"] != "cvxpy":
                    r["speedup_vs_cvxpy"] = t / r["median_s"]
                    r["speedup_vs_cvxpy_solver_only"] = solver_t / r["median_s"]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Lemma 1 / Appendix C
def random_block(dim: int, kind: str, rng) -> np.ndarray:
    """Symmetric curvature block with a chosen spectrum: "pd" (eigenvalues log-uniform in
    [1e-3, 10]), "psd" (a third of them exactly 0), "indefinite" (a third in [−1, −1e-3])."""
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eig = np.exp(rng.uniform(np.log(1e-3), np.log(10.0), dim))
    m = max(1, dim // 3)
    if kind == "psd":
        eig[:m] = 0.0
    elif kind == "indefinite":
        eig[:m] = -np.exp(rng.uniform(np.log(1e-3), 0.0, m))
    elif kind != "pd":
        raise ValueError(f"kind: must be 'pd', 'psd' or 'indefinite' (got {kind!r})")
    return (Q * eig) @ Q.T


def lemma1_check(H, g, lam: float) -> dict:
    """Lemma 1 and Appendix C at one block: d* = −H̃⁻¹g with H̃ = H + λI.

    Returns ζ² = gᵀH̃⁻¹g, the relative errors of (i) the surrogate decrease ½ζ² and (ii) the
    reconstructed identity m(d*) = −½ζ² − (λ/2)‖d*‖² for the true quadratic, the bias
    λ‖d*‖², and whether 0 ≤ bias ≤ λ/(λ+σ_min(H)) ζ² ≤ ζ² holds. If H̃ is not positive
    definite the surrogate has no minimiser (Lemma 1 does not apply): `damped_pd` is False.
    """
    H = np.asarray(H, float)
    g = np.asarray(g, float)
    Ht = H + lam * np.eye(len(g))
    sig_min = float(np.linalg.eigvalsh(H)[0])
    pd = bool(np.linalg.eigvalsh(Ht)[0] > 0)
    d = -np.linalg.solve(Ht, g)
    zeta2 = float(-(g @ d))                                              # gᵀ H̃⁻¹ g
    surrogate = float(g @ d + 0.5 * d @ Ht @ d)                          # Lemma 1: = −½ζ²
    true_val = float(g @ d + 0.5 * d @ H @ d)                            # m_k(d*)
    bias = float(lam * d @ d)
    factor = lam / (lam + sig_min) if lam + sig_min > 0 else np.inf
    scale = max(abs(zeta2), 1e-300)
    return dict(dim=len(g), lam=lam, sigma_min=sig_min, damped_pd=pd, zeta2=zeta2,
                decrease_rel_err=abs(surrogate + 0.5 * zeta2) / scale,
                grad_rel_norm=float(np.linalg.norm(g + Ht @ d) / np.linalg.norm(g)),
                identity_rel_err=abs(true_val - (-0.5 * zeta2 - 0.5 * bias)) / scale,
                bias=bias, bias_over_zeta2=bias / scale, bound_factor=factor,
                bias_le_zeta2=bool(0 <= bias <= zeta2 * (1 + 1e-10)),
                bias_le_factor_bound=bool(bias <= factor * zeta2 * (1 + 1e-10) + 1e-300))


def ranking_check(blocks, grads, lam: float) -> float:
    """Fraction of layer pairs ordered the same by ζ²(λ) and by the undamped best decrease
    gᵀH⁻¹g (positive-definite blocks): Appendix C's claim that small λ keeps the ranking."""
    z_lam = np.array([g @ np.linalg.solve(H + lam * np.eye(len(g)), g) for H, g in zip(blocks, grads)])
    z_0 = np.array([g @ np.linalg.solve(H, g) for H, g in zip(blocks, grads)])
    i, j = np.triu_indices(len(z_0), 1)
    return float(np.mean(np.sign(z_lam[i] - z_lam[j]) == np.sign(z_0[i] - z_0[j])))


# --------------------------------------------------------------------------- random instances
def random_allocation_instance(rng, K: int, regime: str) -> tuple[tuple, dict]:
    """Allocation instance with the budget "active" (below the unconstrained spend) or
    "inactive" (above it); costs, α, β, γ random, some layers left at n = 0."""
    q = rng.dirichlet(np.full(K, rng.choice([0.3, 1.0, 3.0])))
    cost = rng.uniform(0.2, 2.0, K) / K
    kw = dict(alpha=float(rng.choice([0.5, 0.9, 1.0, 2.0])), beta=float(rng.choice([0.9, 1.0])),
              gamma=float(rng.choice([0.5, 0.9, 1.0, 2.0])))
    free = P.allocate(q, cost, 1e300, **kw)                                 # unconstrained optimum
    spend = float(cost @ free.n)
    if spend <= 0:                                                           # nothing worth buying:
        kw["alpha"] = 0.1 * float(np.max(kw["beta"] * q ** kw["gamma"] / cost))  # lower α
        spend = float(cost @ P.allocate(q, cost, 1e300, **kw).n)
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


def compare_instance(program: str, args: tuple, kw: dict) -> dict:
    """Closed form (bisection and exact) vs cvxpy on one instance: one row for a table."""
    if program == "allocate":
        ours, ex, ref = (P.allocate(*args, method="bisection", **kw), P.allocate(*args, method="exact", **kw),
                         allocate_cvxpy(*args, **kw))
        x, xe, dual = ours.n, ex.n, ours.mu
        ref_kkt = P.allocation_kkt(ref.x, max(ref.dual, 0.0), *args, **kw)
        extra = dict(n_zero=int(np.sum(x == 0)), n_clipped=0)
    else:
        ours, ex, ref = (P.prune(*args, method="bisection", **kw), P.prune(*args, method="exact", **kw),
                         prune_cvxpy(*args, **kw))
        x, xe, dual = ours.rho, ex.rho, ours.nu
        ref_kkt = P.pruning_kkt(ref.x, ref.dual, *args, **kw)
        extra = dict(n_zero=int(np.sum(x == 0)), n_clipped=int(np.sum(x >= kw["rho_max"])))
    return dict(program=program, K=len(args[0]), active=bool(ours.active), **extra,
                max_abs_diff_x=float(np.max(np.abs(x - ref.x))),
                max_rel_diff_x=float(np.max(np.abs(x - ref.x)) / (1.0 + np.max(np.abs(ref.x)))),
                obj_diff=float(ours.objective - ref.objective),
                rel_obj_diff=float(abs(ours.objective - ref.objective) / max(1.0, abs(ref.objective))),
                dual=float(dual), dual_cvxpy=float(ref.dual),
                max_abs_diff_bisection_exact=float(np.max(np.abs(x - xe))),
                kkt_residual=float(ours.kkt_residual), kkt_residual_exact=float(ex.kkt_residual),
                kkt_residual_cvxpy=float(ref_kkt), cvxpy_status=ref.status, cvxpy_route=ref.route,
                bisection_rounds=int(ours.iterations))


# --------------------------------------------------------------------------- real layer sizes
def meta_model(config):
    """A Hugging Face causal LM built on the meta device from a config: shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def layer_sizes(config) -> np.ndarray:
    """Parameter count N_k of each decoder layer of the architecture described by `config`."""
    from mdlcap.models import decoder_layers

    return np.array([sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(meta_model(config))],
                    dtype=float)


def lora_expert_flops(config, rank: int = 8) -> np.ndarray:
    """FLOPs per token of one rank-r LoRA expert on every linear map of each decoder layer:
    Σ_linear 2 r (d_in + d_out) (the paper's c_k, "FLOPs of a single LoRA expert at layer k";
    the paper does not say which modules carry experts: we read it as all of them)."""
    import torch

    from mdlcap.models import decoder_layers

    out = []
    for layer in decoder_layers(meta_model(config)):
        out.append(sum(2 * rank * (m.in_features + m.out_features)
                       for m in layer.modules() if isinstance(m, torch.nn.Linear)))
    return np.array(out, dtype=float)


def critical_lambda(q, sizes, target, *, bits=16.0, gamma=1.0, rho_max=1.0) -> float:
    """Smallest λ at which the inequality target of Eq 14 binds (below it ν = 0 and the ratios
    are clip(b N_k / (2λq_k^γ), 0, ρ_max) whatever s is). At ν = 0 the sparsity is
    Σ N min((b/λ) N/(2q^γ), ρ_max) / ΣN, so b/λ_crit is the τ that the exact-target program with
    λ = 1 finds."""
    tau = P.prune(q, sizes, target, bits=bits, lam=1.0, gamma=gamma, rho_max=rho_max,
                  equality=True, method="exact").tau
    return float(bits / tau) if tau > 0 else float("inf")
