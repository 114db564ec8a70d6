"""Model loading: save/load round trips through from_pretrained (safetensors), the tokenizer,
the `load(params)` path with Mistral- and Gemma-shaped random models, and the build cache."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mdlcap import models as M
from mdlcap.study import params as P
from mdlcap.default import pretrain as PT

TEXTS = ["The assert statement is a convenient way to insert debugging assertions into a program.",
         "A function definition defines a user-defined function object.",
         "The yield expression is used when defining a generator function."] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return PT.train_tokenizer(TEXTS, 320)


def _local_params(path: Path, dtype: str = "float32") -> P.Params:
    return P.from_dict({"run": {"device": "cpu"},
                        "model": {"name_or_path": str(path), "dtype": dtype}}, "<test local model>")


def test_tokenizer_round_trip(tokenizer, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    tokenizer.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok2, PreTrainedTokenizerFast)
    for name in ("pad_token", "bos_token", "eos_token", "unk_token"):
        assert getattr(tok2, name) == getattr(tokenizer, name) is not None
    assert len({tok2.pad_token_id, tok2.bos_token_id, tok2.eos_token_id}) == 3
    s = "A generator function uses the yield expression; café ü 42."   # bytes outside the corpus too
    ids = tok2(s, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(s, add_special_tokens=False)["input_ids"]
    assert tok2.decode(ids) == s                                        # byte-level: lossless


def _shrink(config, **kw):
    """The real config class with its defaults, scaled down: fewer layers, smaller width."""
    for k, v in kw.items():
        setattr(config, k, v)
    return config


@pytest.mark.parametrize("family", ["mistral", "gemma"])
def test_load_path_with_scaled_real_configs(family, tokenizer, tmp_path):
    """load(params) on a local folder goes through AutoModelForCausalLM.from_pretrained with
    safetensors and returns the same function as the saved model, for both 7B families."""
    from transformers import AutoModelForCausalLM, GemmaConfig, MistralConfig
    if family == "mistral":          # GQA 32:8 -> 8:2, as Mistral-7B
        cfg = _shrink(MistralConfig(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer))
    else:                            # MHA 16:16 -> 4:4, wide heads, tied embeddings, as Gemma-7B
        cfg = _shrink(GemmaConfig(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=32, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(cfg).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))

    model, tok = M.load(_local_params(tmp_path), device="cpu")
    assert type(model) is type(ref) and not model.training
    assert len(M.decoder_layers(model)) == 2
    x = torch.tensor([tok("a function definition", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ref(x).logits, atol=1e-5)

    m16, _ = M.load(_local_params(tmp_path, "bfloat16"), device="cpu")
    assert next(m16.parameters()).dtype == torch.bfloat16


def test_save_load_round_trip_random_mistral(tmp_path):
    from transformers import AutoModelForCausalLM
    ref = M.random_model(seed=3)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    m = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), m.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_hub_params_do_not_build():
    for f, hub in (("params/mistral-7b.yaml", "mistralai/Mistral-7B-v0.1"), ("params/gemma-7b.yaml", "google/gemma-7b")):
        p = P.load(f)
        assert not p.uses_default_model and p.model.dtype == "bfloat16" and not p.model.trust_remote_code
        assert M.resolve_path(p) == hub                       # no build, no download


def test_model_key_tracks_inputs():
    p = P.load("params/smoke.yaml")
    k = PT.model_key(p)
    assert k == PT.model_key(P.load("params/smoke.yaml"))
    q = P.load("params/smoke.yaml")
    q.model.pretrain = dataclasses.replace(q.model.pretrain, steps=q.model.pretrain.steps + 1)
    assert PT.model_key(q) != k
    q = P.load("params/smoke.yaml")
    q.data.seed += 1
    assert PT.model_key(q) != k
    q = P.load("params/smoke.yaml")
    q.run.seed += 1                       # pretraining's init and batch order come from run.seed
    assert PT.model_key(q) != k


def test_build_is_atomic_and_cached(tmp_path, monkeypatch):
    """An interrupted build leaves no model; a finished one is reused without retraining."""
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    p = P.load("params/smoke.yaml")
    calls = []

    def broken(params, out_dir, progress=True):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(PT, "pretrain", broken)
    with pytest.raises(KeyboardInterrupt):
        PT.build(p, progress=False)
    assert not PT.is_built(PT.model_dir(p))
    assert not [d for d in (tmp_path / "models").iterdir() if d.name.startswith(".tmp")]

    def fake(params, out_dir, progress=True):
        calls.append(1)
        for f in PT.MODEL_FILES:
            (out_dir / f).write_text("{}")

    monkeypatch.setattr(PT, "pretrain", fake)
    path = PT.build(p, progress=False)
    assert PT.is_built(path) and PT.build(p, progress=False) == path
    assert calls == [1]


def test_smoke_default_model_loads():
    """The embedded default at smoke size: built (or reused) and loaded via from_pretrained."""
    p = P.load("params/smoke.yaml")
    model, tok = M.load(p, progress=False)
    a = p.model.architecture
    assert type(model).__name__ == "MistralForCausalLM"
    assert model.config.num_key_value_heads == a.num_key_value_heads < model.config.num_attention_heads
    assert len(M.decoder_layers(model)) == a.num_hidden_layers
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    met = PT.metrics(p)
    assert met["key"] == PT.model_key(p) and met["heldout_loss"] > 0


def test_model_identity_is_the_same_wherever_the_cache_lives(tmp_path, monkeypatch):
    """Cell keys name the default model by its content key, not by its path under the cache root:
    a cache copied to another checkout still hits, and nothing is built to compute a key."""
    p = P.load("params/smoke.yaml")
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path / "a"))
    a = M.model_identity(p)
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path / "b"))
    assert M.model_identity(p) == a == f"default:{PT.model_key(p)}"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()       # no build
    q = P.load("params/smoke.yaml")
    q.model.pretrain = dataclasses.replace(q.model.pretrain, steps=q.model.pretrain.steps + 1)
    assert M.model_identity(q) != a
    hub = P.load("params/mistral-7b.yaml")
    assert M.model_identity(hub) == "mistralai/Mistral-7B-v0.1"
