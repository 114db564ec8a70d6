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
from mdlcap.scores.operators import CURVATURES, BlockOperator


def gains_cg(model, batches, blocks, *, curvature, damping, loss_fn, max_iter, tol, cache_graphs,
             progress, return_steps, max_damping_raises):
    """(gains, diagnostics, steps or None) of Eq 8 with H_kk the GGN or the exact Hessian, by CG."""
    device = ag.model_device(model)
    n = ag.global_count(len(batches), device)
    all_params = [p for ps in blocks.values() for p in ps]
    gains, diags, steps = {}, {}, {}
    with ag.scoring_mode(model, all_params), ag.eager_attention(model):
        grads = ag.block_gradients(model, batches, all_params, loss_fn, progress=progress)
        gi = 0
        bar = tqdm(blocks.items(), desc=f"cg/{curvature} blocks", disable=ag.progress_off(progress))
        for name, params in bar:
            g = ag.flat(grads[gi:gi + len(params)], ag.acc_dtype(params))
            gi += len(params)
            op = BlockOperator(model, batches, params, curvature, loss_fn, cache_graphs, device, n)
            lam, raises = damping, 0
            while True:
                x, info = conjugate_gradient(op, g, lam, max_iter, tol)
                ritz_min_a = min(info["ritz"]) if info["ritz"] else math.inf
                indefinite = info["negative_curvature"] or ritz_min_a <= 0.0
                if not indefinite or curvature == "ggn" or raises >= max_damping_raises:
                    break
                # Exact Hessian block is indefinite at this λ: raise λ past the most negative
                # curvature seen (Rayleigh quotient / Ritz value of H) and restart (Eq 7 needs H̃ ≻ 0).
                lam_min_h = min(ritz_min_a, info["rayleigh_min"]) - lam
                lam = max(2.0 * lam, -2.0 * lam_min_h)
                raises += 1
            lam_min_h = (min(min(info["ritz"]) if info["ritz"] else math.inf, info["rayleigh_min"]) - lam)
            zeta2 = torch.dot(g, x).item()                      # Eq 8: ζ² = gᵀ (H + λI)⁻¹ g
            gains[name] = zeta2
            diags[name] = {
                "iterations": info["iterations"], "rel_residual": info["rel_residual"],
                "damping_requested": damping, "damping_used": lam, "damping_raises": raises,
                "negative_curvature": bool(info["negative_curvature"] or (info["ritz"] and min(info["ritz"]) <= 0)),
                "ritz_min_H": lam_min_h if math.isfinite(lam_min_h) else None,
                "ritz_max_H": (max(info["ritz"]) - lam) if info["ritz"] else None,
                "damping_needed_lower_bound": max(0.0, -lam_min_h) if math.isfinite(lam_min_h) else None,
                "grad_norm2": torch.dot(g, g).item(), "step_norm2": torch.dot(x, x).item(),
                "hv_products": op.products, "n_params": int(g.numel()),
            }
            if return_steps:
                steps[name] = [t.detach().clone() for t in ag.unflat(-x, params)]   # d* = −H̃⁻¹g (Lemma 1)
            del op
            bar.set_postfix(block=name, it=info["iterations"])
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
