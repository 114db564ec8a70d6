"""(Preconditioned) conjugate gradient on (H + λI) x = b from x₀ = 0, for a matrix-free symmetric H
(METHOD.md §1, Eq 8: x = (H_kk + λI)⁻¹ g_k, ζ² = gᵀx), and the Ritz values of the Lanczos
tridiagonal that CG's coefficients define.

From x₀ = 0 every iterate x_j minimises the energy-norm error over its Krylov space, so gᵀx_j is a
lower bound on ζ² that increases monotonically (for H + λI ≻ 0), and a truncated solve
under-estimates ζ². The same holds with a preconditioner M ≻ 0 (x_j is then the Galerkin solution
on the space K_j(M⁻¹A, M⁻¹b), A = H + λI; Eq 18's identity xᵀAx = gᵀx still holds at every iterate).

Reported (info dict):
  rel_residual        ‖b − A x‖ / ‖b‖ of the UNpreconditioned system, recomputed with one extra
                      product at the end (the recurrence residual drifts in float32 on
                      ill-conditioned systems); `converged` is rel_residual ≤ tol
  rel_residual_recurrence   the recurrence's own estimate
  ritz                eigenvalues of the Lanczos tridiagonal of M⁻¹A (of A itself without a
                      preconditioner): with a preconditioner these are NOT eigenvalues of H + λI,
                      only their sign pattern (Sylvester inertia of M^{-1/2} A M^{-1/2}) carries over
  rayleigh_min        the smallest pᵀAp / pᵀp over the search directions: an upper bound on
                      λ_min(A) with or without a preconditioner
  negative_curvature  a direction with pᵀAp ≤ 0 was met (CG stops there)

Why not scipy.sparse.linalg.cg: it runs in numpy on the host; here the vectors are torch tensors
on the model's device, and CG must stop at the first direction of non-positive curvature (the
exact Hessian is indefinite) and report it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def conjugate_gradient(matvec, b: torch.Tensor, damping: float, max_iter: int, tol: float,
                       precond: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """x ≈ (H + λI)⁻¹ b with H v = matvec(v) and, optionally, z = precond(r) ≈ (H + λI)⁻¹ r applying
    a fixed symmetric positive-definite M⁻¹. Stops at recurrence residual ‖r‖ ≤ tol·‖b‖, after
    max_iter iterations, or at a direction p with pᵀ(H + λI)p ≤ 0 ("negative_curvature")."""
    x = torch.zeros_like(b)
    r = b.clone()
    bnorm = torch.linalg.vector_norm(b).item()
    if bnorm == 0.0:
        return x, {"iterations": 0, "rel_residual": 0.0, "rel_residual_recurrence": 0.0, "converged": True,
                   "negative_curvature": False, "ritz": [], "rayleigh_min": math.inf,
                   "preconditioned": precond is not None, "products": 0}
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = torch.dot(r, z).item()
    if precond is not None and not rz > 0.0:
        raise ValueError("precond: must be positive definite (rᵀM⁻¹r <= 0 for the first residual)")
    alphas, betas = [], []
    neg, rq_min, products = False, math.inf, 0
    rnorm = bnorm
    it = 0
    for it in range(1, max_iter + 1):
        ap = matvec(p) + damping * p
        products += 1
        pap = torch.dot(p, ap).item()
        rq_min = min(rq_min, pap / torch.dot(p, p).item())
        if pap <= 0.0:            # (H + λI) not positive definite along p
            neg = True
            it -= 1
            break
        alpha = rz / pap
        x += alpha * p
        r -= alpha * ap
        rnorm = torch.linalg.vector_norm(r).item()
        alphas.append(alpha)
        if rnorm <= tol * bnorm:
            betas.append(0.0)
            break
        z = precond(r) if precond is not None else r
        rz_new = torch.dot(r, z).item()
        beta = rz_new / rz
        betas.append(beta)
        p = z + beta * p
        rz = rz_new
    true_r = b - (matvec(x) + damping * x) if it > 0 else b
    products += 1 if it > 0 else 0
    rel = torch.linalg.vector_norm(true_r).item() / bnorm
    return x, {"iterations": it, "rel_residual": rel, "rel_residual_recurrence": rnorm / bnorm,
               "converged": bool(rel <= tol and not neg), "negative_curvature": neg,
               "ritz": ritz_values(alphas, betas), "rayleigh_min": rq_min,
               "preconditioned": precond is not None, "products": products}


def ritz_values(alphas, betas) -> list[float]:
    """Eigenvalues of the Lanczos tridiagonal built from (P)CG's coefficients (of M⁻¹(H + λI), M = I
    without a preconditioner)."""
    m = len(alphas)
    if m == 0:
        return []
    T = torch.zeros(m, m, dtype=torch.float64)
    for j in range(m):
        T[j, j] = 1.0 / alphas[j] + (betas[j - 1] / alphas[j - 1] if j > 0 else 0.0)
        if j + 1 < m:
            T[j, j + 1] = T[j + 1, j] = math.sqrt(max(betas[j], 0.0)) / alphas[j]
    return torch.linalg.eigvalsh(T).tolist()
