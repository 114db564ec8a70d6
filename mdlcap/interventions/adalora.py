"""AdaLoRA (Zhang et al. 2023, peft `AdaLoraConfig` / `AdaLoraModel`) scaled to a total-rank budget
and a step count: the maintained baseline for ranks that change during fine-tuning, against the
online MDL ranks (`mdlcap.interventions.online_ranks`; METHOD.md §7, Appendix G iii).

    sched = RankSchedule(total_steps=192)                       # the same phases as OnlineRanks
    model = add_adalora(base, adalora_config(n_layers=8, budget=32, r_max=8, schedule=sched))
    step = AdaLoraStep(model, sched)
    finetune(model, batches, ..., callback=step)               # update_and_allocate after every step
    step.trajectory; layer_ranks(model)                         # ranks per decoder layer along training
    AdaLoraValidation(val_batches, every=16)                    # held-out loss without the penalty

Scaling to the comparison: init_r = r_max (every module starts at the online LoRA's full rank),
target_r = budget / L, so AdaLoRA's final budget, target_r × (modules), equals the LoRA methods'
Σ_k r_k × (modules per layer) (`budget` must be a multiple of L: AdaLoRA's target is an integer
average); tinit, tfinal, deltaT and total_step from the shared `RankSchedule`; lora_alpha =
alpha_ratio × r_max, so that AdaLoRA's scale α / ranknum (ranknum = init_r, fixed) is the LoRA
baselines' α/r = alpha_ratio. beta1, beta2 and orth_reg_weight keep peft's defaults (0.85, 0.85,
0.5); `overrides` changes any field.

`update_and_allocate(step)` reads the step's gradients (its sensitivity |θ ∇θ|, smoothed by EMAs),
so it runs in `finetune`'s callback, after the optimizer step and before the gradients are cleared
(`AdaLoraStep`). Steps are 1-based, so the forced final mask at step total_step − tfinal is
reached for any tfinal >= 0. peft's budget falls on a cubic schedule from init_r × modules to the
target and masks (zeroes E_i in place) at multiples of deltaT; from the final mask on, it re-masks
every step. The ranks: the number of unmasked triplets per module from the config's current
`rank_pattern` (init_r everywhere before the first mask). Between two masks of the middle phase a
masked E_i can regrow (its gradient is not zero), as in peft; the ranks read are the last mask's.

The orthogonality penalty. AdaLoRA adds orth_reg_weight × mean over its A and B tensors of
‖AAᵀ − I‖_F and ‖BᵀB − I‖_F to `outputs.loss` whenever a loss is computed, in eval mode too, so
its training loss is not comparable with the other methods' and a held-out loss would include it:
methods are compared on held-out loss and accuracy with the penalty off (`no_orth_penalty`,
`AdaLoraValidation`; lm-eval reads logits and never sees it). Its cost (`orthogonality_cost`):
r × r Gram products of every A and B at init_r (masking does not shrink them), about
3 Σ r²(d_in + d_out) multiply-adds per step with the backward, against ~3 N T for a gradient pass
of the N-parameter model on T tokens: no extra pass. Its sensitivity costs no pass either (the
training gradients), only three adapter-sized buffers (ipt and the two EMAs).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

from torch import nn

from mdlcap.interventions.finetune import ValidationLoss
from mdlcap.interventions.moe import DEFAULT_TARGETS
from mdlcap.interventions.rank_schedule import RankSchedule
from mdlcap.models import decoder_layers

__all__ = ["adalora_config", "add_adalora", "AdaLoraStep", "AdaLoraValidation", "module_ranks", "layer_ranks",
           "total_rank", "no_orth_penalty", "orthogonality_cost"]


def _peft(model: nn.Module):
    """The PeftModel under accelerate/DDP wrappers."""
    m = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    if not hasattr(m, "peft_config") or not hasattr(getattr(m, "base_model", None), "update_and_allocate"):
        raise ValueError(f"model: is not a peft AdaLoRA model ({type(m).__name__})")
    return m


def adalora_config(n_layers: int, budget: int, r_max: int, schedule: RankSchedule, *,
                   target_modules: Sequence[str] = DEFAULT_TARGETS, alpha_ratio: float = 2.0,
                   dropout: float = 0.0, **overrides):
    """peft `AdaLoraConfig` at init_r = r_max, target_r = budget / n_layers and the schedule's phases."""
    from peft import AdaLoraConfig

    if n_layers < 1 or budget < n_layers or budget % n_layers:
        raise ValueError(f"budget: must be a positive multiple of n_layers = {n_layers} (AdaLoRA's target_r is "
                         f"an integer average rank), got {budget}")
    target_r = budget // n_layers
    if not 1 <= target_r <= r_max:
        raise ValueError(f"r_max: budget / n_layers = {target_r} must lie in [1, r_max = {r_max}]")
    if not isinstance(schedule, RankSchedule):
        raise ValueError("schedule: must be a RankSchedule")
    if alpha_ratio <= 0:
        raise ValueError(f"alpha_ratio: must be > 0, got {alpha_ratio}")
    kw = dict(init_r=int(r_max), target_r=int(target_r), lora_alpha=alpha_ratio * r_max, lora_dropout=dropout,
              target_modules=list(target_modules), task_type="CAUSAL_LM", **schedule.adalora())
    kw.update(overrides)
    return AdaLoraConfig(**kw)


def add_adalora(model: nn.Module, config) -> nn.Module:
    """`peft.get_peft_model(model, config)` for an `AdaLoraConfig` (only the adapters train)."""
    from peft import AdaLoraConfig, get_peft_model

    if not isinstance(config, AdaLoraConfig):
        raise ValueError("config: must be a peft AdaLoraConfig (adalora_config)")
    return get_peft_model(model, config)


def _svd_modules(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """Per decoder layer, (name under the HF model, module) of every AdaLoRA SVD layer."""
    from peft.tuners.adalora import AdaLoraLayer

    peft_model = _peft(model)
    hf = peft_model.base_model.model
    names = {id(m): n for n, m in hf.named_modules()}
    return [[(names[id(m)], m) for m in layer.modules() if isinstance(m, AdaLoraLayer)]
            for layer in decoder_layers(hf)]


def module_ranks(model: nn.Module, adapter: str = "default") -> dict[str, int]:
    """Unmasked triplets per AdaLoRA module (name under the HF model), from the current rank_pattern."""
    cfg = _peft(model).peft_config[adapter]
    pattern = cfg.rank_pattern or {}
    out = {}
    for mods in _svd_modules(model):
        for name, m in mods:
            key = f"{name}.lora_E.{adapter}"
            out[name] = int(sum(bool(x) for x in pattern[key])) if key in pattern else int(m.r[adapter])
    return out


def layer_ranks(model: nn.Module, adapter: str = "default") -> list[int]:
    """Per decoder layer, the unmasked triplets summed over its modules (module_ranks)."""
    ranks = module_ranks(model, adapter)
    return [sum(ranks[n] for n, _ in mods) for mods in _svd_modules(model)]


def total_rank(model: nn.Module, adapter: str = "default") -> int:
    """Unmasked triplets over every module: AdaLoRA's budget (target_r × modules at the end)."""
    return sum(module_ranks(model, adapter).values())


class AdaLoraStep:
    """`finetune` callback: peft's `update_and_allocate(step)` after every optimizer step, and the
    per-layer ranks recorded at the schedule's update steps (`trajectory`)."""

    def __init__(self, model: nn.Module, schedule: RankSchedule, adapter: str = "default"):
        cfg = _peft(model).peft_config[adapter]
        if (cfg.total_step, cfg.tinit, cfg.tfinal, cfg.deltaT) != tuple(schedule.adalora()[k] for k in
                                                                        ("total_step", "tinit", "tfinal", "deltaT")):
            raise ValueError("schedule: differs from the model's AdaLoraConfig schedule")
        self.schedule, self.adapter = schedule, adapter
        self.trajectory: list[dict] = [{"step": 0, "ranks": layer_ranks(model, adapter),
                                        "total": total_rank(model, adapter)}]

    def __call__(self, step: int, model: nn.Module, optimizer=None) -> None:
        peft_model = _peft(model)
        peft_model.base_model.update_and_allocate(int(step))
        if self.schedule.is_update(int(step)):
            self.trajectory.append({"step": int(step), "ranks": layer_ranks(peft_model, self.adapter),
                                    "total": total_rank(peft_model, self.adapter)})


@contextmanager
def no_orth_penalty(model: nn.Module, adapter: str = "default"):
    """AdaLoRA's orthogonality penalty off while inside (held-out losses comparable with LoRA's)."""
    cfg = _peft(model).peft_config[adapter]
    weight = cfg.orth_reg_weight
    cfg.orth_reg_weight = 0.0
    try:
        yield
    finally:
        cfg.orth_reg_weight = weight


class AdaLoraValidation(ValidationLoss):
    """`ValidationLoss` with AdaLoRA's orthogonality penalty off: the held-out task loss alone."""

    def __call__(self, step: int, model: nn.Module) -> None:
        with no_orth_penalty(model):
            super().__call__(step, model)


def orthogonality_cost(model: nn.Module, tokens_per_step: int, adapter: str = "default") -> dict:
    """Multiply-adds per step of the orthogonality penalty (forward and backward, ≈ 3 Σ r²(d_in + d_out)
    at init_r) against one gradient pass of the model on `tokens_per_step` tokens (≈ 3 N T)."""
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step: must be >= 1, got {tokens_per_step}")
    penalty = 0
    for mods in _svd_modules(model):
        for _, m in mods:
            A, B = m.lora_A[adapter], m.lora_B[adapter]
            r = A.shape[0]
            penalty += 3 * r * r * (A.shape[1] + B.shape[0])
    n_params = sum(p.numel() for p in _peft(model).parameters())
    gradient_pass = 3 * n_params * int(tokens_per_step)
    return {"penalty_madds": int(penalty), "gradient_pass_madds": int(gradient_pass),
            "pass_fraction": penalty / gradient_pass, "extra_passes": 0}
