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


# ----------------------------------------------------------------------------- diagonal preconditioner
PRECONDITIONERS = ("none", "diag", "kfac")


def ggn_diagonal(model, batches, blocks, loss_fn=None, *, samples: int = 1, seed: int = 0,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """An unbiased Monte-Carlo estimate of diag(GGN) of the mean loss for every block (flat, in
    `ag.flat` order), used only as CG's diagonal preconditioner (METHOD.md §1).

    Default Hugging Face causal-LM loss (mean cross-entropy over the N_b loss tokens of batch b):
    labels ŷ_t ~ softmax(z_t) are sampled at every loss token and G̃ = ∇ Σ_t CE(z_t, ŷ_t) / √N_b;
    E[G̃ G̃ᵀ] = (1/N_b) Σ_t J_tᵀ (diag p_t − p_t p_tᵀ) J_t is batch b's GGN exactly (cross terms
    between tokens vanish: the sampled score s_t has mean 0), so the square G̃ ⊙ G̃ averaged over
    batches and `samples` draws estimates the GGN diagonal of the mean loss, one gradient pass per
    draw and batch for all blocks at once. This is the "true Fisher" convention (labels from the
    model); the empirical Fisher with the data's labels would be a different matrix.
    With a custom loss_fn the loss's structure is unknown: Hutchinson's estimate
    diag ≈ mean_v v ⊙ (H v) over `samples` Rademacher probes of each block's GGN operator
    (clamped at 0), `samples` products per block."""
    batches = ag.check_batches(batches)
    device = ag.model_device(model)
    n = ag.global_count(len(batches), device)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = ag.acc_dtype(all_params)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if loss_fn is not None:
        out = {}
        for name, params in blocks.items():
            op = BlockOperator(model, batches, params, "ggn", loss_fn, False, device, n)
            acc = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=device)
            for _ in range(samples):
                v = (torch.randint(0, 2, acc.shape, generator=gen).to(device, dtype) * 2 - 1)
                acc += v * op(v)
            out[name] = (acc / samples).clamp_min(0.0)
        return out
    acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    with ag.scoring_mode(model, all_params), ag.eager_attention(model):
        for b in batches:
            b = ag.to_device(b, device)
            if not isinstance(b, dict) or "labels" not in b:
                raise ValueError("batches: the diagonal preconditioner needs dict batches with labels (or give loss_fn)")
            mask = b["labels"][:, 1:] != -100
            n_tok = int(mask.sum())
            if n_tok == 0:
                continue
            for _ in range(samples):
                logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits[:, :-1][mask].float()
                with torch.no_grad():
                    probs = torch.softmax(logits, -1).cpu()
                    y = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
                loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum") / n_tok ** 0.5
                for a, g in zip(acc, ag.grads(loss, all_params)):
                    a += g.to(dtype) ** 2
    ag.allreduce_(acc)
    out, i = {}, 0
    for name, params in blocks.items():
        out[name] = ag.flat(acc[i:i + len(params)], dtype) / (n * samples)
        i += len(params)
    return out
