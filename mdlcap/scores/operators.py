"""The curvature block H_kk of METHOD.md §1 as a matrix-free operator v -> H_kk v (Eq 7–8), for
one block of parameters and the mean loss over batches (all-reduced across processes).

  "ggn"      the Gauss–Newton matrix Jᵀ ∇²ℓ J (PSD), J the Jacobian of the network outputs z
  "hessian"  the exact Hessian ∇²_θk L (indefinite in general)

Both products are reverse-over-reverse autograd (which every operator supports, unlike forward
mode): for the GGN, J v is the derivative of Jᵀw (linear in a dummy w) in w along v.
Why not a library: curvlinops / BackPACK are not installed here, and neither restricts the
operator to one layer of a Hugging Face model under torch.distributed in one call; the products
are a few lines of torch.autograd each.
"""
from __future__ import annotations

import torch

from mdlcap.scores import autograd as ag

CURVATURES = ("ggn", "hessian")


class BlockOperator:
    """v -> H_kk v (mean over batches, all-reduced) for one block, H = GGN or Hessian.

    With cache_graphs the forward graph and the first-order graph of each batch are built once
    and reused by every CG iteration (fast, memory ∝ number of batches); otherwise every product
    recomputes them (memory of one batch). `products` counts the calls.
    """

    def __init__(self, model, batches, params, curvature, loss_fn, cache_graphs, device, n_global):
        self.model, self.batches, self.params = model, batches, params
        self.curvature, self.loss_fn, self.cache = curvature, loss_fn, cache_graphs
        self.device, self.n = device, n_global
        self.dtype = ag.acc_dtype(params)
        self.products = 0
        self._states = [self._prepare(b) for b in batches] if cache_graphs else None

    def _prepare(self, batch):
        batch = ag.to_device(batch, self.device)
        loss, z = ag.call_loss(self.model, batch, self.loss_fn)
        if self.curvature == "hessian":
            return ("hessian", ag.grads(loss, self.params, create_graph=True))
        if z is None:
            raise ValueError("curvature: 'ggn' needs the network outputs; loss_fn must return (loss, outputs)")
        gz = torch.autograd.grad(loss, z, create_graph=True)[0]           # ∇_z ℓ, differentiable in z
        w = torch.zeros_like(z, requires_grad=True)
        u = ag.grads(z, self.params, grad_outputs=w, create_graph=True)   # Jᵀw, linear in w
        return ("ggn", z, gz, w, u)

    def _apply(self, state, v_list):
        if state[0] == "hessian":
            return ag.grads(state[1], self.params, grad_outputs=v_list, retain_graph=True)   # H v
        _, z, gz, w, u = state
        jv = torch.autograd.grad(u, w, grad_outputs=v_list, retain_graph=True)[0]          # J v
        hjv = torch.autograd.grad(gz, z, grad_outputs=jv, retain_graph=True)[0]             # ∇²ℓ J v
        return ag.grads(z, self.params, grad_outputs=hjv, retain_graph=True)               # Jᵀ ∇²ℓ J v

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v_list = ag.unflat(v, self.params)
        acc = torch.zeros_like(v)
        for i, b in enumerate(self.batches):
            state = self._states[i] if self.cache else self._prepare(b)
            acc += ag.flat(self._apply(state, v_list), self.dtype)
        ag.allreduce_([acc])
        self.products += 1
        return acc / self.n
