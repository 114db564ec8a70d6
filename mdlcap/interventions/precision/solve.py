"""Bit-allocation programs for the precision study (METHOD.md §5, proposal 003 §2.3–2.4).

Every program here has the same shape: layer i takes one of K bit widths, choice k costs
`cost[i, k]` (bit-operations p·FLOPs_i, or memory p·params_i) and contributes `err[i, k]`
to an additive error functional. CAQ's composed error is additive in this sense:

    Φ(p) = (Π_i L_i) ε_0 + Σ_i ε_i(p_i) Π_{j>i} L_j,   ε_i(p_i) = L_i ‖x_i‖ 2^{-p_i}   (prop. §2.3)

so Φ(p) ≤ ε_target  ⟺  Σ_i a_i 2^{-p_i} ≤ ε_target − (Π L) ε_0  with
a_i = L_i ‖x_i‖ Π_{j>i} L_j fixed numbers. The sensitivity baselines (gradient norm, HAWQ
trace) have the same form with err[i, k] = s_i ‖Q_k(W_i) − W_i‖². All are multiple-choice
knapsacks, solved EXACTLY by `pareto_front` below.

  pareto_front(cost, err, allowed)      all non-dominated (cost, err) allocations (exact DP)
  allocate_exact(cost, err, budget)     min Σ cost  s.t. Σ err ≤ budget         (CAQ)
  allocate_min_error(cost, err, cap)    min Σ err   s.t. Σ cost ≤ cap           (baselines)
  caq_tables(a, flops, bits, p_star)    CAQ's cost/err/allowed tables
  relax_kkt / relax_pgd                 the continuous relaxation (exact KKT / the proposal's
                                        projected gradient), then `round_up` to the bit grid
  allocate_milp_cvxpy                   the same integer program through cvxpy + HiGHS (check)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BIT_CHOICES = (4, 8, 16, 32)


class Infeasible(ValueError):
    """No allocation on the bit grid meets the error budget (even the widest allowed bits)."""


def _tables(cost, err, allowed=None):
    cost = np.asarray(cost, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    if cost.ndim != 2 or cost.shape != err.shape:
        raise ValueError(f"cost/err: must be 2-D tables of equal shape (layers × choices), got {cost.shape} and {err.shape}")
    if not (np.all(np.isfinite(cost)) and np.all(np.isfinite(err))):
        raise ValueError("cost/err: must be finite")
    if np.any(cost < 0) or np.any(err < 0):
        raise ValueError("cost/err: must be non-negative")
    if allowed is None:
        allowed = np.ones(cost.shape, dtype=bool)
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != cost.shape:
        raise ValueError(f"allowed: must have shape {cost.shape}, got {allowed.shape}")
    if not allowed.any(axis=1).all():
        bad = int(np.flatnonzero(~allowed.any(axis=1))[0])
        raise Infeasible(f"allowed: layer {bad} has no admissible bit width (its floor p* exceeds every choice)")
    return cost, err, allowed


@dataclass
class Front:
    """Non-dominated allocations, sorted by cost ascending (so err strictly descending)."""
    cost: np.ndarray      # (m,)
    err: np.ndarray       # (m,)
    choice: np.ndarray    # (m, L) int: index into the bit grid per layer

    def __len__(self) -> int:
        return len(self.cost)


def pareto_front(cost, err, allowed=None) -> Front:
    """Exact Pareto front of the multiple-choice knapsack, layer by layer.

    Exactness: call a partial allocation of layers 1..i dominated if another has cost ≤ and
    err ≤ (one strictly). If an optimal allocation p* had a dominated prefix P, replacing P by
    its dominator P' (same suffix) gives total cost ≤ and total err ≤, so the new allocation is
    feasible for any err budget p* met and costs no more: an optimum exists among completions
    of non-dominated prefixes. Induction over layers: the set kept after layer L contains, for
    every budget, an optimal allocation (for min cost s.t. err ≤ budget, and for min err
    s.t. cost ≤ cap). Pruning only discards dominated prefixes, so nothing optimal is lost.
    The front has at most min(K^L, #distinct cost sums) points; with costs p·FLOPs it stays small.
    """
    cost, err, allowed = _tables(cost, err, allowed)
    L, K = cost.shape
    fc = np.zeros(1)
    fe = np.zeros(1)
    fch = np.zeros((1, 0), dtype=np.int16)
    for i in range(L):
        ks = np.flatnonzero(allowed[i])
        c = (fc[:, None] + cost[i, ks][None, :]).ravel()
        e = (fe[:, None] + err[i, ks][None, :]).ravel()
        parent = np.repeat(np.arange(len(fc)), len(ks))
        kk = np.tile(ks, len(fc))
        order = np.lexsort((e, c))            # by cost, then err
        c, e, parent, kk = c[order], e[order], parent[order], kk[order]
        # keep a point only if its err is strictly below every cheaper-or-equal point's err
        prev_min = np.minimum.accumulate(np.concatenate([[np.inf], e[:-1]]))
        keep = e < prev_min
        fc, fe = c[keep], e[keep]
        fch = np.concatenate([fch[parent[keep]], kk[keep, None].astype(np.int16)], axis=1)
    return Front(fc, fe, fch)


@dataclass
class Allocation:
    choice: np.ndarray    # (L,) index into the bit grid
    cost: float
    err: float


def allocate_exact(cost, err, budget: float, allowed=None, front: Front | None = None) -> Allocation:
    """min Σ_i cost[i, k_i]  s.t.  Σ_i err[i, k_i] ≤ budget  (exact; see `pareto_front`)."""
    if not np.isfinite(budget):
        raise ValueError(f"budget: must be finite, got {budget}")
    f = front if front is not None else pareto_front(cost, err, allowed)
    ok = np.flatnonzero(f.err <= budget)
    if len(ok) == 0:
        raise Infeasible(f"budget: error budget {budget:.3g} is below the smallest achievable error {f.err.min():.3g}")
    j = ok[0]                                  # cheapest feasible (front sorted by cost)
    return Allocation(f.choice[j].astype(int), float(f.cost[j]), float(f.err[j]))


def allocate_min_error(cost, err, cap: float, allowed=None, front: Front | None = None) -> Allocation:
    """min Σ_i err[i, k_i]  s.t.  Σ_i cost[i, k_i] ≤ cap  (exact; see `pareto_front`)."""
    f = front if front is not None else pareto_front(cost, err, allowed)
    ok = np.flatnonzero(f.cost <= cap * (1 + 1e-12))
    if len(ok) == 0:
        raise Infeasible(f"cap: cost cap {cap:.3g} is below the cheapest allocation {f.cost.min():.3g}")
    j = ok[-1]                                 # most expensive affordable = least error
    return Allocation(f.choice[j].astype(int), float(f.cost[j]), float(f.err[j]))


# --------------------------------------------------------------------------- CAQ
def composition_weights(lipschitz, x_norm) -> np.ndarray:
    """a_i = L_i ‖x_i‖ Π_{j>i} L_j: Φ = (Π L) ε_0 + Σ_i a_i 2^{-p_i}   (prop. §2.3)."""
    Lc = np.asarray(lipschitz, dtype=np.float64)
    xn = np.asarray(x_norm, dtype=np.float64)
    if Lc.shape != xn.shape or Lc.ndim != 1:
        raise ValueError("lipschitz/x_norm: must be 1-D arrays of equal length")
    if np.any(Lc <= 0) or np.any(xn < 0) or not np.all(np.isfinite(Lc * xn)):
        raise ValueError("lipschitz: must be finite and > 0; x_norm: finite and >= 0")
    downstream = np.concatenate([np.cumprod(Lc[::-1])[::-1][1:], [1.0]])   # Π_{j>i} L_j
    return Lc * xn * downstream


def composed_error(lipschitz, x_norm, bits, eps0: float = 0.0) -> float:
    """Φ(p) = (Π L_i) ε_0 + Σ_i L_i ‖x_i‖ 2^{-p_i} Π_{j>i} L_j   (prop. §2.3)."""
    a = composition_weights(lipschitz, x_norm)
    return float(np.prod(lipschitz) * eps0 + np.sum(a * np.exp2(-np.asarray(bits, dtype=np.float64))))


def precision_floor(kappa, diam, eps) -> np.ndarray:
    """p*_i = ½ log₂(κ_i diam(Ω_i)² / ε)   (prop. §2.2 / Alg. step 1d)."""
    kappa = np.asarray(kappa, dtype=np.float64)
    diam = np.asarray(diam, dtype=np.float64)
    if eps <= 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    with np.errstate(divide="ignore"):
        return 0.5 * np.log2(np.maximum(kappa * diam ** 2, 0.0) / eps)


def caq_tables(a, flops, bits=BIT_CHOICES, p_star=None):
    """cost[i,k] = bits_k FLOPs_i, err[i,k] = a_i 2^{-bits_k}, allowed = bits_k ≥ p*_i."""
    a = np.asarray(a, dtype=np.float64)
    flops = np.asarray(flops, dtype=np.float64)
    b = np.asarray(bits, dtype=np.float64)
    if np.any(flops <= 0):
        raise ValueError("flops: must be > 0 for every layer")
    cost = flops[:, None] * b[None, :]
    err = a[:, None] * np.exp2(-b)[None, :]
    allowed = np.ones_like(cost, dtype=bool) if p_star is None else b[None, :] >= np.asarray(p_star)[:, None] - 1e-9
    return cost, err, allowed


def round_up(p, bits=BIT_CHOICES) -> np.ndarray:
    """Smallest grid width ≥ p_i (keeps Φ ≤ target: every ε_i decreases in p_i); index array."""
    b = np.asarray(bits, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.searchsorted(b, p - 1e-9, side="left")
    return np.minimum(idx, len(b) - 1)


def _box(a, flops, budget, lo, hi):
    a = np.asarray(a, dtype=np.float64)
    flops = np.asarray(flops, dtype=np.float64)
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), a.shape).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), a.shape).copy()
    if budget <= 0:
        raise Infeasible(f"budget: error budget must be > 0 after the input term, got {budget:.3g}")
    if np.any(lo > hi):
        raise Infeasible("p_star: a floor exceeds the widest bit width")
    if np.sum(a * np.exp2(-hi)) > budget:
        raise Infeasible(f"budget: {budget:.3g} is unreachable even at the widest bits")
    return a, flops, lo, hi


def relax_kkt(a, flops, budget: float, lo, hi, tol: float = 1e-12) -> np.ndarray:
    """Exact optimum of the continuous relaxation  min F·p  s.t. Σ a_i 2^{-p_i} ≤ b, lo ≤ p ≤ hi.

    Convex (2^{-p} is convex); stationarity F_i = λ ln2 a_i 2^{-p_i} gives the water level
    p_i(λ) = clip(log₂(λ ln2 a_i / F_i), lo_i, hi_i), monotone in λ: bisection on log λ.
    """
    a, flops, lo, hi = _box(a, flops, budget, lo, hi)
    if np.sum(a * np.exp2(-lo)) <= budget:
        return lo
    pos = a > 0

    def p_of(loglam):
        p = lo.copy()
        p[pos] = np.clip((loglam + np.log(np.log(2) * a[pos] / flops[pos])) / np.log(2), lo[pos], hi[pos])
        return p

    g = lambda ll: np.sum(a * np.exp2(-p_of(ll))) - budget  # noqa: E731  decreasing in ll
    left, right = -50.0, 50.0
    while g(right) > 0:
        right *= 2
    while g(left) < 0:
        left *= 2
    for _ in range(200):
        mid = 0.5 * (left + right)
        if g(mid) > 0:
            left = mid
        else:
            right = mid
        if right - left < tol:
            break
    return p_of(right)


def relax_pgd(a, flops, budget: float, lo, hi, *, outer: int = 60, inner: int = 300,
              rho: float = 5.0, eta: float = 0.3, tol: float = 1e-10) -> np.ndarray:
    """The proposal's route: the log-transformed convex program by projected gradient.

    minimise F̂·p  s.t.  h(p) = log₂(Σ a_i 2^{-p_i}) − log₂ b ≤ 0,  lo ≤ p ≤ hi,
    with F̂ = F / ΣF. Augmented Lagrangian: inner projected-gradient steps (projection onto
    the box is a clip) on F̂·p + (ρ/2) max(0, h + λ/ρ)², outer multiplier update
    λ ← max(0, λ + ρ h). Each coordinate's step is divided by its own gradient scale
    F̂_i + ρ t w_i (a diagonal preconditioner): with raw steps, layers with few FLOPs move
    1000× slower than the rest and the iteration stalls far from the optimum (seen on MLP-4).
    The result may violate h ≤ 0 by a hair: `caq_relaxed` rounds up and repairs. Written by
    hand (a few lines; no library exposes this scheme) and checked against `relax_kkt`.
    """
    a, flops, lo, hi = _box(a, flops, budget, lo, hi)
    fh = flops / flops.sum()
    p = hi.copy()
    lam = 0.0
    lb = np.log2(budget)
    pos = a > 0
    la = np.where(pos, np.log2(np.where(pos, a, 1.0)), -np.inf)

    def h_w(p):
        z = la - p
        zm = z.max()
        w = np.exp2(z - zm)
        s = w.sum()
        return zm + np.log2(s) - lb, w / s                  # h and −∇h

    for _ in range(outer):
        for _ in range(inner):
            h, w = h_w(p)
            t = max(0.0, h + lam / rho)
            grad = fh - rho * t * w
            p_new = np.clip(p - eta * grad / (fh + rho * t * w), lo, hi)
            moved = np.max(np.abs(p_new - p))
            p = p_new
            if moved < tol:
                break
        h, _ = h_w(p)
        lam_new = max(0.0, lam + rho * h)
        if abs(lam_new - lam) < tol and moved < tol:
            break
        lam = lam_new
    return p


def repair(choice, cost, err, budget, allowed=None) -> np.ndarray:
    """Greedy: while Σ err > budget, raise the layer with the best err drop per added cost."""
    cost, err, allowed = _tables(cost, err, allowed)
    ch = np.asarray(choice).copy()
    rows = np.arange(len(ch))
    while err[rows, ch].sum() > budget:
        best, gain = None, -1.0
        for i in rows:
            for k in range(ch[i] + 1, cost.shape[1]):
                if not allowed[i, k]:
                    continue
                d_err = err[i, ch[i]] - err[i, k]
                d_cost = max(cost[i, k] - cost[i, ch[i]], 1e-300)
                if d_err / d_cost > gain:
                    best, gain = (i, k), d_err / d_cost
                break
        if best is None:
            raise Infeasible("budget: unreachable even at the widest allowed bits")
        ch[best[0]] = best[1]
    return ch


def caq_relaxed(a, flops, budget: float, bits=BIT_CHOICES, p_star=None, solver: str = "pgd") -> np.ndarray:
    """Proposal's allocation: continuous relaxation (PGD or exact KKT), rounded up to the grid,
    then greedy repair if the relaxed point was a hair infeasible. Returns grid indices."""
    b = np.asarray(bits, dtype=np.float64)
    lo = np.full(len(a), b.min()) if p_star is None else np.maximum(b.min(), np.asarray(p_star, dtype=np.float64))
    hi = np.full(len(a), b.max())
    p = (relax_pgd if solver == "pgd" else relax_kkt)(a, flops, budget, lo, hi)
    ch = round_up(p, bits)
    cost, err, allowed = caq_tables(a, flops, bits, p_star)
    return repair(ch, cost, err, budget, allowed)


# --------------------------------------------------------------------------- MDL bits (§2)
def mdl_bits(q, n_params, avg_bits: float, bits=BIT_CHOICES, *, alpha: float = 1.0, beta: float = 1.0,
             gamma: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The §2 allocation program with capacity = bits above the narrowest width.

    n_i = p_i − min(bits) from `mdlcap.theory.programs.allocate(q, c, B)` with c_i = params_i/Σparams
    (so Σ c_i n_i is the average extra bits per weight) and B = avg_bits − min(bits). The
    continuous p̂ is mapped to the grid by the EXACT projection (multiple-choice knapsack)
        min Σ_i c_i (log₂ p_i − log₂ p̂_i)²  s.t.  Σ_i c_i p_i ≤ avg_bits,
    i.e. the nearest grid allocation in log-bits that keeps the memory budget. Returns
    (grid indices, continuous p̂).
    """
    from mdlcap.theory import programs

    b = np.asarray(bits, dtype=np.float64)
    n_params = np.asarray(n_params, dtype=np.float64)
    c = n_params / n_params.sum()
    extra = avg_bits - b.min()
    if extra <= 0:
        p_hat = np.full(len(c), b.min())
    else:
        res = programs.allocate(np.asarray(q, dtype=np.float64), c, extra, alpha=alpha, beta=beta, gamma=gamma)
        p_hat = b.min() + np.asarray(res.n, dtype=np.float64)
    cost = c[:, None] * b[None, :]
    err = c[:, None] * (np.log2(b)[None, :] - np.log2(np.clip(p_hat, b.min(), None))[:, None]) ** 2
    return allocate_min_error(cost, err, avg_bits).choice, p_hat


# --------------------------------------------------------------------------- checks
def allocate_milp_cvxpy(cost, err, budget: float, allowed=None, solver: str = "HIGHS") -> tuple[np.ndarray, float]:
    """The same integer program as a MILP in cvxpy (one-hot x_ik): an independent check."""
    import cvxpy as cp

    cost, err, allowed = _tables(cost, err, allowed)
    L, K = cost.shape
    x = cp.Variable((L, K), boolean=True)
    cons = [cp.sum(x, axis=1) == 1, cp.sum(cp.multiply(err, x)) <= budget]
    if not allowed.all():
        cons.append(x[~allowed] == 0)
    prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(cost / cost.max(), x))), cons)
    prob.solve(solver=solver, mip_rel_gap=0.0) if solver == "HIGHS" else prob.solve(solver=solver)
    if x.value is None:
        raise Infeasible(f"budget: MILP reports {prob.status}")
    ch = np.argmax(x.value, axis=1)
    return ch, float(cost[np.arange(L), ch].sum())
