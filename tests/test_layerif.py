"""LayerIF in its setting (mdlcap.study.layerif): a peft LoRA fine-tuned on the task, DataInf on
its A/B tensors only, one block per decoder layer, the adapter cached so a rerun does not retrain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import lm_batches

from mdlcap.models import random_model
from mdlcap.scores import influence as I
from mdlcap.study import layerif as L

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)


def _batches(n, B=3, T=8, seed=0):
    return lm_batches(n, B, T, vocab=64, seed=seed)


def test_lora_influence_is_datainf_on_the_lora_tensors_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    model = random_model(**CFG)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = L.LayerIFData(_batches(2, seed=1), _batches(1, seed=2), finetune=_batches(3, seed=3), r=2, alpha=4,
                         steps=6, lr=1e-2)
    inf, meta = L.layerif_influence(model, data, progress=False)
    assert not meta["lora_cached"] and meta["finetune_seconds"] > 0 and meta["finetune_steps"] == 6
    assert inf.block_names == ["layers.0", "layers.1"] and inf.values.shape == (6, 2)
    assert np.all(np.isfinite(inf.values)) and np.any(inf.values != 0)
    # 7 projections x (A, B) per layer, each its own DataInf tensor; the base model is untouched
    assert inf.diagnostics["n_tensors"] == 2 * 7 * 2
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # the fine-tune moved B off zero (without it every A-gradient would vanish)
    peft, again = L.lora_finetuned(model, data, progress=False)
    assert again["lora_cached"] and again["finetune_seconds"] == 0.0
    assert any(float(p.detach().abs().max()) > 0 for n, p in peft.named_parameters() if "lora_B" in n)
    # same numbers as DataInf on those tensors directly, and a rerun reads the adapter back
    direct = I.layer_influence(peft, data.train, data.val, blocks=L.lora_blocks(peft), progress=False)
    np.testing.assert_allclose(direct.values, inf.values, rtol=1e-6, atol=1e-12)
    inf2, meta2 = L.layerif_influence(model, data, progress=False)
    assert meta2["lora_cached"]
    np.testing.assert_allclose(inf2.values, inf.values, rtol=1e-6, atol=1e-12)
    assert len(list((tmp_path / "scores").glob("*.safetensors"))) == 1


def test_pair_input_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    from mdlcap.study.params import ScoringParams

    sp = ScoringParams(layerif_lora_steps=3, layerif_lora_lr=1e-2)
    d = L.as_layerif_data((_batches(1), _batches(1, seed=1)), sp)
    assert d.steps == 3 and d.lr == 1e-2 and d.finetune_batches() == d.train
    train, val = d                                   # unpacks as the (train, validation) pair
    assert train is d.train and val is d.val
    model = random_model(**CFG)
    with pytest.raises(ValueError, match="steps"):
        L.lora_finetuned(model, L.LayerIFData(_batches(1), _batches(1), steps=0), use_cache=False)
    with pytest.raises(ValueError, match="target_modules"):
        L.lora_finetuned(model, L.LayerIFData(_batches(1), _batches(1), steps=1, target_modules=("nothing_here",)),
                         use_cache=False, progress=False)


def test_pruning_source_runs_on_the_base_model_weights():
    """Task "calibration" (the pruning source) has no LoRA: DataInf on the base model's own weights,
    equal to scores.influence.layer_influence on it, and a cache key apart from the LoRA setting."""
    assert L.setting_for("calibration") == "base" and L.setting_for("cola") == "lora"
    model = random_model(**CFG)
    data = L.LayerIFData(_batches(1, seed=1), _batches(1, seed=2), setting="base")
    inf, meta = L.layerif_influence(model, data, progress=False)
    ref = I.layer_influence(model, data.train, data.val, progress=False)
    assert meta["setting"] == "base" and meta["finetune_steps"] == 0
    assert np.allclose(inf.values, ref.values)
    assert data.lora_spec() == {"setting": "base"}
    with pytest.raises(ValueError, match="setting"):
        L.layerif_influence(model, L.LayerIFData(data.train, data.val, setting="nope"), progress=False)
