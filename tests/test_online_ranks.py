"""Online MDL ranks during fine-tuning (mdlcap.interventions.online_ranks) on a tiny random Mistral."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mdlcap.interventions import online_ranks as onl
from mdlcap.interventions.finetune import finetune
from mdlcap.interventions.moe import rank_config
from mdlcap.interventions.rank_mask import attach_masks
from mdlcap.interventions.rank_schedule import RankSchedule
from mdlcap.models import random_model

from conftest import lm_batches

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)
TARGETS = ("q_proj", "v_proj", "down_proj")
R_MAX, BUDGET = 6, 12


def _setup(method="grad_norm", steps=12, seed=0, **kw):
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(random_model(seed=seed, **TINY), rank_config([R_MAX] * 4, target_modules=TARGETS))
    masks = attach_masks(model)
    sched = RankSchedule(total_steps=steps, t_init=2, delta_t=3, t_final=9)      # updates at 3, 6, 9
    online = onl.OnlineRanks(masks, lm_batches(2, vocab=64, seed=9), budget=BUDGET, schedule=sched,
                             method=method, **kw)
    return model, masks, online


def test_online_updates_on_schedule_with_budget_cap_and_exact_passes():
    model, masks, online = _setup()
    train = lm_batches(6, vocab=64, seed=1)
    seen = []
    ranks0 = online.start(model)
    assert masks.ranks() == [R_MAX] * 4                    # warm-up at full rank
    assert ranks0.sum() == BUDGET
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}

    def spy(step, m, opt):
        seen.append((step, masks.ranks()))
        online(step, m, opt)

    finetune(model, train, epochs=2, lr=5e-2, seed=0, progress=False, callback=spy)
    steps = [r["step"] for r in online.trajectory]
    assert steps == [0, 3, 6, 9]                           # no update outside the schedule
    for r in online.updates:
        assert sum(r["ranks"]) == BUDGET and max(r["ranks"]) <= R_MAX and min(r["ranks"]) >= 1
        assert r["ranks"] == r["ranks_mdl"]
        assert r["regret_ranks"] >= -1e-12 and r["regret"] >= -1e-12
        assert r["regret"] <= r["bound"] * (1 + 1e-9) + 1e-13
        assert r["drift"] == pytest.approx(np.linalg.norm(np.array(r["q"]) - online.q0))
    # the ranks only change at update steps (a change shows in the next call's "before" ranks)
    before = dict(seen)
    for s in range(2, 12):
        if s - 1 not in (3, 6, 9):
            assert before[s] == before[s - 1], s
    assert masks.ranks() == online.trajectory[-1]["ranks"]
    cost = online.cost()
    assert cost["update_passes"] == 2 * 3                  # grad_norm: 1 pass x 2 scoring batches x 3 updates
    assert cost["total_passes"] == 2 * 4 and cost["step0_passes"] == 2 and cost["passes_per_batch"] == 1.0
    for n, p in model.named_parameters():                  # scoring trained nothing of the base
        if n in base:
            assert torch.equal(p, base[n]), n
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


def test_regret_is_zero_when_q_does_not_change():
    model, masks, online = _setup()
    online.start(model)
    for step in (3, 6, 9):                                 # no training in between: q(t) = q(0)
        row = online(step, model, None)
        assert row["drift"] == 0.0 and row["regret_ranks"] == 0.0 and row["regret"] == 0.0 and row["bound"] == 0.0
        assert row["ranks"] == online.ranks0.tolist()
    assert online(4, model, None) is None and len(online.trajectory) == 4


def test_diag_fisher_passes_counted_exactly_and_start_is_required():
    model, masks, online = _setup(method="diag_fisher")
    with pytest.raises(RuntimeError, match="start"):
        online(3, model, None)
    online.start(model)
    online(3, model, None)
    assert online.cost()["passes_per_batch"] == 2.0       # the gradient and one Fisher draw per batch
    with pytest.raises(ValueError, match="budget"):
        onl.OnlineRanks(masks, lm_batches(1, vocab=64), budget=4 * R_MAX + 1, schedule=online.schedule)
    with pytest.raises(ValueError, match="method"):
        onl.OnlineRanks(masks, lm_batches(1, vocab=64), budget=8, schedule=online.schedule, method="layerif_all")


def test_base_blocks_exclude_adapters():
    model, _, _ = _setup()
    blocks = onl.base_blocks(model)
    assert list(blocks) == [f"layers.{k}" for k in range(4)]
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert all(id(p) not in lora for ps in blocks.values() for p in ps)
    layer0 = sum(p.numel() for p in random_model(**TINY).model.layers[0].parameters())
    assert sum(p.numel() for p in blocks["layers.0"]) == layer0
