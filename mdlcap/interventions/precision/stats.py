"""Per-layer statistics of a trained network (CAQ, METHOD.md §5): curvature κ_i, Lipschitz
constant L_i, input range diam(Ω_i), cost, and the loss sensitivities of the baselines.

  kappa(stage, x)                 Hutchinson-style ‖H v‖/‖v‖ over Rademacher probes (+ RMS, operator norm)
  spectral_norm(op, in_shape)     L_i by power iteration on the weight operator
  local_lipschitz(stage, x)       L_i from the stage Jacobian at the samples
  sensitivity(model, x, y)        gradient norm² and Hutchinson Hessian trace per layer weight
  layer_stats(model, x, y)        all of the above, FLOPs and parameters, one row per stage
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mdlcap.interventions.precision.quantize import QuantNet


def _rademacher(shape, gen, device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen).to(device=device, dtype=torch.float32) * 2 - 1)


def _hvp_sqnorm(stage: nn.Module, x: torch.Tensor):
    """v ↦ H v for H = ∇²_x Σ_n ‖f(x_n)‖² (block-diagonal over samples n): double backward."""
    x = x.detach().requires_grad_(True)
    out = stage(x)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)

    def hvp(v):
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True)
        return hv
    return hvp


def kappa(stage: nn.Module, x: torch.Tensor, *, n_probes: int = 16, batch_size: int = 64, n_batches: int = 4,
          power_iters: int = 20, seed: int = 0) -> dict[str, float]:
    """Second-order sensitivity of stage f: H_n = ∇²_x ‖f(x_n)‖² per input sample x_n (prop. §2.1).

      kappa      mean over samples and Rademacher probes v of ‖H_n v‖/‖v‖ (the proposal's recipe)
      kappa_rms  sqrt(mean ‖H_n v‖²/‖v‖²): E‖Hv‖² = tr(H²) for Rademacher v, so this estimates
                 the RMS eigenvalue ‖H_n‖_F/√d (Hutchinson), averaged over samples
      kappa_op   max over samples of ‖H_n‖₂, by power iteration on the block-diagonal operator
    over up to `n_batches` batches of `x`.
    """
    if n_probes < 1 or n_batches < 1:
        raise ValueError("n_probes/n_batches: must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    ratios, op = [], 0.0
    for b in range(min(n_batches, math.ceil(len(x) / batch_size))):
        xb = x[b * batch_size:(b + 1) * batch_size]
        hvp = _hvp_sqnorm(stage, xb)
        dims = tuple(range(1, xb.ndim))
        for _ in range(n_probes):
            v = _rademacher(xb.shape, gen, xb.device)
            hv = hvp(v)
            ratios.append((hv.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)).detach())
        v = torch.randn(xb.shape, generator=gen).to(xb.device)
        lam = torch.zeros(())
        for _ in range(power_iters):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * len(dims))
            hv = hvp(v)
            lam = hv.flatten(1).norm(dim=1)                 # per-sample ‖H_n v_n‖ with ‖v_n‖ = 1
            v = hv.detach()
        op = max(op, float(lam.max()))
    r = torch.cat(ratios)
    return {"kappa": float(r.mean()), "kappa_rms": float(r.pow(2).mean().sqrt()), "kappa_op": op}


def spectral_norm(op: nn.Module, in_shape: tuple[int, ...], *, n_iter: int = 50, seed: int = 0) -> float:
    """L_i = ‖W‖₂ of the linear map x ↦ op(x) − bias, by power iteration on WᵀW (prop. §2.1:
    '50 iterations of power method'). The adjoint comes from autograd, so convolutions work."""
    gen = torch.Generator().manual_seed(seed)
    w = op.weight.detach()

    def A(x):
        return F.linear(x, w) if isinstance(op, nn.Linear) else F.conv2d(x, w, None, op.stride, op.padding)

    v = torch.randn((1, *in_shape), generator=gen).to(w.device)
    sigma = 0.0
    for _ in range(n_iter):
        v = (v / v.norm()).requires_grad_(True)
        u = A(v)
        (atu,) = torch.autograd.grad(u, v, grad_outputs=u)  # Wᵀ W v
        sigma = float(u.detach().norm())
        v = atu.detach()
    return sigma


def local_lipschitz(stage: nn.Module, x: torch.Tensor, *, n_iter: int = 20, seed: int = 0) -> float:
    """Sampling-based L_i: max over samples of the stage Jacobian's norm at x_n (power iteration)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    v = torch.randn(x.shape, generator=gen).to(x.device)
    dims = [1] * (x.ndim - 1)
    s = torch.zeros(len(x))
    _, vjp = torch.func.vjp(stage, x)                      # linearisation point is fixed: build once
    for _ in range(n_iter):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *dims)
        _, jv = torch.func.jvp(stage, (x,), (v,))
        (jtjv,) = vjp(jv)
        s = jv.detach().flatten(1).norm(dim=1)
        v = jtjv
    return float(s.max())


def _weight_stages(model: QuantNet):
    return [st.op.weight for st in model.stages]


def sensitivity(model: QuantNet, x: torch.Tensor, y: torch.Tensor, *, n_probes: int = 16, batch_size: int = 64,
                n_batches: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline sensitivities per layer weight W_i of the cross-entropy loss:
    gradient norm E_batch ‖∇_{W_i} ℓ‖², and the Hessian trace tr(∇²_{W_i} ℓ) by Hutchinson
    (Rademacher v over all weights, v_iᵀ(Hv)_i is unbiased for tr(H_ii); as HAWQ-V2)."""
    gen = torch.Generator().manual_seed(seed)
    ws = _weight_stages(model)
    gn = np.zeros(len(ws))
    tr = np.zeros(len(ws))
    nb = min(n_batches, math.ceil(len(y) / batch_size))
    for b in range(nb):
        xb, yb = x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
        loss = F.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, ws, create_graph=True)
        gn += np.array([float(g.detach().pow(2).sum()) for g in grads]) / nb
        for _ in range(n_probes):
            vs = [_rademacher(w.shape, gen, w.device) for w in ws]
            hv = torch.autograd.grad(grads, ws, grad_outputs=vs, retain_graph=True)
            tr += np.array([float((v * h).sum()) for v, h in zip(vs, hv)]) / (nb * n_probes)
    return gn, tr


def layer_stats(model: QuantNet, x: torch.Tensor, y: torch.Tensor, *, n_probes: int = 16, n_batches: int = 4,
                batch_size: int = 64, power_iters: int = 50, seed: int = 0) -> pd.DataFrame:
    """Per stage: κ (three readings), L (weight power iteration and local Jacobian), diam(Ω_i)
    = max ‖x_i‖, mean ‖x_i‖, activation scale max|x_i|, FLOPs (MACs per sample), params,
    gradient norm² and Hessian trace of the loss (for the baselines)."""
    model.eval()
    inputs = model.stage_inputs(x)
    rows = []
    for i, (st, xi) in enumerate(zip(model.stages, inputs)):
        k = kappa(st, xi, n_probes=n_probes, batch_size=batch_size, n_batches=n_batches,
                  power_iters=min(power_iters, 20), seed=seed + i)
        with torch.no_grad():
            z = st.op(xi[:1])
        op = st.op
        macs = int(z.numel() * (op.in_features if isinstance(op, nn.Linear)
                                else op.in_channels * op.kernel_size[0] * op.kernel_size[1] // op.groups))
        norms = xi.flatten(1).norm(dim=1)
        rows.append({
            "layer": i, "kind": type(op).__name__, **k,
            "lipschitz": spectral_norm(op, tuple(xi.shape[1:]), n_iter=power_iters, seed=seed + i),
            "lipschitz_local": local_lipschitz(st, xi[:batch_size], n_iter=min(power_iters, 20), seed=seed + i),
            "diam": float(norms.max()), "x_norm_mean": float(norms.mean()),
            "act_scale_max": float(xi.abs().max()),
            "flops": macs, "params": int(op.weight.numel()),
        })
    gn, tr = sensitivity(model, x, y, n_probes=n_probes, batch_size=batch_size, n_batches=n_batches, seed=seed)
    df = pd.DataFrame(rows)
    df["grad_norm2"] = gn
    df["hess_trace"] = tr
    return df

