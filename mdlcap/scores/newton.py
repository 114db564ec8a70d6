"""Lemma 1 per block (METHOD.md §1, Eq 7–8): the damped layer-restricted Newton step
d* = −(H_kk + λI)⁻¹ g_k by matrix-free CG, its decrement ζ_k² = g_kᵀ(H_kk + λI)⁻¹g_k, and the
layer-restricted quadratic model m_k(d) = g_kᵀd + ½ dᵀH_kk d it minimises.

    gains, diags, steps = gains_cg(model, batches, blocks, curvature="ggn", damping=1e-3, ...)
    block_quadratic(model, batches, params, d)     # terms of m_k(d) for a given d
    with applied_step(params, d): ...              # θ_k ← θ_k + d while inside

The exact Hessian block is indefinite: its damping is raised until CG sees positive curvature
(Eq 7 needs H̃ ≻ 0) and the damping used is reported in the diagnostics.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from mdlcap.scores import autograd as ag
from mdlcap.scores.cg import conjugate_gradient
from mdlcap.scores.operators import CURVATURES, PRECONDITIONERS, BlockOperator, ggn_diagonal


def _preconditioner(model, batches, blocks, kind, loss_fn, progress, diag_samples):
    """name -> callable(v, λ) applying M⁻¹ ≈ (H_kk + λI)⁻¹ for one block, or None for "none"."""
    if kind == "none":
        return None
    if kind == "diag":
        diag = ggn_diagonal(model, batches, blocks, loss_fn, samples=diag_samples, progress=progress)
        return lambda name, lam: (lambda v, d=diag[name]: v / (d + lam))
    if kind == "kfac":
        from mdlcap.scores import kfac
        if not hasattr(kfac, "kfac_factors"):
            raise ValueError("preconditioner: 'kfac' needs mdlcap.scores.kfac.kfac_factors")
        # true Fisher (labels from the model) for the default loss; a custom loss_fn cannot sample labels
        # unless it says so, so it gets the empirical Fisher: any M ≻ 0 leaves the solution unchanged
        fisher = "true" if loss_fn is None else "empirical"
        factors = kfac.kfac_factors(model, batches, blocks, fisher=fisher, loss_fn=loss_fn, progress=False)
        return lambda name, lam: (lambda v: factors.inverse(name, v, lam))
    raise ValueError(f"preconditioner: must be one of {list(PRECONDITIONERS)}, got {kind!r}")


def _solve_raising(op, g, lam, curvature, max_iter, tol, precond, max_damping_raises):
    """CG at λ, raised (for the exact Hessian) until CG sees only positive curvature: (x, info, λ, raises)."""
    raises = 0
    while True:
        x, info = conjugate_gradient(op, g, lam, max_iter, tol, precond(lam) if precond else None)
        ritz_min_a = min(info["ritz"]) if info["ritz"] else math.inf
        indefinite = info["negative_curvature"] or ritz_min_a <= 0.0
        if not indefinite or curvature == "ggn" or raises >= max_damping_raises:
            return x, info, lam, raises
        # Exact Hessian block is indefinite at this λ: raise λ past the most negative curvature seen
        # (Rayleigh quotient; without a preconditioner also the Ritz values, both of H + λI) and
        # restart (Eq 7 needs H̃ ≻ 0). Preconditioned Ritz values are of M⁻¹(H + λI): sign only.
        lam_min_a = info["rayleigh_min"] if info["preconditioned"] else min(ritz_min_a, info["rayleigh_min"])
        lam = max(2.0 * lam, -2.0 * (lam_min_a - lam))
        raises += 1


def gains_cg(model, batches, blocks, *, curvature, damping, loss_fn, max_iter, tol, cache_graphs,
             progress, return_steps, max_damping_raises, preconditioner="none", shared_damping=True,
             diag_samples=1):
    """(gains, diagnostics, steps or None) of Eq 8 with H_kk the GGN or the exact Hessian, by
    (preconditioned) CG.

    preconditioner: "none", "diag" (M = diag of the GGN by Monte Carlo, `ggn_diagonal`, + λ) or
    "kfac" (M = K-FAC of the true Fisher + λI, `scores.kfac.kfac_factors`; empirical Fisher for a
    custom loss_fn). The solution is that
    of the unpreconditioned system; only the iterations change. For the exact Hessian the
    preconditioner is the GGN's (PSD) one.
    shared_damping (exact Hessian, whose damping is raised until CG sees only positive curvature):
    every block is re-solved at the largest damping any block needed, so that one λ holds for all
    blocks of the call; each block's own need is `damping_needed`. False keeps per-block λ
    (diagnostics then differ by block in `damping_used`).
    Diagnostics per block: iterations, rel_residual (true, unpreconditioned), converged
    (rel_residual ≤ tol and no negative curvature), damping_requested / _needed / _used, Ritz
    values (see scores.cg: of H only without a preconditioner, else of M⁻¹(H + λI))."""
    device = ag.model_device(model)
    n = ag.global_count(len(batches), device)
    all_params = [p for ps in blocks.values() for p in ps]
    gains, diags, steps = {}, {}, {}
    with ag.scoring_mode(model, all_params), ag.eager_attention(model):
        grads = ag.block_gradients(model, batches, all_params, loss_fn, progress=progress)
        pre = _preconditioner(model, batches, blocks, preconditioner, loss_fn, progress, diag_samples)
        gflat, gi = {}, 0
        for name, params in blocks.items():
            gflat[name] = ag.flat(grads[gi:gi + len(params)], ag.acc_dtype(params))
            gi += len(params)
        def record(name, params, x, info, lam, raises, needed, products):
            g = gflat[name]
            ritz = info["ritz"] if not info["preconditioned"] else []
            ritz_min_h = (min(ritz) - lam) if ritz else None
            rq_min_h = info["rayleigh_min"] - lam if math.isfinite(info["rayleigh_min"]) else None
            lam_min_h = min(v for v in (ritz_min_h, rq_min_h, math.inf) if v is not None)
            gains[name] = torch.dot(g, x).item()                      # Eq 8: ζ² = gᵀ (H + λI)⁻¹ g
            diags[name] = {
                "iterations": info["iterations"], "rel_residual": info["rel_residual"],
                "rel_residual_recurrence": info["rel_residual_recurrence"],
                "converged": bool(info["converged"]), "preconditioner": preconditioner,
                "damping_requested": damping, "damping_needed": needed, "damping_used": lam,
                "damping_raises": raises,
                "negative_curvature": bool(info["negative_curvature"] or (info["ritz"] and min(info["ritz"]) <= 0)),
                "ritz_min_H": ritz_min_h, "ritz_max_H": (max(ritz) - lam) if ritz else None,
                "rayleigh_min_H": rq_min_h,
                "ritz_min_preconditioned": min(info["ritz"]) if info["preconditioned"] and info["ritz"] else None,
                "ritz_max_preconditioned": max(info["ritz"]) if info["preconditioned"] and info["ritz"] else None,
                "damping_needed_lower_bound": max(0.0, -lam_min_h) if math.isfinite(lam_min_h) else None,
                "grad_norm2": torch.dot(g, g).item(), "step_norm2": torch.dot(x, x).item(),
                "hv_products": products, "n_params": int(g.numel()),
            }
            if return_steps:
                steps[name] = [t.detach().clone() for t in ag.unflat(-x, params)]   # d* = −H̃⁻¹g (Lemma 1)

        def solve(name, params, lam, raise_):
            op = BlockOperator(model, batches, params, curvature, loss_fn, cache_graphs, device, n)
            precond = (lambda lam_, name=name: pre(name, lam_)) if pre else None
            if raise_:
                x, info, lam, raises = _solve_raising(op, gflat[name], lam, curvature, max_iter, tol, precond,
                                                      max_damping_raises)
            else:
                x, info = conjugate_gradient(op, gflat[name], lam, max_iter, tol, precond(lam) if precond else None)
                raises = 0
            return x, info, lam, raises, op.products

        needed, spent = {}, {}
        bar = tqdm(blocks.items(), desc=f"cg/{curvature} blocks", disable=ag.progress_off(progress))
        for name, params in bar:
            x, info, lam, raises, products = solve(name, params, damping, True)
            needed[name], spent[name] = lam, products
            record(name, params, x, info, lam, raises, lam, products)
            bar.set_postfix(block=name, it=info["iterations"])
        lam_shared = max(needed.values()) if needed else damping
        if shared_damping and curvature == "hessian":
            for name, params in blocks.items():         # one λ for every block: the largest any needed
                if needed[name] < lam_shared:
                    x, info, lam, _, products = solve(name, params, lam_shared, False)
                    record(name, params, x, info, lam, diags[name]["damping_raises"], needed[name],
                           spent[name] + products)
    return gains, diags, (steps if return_steps else None)


@contextmanager
def applied_step(params: list[torch.Tensor], step: list[torch.Tensor], scale: float = 1.0):
    """Temporarily θ_k ← θ_k + scale·d (restored on exit, also on error)."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, step):
                p.add_(d.to(p.dtype), alpha=scale)
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def block_quadratic(model, batches, params, step, *, curvature="hessian", loss_fn=None) -> dict[str, float]:
    """Terms of m_k(d) = gᵀd + ½ dᵀ H_kk d (the layer-restricted quadratic of Lemma 1, Eq 7) for a
    given d; at d = d* it equals −½ζ² − (λ/2)‖d*‖² (Eq 18)."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature: must be one of {list(CURVATURES)}, got {curvature!r}")
    batches = ag.check_batches(batches)
    device = ag.model_device(model)
    with ag.scoring_mode(model, list(params)), ag.eager_attention(model):
        g = ag.flat(ag.block_gradients(model, batches, list(params), loss_fn), ag.acc_dtype(params))
        op = BlockOperator(model, batches, list(params), curvature, loss_fn, False, device,
                           ag.global_count(len(batches), device))
        d = ag.flat(step, ag.acc_dtype(params))
        hd = op(d)
    gd, dhd = torch.dot(g, d).item(), torch.dot(d, hd).item()
    return {"g_dot_d": gd, "d_H_d": dhd, "quadratic": gd + 0.5 * dhd, "d_norm2": torch.dot(d, d).item()}
