"""The registry of generated stand-in tasks: name -> generator, the paper's task it stands for,
and the random stream it draws from.

    FINETUNE, ZEROSHOT             {name: Generator}, in the order of the data params' defaults
    generate_finetune(task, p)     {"train", "validation", "test"}: lists of examples
    generate_zeroshot(task, p)     the test examples
    stands_for(task)               the paper's name of the task a stand-in replaces

Every generator draws from its own `numpy` stream, seeded by (data.seed, kind, stream), so adding,
removing or reordering tasks leaves every other task's data as it is.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdlcap.default.corpus import sentences
from mdlcap.default.tasks import finetune, zeroshot
from mdlcap.default.tasks.common import example

FINETUNE_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Generator:
    name: str
    kind: str                     # "finetune" (train/validation/test) or "zeroshot" (test only)
    stands_for: str               # the paper's task
    stream: int                   # third seed word of its random stream
    make: Callable[..., list]     # finetune: make(rng, seed, n); zeroshot: make(rng, sentences, n)


def _registry(kind: str, entries) -> dict[str, Generator]:
    return {name: Generator(name, kind, paper, i, make) for i, (name, paper, make) in enumerate(entries)}


FINETUNE = _registry("finetune", [
    ("cola", "CoLA", finetune.cola), ("mrpc", "MRPC", finetune.mrpc),
    ("csqa", "CommonsenseQA", finetune.csqa), ("obqa", "OpenBookQA (fine-tune)", finetune.obqa),
    ("sciq", "ScienceQA", finetune.sciq)])
ZEROSHOT = _registry("zeroshot", [
    ("rte", "RTE", zeroshot.rte), ("openbookqa", "OpenBookQA", zeroshot.openbookqa),
    ("arc_easy", "ARC-Easy", zeroshot.arc_easy), ("arc_challenge", "ARC-Challenge", zeroshot.arc_challenge),
    ("hellaswag", "HellaSwag", zeroshot.hellaswag), ("boolq", "BoolQ", zeroshot.boolq),
    ("winogrande", "WinoGrande", zeroshot.winogrande)])


def stands_for(task: str) -> str:
    """The paper's task a generated stand-in replaces (a hub task's own name otherwise)."""
    g = FINETUNE.get(task) or ZEROSHOT.get(task)
    return g.stands_for if g else task


def split_sizes(p) -> dict[str, int]:
    return {"train": p.data.n_train, "validation": p.data.n_validation, "test": p.data.n_test}


def generate_finetune(task: str, p) -> dict[str, list[dict[str, Any]]]:
    """train/validation/test for a fine-tune stand-in; splits never share a query."""
    if task not in FINETUNE:
        raise ValueError(f"task: unknown generated fine-tune task '{task}' (known: {tuple(FINETUNE)})")
    g = FINETUNE[task]
    sizes = split_sizes(p)
    n_total = sum(sizes.values())
    rng = np.random.default_rng([p.data.seed, 2, g.stream])
    rows = g.make(rng, p.data.seed, n_total)
    # splits disjoint by query text (generated worlds can repeat a question: keep first use)
    uniq = list({q: (q, c, l) for q, c, l in reversed(rows)}.values())[::-1]
    if len(uniq) < n_total:
        raise ValueError(f"data: task '{task}' yields only {len(uniq)} distinct examples, "
                         f"n_train+n_validation+n_test = {n_total}")
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [example(task, split, i, *uniq[start + i]) for i in range(n)]
        start += n
    return out


def generate_zeroshot(task: str, p) -> list[dict[str, Any]]:
    """The test examples of a zero-shot stand-in (from held-out sentences)."""
    if task not in ZEROSHOT:
        raise ValueError(f"task: unknown generated zero-shot task '{task}' (known: {tuple(ZEROSHOT)})")
    g = ZEROSHOT[task]
    rng = np.random.default_rng([p.data.seed, 3, g.stream])
    n = p.data.n_test if getattr(p.data, "n_zeroshot_test", None) is None else p.data.n_zeroshot_test
    rows = g.make(rng, sentences(p.data.seed, "heldout"), n)
    return [example(task, "test", i, *r) for i, r in enumerate(rows)]
