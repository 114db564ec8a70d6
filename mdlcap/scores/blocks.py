"""Blocks and results of the layer gains (METHOD.md §1): which parameters form block k of θ, and
the `Gains` a scoring call returns (ζ_k² per block, Eq 8, with per-block diagnostics).

    blocks = resolve_blocks(model)              # {"layers.0": [params], ...}: one block per decoder layer
    blocks = resolve_blocks(model, "attn_mlp")  # attention and MLP of each layer as separate blocks
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


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


def resolve_blocks(model: nn.Module, blocks=None) -> dict[str, list[nn.Parameter]]:
    """Block name -> parameters. None/"layer": one block per decoder layer; "attn_mlp": attention
    (+ its input norm) and MLP (+ the other norms) of each layer; or an explicit mapping
    name -> list of parameters or an nn.Module. Blocks must be disjoint."""
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
