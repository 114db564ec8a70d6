"""Eq 8 with H_kk ≈ diag(F), the diagonal empirical Fisher E_i[g_i ⊙ g_i] from per-sample
gradients (METHOD.md §1): ζ_k² = Σ_j g_j² / (F_jj + λ), one per-sample backward pass per sample.

granularity "sample": F from gradients of each sample's own loss; the mean-loss gradient is
Σ_i w_i g_i with the batch's known loss weights (one extra batch pass when they are unknown).
granularity "batch": F from batch gradients (cheaper, a coarser estimate).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mdlcap.scores import autograd as ag


def gains_diag_fisher(model, batches, blocks, *, damping, loss_fn, progress, granularity):
    """(gains, diagnostics) of Eq 8 with the diagonal empirical Fisher."""
    device = ag.model_device(model)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = ag.acc_dtype(all_params)
    g_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    f_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    n_samples = 0
    with ag.scoring_mode(model, all_params):
        for b in tqdm(batches, desc="diag_fisher batches", disable=ag.progress_off(progress)):
            b = ag.to_device(b, device)
            w = ag.sample_weights(b, loss_fn) if granularity == "sample" else None
            if granularity == "sample" and w is None:
                # batch loss weights unknown: take the mean-loss gradient from one batch pass
                loss, _ = ag.call_loss(model, b, loss_fn)
                for a, g in zip(g_acc, ag.grads(loss, all_params)):
                    a += g.to(dtype)
            if granularity == "batch":
                loss, _ = ag.call_loss(model, b, loss_fn)
                gs = ag.grads(loss, all_params)
                for a, fa, g in zip(g_acc, f_acc, gs):
                    a += g.to(dtype)
                    fa += g.to(dtype) ** 2
                n_samples += 1
                continue
            for i, s in enumerate(ag.split_samples(b)):
                loss, _ = ag.call_loss(model, s, loss_fn)
                gs = ag.grads(loss, all_params)
                for a, fa, g in zip(g_acc, f_acc, gs):
                    g = g.to(dtype)
                    fa += g * g                                   # empirical Fisher diagonal
                    if w is not None:
                        a += float(w[i]) * g                      # batch gradient = Σ w_i g_i
                n_samples += 1
    ag.allreduce_(g_acc + f_acc)
    n = ag.global_count(len(batches), device)
    ns = ag.global_count(n_samples, device)
    gains, diags, i = {}, {}, 0
    for name, params in blocks.items():
        g = ag.flat(g_acc[i:i + len(params)], dtype) / n
        f = ag.flat(f_acc[i:i + len(params)], dtype) / ns
        i += len(params)
        gains[name] = torch.sum(g * g / (f + damping)).item()      # Eq 8 with H ≈ diag(F)
        diags[name] = {"damping_used": damping, "fisher_mean": f.mean().item(), "fisher_max": f.max().item(),
                       "n_samples": ns, "granularity": granularity, "grad_norm2": torch.dot(g, g).item(),
                       "n_params": int(g.numel())}
    return gains, diags
