"""Fine-tuning of the adapters (LoRA-MoE or peft LoRA) through `accelerate.Accelerator`: the same
loop runs on one CPU process (the default run), on one GPU, and under
`accelerate launch --num_processes N` (DDP: each process takes every N-th batch, gradients are
averaged by DDP, so all processes hold identical adapter weights after every step).

    losses = finetune(model, batches, epochs=1, lr=2e-4, seed=0)

`batches` are ready-made dicts for `model(**batch)` whose `.loss` is the answer-only LM loss
(`mdlcap.data.task_batches`). Evaluation of the fine-tuned model is `mdlcap.evaluation.lm_eval_accuracy`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .moe import moe_aux_loss


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
    quiet = not (progress and accelerator.is_local_main_process)
    # disable=None lets TQDM_DISABLE (set by `make all`/tests) and non-TTY detection decide
    bar = tqdm(total=steps, desc=desc, leave=False, **({"disable": True} if quiet else {}))
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
