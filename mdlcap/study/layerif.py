"""LayerIF in its own setting (METHOD.md §1, baselines): DataInf on the LoRA gradients of a model
LoRA-fine-tuned on the task (Kwon et al. 2023, `src/lora_model.py` + `src/influence.py`; Askari
et al. 2025 feed these per-layer sums to their allocator).

    data = with_lora_setup(params, task, train, val, finetune_batches)   # what the LoRA and DataInf see
    inf, meta = layerif_influence(model, data, damping_scale=0.1)        # `mdlcap.scores.influence.Influence`

Steps:
  1. a peft LoRA (LoraConfig on `allocation.target_modules`, rank `allocation.lora_r`, alpha
     `allocation.lora_alpha`, dropout 0.05 as DataInf) on a copy of the model, fine-tuned with AdamW
     for `scoring.layerif_lora_steps` steps at `scoring.layerif_lora_lr` (linear decay after a 6 %
     warm-up, DataInf's schedule) on the task's training batches. The adapter tensors are cached
     (namespace "scores", keyed by the model, the batches and these settings), so a rerun does not
     retrain;
  2. per-sample gradients of the LoRA A and B tensors only (base weights frozen), DataInf per tensor
     (λ_t = 0.1 · mean_j ‖g_{j,t}‖² / d_t, Sherman–Morrison per tensor), summed over each decoder
     layer's tensors: `mdlcap.scores.influence.layer_influence(..., blocks=lora_blocks(peft))`.

Deviations: a modest number of steps (the references train for epochs: DataInf 10 on RoBERTa; the
LoRA only has to move B off its zero init, without which every A-gradient is 0, and to adapt
to the task); the study's answer-only task loss (DataInf's generation code uses labels = input_ids);
LayerIF's public `compute_gradient` (github.com/HadiAskari/Expert_Allocation,
LayerIF_Computation/lora_model_alpha.py) loads the base model without an adapter and takes the full
self-attention weights of each layer, per tensor: that variant is `layer_influence` on the base
model (kept as a labelled extra, not a scores.csv method).

The pruning source (task "calibration") runs in the "base" setting (`setting_for`): DataInf on the
base model's decoder-layer weights per tensor, LayerIF's own setting, since the pruned model has no
adapter and no task.

Also: the blocks are always the decoder layers (scoring.blocks = "attn_mlp" does not split LayerIF);
the LoRA goes on a deep copy of the model (twice the model's memory while LayerIF runs); under a
multi-process launch `finetune` trains it under DDP (identical adapters on every process) and
DataInf's sums are all-reduced as in `layer_influence` (untested at more than one process here).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from mdlcap import cache
from mdlcap.interventions.finetune import finetune, make_accelerator
from mdlcap.interventions.moe import DEFAULT_TARGETS
from mdlcap.models import decoder_layers, fingerprint_batches, fingerprint_model
from mdlcap.scores import influence

LORA_DROPOUT = 0.05          # DataInf's LoraConfig
WARMUP_RATIO = 0.06          # DataInf's get_linear_schedule_with_warmup


@dataclass
class LayerIFData:
    """What LayerIF sees for one task: the samples whose influence it sums (`train`), the
    validation samples (`val`), the batches the LoRA is fine-tuned on (`finetune`; None = `train`)
    and the LoRA and fine-tuning settings."""
    train: list[dict]
    val: list[dict]
    finetune: list[dict] | None = None
    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = tuple(DEFAULT_TARGETS)
    steps: int = 100
    lr: float = 3e-4
    seed: int = 0
    extra: dict = field(default_factory=dict)
    setting: str = "lora"        # "lora": DataInf on a task LoRA; "base": the base model's own weights

    def __iter__(self):                      # unpacks as (train, val) like the earlier sample pair
        return iter((self.train, self.val))

    def lora_spec(self) -> dict:
        if self.setting == "base":
            return {"setting": "base"}
        return {"r": int(self.r), "alpha": float(self.alpha), "target_modules": list(self.target_modules),
                "steps": int(self.steps), "lr": float(self.lr), "seed": int(self.seed),
                "dropout": LORA_DROPOUT, "warmup_ratio": WARMUP_RATIO,
                "finetune_data": fingerprint_batches(self.finetune_batches())}

    def finetune_batches(self) -> list[dict]:
        return list(self.finetune if self.finetune is not None else self.train)


def with_lora_setup(params, task: str, train, val, finetune_batches=None) -> LayerIFData:
    """LayerIFData from the params: LoRA shape from the allocation section, steps and lr from
    scoring.layerif_lora_steps / layerif_lora_lr, seed run.seed."""
    a, sp = params.allocation, params.scoring
    return LayerIFData(list(train), list(val), None if finetune_batches is None else list(finetune_batches),
                       r=a.lora_r, alpha=a.lora_alpha, target_modules=tuple(a.target_modules),
                       steps=sp.layerif_lora_steps, lr=sp.layerif_lora_lr, seed=params.run.seed,
                       extra={"task": task}, setting=setting_for(task))


def setting_for(task: str) -> str:
    """"base" for the pruning source (task "calibration"): the model pruned is the base model and
    there is no task to fine-tune a LoRA for, so DataInf runs on the base model's own decoder-layer
    weights, per tensor, as LayerIF's public code does (LayerIF_Computation: base model, no adapter).
    A LoRA fine-tuned on the 64 calibration windows overfits them: at its end every layer's summed
    influence on held-out text was harmful (no positive score, q undefined). "lora" for fine-tune tasks."""
    return "base" if task == "calibration" else "lora"


def as_layerif_data(obj, sp) -> LayerIFData:
    """A LayerIFData as is, or a (train, validation) pair with the LoRA fine-tuned on `train`
    (steps and lr from the scoring section `sp`, default LoRA shape)."""
    if isinstance(obj, LayerIFData):
        return obj
    train, val = obj
    return LayerIFData(list(train), list(val), steps=sp.layerif_lora_steps, lr=sp.layerif_lora_lr)


def _check(data: LayerIFData) -> None:
    if data.r < 1:
        raise ValueError(f"r: the LoRA rank must be >= 1, got {data.r}")
    if data.steps < 1:
        raise ValueError(f"steps: LoRA fine-tuning steps must be >= 1, got {data.steps}")
    if not data.lr > 0:
        raise ValueError(f"lr: must be > 0, got {data.lr}")
    if not data.finetune_batches():
        raise ValueError("finetune: no batches to fine-tune the LoRA on")


def _add_lora(model, data: LayerIFData):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=int(data.r), lora_alpha=float(data.alpha), lora_dropout=LORA_DROPOUT,
                     target_modules=list(data.target_modules), bias="none")
    try:
        return get_peft_model(copy.deepcopy(model), cfg)
    except ValueError as e:
        raise ValueError(f"target_modules: {list(data.target_modules)} do not fit the model ({e})") from None


def lora_state(peft_model) -> dict:
    """The LoRA A/B tensors of a peft model, by parameter name (detached CPU copies)."""
    return {n: p.detach().cpu().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def lora_finetuned(model, data: LayerIFData, *, model_key: str | None = None, use_cache: bool = True,
                   progress: bool = True):
    """(peft model, meta): a LoRA on a copy of `model` fine-tuned as `data` says; its tensors come
    from the one cache when this (model, data, settings) was trained before. meta: the fine-tuning
    seconds (0 when cached), steps, first/last loss, whether it was cached."""
    from safetensors.torch import load_file, save_file

    _check(data)
    peft_model = _add_lora(model, data)
    meta = {"finetune_seconds": 0.0, "finetune_steps": int(data.steps), "lora_cached": True}

    def compute():
        meta["lora_cached"] = False
        fin = data.finetune_batches()
        seq = [fin[i % len(fin)] for i in range(int(data.steps))]
        t0 = time.perf_counter()
        on_cpu = next(peft_model.parameters()).device.type == "cpu"
        losses = finetune(peft_model, seq, epochs=1, lr=float(data.lr), seed=int(data.seed),
                          accelerator=make_accelerator("cpu" if on_cpu else "cuda"),
                          warmup_ratio=WARMUP_RATIO, progress=progress, desc="layerif lora")
        meta.update({"finetune_seconds": time.perf_counter() - t0, "loss_first": losses[0], "loss_last": losses[-1]})
        return lora_state(peft_model)

    spec = {"what": "layerif_lora", "model": model_key or fingerprint_model(model), **data.lora_spec()}
    state = (cache.cached("scores", spec, compute, load=load_file, dump=lambda p, v: save_file(v, str(p)),
                          suffix=".safetensors") if use_cache else compute())
    missing = [n for n, _ in peft_model.named_parameters() if "lora_" in n and n not in state]
    if missing:
        raise ValueError(f"cache: the cached LoRA lacks tensors {missing[:3]}...")
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    peft_model.eval()
    return peft_model, meta


def lora_blocks(peft_model) -> dict[str, list]:
    """{"layers.k": [LoRA A/B tensors of decoder layer k]} (same block names as `resolve_blocks`)."""
    out = {}
    for k, layer in enumerate(decoder_layers(peft_model)):
        out[f"layers.{k}"] = [p for n, p in layer.named_parameters() if "lora_" in n]
    empty = [k for k, ps in out.items() if not ps]
    if empty:
        raise ValueError(f"target_modules: the LoRA reaches no tensor of {empty}")
    return out


def layerif_influence(model, data, *, sp=None, damping_scale: float = 0.1, model_key: str | None = None,
                      use_cache: bool = True, progress: bool = True):
    """(Influence, meta): DataInf on the LoRA tensors of `model` LoRA-fine-tuned per `data`
    (a LayerIFData, or a (train, val) pair with `sp` the scoring section). meta: fine-tuning
    seconds and steps, influence seconds, per-sample backward passes, LoRA tensor count."""
    data = as_layerif_data(data, sp) if not isinstance(data, LayerIFData) else data
    if data.setting == "base":
        t0 = time.perf_counter()
        inf = influence.layer_influence(model, data.train, data.val, damping_scale=damping_scale, progress=progress)
        meta = {"influence_seconds": time.perf_counter() - t0, "finetune_seconds": 0.0, "finetune_steps": 0,
                "sample_backward_passes": inf.diagnostics["sample_backward_passes"],
                "n_tensors": inf.diagnostics["n_tensors"], "setting": "base"}
        inf.diagnostics.update(meta)
        return inf, meta
    if data.setting != "lora":
        raise ValueError(f"setting: must be 'lora' or 'base', got {data.setting!r}")
    peft_model, meta = lora_finetuned(model, data, model_key=model_key, use_cache=use_cache, progress=progress)
    t0 = time.perf_counter()
    inf = influence.layer_influence(peft_model, data.train, data.val, blocks=lora_blocks(peft_model),
                                    damping_scale=damping_scale, progress=progress)
    meta.update({"influence_seconds": time.perf_counter() - t0,
                 "sample_backward_passes": inf.diagnostics["sample_backward_passes"],
                 "n_tensors": inf.diagnostics["n_tensors"], "setting": "lora"})
    inf.diagnostics.update(meta)
    return inf, meta
