"""Fine-tuning of the adapters (LoRA-MoE or peft LoRA) through `accelerate.Accelerator`: the same
loop runs on one CPU process (the default run), on one GPU, and under
`accelerate launch --num_processes N` (DDP: each process takes every N-th batch, gradients are
averaged by DDP, so all processes hold identical adapter weights after every step).

    losses = finetune(model, batches, epochs=1, lr=2e-4, seed=0)

`batches` are ready-made dicts for `model(**batch)` whose `.loss` is the answer-only LM loss
(`mdlcap.default.data.task_batches`). Evaluation of the fine-tuned model is `mdlcap.evaluation.lm_eval_accuracy`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mdlcap import cache
from mdlcap.default.data import data_key
from mdlcap.interventions.moe import moe_aux_loss
from mdlcap.models import resolve_path
from mdlcap.scores.autograd import progress_off

PLATEAU_FRACTION = 0.25      # `loss_plateau` compares the mean loss of the last two quarters of training


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


def make_accelerator(device: str = "cpu", mixed_precision: str = "no"):
    """An Accelerator for `device` ("cpu" forces CPU even where a GPU exists; "cuda"/"auto" let
    accelerate pick the launch's devices)."""
    from accelerate import Accelerator

    return Accelerator(cpu=(device == "cpu"), mixed_precision=mixed_precision)


def finetune(model: torch.nn.Module, train_batches: Sequence[dict], *, epochs: int = 1, lr: float = 2e-4,
             accelerator=None, seed: int = 0, weight_decay: float = 0.0, aux_loss_coef: float = 0.0,
             max_grad_norm: float | None = 1.0, warmup_ratio: float = 0.0, progress: bool = True,
             desc: str = "finetune") -> list[float]:
    """Train the parameters of `model` that require grad with AdamW on `train_batches` for `epochs`
    (linear decay after an optional warm-up), plus `aux_loss_coef` x the MoE load-balancing loss.
    Returns the training loss of every step (averaged over processes). The model is trained in
    place and left in eval mode, unwrapped from DDP."""
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
            optimizer.zero_grad(set_to_none=True)
            step_loss = accelerator.reduce(out.loss.detach().float(), reduction="mean").item()
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            bar.update(1)
    bar.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    accelerator.free_memory()
    return losses


def loss_plateau(losses: Sequence[float], fraction: float = PLATEAU_FRACTION) -> float:
    """Relative change of the mean training loss between the last two `fraction`s of the steps,
    (mean(last) − mean(previous)) / mean(previous): ≈ 0 once training has plateaued, clearly
    negative while the loss still falls. NaN with fewer than 2 steps per window."""
    n = len(losses)
    w = int(fraction * n)
    if w < 2:
        return float("nan")
    prev, last = losses[n - 2 * w:n - w], losses[n - w:]
    mp = sum(prev) / w
    return float((sum(last) / w - mp) / mp) if mp else float("nan")


# --------------------------------------------------------------------------- one experiment cell
def task_train_batches(params, tokenizer, task: str) -> list[dict]:
    """Training batches of a fine-tune task (first `allocation.max_train` examples of its train split)."""
    from mdlcap.default import data as mdata

    a = params.allocation
    examples = mdata.load_task(params, task, "train")
    if a.max_train is not None:
        examples = examples[: a.max_train]
    return mdata.task_batches(tokenizer, examples, a.batch_size, max_len=a.max_len)


def run_cell(base_model, tokenizer, params, task: str, *, seed: int, counts=None, ranks=None,
             accelerator=None, batches: Sequence[dict] | None = None, progress: bool = False) -> dict:
    """Fine-tune a copy of `base_model` on `task` with LoRA-MoE expert `counts` per layer (or peft
    LoRA `ranks` per layer) and evaluate it on the task's test split through lm-eval.

    Returns a JSON-able record: accuracy, the correctness of every test item in doc order
    (`items`, what paired intervals resample), the loss of every step (`losses`; first, mean of the
    last 10 % and `loss_plateau`), trainable parameters, wall seconds. The base model is never
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
    losses = finetune(model, batches, epochs=a.epochs, lr=a.lr, accelerator=accelerator, seed=seed,
                      aux_loss_coef=aux, progress=progress, desc=f"{task} s{seed}")
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
            "loss_plateau": loss_plateau(losses), "losses": [round(float(x), 5) for x in losses],
            "trainable_params": int(n_train), "total_params": int(n_total),
            "train_seconds": round(t1 - t0, 3), "eval_seconds": round(time.time() - t1, 3)}


def cell_spec(params, task: str, seed: int, counts=None, ranks=None) -> dict:
    """What changes one cell's result (model, data, adapter shape, training and evaluation
    settings): the cell's spec in the "finetune" cache, so equal allocations share one run."""
    a = asdict(params.allocation)
    for k in ("methods", "rank_methods", "seeds", "tasks", "rank_experiment", "total_experts", "alpha", "beta",
              "gamma", "budget_scaling", "n_min", "alphalora_exponent"):
        a.pop(k)                                         # they change the counts, not the run given counts
    # data_key, not just the params: it also follows the task generators' version, so cells
    # trained on data that a generator change replaced are not reused
    return {"model": asdict(params.model), "model_path": resolve_path(params, progress=False),
            "data": asdict(params.data), "data_key": data_key(params), "alloc": a, "task": task,
            "seed": int(seed), "counts": None if counts is None else [int(c) for c in counts],
            "ranks": None if ranks is None else [int(r) for r in ranks]}


def cell_key(params, task: str, seed: int, counts=None, ranks=None) -> str:
    """The cache key of one cell (`cell_spec` under the "finetune" namespace's code version)."""
    return cache.key("finetune", cell_spec(params, task, seed, counts, ranks))


def cached_cell(base_model, tokenizer, params, task: str, *, seed: int, counts=None, ranks=None, accelerator=None,
                batches=None) -> dict:
    """`run_cell(base_model, tokenizer, params, task, ...)` through the one cache
    (`cache.cached("finetune", cell_spec(...))`): an interrupted notebook resumes, notebooks 03
    and 05 share cells, and a cell already computed by a multi-GPU launch
    (`python -m mdlcap.study.launch`) is reused. Adds "cached" (whether the record was read back).

    Under a multi-process launch every process trains, only the main process (which alone
    evaluates) writes the entry, and all wait for it before the next cell."""
    spec = cell_spec(params, task, seed, counts, ranks)
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
