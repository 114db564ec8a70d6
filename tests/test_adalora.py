"""AdaLoRA scaled to a rank budget (mdlcap.interventions.adalora) on a tiny random Mistral."""
from __future__ import annotations

import pytest
import torch

from mdlcap.interventions import adalora as ada
from mdlcap.interventions.finetune import finetune
from mdlcap.interventions.rank_schedule import RankSchedule
from mdlcap.models import random_model
from mdlcap.scores.autograd import mean_loss

from conftest import lm_batches

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)
TARGETS = ("q_proj", "v_proj", "down_proj")
R_MAX, BUDGET, L = 6, 8, 4


def _model(sched, seed=0):
    torch.manual_seed(seed)
    cfg = ada.adalora_config(L, BUDGET, R_MAX, sched, target_modules=TARGETS)
    return ada.add_adalora(random_model(seed=seed, **TINY), cfg)


def test_config_is_scaled_to_the_budget_and_the_schedule():
    sched = RankSchedule(total_steps=12, t_init=2, delta_t=3, t_final=9)
    cfg = ada.adalora_config(L, BUDGET, R_MAX, sched, target_modules=TARGETS)
    assert (cfg.init_r, cfg.target_r, cfg.tinit, cfg.tfinal, cfg.deltaT, cfg.total_step) == (6, 2, 2, 3, 3, 12)
    assert cfg.lora_alpha == 2.0 * R_MAX and cfg.orth_reg_weight == 0.5          # peft's default kept
    with pytest.raises(ValueError, match="multiple"):
        ada.adalora_config(L, 9, R_MAX, sched)
    with pytest.raises(ValueError, match="r_max"):
        ada.adalora_config(L, 4 * 7, R_MAX, sched)


def test_ranks_shrink_to_the_target_budget_by_t_final_and_stay():
    sched = RankSchedule(total_steps=12, t_init=2, delta_t=3, t_final=9)
    model = _model(sched)
    step = ada.AdaLoraStep(model, sched)
    n_mod = len(TARGETS)
    assert step.trajectory[0]["ranks"] == [R_MAX * n_mod] * L
    seen = []

    def cb(s, m, opt):
        step(s, m, opt)
        seen.append((s, ada.total_rank(m)))

    finetune(model, lm_batches(6, vocab=64, seed=1), epochs=2, lr=1e-2, seed=0, progress=False, callback=cb)
    totals = dict(seen)
    assert totals[1] == totals[2] == R_MAX * n_mod * L                     # warm-up: nothing masked
    assert [r["step"] for r in step.trajectory] == [0, 3, 6, 9]            # the same steps as OnlineRanks
    tot = [r["total"] for r in step.trajectory]
    assert all(a >= b for a, b in zip(tot, tot[1:])) and tot[1] < tot[0]  # shrinking
    final = BUDGET * n_mod                                                # = the LoRA methods' Σ_k r_k × modules
    assert tot[-1] == final and all(totals[s] == final for s in range(9, 13))
    assert sum(ada.layer_ranks(model)) == final
    ranks = ada.module_ranks(model)
    assert len(ranks) == L * n_mod and max(ranks.values()) <= R_MAX
    # the masked triplets really are off: their singular values are 0 after the last step
    from peft.tuners.adalora import AdaLoraLayer
    nonzero = sum(int((m.lora_E["default"] != 0).sum()) for m in model.modules() if isinstance(m, AdaLoraLayer))
    assert nonzero <= final


def test_held_out_loss_without_the_orthogonality_penalty():
    sched = RankSchedule(total_steps=12, t_init=2, delta_t=3, t_final=9)
    model = _model(sched)
    held = lm_batches(2, vocab=64, seed=3)
    with_penalty = mean_loss(model, held)
    with ada.no_orth_penalty(model):
        plain = mean_loss(model, held)
    assert model.peft_config["default"].orth_reg_weight == 0.5             # restored
    assert with_penalty > plain + 1e-3                                     # the penalty is in .loss, even in eval
    v = ada.AdaLoraValidation(held, every=4)
    v(0, model)
    assert v.losses == [pytest.approx(plain)]
    cost = ada.orthogonality_cost(model, tokens_per_step=3 * 8)
    assert cost["extra_passes"] == 0 and 0 < cost["pass_fraction"]
    v_out = 32 // 4 * 2                                                     # v_proj: kv heads x head dim
    expect = 3 * R_MAX ** 2 * L * ((32 + 32) + (32 + v_out) + (48 + 32))
    assert cost["penalty_madds"] == expect


def test_step_rejects_a_mismatched_schedule_and_non_adalora_models():
    sched = RankSchedule(total_steps=12, t_init=2, delta_t=3, t_final=9)
    model = _model(sched)
    with pytest.raises(ValueError, match="schedule"):
        ada.AdaLoraStep(model, RankSchedule(total_steps=12, t_init=2, delta_t=2, t_final=9))
    with pytest.raises(ValueError, match="AdaLoRA"):
        ada.layer_ranks(random_model(**TINY))
