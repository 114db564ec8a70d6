"""The closed-form programs (mdlcap.theory.programs) against their KKT conditions, cvxpy and brute force.

KKT conditions are re-derived here from the gradients of Eq 11 and Eq 14 (not from the
package's own `*_kkt` helpers), so a wrong closed form cannot pass by agreeing with itself.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdlcap.theory import breakpoints
from mdlcap.theory import programs as P

PROPERTY = settings(max_examples=1000, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- strategies
@st.composite
def allocation_instances(draw):
    K = draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.full(K, draw(st.sampled_from([0.1, 0.5, 1.0, 5.0]))))
    if K > 2 and draw(st.booleans()):
        q[rng.integers(K)] = 0.0                                # a layer with no gain at all
        if not q.any():
            q[0] = 1.0
        q /= q.sum()
    equal = draw(st.booleans())
    cost = np.full(K, rng.uniform(0.01, 2.0)) if equal else rng.uniform(0.001, 3.0, K)
    alpha = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]))
    beta = draw(st.sampled_from([0.5, 0.9, 1.0, 10.0]))
    gamma = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0, 2.0, 4.0]))
    budget = float(draw(st.sampled_from([1e-3, 0.05, 0.3, 1.0, 5.0, 100.0])) * cost.sum())
    return dict(q=q, cost=cost, budget=budget, alpha=alpha, beta=beta, gamma=gamma)


@st.composite
def pruning_instances(draw):
    K = draw(st.integers(1, 64))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.dirichlet(np.full(K, draw(st.sampled_from([0.3, 1.0, 5.0])))) + 1e-6
    if K > 1 and draw(st.booleans()):
        q[rng.choice(K, int(rng.integers(1, K)), replace=False)] = 0.0   # layers with no positive gain
    q /= q.sum()
    sizes = rng.uniform(1.0, 4.0, K) * draw(st.sampled_from([1e-3, 1.0, 1e3, 1e8]))
    rho_max = draw(st.sampled_from([0.3, 0.51, 0.55, 0.9, 1.0]))
    target = rho_max * draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.999, 1.0]))
    bits = draw(st.sampled_from([0.0, 1e-6, 0.1, 1.0, 16.0]))
    lam = draw(st.sampled_from([0.1, 1.0, 2.0, 1e4]))
    gamma = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    equality = draw(st.booleans())
    return dict(q=q, sizes=sizes, target=target, bits=bits, lam=lam, gamma=gamma,
                rho_max=rho_max, equality=equality)


# --------------------------------------------------------------------------- independent KKT
def allocation_kkt_ok(inst, n, mu, tol=1e-8):
    """Gradient of Eq 11: g_k = (α + μ) c_k − β q_k^γ / (1 + n_k)."""
    q, c, B = inst["q"], inst["cost"], inst["budget"]
    w = inst["beta"] * q ** inst["gamma"]
    g = (inst["alpha"] + mu) * c - w / (1 + n)
    scale = (inst["alpha"] + mu) * c + w / (1 + n)
    spend = c @ n
    assert (n >= 0).all()
    assert mu >= 0
    assert spend <= B * (1 + tol)
    assert mu * abs(B - spend) <= tol * (inst["alpha"] + mu) * B        # complementary slackness
    pos = n > 0
    assert np.all(np.abs(g[pos]) <= tol * scale[pos])                    # stationarity
    assert np.all(g[~pos] >= -tol * scale[~pos])                         # n_k = 0: no gain in adding


def pruning_kkt_ok(inst, rho, nu, tau, tol=1e-8):
    """Gradient of Eq 14 with the multiplier of Eq 17: g_k = −(b + ν) N_k + 2λ q_k^γ ρ_k."""
    q, N, s, rmax = inst["q"], inst["sizes"], inst["target"], inst["rho_max"]
    pen = 2 * inst["lam"] * q ** inst["gamma"]
    g = -tau * N + pen * rho
    scale = abs(tau) * N + pen * rmax
    frac = N @ rho / N.sum()
    assert (rho >= 0).all() and (rho <= rmax).all()
    assert math.isclose(tau, inst["bits"] + nu, rel_tol=1e-9, abs_tol=1e-9 * (inst["bits"] + abs(nu)))
    if inst["equality"]:
        assert abs(frac - s) <= tol
    else:
        assert frac >= s - tol
        assert nu >= 0
        assert nu * abs(frac - s) <= tol * (inst["bits"] + nu)
    lo, hi = rho <= 0, rho >= rmax
    mid = ~lo & ~hi
    assert np.all(np.abs(g[mid]) <= tol * scale[mid])
    assert np.all(g[lo] >= -tol * scale[lo])                              # ρ = 0: pruning would cost
    assert np.all(g[hi] <= tol * scale[hi])                               # ρ = ρ_max: would prune more


# --------------------------------------------------------------------------- property tests
@PROPERTY
@given(allocation_instances())
def test_allocation_kkt_and_exact_agree(inst):
    kw = {k: inst[k] for k in ("alpha", "beta", "gamma")}
    res = P.allocate(inst["q"], inst["cost"], inst["budget"], method="bisection", **kw)
    if inst["alpha"] == 0:
        assert res.active                                                 # α = 0: budget always binds
    allocation_kkt_ok(inst, res.n, res.mu)
    assert res.kkt_residual <= 1e-8
    ex = P.allocate(inst["q"], inst["cost"], inst["budget"], method="exact", **kw)
    allocation_kkt_ok(inst, ex.n, ex.mu)
    assert ex.active == res.active
    np.testing.assert_allclose(ex.n, res.n, rtol=1e-9, atol=1e-9 * (1 + res.n.max()))
    assert math.isclose(ex.mu, res.mu, rel_tol=1e-9, abs_tol=1e-12 * (1 + inst["alpha"]))


@PROPERTY
@given(pruning_instances())
def test_pruning_kkt_and_exact_agree(inst):
    kw = {k: inst[k] for k in ("bits", "lam", "gamma", "rho_max", "equality")}
    res = P.prune(inst["q"], inst["sizes"], inst["target"], method="bisection", **kw)
    pruning_kkt_ok(inst, res.rho, res.nu, res.tau)
    assert res.kkt_residual <= 1e-8
    ex = P.prune(inst["q"], inst["sizes"], inst["target"], method="exact", **kw)
    pruning_kkt_ok(inst, ex.rho, ex.nu, ex.tau)
    np.testing.assert_allclose(ex.rho, res.rho, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- monotonicity (Thm 2, 3)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(2, 40), st.integers(0, 10**6), st.sampled_from([0.3, 0.5, 1.0, 2.0]),
       st.sampled_from([0.01, 0.2, 2.0]))
def test_allocation_increasing_in_q(K, seed, gamma, budget):
    """Equal costs: a larger q_k never gets fewer units, strictly more on the active set."""
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K))
    res = P.allocate(q, 0.01, budget, alpha=0.5, gamma=gamma)
    order = np.argsort(q)
    n = res.n[order]
    assert np.all(np.diff(n) >= -1e-12)
    both = (n[:-1] > 0) & (np.diff(q[order]) > 1e-9)
    assert np.all(np.diff(n)[both] > 0)
    # raising one score (others fixed) does not lower its allocation
    k = int(rng.integers(K))
    q2 = q.copy()
    q2[k] *= 1.5
    assert P.allocate(q2, 0.01, budget, alpha=0.5, gamma=gamma).n[k] >= res.n[k] - 1e-12


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(2, 40), st.integers(0, 10**6), st.sampled_from([0.5, 1.0, 2.0]),
       st.booleans())
def test_pruning_decreasing_in_q(K, seed, gamma, equality):
    """Equal sizes: a larger q_k is never pruned more; strictly less on interior coordinates."""
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K))
    res = P.prune(q, np.ones(K), 0.4, bits=1e-3, lam=1.0, gamma=gamma, rho_max=0.9, equality=equality)
    order = np.argsort(q)
    rho = res.rho[order]
    assert np.all(np.diff(rho) <= 1e-12)
    interior = (rho[1:] > 0) & (rho[1:] < 0.9) & (np.diff(q[order]) > 1e-9)
    assert np.all(np.diff(rho)[interior] < 0)


def test_gamma_regimes():
    """γ = 0 ignores the scores (uniform for equal costs); large γ concentrates on the top layer."""
    q = np.array([0.1, 0.2, 0.3, 0.4])
    flat = P.allocate(q, 1.0, 2.0, alpha=0.01, gamma=0.0).n
    np.testing.assert_allclose(flat, 0.5)
    sharp = P.allocate(q, 1.0, 2.0, alpha=0.0, gamma=40.0).n
    assert sharp[3] == pytest.approx(2.0) and np.all(sharp[:3] == 0)
    # with α > 0 the same γ shrinks every benefit q^γ (q < 1) below its cost: nothing is allocated
    assert not P.allocate(q, 1.0, 2.0, alpha=0.01, gamma=40.0).n.any()
    prop = P.allocate(q, 1.0, 10.0, alpha=0.0, gamma=1.0).n                # γ = 1, α = 0: 1 + n ∝ q
    np.testing.assert_allclose((1 + prop) / (1 + prop).sum(), q)


def test_equality_interior_is_proportional():
    """Equality variant, interior: ρ_k ∝ N_k q_k^{−γ}, independent of b and λ (METHOD.md §3)."""
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(8)) + 0.05
    q /= q.sum()
    N = rng.uniform(1e8, 3e8, 8)
    ref = None
    for bits, lam in [(16.0, 2.0), (1.0, 1.0), (0.0, 1e6)]:
        r = P.prune(q, N, 0.3, bits=bits, lam=lam, gamma=1.0, equality=True)
        assert np.all((r.rho > 0) & (r.rho < 1))
        ratio = r.rho / (N / q)
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
        ref = r.rho if ref is None else ref
        np.testing.assert_allclose(r.rho, ref, rtol=1e-9)


def test_pruning_degenerate_at_paper_scale():
    """Raw N_k ~ 1e8, b = 16, λ = 2, q on the simplex: the target is slack, every layer at ρ_max."""
    q = np.full(32, 1 / 32)
    r = P.prune(q, np.full(32, 2.2e8), 0.5, bits=16, lam=2, gamma=1, rho_max=0.51)
    assert not r.active and r.nu == 0
    np.testing.assert_array_equal(r.rho, 0.51)


def test_allocation_unconstrained_and_bracket():
    q = np.array([0.5, 0.3, 0.2])
    r = P.allocate(q, 0.01, 1e6, alpha=1.0, beta=1.0, gamma=1.0)           # huge budget: μ = 0
    assert not r.active and r.mu == 0
    np.testing.assert_allclose(r.n, q / 0.01 - 1)
    r = P.allocate(q, 1.0, 1e-9, alpha=0.0)                                 # tiny budget: all to top
    assert r.active and r.n[0] == pytest.approx(1e-9) and np.all(r.n[1:] == 0)
    r = P.allocate([1.0], 2.0, 3.0, alpha=0.0)                              # K = 1
    assert r.n[0] == pytest.approx(1.5)


def test_scores_from_gains():
    q = P.scores_from_gains([1.0, 3.0, 0.0])
    np.testing.assert_allclose(q, [0.25, 0.75, 0.0])
    d = P.scores_from_gains({"layer.1": 2.0, "layer.0": 6.0})
    assert list(d) == ["layer.1", "layer.0"] and d["layer.0"] == pytest.approx(0.75)
    # negative scores (a harmful layer's LayerIF sum) map to 0, nothing is shifted: the others keep their ratio
    np.testing.assert_allclose(P.scores_from_gains([-5.0, 1.0, 3.0]), [0.0, 0.25, 0.75])
    np.testing.assert_allclose(P.scores_from_gains([-0.1, 1.0, 3.0]), P.scores_from_gains([-9.0, 1.0, 3.0]))


# --------------------------------------------------------------------------- zero scores
def test_zero_scores_are_the_limit_of_the_closed_forms():
    """q_k = 0 (a layer with no positive gain): allocation n_k = 0 (Eq 13), pruning ρ_k = ρ_max
    (Eq 15), both the limit of q_k = ε → 0; negative q is still rejected by the programs."""
    q = np.array([0.0, 0.2, 0.3, 0.5])
    N = np.array([1.0, 2.0, 1.0, 3.0])
    a = P.allocate(q, 0.01, 1.0, alpha=0.0, beta=1.0, gamma=0.5)
    assert a.n[0] == 0.0 and (a.n[1:] > 0).all() and a.kkt_residual < 1e-9
    for eps in (1e-7, 1e-10):
        qe = np.where(q == 0, eps, q)
        np.testing.assert_allclose(P.allocate(qe, 0.01, 1.0, alpha=0.0, gamma=0.5).n, a.n, atol=1e-2)
    for method in ("exact", "bisection"):
        for equality, bits in ((True, 16.0), (False, 0.1), (False, 16.0)):
            kw = dict(bits=bits, lam=2.0, gamma=1.0, rho_max=0.8, equality=equality, method=method)
            r = P.prune(q, N, 0.5, **kw)
            assert r.rho[0] == 0.8 and r.kkt_residual < 1e-9
            assert N @ r.rho / N.sum() >= 0.5 - 1e-12
            re = P.prune(np.where(q == 0, 1e-12, q), N, 0.5, **kw)             # the limit
            np.testing.assert_allclose(r.rho, re.rho, atol=1e-9)
            assert r.nu == pytest.approx(re.nu, rel=1e-6, abs=1e-9)
    # equality target below what the zero-score layers prune at rho_max alone: they share it
    r = P.prune(q, N, 0.05, rho_max=0.8, equality=True)
    assert r.rho[0] == pytest.approx(0.05 * N.sum() / N[0]) and (r.rho[1:] == 0).all() and r.tau == 0.0
    assert r.kkt_residual < 1e-12
    for prog in (lambda qq: P.prune(qq, N, 0.5), lambda qq: P.allocate(qq, 1.0, 1.0)):
        with pytest.raises(ValueError, match=r"^q: every entry must be >= 0.*scores_from_gains"):
            prog(np.array([-0.1, 0.3, 0.3, 0.5]))
        with pytest.raises(ValueError, match=r"^q: must not be all zero"):
            prog(np.zeros(4))


@pytest.mark.parametrize("equality", [False, True])
def test_zero_scores_match_cvxpy(equality):
    R = pytest.importorskip("mdlcap.theory.reference")
    rng = np.random.default_rng(5)
    q = rng.dirichlet(np.ones(8))
    q[[1, 4]] = 0.0
    N = rng.uniform(1, 4, 8)
    kw = dict(bits=0.1, lam=2.0, gamma=1.0, rho_max=0.6, equality=equality)
    res, ref = P.prune(q, N, 0.3, **kw), R.prune_cvxpy(q, N, 0.3, **kw)
    assert ref.status == "optimal"
    np.testing.assert_allclose(res.rho, ref.x, atol=1e-6)
    assert res.objective <= ref.objective + 1e-9 * (1 + abs(ref.objective))
    assert res.nu == pytest.approx(ref.dual, rel=1e-5, abs=1e-7)
    a, aref = P.allocate(q, 0.05, 0.5, alpha=1.0, beta=0.9, gamma=0.5), R.allocate_cvxpy(q, 0.05, 0.5, alpha=1.0,
                                                                                           beta=0.9, gamma=0.5)
    assert a.n[1] == a.n[4] == 0.0
    np.testing.assert_allclose(a.n, aref.x, atol=1e-5 * (1 + aref.x.max()))
    assert a.mu == pytest.approx(aref.dual, rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------- against cvxpy
def _cases(seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
        K = int(rng.choice([2, 5, 17, 64]))
        yield i, rng, K


@pytest.mark.parametrize("i,rng,K", list(_cases(11, 12)))
def test_allocate_matches_cvxpy(i, rng, K):
    R = pytest.importorskip("mdlcap.theory.reference")
    q = rng.dirichlet(np.ones(K))
    c = rng.uniform(0.01, 0.1, K)
    B = float(rng.choice([0.01, 0.1, 10.0]))                                # active ... inactive
    res = P.allocate(q, c, B, alpha=1.0, beta=0.9, gamma=0.5)
    ref = R.allocate_cvxpy(q, c, B, alpha=1.0, beta=0.9, gamma=0.5)
    assert ref.status == "optimal"
    np.testing.assert_allclose(res.n, ref.x, atol=1e-5 * (1 + ref.x.max()))
    assert res.objective <= ref.objective + 1e-9 * (1 + abs(ref.objective))
    assert res.mu == pytest.approx(ref.dual, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("i,rng,K", list(_cases(12, 12)))
def test_prune_matches_cvxpy(i, rng, K):
    R = pytest.importorskip("mdlcap.theory.reference")
    q = rng.dirichlet(np.ones(K)) + 1e-3
    N = rng.uniform(1, 4, K)
    equality = bool(i % 2)
    kw = dict(bits=float(rng.choice([0.01, 0.1, 1.0])), lam=2.0, gamma=1.0, rho_max=0.6, equality=equality)
    res = P.prune(q, N, 0.3, **kw)
    ref = R.prune_cvxpy(q, N, 0.3, **kw)
    assert ref.status == "optimal"
    np.testing.assert_allclose(res.rho, ref.x, atol=1e-6)
    assert res.objective <= ref.objective + 1e-9 * (1 + abs(ref.objective))
    assert res.nu == pytest.approx(ref.dual, rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------- integer allocation
def _brute(q, c, B, alpha, beta, gamma, n_min, spend_all):
    """Best integer counts by enumeration (tiny K): max utility, Σ c n ≤ B, n ≥ n_min."""
    w = beta * np.asarray(q) ** gamma
    hi = [int(np.floor(B / ck + 1e-9)) for ck in c]
    best, arg = -np.inf, None
    for n in itertools.product(*[range(n_min, h + 1) for h in hi]):
        n = np.array(n, float)
        if c @ n > B * (1 + 1e-12):
            continue
        u = w @ np.log1p(n) - (0.0 if spend_all else alpha * (c @ n))
        if u > best + 1e-12:
            best, arg = u, n
    return best, arg


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.integers(1, 4), st.integers(0, 10**6), st.integers(0, 2), st.booleans(),
       st.sampled_from([0.0, 0.02, 0.2]), st.sampled_from([0.5, 1.0, 2.0]))
def test_integer_greedy_exact_for_equal_costs(K, seed, n_min, spend_all, alpha, gamma):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K))
    c = np.full(K, 0.5)
    B = 0.5 * (n_min * K + int(rng.integers(1, 7)))
    res = P.allocate_integer(q, c, B, alpha=alpha, beta=1.0, gamma=gamma, n_min=n_min, spend_all=spend_all)
    assert res.exact and res.counts.dtype.kind == "i" and (res.counts >= n_min).all()
    assert res.budget_used <= B + 1e-9
    best, _ = _brute(q, c, B, alpha, 1.0, gamma, n_min, spend_all)
    w = q ** gamma
    util = w @ np.log1p(res.counts) - (0.0 if spend_all else alpha * (c @ res.counts))
    assert util == pytest.approx(best, abs=1e-12)
    if spend_all:                                                          # fills the budget
        assert res.counts.sum() == int(round(B / 0.5))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(2, 4), st.integers(0, 10**6), st.booleans())
def test_integer_greedy_unequal_costs_bounded(K, seed, spend_all):
    """Unequal costs: feasible, never above the optimum, and the optimum is within upper_bound."""
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K))
    c = rng.choice([0.5, 1.0, 1.5, 2.5], K)
    B = float(rng.uniform(1.0, 6.0))
    res = P.allocate_integer(q, c, B, alpha=0.05, gamma=0.5, spend_all=spend_all)
    assert res.budget_used <= B + 1e-9
    best, _ = _brute(q, c, B, 0.05, 1.0, 0.5, 0, spend_all)
    w = q ** 0.5
    util = w @ np.log1p(res.counts) - (0.0 if spend_all else 0.05 * (c @ res.counts))
    assert util <= best + 1e-12
    assert best <= res.upper_bound + 1e-12


def test_integer_milp_reference_agrees():
    R = pytest.importorskip("mdlcap.theory.reference")
    rng = np.random.default_rng(5)
    q = rng.dirichlet(np.ones(6))
    counts = R.allocate_integer_milp(q, 1.0, 20.0, alpha=0.0, gamma=0.5, n_min=1, spend_all=True)
    res = P.allocate_integer(q, 1.0, 20.0, alpha=0.0, gamma=0.5, n_min=1, spend_all=True)
    w = q ** 0.5
    assert w @ np.log1p(counts) == pytest.approx(w @ np.log1p(res.counts), abs=1e-12)
    assert res.counts.sum() == 20


def test_integer_stops_when_units_not_worth_cost():
    """spend_all=False leaves budget unspent once Δ_k ≤ α c_k, as the continuous program does."""
    q = np.array([0.6, 0.4])
    res = P.allocate_integer(q, 1.0, 100.0, alpha=0.2, beta=1.0, gamma=1.0)
    assert res.budget_used < 100
    cont = P.allocate(q, 1.0, 100.0, alpha=0.2, beta=1.0, gamma=1.0)
    assert not cont.active
    assert np.all(np.abs(res.counts - cont.n) <= 1.0)


# --------------------------------------------------------------------------- bad inputs
BAD_ALLOC = [
    (dict(q=[0.5, np.nan]), "q"), (dict(q=[0.5, np.inf]), "q"), (dict(q=[-0.1, 1.1]), "q"),
    (dict(q=[0.0, 0.0]), "q"), (dict(q=[]), "q"), (dict(q=[[0.5, 0.5]]), "q"),
    (dict(cost=[1.0, 0.0]), "cost"), (dict(cost=[1.0, -1.0]), "cost"), (dict(cost=[1.0, 1.0, 1.0]), "cost"),
    (dict(cost=[1.0, np.nan]), "cost"), (dict(budget=0.0), "budget"), (dict(budget=-1.0), "budget"),
    (dict(budget=np.inf), "budget"), (dict(alpha=-1.0), "alpha"), (dict(beta=0.0), "beta"),
    (dict(gamma=-0.5), "gamma"), (dict(tol=0.0), "tol"), (dict(tol=2.0), "tol"),
    (dict(method="newton"), "method"), (dict(q=[1e300, 1.0], gamma=2.0), "gamma"),
    (dict(q=[1e-300, 1e-300], gamma=5.0), "q"),
]


@pytest.mark.parametrize("method", ["exact", "bisection"])
@pytest.mark.parametrize("bad,name", BAD_ALLOC)
def test_allocate_bad_input(bad, name, method):
    """Each solver path (numba kernels for exact, numpy for bisection) names the argument."""
    kw = dict(q=[0.5, 0.5], cost=[1.0, 1.0], budget=1.0, method=method)
    kw.update(bad)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        P.allocate(kw.pop("q"), kw.pop("cost"), kw.pop("budget"), **kw)


BAD_PRUNE = [
    (dict(q=[0.5, np.nan]), "q"), (dict(q=[-1.0, 2.0]), "q"), (dict(q=[0.0, 0.0]), "q"),
    (dict(sizes=[1.0, 0.0]), "sizes"), (dict(sizes=[1.0]), "sizes"),
    (dict(sizes=[1.0, np.inf]), "sizes"), (dict(target=0.6, rho_max=0.5), "target"),
    (dict(target=-0.1), "target"), (dict(target=np.nan), "target"), (dict(rho_max=0.0), "rho_max"),
    (dict(rho_max=1.5), "rho_max"), (dict(lam=0.0), "lam"), (dict(bits=-1.0), "bits"),
    (dict(gamma=-1.0), "gamma"), (dict(tol=-1e-3), "tol"), (dict(method="sort"), "method"),
    (dict(q=[1e-300, 1e-300], gamma=5.0), "q"),
]


@pytest.mark.parametrize("method", ["exact", "bisection"])
@pytest.mark.parametrize("bad,name", BAD_PRUNE)
def test_prune_bad_input(bad, name, method):
    kw = dict(q=[0.5, 0.5], sizes=[1.0, 2.0], target=0.3, method=method)
    kw.update(bad)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        P.prune(kw.pop("q"), kw.pop("sizes"), kw.pop("target"), **kw)


@pytest.mark.parametrize("bad,name", [
    (dict(n_min=-1), "n_min"), (dict(n_min=5), "n_min"), (dict(n_min=[1.5, 1.0]), "n_min"),
    (dict(cost=[0.0, 1.0]), "cost"), (dict(budget=0.0), "budget"), (dict(q=[np.nan, 1.0]), "q"),
])
def test_allocate_integer_bad_input(bad, name):
    kw = dict(q=[0.5, 0.5], cost=[1.0, 1.0], budget=4.0)
    kw.update(bad)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        P.allocate_integer(kw.pop("q"), kw.pop("cost"), kw.pop("budget"), **kw)


@pytest.mark.parametrize("bad", [[-1.0, -2.0], [0.0, 0.0], [np.nan, 1.0], {"a": -1.0}, [], [[1.0, 2.0]]])
def test_scores_bad_input(bad):
    with pytest.raises(ValueError, match=r"^zeta2:"):
        P.scores_from_gains(bad)


def test_exact_accepts_lists_views_and_scalar_cost():
    """The kernels need contiguous float64; the wrappers convert whatever array-like comes in."""
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(24))
    wide = np.stack([q, q]).T                               # q as a strided column view
    base = P.allocate(q, np.full(24, 0.5), 2.0, beta=0.9)
    for qq, cost in ((q.tolist(), 0.5), (wide[:, 1], [0.5] * 24), (q.astype(np.float32), np.float64(0.5))):
        np.testing.assert_allclose(P.allocate(qq, cost, 2.0, beta=0.9).n, base.n, rtol=1e-6)
    sizes = rng.uniform(1, 3, 24)
    base = P.prune(q, sizes, 0.4, rho_max=0.6, equality=True)
    np.testing.assert_allclose(P.prune(wide[:, 0], sizes.tolist(), 0.4, rho_max=0.6, equality=True).rho, base.rho)


@pytest.mark.parametrize("K", [5, breakpoints.SORT_IN_KERNEL_MAX_K, breakpoints.SORT_IN_KERNEL_MAX_K + 1, 3000])
def test_exact_sort_in_kernel_and_numpy_sort_agree_with_bisection(K):
    """Small K sorts inside one kernel, large K sorts with numpy between two: same answers."""
    rng = np.random.default_rng(K)
    q = rng.dirichlet(np.ones(K))
    cost = rng.uniform(0.5, 1.5, K) / K
    for budget in (0.05, 10.0):
        ex, bi = (P.allocate(q, cost, budget, beta=0.9, method=m) for m in ("exact", "bisection"))
        np.testing.assert_allclose(ex.n, bi.n, rtol=1e-9, atol=1e-9)
        assert ex.kkt_residual <= 1e-9
    sizes = rng.uniform(1.0, 3.0, K)
    for target, eq in ((0.3, True), (0.45, False), (0.0, True)):
        ex, bi = (P.prune(q + 1e-4, sizes, target, rho_max=0.5, lam=1e-3, equality=eq, method=m)
                  for m in ("exact", "bisection"))
        np.testing.assert_allclose(ex.rho, bi.rho, rtol=1e-9, atol=1e-9)
        assert ex.kkt_residual <= 1e-9
