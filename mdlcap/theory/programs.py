"""The two MDL programs of the paper, solved in closed form (paper §2.3, §3.1–3.2; METHOD.md §2–3).

    q = scores_from_gains(zeta2)                         # Eq 10: q_k = ζ_k² / Σ_j ζ_j²
    a = allocate(q, cost, budget, alpha=1, beta=0.9)     # Eq 11–13: curvature-weighted water-filling
    z = allocate_integer(q, cost, budget, n_min=1)       # integer expert counts (greedy, exact for equal costs)
    p = prune(q, sizes, 0.5, rho_max=0.51)               # Eq 14–15: curvature-protected pruning ratios

Both continuous programs are separable and convex with one coupling constraint, so the KKT
conditions reduce to a monotone scalar equation in the dual variable (μ for the budget, ν for the
sparsity target). We solve it by bisection on the bracket of §3.2 (`method="bisection"`, a fixed
number of steps set by `tol`) or exactly, by sorting the breakpoints of the piecewise form and
solving the linear equation of the right active set (`method="exact"`, the default: no iteration
tolerance, O(K log K), and faster than bisection at every K from 32 to 10⁶).

Written by hand (numpy; the exact solvers as numba loops in `mdlcap.theory.breakpoints`) because no
maintained library ships these two water-filling forms, and a general conic solver (cvxpy, see
`mdlcap.theory.reference`, the independent check) is three to four orders of magnitude slower
(bench/bench_programs.py).

Every result carries the dual value, whether the coupling constraint is active, the objective and
a scale-free KKT residual (see `allocation_kkt` / `pruning_kkt`), so a caller can trust it.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import numpy as np

from mdlcap.theory import breakpoints

__all__ = [
    "AllocationResult", "IntegerAllocationResult", "PruningResult",
    "scores_from_gains", "allocate", "allocate_integer", "prune",
    "allocation_objective", "pruning_objective", "allocation_kkt", "pruning_kkt",
]

_METHODS = ("bisection", "exact")
_MAX_UNITS = 1e7        # allocate_integer places units one at a time
_GRID_CELLS = 4096      # multisection: points per round × K kept near this (one numpy pass per round)


# --------------------------------------------------------------------------- validation
def _vector(x, name: str, *, positive: bool = False, allow_scalar_len: int | None = None) -> np.ndarray:
    """1-D finite float array; `positive` requires > 0, else ≥ 0. A scalar broadcasts if allowed."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 0 and allow_scalar_len is not None:
        a = np.full(allow_scalar_len, float(a))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: must be a non-empty 1-D array (got shape {a.shape})")
    mn = a.min()                                  # NaN propagates into min, inf into the sum:
    if (mn > 0 if positive else mn >= 0) and math.isfinite(a.sum()):   # two reductions, fast path
        return a
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: must be finite (found NaN or inf)")
    if positive and not mn > 0:
        raise ValueError(f"{name}: every entry must be > 0 (min is {mn:g})")
    if mn < 0:
        raise ValueError(f"{name}: every entry must be >= 0 (min is {mn:g})")
    raise ValueError(f"{name}: entries too large (their sum overflows)")


def _scores(q, name: str = "q") -> np.ndarray:
    a = _vector(q, name)
    if not a.sum() > 0:
        raise ValueError(f"{name}: must not be all zero (scores need some positive gain)")
    return a


def _scalar(x, name: str, *, lo: float = -math.inf, lo_open: bool = False, hi: float = math.inf) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a real number (got {x!r})") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite (got {v})")
    if (v <= lo) if lo_open else (v < lo):
        raise ValueError(f"{name}: must be {'>' if lo_open else '>='} {lo:g} (got {v:g})")
    if v > hi:
        raise ValueError(f"{name}: must be <= {hi:g} (got {v:g})")
    return v


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{nb}: length {b.size} does not match {na} (length {a.size})")


def _check_tol(tol) -> float:
    t = _scalar(tol, "tol", lo=0.0, lo_open=True)
    if t >= 1.0:
        raise ValueError(f"tol: must be in (0, 1) (got {t:g})")
    return t


def _check_method(method: str) -> str:
    if method not in _METHODS:
        raise ValueError(f"method: must be one of {_METHODS} (got {method!r})")
    return method


# --------------------------------------------------------------------------- Eq 10
def scores_from_gains(zeta2):
    """Eq 10: normalised curvature scores q_k = ζ_k² / Σ_j ζ_j² (on the simplex).

    `zeta2` is an array of layer gains, or a mapping name → ζ² (as `curvature.layer_gains`
    returns); a mapping gives back a dict with the same keys and order.
    Gains must be finite, ≥ 0 and not all zero: a negative ζ² means the damped curvature was
    not positive definite (Lemma 1 needs H̃ ≻ 0), which the caller must fix, not hide.
    """
    if isinstance(zeta2, Mapping):
        keys = list(zeta2)
        q = scores_from_gains(np.array([float(zeta2[k]) for k in keys]) if keys else np.empty(0))
        return dict(zip(keys, q.tolist()))
    z = _scores(zeta2, "zeta2")
    return z / z.sum()


# --------------------------------------------------------------------------- allocation (Eq 11–13)
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
        return allocation_objective(self.n, **_pick(self.problem, "q", "cost", "alpha", "beta", "gamma"))

    @cached_property
    def kkt_residual(self) -> float:
        return allocation_kkt(self.n, self.mu, **self.problem)


def _pick(d: dict, *keys):
    return {k: d[k] for k in keys}


def allocation_objective(n, q, cost, *, alpha=1.0, beta=1.0, gamma=0.5) -> float:
    """Eq 11 objective Σ_k α c_k n_k − β Σ_k q_k^γ log(1 + n_k)."""
    n, q, c = np.asarray(n, float), np.asarray(q, float), np.asarray(cost, float)
    return float(alpha * np.dot(c, n) - beta * np.dot(q ** gamma, np.log1p(n)))


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


def _allocation_scalars(budget, alpha, beta, gamma):
    return (_scalar(budget, "budget", lo=0.0, lo_open=True), _scalar(alpha, "alpha", lo=0.0),
            _scalar(beta, "beta", lo=0.0, lo_open=True), _scalar(gamma, "gamma", lo=0.0))


def _allocation_inputs(q, cost, budget, alpha, beta, gamma):
    q = _scores(q)
    c = _vector(cost, "cost", positive=True, allow_scalar_len=q.size)
    _same_length(q, c, "q", "cost")
    budget, alpha, beta, gamma = _allocation_scalars(budget, alpha, beta, gamma)
    return q, c, budget, alpha, beta, gamma, _benefit_weights(q, beta, gamma)


def _kernel_arrays(x, y, *, scalar_second: bool = False):
    """Two float64 vectors of one length for a `breakpoints` kernel, or None if the shapes are
    wrong (the Python validators then say how); the kernels check the values."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if b.ndim == 0 and scalar_second:
        b = np.full(a.shape, float(b))
    if a.ndim != 1 or b.shape != a.shape:
        return None
    return a, b


def _benefit_weights(q: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """w_k = β q_k^γ (Eq 12), checked to have a finite, positive sum."""
    with np.errstate(over="ignore"):                      # checked just below
        w = beta * q ** gamma
    total = float(w.sum())
    if not math.isfinite(total):
        raise ValueError("gamma: beta * q**gamma overflows; use a smaller gamma")
    if not total > 0:
        raise ValueError("q: beta * q**gamma is zero everywhere (no layer has any benefit)")
    return w


def _spend(lam: float, w: np.ndarray, c: np.ndarray) -> float:
    """Σ_k c_k n_k(μ) with λ = α + μ: c_k n_k = max(0, w_k/λ − c_k)  (Eq 13)."""
    return float(np.maximum(w * (1.0 / lam) - c, 0.0).sum())


def _rounds(lo: float, hi: float, tol: float, m: int) -> int:
    """Multisection rounds to shrink [lo, hi] to width ≤ tol·lo (each round divides by m+1)."""
    if hi - lo <= tol * lo:
        return 0
    return int(math.ceil(math.log((hi - lo) / (tol * lo)) / math.log(m + 1)))


_FRACTIONS: dict[int, np.ndarray] = {}


def _multisection(f_grid, f_point, level, lo, hi, tol, K):
    """Largest x in [lo, hi] (to relative precision tol) with f(x) ≤ level, f nondecreasing.

    Vectorised bisection ("multisection"): each round evaluates f at m evenly spaced points at
    once (one (m, K) numpy pass, `f_grid(grid, buffer)`) and keeps the sub-interval where f
    crosses `level`, so the bracket shrinks by m+1 per round; m = 1 is plain bisection
    (`f_point`, large K). The number of rounds is fixed in advance by `tol`. Same O(K log 1/ε)
    work up to a constant, without the Python overhead of ~40 tiny steps at small K. Returns
    (lo, hi, rounds): f(lo) ≤ level < f(hi) is kept throughout (assuming it held on entry).
    """
    m = max(1, min(63, _GRID_CELLS // K))
    r = _rounds(lo, hi, tol, m)
    if m == 1:
        for _ in range(r):
            mid = 0.5 * (lo + hi)
            if f_point(mid) <= level:
                lo = mid
            else:
                hi = mid
        return lo, hi, r
    frac = _FRACTIONS.get(m)
    if frac is None:
        frac = _FRACTIONS[m] = np.arange(1, m + 1) / (m + 1.0)
    buf = np.empty((m, K))
    for _ in range(r):
        grid = frac * (hi - lo) + lo
        j = int(np.count_nonzero(f_grid(grid, buf) <= level))   # first j points still at/under level
        if j:
            lo = float(grid[j - 1])
        if j < m:
            hi = float(grid[j])
    return lo, hi, r


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

    t_lo, _, r = _multisection(spend_grid, spend_point, budget, 1.0 / lam_hi, 1.0 / lam_lo, tol, w.size)
    return 1.0 / t_lo, r


def allocate(q, cost, budget, *, alpha=1.0, beta=1.0, gamma=0.5, tol=1e-12,
             method="exact") -> AllocationResult:
    """Solve the allocation program (Eq 11) in closed form (Eq 12/13, Theorem 2).

        minimise Σ_k α c_k n_k − β Σ_k q_k^γ log(1 + n_k)   s.t.  Σ_k c_k n_k ≤ B,  n ≥ 0

    n_k(μ) = max(0, β q_k^γ / ((α + μ) c_k) − 1); μ = 0 if that fits the budget, else the unique
    μ > 0 spending exactly B. `method="bisection"`: bracket [0, max_k β q_k^γ / c_k − α] of §3.2
    (its lower end raised to the valid bound α+μ ≥ Σw/(B+Σc) so that α = 0 works), a fixed
    number of steps giving relative precision `tol` on α+μ (hence on 1+n_k); n is returned at the
    feasible end of the bracket. `method="exact"` (default): sorted breakpoints, O(K log K), no
    tolerance, and faster than bisection at every K from 32 to 10⁶ (bench/bench_programs.py).
    `cost` may be a scalar (equal costs). q need not sum to one (its scale folds into β).
    """
    method = _check_method(method)
    tol = _check_tol(tol)
    if method == "exact":                   # fast path: the kernels check everything, see below
        arrays = _kernel_arrays(q, cost, scalar_second=True)
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
        _allocation_inputs(q, cost, budget, alpha, beta, gamma)       # raises, naming the rule
        raise ValueError("q, cost: beta * q**gamma / cost is not finite")
    q, c, budget, alpha, beta, gamma, w = _allocation_inputs(q, cost, budget, alpha, beta, gamma)
    iters = 0
    if alpha > 0 and _spend(alpha, w, c) <= budget:          # μ = 0: unconstrained optimum fits
        lam = alpha
    else:
        hi = float(np.max(w / c))                            # all n_k = 0 at λ = max w/c  (§3.2)
        lo = max(alpha, float(w.sum() / (budget + c.sum())))  # spend ≥ Σw/λ − Σc ≥ B below this
        lam, iters = _solve_lambda_bisection(w, c, budget, lo, hi, tol) if lo < hi else (hi, 0)
    n = w / (lam * c)                                        # Eq 13: max(0, w/((α+μ)c) − 1)
    n -= 1.0
    np.maximum(n, 0.0, out=n)
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
    q, c, budget, alpha, beta, gamma, w = _allocation_inputs(q, cost, budget, alpha, beta, gamma)
    if isinstance(n_min, (int, np.integer)):
        nmin = np.full(q.size, int(n_min), dtype=np.int64)
    else:
        nmin_f = _vector(n_min, "n_min", allow_scalar_len=q.size)
        _same_length(q, nmin_f, "q", "n_min")
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
    if units > _MAX_UNITS:
        raise ValueError(f"budget: allows ~{units:.3g} units, more than the greedy's limit of {_MAX_UNITS:.0g} "
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


# --------------------------------------------------------------------------- pruning (Eq 14–15)
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
        return pruning_objective(self.rho, **_pick(self.problem, "q", "sizes", "bits", "lam", "gamma"))

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
    - primal: box violations / ρ_max; target: max(0, s − ΣNρ/ΣN) (|·| for equality)
    - dual (inequality only): max(0, −ν)/(b+|ν|)
    - complementary slackness (inequality only): ν/(b+ν) · |ΣNρ/ΣN − s|
    `tau` (= b + ν) may be passed when known to more digits than b + ν recomputes.
    """
    rho, q, N = np.asarray(rho, float), np.asarray(q, float), np.asarray(sizes, float)
    a = N / (2.0 * lam * q ** gamma)
    closed = np.clip((bits + nu if tau is None else tau) * a, 0.0, rho_max)
    stat = float(np.max(np.abs(rho - closed))) / rho_max
    box = max(float(np.max(-rho)), float(np.max(rho - rho_max)), 0.0) / rho_max
    frac = float(np.dot(N, rho) / N.sum())
    gap = abs(frac - target) if equality else max(0.0, target - frac)
    scale = bits + abs(nu) if bits + abs(nu) > 0 else 1.0
    dual = 0.0 if equality else max(0.0, -nu) / scale
    slack = 0.0 if equality else abs(nu) / scale * abs(frac - target)
    return max(stat, box, gap, dual, slack)


def _frac(tau: float, a: np.ndarray, N: np.ndarray, rho_max: float, total: float) -> float:
    """Σ N_k ρ_k(ν) / Σ N with τ = b + ν ≥ 0:  ρ_k = min(τ a_k, ρ_max)  (Eq 15)."""
    return float(np.dot(N, np.minimum(tau * a, rho_max))) / total


def _pruning_inputs(q, sizes, lam, gamma):
    """(q, N, a, ΣN) with a_k = N_k / (2λ q_k^γ), so that ρ_k(τ) = min(τ a_k, ρ_max) (Eq 15)."""
    q = _scores(q)
    N = _vector(sizes, "sizes", positive=True)
    _same_length(q, N, "q", "sizes")
    if gamma > 0 and not q.min() > 0:
        raise ValueError("q: every q_k must be > 0 when gamma > 0 (a zero score removes the "
                         "degradation penalty and the program is no longer strongly convex)")
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
    _, t_hi, r = _multisection(frac_grid, frac_point, np.nextafter(target, -np.inf), lo, hi, tol, a.size)
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
    `method="bisection"`: bracket of §3.2 on τ = b + ν, fixed number of steps for relative
    precision `tol`, ρ returned at the end that meets the target. `method="exact"` (default):
    sorted breakpoints (`mdlcap.theory.breakpoints`), no tolerance, faster at every K we measured.
    Strong convexity (Theorem 3) needs q_k > 0 when γ > 0, so zeros are rejected.
    """
    method = _check_method(method)
    tol = _check_tol(tol)
    equality = bool(equality)
    if method == "exact":                   # fast path: the kernels check everything, see below
        arrays = _kernel_arrays(q, sizes)
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
                return _pruning_result(rho, tau, "exact", 0, qa, Na, *scalars, equality)
        _pruning_scalars(target, bits, lam, gamma, rho_max)              # raise, naming the rule
        _pruning_inputs(q, sizes, float(lam), float(gamma))
        raise ValueError("q, sizes: sizes / q**gamma is not finite")
    target, bits, lam, gamma, rho_max = _pruning_scalars(target, bits, lam, gamma, rho_max)
    q, N, a, total = _pruning_inputs(q, sizes, lam, gamma)
    iters = 0
    if target == 0.0 and equality:
        tau = 0.0                                            # ρ ≡ 0; ν = −b is a valid multiplier
    elif not equality and _frac(bits, a, N, rho_max, total) >= target:
        tau = bits                                           # ν = 0: unconstrained optimum meets s
    else:
        hi = float(np.max(rho_max / a))                      # every layer at ρ_max beyond this (§3.2)
        lo = max(0.0 if equality else bits, target * total / float(np.dot(N, a)))
        tau, iters = _solve_tau_bisection(a, N, rho_max, target, total, min(lo, hi), hi, tol)
    if not equality:
        tau = max(tau, bits)                                 # ν ≥ 0 (rounding at target = ρ_max)
    rho = np.clip(tau * a, 0.0, rho_max)                     # Eq 15
    return _pruning_result(rho, tau, "bisection", iters, q, N, target, bits, lam, gamma, rho_max, equality)


def _pruning_scalars(target, bits, lam, gamma, rho_max):
    bits = _scalar(bits, "bits", lo=0.0)
    lam = _scalar(lam, "lam", lo=0.0, lo_open=True)
    gamma = _scalar(gamma, "gamma", lo=0.0)
    rho_max = _scalar(rho_max, "rho_max", lo=0.0, lo_open=True, hi=1.0)
    target = _scalar(target, "target", lo=0.0, hi=1.0)
    if target > rho_max:
        raise ValueError(f"target: {target:g} > rho_max {rho_max:g} is infeasible "
                         "(even pruning every layer at rho_max misses it)")
    return target, bits, lam, gamma, rho_max


def _pruning_result(rho, tau, method, iters, q, N, target, bits, lam, gamma, rho_max, equality) -> PruningResult:
    nu = tau - bits
    active = (nu != 0.0) if not equality else target > 0
    return PruningResult(rho=rho, nu=nu, active=bool(active), method=method, iterations=iters, tau=tau,
                         problem=dict(q=q, sizes=N, target=target, bits=bits, lam=lam, gamma=gamma,
                                      rho_max=rho_max, equality=equality))
