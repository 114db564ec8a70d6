"""One program that allocates and prunes under a single description-length budget (paper
Appendix G ii; METHOD.md §7.1).

    j = joint(q, cost, sizes, budget)                    # exact, sorted breakpoints, O(K log K)
    z = joint_integer(q, cost, sizes, budget)            # integer n_k (exact for equal costs)

    minimise   − β Σ_k q_k^γ log(1 + n_k)  +  λ Σ_k q_k^γ ρ_k²
    subject to Σ_k c_k n_k  +  b Σ_k N_k (1 − ρ_k)  ≤  B,   n_k ≥ 0,   0 ≤ ρ_k ≤ ρ_max

The utility is unbounded in n, so the budget binds and its dual μ is > 0. Stationarity gives
both closed forms with the one μ (w_k = β q_k^γ, p_k = λ q_k^γ):

    n_k(μ) = max(0, w_k/(μ c_k) − 1)          off for μ ≥ r_k = w_k/c_k
    ρ_k(μ) = clip(μ b N_k/(2 p_k), 0, ρ_max)  at ρ_max for μ ≥ t_k = 2 p_k ρ_max/(b N_k)

and the spend S(μ) is continuous and strictly decreasing from +∞ (μ → 0) to the floor
b ΣN (1 − ρ_max) (μ ≥ max(r, t)). Between consecutive breakpoints S(μ) = a/μ + d − e μ, so the
root of S = B is one stable quadratic root on the piece that holds it. A score q_k = 0 (γ > 0)
gives n_k = 0 and, with no penalty left, ρ_k = ρ_max. Written by hand for the reasons
`mdlcap.theory.allocation` gives; `mdlcap.theory.reference.joint_cvxpy` is the check.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mdlcap.theory.validate import check_tol, same_length, scalar, scores, vector

__all__ = ["JointResult", "JointIntegerResult", "joint", "joint_integer", "joint_objective", "joint_kkt",
           "joint_spend", "joint_floor"]

MAX_UNITS = 1e7        # joint_integer places units one at a time


def joint_objective(n, rho, q, *, beta=1.0, lam=2.0, gamma=1.0) -> float:
    """− β Σ q^γ log(1 + n) + λ Σ q^γ ρ²."""
    n, rho, qg = np.asarray(n, float), np.asarray(rho, float), np.asarray(q, float) ** gamma
    return float(-beta * np.dot(qg, np.log1p(n)) + lam * np.dot(qg, rho ** 2))


def joint_spend(n, rho, cost, sizes, *, bits=16.0) -> float:
    """Σ c n + b Σ N (1 − ρ): the description length the budget caps."""
    return float(np.dot(cost, n) + bits * np.dot(sizes, 1.0 - np.asarray(rho, float)))


def joint_floor(sizes, *, bits=16.0, rho_max=1.0) -> float:
    """b Σ N (1 − ρ_max): the least any allocation can spend (n = 0, ρ = ρ_max)."""
    return float(bits * np.sum(sizes) * (1.0 - rho_max))


def ratios(mu: float, p: np.ndarray, bN: np.ndarray, rho_max: float) -> np.ndarray:
    """ρ_k(μ) = clip(μ b N_k / (2 p_k), 0, ρ_max); a free coordinate (p_k = 0) goes to ρ_max when
    pruning it saves budget (μ b N_k > 0) and stays at 0 otherwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(p > 0, mu * bN / (2.0 * np.where(p > 0, p, 1.0)), np.where(mu * bN > 0, np.inf, 0.0))
    return np.clip(r, 0.0, rho_max)


def joint_kkt(n, rho, mu, q, cost, sizes, budget, *, beta=1.0, lam=2.0, gamma=1.0, bits=16.0,
              rho_max=1.0) -> float:
    """Largest scale-free violation of the KKT conditions at (n, ρ, μ).

    - stationarity (natural residuals): |n_k − max(0, w_k/(μc_k) − 1)|/(1+n_k) and
      |ρ_k − clip(μbN_k/(2p_k), 0, ρ_max)|/ρ_max
    - primal: −n_k, box violations/ρ_max, max(0, S − B)/B;  dual: μ > 0 (1 if not)
    - complementary slackness (the budget binds): |B − S|/B
    """
    n, rho = np.asarray(n, float), np.asarray(rho, float)
    c, N, qg = np.asarray(cost, float), np.asarray(sizes, float), np.asarray(q, float) ** gamma
    if not mu > 0:
        return 1.0
    stat_n = float(np.max(np.abs(n - np.maximum(beta * qg / (mu * c) - 1.0, 0.0)) / (1.0 + np.abs(n))))
    stat_r = float(np.max(np.abs(rho - ratios(mu, lam * qg, bits * N, rho_max)))) / rho_max
    spend = joint_spend(n, rho, c, N, bits=bits)
    primal = max(-float(n.min()), float(np.max(-rho)) / rho_max, float(np.max(rho - rho_max)) / rho_max,
                 (spend - budget) / budget, 0.0)
    return max(stat_n, stat_r, primal, abs(budget - spend) / budget)


@dataclass
class JointResult:
    """Capacities n, pruning ratios ρ, the budget's dual μ (> 0) and checks.

    `objective`, `spend` and `kkt_residual` (see joint_kkt) are computed on first access.
    `at_floor` is True when B is the floor b ΣN (1 − ρ_max): the feasible set is the one point
    n = 0, ρ = ρ_max, and μ is the smallest valid multiplier, max(r, t).
    """
    n: np.ndarray
    rho: np.ndarray
    mu: float
    at_floor: bool = False
    problem: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def objective(self) -> float:
        return joint_objective(self.n, self.rho, **{k: self.problem[k] for k in ("q", "beta", "lam", "gamma")})

    @cached_property
    def spend(self) -> float:
        return joint_spend(self.n, self.rho, self.problem["cost"], self.problem["sizes"], bits=self.problem["bits"])

    @cached_property
    def kkt_residual(self) -> float:
        return joint_kkt(self.n, self.rho, self.mu, **self.problem)


def _inputs(q, cost, sizes, budget, beta, lam, gamma, bits, rho_max, tol):
    q = scores(q)
    c = vector(cost, "cost", positive=True, allow_scalar_len=q.size)
    N = vector(sizes, "sizes", positive=True, allow_scalar_len=q.size)
    same_length(q, c, "q", "cost")
    same_length(q, N, "q", "sizes")
    budget = scalar(budget, "budget", lo=0.0, lo_open=True)
    beta = scalar(beta, "beta", lo=0.0, lo_open=True)
    lam = scalar(lam, "lam", lo=0.0, lo_open=True)
    gamma = scalar(gamma, "gamma", lo=0.0)
    bits = scalar(bits, "bits", lo=0.0)
    rho_max = scalar(rho_max, "rho_max", lo=0.0, lo_open=True, hi=1.0)
    tol = check_tol(tol)
    with np.errstate(over="ignore"):
        qg = q ** gamma
    if not (math.isfinite(qg.sum()) and qg.sum() > 0):
        raise ValueError("gamma: q**gamma overflows or vanishes everywhere; use a smaller gamma")
    floor = joint_floor(N, bits=bits, rho_max=rho_max)
    if budget < floor * (1.0 - tol):
        raise ValueError(f"budget: {budget:g} is below the floor b*sum(N)*(1 - rho_max) = {floor:g} "
                         "(even n = 0 with every block pruned at rho_max spends more): infeasible")
    return q, c, N, budget, beta, lam, gamma, bits, rho_max, qg, floor


def _breakpoints(w, c, p, bN, rho_max):
    """The 2K breakpoints (r_k, then t_k where b N_k > 0) and their per-layer terms."""
    r = w / c
    keep = bN > 0                                       # with b = 0 the ρ terms never move the spend
    pk, bk = p[keep], bN[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = 2.0 * pk * rho_max / bk
        e = np.where(pk > 0, bk * bk / (2.0 * np.where(pk > 0, pk, 1.0)), 0.0)   # ρ = μ b N/(2p)
    return r, t, e, bk


def solve_mu(w, c, p, bN, rho_max, budget):
    """μ* > 0 with S(μ*) = B (B above the floor), exactly, by sorted breakpoints.

    Sorted position j: every breakpoint at or after j is still ahead. There
        S(μ) = a_j/μ − C_j + U_j + (1 − ρ_max) L_j − E_j μ,
    a, C: suffix sums of w, c over r-breakpoints; U, E: suffix sums of b N, (b N)²/(2p) over
    t-breakpoints; L: prefix sum of b N over passed t-breakpoints (all sums of positive terms,
    no cancelling running totals). S at each breakpoint is then vectorised; the first j with
    S(μ_j) ≤ B holds the root on (μ_{j−1}, μ_j], where e μ² + (B − d) μ − a = 0.
    """
    r, t, e, bk = _breakpoints(w, c, p, bN, rho_max)
    K = r.size
    keys = np.concatenate([r, t])
    order = np.argsort(keys, kind="stable")
    m = keys[order]
    is_r = order < K
    zero = np.zeros(keys.size)
    wa = np.where(is_r, np.concatenate([w, zero[K:]])[order], 0.0)
    ca = np.where(is_r, np.concatenate([c, zero[K:]])[order], 0.0)
    ea = np.where(is_r, 0.0, np.concatenate([zero[:K], e])[order])
    na = np.where(is_r, 0.0, np.concatenate([zero[:K], bk])[order])

    def suffix(x):
        return np.cumsum(x[::-1])[::-1]

    a, C, E, U = suffix(wa), suffix(ca), suffix(ea), suffix(na)
    L = np.concatenate([[0.0], np.cumsum(na)[:-1]])
    d = U + (1.0 - rho_max) * L - C
    with np.errstate(divide="ignore", invalid="ignore"):
        S = np.where(m > 0, a / m, np.inf) + d - E * m
    hit = np.flatnonzero(S <= budget)
    j = int(hit[0]) if hit.size else keys.size - 1
    aj, ej, h = a[j], E[j], budget - d[j]
    disc = math.sqrt(h * h + 4.0 * ej * aj)
    if h >= 0:                                          # the two stable forms of the positive root
        mu = 2.0 * aj / (h + disc) if h + disc > 0 else m[j]
    else:
        mu = (disc - h) / (2.0 * ej) if ej > 0 else m[j]
    lo = m[j - 1] if j > 0 else 0.0
    return float(min(max(mu, lo), m[j]))


def joint(q, cost, sizes, budget, *, beta=1.0, lam=2.0, gamma=1.0, bits=16.0, rho_max=1.0,
          tol=1e-12) -> JointResult:
    """Solve the joint allocation-and-pruning program exactly (METHOD.md §7.1).

    μ is the unique root of the spend S(μ) = B, found by sorting the 2K breakpoints (O(K log K),
    no iteration tolerance). `cost` and `sizes` may be scalars. A budget below the floor
    b ΣN (1 − ρ_max) is infeasible (ValueError naming `budget`); a budget at the floor (within
    relative `tol`, i.e. below it only by rounding) has the single feasible point n = 0,
    ρ = ρ_max, returned with `at_floor=True` and μ = max(r, t), the smallest valid multiplier.
    """
    q, c, N, budget, beta, lam, gamma, bits, rho_max, qg, floor = _inputs(
        q, cost, sizes, budget, beta, lam, gamma, bits, rho_max, tol)
    w, p, bN = beta * qg, lam * qg, bits * N
    problem = dict(q=q, cost=c, sizes=N, budget=budget, beta=beta, lam=lam, gamma=gamma, bits=bits,
                   rho_max=rho_max)
    if budget <= floor:
        r, t, _, _ = _breakpoints(w, c, p, bN, rho_max)
        return JointResult(n=np.zeros(q.size), rho=np.full(q.size, rho_max), at_floor=True,
                           mu=float(max(r.max(), t.max(initial=0.0))), problem=problem)
    mu = solve_mu(w, c, p, bN, rho_max, budget)
    n = np.maximum(w / (mu * c) - 1.0, 0.0)
    return JointResult(n=n, rho=ratios(mu, p, bN, rho_max), mu=mu, problem=problem)


# --------------------------------------------------------------------------- integer counts
class RhoPart:
    """G(R) = min Σ p ρ² s.t. b ΣN (1 − ρ) ≤ R, 0 ≤ ρ ≤ ρ_max: the pruning half given the
    budget R left after the capacities. Sorted once (O(K log K)); each query is O(log K): on a
    piece the kept bits are U + (1 − ρ_max) L − E μ (linear) and G = E μ²/2 + ρ_max² P."""

    def __init__(self, p, bN, rho_max):
        self.p, self.bN, self.rho_max = p, bN, rho_max
        _, t, e, bk = _breakpoints(np.zeros(0), np.ones(0), p, bN, rho_max)
        pk = p[bN > 0]
        order = np.argsort(t, kind="stable")
        self.t, self.total = t[order], float(bk.sum())
        self.E = np.cumsum(e[order][::-1])[::-1]
        self.U = np.cumsum(bk[order][::-1])[::-1]
        self.L = np.concatenate([[0.0], np.cumsum(bk[order])[:-1]])
        self.P = np.concatenate([[0.0], np.cumsum(pk[order])[:-1]])
        self.neg_kept = self.E * self.t - self.U - (1.0 - rho_max) * self.L   # − kept bits, ascending
        self.pmax = float(pk.sum())

    def mu(self, R: float) -> tuple[float, float]:
        """(μ, G(R)) for R at or above the floor."""
        if self.t.size == 0 or R >= self.total:
            return 0.0, 0.0                                  # nothing needs pruning
        j = int(np.searchsorted(self.neg_kept, -R, side="left"))  # first breakpoint with kept ≤ R
        if j >= self.t.size:
            return float(self.t[-1]), self.rho_max ** 2 * self.pmax
        E, lo = self.E[j], (self.t[j - 1] if j > 0 else 0.0)
        mu = (self.U[j] + (1.0 - self.rho_max) * self.L[j] - R) / E if E > 0 else self.t[j]
        mu = min(max(mu, lo), self.t[j])
        return float(mu), float(0.5 * E * mu * mu + self.rho_max ** 2 * self.P[j])


@dataclass
class JointIntegerResult:
    """Integer capacities with the pruning ratios re-solved for them, and their optimality."""
    counts: np.ndarray           # int64
    rho: np.ndarray
    mu: float                    # dual of the budget in the pruning half at these counts (0: none binds)
    objective: float
    spend: float
    exact: bool                  # provably optimal (equal costs)
    lower_bound: float           # certified: the continuous program's optimum (a relaxation)

    @property
    def gap(self) -> float:
        """objective − lower_bound ≥ 0: how far from optimal the counts can at most be."""
        return self.objective - self.lower_bound


def joint_integer(q, cost, sizes, budget, *, beta=1.0, lam=2.0, gamma=1.0, bits=16.0, rho_max=1.0,
                  tol=1e-12) -> JointIntegerResult:
    """The joint program with integer n_k ≥ 0 (e.g. experts) and continuous ρ.

    For counts n the best ρ solves the pruning half with what is left, R = B − Σ c n, at value
    G(R) (`RhoPart`, exact); G is convex and decreasing in R. So the program is
        minimise H(n) = − Σ_k w_k log(1 + n_k) + G(B − Σ c n)  over integers with R ≥ floor.
    Greedy: add units in decreasing marginal log-gain per cost Δ_k/c_k, Δ_k = w_k log((n_k+2)/(n_k+1)),
    accepting a unit only if it lowers H (Δ_k > G(R − c_k) − G(R)) and fits (R − c_k ≥ floor);
    a layer whose next unit is refused is dropped (R only shrinks, so G's increments only grow).
    Exact for equal costs c: H then depends on the total m through −U(m) + G(B − c m), where
    U(m), the sum of the m largest increments (each layer's decrease), is concave and
    G(B − c m) convex, so H is discretely convex in m and the greedy stops at its minimum.
    Unequal costs are a knapsack: the result is feasible and `lower_bound` (the continuous
    optimum, `joint`) certifies it is within `gap` of the best. Work O(K log K + units · log K).
    """
    q, c, N, budget, beta, lam, gamma, bits, rho_max, qg, floor = _inputs(
        q, cost, sizes, budget, beta, lam, gamma, bits, rho_max, tol)
    w, p, bN = beta * qg, lam * qg, bits * N
    relaxed = joint(q, c, N, budget, beta=beta, lam=lam, gamma=gamma, bits=bits, rho_max=rho_max, tol=tol)
    free = max(budget - floor, 0.0)                          # what capacities may take
    units = free / float(c.min())
    if units > MAX_UNITS:
        raise ValueError(f"budget: allows ~{units:.3g} units, more than the greedy's limit of {MAX_UNITS:.0g} "
                         "(use joint() and round, or coarser cost units)")
    part = RhoPart(p, bN, rho_max)
    counts = np.zeros(q.size, dtype=np.int64)
    left = budget                                            # R = B − Σ c n
    _, g_now = part.mu(left)
    eps = 1e-12 * budget
    equal = bool(np.all(c == c[0]))
    heap = [(-w[k] * math.log(2.0) / c[k], k) for k in range(q.size) if w[k] > 0]
    heapq.heapify(heap)
    while heap:
        neg, k = heapq.heappop(heap)
        gain = -neg * c[k]
        if left - c[k] < floor - eps:                        # does not fit
            if equal:
                break
            continue
        _, g_next = part.mu(left - c[k])
        if not gain > g_next - g_now:                        # would not lower H
            if equal:
                break
            continue
        counts[k] += 1
        left -= c[k]
        g_now = g_next
        n_k = counts[k]
        heapq.heappush(heap, (-w[k] * math.log((n_k + 2.0) / (n_k + 1.0)) / c[k], k))
    mu, _ = part.mu(max(left, floor))
    rho = ratios(mu, p, bN, rho_max)
    if mu == 0.0 and left < part.total:                      # only penalty-free layers prune, at no cost
        free_bits = bN[(p == 0) & (bN > 0)].sum()
        rho[(p == 0) & (bN > 0)] = min(rho_max, (part.total - left) / free_bits)
    n = counts.astype(float)
    return JointIntegerResult(counts=counts, rho=rho, mu=mu,
                              objective=joint_objective(n, rho, q, beta=beta, lam=lam, gamma=gamma),
                              spend=joint_spend(n, rho, c, N, bits=bits), exact=equal,
                              lower_bound=relaxed.objective)
