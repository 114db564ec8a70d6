"""The allocation program (paper §2.3; METHOD.md §2: Eq 11–13, Theorem 2, Algorithm 1).

    a = allocate(q, cost, budget, alpha=1, beta=0.9)     # Eq 11–13: curvature-weighted water-filling
    z = allocate_integer(q, cost, budget, n_min=1)       # integer counts (greedy, exact for equal costs)

Eq 11 is separable and convex with one coupling budget, so the KKT conditions reduce to a
monotone scalar equation in the budget's dual μ. `method="exact"` (the default) solves it by
sorted breakpoints (`mdlcap.theory.breakpoints`: no tolerance, O(K log K)); `method="bisection"`
is Algorithm 1's bisection on the bracket of paper §3.2 (`mdlcap.theory.bisection`).

Written by hand because no maintained library ships this water-filling form, and a general
conic solver (cvxpy, `mdlcap.theory.reference`, the independent check) is three to four orders of
magnitude slower (bench/bench_programs.py). Every result carries μ, whether the budget binds,
the objective and a scale-free KKT residual (computed on first access), so a caller can trust it.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mdlcap.theory import breakpoints
from mdlcap.theory.bisection import multisection
from mdlcap.theory.validate import (check_method, check_tol, kernel_arrays, same_length, scalar, scores,
                                    vector)

__all__ = ["AllocationResult", "IntegerAllocationResult", "allocate", "allocate_integer",
           "allocation_objective", "allocation_kkt", "water_filling"]

MAX_UNITS = 1e7        # allocate_integer places units one at a time


@dataclass
class AllocationResult:
    """Continuous allocation n (Eq 13), dual μ of the budget, and checks.

    `objective` (Eq 11 value Σ α c n − β Σ q^γ log(1+n)) and `kkt_residual` (see allocation_kkt)
    are computed on first access, so a caller who only needs n pays nothing for them.
    """
    n: np.ndarray
    mu: float
    active: bool                 # budget constraint binding (μ > 0)
    method: str
    iterations: int = 0          # multisection rounds (0 for exact / unconstrained)
    problem: dict = field(default_factory=dict, repr=False, compare=False)   # inputs, for the checks

    @cached_property
    def objective(self) -> float:
        return allocation_objective(self.n, **{k: self.problem[k] for k in ("q", "cost", "alpha", "beta", "gamma")})

    @cached_property
    def kkt_residual(self) -> float:
        return allocation_kkt(self.n, self.mu, **self.problem)




def allocation_objective(n, q, cost, *, alpha=1.0, beta=1.0, gamma=0.5) -> float:
    """Eq 11 objective Σ_k α c_k n_k − β Σ_k q_k^γ log(1 + n_k)."""
    n, q, c = np.asarray(n, float), np.asarray(q, float), np.asarray(cost, float)
    return float(alpha * np.dot(c, n) - beta * np.dot(q ** gamma, np.log1p(n)))


def water_filling(w: np.ndarray, c: np.ndarray, lam: float) -> np.ndarray:
    """Eq 13: n_k = max(0, w_k / (λ c_k) − 1) with w_k = β q_k^γ and λ = α + μ."""
    n = w / (lam * c)
    n -= 1.0
    np.maximum(n, 0.0, out=n)
    return n


def allocation_kkt(n, mu, q, cost, budget, *, alpha=1.0, beta=1.0, gamma=0.5) -> float:
    """Largest scale-free violation of the KKT conditions of Eq 11 at (n, μ).

    - stationarity with n ≥ 0 (natural residual): |n_k − max(0, βq_k^γ/((α+μ)c_k) − 1)| / (1+n_k)
    - primal feasibility: max(0, −n_k), max(0, Σ c n − B)/B
    - dual feasibility: max(0, −μ)/(α+|μ|)
    - complementary slackness: μ/(α+μ) · |B − Σ c n| / B
    """
    n, q, c = np.asarray(n, float), np.asarray(q, float), np.asarray(cost, float)
    lam = alpha + mu                                        # α + μ
    w = beta * q ** gamma
    spend = float(c @ n)
    if lam > 0:
        target = np.maximum(w / (lam * c) - 1.0, 0.0)
    else:                                                   # α + μ ≤ 0: optimum unbounded where w > 0
        target = np.where(w > 0, np.inf, 0.0)
    stat = float(np.max(np.abs(n - target) / (1.0 + np.abs(n))))
    primal = max(-float(n.min()), (spend - budget) / budget, 0.0)
    scale = alpha + abs(mu) if alpha + abs(mu) > 0 else 1.0
    dual = max(0.0, -mu) / scale
    slack = abs(mu) / scale * abs(budget - spend) / budget
    return max(stat, primal, dual, slack)


def _scalars(budget, alpha, beta, gamma):
    return (scalar(budget, "budget", lo=0.0, lo_open=True), scalar(alpha, "alpha", lo=0.0),
            scalar(beta, "beta", lo=0.0, lo_open=True), scalar(gamma, "gamma", lo=0.0))


def _inputs(q, cost, budget, alpha, beta, gamma):
    q = scores(q)
    c = vector(cost, "cost", positive=True, allow_scalar_len=q.size)
    same_length(q, c, "q", "cost")
    budget, alpha, beta, gamma = _scalars(budget, alpha, beta, gamma)
    return q, c, budget, alpha, beta, gamma, benefit_weights(q, beta, gamma)


def benefit_weights(q: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """w_k = β q_k^γ (Eq 13), checked to have a finite, positive sum."""
    with np.errstate(over="ignore"):                      # checked just below
        w = beta * q ** gamma
    total = float(w.sum())
    if not math.isfinite(total):
        raise ValueError("gamma: beta * q**gamma overflows; use a smaller gamma")
    if not total > 0:
        raise ValueError("q: beta * q**gamma is zero everywhere (no layer has any benefit)")
    return w


def _spend(lam: float, w: np.ndarray, c: np.ndarray) -> float:
    """Eq 12's spend Σ_k c_k n_k(μ) with λ = α + μ: c_k n_k = max(0, w_k/λ − c_k)  (Eq 13)."""
    return float(np.maximum(w * (1.0 / lam) - c, 0.0).sum())


def _solve_lambda_bisection(w, c, budget, lam_lo, lam_hi, tol):
    """λ* = α+μ* with Σ max(0, w/λ − c) = B, by multisection on t = 1/λ ∈ [1/λ_hi, 1/λ_lo].

    In t the spend Σ_k max(0, w_k t − c_k) = Σ_k w_k max(0, t − t_k), with breakpoints
    t_k = c_k/w_k (layers with w_k = 0 never spend), is nondecreasing; we return λ = 1/t at the
    end of the bracket that stays within budget (feasible side), and the number of rounds.
    """
    if not w.min() > 0:
        keep = w > 0
        w, c = w[keep], c[keep]
    tk = c / w

    def spend_grid(t, M):                                # spend at each t of the grid, (m,)
        np.subtract.outer(t, tk, out=M)
        np.maximum(M, 0.0, out=M)
        return M @ w

    def spend_point(t):
        return float(np.maximum(w * t - c, 0.0).sum())

    t_lo, _, r = multisection(spend_grid, spend_point, budget, 1.0 / lam_hi, 1.0 / lam_lo, tol, w.size)
    return 1.0 / t_lo, r


def allocate(q, cost, budget, *, alpha=1.0, beta=1.0, gamma=0.5, tol=1e-12,
             method="exact") -> AllocationResult:
    """Solve the allocation program (Eq 11) in closed form (Eq 13, Theorem 2).

        minimise Σ_k α c_k n_k − β Σ_k q_k^γ log(1 + n_k)   s.t.  Σ_k c_k n_k ≤ B,  n ≥ 0

    n_k(μ) = max(0, β q_k^γ / ((α + μ) c_k) − 1); μ = 0 if that fits the budget, else the unique
    μ > 0 spending exactly B. `method="bisection"`: bracket [0, max_k β q_k^γ / c_k − α] of paper §3.2
    (its lower end raised to the valid bound α+μ ≥ Σw/(B+Σc) so that α = 0 works), a fixed
    number of steps giving relative precision `tol` on α+μ (hence on 1+n_k); n is returned at the
    feasible end of the bracket. `method="exact"` (default): sorted breakpoints, O(K log K), no
    tolerance, and faster than bisection at every K from 32 to 10⁶ (bench/bench_programs.py).
    `cost` may be a scalar (equal costs). q need not sum to one (its scale folds into β).
    """
    method = check_method(method)
    tol = check_tol(tol)
    if method == "exact":                   # fast path: the kernels check everything, see below
        arrays = kernel_arrays(q, cost, scalar_second=True)
        try:
            scalars = float(budget), float(alpha), float(beta), float(gamma)
        except (TypeError, ValueError):
            scalars = None
        if arrays is not None and scalars is not None:
            qa, ca = arrays
            if qa.size <= breakpoints.SORT_IN_KERNEL_MAX_K:
                status, lam, n = breakpoints.allocation(qa, ca, *scalars)
            else:                                            # numpy's sort, between the halves
                status, w, r = breakpoints.allocation_terms(qa, ca, *scalars)
                if status == breakpoints.OK:
                    lam, n = breakpoints.allocation_walk(w, ca, r, r.argsort(), scalars[0], scalars[1])
            if status == breakpoints.OK:                     # λ* ≤ α ⇔ spend(α) ≤ B ⇔ μ = 0
                return _allocation_result(n, lam, "exact", 0, qa, ca, *scalars)
        _inputs(q, cost, budget, alpha, beta, gamma)       # raises, naming the rule
        raise ValueError("q, cost: beta * q**gamma / cost is not finite")
    q, c, budget, alpha, beta, gamma, w = _inputs(q, cost, budget, alpha, beta, gamma)
    iters = 0
    if alpha > 0 and _spend(alpha, w, c) <= budget:          # μ = 0: unconstrained optimum fits
        lam = alpha
    else:
        hi = float(np.max(w / c))                            # all n_k = 0 at λ = max w/c  (paper §3.2)
        lo = max(alpha, float(w.sum() / (budget + c.sum())))  # spend ≥ Σw/λ − Σc ≥ B below this
        lam, iters = _solve_lambda_bisection(w, c, budget, lo, hi, tol) if lo < hi else (hi, 0)
    n = water_filling(w, c, lam)                             # Eq 13: max(0, w/((α+μ)c) − 1)
    return _allocation_result(n, lam, "bisection", iters, q, c, budget, alpha, beta, gamma)


def _allocation_result(n, lam, method, iters, q, c, budget, alpha, beta, gamma) -> AllocationResult:
    mu = max(0.0, lam - alpha)
    return AllocationResult(n=n, mu=mu, active=mu > 0, method=method, iterations=iters,
                            problem=dict(q=q, cost=c, budget=budget, alpha=alpha, beta=beta, gamma=gamma))


# --------------------------------------------------------------------------- integer allocation
@dataclass
class IntegerAllocationResult:
    """Integer capacity (e.g. experts per layer) and what is known about its optimality."""
    counts: np.ndarray           # int64
    objective: float             # Eq 11 value at the counts
    budget_used: float           # Σ c_k counts_k
    exact: bool                  # True when the greedy is provably optimal (equal costs)
    upper_bound: float           # certified upper bound on the best achievable utility (see docstring)
    spend_all: bool


def allocate_integer(q, cost, budget, *, alpha=1.0, beta=1.0, gamma=0.5, n_min=0,
                     spend_all=False) -> IntegerAllocationResult:
    """Integer version of Eq 11: counts n_k ∈ {n_min, n_min+1, ...}, Σ c_k n_k ≤ B.

    Greedy marginal gain with a heap. Adding one unit at layer k when it holds n units changes
    the utility U(n) = β Σ q^γ log(1+n) − α Σ c n by
        Δ_k(n) = β q_k^γ log((n+2)/(n+1)) − α c_k,
    which is strictly decreasing in n (log is strictly concave).

    spend_all=False (default; Eq 11 as written): maximise U. A unit is added only while its net
    gain Δ_k > 0, so the greedy may stop below the budget, exactly as the continuous program
    leaves budget unspent when μ = 0 (units not worth their cost α c_k).
    spend_all=True: maximise the utility term β Σ q^γ log(1+n) alone subject to Σ c n ≤ B, i.e.
    fill the budget even when net gains are negative (what a fixed total of LoRA-MoE experts
    needs). With equal costs this places exactly floor((B − c Σ n_min)/c) extra units.

    Which one is the paper's Algorithm 1? Algorithm 1 is the continuous program Eq 11 with α > 0,
    i.e. spend_all=False, and the paper does not say how it rounds. At the paper's values the α
    term, not the budget, decides the total (notebook 01 §3: with raw-FLOP costs nothing at all
    is allocated, and the budget binds in none of the cost units tried), so a requested total of
    experts (LoRA-MoE) needs spend_all=True, which is a different program.

    Optimality for equal costs c_k = c: the problem is max Σ_k f_k(n_k) over Σ_k n_k ≤ m with
    each f_k concave (decreasing increments). Write it as choosing m "unit increments" from K
    decreasing lists; any feasible choice of t units from list k can be replaced by its first t
    (prefixes have the largest increments and are what n_k = t means), so the optimum takes the
    m (or fewer, if increments turn ≤ 0 and spend_all is False) largest increments overall, which
    is exactly what the greedy picks. Hence the greedy is exact (`exact=True`).

    Unequal costs: this is a knapsack; the greedy adds units in decreasing order of gain per
    cost Δ_k/c_k and skips units that no longer fit. It is feasible but not exact in general.
    Because increments decrease along each layer, the problem equals a 0-1 knapsack whose
    density order respects the prefixes, so the classic bound applies: OPT ≤ G + v, where G is
    the greedy's utility and v the gain of the first unit that did not fit (the LP relaxation
    bound). `upper_bound` reports G + v (= G when exact), a certified a-posteriori bound on the
    best achievable utility β Σ q^γ log(1+n) − α Σ c n (without the α term when spend_all; so
    utility = −objective when spend_all is False); max(greedy, best single unit) would be a
    1/2-approximation, and in practice the gap is tiny. Work: O((K + units) log K).
    """
    q, c, budget, alpha, beta, gamma, w = _inputs(q, cost, budget, alpha, beta, gamma)
    if isinstance(n_min, (int, np.integer)):
        nmin = np.full(q.size, int(n_min), dtype=np.int64)
    else:
        nmin_f = vector(n_min, "n_min", allow_scalar_len=q.size)
        same_length(q, nmin_f, "q", "n_min")
        if not np.all(nmin_f == np.round(nmin_f)):
            raise ValueError("n_min: must be integers")
        nmin = nmin_f.astype(np.int64)
    if (nmin < 0).any():
        raise ValueError(f"n_min: must be >= 0 (got {int(nmin.min())})")
    base = float(np.dot(c, nmin))
    if base > budget * (1 + 1e-12):
        raise ValueError(f"n_min: the minimum counts cost {base:g} > budget {budget:g} (infeasible)")
    # the heap places one unit per step: bound the steps (positive net gain needs n + 1 < w/(αc))
    units = (budget - base) / float(c.min())
    if not spend_all and alpha > 0:
        units = min(units, float(np.sum(w / (alpha * c))))
    if units > MAX_UNITS:
        raise ValueError(f"budget: allows ~{units:.3g} units, more than the greedy's limit of {MAX_UNITS:.0g} "
                         "(use allocate() and round, or coarser cost units)")
    counts = nmin.copy()
    left = budget - base
    eps = 1e-12 * budget                                      # float slack when summing costs
    equal = bool(np.all(c == c[0]))
    drop = 0.0 if spend_all else alpha                        # α c_k subtracted from gains

    def gain(k: int, n: int) -> float:                        # Δ_k(n) (utility only if spend_all)
        return float(w[k] * math.log((n + 2.0) / (n + 1.0)) - drop * c[k])

    heap = [(-gain(k, int(counts[k])) / c[k], k) for k in range(q.size)]   # by gain per cost
    heapq.heapify(heap)
    first_misfit = 0.0
    while heap:
        neg_density, k = heapq.heappop(heap)
        g = -neg_density * c[k]
        if g <= 0.0 and not spend_all:
            break                                             # no unit is worth its cost
        if c[k] > left + eps:                                 # does not fit: drop this layer
            if first_misfit == 0.0:
                first_misfit = max(g, 0.0)
            continue
        counts[k] += 1
        left -= c[k]
        heapq.heappush(heap, (-gain(k, int(counts[k])) / c[k], k))
    n = counts.astype(float)
    util = float(np.dot(w, np.log1p(n)) - drop * np.dot(c, n))
    exact = equal
    return IntegerAllocationResult(
        counts=counts, objective=float(alpha * np.dot(c, n) - np.dot(w, np.log1p(n))),
        budget_used=float(np.dot(c, n)), exact=exact,
        upper_bound=util if exact else util + first_misfit, spend_all=bool(spend_all))
