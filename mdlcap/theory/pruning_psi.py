"""Algorithm 2 with a calibrated degradation penalty ψ_k(ρ) = a_k ρ^{p_k} (paper Appendix G i;
METHOD.md §7.2).

    f = fit_power_penalty(rho, D)                        # one layer's measured curve: D ≈ a ρ^p
    r = prune_psi(a, p, sizes, 0.5, rho_max=0.51)        # Eq 14 with Σ a_k ρ_k^{p_k} for λ Σ q_k^γ ρ_k²

    minimise   Σ_k b N_k (1 − ρ_k) + Σ_k a_k ρ_k^{p_k}
    subject to Σ_k N_k ρ_k ≥ s Σ_k N_k  (= with equality=True),   0 ≤ ρ_k ≤ ρ_max

a_k > 0 and p_k ≥ 1 make each ψ_k convex and increasing. With τ = b + ν (ν the target's dual),
stationarity `a_k p_k ρ_k^{p_k−1} = τ N_k` and the box give, with θ_k = a_k p_k / N_k,

    ρ_k(τ) = clip((τ/θ_k)^{1/(p_k−1)}, 0, ρ_max)   (p_k > 1; at ρ_max from κ_k = θ_k ρ_max^{p_k−1})
    ρ_k(τ) = 0 below, ρ_max above τ = a_k/N_k     (p_k = 1: a linear penalty, bang-bang)

The sparsity f(τ) = Σ N ρ(τ)/ΣN is nondecreasing, continuous except for the linear layers'
jumps. We sort the K breakpoints (κ_k or a_k/N_k), find by bisection over them the first one
where f reaches s, and then either the target falls inside a jump (τ is that breakpoint and the
tied linear layers share the remainder: any split is optimal, we give them one common ρ) or
it falls on the continuous piece before it. There the root is closed form when the moving layers
share one exponent p (p = 2 is the paper's Eq 15: a_k = λ q_k^γ reproduces `prune`); with mixed
exponents the pieces are not closed form and we use Brent's method bracketed by the piece to
machine precision (rtol 4ε). Work O(K log K). cvxpy (power cones) is the check:
`mdlcap.theory.reference.prune_psi_cvxpy`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.optimize import brentq, least_squares
from scipy.special import logsumexp

from mdlcap.theory.validate import same_length, scalar, vector

__all__ = ["PsiPruningResult", "PowerFit", "prune_psi", "psi_objective", "psi_kkt", "psi_ratios",
           "fit_power_penalty"]


def psi_objective(rho, a, p, sizes, *, bits=16.0) -> float:
    """Σ_k b N_k (1 − ρ_k) + Σ_k a_k ρ_k^{p_k}."""
    rho, a, p, N = (np.asarray(x, float) for x in (rho, a, p, sizes))
    return float(bits * np.dot(N, 1.0 - rho) + np.dot(a, rho ** p))


def psi_ratios(tau: float, theta: np.ndarray, p: np.ndarray, rho_max: float) -> np.ndarray:
    """ρ_k(τ) with θ_k = a_k p_k/N_k: clip((τ/θ)^{1/(p−1)}, 0, ρ_max); linear layers (p = 1) at
    ρ_max where τ > θ_k and 0 where τ ≤ θ_k (the tie is the caller's to fill)."""
    lin = p == 1.0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inner = np.exp(np.log(tau / theta) / np.where(lin, 1.0, p - 1.0)) if tau > 0 else np.zeros(theta.size)
        inner = np.where(p == 2.0, tau / theta, inner)       # the paper's ρ², without exp/log
    return np.where(lin, np.where(tau > theta, rho_max, 0.0), np.minimum(inner, rho_max))


def psi_kkt(rho, nu, a, p, sizes, target, *, bits=16.0, rho_max=1.0, equality=False, tau=None) -> float:
    """Largest scale-free violation of the KKT conditions at (ρ, ν).

    - stationarity: g_k = a_k p_k ρ_k^{p_k−1} − (b+ν) N_k relative to the sum of the two terms;
      |g_k| on interior coordinates, max(0, −g_k) at ρ_k = 0, max(0, g_k) at ρ_k = ρ_max
    - primal, dual and complementary slackness as in `mdlcap.theory.pruning.pruning_kkt`
    """
    rho, a, p, N = (np.asarray(x, float) for x in (rho, a, p, sizes))
    t = bits + nu if tau is None else tau
    with np.errstate(divide="ignore", invalid="ignore"):
        marg = a * p * np.where(p == 1.0, 1.0, rho ** (p - 1.0))
    g = marg - t * N
    scale = np.abs(marg) + abs(t) * N
    scale = np.where(scale > 0, scale, 1.0)
    viol = np.where(rho <= 0, np.maximum(-g, 0.0), np.where(rho >= rho_max, np.maximum(g, 0.0), np.abs(g)))
    stat = float(np.max(viol / scale))
    box = max(float(np.max(-rho)), float(np.max(rho - rho_max)), 0.0) / rho_max
    frac = float(np.dot(N, rho) / N.sum())
    gap = abs(frac - target) if equality else max(0.0, target - frac)
    sc = bits + abs(nu) if bits + abs(nu) > 0 else 1.0
    dual = 0.0 if equality else max(0.0, -nu) / sc
    slack = 0.0 if equality else abs(nu) / sc * abs(frac - target)
    return max(stat, box, gap, dual, slack)


@dataclass
class PsiPruningResult:
    """Ratios ρ, dual ν of the target (τ = b + ν kept separately), and lazy checks."""
    rho: np.ndarray
    nu: float
    tau: float
    active: bool
    closed_form: bool            # τ found without an iterative root (one exponent on the piece, or a jump)
    problem: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def objective(self) -> float:
        P = self.problem
        return psi_objective(self.rho, P["a"], P["p"], P["sizes"], bits=P["bits"])

    @cached_property
    def kkt_residual(self) -> float:
        return psi_kkt(self.rho, self.nu, **self.problem, tau=self.tau)


def _inputs(a, p, sizes, target, bits, rho_max):
    N = vector(sizes, "sizes", positive=True)
    a = vector(a, "a", positive=True, allow_scalar_len=N.size)
    p = vector(p, "p", allow_scalar_len=N.size)
    same_length(N, a, "sizes", "a")
    same_length(N, p, "sizes", "p")
    if not p.min() >= 1.0:
        raise ValueError(f"p: every exponent must be >= 1 (psi = a rho**p convex; min is {p.min():g})")
    bits = scalar(bits, "bits", lo=0.0)
    rho_max = scalar(rho_max, "rho_max", lo=0.0, lo_open=True, hi=1.0)
    target = scalar(target, "target", lo=0.0, hi=1.0)
    if target > rho_max:
        raise ValueError(f"target: {target:g} > rho_max {rho_max:g} is infeasible")
    return a, p, N, target, bits, rho_max


def _fill(rho, tau, theta, p, N, goal, rho_max):
    """Tied linear layers (θ_k = τ) take one common ratio that meets Σ N ρ = goal."""
    tied = (p == 1.0) & (theta == tau)
    if tied.any():
        rest = float(np.dot(N[~tied], rho[~tied]))
        rho[tied] = min(max(0.0, (goal - rest) / float(N[tied].sum())), rho_max)
    return rho


def prune_psi(a, p, sizes, target, *, bits=16.0, rho_max=1.0, equality=False) -> PsiPruningResult:
    """Solve the pruning program with ψ_k(ρ) = a_k ρ^{p_k} (METHOD.md §7.2).

    ν = 0 (τ = b) if ρ(b) already meets an inequality target; else the smallest τ where the
    sparsity reaches s (see the module docstring for the breakpoint walk). `a` and `p` may be
    scalars. With equality=True, ν may be negative (τ ∈ [0, max breakpoint]).
    """
    a, p, N, target, bits, rho_max = _inputs(a, p, sizes, target, bits, rho_max)
    equality = bool(equality)
    theta = a * p / N
    total = float(N.sum())
    goal = target * total
    lin = p == 1.0
    problem = dict(a=a, p=p, sizes=N, target=target, bits=bits, rho_max=rho_max, equality=equality)

    def pruned(tau, upper):                              # Σ N ρ(τ±): linear ties at ρ_max if upper
        r = psi_ratios(tau, theta, p, rho_max)
        if upper:
            r = np.where(lin & (theta == tau), rho_max, r)
        return float(np.dot(N, r))

    closed = True
    if equality and target == 0.0:
        tau = 0.0
    elif not equality and pruned(bits, upper=False) >= goal:
        tau = bits
    else:
        with np.errstate(over="ignore"):
            bp = np.where(lin, theta, theta * rho_max ** np.where(lin, 1.0, p - 1.0))
        order = np.argsort(bp, kind="stable")
        sbp = bp[order]
        lo, hi = 0, sbp.size - 1                          # first j with f(bp_j⁺) ≥ s
        while lo < hi:
            mid = (lo + hi) // 2
            if pruned(sbp[mid], upper=True) >= goal:
                hi = mid
            else:
                lo = mid + 1
        j = lo
        right = sbp[j]
        if pruned(right, upper=False) < goal:            # inside a jump of the linear layers
            tau = float(right)
        else:                                            # on the continuous piece before bp_j
            left = float(sbp[j - 1]) if j > 0 else 0.0
            moving = np.zeros(N.size, bool)
            moving[order[j:]] = True
            moving &= ~lin
            fixed = float(np.dot(N[~moving], np.where(bp[~moving] <= left, rho_max, 0.0)))
            need = goal - fixed
            pm = p[moving]
            if np.all(pm == pm[0]):                      # Σ N (τ/θ)^{1/(p−1)} = need, one p
                e = 1.0 / (pm[0] - 1.0)
                with np.errstate(over="ignore", divide="ignore"):
                    coef = float(np.dot(N[moving], theta[moving] ** -e))
                if math.isfinite(coef) and coef > 0:
                    tau = (need / coef) ** (pm[0] - 1.0)
                else:                                    # p near 1: the same in logs
                    log_coef = float(logsumexp(np.log(N[moving]) - e * np.log(theta[moving])))
                    tau = math.exp((pm[0] - 1.0) * (math.log(need) - log_coef))
            else:
                closed = False
                Nm, th, em = N[moving], theta[moving], 1.0 / (pm - 1.0)

                def g(t):
                    return float(np.dot(Nm, np.exp(np.log(t / th) * em) if t > 0 else 0.0 * th)) - need

                tau = float(right) if g(float(right)) <= 0 else brentq(
                    g, left, float(right), xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
            tau = float(min(max(tau, left), right))
        if not equality:
            tau = max(tau, bits)
    rho = psi_ratios(tau, theta, p, rho_max)
    if pruned(tau, upper=False) < goal:
        rho = _fill(rho, tau, theta, p, N, goal, rho_max)
    nu = tau - bits
    active = (nu != 0.0) if not equality else target > 0
    return PsiPruningResult(rho=rho, nu=nu, tau=tau, active=bool(active), closed_form=closed, problem=problem)


# --------------------------------------------------------------------------- calibration
@dataclass
class PowerFit:
    """D ≈ a ρ^p fitted by least squares on D, with a > 0 and p ≥ 1."""
    a: float
    p: float
    r2: float                    # 1 − SS_res / SS_tot on D

    def __call__(self, rho):
        return self.a * np.asarray(rho, float) ** self.p


def fit_power_penalty(rho, D) -> PowerFit:
    """Fit one layer's measured degradation D(ρ) (loss increase at pruning fraction ρ) by
    ψ(ρ) = a ρ^p, a > 0, p ≥ 1, minimising Σ (a ρ_i^p − D_i)² (scipy least_squares, a = e^u).

    Started from the log-log line through the points with ρ, D > 0 (p clipped to ≥ 1).
    Needs at least two distinct ρ > 0; ρ in [0, 1], D finite (noisy negative D is allowed).
    """
    r = vector(rho, "rho")
    d = np.asarray(D, dtype=float)
    same_length(r, d, "rho", "D")
    if not np.isfinite(d).all():
        raise ValueError("D: must be finite (found NaN or inf)")
    if r.max() > 1.0:
        raise ValueError(f"rho: pruning fractions must be <= 1 (max is {r.max():g})")
    if np.unique(r[r > 0]).size < 2:
        raise ValueError("rho: needs at least two distinct fractions > 0 to fit a and p")
    pos = (r > 0) & (d > 0)
    if np.unique(r[pos]).size >= 2:
        slope, icpt = np.polyfit(np.log(r[pos]), np.log(d[pos]), 1)
        p0, u0 = max(1.0, float(slope)), float(icpt)
    else:
        p0, u0 = 2.0, math.log(max(float(np.mean(np.abs(d))), 1e-300) / float(np.mean(r ** 2)))

    def resid(x):
        return np.exp(x[0]) * r ** x[1] - d

    def jac(x):
        v = np.exp(x[0]) * r ** x[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), 0.0)
        return np.column_stack([v, v * lr])

    sol = least_squares(resid, [u0, min(max(p0, 1.0), 1e3)], jac=jac, bounds=([-np.inf, 1.0], [np.inf, np.inf]),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=2000)
    a, p = float(np.exp(sol.x[0])), float(sol.x[1])
    ss_res = float(np.sum(resid(sol.x) ** 2))
    ss_tot = float(np.sum((d - d.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return PowerFit(a=a, p=p, r2=r2)
