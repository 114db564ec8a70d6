"""The joint allocation-and-pruning program (mdlcap.theory.joint; METHOD.md §7) against its KKT
conditions (re-derived here from the gradients), cvxpy and brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mdlcap.theory.instances import random_joint_instance
from mdlcap.theory.joint import joint, joint_integer, joint_objective
from mdlcap.theory.pruning import prune


def kkt_ok(q, c, N, B, kw, n, rho, mu, tol=1e-9):
    """Gradient of the Lagrangian: g_n = −w/(1+n) + μ c, g_ρ = 2pρ − μ b N (w = βq^γ, p = λq^γ)."""
    qg = q ** kw["gamma"]
    w, p, bN, rm = kw["beta"] * qg, kw["lam"] * qg, kw["bits"] * N, kw["rho_max"]
    assert mu > 0 and (n >= 0).all() and (rho >= 0).all() and (rho <= rm).all()
    spend = c @ n + bN @ (1 - rho)
    assert abs(spend - B) <= tol * B                                     # the budget binds
    gn, sn = mu * c - w / (1 + n), mu * c + w / (1 + n)
    assert np.all(np.abs(gn[n > 0]) <= tol * sn[n > 0]) and np.all(gn[n == 0] >= -tol * sn[n == 0])
    gr, sr = 2 * p * rho - mu * bN, 2 * p * rho + mu * bN + 1e-300
    inner = (rho > 0) & (rho < rm)
    assert np.all(np.abs(gr[inner]) <= tol * sr[inner])
    assert np.all(gr[rho == 0] >= -tol * sr[rho == 0]) and np.all(gr[rho == rm] <= tol * sr[rho == rm])


SEEDS = range(1000, 1110)


@pytest.mark.parametrize("seed", SEEDS)
def test_joint_matches_cvxpy_and_kkt(seed):
    R = pytest.importorskip("mdlcap.theory.reference")
    q, c, N, B, kw = random_joint_instance(np.random.default_rng(seed))
    res = joint(q, c, N, B, **kw)
    assert res.kkt_residual <= 1e-9
    kkt_ok(q, c, N, B, kw, res.n, res.rho, res.mu)
    ref = R.joint_cvxpy(q, c, N, B, **kw)
    assert ref.status in ("optimal", "optimal_inaccurate")
    # F(x*) ≤ F(x) + μ*(S(x) − B) for every x in the box: an infeasible reference cannot win
    over = max(0.0, c @ ref.n + kw["bits"] * N @ (1 - ref.rho) - B)
    assert res.objective <= ref.objective + res.mu * over + 1e-9 * (1 + abs(ref.objective))
    if ref.status == "optimal" and ref.route.startswith("CLARABEL"):
        np.testing.assert_allclose(res.n, ref.n, atol=1e-4 * (1 + ref.n.max()))
        # ρ_k is pinned only through its penalty p_k ρ_k²: an objective accurate to ε (relative
        # to Σw, cvxpy's scale) pins it to ~sqrt(ε Σw / p_k); a layer with p_k = 0 and b = 0 is free
        qg = q ** kw["gamma"]
        with np.errstate(divide="ignore"):
            slack = 1e-4 + np.sqrt(1e-7 * kw["beta"] * qg.sum() / (kw["lam"] * qg))
        assert np.all(np.abs(res.rho - ref.rho) <= slack)
        assert res.mu == pytest.approx(ref.dual, rel=1e-4)


def test_regimes_are_covered():
    seen = set()
    for seed in SEEDS:
        q, c, N, B, kw = random_joint_instance(np.random.default_rng(seed))
        r = joint(q, c, N, B, **kw)
        seen |= {"n=0"} if (r.n == 0).any() else set()
        seen |= {"rho=0"} if (r.rho == 0).any() else set()
        seen |= {"rho=max"} if (r.rho == kw["rho_max"]).any() else set()
        seen |= {"rho inner"} if ((r.rho > 0) & (r.rho < kw["rho_max"])).any() else set()
    assert seen == {"n=0", "rho=0", "rho=max", "rho inner"}


@pytest.mark.parametrize("seed", range(20))
def test_monotone_in_q(seed):
    """Raising q_k: μ rises, n_k rises on the active set, ρ_k falls where interior; others the reverse."""
    rng = np.random.default_rng(seed)
    K = int(rng.integers(3, 30))
    q, c, N = rng.dirichlet(np.ones(K)), rng.uniform(0.1, 1, K), rng.uniform(1, 4, K)
    kw = dict(bits=1.0, lam=2.0, gamma=1.0, rho_max=0.8)
    B = N.sum() * 0.5 + c.sum()
    base = joint(q, c, N, B, **kw)
    k = int(rng.integers(K))
    q2 = q.copy()
    q2[k] *= 1.5
    up = joint(q2, c, N, B, **kw)
    assert up.mu >= base.mu
    assert up.n[k] >= base.n[k] and up.rho[k] <= base.rho[k] + 1e-15
    if base.n[k] > 0:
        assert up.n[k] > base.n[k]
    if 0 < base.rho[k] < kw["rho_max"]:
        assert up.rho[k] < base.rho[k]
    rest = np.arange(K) != k
    assert np.all(up.n[rest] <= base.n[rest] + 1e-12) and np.all(up.rho[rest] >= base.rho[rest] - 1e-15)


def test_floor_and_scalars():
    q, N = np.array([0.2, 0.8]), np.array([1.0, 3.0])
    floor = 16 * 4 * 0.5
    r = joint(q, 1.0, N, floor, rho_max=0.5)
    assert r.at_floor and (r.n == 0).all() and (r.rho == 0.5).all() and r.kkt_residual < 1e-12
    near = joint(q, 1.0, N, floor * (1 + 1e-9), rho_max=0.5)              # continuity at the floor
    assert near.mu == pytest.approx(r.mu, rel=1e-6) and near.n.max() < 1e-6
    assert joint([0.5, 0.5], 2.0, 3.0, 100.0).n == pytest.approx([joint([0.5, 0.5], [2, 2], [3, 3], 100.0).n[0]] * 2)


@pytest.mark.parametrize("bad,name", [
    (dict(q=[0.5, np.nan]), "q"), (dict(q=[-0.1, 1.1]), "q"), (dict(q=[0.0, 0.0]), "q"),
    (dict(cost=[1.0, -1.0]), "cost"), (dict(cost=[1.0, 1.0, 1.0]), "cost"), (dict(sizes=[1.0, np.inf]), "sizes"),
    (dict(sizes=[1.0]), "sizes"), (dict(budget=-1.0), "budget"), (dict(budget=np.nan), "budget"),
    (dict(rho_max=0.0), "rho_max"), (dict(rho_max=1.5), "rho_max"), (dict(budget=1.0, rho_max=0.5), "budget"),
    (dict(lam=0.0), "lam"), (dict(beta=-1.0), "beta"), (dict(bits=-1.0), "bits"), (dict(tol=2.0), "tol"),
])
@pytest.mark.parametrize("solver", [joint, joint_integer])
def test_bad_input(bad, name, solver):
    args = dict(q=[0.3, 0.7], cost=[1.0, 1.0], sizes=[1.0, 2.0], budget=100.0, rho_max=0.5)
    args.update(bad)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        solver(**args)


# --------------------------------------------------------------------------- integer counts
def brute(q, c, N, B, kw):
    """Best (n, ρ) by enumerating n; ρ for each n from the pruning program with b = 0."""
    bits, rm, best = kw["bits"], kw["rho_max"], np.inf
    floor = bits * N.sum() * (1 - rm)
    for n in itertools.product(range(int((B - floor) / c.min()) + 1), repeat=q.size):
        n = np.array(n, float)
        left = B - c @ n
        if left < floor - 1e-12:
            continue
        s = min(max(0.0, 1 - left / (bits * N.sum())), rm)
        rho = prune(q, N, s, bits=0.0, lam=kw["lam"], gamma=kw["gamma"], rho_max=rm).rho
        best = min(best, joint_objective(n, rho, q, beta=kw["beta"], lam=kw["lam"], gamma=kw["gamma"]))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_integer_feasible_exact_for_equal_costs(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(1, 4))
    q, N = rng.dirichlet(np.ones(K)), rng.uniform(1, 4, K)
    equal = seed % 2 == 0
    c = np.full(K, rng.uniform(0.2, 1.0)) if equal else rng.uniform(0.2, 1.0, K)
    kw = dict(beta=1.0, lam=float(rng.choice([0.05, 1.0, 10.0])), gamma=1.0,
              bits=float(rng.choice([0.1, 1.0, 4.0])), rho_max=float(rng.choice([0.3, 0.6, 1.0])))
    B = kw["bits"] * N.sum() * (1 - kw["rho_max"]) + rng.uniform(0, 6) * c.min()
    z = joint_integer(q, c, N, B, **kw)
    assert z.spend <= B * (1 + 1e-12) and (z.counts >= 0).all()
    assert z.exact == (equal or K == 1)
    best = brute(q, c, N, B, kw)
    assert z.lower_bound <= best + 1e-9 and z.objective >= best - 1e-9
    if equal:
        assert z.objective == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_integer_near_continuous_with_many_units():
    rng = np.random.default_rng(7)
    K = 32
    q, N, c = rng.dirichlet(np.ones(K)), rng.uniform(1, 4, K), np.full(K, 0.01)
    z = joint_integer(q, c, N, 16 * N.sum() * 0.6 + 10.0, rho_max=0.6)
    assert z.exact and 0 <= z.gap < 1e-2 * (1 + abs(z.lower_bound))
