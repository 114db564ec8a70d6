"""Per-layer LoRA ranks changed during training by masking rank components, as AdaLoRA masks its
singular triplets (Zhang et al. 2023; METHOD.md §7, Appendix G iii), on a peft LoRA model.

    masks = attach_masks(peft_model)              # one mask per LoRA nn.Linear, all ones (rank r_max)
    masks.set_ranks([8, 4, 2, 2], optimizer=opt)  # per decoder layer; zeroes the Adam state it masks
    masks.ranks()                                 # [8, 4, 2, 2]
    masks.remove()                                # hooks off: the plain LoRA again

How. A peft LoRA module computes y = W x + s · B (A x) with A: r×d_in (`lora_A`), B: d_out×r
(`lora_B`), both nn.Linear. The mask m ∈ {0,1}^r is a buffer on `lora_B` and a forward pre-hook
multiplies `lora_B`'s input, the r-dimensional hidden A x, by it: y = W x + s · B diag(m) A x.
Component i (row A_i, column B_i) then adds nothing to the output, and since ∂y/∂A_i and
∂y/∂B_i both carry the factor m_i, it gets exactly zero gradient: the masked model is the rank-|m|
LoRA of the kept components, with the same per-component scale s (tests). The parameters keep
their shapes, so the optimizer's state stays valid; `set_ranks(..., optimizer=...)` zeroes the Adam
moments (exp_avg, exp_avg_sq, max_exp_avg_sq) of the rows of A and columns of B it newly masks,
after which Adam moves them by exactly 0 (zero moments and zero gradients; decoupled weight
decay, off in `finetune` by default, would still shrink them).

Which components a layer keeps (`keep`):
  "magnitude" (default): the largest ‖B_i‖ ‖A_i‖, which is exactly ‖B_i A_iᵀ‖_F, the size of
    component i's weight update; dropping the smallest removes the least of the learned ΔW (the
    bound on the output change is its Frobenius norm), the analogue of AdaLoRA dropping its
    least important triplets. LoRA's components carry no order (A random, B = 0 at the start), so
    "the first r" would discard learned components arbitrarily. Changes are minimal: a layer whose
    rank falls keeps its largest active components, one whose rank rises re-activates its largest
    masked ones, one whose rank stays keeps its mask. Ties (at step 0 every B_i = 0) go to the
    lower index, so the first allocation keeps the first r.
  "first": components 0 … r−1 (a fixed nested order).
Deviations from AdaLoRA: AdaLoRA masks by zeroing its singular value E_i in place (P and Q keep
training, and a masked triplet restarts from E_i = 0 when unmasked; its score is a smoothed
sensitivity |θ ∇θ| of the training gradients); here the mask is outside the parameters, a masked
component is frozen with its values, so re-activating it restores its old contribution, and the
layer's rank is the program's (`mdlcap.interventions.rank_program`), not a global threshold.
A re-activated component restarts Adam from zero moments with the tensor's running bias
correction (Adam's `step` is per tensor), so its first steps are smaller than a fresh Adam's.
peft's `merge` / `merge_and_unload` do not see the hook: call `bake()` first, which zeroes the
masked rows and columns so that the merged weight equals the masked model.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdlcap.models import decoder_layers

__all__ = ["RankMasks", "attach_masks", "lora_modules", "component_norms", "zero_adam_state", "KEEP_RULES"]

KEEP_RULES = ("magnitude", "first")
MASK_BUFFER = "mdlcap_rank_mask"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def lora_modules(model: nn.Module, adapter: str = "default") -> list[list[tuple[str, nn.Module]]]:
    """Per decoder layer, the (name, module) of every peft LoRA module of `adapter` whose `lora_A` /
    `lora_B` are nn.Linear (the ones a mask on `lora_B`'s input can reach)."""
    out = []
    for layer in decoder_layers(_unwrap(model)):
        mods = []
        for name, m in layer.named_modules():
            a, b = getattr(m, "lora_A", None), getattr(m, "lora_B", None)
            if isinstance(a, nn.ModuleDict) and adapter in a and isinstance(a[adapter], nn.Linear) \
                    and isinstance(b, nn.ModuleDict) and isinstance(b[adapter], nn.Linear):
                mods.append((name, m))
        out.append(mods)
    if not any(out):
        raise ValueError(f"model: has no peft LoRA modules of adapter {adapter!r} on nn.Linear in its decoder layers")
    return out


def component_norms(module: nn.Module, adapter: str = "default") -> torch.Tensor:
    """‖B_i‖ ‖A_i‖ = ‖B_i A_iᵀ‖_F for every rank component i of one LoRA module."""
    with torch.no_grad():
        A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        return (A.float().norm(dim=1) * B.float().norm(dim=0)).cpu()


def _mask_hook(mod: nn.Module, args):
    mask = getattr(mod, MASK_BUFFER)
    return (args[0] * mask.to(args[0].dtype),) + tuple(args[1:])


def zero_adam_state(optimizer, module: nn.Module, idx: torch.Tensor, adapter: str = "default") -> int:
    """Zero the Adam moments of components `idx` (rows of A, columns of B) of one LoRA module in
    `optimizer` (torch Adam/AdamW, or accelerate's wrapper of one). Returns how many moment
    tensors it touched (0 before the first step, when Adam has no state yet)."""
    opt = getattr(optimizer, "optimizer", optimizer)
    idx = torch.as_tensor(idx, dtype=torch.long)
    if idx.numel() == 0:
        return 0
    touched = 0
    for param, dim in ((module.lora_A[adapter].weight, 0), (module.lora_B[adapter].weight, 1)):
        state = opt.state.get(param, {})
        for key in ADAM_MOMENTS:
            t = state.get(key)
            if isinstance(t, torch.Tensor) and t.shape == param.shape:
                with torch.no_grad():
                    t.index_fill_(dim, idx.to(t.device), 0.0)
                touched += 1
    return touched


def _select(norms: torch.Tensor, active: torch.Tensor, rank: int, keep: str) -> torch.Tensor:
    """The new boolean mask of one module (module docstring: minimal changes for "magnitude")."""
    r = norms.numel()
    new = torch.zeros(r, dtype=torch.bool)
    if keep == "first":
        new[:rank] = True
        return new
    order = sorted(range(r), key=lambda i: (-float(norms[i]), i))       # largest first, ties to lower index
    on = [i for i in order if active[i]]
    off = [i for i in order if not active[i]]
    chosen = on[:rank] if rank <= len(on) else on + off[:rank - len(on)]
    new[chosen] = True
    return new


class RankMasks:
    """The masks of one peft LoRA model, per decoder layer (module docstring)."""

    def __init__(self, model: nn.Module, adapter: str = "default"):
        self.adapter = adapter
        self.layers = lora_modules(model, adapter)
        self.handles = []
        for mods in self.layers:
            for _, m in mods:
                b = m.lora_B[adapter]
                if hasattr(b, MASK_BUFFER):
                    raise ValueError("model: already has rank masks attached (call remove() first)")
                b.register_buffer(MASK_BUFFER, torch.ones(b.in_features, dtype=b.weight.dtype,
                                                          device=b.weight.device), persistent=False)
                self.handles.append(b.register_forward_pre_hook(_mask_hook))
        self.r_max = [max((m.lora_B[adapter].in_features for _, m in mods), default=0) for mods in self.layers]
        self.modules_per_layer = [len(mods) for mods in self.layers]

    def mask(self, module: nn.Module) -> torch.Tensor:
        return getattr(module.lora_B[self.adapter], MASK_BUFFER)

    def ranks(self) -> list[int]:
        """Active components per decoder layer (the largest over its modules; they agree after set_ranks)."""
        return [max((int(self.mask(m).sum().item()) for _, m in mods), default=0) for mods in self.layers]

    def total_rank(self) -> int:
        """Active components summed over every LoRA module (what AdaLoRA's budget counts)."""
        return sum(int(self.mask(m).sum().item()) for mods in self.layers for _, m in mods)

    def set_ranks(self, ranks: Sequence[int], *, keep: str = "magnitude", optimizer=None) -> list[int]:
        """Give decoder layer k rank `ranks[k]` on every LoRA module; zero the Adam state of newly
        masked components when `optimizer` is given. Returns the newly masked components per layer."""
        if keep not in KEEP_RULES:
            raise ValueError(f"keep: must be one of {list(KEEP_RULES)}, got {keep!r}")
        ranks = [int(r) for r in ranks]
        if len(ranks) != len(self.layers):
            raise ValueError(f"ranks: needs one entry per decoder layer ({len(self.layers)}), got {len(ranks)}")
        for k, (r, mods) in enumerate(zip(ranks, self.layers)):
            if mods and not 0 <= r <= self.r_max[k]:
                raise ValueError(f"ranks: layer {k} must get 0 <= rank <= r_max = {self.r_max[k]}, got {r}")
        dropped = []
        for r, mods in zip(ranks, self.layers):
            n = 0
            for _, m in mods:
                buf = self.mask(m)
                active = buf.detach().cpu() > 0
                new = _select(component_norms(m, self.adapter), active, r, keep)
                gone = torch.nonzero(active & ~new).flatten()
                n += int(gone.numel())
                if optimizer is not None:
                    zero_adam_state(optimizer, m, gone, self.adapter)
                with torch.no_grad():
                    buf.copy_(new.to(buf.dtype))
            dropped.append(n)
        return dropped

    def bake(self) -> None:
        """Zero the masked rows of A and columns of B in place (for peft's merge, module docstring)."""
        with torch.no_grad():
            for mods in self.layers:
                for _, m in mods:
                    keep = self.mask(m) > 0
                    m.lora_A[self.adapter].weight[~keep, :] = 0.0
                    m.lora_B[self.adapter].weight[:, ~keep] = 0.0

    def remove(self) -> None:
        """Detach the hooks and delete the buffers (the model is the plain LoRA again)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        for mods in self.layers:
            for _, m in mods:
                b = m.lora_B[self.adapter]
                if hasattr(b, MASK_BUFFER):
                    delattr(b, MASK_BUFFER)


def attach_masks(model: nn.Module, adapter: str = "default") -> RankMasks:
    """Masks (all ones: every layer at its full rank) on every LoRA module of `model`."""
    return RankMasks(model, adapter)
