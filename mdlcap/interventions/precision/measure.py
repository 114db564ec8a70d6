"""What quantisation does to a network's outputs: accuracy and output error of a bit allocation,
each layer's own contribution, and the fewest bits a layer needs for an error at its output.
"""
from __future__ import annotations

import numpy as np
import torch

from mdlcap.interventions.precision.quantize import QuantNet


@torch.no_grad()
def evaluate(model: QuantNet, bits, x: torch.Tensor, y: torch.Tensor, *,
             quantize_activations: bool = True, ref_logits: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy of the fake-quantised network and its output (logit) error ‖F̃(x) − F(x)‖."""
    ref = model(x) if ref_logits is None else ref_logits
    out = model(x, bits=list(bits), quantize_activations=quantize_activations)
    e = (out - ref).norm(dim=1)
    return {"acc": float((out.argmax(1) == y).float().mean()), "out_err_mean": float(e.mean()),
            "out_err_max": float(e.max())}


@torch.no_grad()
def layer_contributions(model: QuantNet, bits, x: torch.Tensor, *,
                        quantize_activations: bool = True) -> np.ndarray:
    """Observed output error (max over samples) when ONLY stage i is quantised at p_i."""
    ref = model(x)
    return np.array([float((model(x, bits=list(bits), quantize_activations=quantize_activations, only=i)
                            - ref).norm(dim=1).max())
                     for i in range(len(model.stages))])


@torch.no_grad()
def empirical_min_bits(model: QuantNet, x: torch.Tensor, eps, *,
                       bit_range=range(2, 25), quantize_activations: bool = True) -> np.ndarray:
    """Smallest integer p with max_n ‖f̃_i(x_n) − f_i(x_n)‖ ≤ eps at the stage's OWN output, stage
    i alone quantised at p (input and weight): what the 'lower bound' p*_i claims to bound.
    `eps` is one number or one per stage; NaN where no width in `bit_range` suffices."""
    inputs = model.stage_inputs(x)
    eps = np.broadcast_to(np.asarray(eps, dtype=float), (len(inputs),))
    out = []
    for i, (st, xi) in enumerate(zip(model.stages, inputs)):
        ref = st(xi)
        found = np.nan
        for p in bit_range:
            if float((st(xi, p, quantize_activations) - ref).flatten(1).norm(dim=1).max()) <= eps[i]:
                found = p
                break
        out.append(found)
    return np.array(out, dtype=float)
