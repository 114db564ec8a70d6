"""Eq 8 with H_kk ≈ diag(F) (METHOD.md §1), F the Fisher of the mean loss over all loss tokens
(scores.fisher: true Fisher by default, labels drawn from the model; empirical on request):
ζ_k² = Σ_j g_j² / (F_jj + λ), F_jj = (1/M) Σ_i (∂S_i/∂θ_j)², S_i the token-SUM loss of sequence i.

granularity "sample": S_i per sequence (one forward and backward per sample, per draw); g from
one batch pass (true Fisher; custom loss_fn, whose reduction over samples is unknown), or, for the
empirical Fisher of Hugging Face batches, Σ_i ∇S_i^true / M_b from the same per-sample backwards
(the per-sample token sums of the true labels add up to M_b × the batch's mean loss).
granularity "batch": S_b of the whole batch (one backward per batch): for the true Fisher the
cross-sequence terms vanish in expectation as the cross-token ones do, so the estimate is unbiased
too, with more variance; for the empirical Fisher they remain (a coarser estimate).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mdlcap.scores import autograd as ag
from mdlcap.scores import fisher as fi


def gains_diag_fisher(model, batches, blocks, *, damping, loss_fn, progress, granularity, fisher="true",
                      mc_samples=1, seed=fi.FISHER_SEED):
    """(gains, diagnostics) of Eq 8 with the diagonal Fisher of the mean loss."""
    fi.check_fisher(fisher, loss_fn, mc_samples)
    device = ag.model_device(model)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = ag.acc_dtype(all_params)
    g_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    f_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    mc = mc_samples if fisher == "true" else 1
    M = 0.0

    def accumulate(unit, gen, g_den):
        """Forward `unit` (a batch or one sample), add its Fisher draws' squared gradients to f_acc and
        ∇(its true-label token sum) / g_den to g_acc (g_den None: no gradient). Returns its M."""
        bl = fi.batch_losses(model, unit, loss_fn, fisher, gen, mc_samples)
        if bl.n_terms == 0:
            return 0
        if fisher == "true" and g_den:
            for a, g in zip(g_acc, ag.grads(bl.mean, all_params, retain_graph=bl.shared_forward)):
                a += g.to(dtype) * (bl.n_terms / g_den)
        for j, draw in enumerate(bl.fisher_sums):
            gs = ag.grads(draw(), all_params, retain_graph=bl.shared_forward and j < len(bl.fisher_sums) - 1)
            for fa, g in zip(f_acc, gs):
                fa += g.to(dtype) ** 2
            if fisher == "empirical" and g_den:             # S = M · mean loss: g from the same backward
                for a, g in zip(g_acc, gs):
                    a += g.to(dtype) / g_den
        return bl.n_terms

    with ag.scoring_mode(model, all_params):
        for b in tqdm(batches, desc="diag_fisher batches", disable=ag.progress_off(progress)):
            b = ag.to_device(b, device)
            gen = fi.batch_generator(b, device, seed)
            pos = fi.loss_positions(b, loss_fn)
            Mb = int(pos.sum().item()) if pos is not None else ag.batch_size_of(b)
            if granularity == "batch":
                M += accumulate(b, gen, Mb)
                continue
            # g from one batch pass: for a custom loss_fn (its reduction over samples is unknown) and for
            # the true Fisher (cheaper than a second backward per sample); the empirical Fisher's
            # per-sample backward of the true token sum gives g as well
            per_sample_g = pos is not None and fisher == "empirical"
            if not per_sample_g:
                for a, g in zip(g_acc, ag.grads(ag.call_loss(model, b, loss_fn)[0], all_params)):
                    a += g.to(dtype)
            for s in ag.split_samples(b):
                M += accumulate(s, gen, Mb if per_sample_g else None)
    ag.allreduce_(g_acc + f_acc)
    n = ag.global_count(len(batches), device)
    counts = torch.tensor([M], dtype=torch.float64, device=device)
    ag.allreduce_([counts])
    M_tot = max(counts.item(), 1.0)
    gains, diags, i = {}, {}, 0
    for name, params in blocks.items():
        g = ag.flat(g_acc[i:i + len(params)], dtype) / n
        f = ag.flat(f_acc[i:i + len(params)], dtype) / (M_tot * mc)
        i += len(params)
        gains[name] = torch.sum(g * g / (f + damping)).item()      # Eq 8 with H ≈ diag(F)
        diags[name] = {"damping_used": damping, "fisher_mean": f.mean().item(), "fisher_max": f.max().item(),
                       "n_loss_terms": int(M_tot), "granularity": granularity, "fisher": fisher,
                       "mc_samples": mc_samples, "grad_norm2": torch.dot(g, g).item(), "n_params": int(g.numel())}
    return gains, diags
