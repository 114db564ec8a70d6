"""Exact solvers of the two programs by sorted breakpoints (Theorems 2–3), compiled with numba.

Both programs reduce to one monotone, piecewise-linear scalar equation in the dual variable
(METHOD.md §2–3). Its pieces change only at breakpoints, where one layer enters or leaves the active
set; sorting the breakpoints and walking them once finds the piece that holds the root, and the
root is then the solution of a linear equation: no iteration tolerance, O(K log K) work.

    allocation  n_k(λ) = max(0, w_k/(λ c_k) − 1),  λ = α + μ,  breakpoints r_k = w_k / c_k   (Eq 13)
    pruning     ρ_k(τ) = min(τ a_k, ρ_max),        τ = b + ν,  breakpoints ρ_max / a_k          (Eq 15)

Per program: `*_terms` checks every input (arrays and scalars) and computes the per-layer
terms and breakpoints in one pass, `*_walk` walks the sorted breakpoints and returns the
solution, and `allocation` / `pruning` do both with the sort inside, in one call. numba's sort
is much slower than numpy's at large K, so above SORT_IN_KERNEL_MAX_K layers `mdlcap.theory.programs`
calls the two halves around a numpy argsort instead.

Why numba and not numpy: at the sizes that matter (K = 32 layers) a numpy version spends its
~6 µs in the per-call overhead of ~20 small array operations, not in arithmetic; compiled, a
whole call takes ~2 µs (bench/bench_programs.py), and the loops read like the derivation. The
kernels return a status instead of raising; `mdlcap.theory.programs` re-validates in Python only when
a check failed, to say which argument broke which rule. Compiled once per machine
(`cache=True`); `error_model="numpy"` turns x/0 into an inf that the checks catch.
"""
from __future__ import annotations

import numpy as np
from numba import njit

OK, BAD_INPUT = 0, 1
SORT_IN_KERNEL_MAX_K = 256


@njit(inline="always")
def _power(x, gamma):
    """x**γ, with the paper's γ = 1 (pruning) and γ = 0.5 (allocation) taken without pow()."""
    if gamma == 1.0:
        return x
    if gamma == 0.5:
        return np.sqrt(x)
    return x ** gamma


@njit(inline="always")
def _min_sum(x):
    """(min x, Σx) in one pass; a NaN fails every comparison but poisons the sum."""
    lo, total = np.inf, 0.0
    for v in x:
        lo = min(lo, v)
        total += v
    return lo, total


@njit(inline="always")
def _finite_in(x, lo, lo_open, hi):
    """lo ≤ x ≤ hi (lo < x if lo_open) and x finite; NaN fails."""
    return np.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi


# --------------------------------------------------------------------------- allocation (Eq 11–13)
@njit(cache=True, error_model="numpy")
def allocation_terms(q, c, budget, alpha, beta, gamma):
    """(status, w, r): benefit weights w_k = β q_k^γ (Eq 13) and breakpoints r_k = w_k / c_k.

    BAD_INPUT unless: q, c non-empty, same length; q finite ≥ 0 with Σq > 0; c finite > 0;
    budget > 0, α ≥ 0, β > 0, γ ≥ 0 finite; Σw finite and > 0.
    """
    K = q.size
    w = np.empty(K)
    r = np.empty(K)
    if not (K > 0 and c.size == K and _finite_in(budget, 0.0, True, np.inf) and _finite_in(alpha, 0.0, False, np.inf)
            and _finite_in(beta, 0.0, True, np.inf) and _finite_in(gamma, 0.0, False, np.inf)):
        return BAD_INPUT, w, r
    q_min, q_total = _min_sum(q)
    c_min, c_total = _min_sum(c)
    if not (q_min >= 0.0 and q_total > 0.0 and c_min > 0.0 and np.isfinite(q_total) and np.isfinite(c_total)):
        return BAD_INPUT, w, r
    w_total = 0.0
    for k in range(K):
        w[k] = beta * _power(q[k], gamma)
        r[k] = w[k] / c[k]
        w_total += w[k]
    if not (w_total > 0.0 and np.isfinite(w_total)):
        return BAD_INPUT, w, r
    return OK, w, r


@njit(cache=True, error_model="numpy")
def allocation_walk(w, c, r, ascending, budget, alpha):
    """(λ*, n) for Eq 11, λ* = α + μ* ≥ α, given `ascending` = argsort(r).

    With the active set A = {k : r_k > λ}, spend = (Σ_A w)/λ − Σ_A c, so spend = B at
    λ = Σ_A w / (B + Σ_A c). Taking layers in decreasing r, the top-j set is the active one
    while r_j > λ_j (spend at r_j grows with j), so the walk stops at the first j where it fails;
    ties in r enter together. λ* ≤ α means the unconstrained optimum fits: μ = 0, λ = α.
    """
    K = w.size
    lam, W, C = np.inf, 0.0, 0.0
    for i in range(K - 1, -1, -1):
        k = ascending[i]
        lam_j = (W + w[k]) / (budget + C + c[k])
        if not r[k] > lam_j:
            break
        W += w[k]
        C += c[k]
        lam = lam_j
    lam = max(alpha, lam)
    n = np.empty(K)
    for k in range(K):                       # Eq 13
        n[k] = max(0.0, w[k] / (lam * c[k]) - 1.0)
    return lam, n


@njit(cache=True, error_model="numpy")
def allocation(q, c, budget, alpha, beta, gamma):
    """(status, λ*, n): `allocation_terms` then `allocation_walk`, sorting in the kernel."""
    status, w, r = allocation_terms(q, c, budget, alpha, beta, gamma)
    if status != OK:
        return status, np.nan, w
    lam, n = allocation_walk(w, c, r, np.argsort(r), budget, alpha)
    return OK, lam, n


# --------------------------------------------------------------------------- pruning (Eq 14–15)
@njit(cache=True, error_model="numpy")
def pruning_terms(q, N, target, bits, lam, gamma, rho_max):
    """(status, a, ΣN): ρ_k(τ) = min(τ a_k, ρ_max) with a_k = N_k / (2λ q_k^γ) (Eq 15).

    BAD_INPUT unless: q, N non-empty, same length; q finite ≥ 0 with Σq > 0 (> 0 everywhere if
    γ > 0: Theorem 3 needs strong convexity); N finite > 0; b ≥ 0, λ > 0, γ ≥ 0 finite;
    ρ_max ∈ (0, 1]; s ∈ [0, ρ_max]; Σa finite.
    """
    K = q.size
    a = np.empty(K)
    if not (K > 0 and N.size == K and _finite_in(bits, 0.0, False, np.inf) and _finite_in(lam, 0.0, True, np.inf)
            and _finite_in(gamma, 0.0, False, np.inf) and _finite_in(rho_max, 0.0, True, 1.0)
            and _finite_in(target, 0.0, False, rho_max)):
        return BAD_INPUT, a, 0.0
    q_min, q_total = _min_sum(q)
    N_min, N_total = _min_sum(N)
    if not (q_min >= 0.0 and q_total > 0.0 and N_min > 0.0 and np.isfinite(q_total) and np.isfinite(N_total)):
        return BAD_INPUT, a, N_total
    if gamma > 0.0 and not q_min > 0.0:
        return BAD_INPUT, a, N_total
    a_total = 0.0
    for k in range(K):
        a[k] = N[k] / (2.0 * lam * _power(q[k], gamma))
        a_total += a[k]
    if not np.isfinite(a_total):
        return BAD_INPUT, a, N_total
    return OK, a, N_total


@njit(inline="always")
def _pruned(tau, a, N, rho_max):
    """Σ_k N_k min(τ a_k, ρ_max): the pruned weight count at τ (ΣN times the sparsity)."""
    total = 0.0
    for k in range(a.size):
        total += N[k] * min(tau * a[k], rho_max)
    return total


@njit(cache=True, error_model="numpy")
def pruning_walk(a, N, N_total, ascending, target, bits, rho_max, equality):
    """(τ*, ρ) for Eq 14, τ* = b + ν*, given `ascending` = argsort(a).

    Inequality target: ν = 0 (τ = b) when that already meets s. Otherwise layers clip at ρ_max
    in decreasing a (increasing breakpoint ρ_max / a_k). With the first j clipped,
    Σ N ρ = ρ_max Σ_{<j} N + τ Σ_{≥j} N a, linear in τ; at breakpoint j the sparsity is
    ρ_max (C_j + F_j / a_j) / ΣN, with C prefix sums of N and F suffix sums of N a (kept as
    suffix sums: total − prefix would cancel when the clipped layers dominate).
    """
    K = a.size
    if target == 0.0 and equality:
        tau = 0.0                            # ρ ≡ 0; ν = −b is a valid multiplier
    elif not equality and _pruned(bits, a, N, rho_max) / N_total >= target:
        tau = bits                           # ν = 0 already meets the target
    else:
        order = ascending[::-1]              # decreasing a: the order layers clip in
        F = np.zeros(K + 1)
        for j in range(K - 1, -1, -1):
            F[j] = F[j + 1] + N[order[j]] * a[order[j]]
        goal = target * N_total / rho_max
        C = 0.0
        j = 0
        while j < K and C + F[j] / a[order[j]] < goal:
            C += N[order[j]]
            j += 1
        if F[j] <= 0.0:                      # every layer clipped: target = ρ_max
            tau = rho_max / a[order[K - 1]]
        else:
            tau = (target * N_total - rho_max * C) / F[j]
        if not equality:
            tau = max(tau, bits)             # ν ≥ 0 (rounding at target = ρ_max)
    rho = np.empty(K)
    for k in range(K):                       # Eq 15: clip(τ a, 0, ρ_max), τ a ≥ 0
        rho[k] = min(tau * a[k], rho_max)
    return tau, rho


@njit(cache=True, error_model="numpy")
def pruning(q, N, target, bits, lam, gamma, rho_max, equality):
    """(status, τ*, ρ): `pruning_terms` then `pruning_walk`, sorting in the kernel."""
    status, a, N_total = pruning_terms(q, N, target, bits, lam, gamma, rho_max)
    if status != OK:
        return status, np.nan, a
    tau, rho = pruning_walk(a, N, N_total, np.argsort(a), target, bits, rho_max, equality)
    return OK, tau, rho
