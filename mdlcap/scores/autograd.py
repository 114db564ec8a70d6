"""The autograd plumbing every layer-scoring method shares (METHOD.md §1): loss calls, flat
vectors, gradients of the mean loss, per-sample splitting, and sums across torch.distributed
processes.

Conventions: g_k and H_kk are those of the MEAN loss over all batches (and over all processes when
torch.distributed is initialised: sums are all-reduced, then divided by the global batch count).
Accumulators are float64 when any scored parameter is float64, else float32 (`acc_dtype`).

    loss, outputs = call_loss(model, batch, loss_fn)    # default model(**batch).loss / .logits
    g = block_gradients(model, batches, params)          # ∇ of the mean loss, all-reduced
    with scoring_mode(model, params), eager_attention(model): ...
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm


def progress_off(progress: bool) -> bool:
    """Progress bars off when asked, or when TQDM_DISABLE is set (papermill runs, tests)."""
    return (not progress) or os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")


# ----------------------------------------------------------------------------- torch.distributed
def dist_group():
    """torch.distributed when a process group is up, else None."""
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def allreduce_(tensors: list[torch.Tensor]) -> None:
    """Sum in place across processes (no-op on one process)."""
    dist = dist_group()
    if dist is None:
        return
    for t in tensors:
        dist.all_reduce(t)


def global_count(n: int, device) -> int:
    """n summed over processes."""
    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    allreduce_([t])
    return int(round(t.item()))


# ----------------------------------------------------------------------------- devices and batches
def model_device(model: nn.Module):
    """Device of the model's first parameter (cpu for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch, device):
    """A batch (dict, list/tuple or tensor) with its tensors moved to `device`."""
    if isinstance(batch, Mapping):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return batch


def check_batches(batches) -> list:
    """The batches as a list; an empty list only under torch.distributed (a rank may hold none)."""
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise ValueError("batches: must be an iterable of batches (dicts for model(**batch))")
    batches = list(batches)
    if not batches and dist_group() is None:
        raise ValueError("batches: is empty; need at least one batch")
    return batches


def batch_size_of(batch) -> int:
    """Number of samples in a batch (dim 0 of its first non-scalar tensor; 1 if none)."""
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 1


def split_samples(batch) -> list:
    """A dict batch -> list of one-sample dicts (tensors sliced on dim 0)."""
    if not isinstance(batch, Mapping):
        raise ValueError("batches: per-sample methods need dict batches (tensors with the batch on dim 0)")
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"batches: tensors in a batch disagree on the batch size (dim 0): {sorted(sizes)}")
    n = sizes.pop()
    return [{k: (v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}
            for i in range(n)]


def sample_weights(batch, loss_fn=None) -> torch.Tensor | None:
    """Weights w_i with batch loss = Σ_i w_i · loss(sample i), known for HF causal-LM batches
    (mean over the shifted labels that are not -100); None when unknown."""
    if loss_fn is not None or not isinstance(batch, Mapping) or "labels" not in batch:
        return None
    lab = batch["labels"]
    counts = (lab[:, 1:] != -100).sum(1).to(torch.float64)
    total = counts.sum()
    if total <= 0:
        return None
    return counts / total


# ----------------------------------------------------------------------------- losses and gradients
def _hf_loss(model, batch):
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError("batches: model(**batch) returned no .loss (put labels in each batch or give loss_fn)")
    return loss, getattr(out, "logits", None)


def call_loss(model, batch, loss_fn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scalar loss, network outputs or None): loss_fn(model, batch) -> loss or (loss, outputs);
    None means model(**batch).loss with .logits as the outputs."""
    if loss_fn is None:
        loss, outputs = _hf_loss(model, batch)
    else:
        res = loss_fn(model, batch)
        loss, outputs = (res if isinstance(res, tuple) else (res, None))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn: must return a scalar tensor (or a tuple (loss, outputs))")
    return loss, outputs


def acc_dtype(params) -> torch.dtype:
    """Accumulation dtype: float64 if any parameter is float64, else float32."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def flat(ts: list[torch.Tensor], dtype) -> torch.Tensor:
    """Tensors -> one flat vector of `dtype`."""
    return torch.cat([t.reshape(-1).to(dtype) for t in ts])


def unflat(v: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat vector -> tensors shaped (and typed) like `like`."""
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out


def grads(out, inputs, grad_outputs=None, **kw) -> list[torch.Tensor]:
    """torch.autograd.grad with zeros for inputs `out` does not depend on."""
    gs = torch.autograd.grad(out, inputs, grad_outputs=grad_outputs, allow_unused=True, **kw)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


@contextmanager
def scoring_mode(model: nn.Module, params: list[torch.Tensor]):
    """eval() (no dropout) and requires_grad on the scored parameters; restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)


@contextmanager
def eager_attention(model: nn.Module):
    """Hugging Face attention switched to the plain-torch ("eager") kernel while inside: the fused
    SDPA/flash kernels have no double-backward, which Hessian/GGN-vector products need."""
    configs = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in configs:
            configs[id(cfg)] = (cfg, cfg._attn_implementation)
    try:
        for cfg, impl in configs.values():
            if impl not in (None, "eager"):
                cfg._attn_implementation = "eager"
        yield
    finally:
        for cfg, impl in configs.values():
            if impl not in (None, "eager"):
                cfg._attn_implementation = impl


def mean_loss(model, batches, loss_fn=None) -> float:
    """Mean loss over batches (all-reduced across processes), without gradients."""
    batches = check_batches(batches)
    device = model_device(model)
    was = model.training
    model.eval()
    tot = torch.zeros(1, dtype=torch.float64, device=device)
    with torch.no_grad():
        for b in batches:
            tot += call_loss(model, to_device(b, device), loss_fn)[0].double()
    model.train(was)
    n = global_count(len(batches), device)
    allreduce_([tot])
    return tot.item() / n


def block_gradients(model, batches, params, loss_fn=None, progress=False) -> list[torch.Tensor]:
    """∇ of the mean loss over batches w.r.t. params (all-reduced): g_k of Eq 8 for every block."""
    batches = check_batches(batches)
    device = model_device(model)
    dtype = acc_dtype(params)
    acc = [torch.zeros_like(p, dtype=dtype) for p in params]
    with scoring_mode(model, params):
        for b in tqdm(batches, desc="gradient", leave=False, disable=progress_off(progress)):
            loss, _ = call_loss(model, to_device(b, device), loss_fn)
            for a, g in zip(acc, grads(loss, params)):
                a += g.to(dtype)
    allreduce_(acc)
    n = global_count(len(batches), device)
    return [a / n for a in acc]
