"""Generated task data: deterministic for a seed, the declared schema, disjoint splits, and
batches whose loss falls on the gold answer only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdlcap import cache
from mdlcap.default import corpus as C
from mdlcap.default import data as D
from mdlcap.default.tasks import finetune as FT
from mdlcap.default.tasks import registry as R
from mdlcap.study import params as P

SMOKE = "params/smoke.yaml"


def _params(seed: int = 0, **data):
    raw = {"data": {"seed": seed, "n_train": 24, "n_validation": 8, "n_test": 12, "n_calibration": 4,
                    "n_heldout": 4, "calibration_seq_len": 64, **data}}
    return P.from_dict(raw, f"<test seed={seed}>")


def _check_schema(rows, task):
    assert rows, task
    for r in rows:
        assert set(r) == {"id", "query", "choices", "label"}, (task, r)
        assert isinstance(r["id"], str) and isinstance(r["query"], str) and r["query"].strip()
        assert isinstance(r["choices"], list) and len(r["choices"]) >= 2
        assert all(isinstance(c, str) and c.strip() for c in r["choices"])
        assert len(set(r["choices"])) == len(r["choices"]), (task, r["choices"])
        assert isinstance(r["label"], int) and 0 <= r["label"] < len(r["choices"])


@pytest.mark.parametrize("task", tuple(R.FINETUNE))
def test_finetune_generator_deterministic_schema_disjoint(task):
    p = _params()
    a, b = R.generate_finetune(task, p), R.generate_finetune(task, p)
    assert a == b                                            # same seed -> same data
    assert a != R.generate_finetune(task, _params(seed=1))  # another seed -> other data
    sizes = {"train": 24, "validation": 8, "test": 12}
    for split, rows in a.items():
        assert len(rows) == sizes[split]
        _check_schema(rows, task)
    queries = {s: {r["query"] for r in rows} for s, rows in a.items()}
    assert not queries["train"] & queries["test"]
    assert not queries["train"] & queries["validation"]
    assert not queries["validation"] & queries["test"]
    labels = [r["label"] for r in a["train"]]
    assert len(set(labels)) > 1                              # not a constant answer


@pytest.mark.parametrize("task", tuple(R.ZEROSHOT))
def test_zeroshot_generator_deterministic_schema(task):
    p = _params()
    a = R.generate_zeroshot(task, p)
    assert a == R.generate_zeroshot(task, p)
    assert a != R.generate_zeroshot(task, _params(seed=1))
    assert len(a) == 12
    _check_schema(a, task)


def test_zeroshot_tasks_use_heldout_text_only():
    """Zero-shot items come from held-out paragraphs, never from the pretraining split."""
    pre = {s["text"] for s in C.sentences(0, "pretrain")}
    held = C.sentences(0, "heldout")
    assert held
    hs = {s["text"] for s in held}
    rows = R.generate_zeroshot("rte", _params())
    # rte's premise is a whole held-out sentence
    assert all(r["query"].split("\n")[0] in hs for r in rows)
    assert not any(r["query"].split("\n")[0] in pre for r in rows)


def test_ensure_load_task_texts_and_errors():
    p = P.load(SMOKE)
    root = D.ensure(p)
    assert (root / cache.DONE).exists() and D.ensure(p) == root
    for t in p.data.finetune_tasks:
        _check_schema(D.load_task(p, t, "train"), t)
    for t in p.data.zeroshot_tasks:
        _check_schema(D.load_task(p, t, "test"), t)
    cal, held = D.texts(p, "calibration"), D.texts(p, "heldout")
    assert len(cal) == p.data.n_calibration and len(held) == p.data.n_heldout
    assert not set(cal) & set(held)
    with pytest.raises(ValueError, match="split"):
        D.load_task(p, p.data.zeroshot_tasks[0], "train")
    with pytest.raises(ValueError, match="task"):
        D.load_task(p, "no_such_task", "test")
    with pytest.raises(ValueError, match="split"):
        D.texts(p, "train")


def _toy_tokenizer():
    from mdlcap.default.pretrain import train_tokenizer
    return train_tokenizer(["the quick brown fox jumps over the lazy dog. yes no kitchen garden"] * 20, 300)


def test_task_batches_loss_on_answer_only():
    tok = _toy_tokenizer()
    ex = [{"id": "a", "query": "the quick brown fox", "choices": ["no", "yes"], "label": 1},
          {"id": "b", "query": "the lazy dog jumps over the quick brown fox", "choices": ["kitchen", "garden"],
           "label": 0}]
    (b,) = D.task_batches(tok, ex, batch_size=4)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    for r, e in enumerate(ex):
        ans = tok(" " + e["choices"][e["label"]], add_special_tokens=False)["input_ids"]
        lab = b["labels"][r][b["labels"][r] != -100].tolist()
        assert lab == ans                                   # only the gold answer is scored
        n = int(b["attention_mask"][r].sum())
        assert b["input_ids"][r, n - len(ans):n].tolist() == ans
    from mdlcap.models import random_model
    m = random_model(vocab_size=len(tok))
    loss = m(**b).loss
    assert math.isfinite(loss.item())
    with pytest.raises(ValueError, match="batch_size"):
        D.task_batches(tok, ex, batch_size=0)


def test_task_batches_grouped_by_length_pad_less_and_keep_every_example():
    tok = _toy_tokenizer()
    words = "the quick brown fox jumps over the lazy dog".split()
    ex = [{"id": str(i), "query": " ".join(words[: 1 + (i * 5) % 9]), "choices": ["no", "yes"], "label": i % 2}
          for i in range(12)]
    plain = D.task_batches(tok, ex, batch_size=4)
    grouped = D.task_batches(tok, ex, batch_size=4, group_by_length=True)
    pads = lambda bs: sum(int((b["attention_mask"] == 0).sum()) for b in bs)    # noqa: E731
    assert pads(grouped) < pads(plain)
    rows = lambda bs: sorted(tuple(r[m.bool()].tolist()) for b in bs for r, m in zip(b["input_ids"], b["attention_mask"]))  # noqa: E731
    assert rows(grouped) == rows(plain)                   # the same examples, only batched differently


def test_lm_batches_windows():
    tok = _toy_tokenizer()
    batches = D.lm_batches(tok, ["the quick brown fox jumps over the lazy dog."] * 10, seq_len=16, batch_size=3)
    assert all(b["input_ids"].shape[1] == 16 for b in batches)
    assert all(torch.equal(b["input_ids"], b["labels"]) for b in batches)
    assert sum(len(b["input_ids"]) for b in batches) >= 3
    with pytest.raises(ValueError, match="seq_len"):
        D.lm_batches(tok, ["x"], seq_len=1, batch_size=2)


def _full_size(seed: int = 0):
    return _params(seed, n_train=512, n_validation=128, n_test=256)


@pytest.mark.parametrize("task", tuple(R.FINETUNE))
def test_finetune_labels_balanced(task):
    """No answer position or class dominates a split: a constant guess stays near chance."""
    for split, rows in R.generate_finetune(task, _full_size()).items():
        k = len(rows[0]["choices"])
        counts = np.bincount([r["label"] for r in rows], minlength=k) / len(rows)
        assert counts.max() < 1 / k + 0.1, (task, split, counts)


def test_finetune_cues_cola_mrpc_obqa():
    """What the short tuning of notebook 00 can pick up is there, and only in the right class:
    cola's 'no' sentences end on a word that cannot end a sentence, mrpc's 'no' pairs (and only
    they) negate sentence 2, obqa's answer is the one digit in the prompt."""
    p = _full_size()
    pre = {s["text"] for s in C.sentences(0, "pretrain")}
    for r in R.generate_finetune("cola", p)["train"]:
        sentence = r["query"].split("\nSentence: ")[1].removesuffix("\nAnswer:")
        assert len(sentence.split()) <= FT.COLA_MAX_WORDS
        if r["label"] == 1:
            assert sentence in pre
        else:
            assert sentence not in pre and sentence.split()[-1].rstrip(".").lower() in FT.CUT_AFTER
    for r in R.generate_finetune("mrpc", p)["train"]:
        s1, s2 = (r["query"].split(f"Sentence {i}: ")[1].split("\n")[0] for i in (1, 2))
        assert s1 in pre and " not " not in f" {s1} "
        assert (" not " in f" {s2} ") == (r["label"] == 0)
    for r in R.generate_finetune("obqa", p)["train"]:
        digits = [c for c in r["query"] if c.isdigit()]
        assert digits == [r["choices"][r["label"]]]


def test_no_request_repeats_across_tasks_with_another_split():
    """lm-eval pools the log-likelihood requests of all tasks evaluated together by their
    context+continuation tokens (less the last) and scores every pooled request with the positions
    of the longest continuation: two tasks must never hold the same text split differently into
    query and choice (winogrande and hellaswag did, which put winogrande at chance in notebook 00)."""
    p = _full_size()
    rows = {t: R.generate_finetune(t, p)["test"] for t in tuple(R.FINETUNE)}
    rows |= {t: R.generate_zeroshot(t, p) for t in tuple(R.ZEROSHOT)}
    split_of: dict[str, tuple[str, str]] = {}
    for t, rs in rows.items():
        for r in rs:
            for c in r["choices"]:
                full = r["query"] + " " + c
                prev = split_of.setdefault(full, (t, r["query"]))
                assert prev[1] == r["query"], (prev[0], t, full)


def test_generator_version_invalidates_cached_finetune_cells(monkeypatch):
    """Cells of notebooks 03/05 are cached by key; a task-generator change must change the key."""
    from mdlcap.default import pretrain
    from mdlcap.interventions import finetune
    from mdlcap.study import params

    p = params.load("params/mistral-7b.yaml")          # hub id: resolving it builds nothing
    before = finetune.cell_key(p, "cola", seed=0, counts=[1, 2])
    model_before = pretrain.model_key(params.load(SMOKE))
    monkeypatch.setitem(cache.CODE_VERSIONS, "data", cache.CODE_VERSIONS["data"] + "-changed")
    assert finetune.cell_key(p, "cola", seed=0, counts=[1, 2]) != before
    assert pretrain.model_key(params.load(SMOKE)) == model_before     # the model does not follow the tasks


def test_code_is_pretraining_text_only_and_carries_no_held_out_sentence():
    """The stdlib code goes to the pretraining split alone, its docstrings cut out: no held-out or
    calibration sentence (the tasks' and the perplexity's text) reaches the pretraining through it."""
    corp = C.corpus(0)
    code = [p for p in corp["pretrain"] if p["source"] == "code"]
    assert len(code) > 1000 and not any(p["source"] == "code" for s in ("heldout", "calibration") for p in corp[s])
    joined = "\n".join(p["text"] for p in code)
    held = [s["text"] for s in C.sentences(0, "heldout")]
    assert len(held) > 100 and not any(h in joined for h in held[::5])
    assert not any(s["source"] == "code" for s in C.sentences(0, "pretrain"))
    import ast
    for p in code[::200]:                                  # no function or class keeps its docstring
        for node in ast.walk(ast.parse(p["text"])):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                assert ast.get_docstring(node) is None, p["text"][:200]
