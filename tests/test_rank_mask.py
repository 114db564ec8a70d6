"""Rank masks on a peft LoRA (mdlcap.interventions.rank_mask) and finetune's callback hook."""
from __future__ import annotations

import pytest
import torch

from mdlcap.interventions import rank_mask as rm
from mdlcap.interventions.finetune import finetune
from mdlcap.interventions.moe import rank_config
from mdlcap.models import random_model

from conftest import lm_batches

TARGETS = ("q_proj", "v_proj", "down_proj")
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)


def _lora(ranks, seed=0, randomize=True):
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(random_model(seed=seed, **TINY), rank_config(ranks, target_modules=TARGETS))
    if randomize:                              # B = 0 at init: give every component a contribution
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for mods in rm.lora_modules(model):
                for _, m in mods:
                    for lin in (m.lora_A["default"], m.lora_B["default"]):
                        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
    return model


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _copy_components(src, dst, keep_idx):
    """dst (a smaller-rank LoRA) gets src's components keep_idx[k][j] per layer k and module j."""
    with torch.no_grad():
        for k, (ms, md) in enumerate(zip(rm.lora_modules(src), rm.lora_modules(dst))):
            for j, ((_, a), (_, b)) in enumerate(zip(ms, md)):
                idx = keep_idx[k][j]
                b.lora_A["default"].weight.copy_(a.lora_A["default"].weight[idx])
                b.lora_B["default"].weight.copy_(a.lora_B["default"].weight[:, idx])


@pytest.mark.parametrize("keep", rm.KEEP_RULES)
def test_masked_rank_equals_the_smaller_lora_of_the_kept_components(keep):
    r_max, small = 6, [3, 1, 6, 2]
    big = _lora([r_max] * 4)
    batch = lm_batches(1, vocab=64)[0]
    full = _logits(big, batch)
    masks = rm.attach_masks(big)
    assert masks.ranks() == [r_max] * 4 and masks.r_max == [r_max] * 4
    assert torch.equal(_logits(big, batch), full)                  # all-ones masks change nothing
    masks.set_ranks(small, keep=keep)
    assert masks.ranks() == small and masks.total_rank() == sum(small) * len(TARGETS)
    keep_idx = [[torch.nonzero(masks.mask(m) > 0).flatten() for _, m in mods] for mods in masks.layers]
    if keep == "first":
        assert all(torch.equal(i, torch.arange(r)) for r, row in zip(small, keep_idx) for i in row)
    else:                                                             # the largest ‖B_i‖‖A_i‖ of each module
        for r, mods, row in zip(small, masks.layers, keep_idx):
            for (_, m), i in zip(mods, row):
                assert set(i.tolist()) == set(rm.component_norms(m).topk(r).indices.tolist())
    ref = _lora(small, randomize=False)
    _copy_components(big, ref, keep_idx)
    torch.testing.assert_close(_logits(big, batch), _logits(ref, batch), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_logits(big, batch), full, atol=1e-4)   # the masks did something
    masks.remove()
    torch.testing.assert_close(_logits(big, batch), full)


def test_masked_components_have_no_effect_and_no_gradient():
    model = _lora([4] * 4)
    masks = rm.attach_masks(model)
    masks.set_ranks([2, 4, 1, 3], keep="first")
    batch = lm_batches(1, vocab=64)[0]
    before = _logits(model, batch)
    with torch.no_grad():                                  # scramble every masked component
        for mods in masks.layers:
            for _, m in mods:
                off = masks.mask(m) == 0
                m.lora_A["default"].weight[off] += 5.0
                m.lora_B["default"].weight[:, off] -= 5.0
    torch.testing.assert_close(_logits(model, batch), before)
    model.train()
    model(**batch).loss.backward()
    seen = 0
    for mods in masks.layers:
        for _, m in mods:
            off = masks.mask(m) == 0
            gA, gB = m.lora_A["default"].weight.grad, m.lora_B["default"].weight.grad
            assert torch.count_nonzero(gA[off]) == 0 and torch.count_nonzero(gB[:, off]) == 0
            assert torch.count_nonzero(gA[~off]) > 0            # the kept ones do learn
            seen += int(off.sum())
    assert seen == (2 + 0 + 3 + 1) * len(TARGETS)


def test_newly_masked_components_get_zero_adam_moments_and_stay_frozen():
    model = _lora([4] * 4)
    masks = rm.attach_masks(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    batches = lm_batches(3, vocab=64)
    for b in batches:
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    moments = {id(p): {k: v.clone() for k, v in opt.state[p].items() if k != "step"} for p in params}
    dropped = masks.set_ranks([4, 2, 3, 0], keep="magnitude", optimizer=opt)
    assert dropped == [0, 2 * len(TARGETS), 1 * len(TARGETS), 4 * len(TARGETS)]
    for mods in masks.layers:
        for _, m in mods:
            off = masks.mask(m) == 0
            for p, dim in ((m.lora_A["default"].weight, 0), (m.lora_B["default"].weight, 1)):
                for key in ("exp_avg", "exp_avg_sq"):
                    t, old = opt.state[p][key], moments[id(p)][key]
                    sel = (lambda x, s: x[s] if dim == 0 else x[:, s])     # noqa: E731
                    assert torch.count_nonzero(sel(t, off)) == 0
                    assert torch.equal(sel(t, ~off), sel(old, ~off))  # kept components untouched
                    if off.any():
                        assert torch.count_nonzero(sel(old, off)) > 0  # there was something to zero
    frozen = {id(p): p.detach().clone() for p in params}
    for b in batches:                                      # masked components do not move any more
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    for mods in masks.layers:
        for _, m in mods:
            off = masks.mask(m) == 0
            A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
            assert torch.equal(A[off], frozen[id(A)][off]) and torch.equal(B[:, off], frozen[id(B)][:, off])


def test_rank_changes_are_minimal_and_rank_rises_reactivate_the_largest():
    model = _lora([5] * 4)
    masks = rm.attach_masks(model)
    masks.set_ranks([2, 2, 2, 2])
    first = [[masks.mask(m).clone() for _, m in mods] for mods in masks.layers]
    masks.set_ranks([2, 2, 2, 2])                          # same ranks: same masks
    assert all(torch.equal(a, masks.mask(m)) for row, mods in zip(first, masks.layers) for a, (_, m) in zip(row, mods))
    masks.set_ranks([3, 1, 2, 2])
    for k, (row, mods) in enumerate(zip(first, masks.layers)):
        for a, (_, m) in zip(row, mods):
            now, norms = masks.mask(m) > 0, rm.component_norms(m)
            if k == 0:                                     # kept both, added the largest masked one
                assert bool((now & (a > 0)).sum() == 2)
                added = torch.nonzero(now & ~(a > 0)).flatten()
                assert norms[added].item() == norms[~(a > 0)].max().item()
            if k == 1:                                     # kept the larger of its two
                assert bool((now & ~(a > 0)).sum() == 0)
                assert norms[now].item() == norms[a > 0].max().item()
    with pytest.raises(ValueError, match="r_max"):
        masks.set_ranks([6, 1, 1, 1])
    with pytest.raises(ValueError, match="one entry per decoder layer"):
        masks.set_ranks([1, 1])
    with pytest.raises(ValueError, match="keep"):
        masks.set_ranks([1] * 4, keep="random")
    with pytest.raises(ValueError, match="already"):
        rm.attach_masks(model)


def test_bake_makes_the_merged_weights_equal_the_masked_model():
    model = _lora([4] * 4)
    masks = rm.attach_masks(model)
    masks.set_ranks([1, 3, 2, 4])
    batch = lm_batches(1, vocab=64)[0]
    masked = _logits(model, batch)
    masks.bake()
    masks.remove()
    merged = model.merge_and_unload()
    torch.testing.assert_close(_logits(merged, batch), masked, rtol=1e-5, atol=1e-5)


def test_finetune_callback_runs_after_each_optimizer_step_before_zero_grad():
    batches = lm_batches(5, vocab=64)
    calls = []

    def cb(step, model, optimizer):
        opt = getattr(optimizer, "optimizer", optimizer)
        p = next(q for q in model.parameters() if q.requires_grad)
        calls.append((step, int(opt.state[p]["step"]), p.grad is not None))

    runs = []
    for callback in (None, cb):
        model = _lora([2] * 4, randomize=False)
        runs.append(finetune(model, batches, epochs=2, lr=1e-2, seed=0, progress=False, callback=callback))
    assert runs[0] == runs[1]                              # a callback that changes nothing changes nothing
    n = 2 * len(batches)
    assert [c[0] for c in calls] == list(range(1, n + 1))
    assert all(s == c for c, s, _ in calls)                # after optimizer step number `step`
    assert all(g for *_, g in calls)                       # gradients still there (AdaLoRA reads them)
