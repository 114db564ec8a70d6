"""Evaluation: task accuracy through lm-eval on an in-memory model, and perplexity.

    lm_eval_accuracy(model, tokenizer, params, ["cola", "hellaswag"])   -> {"cola": 0.71, ...}
    lm_eval_items(model, tokenizer, params, tasks)   -> ({task: acc}, {task: [0/1 per doc, doc order]})
    perplexity(model, tokenizer, texts, seq_len)                         -> float
    window_losses(model, tokenizer, texts, seq_len)  -> [mean next-token loss (nats) of each window]

The lm-eval task files of the default data (one YAML per task, pointing at the generated JSONL,
with prefixed names such as `mdlcap_ft_cola`) are written by `mdlcap.default.data.ensure`; see
`mdlcap.default.lm_eval_tasks`. Under `data.source: hub` the zero-shot tasks are lm-eval's own.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from mdlcap.default import data as mdata
from mdlcap.default.batches import lm_batches
from mdlcap.default.lm_eval_tasks import FOLDER, local_task_name


@lru_cache(maxsize=8)
def _task_manager(include_path: str, include_defaults: bool):
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def lm_eval_accuracy(model, tokenizer, params, tasks: list[str], limit: int | float | None = None,
                     batch_size: int = 32) -> dict[str, float]:
    """{params task name: accuracy} from `lm_eval.simple_evaluate` on the in-memory model.

    Fine-tune tasks are scored on their test split, zero-shot tasks on theirs; metric `acc`
    (arg-max log-likelihood of the choices). Offline: the local tasks read only local JSONL."""
    return _simple_evaluate(model, tokenizer, params, tasks, limit, batch_size, per_item=False)[0]


def lm_eval_items(model, tokenizer, params, tasks: list[str], limit: int | float | None = None,
                  batch_size: int = 32) -> tuple[dict[str, float], dict[str, list[int]]]:
    """`lm_eval_accuracy` and, per task, the correctness (lm-eval's per-sample `acc`, 0 or 1) of
    every scored doc in doc order (`log_samples=True`): the items a paired bootstrap resamples."""
    return _simple_evaluate(model, tokenizer, params, tasks, limit, batch_size, per_item=True)


def _simple_evaluate(model, tokenizer, params, tasks, limit, batch_size: int, per_item: bool):
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError("tasks: must name at least one task")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit: must be > 0 or None, got {limit}")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    root = mdata.ensure(params)
    names = {t: local_task_name(params, t) for t in tasks}
    builtin = any(n == t for t, n in names.items())
    tm = _task_manager(str(root / FOLDER), builtin)
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(model.config, "max_position_embeddings", None))
    res = lm_eval.simple_evaluate(model=lm, tasks=sorted(set(names.values())), task_manager=tm, limit=limit,
                                  log_samples=per_item, bootstrap_iters=0, random_seed=params.run.seed,
                                  numpy_random_seed=params.run.seed, torch_random_seed=params.run.seed)
    if was_training:
        model.train()
    out, items = {}, {}
    for t, n in names.items():
        r = res["results"][n]
        out[t] = float(r.get("acc,none", r.get("acc")))
        if per_item:
            items[t] = [int(round(float(x["acc"]))) for x in sorted(res["samples"][n], key=lambda x: x["doc_id"])]
    return out, items


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 8) -> float:
    """exp(mean next-token loss) over the texts cut into seq_len windows (mdlcap.default.batches.lm_batches),
    token-weighted across windows."""
    if not texts:
        raise ValueError("texts: must be a non-empty list of strings")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    tot, cnt = 0.0, 0
    for b in lm_batches(tokenizer, texts, seq_len, batch_size):
        b = {k: v.to(dev) for k, v in b.items()}
        n = int((b["labels"][:, 1:] != -100).sum())
        tot += model(**b).loss.float().item() * n
        cnt += n
    if was_training:
        model.train()
    return math.exp(tot / cnt)


@torch.no_grad()
def window_losses(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 8) -> list[float]:
    """Mean next-token loss (nats) of each seq_len window of the texts (the windows of `perplexity`,
    in order): the units a bootstrap over held-out windows resamples. Every window predicts
    seq_len − 1 tokens, so exp(mean of these) is `perplexity` (up to float summation order)."""
    if not texts:
        raise ValueError("texts: must be a non-empty list of strings")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out: list[float] = []
    for b in lm_batches(tokenizer, texts, seq_len, batch_size):
        b = {k: v.to(dev) for k, v in b.items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        mask = (labels != -100).float()
        out.extend((tok * mask).sum(1).div(mask.sum(1)).tolist())
    if was_training:
        model.train()
    return out
