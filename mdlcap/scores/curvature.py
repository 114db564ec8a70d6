"""Layer gains ζ_k² = g_kᵀ (H_kk + λI)⁻¹ g_k (paper Eq 8, METHOD.md §1) with several curvature surrogates.

    gains = layer_gains(model, batches, method="cg", curvature="ggn", damping=1e-3)
    gains["layers.3"]                # ζ² of decoder layer 3
    gains.diagnostics["layers.3"]    # CG iterations, relative residual, damping used, ...

g_k and H_kk are those of the MEAN loss over all batches (and over all processes when
torch.distributed is initialised: sums are all-reduced, weighted by batch count).

Methods
  cg           matrix-free conjugate gradient on (H_kk + λI) d = g_k; H_kk is the Gauss–Newton
               matrix Jᵀ ∇²ℓ J ("ggn", PSD) or the exact Hessian ("hessian"; indefinite, so the
               damping is raised until CG sees positive curvature and the damping used is reported)
  diag_fisher  diagonal empirical Fisher E_i[g_i ⊙ g_i] from per-sample gradients
  kfac         Kronecker factors A = E[a aᵀ], G = E[δ δᵀ] per nn.Linear (other parameters: diagonal)
  ekfac        K-FAC eigenbasis with eigenvalues re-fitted to per-sample gradients (George et al. 2018)
  grad_norm    ‖g_k‖² (the baseline the paper says ζ² dominates)

Why by hand: curvlinops / kronfluence / BackPACK are not installed here and none of them computes a
layer-restricted Newton decrement on a Hugging Face model under torch.distributed in one call; the
products needed are a few lines of torch.autograd each (reverse-over-reverse, which every operator
supports, unlike forward mode).
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from mdlcap import files as mio

METHODS = ("cg", "diag_fisher", "kfac", "ekfac", "grad_norm")
CURVATURES = ("ggn", "hessian")
# scores.csv method names (COMMON.md contract): method/curvature -> column value
SCORES_VERSION = "1"        # part of every cache key: bump when a change alters the scores
SCORE_METHODS = ("cg_ggn", "cg_hessian", "diag_fisher", "kfac", "ekfac", "grad_norm", "layerif_all", "layerif_pos")


# ----------------------------------------------------------------------------- result
class Gains(dict):
    """Mapping block name -> ζ² (float), in block order, with per-block diagnostics."""

    def __init__(self, gains: Mapping[str, float], diagnostics: Mapping[str, dict] | None = None, *,
                 method: str = "", curvature: str | None = None, damping: float = 0.0, steps=None,
                 meta: Mapping[str, Any] | None = None):
        super().__init__((k, float(v)) for k, v in gains.items())
        self.diagnostics = {k: dict(v) for k, v in (diagnostics or {}).items()}
        self.method, self.curvature, self.damping = method, curvature, float(damping)
        self.steps = steps          # block name -> list of tensors d* = −H̃⁻¹g (cg with return_steps=True)
        self.meta = dict(meta or {})    # e.g. cost of the call (seconds, peak memory), filled by drivers

    @property
    def gains(self) -> dict[str, float]:
        return dict(self)

    def values_array(self):
        import numpy as np
        return np.array(list(self.values()), dtype=float)

    def to_json(self) -> dict:
        return {"gains": dict(self), "diagnostics": self.diagnostics, "method": self.method,
                "curvature": self.curvature, "damping": self.damping, "meta": self.meta}

    @classmethod
    def from_json(cls, obj: dict) -> "Gains":
        return cls(obj["gains"], obj.get("diagnostics"), method=obj.get("method", ""),
                   curvature=obj.get("curvature"), damping=obj.get("damping", 0.0), meta=obj.get("meta"))


# ----------------------------------------------------------------------------- blocks
def resolve_blocks(model: nn.Module, blocks=None) -> dict[str, list[nn.Parameter]]:
    """Block name -> parameters. None/"layer": one block per decoder layer; "attn_mlp": attention
    (+ its input norm) and MLP (+ the other norms) of each layer; or an explicit mapping
    name -> list of parameters or an nn.Module."""
    if blocks is None or blocks == "layer":
        from mdlcap.models import decoder_layers
        out = {f"layers.{i}": list(layer.parameters()) for i, layer in enumerate(decoder_layers(model))}
    elif blocks == "attn_mlp":
        from mdlcap.models import decoder_layers
        out = {}
        for i, layer in enumerate(decoder_layers(model)):
            attn, mlp = [], []
            for name, p in layer.named_parameters():
                low = name.lower()
                is_mlp = any(s in low for s in ("mlp", "feed_forward", "feedforward", "ffn", "post_attention"))
                (mlp if is_mlp else attn).append(p)
            out[f"layers.{i}.attn"], out[f"layers.{i}.mlp"] = attn, mlp
    elif isinstance(blocks, Mapping):
        out = {}
        for k, v in blocks.items():
            params = list(v.parameters()) if isinstance(v, nn.Module) else list(v)
            if not all(isinstance(p, torch.Tensor) for p in params):
                raise ValueError(f"blocks: entry '{k}' must be an nn.Module or a list of parameters")
            out[str(k)] = params
    else:
        raise ValueError(f"blocks: must be None, 'layer', 'attn_mlp' or a mapping name -> parameters, got {blocks!r}")
    seen: set[int] = set()
    for k, ps in out.items():
        if not ps:
            raise ValueError(f"blocks: block '{k}' has no parameters")
        for p in ps:
            if id(p) in seen:
                raise ValueError(f"blocks: parameter shared by several blocks (block '{k}'); blocks must be disjoint")
            seen.add(id(p))
    return out


# ----------------------------------------------------------------------------- helpers
def _no_bar(progress: bool) -> bool:
    """Progress bars off when asked, or when TQDM_DISABLE is set (papermill runs, tests)."""
    return (not progress) or os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")


def _dist():
    """torch.distributed when a process group is up, else None."""
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _allreduce_(tensors: list[torch.Tensor]) -> None:
    """Sum in place across processes (no-op on one process)."""
    dist = _dist()
    if dist is None:
        return
    for t in tensors:
        dist.all_reduce(t)


def _global_count(n: int, device) -> int:
    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    _allreduce_([t])
    return int(round(t.item()))


def _model_device(model: nn.Module):
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to_device(batch, device):
    if isinstance(batch, Mapping):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return batch


def _hf_loss(model, batch):
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError("batches: model(**batch) returned no .loss (put labels in each batch or give loss_fn)")
    return loss, getattr(out, "logits", None)


def _call_loss(model, batch, loss_fn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scalar loss, network outputs or None)."""
    if loss_fn is None:
        loss, outputs = _hf_loss(model, batch)
    else:
        res = loss_fn(model, batch)
        loss, outputs = (res if isinstance(res, tuple) else (res, None))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn: must return a scalar tensor (or a tuple (loss, outputs))")
    return loss, outputs


def _check_batches(batches) -> list:
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise ValueError("batches: must be an iterable of batches (dicts for model(**batch))")
    batches = list(batches)
    if not batches and _dist() is None:
        raise ValueError("batches: is empty; need at least one batch")
    return batches


def _acc_dtype(params) -> torch.dtype:
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def _flat(ts: list[torch.Tensor], dtype) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(dtype) for t in ts])


def _unflat(v: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out


def _grads(out, inputs, grad_outputs=None, **kw) -> list[torch.Tensor]:
    gs = torch.autograd.grad(out, inputs, grad_outputs=grad_outputs, allow_unused=True, **kw)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


@contextmanager
def _scoring_mode(model: nn.Module, params: list[torch.Tensor]):
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


def mean_loss(model, batches, loss_fn=None) -> float:
    """Mean loss over batches (all-reduced across processes), without gradients."""
    batches = _check_batches(batches)
    device = _model_device(model)
    was = model.training
    model.eval()
    tot = torch.zeros(1, dtype=torch.float64, device=device)
    with torch.no_grad():
        for b in batches:
            tot += _call_loss(model, _to_device(b, device), loss_fn)[0].double()
    model.train(was)
    n = _global_count(len(batches), device)
    _allreduce_([tot])
    return tot.item() / n


def block_gradients(model, batches, params, loss_fn=None, progress=False) -> list[torch.Tensor]:
    """∇ of the mean loss over batches w.r.t. params (all-reduced)."""
    batches = _check_batches(batches)
    device = _model_device(model)
    dtype = _acc_dtype(params)
    acc = [torch.zeros_like(p, dtype=dtype) for p in params]
    with _scoring_mode(model, params):
        for b in tqdm(batches, desc="gradient", leave=False, disable=_no_bar(progress)):
            loss, _ = _call_loss(model, _to_device(b, device), loss_fn)
            for a, g in zip(acc, _grads(loss, params)):
                a += g.to(dtype)
    _allreduce_(acc)
    n = _global_count(len(batches), device)
    return [a / n for a in acc]


# ----------------------------------------------------------------------------- curvature products
class _BlockOperator:
    """v -> H_kk v (mean over batches, all-reduced) for one block, H = GGN or Hessian.

    With cache_graphs the forward graph and the first-order graph of each batch are built once
    and reused by every CG iteration (fast, memory ∝ number of batches); otherwise every product
    recomputes them (memory of one batch).
    """

    def __init__(self, model, batches, params, curvature, loss_fn, cache_graphs, device, n_global):
        self.model, self.batches, self.params = model, batches, params
        self.curvature, self.loss_fn, self.cache = curvature, loss_fn, cache_graphs
        self.device, self.n = device, n_global
        self.dtype = _acc_dtype(params)
        self.products = 0
        self._states = [self._prepare(b) for b in batches] if cache_graphs else None

    def _prepare(self, batch):
        batch = _to_device(batch, self.device)
        loss, z = _call_loss(self.model, batch, self.loss_fn)
        if self.curvature == "hessian":
            return ("hessian", _grads(loss, self.params, create_graph=True))
        if z is None:
            raise ValueError("curvature: 'ggn' needs the network outputs; loss_fn must return (loss, outputs)")
        gz = torch.autograd.grad(loss, z, create_graph=True)[0]           # ∇_z ℓ, differentiable in z
        w = torch.zeros_like(z, requires_grad=True)
        u = _grads(z, self.params, grad_outputs=w, create_graph=True)     # Jᵀw, linear in w
        return ("ggn", z, gz, w, u)

    def _apply(self, state, v_list):
        if state[0] == "hessian":
            return _grads(state[1], self.params, grad_outputs=v_list, retain_graph=True)   # H v
        _, z, gz, w, u = state
        jv = torch.autograd.grad(u, w, grad_outputs=v_list, retain_graph=True)[0]        # J v
        hjv = torch.autograd.grad(gz, z, grad_outputs=jv, retain_graph=True)[0]           # ∇²ℓ J v
        return _grads(z, self.params, grad_outputs=hjv, retain_graph=True)               # Jᵀ ∇²ℓ J v

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v_list = _unflat(v, self.params)
        acc = torch.zeros_like(v)
        for i, b in enumerate(self.batches):
            state = self._states[i] if self.cache else self._prepare(b)
            acc += _flat(self._apply(state, v_list), self.dtype)
        _allreduce_([acc])
        self.products += 1
        return acc / self.n


def _cg(matvec, b: torch.Tensor, damping: float, max_iter: int, tol: float) -> tuple[torch.Tensor, dict]:
    """Conjugate gradient on (H + λI) x = b from x0 = 0; also the Lanczos tridiagonal's Ritz values."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.dot(r, r).item()
    bnorm = math.sqrt(rs)
    alphas, betas = [], []
    neg, rq_min = False, math.inf
    it = 0
    if bnorm == 0.0:
        return x, {"iterations": 0, "rel_residual": 0.0, "negative_curvature": False, "ritz": []}
    for it in range(1, max_iter + 1):
        ap = matvec(p) + damping * p
        pap = torch.dot(p, ap).item()
        pp = torch.dot(p, p).item()
        rq_min = min(rq_min, pap / pp)
        if pap <= 0.0:            # (H + λI) not positive definite along p
            neg = True
            it -= 1
            break
        alpha = rs / pap
        x += alpha * p
        r -= alpha * ap
        rs_new = torch.dot(r, r).item()
        alphas.append(alpha)
        betas.append(rs_new / rs)
        if math.sqrt(rs_new) <= tol * bnorm:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    ritz = _ritz_values(alphas, betas)
    return x, {"iterations": it, "rel_residual": math.sqrt(rs) / bnorm, "negative_curvature": neg,
               "ritz": ritz, "rayleigh_min": rq_min}


def _ritz_values(alphas, betas) -> list[float]:
    """Eigenvalues of the Lanczos tridiagonal built from CG's coefficients (of H + λI)."""
    m = len(alphas)
    if m == 0:
        return []
    T = torch.zeros(m, m, dtype=torch.float64)
    for j in range(m):
        T[j, j] = 1.0 / alphas[j] + (betas[j - 1] / alphas[j - 1] if j > 0 else 0.0)
        if j + 1 < m:
            T[j, j + 1] = T[j + 1, j] = math.sqrt(max(betas[j], 0.0)) / alphas[j]
    return torch.linalg.eigvalsh(T).tolist()


def _gains_cg(model, batches, blocks, *, curvature, damping, loss_fn, max_iter, tol, cache_graphs,
              progress, return_steps, max_damping_raises):
    device = _model_device(model)
    n = _global_count(len(batches), device)
    all_params = [p for ps in blocks.values() for p in ps]
    gains, diags, steps = {}, {}, {}
    with _scoring_mode(model, all_params), eager_attention(model):
        grads = block_gradients(model, batches, all_params, loss_fn, progress=progress)
        gi = 0
        bar = tqdm(blocks.items(), desc=f"cg/{curvature} blocks", disable=_no_bar(progress))
        for name, params in bar:
            g = _flat(grads[gi:gi + len(params)], _acc_dtype(params))
            gi += len(params)
            op = _BlockOperator(model, batches, params, curvature, loss_fn, cache_graphs, device, n)
            lam, raises = damping, 0
            while True:
                x, info = _cg(op, g, lam, max_iter, tol)
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
                steps[name] = [t.detach().clone() for t in _unflat(-x, params)]   # d* = −H̃⁻¹g (Lemma 1)
            del op
            bar.set_postfix(block=name, it=info["iterations"])
    return gains, diags, (steps if return_steps else None)


# ----------------------------------------------------------------------------- diagonal Fisher
def _gains_diag_fisher(model, batches, blocks, *, damping, loss_fn, progress, granularity):
    device = _model_device(model)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = _acc_dtype(all_params)
    g_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    f_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    n_samples = 0
    with _scoring_mode(model, all_params):
        for b in tqdm(batches, desc="diag_fisher batches", disable=_no_bar(progress)):
            b = _to_device(b, device)
            w = sample_weights(b, loss_fn) if granularity == "sample" else None
            if granularity == "sample" and w is None:
                # batch loss weights unknown: take the mean-loss gradient from one batch pass
                loss, _ = _call_loss(model, b, loss_fn)
                for a, g in zip(g_acc, _grads(loss, all_params)):
                    a += g.to(dtype)
            if granularity == "batch":
                loss, _ = _call_loss(model, b, loss_fn)
                gs = _grads(loss, all_params)
                for a, fa, g in zip(g_acc, f_acc, gs):
                    a += g.to(dtype)
                    fa += g.to(dtype) ** 2
                n_samples += 1
                continue
            for i, s in enumerate(split_samples(b)):
                loss, _ = _call_loss(model, s, loss_fn)
                gs = _grads(loss, all_params)
                for a, fa, g in zip(g_acc, f_acc, gs):
                    g = g.to(dtype)
                    fa += g * g                                   # empirical Fisher diagonal
                    if w is not None:
                        a += float(w[i]) * g                      # batch gradient = Σ w_i g_i
                n_samples += 1
    _allreduce_(g_acc + f_acc)
    n = _global_count(len(batches), device)
    ns = _global_count(n_samples, device)
    gains, diags, i = {}, {}, 0
    for name, params in blocks.items():
        g = _flat(g_acc[i:i + len(params)], dtype) / n
        f = _flat(f_acc[i:i + len(params)], dtype) / ns
        i += len(params)
        gains[name] = torch.sum(g * g / (f + damping)).item()      # Eq 8 with H ≈ diag(F)
        diags[name] = {"damping_used": damping, "fisher_mean": f.mean().item(), "fisher_max": f.max().item(),
                       "n_samples": ns, "granularity": granularity, "grad_norm2": torch.dot(g, g).item(),
                       "n_params": int(g.numel())}
    return gains, diags


# ----------------------------------------------------------------------------- K-FAC / EK-FAC
SHARE_KFAC_INPUTS = True    # modules fed the same tensor (q/k/v, gate/up) share one A factor and its eigenbasis


class _KfacHooks:
    """Forward/backward hooks on the nn.Linear modules whose weight is scored.

    Pass "factors": A += mean_t a aᵀ per batch, G += Σ_i s_i² Σ_{t∈i} δ_t δ_tᵀ / B (δ = ∂L_batch/∂out,
    s_i = per-sample rescaling so that s_i δ is the gradient of sample i's own loss).
    Pass "eigen": per-sample gradients projected on the K-FAC eigenbasis, squared and summed.
    """

    def __init__(self, linears: dict[str, nn.Linear], dtype):
        self.linears, self.dtype = linears, dtype
        self.A = {k: torch.zeros(m.in_features, m.in_features, dtype=dtype, device=m.weight.device) for k, m in linears.items()}
        self.G = {k: torch.zeros(m.out_features, m.out_features, dtype=dtype, device=m.weight.device) for k, m in linears.items()}
        self.S = {k: torch.zeros(m.out_features, m.in_features, dtype=dtype, device=m.weight.device) for k, m in linears.items()}
        self.mode = "factors"
        self.scale = None          # (B,) per-sample rescaling of δ
        self.QA, self.QG = {}, {}
        self.alias: dict[str, str] = {}     # module -> module whose input (hence A) it shares (q/k/v, gate/up)
        self._owner: dict[int, tuple[str, torch.Tensor]] = {}
        self._acts: dict[str, torch.Tensor] = {}
        self._handles = []

    def new_batch(self):
        self._owner.clear()

    def __enter__(self):
        for k, m in self.linears.items():
            self._handles.append(m.register_forward_hook(self._fwd(k)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _fwd(self, key):
        def hook(mod, inp, out):
            if not torch.is_grad_enabled():
                return
            src = inp[0]
            a = src.detach().to(self.dtype)
            if self.mode == "factors":
                owner = self._owner.get(id(src))
                if SHARE_KFAC_INPUTS and owner is not None and owner[1] is src:   # same input as an earlier module
                    self.alias.setdefault(key, owner[0])
                elif key not in self.alias:
                    self._owner[id(src)] = (key, src)           # keep src alive so its id is not reused
                    a2 = a.reshape(-1, a.shape[-1])
                    self.A[key] += a2.T @ a2 / a2.shape[0]
            else:
                self._acts[key] = a @ self.QA[key]                          # (B, T, in) in eigenbasis
            if out.requires_grad:
                out.register_hook(self._bwd(key))
        return hook

    def _bwd(self, key):
        def hook(grad):
            d = grad.detach().to(self.dtype)
            B = d.shape[0]
            s = self.scale if self.scale is not None else torch.full((B,), float(B), dtype=self.dtype, device=d.device)
            d = d * s.view(-1, *([1] * (d.dim() - 1)))                       # per-sample loss gradients
            if self.mode == "factors":
                d2 = d.reshape(-1, d.shape[-1])
                self.G[key] += d2.T @ d2 / B
            else:
                dq = d @ self.QG[key]                                       # (B, T, out)
                a = self._acts.pop(key)
                pg = torch.einsum("bto,bti->boi", dq.reshape(B, -1, dq.shape[-1]), a.reshape(B, -1, a.shape[-1]))
                self.S[key] += (pg * pg).sum(0)
        return hook


def _linears_by_param(model, param_ids: set[int]) -> dict[int, tuple[str, nn.Linear]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and id(m.weight) in param_ids:
            out[id(m.weight)] = (name, m)
    return out


def _gains_kfac(model, batches, blocks, *, damping, loss_fn, progress, eigen_corrected):
    device = _model_device(model)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = _acc_dtype(all_params)
    lin = _linears_by_param(model, {id(p) for p in all_params})
    linears = {name: m for name, m in lin.values()}
    g_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    d_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]     # diagonal Fisher for non-Linear params
    hooks = _KfacHooks(linears, dtype)
    n_samples = 0
    with _scoring_mode(model, all_params), hooks:
        for b in tqdm(batches, desc="kfac factors", disable=_no_bar(progress)):
            b = _to_device(b, device)
            w = sample_weights(b, loss_fn)
            hooks.new_batch()
            loss, _ = _call_loss(model, b, loss_fn)
            B = _batch_size(b)
            hooks.scale = (1.0 / w).to(dtype).nan_to_num(posinf=0.0).to(device) if w is not None else None
            gs = _grads(loss, all_params)
            for a, da, g in zip(g_acc, d_acc, gs):
                a += g.to(dtype)
                da += B * g.to(dtype) ** 2          # per-batch estimate of E_i[g_i²] (≈ B·g_b²)
            n_samples += B
        n = _global_count(len(batches), device)
        _allreduce_(g_acc + d_acc + list(hooks.A.values()) + list(hooks.G.values()))
        hooks.new_batch()
        eig, a_eig = {}, {}
        for k in linears:
            owner = hooks.alias.get(k, k)
            if owner not in a_eig:                       # one eigendecomposition per distinct input
                ea, qa = torch.linalg.eigh(hooks.A[owner] / n)
                a_eig[owner] = (ea.clamp_min(0), qa)
            ea, qa = a_eig[owner]
            eg, qg = torch.linalg.eigh(hooks.G[k] / n)
            eig[k] = (ea, eg.clamp_min(0))
            hooks.QA[k], hooks.QG[k] = qa, qg
        if eigen_corrected:                      # second pass: re-fit eigenvalues to per-sample grads
            hooks.mode = "eigen"
            for b in tqdm(batches, desc="ekfac eigenvalues", disable=_no_bar(progress)):
                b = _to_device(b, device)
                w = sample_weights(b, loss_fn)
                hooks.scale = (1.0 / w).to(dtype).nan_to_num(posinf=0.0).to(device) if w is not None else None
                loss, _ = _call_loss(model, b, loss_fn)
                torch.autograd.grad(loss, all_params, allow_unused=True)
            _allreduce_(list(hooks.S.values()))
    ns = _global_count(n_samples, device)
    gains, diags, i = {}, {}, 0
    for name, params in blocks.items():
        total, n_kfac, n_diag = 0.0, 0, 0
        for p in params:
            g = g_acc[i] / n
            if id(p) in lin:
                k = lin[id(p)][0]
                gq = hooks.QG[k].T @ g @ hooks.QA[k]                   # gradient in the Kronecker eigenbasis
                if eigen_corrected:
                    ev = hooks.S[k] / ns
                else:
                    ea, eg = eig[k]
                    ev = torch.outer(eg, ea)                           # eigenvalues of A ⊗ G
                total += torch.sum(gq * gq / (ev + damping)).item()   # Eq 8 with H ≈ (EK-)K-FAC
                n_kfac += p.numel()
            else:
                f = d_acc[i] / n
                total += torch.sum(g * g / (f + damping)).item()
                n_diag += p.numel()
            i += 1
        gains[name] = total
        diags[name] = {"damping_used": damping, "n_params_kronecker": n_kfac, "n_params_diagonal": n_diag,
                       "eigen_corrected": eigen_corrected}
    return gains, diags


def _batch_size(batch) -> int:
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 1


# ----------------------------------------------------------------------------- public API
def layer_gains(model: nn.Module, batches, *, method: str = "cg", curvature: str = "ggn",
                damping: float = 1e-3, blocks=None, loss_fn: Callable | None = None,
                max_iter: int = 50, tol: float = 1e-6, cache_graphs: bool = True,
                progress: bool = True, return_steps: bool = False,
                fisher_granularity: str = "sample", max_damping_raises: int = 12) -> Gains:
    """ζ_k² = g_kᵀ (H_kk + λI)⁻¹ g_k for every block k (Eq 8), for the mean loss over `batches`.

    method: "cg" (curvature "ggn" or "hessian"), "diag_fisher", "kfac", "ekfac", "grad_norm".
    blocks: None (one per decoder layer), "attn_mlp", or {name: [params] | nn.Module}.
    loss_fn(model, batch) -> loss or (loss, outputs); default model(**batch).loss (and .logits
    as the outputs the Gauss–Newton matrix linearises).
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {list(METHODS)}, got {method!r}")
    if method == "cg" and curvature not in CURVATURES:
        raise ValueError(f"curvature: must be one of {list(CURVATURES)}, got {curvature!r}")
    if not isinstance(damping, (int, float)) or not math.isfinite(damping) or damping <= 0:
        raise ValueError(f"damping: must be a finite number > 0, got {damping!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol: must be >= 0, got {tol!r}")
    if fisher_granularity not in ("sample", "batch"):
        raise ValueError(f"fisher_granularity: must be 'sample' or 'batch', got {fisher_granularity!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError("loss_fn: must be callable as loss_fn(model, batch)")
    batches = _check_batches(batches)
    blk = resolve_blocks(model, blocks)
    damping = float(damping)
    steps = None
    if method == "cg":
        gains, diags, steps = _gains_cg(model, batches, blk, curvature=curvature, damping=damping, loss_fn=loss_fn,
                                        max_iter=max_iter, tol=tol, cache_graphs=cache_graphs, progress=progress,
                                        return_steps=return_steps, max_damping_raises=max_damping_raises)
    elif method == "diag_fisher":
        gains, diags = _gains_diag_fisher(model, batches, blk, damping=damping, loss_fn=loss_fn,
                                          progress=progress, granularity=fisher_granularity)
    elif method in ("kfac", "ekfac"):
        gains, diags = _gains_kfac(model, batches, blk, damping=damping, loss_fn=loss_fn, progress=progress,
                                   eigen_corrected=(method == "ekfac"))
    else:  # grad_norm: ‖g_k‖²
        all_params = [p for ps in blk.values() for p in ps]
        grads = block_gradients(model, batches, all_params, loss_fn, progress=progress)
        gains, diags, i = {}, {}, 0
        for name, params in blk.items():
            g = _flat(grads[i:i + len(params)], _acc_dtype(params))
            i += len(params)
            gains[name] = torch.dot(g, g).item()
            diags[name] = {"n_params": int(g.numel())}
    for k, v in gains.items():
        if not math.isfinite(v):
            raise FloatingPointError(f"layer_gains: non-finite ζ² for block '{k}' ({method}); check the loss and damping")
    return Gains(gains, diags, method=method, curvature=curvature if method == "cg" else None,
                 damping=damping, steps=steps)


def score_method_name(method: str, curvature: str | None = None) -> str:
    """Name used in scores.csv: cg -> cg_ggn / cg_hessian, others unchanged."""
    return f"cg_{curvature}" if method == "cg" else method


# ----------------------------------------------------------------------------- quadratic model, steps
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
    """Terms of m_k(d) = gᵀd + ½ dᵀ H_kk d (layer-restricted quadratic, §2.2) for a given d."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature: must be one of {list(CURVATURES)}, got {curvature!r}")
    batches = _check_batches(batches)
    device = _model_device(model)
    with _scoring_mode(model, list(params)), eager_attention(model):
        g = _flat(block_gradients(model, batches, list(params), loss_fn), _acc_dtype(params))
        op = _BlockOperator(model, batches, list(params), curvature, loss_fn, False, device,
                            _global_count(len(batches), device))
        d = _flat(step, _acc_dtype(params))
        hd = op(d)
    gd, dhd = torch.dot(g, d).item(), torch.dot(d, hd).item()
    return {"g_dot_d": gd, "d_H_d": dhd, "quadratic": gd + 0.5 * dhd, "d_norm2": torch.dot(d, d).item()}


# ----------------------------------------------------------------------------- caching
def fingerprint_model(model: nn.Module, max_numel: int = 50_000_000) -> str:
    """Hash of the architecture and the weights (a strided sample of them for very large models)."""
    import hashlib
    h = hashlib.sha256(type(model).__name__.encode())
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    total = sum(p.numel() for p in model.parameters())
    stride = max(1, total // max_numel)
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        t = p.detach().reshape(-1)[::stride].float().cpu().contiguous()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_batches(batches) -> str:
    import hashlib
    h = hashlib.sha256()
    for b in batches:
        items = b.items() if isinstance(b, Mapping) else enumerate(b if isinstance(b, (list, tuple)) else [b])
        for k, v in items:
            h.update(str(k).encode())
            if isinstance(v, torch.Tensor):
                h.update(str(tuple(v.shape)).encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(v).encode())
    return h.hexdigest()[:16]


def cached_layer_gains(cache_dir: str | os.PathLike, key: Mapping[str, Any], compute: Callable[[], Gains]) -> Gains:
    """Gains from `<cache_dir>/<cache_key(key)>.json` if present, else compute() and write it atomically.

    `key` should name the model, the data, the method and the damping (and anything else that
    changes the scores). One file per (task, method) is the resume granularity.
    """
    if not isinstance(key, Mapping):
        raise ValueError("key: must be a mapping (model, data, method, damping, ...)")
    path = Path(cache_dir) / f"{mio.cache_key(dict(key))}.json"
    if path.exists():
        obj = mio.read_json(path)
        return Gains.from_json(obj["result"])
    res = compute()
    mio.atomic_write_json(path, {"key": dict(key), "result": res.to_json()})
    return res


# ----------------------------------------------------------------------------- scores.csv
def scores_frame(results: Mapping[tuple[str, str], Mapping[str, float]]):
    """{(task, method): {block: score}} -> long DataFrame task, method, layer, score, q (q on the simplex)."""
    import pandas as pd
    rows = []
    for (task, method), gains in results.items():
        vals = [float(v) for v in gains.values()]
        if any(not math.isfinite(v) or v < 0 for v in vals):
            raise ValueError(f"results: scores for ({task}, {method}) must be finite and >= 0")
        tot = sum(vals)
        if tot <= 0:
            raise ValueError(f"results: scores for ({task}, {method}) are all zero; q is undefined")
        for layer, v in enumerate(vals):
            rows.append({"task": task, "method": method, "layer": layer, "score": v, "q": v / tot})
    return pd.DataFrame(rows, columns=["task", "method", "layer", "score", "q"])


def load_scores(run_root: str | os.PathLike, task: str | None = None, method: str | None = None):
    """scores.csv written by notebook 02 (columns task, method, layer, score, q), optionally filtered."""
    import pandas as pd
    path = Path(run_root) / "02_curvature_scores" / "scores.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 02 first (make nb NB=02 PARAMS=...)")
    df = pd.read_csv(path)
    if task is not None:
        if task not in set(df["task"]):
            raise ValueError(f"task: {task!r} not in {path} (have {sorted(set(df['task']))})")
        df = df[df["task"] == task]
    if method is not None:
        if method not in set(df["method"]):
            raise ValueError(f"method: {method!r} not in {path} (have {sorted(set(df['method']))})")
        df = df[df["method"] == method]
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- cost measurement
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fn: Callable[[], Any], interval: float = 0.002) -> tuple[Any, float, int]:
    """(result, wall seconds, peak extra memory in bytes). Peak memory: CUDA max_memory_allocated
    when on GPU, else resident set size sampled every `interval` s above the level at the start
    (tracemalloc does not see torch's CPU allocator)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_bytes()
    peak = [base_rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        if cuda:
            torch.cuda.synchronize()
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
    peak[0] = max(peak[0], _rss_bytes())
    mem = (torch.cuda.max_memory_allocated() - base) if cuda else peak[0] - base_rss
    return out, dt, int(mem)


def gradient_pass(model, batches, loss_fn=None) -> None:
    """One forward+backward over the batches w.r.t. all decoder-layer parameters (the cost unit)."""
    params = [p for ps in resolve_blocks(model, None).values() for p in ps] if loss_fn is None else \
        [p for p in model.parameters()]
    block_gradients(model, batches, params, loss_fn)


# ----------------------------------------------------------------------------- notebook 02 drivers
def scoring_batches(params, tokenizer, task: str, split: str = "train", n_batches: int | None = None,
                    batch_size: int | None = None) -> list[dict]:
    """Batches a task is scored on: fine-tune tasks from `mdlcap.default.data.task_batches` (loss on the gold
    answer), "calibration" from the calibration text (split "train") or the held-out text (other
    splits) in windows of min(scoring.max_len, data.calibration_seq_len) tokens."""
    from mdlcap.default import data as D
    sp = params.scoring
    n_batches = n_batches or sp.n_batches
    batch_size = batch_size or sp.batch_size
    if task == "calibration":
        texts = D.texts(params, "calibration" if split == "train" else "heldout")
        seq = min(sp.max_len, params.data.calibration_seq_len)
        out = D.lm_batches(tokenizer, texts, seq, batch_size)
    else:
        ex = D.load_task(params, task, split)[: n_batches * batch_size]
        out = D.task_batches(tokenizer, ex, batch_size, max_len=sp.max_len)
    if not out:
        raise ValueError(f"task: no {split} data for '{task}'")
    return out[:n_batches]


def _take_samples(batches, n: int) -> list[dict]:
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        k = min(left, _batch_size(b))
        out.append({key: (v[:k] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for key, v in b.items()})
        left -= k
    return out


def score_task(model, tokenizer, params, task: str, methods, cache: str | os.PathLike | None = None,
               model_key: str | None = None, progress: bool = True) -> dict[str, Gains]:
    """Scores of one task for the scores.csv methods asked (cg_ggn, cg_hessian, diag_fisher, kfac,
    ekfac, grad_norm, layerif_all, layerif_pos), each cached as JSON under `cache` (resume
    granularity: one (task, method)); `.meta` holds the call's seconds, peak memory and the
    seconds of one gradient pass over the same data (the cost unit)."""
    from mdlcap.scores import influence
    sp = params.scoring
    unknown = [m for m in methods if m not in SCORE_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; allowed {list(SCORE_METHODS)}")
    model_key = model_key or fingerprint_model(model)
    blocks = None if sp.blocks == "layer" else sp.blocks
    batches = scoring_batches(params, tokenizer, task, "train")
    out: dict[str, Gains] = {}
    unit_cache: dict[str, float] = {}

    def unit(bs):                                   # seconds of one gradient pass over bs
        k = fingerprint_batches(bs)
        if k not in unit_cache:
            gradient_pass(model, bs)                # warm-up
            unit_cache[k] = measure(lambda: gradient_pass(model, bs))[1]
        return unit_cache[k]

    def cached(method, bs, compute, extra=None):
        key = {"model": model_key, "data": fingerprint_batches(bs), "method": method, "damping": sp.damping,
               "blocks": sp.blocks, "version": SCORES_VERSION, **(extra or {})}
        if cache is None:
            return compute()
        return cached_layer_gains(Path(cache) / task, key, compute)

    def timed(fn, bs):
        def run():
            res, dt, mem = measure(fn)
            res.meta.update({"seconds": dt, "peak_bytes": mem, "grad_pass_seconds": unit(bs),
                             "n_batches": len(bs), "n_sequences": sum(_batch_size(b) for b in bs)})
            return res
        return run

    for m in methods:
        if m in ("layerif_all", "layerif_pos"):
            continue
        if m == "cg_hessian" and sp.hessian_tasks is not None and task not in sp.hessian_tasks:
            continue
        if m.startswith("cg_"):
            bs = batches[: sp.cg_batches]
            fn = (lambda curv=m[3:], bs=bs: layer_gains(model, bs, method="cg", curvature=curv, damping=sp.damping,
                                                         blocks=blocks, max_iter=sp.cg_max_iter, tol=sp.cg_tol,
                                                         progress=progress))
            out[m] = cached(m, bs, timed(fn, bs), {"max_iter": sp.cg_max_iter, "tol": sp.cg_tol})
        else:
            fn = (lambda m=m: layer_gains(model, batches, method=m, damping=sp.damping, blocks=blocks,
                                          progress=progress))
            out[m] = cached(m, batches, timed(fn, batches))
    pools = [m for m in methods if m in ("layerif_all", "layerif_pos")]
    if pools:
        train = _take_samples(scoring_batches(params, tokenizer, task, "train",
                                              n_batches=-(-sp.layerif_train // sp.batch_size)), sp.layerif_train)
        val = _take_samples(scoring_batches(params, tokenizer, task, "validation",
                                            n_batches=-(-sp.layerif_val // sp.batch_size)), sp.layerif_val)

        def compute_if():
            inf, dt, mem = measure(lambda: influence.layer_influence(
                model, train, val, blocks=blocks, damping_scale=sp.layerif_damping_scale, progress=progress))
            meta = {"seconds": dt, "peak_bytes": mem, "grad_pass_seconds": unit(train + val),
                    "n_batches": len(train) + len(val), "n_sequences": sum(_batch_size(b) for b in train + val)}
            both = {p: Gains(inf.layer_scores(p[8:]), {k: {"influence_sum": v} for k, v in inf.layer_sums(p[8:]).items()},
                             method=p, damping=0.0, meta=meta) for p in ("layerif_all", "layerif_pos")}
            return Gains({}, {}, method="layerif", meta={"pools": {k: v.to_json() for k, v in both.items()}})

        res = cached("layerif", train + val, compute_if, {"damping_scale": sp.layerif_damping_scale})
        for p in pools:
            out[p] = Gains.from_json(res.meta["pools"][p])
    return out


def single_layer_decreases(model, train_batches, heldout_batches, steps: Mapping[str, list], blocks=None, *,
                           finetune_steps: int = 10, lr: float = 1e-3, loss_fn=None, progress: bool = True):
    """Measured held-out loss decrease per block from (a) the damped Newton step d* of that block alone
    and (b) fine-tuning that block alone (Adam, `finetune_steps` steps cycling over train_batches).
    Parameters are restored after each measurement. Returns a DataFrame, one row per block."""
    import pandas as pd
    blk = resolve_blocks(model, blocks)
    base = mean_loss(model, heldout_batches, loss_fn)
    base_train = mean_loss(model, train_batches, loss_fn)
    rows = []
    device = _model_device(model)
    for name, params in tqdm(blk.items(), desc="single-layer decreases", disable=_no_bar(progress)):
        row = {"block": name, "heldout_loss": base}
        if name in steps:
            with applied_step(params, steps[name]):
                row["newton_heldout_decrease"] = base - mean_loss(model, heldout_batches, loss_fn)
                row["newton_train_decrease"] = base_train - mean_loss(model, train_batches, loss_fn)
        saved = [p.detach().clone() for p in params]
        with _scoring_mode(model, params):
            opt = torch.optim.Adam(params, lr=lr)
            for t in range(finetune_steps):
                b = _to_device(train_batches[t % len(train_batches)], device)
                loss, _ = _call_loss(model, b, loss_fn)
                for p, g in zip(params, _grads(loss, params)):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
            row["finetune_heldout_decrease"] = base - mean_loss(model, heldout_batches, loss_fn)
            with torch.no_grad():
                for p, s0 in zip(params, saved):
                    p.copy_(s0)
        rows.append(row)
    return pd.DataFrame(rows)


def damping_sweep(model, batches, blocks: Mapping[str, list], lambdas, *, max_iter: int = 20, tol: float = 1e-6,
                  loss_fn=None, progress: bool = True):
    """Appendix C on a real model: for each block and λ, predicted decrease ½ζ², the layer-restricted
    quadratic at d* under the GGN (= −½ζ² − (λ/2)‖d*‖² by Lemma 1 / Eq 18) and under the exact
    Hessian, and the true loss change L(θ + d*) − L(θ). Returns a DataFrame."""
    import pandas as pd
    base = mean_loss(model, batches, loss_fn)
    rows = []
    for name, params in blocks.items():
        for lam in tqdm(list(lambdas), desc=f"λ sweep {name}", disable=_no_bar(progress)):
            r = layer_gains(model, batches, method="cg", curvature="ggn", damping=float(lam), blocks={name: params},
                            loss_fn=loss_fn, max_iter=max_iter, tol=tol, progress=False, return_steps=True)
            d = r.steps[name]
            qg = block_quadratic(model, batches, params, d, curvature="ggn", loss_fn=loss_fn)
            qh = block_quadratic(model, batches, params, d, curvature="hessian", loss_fn=loss_fn)
            with applied_step(params, d):
                true = mean_loss(model, batches, loss_fn) - base
            z2 = r[name]
            rows.append({"block": name, "damping": float(lam), "zeta2": z2, "predicted_decrease": 0.5 * z2,
                         "quadratic_ggn": qg["quadratic"], "quadratic_hessian": qh["quadratic"],
                         "eq18_value": -0.5 * z2 - 0.5 * lam * qg["d_norm2"], "bias_term": lam * qg["d_norm2"],
                         "true_change": true, "step_norm": math.sqrt(qg["d_norm2"]),
                         "cg_iterations": r.diagnostics[name]["iterations"],
                         "cg_rel_residual": r.diagnostics[name]["rel_residual"],
                         "ritz_min_H": r.diagnostics[name]["ritz_min_H"]})
    return pd.DataFrame(rows)
