"""Notebook 00's tables (mdlcap.study.prepare) on small inputs: columns, chance, z-scores, verdicts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mdlcap.default.tasks import registry as R
from mdlcap.study import params as P
from mdlcap.study import prepare as PR


def _params(**data):
    raw = {"data": {"seed": 0, "n_train": 24, "n_validation": 8, "n_test": 12, "n_calibration": 4,
                    "n_heldout": 4, "calibration_seq_len": 64, **data}}
    return P.from_dict(raw, "<test prepare>")


def _met():
    curve = [{"step": 1, "train_batch_loss": 6.0, "lr": 1e-3}, {"step": 2, "train_batch_loss": 5.0, "lr": 1e-3,
                                                                 "heldout_loss": 5.5}]
    return {"train_loss": 4.0, "train_ppl": math.exp(4.0), "heldout_loss": 4.5, "heldout_ppl": math.exp(4.5),
            "unigram_train_loss": 5.0, "unigram_heldout_loss": 5.2, "unigram_heldout_ppl": math.exp(5.2),
            "tokens_seen": 100, "train_tokens": 1000, "seconds_tokenizer": 1.04, "seconds_train": 2.0,
            "torch_threads": 1, "curve": curve}


def test_pretrain_tables_and_verdict():
    met = _met()
    losses = PR.pretrain_losses(met).set_index("split")
    assert list(losses.index) == ["train", "heldout"]
    assert losses.loc["train", "unigram_ppl"] == pytest.approx(math.exp(5.0))
    assert losses.loc["heldout", "ppl_ratio_model_over_unigram"] == pytest.approx(math.exp(4.5 - 5.2))
    lines = PR.pretrain_verdict(losses.reset_index())
    assert "held-out minus train loss +0.500 nats" in lines[0] and "has learned its text" in lines[1]
    worse = dict(met, heldout_ppl=math.exp(6.0), heldout_loss=6.0)
    assert "expected at smoke size" in PR.pretrain_verdict(PR.pretrain_losses(worse), smoke=True)[1]
    curve = PR.pretrain_curve(met)
    assert list(curve.step) == [1, 2] and curve.heldout_loss.isna().tolist() == [True, False]
    fig = PR.plot_pretrain_curve(curve, met["unigram_heldout_loss"])
    assert len(fig.axes[0].lines) == 3


def test_model_summary():
    from mdlcap.models import random_model

    m = random_model()
    tok = list(range(128))                          # only len() is read
    p = _params()
    s = PR.model_summary(p, m, tok)
    assert s.iloc[0].architecture == "MistralForCausalLM" and s.iloc[0].layers == 3 and s.iloc[0].vocab == 128
    assert s.iloc[0].parameters == sum(q.numel() for q in m.parameters())
    s = PR.model_summary(p, m, tok, _met())
    assert s.iloc[0].pretrain_seconds == 3.0 and s.iloc[0].pretrain_threads == 1


def test_task_tables_stand_ins_and_chance():
    p = _params()
    tasks, examples = PR.task_tables(p)
    assert list(tasks.task) == list(p.data.finetune_tasks) + list(p.data.zeroshot_tasks) == PR.evaluated_tasks(p)
    assert dict(zip(tasks.task, tasks.stands_for)) == {t: R.stands_for(t) for t in tasks.task}
    assert R.stands_for("cola") == "CoLA" and R.stands_for("commonsense_qa") == "commonsense_qa"
    ft = tasks[tasks.kind == "finetune"]
    assert (ft[["n_train", "n_validation", "n_test"]].to_numpy() == [24, 8, 12]).all()
    zs = tasks[tasks.kind == "zeroshot"]
    assert (zs.n_train == 0).all() and (zs.n_test == 12).all()
    assert tasks.chance.to_numpy() == pytest.approx(1 / tasks.n_choices.to_numpy())
    assert list(examples.task) == list(tasks.task)
    assert all(a in c.split(" | ") for a, c in zip(examples.answer, examples.choices))


def _acc_tasks():
    return pd.DataFrame({"task": ["cola", "rte"], "kind": ["finetune", "zeroshot"], "stands_for": ["CoLA", "RTE"],
                         "n_test": [100, 100], "chance": [0.5, 0.5]})


def test_zeroshot_table_z_scores_and_verdict():
    p = _params(finetune_tasks=["cola"], zeroshot_tasks=["rte"], zeroshot_limit=64)
    acc = PR.zeroshot_table(p, _acc_tasks(), {"cola": 0.5, "rte": 0.75})
    r = acc.set_index("task")
    assert (r.n_scored == 64).all()
    assert r.loc["rte", "z_vs_chance"] == pytest.approx(0.25 / math.sqrt(0.25 / 64))
    assert r.above_chance.tolist() == [False, True]
    lines = PR.zeroshot_verdict(acc)
    assert lines[0].startswith("VERDICT: 1/1 zero-shot stand-ins above chance (z > 2): rte; not: none")
    assert "mean acc - chance = +0.000; above chance: none" in lines[1]
    hub = P.from_dict({"data": {"source": "hub", "finetune_tasks": ["cola"], "zeroshot_tasks": ["rte"]},
                       "joint": {"task": "cola"}, "online": {"tasks": ["cola"]}}, "<hub>")
    assert PR.zeroshot_verdict(PR.zeroshot_table(hub, _acc_tasks(), {"cola": 0.6})) == []


def test_sanity_table_learned():
    p = _params(finetune_tasks=["cola"], zeroshot_tasks=["rte"])
    acc = PR.zeroshot_table(p, _acc_tasks(), {"cola": 0.5, "rte": 0.5})
    learn = PR.sanity_table(acc, {"cola": 0.7}, steps=7).iloc[0]
    assert learn.task == "cola" and learn.gain_over_zeroshot == pytest.approx(0.2) and learn.ft_steps == 7
    assert bool(learn.learned) == (0.2 / math.sqrt(0.25 / 100) > 2)


def test_finetune_full_lowers_the_loss():
    import torch

    from mdlcap.models import random_model

    m = random_model(seed=1)
    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]
    losses = PR.finetune_full(m, batches, steps=8, lr=1e-2, progress=False)
    assert len(losses) == 8 and np.mean(losses[-2:]) < losses[0] and not m.training
    with pytest.raises(ValueError, match="steps"):
        PR.finetune_full(m, batches, steps=0)
    with pytest.raises(ValueError, match="batches"):
        PR.finetune_full(m, [], steps=1)
