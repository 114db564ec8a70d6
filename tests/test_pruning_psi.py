"""Algorithm 2 with ψ_k = a_k ρ^{p_k} (mdlcap.theory.pruning_psi; METHOD.md §7.2) against the
paper's program, cvxpy and its KKT conditions; the power-law fit on synthetic curves."""
from __future__ import annotations

import numpy as np
import pytest

from mdlcap.theory.pruning import prune
from mdlcap.theory.pruning_psi import fit_power_penalty, prune_psi


def instance(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.choice([1, 2, 5, 17, 64]))
    N, a = rng.uniform(1, 4, K), rng.uniform(0.1, 5, K)
    p = [np.full(K, 2.0), rng.choice([1.0, 1.5, 2.0, 3.0], K), np.full(K, 1.0),
         np.full(K, float(rng.choice([1.3, 2.5, 4.0])))][seed % 4]     # paper, mixed, linear, one p
    rm = float(rng.choice([0.3, 0.6, 1.0]))
    kw = dict(bits=float(rng.choice([0.0, 0.1, 1.0])), rho_max=rm, equality=bool(rng.integers(2)))
    return a, p, N, rm * float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])), kw


def kkt_ok(a, p, N, s, kw, rho, tau, tol=1e-9):
    """Gradient of the Lagrangian: g_k = a p ρ^{p−1} − τ N_k (τ = b + ν)."""
    rm = kw["rho_max"]
    assert (rho >= 0).all() and (rho <= rm).all()
    frac = N @ rho / N.sum()
    assert (abs(frac - s) if kw["equality"] else max(0.0, s - frac)) <= tol
    if not kw["equality"]:
        assert tau >= kw["bits"] and (tau - kw["bits"]) * abs(frac - s) <= tol * (1 + tau)
    marg = a * p * np.where(p == 1, 1.0, rho ** (p - 1))
    g, sc = marg - tau * N, marg + tau * N + 1e-300
    inner = (rho > 0) & (rho < rm)
    assert np.all(np.abs(g[inner]) <= tol * sc[inner])
    assert np.all(g[rho == 0] >= -tol * sc[rho == 0]) and np.all(g[rho == rm] <= tol * sc[rho == rm])


@pytest.mark.parametrize("seed", range(80))
def test_matches_cvxpy_and_kkt(seed):
    R = pytest.importorskip("mdlcap.theory.reference")
    a, p, N, s, kw = instance(seed)
    res = prune_psi(a, p, N, s, **kw)
    assert res.kkt_residual <= 1e-9
    kkt_ok(a, p, N, s, kw, res.rho, res.tau)
    ref = R.prune_psi_cvxpy(a, p, N, s, **kw)
    assert ref.status in ("optimal", "optimal_inaccurate")
    # infeasibility of the reference (its target missed by v) could buy at most |ν| v ΣN
    short = max(0.0, s * N.sum() - N @ ref.x) if not kw["equality"] else abs(s * N.sum() - N @ ref.x)
    assert res.objective <= ref.objective + abs(res.nu) * short + 1e-9 * (1 + abs(ref.objective))
    if ref.status == "optimal" and (p > 1).all():                       # strictly convex: unique ρ
        # an objective accurate to ε (relative to cvxpy's scale) pins ρ_k only to ~(ε scale/a_k)^{1/p_k}
        scale = kw["bits"] * N.sum() + a.sum()
        assert np.all(np.abs(res.rho - ref.x) <= 1e-5 + (1e-9 * scale / a) ** (1 / p))
    rm = kw["rho_max"]
    if ((res.rho > 1e-6) & (res.rho < rm * (1 - 1e-6)) & (p > 1)).any() and ref.status == "optimal":
        assert res.nu == pytest.approx(ref.dual, rel=1e-4, abs=1e-6)     # an interior layer pins ν


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("equality", [False, True])
def test_reduces_to_the_papers_program(seed, equality):
    """a_k = λ q_k^γ, p_k = 2 is Eq 14: same ρ and ν as `prune` to 1e-12."""
    rng = np.random.default_rng(seed)
    K = int(rng.integers(1, 64))
    q, N = rng.dirichlet(np.ones(K)) + 1e-4, rng.uniform(1, 4, K) * float(rng.choice([1.0, 1e3]))
    lam, gamma, bits = float(rng.choice([0.1, 2.0])), float(rng.choice([0.5, 1.0])), float(rng.choice([0.0, 0.1, 16.0]))
    rm = float(rng.choice([0.5, 1.0]))
    s = rm * float(rng.choice([0.0, 0.3, 0.9, 1.0]))
    ref = prune(q, N, s, bits=bits, lam=lam, gamma=gamma, rho_max=rm, equality=equality)
    res = prune_psi(lam * q ** gamma, 2.0, N, s, bits=bits, rho_max=rm, equality=equality)
    np.testing.assert_allclose(res.rho, ref.rho, rtol=1e-12, atol=1e-12)
    assert res.tau == pytest.approx(ref.tau, rel=1e-12, abs=1e-300)
    assert res.closed_form


def test_linear_penalty_is_bang_bang_with_one_fractional_tie():
    N, a = np.array([1.0, 1.0, 2.0]), np.array([1.0, 3.0, 2.0])     # θ = a/N = 1, 3, 1
    r = prune_psi(a, 1.0, N, 0.25, bits=0.0, rho_max=1.0, equality=True)
    assert r.tau == 1.0 and r.rho[1] == 0.0                             # the two θ = 1 layers share
    assert r.rho[0] == pytest.approx(0.25 * 4 / 3) and r.rho[2] == pytest.approx(r.rho[0])
    assert r.kkt_residual < 1e-12
    full = prune_psi(a, 1.0, N, 0.9, bits=0.0, rho_max=1.0, equality=True)
    assert full.tau == 3.0 and full.rho[0] == full.rho[2] == 1.0 and full.rho[1] == pytest.approx(0.6)


def test_unconstrained_target_and_mixed_exponents_need_a_root():
    N, a = np.ones(4), np.ones(4)
    loose = prune_psi(a, 2.0, N, 0.1, bits=1.0)                         # ρ(b) = 0.5 already ≥ 0.1
    assert loose.nu == 0.0 and not loose.active and np.allclose(loose.rho, 0.5)
    mixed = prune_psi(a, [1.5, 2.0, 3.0, 2.5], N, 0.7, bits=0.1, rho_max=0.9)
    assert mixed.active and not mixed.closed_form and mixed.kkt_residual < 1e-12


@pytest.mark.parametrize("bad,name", [
    (dict(a=[1.0, 0.0]), "a"), (dict(a=[1.0, np.nan]), "a"), (dict(p=[0.5, 2.0]), "p"),
    (dict(p=[2.0, 2.0, 2.0]), "p"), (dict(sizes=[1.0, -1.0]), "sizes"), (dict(target=1.2), "target"),
    (dict(target=0.6, rho_max=0.5), "target"), (dict(rho_max=0.0), "rho_max"), (dict(rho_max=2.0), "rho_max"),
    (dict(bits=-1.0), "bits"),
])
def test_bad_input(bad, name):
    args = dict(a=[1.0, 2.0], p=[2.0, 2.0], sizes=[1.0, 2.0], target=0.3, rho_max=0.5)
    args.update(bad)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        prune_psi(**args)


# --------------------------------------------------------------------------- the fit
@pytest.mark.parametrize("a,p", [(3.0, 2.7), (0.05, 1.0), (12.0, 2.0), (1.0, 4.5)])
def test_fit_recovers_exact_power_curves(a, p):
    rho = np.linspace(0.0, 0.9, 15)
    f = fit_power_penalty(rho, a * rho ** p)
    assert f.a == pytest.approx(a, rel=1e-6) and f.p == pytest.approx(p, rel=1e-6) and f.r2 > 1 - 1e-12
    np.testing.assert_allclose(f(rho), a * rho ** p, atol=1e-9)


def test_fit_on_noisy_and_sublinear_curves():
    rng = np.random.default_rng(0)
    rho = np.linspace(0.05, 0.8, 20)
    noisy = fit_power_penalty(rho, 2.0 * rho ** 2.5 + rng.normal(0, 0.005, rho.size))
    assert abs(noisy.p - 2.5) < 0.15 and abs(noisy.a - 2.0) < 0.2 and 0.99 < noisy.r2 <= 1
    sub = fit_power_penalty(rho, np.sqrt(rho))                          # concave data: p held at 1
    assert sub.p == pytest.approx(1.0) and sub.a > 0 and sub.r2 < 1


@pytest.mark.parametrize("rho,D,name", [
    ([0.1, 0.1, 0.0], [1.0, 1.0, 0.0], "rho"), ([0.1, 1.5], [1.0, 2.0], "rho"), ([0.1, 0.2], [1.0, np.nan], "D"),
    ([0.1, 0.2], [1.0], "D"), ([-0.1, 0.2, 0.3], [0.0, 1.0, 2.0], "rho"),
])
def test_fit_bad_input(rho, D, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        fit_power_penalty(rho, D)
