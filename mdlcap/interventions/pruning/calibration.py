"""The layer-by-layer calibration loop: capture what decoder layer 0 receives (with the model's
own embedding/rotary/mask code), then for each layer accumulate statistics of its linear inputs,
let a visitor prune it, and re-run it to feed the next layer. Only one layer's activations are
held at a time, so a 7B model calibrates on one GPU."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from mdlcap.interventions.pruning.layers import prunable_linears
from mdlcap.models import decoder_layers


class InputStats:
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


def layer_forward(layer: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    out = layer(h, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def layerwise(model: nn.Module, batches: Iterable[dict],
              visit: Callable[[int, nn.Module, dict[str, "InputStats"]], None], *,
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
        stats = {name: InputStats(m, hessian) for name, m in prunable_linears(layer).items()}
        try:
            for b, h in enumerate(hidden):
                for s in stats.values():
                    s.token_weight = rec.token_weight[b] if rec.token_weight else None
                layer_forward(layer, h, *rec.by_type[b][rec.layer_types[i]])
        finally:
            for s in stats.values():
                s.remove()
        visit(i, layer, stats)
        del stats
        if i + 1 < len(layers):
            hidden = [layer_forward(layer, h, *rec.by_type[b][rec.layer_types[i]]) for b, h in enumerate(hidden)]
    model.train(was_training)

