"""The paper's real data sets for the 7B runs (`data.source: hub`; untested offline).

`load_hub(task, split, p)` converts a hub data set into the schema of the generated tasks
(`mdlcap.default.tasks.common`) with the adapters in `HUB_ADAPTERS` (glue/cola, glue/mrpc,
commonsense_qa, openbookqa, ScienceQA text-only); zero-shot tasks then use lm-eval's own task
names and data. `c4_texts(p)` draws the calibration passages from C4, as Wanda/SparseGPT do.
"""
from __future__ import annotations

import numpy as np

from mdlcap.default.tasks.registry import split_sizes


def _hub_cola(d):
    return {"query": f"Sentence: {d['sentence']}\nQuestion: Is this a well-formed English sentence?\nAnswer:",
            "choices": ["no", "yes"], "label": int(d["label"])}


def _hub_mrpc(d):
    return {"query": f"Sentence 1: {d['sentence1']}\nSentence 2: {d['sentence2']}\n"
                     "Question: Do both sentences say the same thing?\nAnswer:",
            "choices": ["no", "yes"], "label": int(d["label"])}


def _hub_csqa(d):
    labels = list(d["choices"]["label"])
    return {"query": f"Question: {d['question']}\nAnswer:", "choices": list(d["choices"]["text"]),
            "label": labels.index(d["answerKey"])}


def _hub_obqa(d):
    labels = list(d["choices"]["label"])
    return {"query": f"Question: {d['question_stem']}\nAnswer:", "choices": list(d["choices"]["text"]),
            "label": labels.index(d["answerKey"].strip())}


def _hub_scienceqa(d):
    if d.get("image") is not None:            # text-only variant: image questions are dropped
        return None
    ctx = f"Context: {d['hint']}\n" if d.get("hint") else ""
    return {"query": f"{ctx}Question: {d['question']}\nAnswer:", "choices": list(d["choices"]),
            "label": int(d["answer"])}


# params task name -> (hub path, hub config, {our split: hub split}, adapter). Untested offline.
HUB_ADAPTERS = {
    "cola": ("nyu-mll/glue", "cola", {"train": "train", "validation": "validation", "test": "validation"}, _hub_cola),
    "mrpc": ("nyu-mll/glue", "mrpc", {"train": "train", "validation": "validation", "test": "test"}, _hub_mrpc),
    "commonsense_qa": ("tau/commonsense_qa", None, {"train": "train", "validation": "validation",
                                                    "test": "validation"}, _hub_csqa),
    "openbookqa": ("allenai/openbookqa", "main", {"train": "train", "validation": "validation", "test": "test"},
                   _hub_obqa),
    "scienceqa": ("derek-thomas/ScienceQA", None, {"train": "train", "validation": "validation", "test": "test"},
                  _hub_scienceqa),
}
# glue's cola test labels are hidden (-1), so its test split is glue's validation split (as the
# paper reports on it) and validation is carved from train below; commonsense_qa likewise.


def load_hub(task: str, split: str, p) -> list[dict]:
    """Examples of a hub task split in the generated tasks' schema (test and validation cut to
    the params' sizes, train whole)."""
    if task not in HUB_ADAPTERS:
        raise ValueError(f"task: no hub adapter for '{task}' (known: {sorted(HUB_ADAPTERS)})")
    import datasets
    path, config, splits, adapt = HUB_ADAPTERS[task]
    hub_split = splits[split]
    ds = datasets.load_dataset(path, config, split=hub_split, revision=None)
    rows = [r for r in (adapt(d) for d in ds) if r is not None]
    if splits["test"] == "validation" and split in ("train", "validation"):
        # validation carved (seeded) from train when the hub validation split serves as test
        rows = [r for r in (adapt(d) for d in datasets.load_dataset(path, config, split="train")) if r is not None]
        perm = np.random.default_rng([p.data.seed, 4]).permutation(len(rows))
        n_val = min(p.data.n_validation, len(rows) // 10)
        keep = perm[:n_val] if split == "validation" else perm[n_val:]
        rows = [rows[k] for k in sorted(keep)]
    limit = split_sizes(p)[split]
    return [{"id": f"{task}-{split}-{i}", **r} for i, r in enumerate(rows[:limit] if split != "train" else rows)]


def c4_texts(params) -> list[str]:
    """C4 calibration passages for the 7B runs (as Wanda/SparseGPT), untested offline."""
    import datasets
    ds = datasets.load_dataset("allenai/c4", data_files="en/c4-train.00000-of-01024.json.gz", split="train")
    rng = np.random.default_rng([params.data.seed, 6])
    out = []
    for k in rng.permutation(len(ds)):
        t = ds[int(k)]["text"]
        if len(t) >= 5 * params.data.calibration_seq_len:
            out.append(t)
        if len(out) == params.data.n_calibration:
            break
    return out
