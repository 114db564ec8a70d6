"""Capacity mechanisms for the allocation experiment (paper §3.3): a LoRA mixture of experts with
a variable number of experts per decoder layer, and LoRA ranks per layer through peft.

LoRA-MoE (MoLA, Gao et al. 2024; the mechanism the paper and LayerIF fine-tune): every chosen
linear projection W of decoder layer k gets E_k LoRA experts (A_e: r x d_in, B_e: d_out x r) and a
token-level router; a token x is sent to its top-k experts (top-2 where E_k > 1, as MoLA):

    y = W x + (alpha / r) * sum_{e in topk(x)} g_e(x) B_e A_e x,
    g(x) = renormalised softmax(R x) over the selected experts                (MoLA Eq 2-4)

E_k = 1 is plain LoRA (no router), E_k = 0 leaves the layer untouched.

Why hand-written: peft 0.21.2 has no per-layer mixture of LoRA experts with a token router and a
variable expert count per layer (its X-LoRA mixes whole adapters with one dense classifier over all
layers; Polytropon routes per task, not per token). `LoraMoELinear` below is the small module that
is missing; everything else (plain LoRA, per-layer ranks) goes through peft (`rank_config`).

The experts are evaluated as one matmul pair over the concatenated ranks, with the gate applied in
between (unselected experts have gate 0), so every adapter parameter takes part in the graph: DDP
needs no `find_unused_parameters`, and the cost per token is (d_in + d_out) * E_k * r, small next to
the frozen d_in * d_out.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mdlcap.models import decoder_layers

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
# MoLA (and LayerIF, which fine-tunes with MoLA's code) put experts on all seven projections.
DEFAULT_TARGETS = ATTN_MODULES + MLP_MODULES


class LoraMoELinear(nn.Module):
    """A frozen nn.Linear plus `num_experts` LoRA experts behind a top-k token router."""

    def __init__(self, base: nn.Linear, num_experts: int, r: int = 8, alpha: float = 16.0,
                 top_k: int = 2, dropout: float = 0.0, adapter_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base: must be an nn.Linear, got {type(base).__name__}")
        if num_experts < 1:
            raise ValueError(f"num_experts: must be >= 1, got {num_experts}")
        if r < 1:
            raise ValueError(f"r: must be >= 1, got {r}")
        if top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {top_k}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.num_experts = int(num_experts)
        self.top_k = min(int(top_k), self.num_experts)
        self.r = int(r)
        self.scaling = float(alpha) / self.r
        d_in, d_out = base.in_features, base.out_features
        dev = base.weight.device
        # adapters train in float32 even when the base is bf16 (as peft's autocast_adapter_dtype)
        self.lora_A = nn.Parameter(torch.empty(self.num_experts, self.r, d_in, device=dev, dtype=adapter_dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.num_experts, d_out, self.r, device=dev, dtype=adapter_dtype))
        for e in range(self.num_experts):  # LoRA init: A Kaiming-uniform, B zero -> starts as the base model
            nn.init.kaiming_uniform_(self.lora_A.data[e], a=math.sqrt(5))
        self.router = (nn.Linear(d_in, self.num_experts, bias=False, device=dev, dtype=adapter_dtype)
                       if self.num_experts > 1 else None)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.aux_loss: torch.Tensor | None = None        # load-balancing loss of the last training forward
        self.last_load: torch.Tensor | None = None       # fraction of routed slots per expert

    def extra_repr(self) -> str:
        return (f"in={self.base.in_features}, out={self.base.out_features}, experts={self.num_experts}, "
                f"top_k={self.top_k}, r={self.r}, scaling={self.scaling:g}")

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense gates (..., E) with zeros outside each token's top-k, plus the probabilities and
        the top-k indices (for the load-balancing loss and tests)."""
        probs = F.softmax(self.router(h), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)           # renormalise over the chosen (MoLA)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_p)
        return gates, probs, top_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x).to(self.lora_A.dtype)
        E, r = self.num_experts, self.r
        z = h @ self.lora_A.reshape(E * r, -1).t()                 # (..., E*r): every expert's A_e x
        if self.router is not None:
            gates, probs, top_i = self.route(h)
            z = (z.unflatten(-1, (E, r)) * gates.unsqueeze(-1)).flatten(-2)
            if self.training:
                # Switch-Transformer load balance: E * sum_e (share of routed slots) * (mean prob)
                load = F.one_hot(top_i, E).to(probs.dtype).sum(-2).reshape(-1, E).mean(0) / self.top_k
                self.last_load = load.detach()
                self.aux_loss = E * (load * probs.reshape(-1, E).mean(0)).sum()
        b_cat = self.lora_B.permute(0, 2, 1).reshape(E * r, -1)   # rows (e, j) = column j of B_e
        delta = (z @ b_cat) * self.scaling
        return y + delta.to(y.dtype)


def _validate_counts(counts: Sequence[int], n_layers: int, name: str) -> list[int]:
    try:
        out = [int(c) for c in counts]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a sequence of integers, got {counts!r}") from None
    if any(o != c for o, c in zip(out, counts)):
        raise ValueError(f"{name}: must hold integers, got {list(counts)!r}")
    if len(out) != n_layers:
        raise ValueError(f"{name}: needs one entry per decoder layer ({n_layers}), got {len(out)}")
    if any(c < 0 for c in out):
        raise ValueError(f"{name}: entries must be >= 0, got {out}")
    return out


def add_lora_moe(model: nn.Module, experts_per_layer: Sequence[int], r: int = 8, alpha: float = 16.0,
                 target_modules: Sequence[str] = DEFAULT_TARGETS, top_k: int = 2, dropout: float = 0.0,
                 seed: int | None = None) -> nn.Module:
    """Freeze `model` and give decoder layer k `experts_per_layer[k]` LoRA experts on every linear
    projection whose name is in `target_modules`; only the adapters (A, B, routers) train.

    Modifies the model in place and returns it (still the same Hugging Face class, so lm-eval and
    `save_pretrained`-free evaluation work unchanged).
    """
    layers = decoder_layers(model)
    counts = _validate_counts(experts_per_layer, len(layers), "experts_per_layer")
    targets = tuple(target_modules)
    if not targets:
        raise ValueError("target_modules: must name at least one projection")
    if seed is not None:
        torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    found: set[str] = set()
    for k, (layer, n_exp) in enumerate(zip(layers, counts)):
        for name, module in list(layer.named_modules()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in targets or not isinstance(module, nn.Linear):
                continue
            found.add(leaf)
            if n_exp == 0:
                continue
            parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
            setattr(parent, leaf, LoraMoELinear(module, n_exp, r=r, alpha=alpha, top_k=top_k, dropout=dropout))
    missing = sorted(set(targets) - found)
    if missing:
        raise ValueError(f"target_modules: {missing} not found as nn.Linear in the decoder layers "
                         f"of {type(model).__name__}")
    model.mdlcap_moe = {"experts_per_layer": counts, "r": r, "alpha": alpha, "top_k": top_k,
                        "target_modules": list(targets)}
    return model


def moe_modules(model: nn.Module) -> list[tuple[str, LoraMoELinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraMoELinear)]


def expert_counts(model: nn.Module) -> list[int]:
    """Experts per decoder layer, read back from the modules (max over the layer's projections)."""
    out = []
    for layer in decoder_layers(model):
        n = [m.num_experts for m in layer.modules() if isinstance(m, LoraMoELinear)]
        out.append(max(n) if n else 0)
    return out


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Mean load-balancing loss over the routed modules of the last forward (None if no router)."""
    losses = [m.aux_loss for _, m in moe_modules(model) if m.aux_loss is not None]
    return torch.stack(losses).mean() if losses else None


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def expert_flops(d_in: int, d_out: int, r: int) -> int:
    """Multiply-adds of one LoRA expert per token: A (r x d_in) then B (d_out x r)."""
    return r * (d_in + d_out)


def layer_expert_costs(model: nn.Module, r: int, target_modules: Sequence[str] = DEFAULT_TARGETS) -> list[int]:
    """c_k of the allocation program (paper App. E: FLOPs of one LoRA expert at layer k), summed
    over the targeted projections of each decoder layer."""
    targets = set(target_modules)
    costs = []
    for layer in decoder_layers(model):
        c = 0
        for name, m in layer.named_modules():
            base = m.base if isinstance(m, LoraMoELinear) else m
            if name.rsplit(".", 1)[-1] in targets and isinstance(base, nn.Linear):
                c += expert_flops(base.in_features, base.out_features, r)
        costs.append(c)
    return costs


# --------------------------------------------------------------------------- LoRA ranks via peft
def rank_config(ranks_per_layer: Sequence[int], *, target_modules: Sequence[str] = DEFAULT_TARGETS,
                alpha_ratio: float = 2.0, dropout: float = 0.0, layer_prefix: str = "layers"):
    """A peft `LoraConfig` giving decoder layer k rank `ranks_per_layer[k]` on every target module
    (alpha = alpha_ratio * rank, so the LoRA scale alpha/r is the same in every layer).

    peft matches a pattern key against module names as `(.*\\.)?(key)$`; the key
    `layers\\.{k}\\.(?:.*\\.)?{module}` selects exactly layer k (the trailing dot keeps 1 apart from 10).
    """
    from peft import LoraConfig

    ranks = [int(x) for x in ranks_per_layer]
    if not ranks:
        raise ValueError("ranks_per_layer: must not be empty")
    if any(x < 1 for x in ranks):
        raise ValueError(f"ranks_per_layer: every rank must be >= 1 (peft has no rank 0), got {ranks}")
    if alpha_ratio <= 0:
        raise ValueError(f"alpha_ratio: must be > 0, got {alpha_ratio}")
    targets = list(target_modules)
    default_r = max(set(ranks), key=ranks.count)   # the most common rank; the patterns override the rest
    mods = "|".join(re.escape(t) for t in targets)
    rank_pattern, alpha_pattern = {}, {}
    for k, rk in enumerate(ranks):
        key = rf"{re.escape(layer_prefix)}\.{k}\.(?:.*\.)?(?:{mods})"
        rank_pattern[key] = rk
        alpha_pattern[key] = alpha_ratio * rk
    return LoraConfig(r=default_r, lora_alpha=alpha_ratio * default_r, lora_dropout=dropout,
                      target_modules=targets, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                      bias="none", task_type="CAUSAL_LM")


def lora_ranks(model: nn.Module, adapter: str = "default") -> list[int]:
    """Per decoder layer, the LoRA rank peft gave it (max over the layer's LoRA modules; 0 if none)."""
    out = []
    for layer in decoder_layers(model):
        rs = [m.r[adapter] for m in layer.modules() if hasattr(m, "r") and isinstance(getattr(m, "r"), dict)
              and adapter in m.r]
        out.append(max(rs) if rs else 0)
    return out
