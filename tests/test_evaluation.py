"""Evaluation: lm-eval runs a local generated task on the default (smoke) model; perplexity."""
from __future__ import annotations

import math

import pytest
import yaml

from mdlcap.default import data as D
from mdlcap import evaluation as E
from mdlcap import models as M
from mdlcap.study import params as P


@pytest.fixture(scope="module")
def smoke():
    p = P.load("params/smoke.yaml")
    model, tok = M.load(p, progress=False)
    return p, model, tok


def test_lm_eval_local_task_accuracy(smoke):
    p, model, tok = smoke
    acc = E.lm_eval_accuracy(model, tok, p, ["cola", "rte"], limit=8)
    assert set(acc) == {"cola", "rte"}
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert not model.training


def test_lm_eval_matches_own_scoring(smoke):
    """lm-eval's accuracy equals arg-max log-likelihood of " " + choice computed by hand."""
    import torch
    p, model, tok = smoke
    rows = D.load_task(p, "winogrande", "test")[:8]
    correct = 0
    for r in rows:
        ctx = tok(r["query"])["input_ids"]
        lls = []
        for c in r["choices"]:
            cont = tok(r["query"] + " " + c)["input_ids"][len(ctx):]
            ids = torch.tensor([(ctx + cont)[-model.config.max_position_embeddings:]])
            with torch.no_grad():
                logp = model(ids).logits.log_softmax(-1)[0, :-1]
            tgt = ids[0, 1:]
            lls.append(logp[torch.arange(len(tgt)), tgt][-len(cont):].sum().item())
        correct += int(max(range(len(lls)), key=lls.__getitem__) == r["label"])
    acc = E.lm_eval_accuracy(model, tok, p, ["winogrande"], limit=8)["winogrande"]
    assert acc == pytest.approx(correct / len(rows))


def test_task_names_and_yaml(smoke):
    p, _, _ = smoke
    assert E.local_task_name(p, "rte") == "mdlcap_zs_rte"
    assert E.local_task_name(p, "cola") == "mdlcap_ft_cola"
    with pytest.raises(ValueError, match="tasks"):
        E.local_task_name(p, "mmlu")
    cfg = yaml.safe_load((D.ensure(p) / "lm_eval_tasks" / "mdlcap_ft_cola.yaml").read_text())
    assert cfg["task"] == "mdlcap_ft_cola"
    assert set(cfg["dataset_kwargs"]["data_files"]) == {"train", "validation", "test"}
    hub = P.load("params/mistral-7b.yaml")
    assert E.local_task_name(hub, "hellaswag") == "hellaswag"        # lm-eval's own task
    assert E.local_task_name(hub, "cola") == "mdlcap_ft_cola"


def test_perplexity_finite(smoke):
    p, model, tok = smoke
    ppl = E.perplexity(model, tok, D.texts(p, "heldout")[:4], seq_len=32, batch_size=4)
    assert math.isfinite(ppl) and 1.0 < ppl < 2 * len(tok)
    with pytest.raises(ValueError, match="texts"):
        E.perplexity(model, tok, [], seq_len=32)
