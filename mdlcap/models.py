"""Models: the embedded default (a small MistralForCausalLM built and pretrained here) and
hub models, both loaded by the same `AutoModelForCausalLM.from_pretrained` call.

Shared helpers every experiment uses:
  decoder_layers(model)     the list of decoder layers of a HF decoder (Mistral, Gemma, Llama, ...)
  random_model(**config)    a randomly initialised small Mistral for tests (no download)
"""
from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Decoder layers of a Hugging Face decoder-only model (Mistral/Gemma/Llama/Qwen layouts),
    also when wrapped by peft (`base_model.model`) or accelerate/DDP (`module`)."""
    m = model
    for attr in ("module", "base_model", "model"):
        # unwrap DDP, peft PeftModel -> LoraModel -> CausalLM, CausalLM -> decoder
        while hasattr(m, attr) and not hasattr(m, "layers") and isinstance(getattr(m, attr), nn.Module):
            m = getattr(m, attr)
    if hasattr(m, "layers") and isinstance(m.layers, nn.ModuleList):
        return list(m.layers)
    for name in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    raise ValueError(f"model: cannot find decoder layers in {type(model).__name__} "
                     "(expected .model.layers as in Mistral/Gemma/Llama)")


def random_model(seed: int = 0, **config) -> nn.Module:
    """A randomly initialised small MistralForCausalLM (tests; no download)."""
    from transformers import MistralConfig, MistralForCausalLM

    kw = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              tie_word_embeddings=False)
    kw.update(config)
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**kw))
    model.eval()
    return model
