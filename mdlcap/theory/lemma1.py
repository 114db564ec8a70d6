"""Lemma 1 and Appendix C, checked on explicit curvature blocks (METHOD.md §1: Eq 7–8).

For one layer with gradient g and curvature block H, the damped model g·d + ½ dᵀ(H + λI)d has
the unique minimiser d* = −(H + λI)⁻¹g (Lemma 1) and the layer gain is ζ² = gᵀ(H + λI)⁻¹g
(Eq 8). Here both are computed by dense linear algebra on small random blocks with chosen
spectra, the independent route notebook 01 compares the identities against.
"""
from __future__ import annotations

import numpy as np


def newton_step(H, g, lam: float) -> np.ndarray:
    """Lemma 1: d* = −H̃⁻¹ g with H̃ = H + λI, the minimiser of the damped model."""
    return -np.linalg.solve(np.asarray(H, float) + lam * np.eye(len(g)), np.asarray(g, float))


def layer_gain(g, d) -> float:
    """Eq 8: ζ² = gᵀ H̃⁻¹ g = −gᵀ d*, twice the damped model's decrease."""
    return float(-(np.asarray(g, float) @ d))


def random_block(dim: int, kind: str, rng) -> np.ndarray:
    """Symmetric curvature block with a chosen spectrum: "pd" (eigenvalues log-uniform in
    [1e-3, 10]), "psd" (a third of them exactly 0), "indefinite" (a third in [−1, −1e-3])."""
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eig = np.exp(rng.uniform(np.log(1e-3), np.log(10.0), dim))
    m = max(1, dim // 3)
    if kind == "psd":
        eig[:m] = 0.0
    elif kind == "indefinite":
        eig[:m] = -np.exp(rng.uniform(np.log(1e-3), 0.0, m))
    elif kind != "pd":
        raise ValueError(f"kind: must be 'pd', 'psd' or 'indefinite' (got {kind!r})")
    return (Q * eig) @ Q.T


def lemma1_check(H, g, lam: float) -> dict:
    """Lemma 1 and Appendix C at one block: d* = −H̃⁻¹g with H̃ = H + λI.

    Returns ζ² = gᵀH̃⁻¹g, the relative errors of (i) the surrogate decrease ½ζ² and (ii) the
    reconstructed identity m(d*) = −½ζ² − (λ/2)‖d*‖² for the true quadratic, the bias
    λ‖d*‖², and whether 0 ≤ bias ≤ λ/(λ+σ_min(H)) ζ² ≤ ζ² holds. If H̃ is not positive
    definite the surrogate has no minimiser (Lemma 1 does not apply): `damped_pd` is False.
    """
    H = np.asarray(H, float)
    g = np.asarray(g, float)
    Ht = H + lam * np.eye(len(g))
    sig_min = float(np.linalg.eigvalsh(H)[0])
    pd = bool(np.linalg.eigvalsh(Ht)[0] > 0)
    d = newton_step(H, g, lam)                                           # Lemma 1
    zeta2 = layer_gain(g, d)                                             # Eq 8: gᵀ H̃⁻¹ g
    surrogate = float(g @ d + 0.5 * d @ Ht @ d)                          # Lemma 1: = −½ζ²
    true_val = float(g @ d + 0.5 * d @ H @ d)                            # m_k(d*)
    bias = float(lam * d @ d)
    factor = lam / (lam + sig_min) if lam + sig_min > 0 else np.inf
    scale = max(abs(zeta2), 1e-300)
    return dict(dim=len(g), lam=lam, sigma_min=sig_min, damped_pd=pd, zeta2=zeta2,
                decrease_rel_err=abs(surrogate + 0.5 * zeta2) / scale,
                grad_rel_norm=float(np.linalg.norm(g + Ht @ d) / np.linalg.norm(g)),
                identity_rel_err=abs(true_val - (-0.5 * zeta2 - 0.5 * bias)) / scale,
                bias=bias, bias_over_zeta2=bias / scale, bound_factor=factor,
                bias_le_zeta2=bool(0 <= bias <= zeta2 * (1 + 1e-10)),
                bias_le_factor_bound=bool(bias <= factor * zeta2 * (1 + 1e-10) + 1e-300))


def ranking_check(blocks, grads, lam: float) -> float:
    """Fraction of layer pairs ordered the same by ζ²(λ) and by the undamped best decrease
    gᵀH⁻¹g (positive-definite blocks): Appendix C's claim that small λ keeps the ranking."""
    z_lam = np.array([g @ np.linalg.solve(H + lam * np.eye(len(g)), g) for H, g in zip(blocks, grads)])
    z_0 = np.array([g @ np.linalg.solve(H, g) for H, g in zip(blocks, grads)])
    i, j = np.triu_indices(len(z_0), 1)
    return float(np.mean(np.sign(z_lam[i] - z_lam[j]) == np.sign(z_0[i] - z_0[j])))

