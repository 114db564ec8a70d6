"""Notebook 00 at smoke size: the tables it writes hold sane values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mdlcap.study import params as P
from mdlcap.files import read_json


@pytest.mark.notebook
def test_nb00_tables(smoke_prepared):
    d = smoke_prepared
    p = P.load("params/smoke.yaml")
    model = pd.read_csv(d / "model.csv").iloc[0]
    a = p.model.architecture
    assert model["architecture"] == "MistralForCausalLM"
    assert (model["layers"], model["hidden"], model["kv_heads"]) == (a.num_hidden_layers, a.hidden_size,
                                                                     a.num_key_value_heads)

    losses = pd.read_csv(d / "pretrain_losses.csv").set_index("split")
    assert set(losses.index) == {"train", "heldout"}
    for split in losses.index:
        r = losses.loc[split]
        assert math.isfinite(r.model_loss) and r.model_ppl == pytest.approx(math.exp(r.model_loss), rel=1e-4)
        assert 0 < r.unigram_loss < math.log(a.vocab_size) + 1e-6     # unigram beats uniform
    curve = pd.read_csv(d / "pretrain_curve.csv")
    assert len(curve) == p.model.pretrain.steps
    assert curve.train_batch_loss.iloc[-3:].mean() < curve.train_batch_loss.iloc[:3].mean()  # it trained
    assert (d / "pretrain_curve.png").stat().st_size > 1000

    tasks = pd.read_csv(d / "tasks.csv").set_index("task")
    assert set(tasks.index) == set(p.data.finetune_tasks) | set(p.data.zeroshot_tasks)
    assert (tasks.loc[p.data.finetune_tasks, "n_train"] == p.data.n_train).all()
    assert (tasks["n_test"] == p.data.n_test).all()
    assert list(tasks["chance"]) == pytest.approx(list(1 / tasks["n_choices"]))

    acc = pd.read_csv(d / "zeroshot_accuracy.csv").set_index("task")
    assert set(acc.index) == set(tasks.index)
    assert acc["zeroshot_acc"].between(0, 1).all()
    # accuracies are multiples of 1/n_scored (lm-eval scored exactly n_scored items per task)
    assert ((acc["zeroshot_acc"] * acc["n_scored"]).round(6) % 1 == 0).all()

    ppl = pd.read_csv(d / "perplexity.csv").iloc[0]
    assert math.isfinite(ppl.perplexity) and 1 < ppl.perplexity < a.vocab_size * 2

    learn = pd.read_csv(d / "finetune_sanity.csv").set_index("task")
    assert set(learn.index) == set(p.data.finetune_tasks)
    assert learn["finetuned_acc"].between(0, 1).all()

    man = read_json(d / "manifest.json")
    assert man["extra"]["data_root"] and man["extra"]["model_cache_key"]
