"""The Fisher conventions shared by diag_fisher, kfac and ekfac (METHOD.md §1): every estimator
approximates the curvature of the SAME mean loss as the Gauss–Newton matrix CG uses, namely the
mean over all loss terms (tokens) of all batches, L = (1/M) Σ_t ℓ_t.

    F = (1/M) Σ_{sequences i} ∇S_i ∇S_iᵀ,   S_i = Σ_{t ∈ loss tokens of i} ℓ_t(y_t)

i.e. per-sequence gradients of the token-SUM loss, squared, divided by the total number M of loss
tokens (pooled over batches and, under torch.distributed, over processes).

  fisher="true"       (default; kronfluence's default, `FactorArguments.use_empirical_fisher=False`)
                      y_t drawn from the model's predictive distribution softmax(z_t) at every loss
                      token, independently. E_y[∇_z ℓ_t] = 0, so the cross-token terms of ∇S_i ∇S_iᵀ
                      vanish in expectation and F is an unbiased estimate of
                      (1/M) Σ_t J_tᵀ E_y[∇_z ℓ_t ∇_z ℓ_tᵀ] J_t = (1/M) Σ_t J_tᵀ ∇²_z ℓ_t J_t, the GGN
                      of the mean loss (softmax cross-entropy: Fisher = GGN). `mc_samples` draws
                      per loss token are averaged.
  fisher="empirical"  y_t the batch's labels. Scale-consistent with the GGN (one loss token per
                      sequence: the usual empirical Fisher), but the cross-token terms of a
                      sequence remain (they do not vanish for fixed labels): a biased estimate.

Labels are drawn with a torch.Generator seeded from (`seed`, the batch's content), so scores are
reproducible, independent of batch order, of block grouping and of how batches are split over
processes (each batch draws the same labels wherever it is scored).

Loss terms: Hugging Face causal-LM batches (loss_fn None) carry `labels`; the loss tokens are the
shifted labels that are not -100, and position p of the sequence predicts token p + 1. A custom
loss_fn(model, batch) is taken to have ONE loss term per sample (dim 0 of the batch; its loss is
the batch mean over samples). For the true Fisher it must also accept a keyword `sample`:
loss_fn(model, batch, sample=generator) returns the same loss with each sample's label drawn from
the model's predictive distribution using `generator` (kronfluence's
`compute_train_loss(batch, model, sample=True)` convention).
"""
from __future__ import annotations

import hashlib
import inspect
from typing import Mapping

import torch
import torch.nn.functional as F

from mdlcap.scores import autograd as ag

FISHERS = ("true", "empirical")
FISHER_SEED = 0         # base seed of the label draws (the batch's content is mixed in)

__all__ = ["FISHERS", "FISHER_SEED", "check_fisher", "batch_generator", "loss_positions", "BatchLosses",
           "batch_losses"]


def check_fisher(fisher: str, loss_fn, mc_samples: int, samples_name: str = "mc_samples") -> None:
    """ValueError unless `fisher` is one of FISHERS, mc_samples an integer >= 1, and a custom
    loss_fn can draw labels when the true Fisher is asked for."""
    if fisher not in FISHERS:
        raise ValueError(f"fisher: must be one of {list(FISHERS)}, got {fisher!r}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"{samples_name}: must be an integer >= 1, got {mc_samples!r}")
    if fisher == "true" and loss_fn is not None:
        try:
            ok = "sample" in inspect.signature(loss_fn).parameters
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError("loss_fn: the true Fisher (fisher='true') needs loss_fn(model, batch, sample=generator) "
                             "returning the loss at labels drawn from the model; give such a loss_fn or "
                             "fisher='empirical'")


def batch_generator(batch, device, seed: int = FISHER_SEED, stream: int = 0) -> torch.Generator:
    """A generator on `device` seeded from (seed, stream, the batch's tensors' bytes)."""
    h = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8)
    items = sorted(batch.items()) if isinstance(batch, Mapping) else enumerate(
        batch if isinstance(batch, (list, tuple)) else [batch])
    for k, v in items:
        if isinstance(v, torch.Tensor):
            h.update(str(k).encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(h.digest(), "little") % (2 ** 63))
    return gen


def loss_positions(batch, loss_fn) -> torch.Tensor | None:
    """(B, T) bool: positions p whose next-token prediction is a loss term (labels[:, p+1] != -100)
    for Hugging Face batches; None (every row/position) for a custom loss_fn."""
    if loss_fn is not None or not isinstance(batch, Mapping) or "labels" not in batch:
        return None
    lab = batch["labels"]
    pos = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    pos[:, :-1] = lab[:, 1:] != -100
    return pos


class BatchLosses:
    """One forward of a batch: the mean loss (for g) and the token-sum losses of the Fisher draws.

    mean: the batch's mean loss (model(**batch).loss or loss_fn's);
    n_terms: its number of loss terms M_b (loss tokens; samples for a custom loss_fn);
    fisher_sums: callables, one per draw, each returning a token-SUM loss S_b = Σ_t ℓ_t(y_t) of the
    batch whose per-sequence gradients are those of the Fisher (sampled or actual labels);
    shared_forward: True when the draws reuse this forward's graph (Hugging Face path), False when
    each draw runs its own forward (custom loss_fn with the true Fisher)."""

    def __init__(self, mean, n_terms, fisher_sums, shared_forward):
        self.mean, self.n_terms, self.fisher_sums, self.shared_forward = mean, n_terms, fisher_sums, shared_forward


def _token_logits(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return logits[pos].float()                  # (M_b, V), float32 as the Hugging Face loss


def batch_losses(model, batch, loss_fn, fisher: str, gen: torch.Generator, mc_samples: int) -> BatchLosses:
    """Run the batch's forward and return its BatchLosses under the `fisher` convention (module
    docstring)."""
    pos = loss_positions(batch, loss_fn)
    if pos is not None:                                           # Hugging Face causal LM
        loss, logits = ag.call_loss(model, batch, None)
        if logits is None:
            raise ValueError("batches: model(**batch) returned no .logits (needed to draw labels for the Fisher)")
        M = int(pos.sum().item())
        z = _token_logits(logits[:, :pos.shape[1]], pos)
        if fisher == "empirical":
            sums = [lambda: loss * M]                             # the model's own loss, token-summed
        else:
            with torch.no_grad():
                probs = torch.softmax(z.detach(), dim=-1)
            ys = [torch.multinomial(probs, 1, generator=gen).squeeze(-1) if M else probs.new_zeros(0, dtype=torch.long)
                  for _ in range(mc_samples)]
            sums = [lambda z=z, y=y: F.cross_entropy(z, y, reduction="sum") for y in ys]
        return BatchLosses(loss, M, sums, True)
    B = ag.batch_size_of(batch)
    if fisher == "empirical":
        loss, _ = ag.call_loss(model, batch, loss_fn)
        return BatchLosses(loss, B, [lambda loss=loss: loss * B], True)
    loss = ag.call_loss(model, batch, loss_fn)[0]

    def draw():
        res = loss_fn(model, batch, sample=gen)
        return (res[0] if isinstance(res, tuple) else res) * B
    return BatchLosses(loss, B, [draw] * mc_samples, False)
