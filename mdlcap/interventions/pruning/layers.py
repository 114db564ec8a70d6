"""The prunable weights of a decoder: which linear modules are pruned, how many weights each
layer has (the paper's raw N_k), the measured per-layer and parameter-weighted global sparsity,
and a snapshot/restore of the dense weights so one model serves many pruning configurations."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from mdlcap.models import decoder_layers

PRUNABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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

