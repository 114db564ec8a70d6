"""`prune_model`: per-layer ratios applied to a whole decoder under magnitude, Wanda or
SparseGPT (METHOD.md §3: Algorithm 2's ratios are applied with these pruners)."""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

from mdlcap.interventions.pruning.calibration import InputStats, layerwise
from mdlcap.interventions.pruning.layers import measured_sparsity, prunable_linears
from mdlcap.interventions.pruning.masks import check_nm, magnitude_mask, wanda_mask
from mdlcap.interventions.pruning.sparsegpt import sparsegpt_prune_
from mdlcap.models import decoder_layers

PRUNERS = ("magnitude", "wanda", "sparsegpt")


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
    nm = check_nm(nm)
    layers = decoder_layers(model)
    if nm is not None:
        if ratios is not None and not np.allclose(np.asarray(ratios, float), nm[0] / nm[1]):
            raise ValueError(f"ratios: with nm={nm} every layer is pruned {nm[0]}/{nm[1]}; pass ratios=None")
        ratios = np.full(len(layers), nm[0] / nm[1])
    r = _check_ratios(ratios, len(layers))
    records: list[dict] = []

    def prune_layer(i: int, layer: nn.Module, stats: dict[str, InputStats] | None) -> None:
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

