"""Evaluation: task accuracy through lm-eval on an in-memory model, and perplexity.

    lm_eval_accuracy(model, tokenizer, params, ["cola", "hellaswag"])   -> {"cola": 0.71, ...}
    perplexity(model, tokenizer, texts, seq_len)                         -> float

How lm-eval finds the generated data. The JSONL files live in the data cache
(`mdlcap.default.data.ensure`), whose path differs per machine, so the task YAMLs cannot be committed
with their `data_files`. `ensure()` therefore writes one small YAML per task into
`<data root>/lm_eval_tasks/`; each `include:`s the committed base config
`mdlcap/tasks/mdlcap_multiple_choice.yaml` (output type, prompt fields, metric) and adds only
its task name and absolute `data_files`. `TaskManager(include_path=<that folder>)` loads them.
Local names are prefixed (`mdlcap_ft_cola`, `mdlcap_zs_hellaswag`) so they never collide with
lm-eval's built-ins; callers use the params' names and get them back as keys.
Under `data.source: hub` the fine-tune tasks still go through the local YAMLs (the hub data
converted to our schema, test split), and the zero-shot tasks are lm-eval's own tasks by name.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import torch

from mdlcap.default import data as mdata

BASE_YAML = Path(__file__).parent / "tasks" / "mdlcap_multiple_choice.yaml"


def local_task_name(params, task: str) -> str:
    """lm-eval task name for a params task name (see module docstring)."""
    if task in params.data.zeroshot_tasks and params.data.source == "hub":
        return task                               # lm-eval's built-in task, real data
    if task in params.data.finetune_tasks:
        return f"mdlcap_ft_{task}"
    if task in params.data.zeroshot_tasks:
        return f"mdlcap_zs_{task}"
    raise ValueError(f"tasks: '{task}' is in neither data.finetune_tasks {params.data.finetune_tasks} "
                     f"nor data.zeroshot_tasks {params.data.zeroshot_tasks} of {params.source}")


def write_task_yamls(params, root: Path) -> Path:
    """One lm-eval YAML per local task under <root>/lm_eval_tasks/ (called by data.ensure)."""
    from mdlcap import files as mio
    out = root / "lm_eval_tasks"
    local = [("finetune", t) for t in params.data.finetune_tasks]
    if params.data.source == "generated":
        local += [("zeroshot", t) for t in params.data.zeroshot_tasks if t not in params.data.finetune_tasks]
    for kind, task in local:
        folder = root / kind / task
        splits = ["train", "validation", "test"] if kind == "finetune" else ["test"]
        files = "".join(f"    {s}: {folder / f'{s}.jsonl'}\n" for s in splits)
        prefix = "ft" if kind == "finetune" else "zs"
        mio.atomic_write_text(out / f"mdlcap_{prefix}_{task}.yaml",
                              f"include: {BASE_YAML}\ntask: mdlcap_{prefix}_{task}\n"
                              f"dataset_kwargs:\n  data_files:\n{files}")
    return out


@lru_cache(maxsize=8)
def _task_manager(include_path: str, include_defaults: bool):
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def lm_eval_accuracy(model, tokenizer, params, tasks: list[str], limit: int | float | None = None,
                     batch_size: int = 32) -> dict[str, float]:
    """{params task name: accuracy} from `lm_eval.simple_evaluate` on the in-memory model.

    Fine-tune tasks are scored on their test split, zero-shot tasks on theirs; metric `acc`
    (arg-max log-likelihood of the choices). Offline: the local tasks read only local JSONL."""
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
    tm = _task_manager(str(root / "lm_eval_tasks"), builtin)
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(model.config, "max_position_embeddings", None))
    res = lm_eval.simple_evaluate(model=lm, tasks=sorted(set(names.values())), task_manager=tm, limit=limit,
                                  log_samples=False, bootstrap_iters=0, random_seed=params.run.seed,
                                  numpy_random_seed=params.run.seed, torch_random_seed=params.run.seed)
    if was_training:
        model.train()
    out = {}
    for t, n in names.items():
        r = res["results"][n]
        out[t] = float(r.get("acc,none", r.get("acc")))
    return out


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 8) -> float:
    """exp(mean next-token loss) over the texts cut into seq_len windows (mdlcap.default.data.lm_batches),
    token-weighted across windows."""
    if not texts:
        raise ValueError("texts: must be a non-empty list of strings")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    tot, cnt = 0.0, 0
    for b in mdata.lm_batches(tokenizer, texts, seq_len, batch_size):
        b = {k: v.to(dev) for k, v in b.items()}
        n = int((b["labels"][:, 1:] != -100).sum())
        tot += model(**b).loss.float().item() * n
        cnt += n
    if was_training:
        model.train()
    return math.exp(tot / cnt)
