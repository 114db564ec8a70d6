"""LoRA-MoE adapter (mdlcap.interventions.moe) and the fine-tuning loop on a tiny random Mistral."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mdlcap.interventions import moe
from mdlcap.interventions.finetune import finetune
from mdlcap.models import decoder_layers, random_model


def _batches(n=6, bs=4, seq=12, vocab=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (bs, seq), generator=g)
        labels = x.clone()
        labels[:, : seq // 2] = -100          # answer-only loss, as mdlcap.default.data.task_batches
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels})
    return out


def test_router_top2_shapes_and_gates():
    base = torch.nn.Linear(16, 8)
    layer = moe.LoraMoELinear(base, num_experts=5, r=3, top_k=2)
    h = torch.randn(2, 7, 16)
    gates, probs, top_i = layer.route(h)
    assert gates.shape == (2, 7, 5) and probs.shape == (2, 7, 5) and top_i.shape == (2, 7, 2)
    # exactly two experts per token, their gates sum to one, and they are the two most probable
    assert torch.all((gates > 0).sum(-1) == 2)
    torch.testing.assert_close(gates.sum(-1), torch.ones(2, 7))
    assert torch.equal(probs.topk(2, dim=-1).indices.sort(-1).values, top_i.sort(-1).values)
    assert layer(h).shape == (2, 7, 8)


def test_moe_output_equals_gated_sum_of_experts():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 4)
    layer = moe.LoraMoELinear(base, num_experts=3, r=2, alpha=4.0, top_k=2)
    torch.nn.init.normal_(layer.lora_B)             # non-zero B so the adapter contributes
    x = torch.randn(5, 6)
    gates, _, _ = layer.route(x)
    ref = base(x) + 2.0 * sum(gates[:, e:e + 1] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(3))
    torch.testing.assert_close(layer(x), ref)


def test_single_expert_is_plain_lora_and_starts_at_base():
    base = torch.nn.Linear(6, 4)
    layer = moe.LoraMoELinear(base, num_experts=1, r=2)
    assert layer.router is None
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x))   # B = 0 at init


def test_per_layer_expert_counts_and_only_adapters_trainable():
    model = random_model(num_hidden_layers=4)
    counts = [0, 1, 2, 5]
    moe.add_lora_moe(model, counts, r=4, target_modules=("q_proj", "v_proj", "down_proj"))
    assert moe.expert_counts(model) == counts
    for k, layer in enumerate(decoder_layers(model)):
        for name in ("q_proj", "v_proj"):
            m = getattr(layer.self_attn, name)
            assert (k == 0) == (not isinstance(m, moe.LoraMoELinear))
            if k:
                assert m.num_experts == counts[k] and m.top_k == min(2, counts[k])
        assert not isinstance(layer.self_attn.k_proj, moe.LoraMoELinear)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("lora_" in n or ".router." in n) for n in names)
    n_train, n_total = moe.trainable_parameters(model)
    assert n_train == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or ".router." in n)
    assert 0 < n_train < n_total


def test_add_lora_moe_rejects_bad_input():
    model = random_model(num_hidden_layers=3)
    with pytest.raises(ValueError, match="experts_per_layer"):
        moe.add_lora_moe(model, [1, 2])
    with pytest.raises(ValueError, match="experts_per_layer"):
        moe.add_lora_moe(model, [1, -1, 2])
    with pytest.raises(ValueError, match="target_modules"):
        moe.add_lora_moe(random_model(num_hidden_layers=3), [1, 1, 1], target_modules=("nonexistent",))


def test_training_step_lowers_loss_and_touches_only_adapters():
    model = random_model(num_hidden_layers=2)
    moe.add_lora_moe(model, [2, 3], r=4, alpha=8, seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batches = _batches()
    with torch.no_grad():
        before = sum(model(**b).loss.item() for b in batches) / len(batches)
    losses = finetune(model, batches, epochs=4, lr=1e-2, seed=0, aux_loss_coef=0.01, progress=False)
    with torch.no_grad():
        after = sum(model(**b).loss.item() for b in batches) / len(batches)
    assert len(losses) == 4 * len(batches)
    assert after < before - 0.05
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert moe.moe_aux_loss(model) is not None


def test_finetune_rejects_model_without_adapters():
    with pytest.raises(ValueError, match="trainable"):
        model = random_model(num_hidden_layers=2)
        for p in model.parameters():
            p.requires_grad_(False)
        finetune(model, _batches(n=1), epochs=1)


def test_peft_rank_pattern_honoured():
    from peft import get_peft_model

    ranks = [2, 8, 4, 1, 2, 2, 2, 2, 2, 2, 3]       # 11 layers: layer 1 must not leak into 10
    model = get_peft_model(random_model(num_hidden_layers=11),
                           moe.rank_config(ranks, target_modules=("q_proj", "down_proj"), alpha_ratio=2.0))
    assert moe.lora_ranks(model) == ranks
    for k, layer in enumerate(decoder_layers(model)):
        for m in (layer.self_attn.q_proj, layer.mlp.down_proj):
            assert m.r["default"] == ranks[k]
            assert m.lora_A["default"].weight.shape[0] == ranks[k]
            assert m.scaling["default"] == pytest.approx(2.0)   # alpha = 2 r in every layer
        assert not hasattr(layer.self_attn.k_proj, "lora_A")
    with pytest.raises(ValueError, match="ranks_per_layer"):
        moe.rank_config([2, 0, 1])


def test_layer_expert_costs_are_flops_per_expert():
    model = random_model(num_hidden_layers=2, hidden_size=32, intermediate_size=64)
    c = moe.layer_expert_costs(model, r=4, target_modules=("q_proj", "up_proj"))
    # q_proj 32->32, up_proj 32->64: r (d_in + d_out) each
    assert c == [4 * (32 + 32) + 4 * (32 + 64)] * 2


def test_cached_cell_goes_through_the_one_cache(tmp_path, monkeypatch):
    """One fine-tuning cell is one "finetune" cache entry: computed once, read back after, never
    written by a non-main process of a launch (which does not evaluate)."""
    from mdlcap.interventions import finetune as ft
    from mdlcap.study import params

    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    p = params.load("params/mistral-7b.yaml")          # hub id: resolving it builds nothing
    calls = []

    def fake_run_cell(base, tok, prm, task, **kw):
        calls.append((task, kw["seed"]))
        return {"task": task, "seed": kw["seed"], "accuracy": None if kw["accelerator"] else 0.5}

    monkeypatch.setattr(ft, "run_cell", fake_run_cell)
    a = ft.cached_cell(None, None, p, "cola", seed=0, counts=[1, 2])
    assert a == {"task": "cola", "seed": 0, "accuracy": 0.5, "cached": False} and calls == [("cola", 0)]
    b = ft.cached_cell(None, None, p, "cola", seed=0, counts=[1, 2])
    assert b == {**a, "cached": True} and len(calls) == 1
    entries = list((tmp_path / "finetune").glob("*.json"))
    assert [e.name for e in entries] == [f"cola_{ft.cell_key(p, 'cola', 0, [1, 2])}.json"]
    ft.cached_cell(None, None, p, "cola", seed=1, counts=[1, 2])
    ft.cached_cell(None, None, p, "cola", seed=0, ranks=[1, 2])
    assert len(calls) == 3 and len(list((tmp_path / "finetune").glob("*.json"))) == 3

    class NonMain:
        is_main_process = False
        waits = 0

        def wait_for_everyone(self):
            NonMain.waits += 1

    c = ft.cached_cell(None, None, p, "mrpc", seed=0, counts=[1, 2], accelerator=NonMain())
    assert c["cached"] is False and len(calls) == 4 and not list((tmp_path / "finetune").glob("mrpc_*"))
    d = ft.cached_cell(None, None, p, "cola", seed=0, counts=[1, 2], accelerator=NonMain())
    assert d == b and len(calls) == 4                   # the main process's entry is read back
    assert NonMain.waits == 2                           # every cell ends on a barrier


def test_late_improvement_is_zero_on_a_plateau_or_an_upturn_and_large_while_falling():
    from mdlcap.interventions.finetune import late_improvement

    assert late_improvement([3.0] * 4 + [1.0] * 12) == 0.0
    creeping = [3.0, 3.0, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03]
    assert late_improvement(creeping) < 0.05              # relative change of the loss itself: -0.6
    assert late_improvement([3.0 - 0.15 * i for i in range(16)]) > 0.2        # still falling linearly
    assert late_improvement([3.0, 2.0, 1.5, 1.4, 1.4, 1.5, 1.6, 1.7]) == 0.0  # a held-out loss past its minimum
    # evaluation noise on a flat curve moves it little: the best point, not a window mean, counts
    flat = [3.0, 1.5, 1.2] + [1.0 + 0.03 * (-1) ** i for i in range(13)]
    assert late_improvement(flat) == 0.0
    assert late_improvement([3.0, 2.0, 1.0, 0.9]) == pytest.approx(0.1 / 2.1)   # the last quarter: one point
    assert np.isnan(late_improvement([1.0] * 3))                        # < 4 points: cannot be judged
    assert np.isnan(late_improvement([1.0] * 8))                        # no decrease: nothing learned


def test_validation_loss_is_recorded_on_schedule_without_changing_training():
    from mdlcap.interventions.finetune import ValidationLoss

    batches, held = _batches(), _batches()[:2]
    runs = []
    for v in (None, ValidationLoss(held, every=3)):
        model = random_model(num_hidden_layers=2)
        moe.add_lora_moe(model, [2, 3], r=4, alpha=8, seed=0)
        runs.append((finetune(model, batches, epochs=2, lr=1e-2, seed=0, progress=False, validation=v), v))
    (plain, _), (tracked, v) = runs
    assert tracked == plain                               # evaluation touches neither RNG nor batch order
    n = 2 * len(batches)
    assert v.steps == sorted({0, *range(3, n + 1, 3), n}) and len(v.losses) == len(v.steps)
    assert v.losses[-1] < v.losses[0]
    with pytest.raises(ValueError, match="every"):
        ValidationLoss(held, every=0)
    with pytest.raises(ValueError, match="batches"):
        ValidationLoss([], every=2)


def test_task_epochs_override_one_task_and_only_that_tasks_cells():
    import dataclasses

    from mdlcap.interventions import finetune as ft
    from mdlcap.study.params import load

    p = load("params/smoke.yaml")
    a = dataclasses.replace(p.allocation, epochs=2, task_epochs={"csqa": 5})
    q = dataclasses.replace(p, allocation=a)
    assert ft.task_epochs(q, "csqa") == 5 and ft.task_epochs(q, "sciq") == 2
    base = dataclasses.replace(p, allocation=dataclasses.replace(a, task_epochs={}))
    spec = lambda params, t: ft.cell_spec(params, t, 0, counts=[1, 1])    # noqa: E731
    assert spec(q, "sciq")["alloc"] == spec(base, "sciq")["alloc"]      # csqa's override leaves sciq's key alone
    assert spec(q, "csqa")["alloc"]["epochs"] == 5
