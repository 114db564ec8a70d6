"""Models: the embedded default (a small MistralForCausalLM built and pretrained here) and
hub models, both loaded by the same `AutoModelForCausalLM.from_pretrained` call.

Shared helpers every experiment uses:
  load(params, device=None) (model, tokenizer) for the params' model: the embedded default
                            (built and cached by mdlcap.default.pretrain on first use) or a hub id/local dir
  resolve_path(params)      what `from_pretrained` is given for these params
  model_identity(params)    what names those weights in a cache key (not a path: keys move with the cache)
  resolve_device(params)    params.run.device with "auto" resolved (cuda if available)
  decoder_layers(model)     the list of decoder layers of a HF decoder (Mistral, Gemma, Llama, ...)
  random_model(**config)    a randomly initialised small Mistral for tests (no download)
  fingerprint_model(model)  short hash of the architecture and weights: the identity of a loaded model in keys
  fingerprint_batches(bs)   short hash of a list of batches (their tensors' shapes and values)
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(params, progress: bool = True) -> str:
    """The path or hub id handed to `from_pretrained`: the cached default model (built first if
    needed) when `model.name_or_path` is "default", else the params' hub id or local folder."""
    if params.uses_default_model:
        from mdlcap.default import pretrain
        return str(pretrain.build(params, progress=progress))
    return params.model.name_or_path


def model_identity(params) -> str:
    """What names the weights in a cache key, the same wherever the cache lives: the default
    model's content key ("default:<key>", it is a function of its params) or the hub id / folder.
    A path under the cache root would tie every key to one checkout's cache location."""
    if params.uses_default_model:
        from mdlcap.default import pretrain
        return f"default:{pretrain.model_key(params)}"
    return params.model.name_or_path


def resolve_device(params) -> str:
    """params.run.device, with "auto" read as cuda when available, else cpu."""
    if params.run.device != "auto":
        return params.run.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(params, device):
    """None -> params.run.device ("auto": cuda if available); under accelerate/torchrun each
    process takes the GPU of its LOCAL_RANK. "auto" as an argument shards over all GPUs."""
    if device is not None:
        return device
    dev = resolve_device(params)
    if dev == "cuda" and "LOCAL_RANK" in os.environ:
        dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return dev


def load(params, device: str | None = None, progress: bool = True):
    """(model, tokenizer) for the params' model, in eval mode, on `device`.

    Always goes through `AutoModelForCausalLM.from_pretrained(..., use_safetensors=True)`, the
    same call for the embedded default as for Mistral-7B or Gemma-7B; `trust_remote_code`
    comes from the params (default False). device="auto" hands placement to accelerate
    (`device_map="auto"`, one copy sharded over the visible GPUs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_path(params, progress=progress)
    dev = _device(params, device)
    kw = dict(use_safetensors=True, trust_remote_code=params.model.trust_remote_code,
              revision=params.model.revision, dtype=DTYPES[params.model.dtype])
    if dev == "auto":
        kw["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=params.model.trust_remote_code,
                                              revision=params.model.revision)
    if tokenizer.pad_token is None:            # Mistral/Gemma hub tokenizers: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    if dev != "auto":
        model.to(dev)
    model.eval()
    return model, tokenizer


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


def fingerprint_model(model: nn.Module, max_numel: int = 50_000_000) -> str:
    """Hash of the architecture and the weights (a strided sample of them for very large models):
    the model's identity in every cache key."""
    h = hashlib.sha256(type(model).__name__.encode())
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    total = sum(p.numel() for p in model.parameters())
    stride = max(1, total // max_numel)
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        t = p.detach().reshape(-1)[::stride].float().cpu().contiguous()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_batches(batches) -> str:
    """Hash of a list of batches (dicts, sequences or tensors): keys, tensor shapes and values."""
    h = hashlib.sha256()
    for b in batches:
        items = b.items() if isinstance(b, Mapping) else enumerate(b if isinstance(b, (list, tuple)) else [b])
        for k, v in items:
            h.update(str(k).encode())
            if isinstance(v, torch.Tensor):
                h.update(str(tuple(v.shape)).encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(v).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- architectures without weights
def meta_model(config) -> nn.Module:
    """A Hugging Face causal LM built on the meta device from a config: shapes, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def config_layer_sizes(config):
    """Parameter count N_k of each decoder layer of the architecture `config` describes
    (built on the meta device: no weights, no download). For a loaded model use
    `mdlcap.interventions.pruning.layer_sizes(model)`."""
    import numpy as np

    return np.array([sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(meta_model(config))],
                    dtype=float)


def lora_expert_flops(config, rank: int = 8):
    """FLOPs per token of one rank-r LoRA expert on every linear map of each decoder layer:
    Σ_linear 2 r (d_in + d_out) (the paper's c_k, "FLOPs of a single LoRA expert at layer k";
    the paper does not say which modules carry experts: we read it as all of them; METHOD.md §2)."""
    import numpy as np

    out = []
    for layer in decoder_layers(meta_model(config)):
        out.append(sum(2 * rank * (m.in_features + m.out_features)
                       for m in layer.modules() if isinstance(m, torch.nn.Linear)))
    return np.array(out, dtype=float)
