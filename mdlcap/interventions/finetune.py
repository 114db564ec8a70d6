"""Fine-tuning of the adapters (LoRA-MoE or peft LoRA) through `accelerate.Accelerator`: the same
loop runs on one CPU process (the default run), on one GPU, and under
`accelerate launch --num_processes N` (DDP: each process takes every N-th batch, gradients are
averaged by DDP, so all processes hold identical adapter weights after every step).

    losses = finetune(model, batches, epochs=1, lr=2e-4, seed=0)
    held = ValidationLoss(val_batches, every=16)                     # optional: held-out loss every 16 steps
    finetune(model, batches, ..., validation=held); held.steps, held.losses

`batches` are ready-made dicts for `model(**batch)` whose `.loss` is the answer-only LM loss
(`mdlcap.default.data.task_batches`). Evaluation of the fine-tuned model is `mdlcap.evaluation.lm_eval_accuracy`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mdlcap import cache
from mdlcap.default.data import data_key
from mdlcap.interventions.moe import moe_aux_loss
from mdlcap.models import model_identity
from mdlcap.scores.autograd import mean_loss, progress_off

PLATEAU_FRACTION = 0.25      # `late_improvement` asks what the last quarter of a loss curve added


class _Batches(Dataset):
    """A list of pre-collated batches seen as a data set of batches (one item = one batch)."""

    def __init__(self, batches: Sequence[dict]):
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _single(items: list[dict]) -> dict:
    return items[0]


class ValidationLoss:
    """The held-out loss along training: `finetune(..., validation=v)` calls `v(step, model)` before
    the first step and after every `every`-th, and `v` records the mean answer-only loss of
    `batches` at that step (`scores.autograd.mean_loss`: eval mode, no gradient; the training RNG
    and batch order are not touched). Under DDP every process evaluates all `batches` on its own
    replica and the mean is all-reduced, so each holds the same curve.

    Why held-out and not the training loss: a generated training split of 512 examples is
    memorised long before the held-out loss stops improving, so the training loss keeps falling
    (towards 0) after learning has stopped; the held-out curve says when training has plateaued."""

    def __init__(self, batches: Sequence[dict], every: int):
        if not batches:
            raise ValueError("batches: the validation batches must not be empty")
        if int(every) < 1:
            raise ValueError(f"every: must be >= 1 step, got {every}")
        self.batches, self.every = list(batches), int(every)
        self.steps: list[int] = []
        self.losses: list[float] = []

    def due(self, step: int, last: int) -> bool:
        return step == 0 or step % self.every == 0 or step == last

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        self.steps.append(int(step))
        self.losses.append(mean_loss(model, self.batches))


def make_accelerator(device: str = "cpu", mixed_precision: str = "no"):
    """An Accelerator for `device` ("cpu" forces CPU even where a GPU exists; "cuda"/"auto" let
    accelerate pick the launch's devices)."""
    from accelerate import Accelerator

    return Accelerator(cpu=(device == "cpu"), mixed_precision=mixed_precision)


def finetune(model: torch.nn.Module, train_batches: Sequence[dict], *, epochs: int = 1, lr: float = 2e-4,
             accelerator=None, seed: int = 0, weight_decay: float = 0.0, aux_loss_coef: float = 0.0,
             max_grad_norm: float | None = 1.0, warmup_ratio: float = 0.0, progress: bool = True,
             desc: str = "finetune", validation: ValidationLoss | None = None,
             callback: Callable | None = None) -> list[float]:
    """Train the parameters of `model` that require grad with AdamW on `train_batches` for `epochs`
    (linear decay after an optional warm-up), plus `aux_loss_coef` x the MoE load-balancing loss.
    Returns the training loss of every step (averaged over processes); `validation` (a
    `ValidationLoss`) records the held-out loss along the way. The model is trained in place and
    left in eval mode, unwrapped from DDP.

    `callback(step, model, optimizer)`, if given, runs after every optimizer step (and the
    learning-rate step) and before the gradients are cleared, with `step` the number of optimizer
    steps done so far (1, 2, ..., the last step): a rank schedule changes the adapters there
    (`mdlcap.interventions.online_ranks.OnlineRanks`; AdaLoRA's `update_and_allocate`, which
    reads the step's gradients, `mdlcap.interventions.adalora.AdaLoraStep`). `model` and
    `optimizer` are as accelerate prepared them (DDP / `AcceleratedOptimizer` wrappers under a
    launch: unwrap with `.module` / `.optimizer`). Without a callback the loop is the one it was."""
    from accelerate.utils import set_seed

    if epochs < 1:
        raise ValueError(f"epochs: must be >= 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if len(train_batches) == 0:
        raise ValueError("train_batches: must not be empty")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters (add adapters first)")
    if accelerator is None:
        accelerator = make_accelerator("cpu")
    set_seed(seed)

    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(_Batches(train_batches), batch_size=1, shuffle=True, generator=gen, collate_fn=_single)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_batches) / accelerator.num_processes)
    warm = int(warmup_ratio * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    model.train()
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)

    losses: list[float] = []
    quiet = progress_off(progress) or not accelerator.is_local_main_process    # TQDM_DISABLE under papermill
    bar = tqdm(total=steps, desc=desc, leave=False, disable=quiet)
    if validation is not None:
        validation(0, model)
    for _ in range(epochs):
        for batch in loader:
            out = model(**batch)
            loss = out.loss
            if aux_loss_coef:
                aux = moe_aux_loss(accelerator.unwrap_model(model))
                if aux is not None:
                    loss = loss + aux_loss_coef * aux
            accelerator.backward(loss)
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            schedule.step()
            if callback is not None:
                callback(len(losses) + 1, model, optimizer)
            optimizer.zero_grad(set_to_none=True)
            step_loss = accelerator.reduce(out.loss.detach().float(), reduction="mean").item()
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            bar.update(1)
            if validation is not None and validation.due(len(losses), steps):
                validation(len(losses), model)
    bar.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    accelerator.free_memory()
    return losses


def late_improvement(losses: Sequence[float], fraction: float = PLATEAU_FRACTION) -> float:
    """The patience rule of early stopping, read once at the end of training: how much the last
    `fraction` of the points improved on the best loss before them, as a share of the curve's
    whole improvement, (min before the last window − min) / (first − min). 0 when the best loss
    came before the last window (a plateau, or a held-out loss already turning up), 1 when all
    of the improvement came in it. Unlike a comparison of window means it does not move with the
    evaluation noise of a flat curve, and it stays small when the loss creeps towards 0. NaN with
    fewer than 4 points, or no improvement at all (nothing was learned)."""
    import numpy as np

    x = np.asarray(losses, dtype=float)
    if len(x) < 4:
        return float("nan")
    w = max(1, int(round(fraction * len(x))))
    best, best_before = x.min(), x[:-w].min()
    total = x[0] - best
    return float((best_before - best) / total) if total > 0 else float("nan")


def held_out_plateau(val_losses: Sequence[float]) -> float:
    """`late_improvement` of a `ValidationLoss` curve from its first evaluation after step 0 on:
    the untuned model's loss (step 0) is dominated by not yet answering in the task's answer words
    (several nats), and measured against that first drop every later curve would look flat."""
    return late_improvement(list(val_losses)[1:])


# --------------------------------------------------------------------------- one experiment cell
def task_train_batches(params, tokenizer, task: str) -> list[dict]:
    """Training batches of a fine-tune task (first `allocation.max_train` examples of its train
    split), grouped by length (`task_batches(group_by_length=True)`: less padding, same examples)."""
    from mdlcap.default import data as mdata

    a = params.allocation
    examples = mdata.load_task(params, task, "train")
    if a.max_train is not None:
        examples = examples[: a.max_train]
    return mdata.task_batches(tokenizer, examples, a.batch_size, max_len=a.max_len, group_by_length=True)


def task_epochs(params, task: str) -> int:
    """Passes over the training examples for `task`: `allocation.task_epochs[task]`, else `allocation.epochs`."""
    a = params.allocation
    return int(a.task_epochs.get(task, a.epochs))


def task_validation(params, tokenizer, task: str) -> ValidationLoss | None:
    """The held-out loss tracker of one cell: the first `allocation.validation_items` examples of
    the task's validation split, every `allocation.validation_every` steps (None when that is 0)."""
    from mdlcap.default import data as mdata

    a = params.allocation
    if not a.validation_every:
        return None
    examples = mdata.load_task(params, task, "validation")[: a.validation_items]
    return ValidationLoss(mdata.task_batches(tokenizer, examples, a.batch_size, max_len=a.max_len,
                                             group_by_length=True), every=a.validation_every)


def run_cell(base_model, tokenizer, params, task: str, *, seed: int, counts=None, ranks=None,
             accelerator=None, batches: Sequence[dict] | None = None, progress: bool = False) -> dict:
    """Fine-tune a copy of `base_model` on `task` with LoRA-MoE expert `counts` per layer (or peft
    LoRA `ranks` per layer) and evaluate it on the task's test split through lm-eval.

    Returns a JSON-able record: accuracy, the correctness of every test item in doc order
    (`items`, what paired intervals resample), the loss of every step (`losses`; first and mean of
    the last 10 %), the held-out loss along training (`val_steps`, `val_losses`; `task_validation`)
    and its `late_improvement` (`val_late_improvement`: the share of the improvement made in the
    last quarter of the evaluations, 0 once training has plateaued),
    trainable parameters, wall seconds. The base model is never
    modified."""
    import copy
    import time

    from mdlcap.evaluation import lm_eval_items
    from mdlcap.interventions.moe import add_lora_moe, rank_config, trainable_parameters

    if (counts is None) == (ranks is None):
        raise ValueError("counts/ranks: give exactly one of them")
    a = params.allocation
    t0 = time.time()
    torch.manual_seed(seed)
    model = copy.deepcopy(base_model)
    if counts is not None:
        add_lora_moe(model, [int(c) for c in counts], r=a.lora_r, alpha=a.lora_alpha,
                     target_modules=a.target_modules, top_k=a.top_k, seed=seed)
        aux = a.aux_loss_coef
    else:
        from peft import get_peft_model
        model = get_peft_model(model, rank_config([int(r) for r in ranks], target_modules=a.target_modules,
                                                  alpha_ratio=a.lora_alpha / a.lora_r))
        aux = 0.0
    n_train, n_total = trainable_parameters(model)
    if batches is None:
        batches = task_train_batches(params, tokenizer, task)
    held = task_validation(params, tokenizer, task)
    losses = finetune(model, batches, epochs=task_epochs(params, task), lr=a.lr, accelerator=accelerator, seed=seed,
                      aux_loss_coef=aux, warmup_ratio=a.warmup_ratio, progress=progress, desc=f"{task} s{seed}", validation=held)
    t1 = time.time()
    acc, items = None, None
    if accelerator is None or accelerator.is_main_process:
        accs, per_item = lm_eval_items(model, tokenizer, params, [task], limit=a.eval_limit)
        acc, items = accs[task], per_item[task]
    if accelerator is not None:
        accelerator.wait_for_everyone()
    tail = losses[-max(1, len(losses) // 10):]
    return {"task": task, "seed": int(seed), "accuracy": acc, "items": items,
            "counts": None if counts is None else [int(c) for c in counts],
            "ranks": None if ranks is None else [int(r) for r in ranks],
            "loss_first": losses[0], "loss_last": float(sum(tail) / len(tail)), "steps": len(losses),
            "losses": [round(float(x), 5) for x in losses],
            "val_steps": [] if held is None else held.steps,
            "val_losses": [] if held is None else [round(float(x), 5) for x in held.losses],
            "val_late_improvement": float("nan") if held is None else held_out_plateau(held.losses),
            "trainable_params": int(n_train), "total_params": int(n_total),
            "train_seconds": round(t1 - t0, 3), "eval_seconds": round(time.time() - t1, 3)}


def cell_spec(params, task: str, seed: int, counts=None, ranks=None, base_spec: dict | None = None) -> dict:
    """What changes one cell's result (model, data, adapter shape, training and evaluation
    settings): the cell's spec in the "finetune" cache, so equal allocations share one run.
    `base_spec`: what was done to the loaded base model before fine-tuning (e.g. notebook 07's
    pruning: pruner, ratios, calibration), None for the base model as loaded (the key is then
    the same as before the argument existed)."""
    a = asdict(params.allocation)
    for k in ("methods", "rank_methods", "seeds", "tasks", "rank_experiment", "total_experts", "alpha", "beta",
              "gamma", "budget_scaling", "n_min", "alphalora_exponent", "task_epochs"):
        a.pop(k)                                         # they change the counts, not the run given counts
    a["epochs"] = task_epochs(params, task)              # this task's own (other tasks' epochs do not count)
    # data_key, not just the params: it also follows the task generators' version, so cells
    # trained on data that a generator change replaced are not reused
    return {"model": asdict(params.model), "model_path": model_identity(params),
            "data": asdict(params.data), "data_key": data_key(params), "alloc": a, "task": task,
            "seed": int(seed), "counts": None if counts is None else [int(c) for c in counts],
            "ranks": None if ranks is None else [int(r) for r in ranks],
            **({} if base_spec is None else {"base": dict(base_spec)})}


def cell_key(params, task: str, seed: int, counts=None, ranks=None, base_spec: dict | None = None) -> str:
    """The cache key of one cell (`cell_spec` under the "finetune" namespace's code version)."""
    return cache.key("finetune", cell_spec(params, task, seed, counts, ranks, base_spec))


def cell_cached(params, task: str, seed: int, counts=None, ranks=None, base_spec: dict | None = None) -> bool:
    """Whether the cell's cache entry exists (its record can be read back without training)."""
    return cache.path("finetune", cell_spec(params, task, seed, counts, ranks, base_spec), prefix=f"{task}_").exists()


def cached_cell(base_model, tokenizer, params, task: str, *, seed: int, counts=None, ranks=None, accelerator=None,
                batches=None, base_spec: dict | None = None) -> dict:
    """`run_cell(base_model, tokenizer, params, task, ...)` through the one cache
    (`cache.cached("finetune", cell_spec(...))`): an interrupted notebook resumes, notebooks 03
    and 05 share cells, and a cell already computed by a multi-GPU launch
    (`python -m mdlcap.study.launch`) is reused. Adds "cached" (whether the record was read back).

    Under a multi-process launch every process trains, only the main process (which alone
    evaluates) writes the entry, and all wait for it before the next cell. `base_spec` says what
    was done to `base_model` (`cell_spec`)."""
    spec = cell_spec(params, task, seed, counts, ranks, base_spec)
    fresh: list[bool] = []

    def compute() -> dict:
        fresh.append(True)
        return run_cell(base_model, tokenizer, params, task, seed=seed, counts=counts, ranks=ranks,
                        accelerator=accelerator, batches=batches)

    prefix = f"{task}_"
    if accelerator is None or accelerator.is_main_process or cache.path("finetune", spec, prefix=prefix).exists():
        rec = cache.cached("finetune", spec, compute, prefix=prefix)
    else:
        rec = compute()
    if accelerator is not None:
        # every process sees the main process's entry before the next cell checks for it
        accelerator.wait_for_everyone()
    return {**rec, "cached": not fresh}


# --------------------------------------------------------------------------- allocations of one task
def allocations_for(params, scores, n_layers: int, task: str, alphas=None) -> dict[str, list[int]]:
    """{method: expert counts} for every method of `allocation.methods` that `scores` supports
    (`alphas`: per-layer PL-alpha of the base model, `mdlcap.interventions.allocation.layer_alphas`, for alphalora)."""
    from mdlcap.interventions.allocation import allocate

    a = params.allocation
    out = {}
    for m in a.methods:
        c = allocate(m, n_layers=n_layers, total=a.total_experts, params=a, scores=scores, task=task,
                     alphas=alphas)
        if c is not None:
            out[m] = [int(x) for x in c]
    return out
