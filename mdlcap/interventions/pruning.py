"""Layer-wise pruning of a Hugging Face decoder (paper §3.1, §3.3: Algorithm 2's ratios applied
under magnitude, Wanda and SparseGPT).

Two halves:

* **Pruners** take one sparsity ratio per decoder layer and prune that layer's linear modules
  (q/k/v/o/gate/up/down):
    - magnitude (Han et al. 2015): smallest |W| per weight matrix;
    - Wanda (Sun et al. 2023): smallest |W_ij|·‖X_j‖₂, compared within each output row i;
    - SparseGPT (Frantar & Alistarh 2023): optimal-brain-surgeon pruning with reconstruction,
      H = 2XXᵀ + damping, upper Cholesky factor of H⁻¹, column blocks with lazy updates.
  Each optionally with an n:m semi-structured pattern (2:4).
  Calibration runs layer by layer (`prune_model`): the inputs of decoder layer 0 are captured
  with the model's own embedding/rotary/mask code (a pre-hook records exactly the positional
  and keyword arguments the layer receives), then each layer is pruned from statistics of its
  inputs and re-run to give the next layer its (pruned) inputs. Only one layer's activations
  live in memory at a time, so a 7B model prunes on one GPU.

* **Ratio methods** turn per-layer scores into ratios with the same parameter-weighted global
  target s: uniform; OWL (Yin et al. 2024); the LayerIF/AlphaPruning min–max mapping; MDL
  (Algorithm 2 through `mdlcap.theory.programs.prune`).

Why not a library: llm-compressor (vLLM project) has SparseGPT/Wanda modifiers and an OWL
profile, but it pins its own transformers/torch/compressed-tensors ranges (our stack is
transformers 5 / torch 2.13), its one-shot pipeline traces the model and owns the calibration
loop, it has no one-shot magnitude pruner in that pipeline, and passing our own per-layer
ratios and checking the exact per-layer sparsity is not its API's purpose. torchao's
WandaSparsifier has no SparseGPT and no per-layer ratios. The three pruners are ~200 lines here,
written from the papers, and tested (tests/test_pruning.py).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from mdlcap.models import decoder_layers

PRUNERS = ("magnitude", "wanda", "sparsegpt")
PRUNABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RATIO_METHODS = ("uniform", "owl", "layerif", "mdl", "mdl_eq", "mdl_eq_free")


# =========================================================================== modules and sizes
def prunable_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The linear modules of one decoder layer that are pruned: q/k/v/o/gate/up/down
    (by name, as in Mistral/Llama/Gemma/Qwen); every nn.Linear if none carries those names."""
    found = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    named = {n: m for n, m in found.items() if n.split(".")[-1] in PRUNABLE}
    return named or found


def layer_sizes(model: nn.Module) -> np.ndarray:
    """N_k: number of prunable weights in each decoder layer (the paper's raw layer sizes)."""
    return np.array([sum(m.weight.numel() for m in prunable_linears(l).values())
                     for l in decoder_layers(model)], dtype=np.int64)


@torch.no_grad()
def measured_sparsity(model: nn.Module) -> np.ndarray:
    """Fraction of exactly-zero weights among each decoder layer's prunable linear weights."""
    out = []
    for layer in decoder_layers(model):
        mods = prunable_linears(layer).values()
        zeros = sum(int((m.weight == 0).sum()) for m in mods)
        total = sum(m.weight.numel() for m in mods)
        out.append(zeros / total)
    return np.array(out)


def global_sparsity(ratios: Sequence[float], sizes: Sequence[float]) -> float:
    """Parameter-weighted mean Σ N_k ρ_k / Σ N_k."""
    r, n = np.asarray(ratios, float), np.asarray(sizes, float)
    return float((r * n).sum() / n.sum())


# =========================================================================== masks
def _check_ratio(ratio: float, name: str = "ratio") -> float:
    ratio = float(ratio)
    if not (0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"{name}: must lie in [0, 1], got {ratio}")
    return ratio


def _check_nm(nm) -> tuple[int, int] | None:
    if nm is None:
        return None
    n, m = (int(v) for v in nm)
    if not (m >= 1 and 0 <= n <= m):
        raise ValueError(f"nm: must be (n, m) with 0 <= n <= m and m >= 1, got {nm}")
    return n, m


def _n_pruned(count: int, ratio: float) -> int:
    """Number of weights pruned from `count` at `ratio`: nearest integer (half rounds up)."""
    return int(math.floor(count * ratio + 0.5))


def _smallest_mask(metric: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly k smallest entries of a tensor (ties at the threshold broken by
    position). kthvalue + comparison is several times faster than topk for k ~ numel/2."""
    flat = metric.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=metric.device)
    if k >= flat.numel():
        mask[:] = True
    elif k > 0:
        thr = torch.kthvalue(flat.cpu() if flat.device.type == "mps" else flat, k).values.to(flat.device)
        mask = flat < thr
        need = k - int(mask.sum())
        if need > 0:
            mask[torch.nonzero(flat == thr).flatten()[:need]] = True
    return mask.view_as(metric)


def _row_mask(metric: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per output row, mark exactly the round(ratio · in_features) smallest entries."""
    rows, cols = metric.shape
    k = _n_pruned(cols, ratio)
    if k <= 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(metric, dtype=torch.bool)
    thr = torch.kthvalue(metric, k, dim=1, keepdim=True).values
    mask = metric < thr
    if bool((mask.sum(1) != k).any()):          # ties at a row's threshold: exact per-row selection
        mask = torch.zeros_like(metric, dtype=torch.bool)
        mask.scatter_(1, torch.topk(metric, k, dim=1, largest=False).indices, True)
    return mask


def nm_mask(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """n:m pattern: in every group of m consecutive input weights of a row, the n smallest."""
    rows, cols = metric.shape
    if cols % m:
        raise ValueError(f"nm: in_features {cols} is not a multiple of m={m}")
    g = metric.reshape(rows, cols // m, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    if n > 0:
        mask.scatter_(2, torch.topk(g, n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, ratio: float, nm=None) -> torch.Tensor:
    """Magnitude pruning (Han et al. 2015): the round(ratio·numel) smallest |W| of the matrix."""
    metric = weight.detach().abs().float()
    nm = _check_nm(nm)
    if nm is not None:
        return nm_mask(metric, *nm)
    return _smallest_mask(metric, _n_pruned(metric.numel(), _check_ratio(ratio)))


def wanda_metric(weight: torch.Tensor, in_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda score S_ij = |W_ij| · ‖X_j‖₂ (X_j: input feature j over all calibration tokens)."""
    return weight.detach().abs().float() * in_sq_norm.float().clamp_min(0).sqrt().view(1, -1)


def wanda_mask(weight: torch.Tensor, in_sq_norm: torch.Tensor, ratio: float, nm=None) -> torch.Tensor:
    """Wanda (Sun et al. 2023): smallest S_ij compared within each output row."""
    metric = wanda_metric(weight, in_sq_norm)
    nm = _check_nm(nm)
    if nm is not None:
        return nm_mask(metric, *nm)
    return _row_mask(metric, _check_ratio(ratio))


@torch.no_grad()
def sparsegpt_prune_(weight: torch.Tensor, hessian: torch.Tensor, ratio: float, nm=None, *,
                     blocksize: int = 128, damp: float = 0.01) -> float:
    """SparseGPT (Frantar & Alistarh 2023) on one weight matrix, in place; returns the OBS
    error estimate Σ (w − q)² / U_jj² / 2 summed over pruned weights.

    H = 2XXᵀ/n is dampened by damp·mean(diag H) and inverted; the upper Cholesky factor U of
    H⁻¹ (H⁻¹ = UᵀU) gives, column by column, the OBS saliency w²/U_jj² and the update
    δW[:, j:] = −(w − q)/U_jj · U[j, j:] that spreads the pruning error of column j over the
    columns not yet visited (row j of U is column j's inverse Hessian after eliminating the
    columns before it). Columns
    are processed in blocks; updates to later blocks are applied lazily once per block. The
    mask is chosen per block (adaptive mask selection); the number pruned per block is set by
    cumulative rounding so that the whole matrix loses exactly round(ratio·numel) weights.
    """
    nm = _check_nm(nm)
    ratio = _check_ratio(ratio) if nm is None else nm[0] / nm[1]
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian: must be ({cols}, {cols}) for a weight with {cols} inputs, got {tuple(hessian.shape)}")
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize: must be a multiple of m={nm[1]}, got {blocksize}")
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0                  # inputs never active: any weight there is free
    H[dead, dead] = 1.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)    # H⁻¹ = UᵀU
    loss = torch.zeros((), device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if nm is None:
            # exact total: block b prunes round(ratio·end) − round(ratio·start) weights
            k = _n_pruned(rows * i2, ratio) - _n_pruned(rows * i1, ratio)
            mask1 = _smallest_mask(W1 ** 2 / d.view(1, -1) ** 2, k)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for j in range(i2 - i1):
            w = W1[:, j]
            if nm is not None and j % nm[1] == 0:
                group = W1[:, j:j + nm[1]] ** 2 / d[j:j + nm[1]].view(1, -1) ** 2
                mask1[:, j:j + nm[1]] = nm_mask(group, *nm)
            q = w.clone()
            q[mask1[:, j]] = 0
            err = (w - q) / d[j]
            W1[:, j:] -= err.unsqueeze(1) * U1[j, j:].unsqueeze(0)   # OBS update of later columns
            W1[:, j] = q
            Err1[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]                           # lazy batch update
        loss += (Err1 ** 2).sum() / 2                               # Σ (w − q)² / U_jj² / 2
    weight.copy_(W.to(weight.dtype))
    return float(loss)


# =========================================================================== calibration stats
class _InputStats:
    """Forward hook on one nn.Linear accumulating statistics of its input over calibration
    tokens: Σ x_j² per feature (Wanda) and, if asked, XXᵀ (SparseGPT's Hessian).
    Padding tokens (attention_mask 0) are left out through `token_weight`."""

    def __init__(self, module: nn.Linear, hessian: bool):
        cols = module.in_features
        dev = module.weight.device
        self.sq = torch.zeros(cols, dtype=torch.float32, device=dev)
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=dev) if hessian else None
        self.n = 0
        self.token_weight: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        if self.token_weight is not None and self.token_weight.numel() == x.shape[0]:
            x = x[self.token_weight.reshape(-1).to(x.device) > 0]
        self.sq += (x * x).sum(0)
        if self.H is not None:
            # running mean H = 2/n Σ x xᵀ (the scale cancels in SparseGPT; kept for readability)
            n_new = self.n + x.shape[0]
            self.H *= self.n / max(n_new, 1)
            xs = math.sqrt(2.0 / max(n_new, 1)) * x
            self.H += xs.T @ xs
        self.n += x.shape[0]

    def remove(self):
        self.handle.remove()


class _Stop(Exception):
    pass


@dataclass
class LayerInputs:
    """What the decoder layers receive for each calibration batch: layer 0's hidden states,
    the other positional/keyword arguments (rotary embeddings, attention mask, position ids,
    ...) for each attention type (`by_type[b][type]`; models such as Gemma-2 alternate sliding
    and full masks) and the token weights (the batch's attention_mask, to leave padding out of
    the statistics). `args`/`kwargs` are layer 0's."""
    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict]
    token_weight: list[torch.Tensor | None] = field(default_factory=list)
    by_type: list[dict] = field(default_factory=list)
    layer_types: list = field(default_factory=list)


def _model_inputs(batch: dict) -> dict:
    keep = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids",
                                                   "token_type_ids", "inputs_embeds")}
    if not keep:
        raise ValueError("batches: each batch must be a dict with at least 'input_ids'")
    return keep


def layer_types(model: nn.Module) -> list:
    """Attention type of each decoder layer (config.layer_types, else the layer's
    `attention_type`, else None): layers of one type receive the same mask."""
    layers = decoder_layers(model)
    cfg = getattr(getattr(model, "config", None), "get_text_config", lambda: getattr(model, "config", None))()
    types = getattr(cfg, "layer_types", None)
    if types is not None and len(types) >= len(layers):
        return list(types[:len(layers)])
    return [getattr(l, "attention_type", None) for l in layers]


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, batches: Iterable[dict]) -> LayerInputs:
    """Run each batch into the decoder and record exactly what the layers receive.

    The model's own forward builds the embeddings, rotary position embeddings and attention
    masks (GQA, sliding windows, Gemma's embedding scale are the model's code, not ours);
    forward pre-hooks record layer 0's hidden states and, for the first layer of each attention
    type, the remaining arguments, then stop the forward (after layer 0 for most models)."""
    layers = decoder_layers(model)
    types = layer_types(model)
    first_of = {}
    for i, t in enumerate(types):
        first_of.setdefault(t, i)
    device = next(model.parameters()).device
    rec = LayerInputs([], [], [], [], [], types)
    state: dict = {}

    def make_hook(i):
        def pre_hook(module, args, kwargs):
            if args:
                h, rest = args[0], tuple(args[1:])
            else:
                kwargs = dict(kwargs)
                h, rest = kwargs.pop("hidden_states"), ()
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if i == 0:
                rec.hidden.append(h.detach())
                rec.args.append(rest)
                rec.kwargs.append(kw)
            if first_of.get(types[i]) == i:
                state["seen"][types[i]] = (rest, kw)
            if len(state["seen"]) == len(first_of):
                raise _Stop
        return pre_hook

    handles = [layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in sorted(set(first_of.values()))]
    try:
        for batch in batches:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in _model_inputs(batch).items()}
            state["seen"] = {}
            try:
                model(**inputs, use_cache=False)
            except _Stop:
                pass
            else:
                raise RuntimeError("capture_layer_inputs: the decoder layers were never called")
            rec.by_type.append(state["seen"])
            am = inputs.get("attention_mask")
            rec.token_weight.append(am if am is not None and am.dim() == 2 else None)
    finally:
        for h in handles:
            h.remove()
    if not rec.hidden:
        raise ValueError("batches: no calibration batch given")
    return rec


def _layer_forward(layer: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    out = layer(h, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def layerwise(model: nn.Module, batches: Iterable[dict],
              visit: Callable[[int, nn.Module, dict[str, "_InputStats"]], None], *,
              hessian: bool = False, progress: bool = True, desc: str = "layers") -> None:
    """The layer-by-layer calibration loop. For layer i: hook its prunable linears, run the
    stored inputs through it (statistics), call `visit(i, layer, stats)` (which may prune),
    then run the inputs through it again so the next layer sees this layer's (pruned) outputs.
    Only one layer's activations are held at a time."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    rec = capture_layer_inputs(model, batches)
    hidden = rec.hidden
    layers = decoder_layers(model)
    for i, layer in enumerate(tqdm(layers, desc=desc, disable=not progress)):
        stats = {name: _InputStats(m, hessian) for name, m in prunable_linears(layer).items()}
        try:
            for b, h in enumerate(hidden):
                for s in stats.values():
                    s.token_weight = rec.token_weight[b] if rec.token_weight else None
                _layer_forward(layer, h, *rec.by_type[b][rec.layer_types[i]])
        finally:
            for s in stats.values():
                s.remove()
        visit(i, layer, stats)
        del stats
        if i + 1 < len(layers):
            hidden = [_layer_forward(layer, h, *rec.by_type[b][rec.layer_types[i]]) for b, h in enumerate(hidden)]
    model.train(was_training)


# =========================================================================== pruning a model
def _check_ratios(ratios, n_layers: int) -> np.ndarray:
    r = np.asarray(ratios, dtype=float).reshape(-1)
    if r.size != n_layers:
        raise ValueError(f"ratios: need one ratio per decoder layer ({n_layers}), got {r.size}")
    if not np.all(np.isfinite(r)) or r.min() < 0 or r.max() > 1:
        raise ValueError(f"ratios: every ratio must be finite and in [0, 1], got {r.tolist()}")
    return r


@torch.no_grad()
def prune_model(model: nn.Module, ratios, pruner: str = "wanda", batches: Iterable[dict] | None = None, *,
                nm=None, blocksize: int = 128, damp: float = 0.01, progress: bool = True) -> list[dict]:
    """Prune `model` in place: decoder layer k loses fraction ratios[k] of each of its
    prunable linear weights under `pruner` ∈ {magnitude, wanda, sparsegpt}.

    Wanda and SparseGPT need calibration `batches` (dicts with input_ids[/attention_mask],
    as from `mdlcap.default.data.lm_batches`; labels are ignored); magnitude needs none. With
    `nm=(2, 4)` every layer gets the n:m semi-structured pattern and `ratios` must be None or
    all equal to n/m. Returns one record per layer (requested and measured sparsity, seconds).
    """
    if pruner not in PRUNERS:
        raise ValueError(f"pruner: must be one of {PRUNERS}, got {pruner!r}")
    nm = _check_nm(nm)
    layers = decoder_layers(model)
    if nm is not None:
        if ratios is not None and not np.allclose(np.asarray(ratios, float), nm[0] / nm[1]):
            raise ValueError(f"ratios: with nm={nm} every layer is pruned {nm[0]}/{nm[1]}; pass ratios=None")
        ratios = np.full(len(layers), nm[0] / nm[1])
    r = _check_ratios(ratios, len(layers))
    records: list[dict] = []

    def prune_layer(i: int, layer: nn.Module, stats: dict[str, _InputStats] | None) -> None:
        t0 = time.perf_counter()
        for name, mod in prunable_linears(layer).items():
            W = mod.weight
            if pruner == "magnitude":
                W[magnitude_mask(W, r[i], nm)] = 0
            elif pruner == "wanda":
                W[wanda_mask(W, stats[name].sq, r[i], nm)] = 0
            else:
                if r[i] > 0 or nm is not None:
                    sparsegpt_prune_(W, stats[name].H, r[i], nm, blocksize=blocksize, damp=damp)
        if W.is_cuda:
            torch.cuda.synchronize()
        records.append({"layer": i, "requested": float(r[i]), "seconds": time.perf_counter() - t0})

    if pruner == "magnitude":
        for i, layer in enumerate(layers):
            prune_layer(i, layer, None)
    else:
        if batches is None:
            raise ValueError(f"batches: pruner {pruner!r} needs calibration batches")
        layerwise(model, batches, prune_layer, hessian=(pruner == "sparsegpt"), progress=progress,
                  desc=f"{pruner} layers")
    for rec, s in zip(records, measured_sparsity(model)):
        rec["measured"] = float(s)
    return records


# =========================================================================== ratio methods
def _check_sizes_target(sizes, target, n: int | None = None) -> tuple[np.ndarray, float]:
    N = np.asarray(sizes, dtype=float).reshape(-1)
    if N.size == 0 or not np.all(np.isfinite(N)) or N.min() <= 0:
        raise ValueError("sizes: must be a non-empty vector of positive finite layer sizes")
    if n is not None and N.size != n:
        raise ValueError(f"sizes: length {N.size} does not match the scores' length {n}")
    t = float(target)
    if not (0.0 < t < 1.0):
        raise ValueError(f"target: global sparsity must lie in (0, 1), got {target}")
    return N, t


def _check_scores(q, name: str = "q") -> np.ndarray:
    q = np.asarray(q, dtype=float).reshape(-1)
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError(f"{name}: must be a non-empty vector of finite numbers")
    return q


def _shift_to_target(base: np.ndarray, sizes: np.ndarray, target: float, lo=0.0, hi=1.0) -> np.ndarray:
    """ρ = clip(base + t, lo, hi) with the shift t found by bisection so that the
    parameter-weighted mean equals the target (exact up to float tolerance)."""
    f = lambda t: global_sparsity(np.clip(base + t, lo, hi), sizes) - target  # noqa: E731
    a, b = lo - base.max() - 1.0, hi - base.min() + 1.0
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if f(m) < 0 else (a, m)
    return np.clip(base + 0.5 * (a + b), lo, hi)


def uniform_ratios(sizes, target: float) -> np.ndarray:
    """ρ_k = s for every layer."""
    N, t = _check_sizes_target(sizes, target)
    return np.full(N.size, t)


def owl_ratios(outlier_ratio, sizes, target: float, lam: float = 0.08) -> np.ndarray:
    """OWL (Yin et al. 2024): layers with more outliers keep more weights.
    D_k (outlier ratio) is min–max mapped to [0, 2λ]; ρ_k = s − (mapped_k − weighted mean),
    i.e. a band of width 2λ around s with parameter-weighted mean s (clipped to [0, 1])."""
    D = _check_scores(outlier_ratio, "outlier_ratio")
    N, t = _check_sizes_target(sizes, target, D.size)
    if lam < 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    span = D.max() - D.min()
    mapped = (D - D.min()) / span * 2 * lam if span > 0 else np.zeros_like(D)
    return _shift_to_target(-mapped, N, t)


def layerif_ratios(q, sizes, target: float, epsilon: float = 0.1) -> np.ndarray:
    """LayerIF / AlphaPruning mapping: the importance score is min–max mapped to [1−ε, 1+ε]
    in reverse (the most important layer gets 1−ε, i.e. is pruned least), multiplied by s and
    rescaled so that Σ N_k ρ_k = s Σ N_k (AlphaPruning's `scaler`)."""
    q = _check_scores(q)
    N, t = _check_sizes_target(sizes, target, q.size)
    if not (0 <= epsilon < 1):
        raise ValueError(f"epsilon: must lie in [0, 1), got {epsilon}")
    span = q.max() - q.min()
    u = (q - q.min()) / span if span > 0 else np.zeros_like(q)
    base = (1 + epsilon) - 2 * epsilon * u                # 1+ε for the least important layer
    r = base * t * N.sum() / (base * N).sum()
    if r.max() > 1:
        raise ValueError(f"epsilon: ratios exceed 1 at target {t} (max {r.max():.3f}); lower epsilon")
    return r


def mdl_ratios(q, sizes, target: float, *, bits: float = 16.0, lam: float = 2.0, gamma: float = 1.0,
               rho_max: float = 1.0, equality: bool = False, size_unit: float = 1.0) -> np.ndarray:
    """Algorithm 2 (paper Eq 14–15) via `mdlcap.theory.programs.prune`. With the paper's raw N_k
    (size_unit=1), b=16, λ=2, γ=1 every layer sits at ρ_max (METHOD.md §3); `equality=True` is the
    non-degenerate variant ρ_k ∝ N_k q_k^{−γ} (clipped) that meets the target exactly."""
    from mdlcap.theory import programs

    q = _check_scores(q)
    N, t = _check_sizes_target(sizes, target, q.size)
    res = programs.prune(q, N / size_unit, t, bits=bits, lam=lam, gamma=gamma, rho_max=rho_max,
                         equality=equality)
    return np.asarray(res.rho, dtype=float)


@torch.no_grad()
def outlier_ratios(model: nn.Module, batches: Iterable[dict], M: float = 5.0, progress: bool = True) -> np.ndarray:
    """OWL's layerwise outlier distribution on the dense model: the share of Wanda scores
    |W_ij|·‖X_j‖ in a layer (all its prunable linears together) above M × their mean."""
    out: list[float] = []

    def visit(i, layer, stats):
        metrics = [wanda_metric(m.weight, stats[n].sq).flatten() for n, m in prunable_linears(layer).items()]
        allm = torch.cat(metrics)
        out.append(float((allm > M * allm.mean()).float().mean()))

    layerwise(model, batches, visit, progress=progress, desc="OWL outliers")
    return np.array(out)


# =========================================================================== experiment helpers
class restore_weights:
    """Context manager: snapshot every decoder layer's prunable weights (on CPU, so a 7B model
    does not need a second copy on the GPU) and put them back on exit — one dense model serves
    many pruning configurations."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.saved = [{n: m.weight.detach().to("cpu", copy=True) for n, m in prunable_linears(l).items()}
                      for l in decoder_layers(self.model)]
        return self.model

    @torch.no_grad()
    def __exit__(self, *exc):
        for layer, saved in zip(decoder_layers(self.model), self.saved):
            for n, m in prunable_linears(layer).items():
                m.weight.copy_(saved[n].to(m.weight.device))
        return False


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """Short hash of every parameter's sum and sum of squares: the cache key's model identity."""
    from mdlcap.files import cache_key

    sig = [(n, tuple(p.shape), round(float(p.double().sum()), 6), round(float(p.double().pow(2).sum()), 6))
           for n, p in model.named_parameters()]
    return cache_key(sig)


def evaluate_config(model: nn.Module, ratios, pruner: str, *, calib_batches, evaluate: Callable[[nn.Module, bool], dict],
                    cache_dir, key_extra: dict, need_accuracy: bool = True, nm=None, blocksize: int = 128,
                    damp: float = 0.01, progress: bool = False) -> dict:
    """Prune a copy-in-place of `model` with (ratios, pruner), evaluate it, restore the dense
    weights. `evaluate(model, need_accuracy)` returns a dict (perplexity, accuracies). Results are
    cached as JSON under `cache_dir`, keyed by everything that determines them (ratios rounded to
    1e-9, pruner, n:m, calibration/evaluation settings in `key_extra`), so identical ratio vectors
    from different methods are evaluated once and an interrupted run resumes."""
    from mdlcap.files import atomic_write_json, cache_key, read_json
    from pathlib import Path

    r = None if ratios is None else [round(float(x), 9) for x in np.asarray(ratios, float)]
    key = cache_key({"pruner": pruner, "ratios": r, "nm": list(nm) if nm else None,
                     "blocksize": blocksize, "damp": damp, **key_extra})
    path = Path(cache_dir) / f"{key}.json"
    if path.exists():
        hit = read_json(path)
        if hit.get("accuracy") is not None or not need_accuracy:
            return hit
    t0 = time.perf_counter()
    with restore_weights(model):
        if ratios is None and nm is None:          # the dense model
            recs = [{"layer": i, "requested": 0.0, "measured": float(s), "seconds": 0.0}
                    for i, s in enumerate(measured_sparsity(model))]
        else:
            recs = prune_model(model, ratios, pruner, calib_batches, nm=nm, blocksize=blocksize, damp=damp,
                               progress=progress)
        t_prune = time.perf_counter() - t0
        ev = evaluate(model, need_accuracy)
    sizes = layer_sizes(model)
    measured = [rec["measured"] for rec in recs]
    out = {"key": key, "pruner": pruner, "nm": list(nm) if nm else None,
           "requested": [rec["requested"] for rec in recs], "measured": measured,
           "global_sparsity": global_sparsity(measured, sizes),
           "prune_seconds": t_prune, "eval_seconds": time.perf_counter() - t0 - t_prune,
           "perplexity": ev.get("perplexity"), "accuracy": ev.get("accuracy")}
    atomic_write_json(path, out)
    return out


def ratio_plan(scores, sizes, outliers, pp, target: float | None = None, rho_max: float | None = None,
               methods: Sequence[str] = RATIO_METHODS):
    """Per-layer ratios of every ratio method at one global target, as a long DataFrame
    (ratio_method, score_method, score_task, layer, ratio).

    `scores`: rows (task, method, layer, q) as from `mdlcap.scores.curvature.load_scores`; `pp`: the
    params' pruning section (bits, lam, gamma, rho_max, layerif_epsilon, owl_lambda). Score-free
    methods (uniform, OWL) get score_method = score_task = "-". MDL runs as the paper states it
    (raw N_k, inequality target, clip at ρ_max) and as the equality variant ("mdl_eq")."""
    import pandas as pd

    s = pp.target if target is None else float(target)
    rmax = pp.rho_max if rho_max is None else float(rho_max)
    N = np.asarray(sizes, dtype=float)
    rows = []

    def add(method, smethod, stask, r):
        rows.extend({"ratio_method": method, "score_method": smethod, "score_task": stask, "layer": k,
                     "ratio": float(v)} for k, v in enumerate(r))

    if "uniform" in methods:
        add("uniform", "-", "-", uniform_ratios(N, s))
    if "owl" in methods and outliers is not None:
        add("owl", "-", "-", owl_ratios(outliers, N, s, lam=pp.owl_lambda))
    if scores is not None and len(scores):
        for (smethod, stask), g in scores.groupby(["method", "task"], sort=False):
            q = g.sort_values("layer")["q"].to_numpy(float)
            if q.size != N.size:
                raise ValueError(f"scores: {smethod}/{stask} has {q.size} layers, the model {N.size}")
            if not np.all(q > 0):        # q_k^{-γ} needs q > 0: say so and leave this source out
                warnings.warn(f"scores: {smethod}/{stask} has q <= 0 at layers {np.flatnonzero(q <= 0).tolist()}; "
                              "left out of the ratio plan")
                continue
            if "layerif" in methods:
                add("layerif", smethod, stask, layerif_ratios(q, N, s, epsilon=pp.layerif_epsilon))
            if "mdl" in methods:
                add("mdl", smethod, stask, mdl_ratios(q, N, s, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                                      rho_max=rmax))
            if "mdl_eq" in methods:
                add("mdl_eq", smethod, stask, mdl_ratios(q, N, s, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                                         rho_max=rmax, equality=True))
            if "mdl_eq_free" in methods:     # equality variant without the paper's clip (rho_max = 1)
                add("mdl_eq_free", smethod, stask, mdl_ratios(q, N, s, bits=pp.bits, lam=pp.lam, gamma=pp.gamma,
                                                              rho_max=1.0, equality=True))
    return pd.DataFrame(rows)
