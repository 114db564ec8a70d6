"""Task data, the public API: generated stand-ins for the paper's tasks (default run) or hub data
sets (7B runs), written once per data params into the one cache and read back from there.

    ensure(params)                 the data folder (generated on first use)
    load_task(params, task, split) [{"id", "query", "choices", "label"}, ...]
    task_path(params, task, split) the JSONL file of a task split
    texts(params, split)           "calibration" (a C4 stand-in, for pruning) or "heldout" (perplexity)
    data_key(params)               the folder's key: data params, corpus version, generator version
    lm_batches, task_batches, encode_example   (re-exported from mdlcap.default.batches)

Where the parts live (`mdlcap.default`):
  corpus         the text (Python's language reference and stdlib docstrings) and its split
  tasks/         one generator per stand-in task behind a registry (see its modules' docstrings)
  texts          calibration and held-out passages
  hub            the paper's data sets converted to the same schema (`data.source: hub`)
  lm_eval_tasks  the lm-eval YAML per task that points at the JSONL
  batches        token batches of texts and of task examples

Default run (`data.source: generated`): fine-tune stand-ins have train/validation/test, zero-shot
stand-ins test only, all built from the corpus (zero-shot from held-out paragraphs only). 7B runs
(`data.source: hub`, untested offline): fine-tune tasks from the hub, zero-shot tasks are
lm-eval's own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mdlcap import cache
from mdlcap.default import lm_eval_tasks
from mdlcap.default.batches import encode_example, lm_batches, task_batches  # noqa: F401  (re-export)
from mdlcap.default.corpus import corpus_version
from mdlcap.default.hub import load_hub
from mdlcap.default.jsonl import read_jsonl, write_jsonl
from mdlcap.default.tasks.registry import FINETUNE_SPLITS, generate_finetune, generate_zeroshot
from mdlcap.default.texts import TEXT_SPLITS, make_texts


def data_spec(params) -> dict[str, Any]:
    """What the data folder holds a function of (its cache spec). The generators' code version
    comes in through the key (`cache.CODE_VERSIONS["data"]`), the corpus's through corpus_version()."""
    d = params.data
    return {"seed": d.seed, "finetune": d.finetune_tasks, "zeroshot": d.zeroshot_tasks,
            "n": [d.n_train, d.n_validation, d.n_test, d.n_calibration, d.n_heldout, d.calibration_seq_len],
            "source": d.source, "corpus": corpus_version(),
            **({} if getattr(d, "n_zeroshot_test", None) is None else {"n_zeroshot": d.n_zeroshot_test})}


def data_key(params) -> str:
    """Key of the data folder: changes with the data params, the corpus and the task generators'
    version, so caches keyed by it (fine-tuning cells) follow a generator change."""
    return cache.key("data", data_spec(params))


def _check_task(params, task: str, split: str) -> str:
    if task in params.data.finetune_tasks:
        if split not in FINETUNE_SPLITS:
            raise ValueError(f"split: must be one of {FINETUNE_SPLITS} for fine-tune task '{task}', got {split!r}")
        return "finetune"
    if task in params.data.zeroshot_tasks:
        if split != "test":
            raise ValueError(f"split: zero-shot task '{task}' has only the 'test' split, got {split!r}")
        return "zeroshot"
    raise ValueError(f"task: '{task}' is in neither data.finetune_tasks {params.data.finetune_tasks} "
                     f"nor data.zeroshot_tasks {params.data.zeroshot_tasks} of {params.source}")


def _build(params, tmp: Path, final: Path) -> None:
    if params.data.source == "generated":
        for task in params.data.finetune_tasks:
            for split, rows in generate_finetune(task, params).items():
                write_jsonl(tmp / "finetune" / task / f"{split}.jsonl", rows)
        for task in params.data.zeroshot_tasks:
            write_jsonl(tmp / "zeroshot" / task / "test.jsonl", generate_zeroshot(task, params))
    else:
        for task in params.data.finetune_tasks:
            for split in FINETUNE_SPLITS:
                write_jsonl(tmp / "finetune" / task / f"{split}.jsonl", load_hub(task, split, params))
    for split in TEXT_SPLITS:
        write_jsonl(tmp / "texts" / f"{split}.jsonl", [{"text": t} for t in make_texts(params, split)])
    lm_eval_tasks.write_task_yamls(params, tmp, data_root=final)


def ensure(params) -> Path:
    """Generate (once) every task split and text split for these data params; return the folder.

    Layout: <root>/<kind>/<task>/<split>.jsonl, <root>/texts/<split>.jsonl,
    <root>/lm_eval_tasks/*.yaml (lm-eval configs pointing at the JSONL). Built in a temp folder
    and renamed into place by `cache.cached_dir` (namespace "data")."""
    spec = data_spec(params)
    final = cache.path("data", spec, suffix="")
    return cache.cached_dir("data", spec, lambda tmp: _build(params, tmp, final))


def task_path(params, task: str, split: str) -> Path:
    kind = _check_task(params, task, split)
    return ensure(params) / kind / task / f"{split}.jsonl"


def load_task(params, task: str, split: str) -> list[dict[str, Any]]:
    """Examples of a task split: [{"id", "query", "choices", "label"}, ...].

    Fine-tune tasks (data.finetune_tasks) have train/validation/test; zero-shot tasks
    (data.zeroshot_tasks) have test only. A name in both lists resolves to the fine-tune task.
    Under `data.source: hub` the zero-shot tasks are lm-eval's own (no local file)."""
    kind = _check_task(params, task, split)
    if kind == "zeroshot" and params.data.source == "hub":
        raise ValueError(f"task: zero-shot task '{task}' is lm-eval's built-in under data.source=hub; "
                         "evaluate it with mdlcap.evaluation.lm_eval_accuracy")
    return read_jsonl(task_path(params, task, split))


def texts(params, split: str) -> list[str]:
    """Text passages: "calibration" (C4 stand-in, for pruning) or "heldout" (perplexity)."""
    if split not in TEXT_SPLITS:
        raise ValueError(f"split: must be one of {TEXT_SPLITS}, got {split!r}")
    return [r["text"] for r in read_jsonl(ensure(params) / "texts" / f"{split}.jsonl")]
