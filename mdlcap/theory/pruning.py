"""The pruning program (paper §3.1; METHOD.md §3: Eq 14–15, Theorem 3, Algorithm 2).

    p = prune(q, sizes, 0.5, rho_max=0.51)               # Eq 14–15: curvature-protected pruning ratios

Eq 14 is separable and strongly convex (q_k > 0) with one coupling target, so the KKT
conditions reduce to a monotone scalar equation in the target's dual ν. A score q_k = 0 (γ > 0:
a layer with no positive gain, METHOD.md §3) removes that layer's penalty; it is taken as the
limit of Eq 15, ρ_k = ρ_max, and the rest is solved for what is left of the target
(`prune`'s docstring). `method="exact"` (the
default) solves it by sorted breakpoints (`mdlcap.theory.breakpoints`); `method="bisection"` is
Algorithm 2's bisection on the bracket of paper §3.2 (`mdlcap.theory.bisection`). Written by hand
for the reasons `mdlcap.theory.allocation` gives; cvxpy (`mdlcap.theory.reference`) is the check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mdlcap.theory import breakpoints
from mdlcap.theory.bisection import multisection
from mdlcap.theory.validate import check_method, check_tol, kernel_arrays, same_length, scalar, scores, vector

__all__ = ["PruningResult", "prune", "pruning_objective", "pruning_kkt", "pruning_ratios", "critical_lambda"]


@dataclass
class PruningResult:
    """Pruning ratios ρ (Eq 15), dual ν of the sparsity target, and checks.

    `objective` (Eq 14 value Σ b N (1−ρ) + λ Σ q^γ ρ²) and `kkt_residual` (see pruning_kkt) are
    computed on first access.
    """
    rho: np.ndarray
    nu: float
    active: bool                 # target binding (ν ≠ 0; always True for equality=True with target > 0)
    method: str
    iterations: int = 0
    tau: float = float("nan")    # b + ν, kept separately: with raw N_k, ν ≈ −b and b + ν cancels
    problem: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def objective(self) -> float:
        return pruning_objective(self.rho, **{k: self.problem[k] for k in ("q", "sizes", "bits", "lam", "gamma")})

    @cached_property
    def kkt_residual(self) -> float:
        return pruning_kkt(self.rho, self.nu, **self.problem, tau=self.tau)


def pruning_objective(rho, q, sizes, *, bits=16.0, lam=2.0, gamma=1.0) -> float:
    """Eq 14 objective Σ_k b N_k (1 − ρ_k) + λ Σ_k q_k^γ ρ_k²."""
    rho, q, N = np.asarray(rho, float), np.asarray(q, float), np.asarray(sizes, float)
    return float(bits * np.dot(N, 1.0 - rho) + lam * np.dot(q ** gamma, rho ** 2))


def pruning_kkt(rho, nu, q, sizes, target, *, bits=16.0, lam=2.0, gamma=1.0, rho_max=1.0,
                equality=False, tau=None) -> float:
    """Largest scale-free violation of the KKT conditions of Eq 14 at (ρ, ν).

    - stationarity with the box (natural residual): |ρ_k − clip((b+ν) N_k/(2λq_k^γ), 0, ρ_max)| / ρ_max
      (a layer with q_k^γ = 0 must sit at ρ_max when b + ν > 0 and may sit anywhere when b + ν = 0)
    - primal: box violations / ρ_max; target: max(0, s − ΣNρ/ΣN) (|·| for equality)
    - dual (inequality only): max(0, −ν)/(b+|ν|)
    - complementary slackness (inequality only): ν/(b+ν) · |ΣNρ/ΣN − s|
    `tau` (= b + ν) may be passed when known to more digits than b + ν recomputes.
    """
    rho, q, N = np.asarray(rho, float), np.asarray(q, float), np.asarray(sizes, float)
    t = bits + nu if tau is None else tau
    with np.errstate(divide="ignore", invalid="ignore"):   # q_k^γ = 0: a_k = inf (no penalty)
        a = N / (2.0 * lam * q ** gamma)
        closed = np.clip(t * a, 0.0, rho_max)
    free = ~np.isfinite(a)                                   # ρ_max if τ > 0; any ρ_k if τ = 0
    if free.any():
        closed[free] = rho_max if t > 0 else np.clip(rho[free], 0.0, rho_max)
    stat = float(np.max(np.abs(rho - closed))) / rho_max
    box = max(float(np.max(-rho)), float(np.max(rho - rho_max)), 0.0) / rho_max
    frac = float(np.dot(N, rho) / N.sum())
    gap = abs(frac - target) if equality else max(0.0, target - frac)
    scale = bits + abs(nu) if bits + abs(nu) > 0 else 1.0
    dual = 0.0 if equality else max(0.0, -nu) / scale
    slack = 0.0 if equality else abs(nu) / scale * abs(frac - target)
    return max(stat, box, gap, dual, slack)



def pruning_ratios(tau: float, a: np.ndarray, rho_max: float) -> np.ndarray:
    """Eq 15: ρ_k = clip(τ a_k, 0, ρ_max) with τ = b + ν and a_k = N_k / (2λ q_k^γ)."""
    return np.clip(tau * a, 0.0, rho_max)


def _frac(tau: float, a: np.ndarray, N: np.ndarray, rho_max: float, total: float) -> float:
    """Σ N_k ρ_k(ν) / Σ N with τ = b + ν ≥ 0:  ρ_k = min(τ a_k, ρ_max)  (Eq 15)."""
    return float(np.dot(N, np.minimum(tau * a, rho_max))) / total


def _checked(q, sizes):
    """(q, N): q ≥ 0 not all zero, N > 0, one length (each rule named when broken)."""
    q = scores(q)
    N = vector(sizes, "sizes", positive=True)
    same_length(q, N, "q", "sizes")
    return q, N


def _inputs(q, sizes, lam, gamma):
    """(q, N, a, ΣN) with a_k = N_k / (2λ q_k^γ), so that ρ_k(τ) = min(τ a_k, ρ_max) (Eq 15).
    Needs q > 0 when γ > 0 (`prune` splits zero scores off before it gets here)."""
    q, N = _checked(q, sizes)
    if gamma > 0 and not q.min() > 0:
        raise ValueError("q: every q_k must be > 0 when gamma > 0 here (prune() takes zero scores "
                         "as the limit rho_k = rho_max before calling this)")
    with np.errstate(divide="ignore", over="ignore"):       # checked just below
        a = N / (2.0 * lam * q ** gamma)
    if not math.isfinite(a.sum()):
        raise ValueError("q: q**gamma underflows to zero; scores are too small for this gamma")
    return q, N, a, float(N.sum())


def _solve_tau_bisection(a, N, rho_max, target, total, lo, hi, tol):
    """τ* = b+ν* with Σ N min(τa, ρ_max) = s ΣN (nondecreasing in τ), by multisection.

    Returns τ at the end of the bracket that meets the target (feasible side) and the rounds.
    """
    Nn = N / total

    def frac_grid(t, M):                                 # sparsity at each τ of the grid, (m,)
        np.multiply.outer(t, a, out=M)
        np.minimum(M, rho_max, out=M)
        return M @ Nn

    def frac_point(t):
        return float(np.minimum(t * a, rho_max) @ Nn)

    # largest τ with sparsity < target, found as "≤ target − tiny": we want the crossing from below
    _, t_hi, r = multisection(frac_grid, frac_point, np.nextafter(target, -np.inf), lo, hi, tol, a.size)
    return t_hi, r


def prune(q, sizes, target, *, bits=16.0, lam=2.0, gamma=1.0, rho_max=1.0, equality=False,
          tol=1e-12, method="exact") -> PruningResult:
    """Solve the pruning program (Eq 14) in closed form (Eq 15, Theorem 3).

        minimise Σ_k b N_k (1 − ρ_k) + λ Σ_k q_k^γ ρ_k²
        s.t.     Σ_k N_k ρ_k ≥ s Σ_k N_k   (= with equality=True),   0 ≤ ρ_k ≤ ρ_max

    ρ_k(ν) = clip((b + ν) N_k / (2λ q_k^γ), 0, ρ_max); ν = 0 if that already meets the target,
    else the unique ν > 0 meeting it. With `equality=True` the target must be met exactly and ν
    may be negative (b + ν ∈ (0, max 2λq^γρ_max/N]); the interior solution is then
    ρ_k ∝ N_k q_k^{−γ}, independent of b and λ (METHOD.md §3).
    `method="bisection"`: bracket of paper §3.2 on τ = b + ν, fixed number of steps for relative
    precision `tol`, ρ returned at the end that meets the target. `method="exact"` (default):
    sorted breakpoints (`mdlcap.theory.breakpoints`), no tolerance, faster at every K we measured.

    Zero scores (γ > 0). A layer with q_k = 0 has no positive gain and no degradation penalty:
    Eq 15's ρ_k = clip(τ N_k/(2λq_k^γ), 0, ρ_max) tends to ρ_max as q_k → 0 for any τ > 0, and
    in the program at q_k = 0 itself pruning that layer only lowers the objective. So those layers
    are set to ρ_max and the layers with q_k > 0 are solved (same method) for the rest of the
    target, (sΣN − ρ_max Σ_{q=0} N)/Σ_{q>0} N, floored at 0; τ, ν are that sub-problem's. One case
    has no such limit: with `equality=True`, if the zero-score layers alone at ρ_max exceed the
    target, the program's b-term is constant, the q > 0 layers take ρ = 0 (ν = −b, τ = 0) and any
    split of the target over the zero-score layers is optimal; they get one common ratio.
    Negative q and an all-zero q are rejected (`mdlcap.theory.validate.scores`); with γ = 0,
    q^γ = 1 and zeros change nothing.
    """
    method = check_method(method)
    tol = check_tol(tol)
    equality = bool(equality)
    if method == "exact":                   # fast path: the kernels check everything, see below
        arrays = kernel_arrays(q, sizes)
        try:
            scalars = float(target), float(bits), float(lam), float(gamma), float(rho_max)
        except (TypeError, ValueError):
            scalars = None
        if arrays is not None and scalars is not None:
            qa, Na = arrays
            if qa.size <= breakpoints.SORT_IN_KERNEL_MAX_K:
                status, tau, rho = breakpoints.pruning(qa, Na, *scalars, equality)
            else:                                            # numpy's sort, between the halves
                status, a, total = breakpoints.pruning_terms(qa, Na, *scalars)
                if status == breakpoints.OK:
                    tau, rho = breakpoints.pruning_walk(a, Na, total, a.argsort(), scalars[0], scalars[1],
                                                        scalars[4], equality)
            if status == breakpoints.OK:
                return _result(rho, tau, "exact", 0, qa, Na, *scalars, equality)
    target, bits, lam, gamma, rho_max = _scalars(target, bits, lam, gamma, rho_max)   # raise, naming the rule
    qc, Nc = _checked(q, sizes)
    if gamma > 0 and not qc.min() > 0:                       # zero scores: their limit, then the rest
        return _prune_zero_scores(qc, Nc, target, bits, lam, gamma, rho_max, equality, tol, method)
    if method == "exact":
        _inputs(qc, Nc, lam, gamma)
        raise ValueError("q, sizes: sizes / q**gamma is not finite")
    q, N, a, total = _inputs(qc, Nc, lam, gamma)
    iters = 0
    if target == 0.0 and equality:
        tau = 0.0                                            # ρ ≡ 0; ν = −b is a valid multiplier
    elif not equality and _frac(bits, a, N, rho_max, total) >= target:
        tau = bits                                           # ν = 0: unconstrained optimum meets s
    else:
        hi = float(np.max(rho_max / a))                      # every layer at ρ_max beyond this (paper §3.2)
        lo = max(0.0 if equality else bits, target * total / float(np.dot(N, a)))
        tau, iters = _solve_tau_bisection(a, N, rho_max, target, total, min(lo, hi), hi, tol)
    if not equality:
        tau = max(tau, bits)                                 # ν ≥ 0 (rounding at target = ρ_max)
    rho = pruning_ratios(tau, a, rho_max)                    # Eq 15
    return _result(rho, tau, "bisection", iters, q, N, target, bits, lam, gamma, rho_max, equality)


def _prune_zero_scores(q, N, target, bits, lam, gamma, rho_max, equality, tol, method) -> PruningResult:
    """`prune` with some q_k = 0 (γ > 0): those layers at ρ_max (the limit of Eq 15), the q > 0
    layers solved for the rest of the target (see `prune`)."""
    zero = q == 0.0
    NZ, NP, total = float(N[zero].sum()), float(N[~zero].sum()), float(N.sum())
    need = target * total
    rho = np.empty(q.size)
    iters = 0
    if equality and need < rho_max * NZ:       # zero-score layers alone exceed the target: any split
        rho[~zero], rho[zero], tau = 0.0, need / NZ, 0.0
    else:
        rest = min(rho_max, max(0.0, need - rho_max * NZ) / NP)
        sub = prune(q[~zero], N[~zero], rest, bits=bits, lam=lam, gamma=gamma, rho_max=rho_max,
                    equality=equality, tol=tol, method=method)
        rho[~zero], rho[zero], tau, iters = sub.rho, rho_max, sub.tau, sub.iterations
    return _result(rho, tau, method, iters, q, N, target, bits, lam, gamma, rho_max, equality)


def _scalars(target, bits, lam, gamma, rho_max):
    bits = scalar(bits, "bits", lo=0.0)
    lam = scalar(lam, "lam", lo=0.0, lo_open=True)
    gamma = scalar(gamma, "gamma", lo=0.0)
    rho_max = scalar(rho_max, "rho_max", lo=0.0, lo_open=True, hi=1.0)
    target = scalar(target, "target", lo=0.0, hi=1.0)
    if target > rho_max:
        raise ValueError(f"target: {target:g} > rho_max {rho_max:g} is infeasible "
                         "(even pruning every layer at rho_max misses it)")
    return target, bits, lam, gamma, rho_max


def _result(rho, tau, method, iters, q, N, target, bits, lam, gamma, rho_max, equality) -> PruningResult:
    nu = tau - bits
    active = (nu != 0.0) if not equality else target > 0
    return PruningResult(rho=rho, nu=nu, active=bool(active), method=method, iterations=iters, tau=tau,
                         problem=dict(q=q, sizes=N, target=target, bits=bits, lam=lam, gamma=gamma,
                                      rho_max=rho_max, equality=equality))


def critical_lambda(q, sizes, target, *, bits=16.0, gamma=1.0, rho_max=1.0) -> float:
    """Smallest λ at which the inequality target of Eq 14 binds (below it ν = 0 and the ratios
    are clip(b N_k / (2λq_k^γ), 0, ρ_max) whatever s is). At ν = 0 the sparsity is
    Σ N min((b/λ) N/(2q^γ), ρ_max) / ΣN, so b/λ_crit is the τ that the exact-target program with
    λ = 1 finds."""
    tau = prune(q, sizes, target, bits=bits, lam=1.0, gamma=gamma, rho_max=rho_max,
                  equality=True, method="exact").tau
    return float(bits / tau) if tau > 0 else float("inf")
