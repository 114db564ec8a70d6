"""Fake quantisation and the quantisable networks of the precision study (CAQ, METHOD.md §5).

A network is a chain of stages f_i = post_i ∘ op_i (op: Linear or Conv2d; post: ReLU / pooling).
Stage i is quantised at p_i bits: its weight (one scale per tensor) and, where the proposal
asks ("inputs and outputs are represented with p_i bits"), its input activation (one scale
per sample: relative precision 2^{-p}) go through symmetric round-and-clamp in float32.
Biases stay float32 (they are a rounding error of the memory bill).

  fake_quantize(t, bits, scale=None)          symmetric round-and-clamp
  Stage, QuantNet                             a stage and a chain of them, run at given bits
  build_model(name, in_shape, n_classes)      MLP-2, MLP-4, a small 4-conv + FC CNN
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("mlp2", "mlp4", "cnn")


def fake_quantize(t: torch.Tensor, bits: int, scale: float | torch.Tensor | None = None, *,
                  per_sample: bool = False) -> torch.Tensor:
    """Symmetric uniform quantiser, simulated in float32:
    q = clamp(round(t / s), −(2^{b−1}−1), 2^{b−1}−1) · s,  s = max|t| / (2^{b−1}−1) unless given.
    Error ≤ s/2 inside the range; values beyond it are clamped. `per_sample=True` takes one
    scale per leading index (each activation vector its own max: a relative precision 2^{-p}
    as in the proposal's model, and no clamping of unseen test activations)."""
    if int(bits) != bits or bits < 2:
        raise ValueError(f"bits: must be an integer >= 2, got {bits}")
    qmax = float(2 ** (int(bits) - 1) - 1)
    t32 = t.to(torch.float32)
    if scale is None:
        if per_sample:
            scale = t32.detach().abs().flatten(1).amax(dim=1).view(-1, *[1] * (t.ndim - 1)) / qmax
        else:
            scale = t32.detach().abs().max() / qmax
    scale = torch.as_tensor(scale, dtype=torch.float32, device=t.device)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))       # all-zero rows: nothing to round
    q = torch.clamp(torch.round(t32 / safe), -qmax, qmax) * safe
    q = torch.where(scale > 0, q, t32)
    return q.to(t.dtype)


# --------------------------------------------------------------------------- models
class Stage(nn.Module):
    """One quantisable unit: op (Linear / Conv2d) followed by post (activation, pooling)."""

    def __init__(self, op: nn.Module, post: nn.Module | None = None, flatten: bool = False):
        super().__init__()
        self.op = op
        self.post = post if post is not None else nn.Identity()
        self.flatten = flatten

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.flatten else x

    def forward(self, x: torch.Tensor, bits: int | None = None, quantize_input: bool = True) -> torch.Tensor:
        x = self.prepare(x)
        w = self.op.weight
        if bits is not None:
            if quantize_input:
                x = fake_quantize(x, bits, per_sample=True)
            w = fake_quantize(w, bits)
        if isinstance(self.op, nn.Linear):
            z = F.linear(x, w, self.op.bias)
        else:
            z = F.conv2d(x, w, self.op.bias, self.op.stride, self.op.padding)
        return self.post(z)


class QuantNet(nn.Module):
    """A chain of stages; forward(x, bits=[p_1..p_L], act_scales=[...]) runs it fake-quantised."""

    def __init__(self, stages: list[Stage], name: str = ""):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.name = name

    def forward(self, x, bits=None, quantize_activations: bool = True, only: int | None = None):
        """Fake-quantised at bits[i] per stage (None: float32); `only=i` quantises stage i alone."""
        for i, st in enumerate(self.stages):
            b = None if bits is None or (only is not None and i != only) else int(bits[i])
            x = st(x, b, quantize_activations)
        return x

    def stage_inputs(self, x) -> list[torch.Tensor]:
        """Input of every stage (as the stage sees it, flattened for Linear stages)."""
        outs = []
        with torch.no_grad():
            for st in self.stages:
                outs.append(st.prepare(x))
                x = st(x)
        return outs


def build_model(name: str, in_shape: tuple[int, ...], n_classes: int) -> QuantNet:
    """MLP-2 (d-256-C), MLP-4 (d-512-256-128-C) as in the proposal's table; `cnn`: 4 conv
    layers (3×3; 8, 16, 16, 32 channels: narrow, for 2 CPU cores) with two poolings, then FC —
    the proposal's CNN-4 layout."""
    d = int(np.prod(in_shape))
    if name == "mlp2":
        return QuantNet([Stage(nn.Linear(d, 256), nn.ReLU(), flatten=True), Stage(nn.Linear(256, n_classes))], name)
    if name == "mlp4":
        return QuantNet([Stage(nn.Linear(d, 512), nn.ReLU(), flatten=True), Stage(nn.Linear(512, 256), nn.ReLU()),
                         Stage(nn.Linear(256, 128), nn.ReLU()), Stage(nn.Linear(128, n_classes))], name)
    if name == "cnn":
        c = in_shape[0]
        return QuantNet([
            Stage(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU()),
            Stage(nn.Conv2d(8, 16, 3, padding=1), nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))),
            Stage(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),
            Stage(nn.Conv2d(16, 32, 3, padding=1), nn.Sequential(nn.ReLU(), nn.AdaptiveMaxPool2d(2))),
            Stage(nn.Linear(128, n_classes), flatten=True)], name)
    raise ValueError(f"model: must be one of {list(MODELS)}, got {name!r}")

