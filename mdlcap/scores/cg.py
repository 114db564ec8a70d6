"""Conjugate gradient on (H + λI) x = b from x₀ = 0, for a matrix-free symmetric H (METHOD.md §1,
Eq 8: x = (H_kk + λI)⁻¹ g_k, ζ² = gᵀx), and the Ritz values of the Lanczos tridiagonal that CG's
coefficients define. From x₀ = 0 every iterate's gᵀx is a lower bound on ζ² that increases
monotonically (for H + λI ≻ 0), so a truncated solve under-estimates ζ².

Why not scipy.sparse.linalg.cg: it runs in numpy on the host; here the vectors are torch tensors
on the model's device, and CG must stop at the first direction of non-positive curvature (the
exact Hessian is indefinite) and report it.
"""
from __future__ import annotations

import math

import torch


def conjugate_gradient(matvec, b: torch.Tensor, damping: float, max_iter: int,
                       tol: float) -> tuple[torch.Tensor, dict]:
    """x ≈ (H + λI)⁻¹ b with H v = matvec(v); stops at relative residual ≤ tol, after max_iter
    iterations, or at a direction p with pᵀ(H + λI)p ≤ 0 ("negative_curvature"). The info dict
    also holds the Ritz values of H + λI and the smallest Rayleigh quotient seen."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.dot(r, r).item()
    bnorm = math.sqrt(rs)
    alphas, betas = [], []
    neg, rq_min = False, math.inf
    it = 0
    if bnorm == 0.0:
        return x, {"iterations": 0, "rel_residual": 0.0, "negative_curvature": False, "ritz": []}
    for it in range(1, max_iter + 1):
        ap = matvec(p) + damping * p
        pap = torch.dot(p, ap).item()
        pp = torch.dot(p, p).item()
        rq_min = min(rq_min, pap / pp)
        if pap <= 0.0:            # (H + λI) not positive definite along p
            neg = True
            it -= 1
            break
        alpha = rs / pap
        x += alpha * p
        r -= alpha * ap
        rs_new = torch.dot(r, r).item()
        alphas.append(alpha)
        betas.append(rs_new / rs)
        if math.sqrt(rs_new) <= tol * bnorm:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    ritz = ritz_values(alphas, betas)
    return x, {"iterations": it, "rel_residual": math.sqrt(rs) / bnorm, "negative_curvature": neg,
               "ritz": ritz, "rayleigh_min": rq_min}


def ritz_values(alphas, betas) -> list[float]:
    """Eigenvalues of the Lanczos tridiagonal built from CG's coefficients (of H + λI)."""
    m = len(alphas)
    if m == 0:
        return []
    T = torch.zeros(m, m, dtype=torch.float64)
    for j in range(m):
        T[j, j] = 1.0 / alphas[j] + (betas[j - 1] / alphas[j - 1] if j > 0 else 0.0)
        if j + 1 < m:
            T[j, j + 1] = T[j + 1, j] = math.sqrt(max(betas[j], 0.0)) / alphas[j]
    return torch.linalg.eigvalsh(T).tolist()
