"""Build the embedded default model: a byte-level BPE tokenizer and a small MistralForCausalLM
pretrained on the Python documentation corpus (`mdlcap.default.corpus`), on CPU, in minutes.

    path = build(params)      # trains and saves in the one cache (namespace "models"), or reuses it

The spec names the architecture, the pretraining recipe, the run seed (the model's init and
batch order), the data seed and the corpus version
(not the task generators' version: a task change does not retrain the model); the key adds
`cache.CODE_VERSIONS["models"]`. So a second `make all` reuses the model and any change rebuilds
it. `cache.cached_dir` builds in a temp folder and renames it into place: an interrupted build
leaves no half model.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from mdlcap import cache, files
from mdlcap.default.corpus import corpus, corpus_version

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "pretrain_metrics.json")


def model_spec(params) -> dict:
    """What the default model is a function of (its cache spec)."""
    m = params.model
    return {"architecture": dataclasses.asdict(m.architecture), "pretrain": dataclasses.asdict(m.pretrain),
            "run_seed": params.run.seed, "data_seed": params.data.seed, "corpus": corpus_version()}


def model_key(params) -> str:
    return cache.key("models", model_spec(params))


def model_dir(params) -> Path:
    """Where the model of these params lives (built or not)."""
    return cache.path("models", model_spec(params), suffix="")


def is_built(path: Path) -> bool:
    return (path / cache.DONE).exists() and all((path / f).exists() for f in MODEL_FILES)


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokeniser) from the `tokenizers` library, wrapped as a
    PreTrainedTokenizerFast with pad/bos/eos/unk set. No BOS is added automatically: documents
    are separated by EOS, as in the pretraining stream."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL["pad"], bos_token=SPECIAL["bos"],
                                   eos_token=SPECIAL["eos"], unk_token=SPECIAL["unk"], model_max_length=1 << 30)


# --------------------------------------------------------------------------- model
def mistral_config(params, tokenizer):
    from transformers import MistralConfig
    a = params.model.architecture
    return MistralConfig(vocab_size=len(tokenizer), hidden_size=a.hidden_size,
                         intermediate_size=a.intermediate_size, num_hidden_layers=a.num_hidden_layers,
                         num_attention_heads=a.num_attention_heads, num_key_value_heads=a.num_key_value_heads,
                         max_position_embeddings=a.max_position_embeddings, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, sliding_window=None)


def token_stream(tokenizer, paragraphs: list[dict]) -> np.ndarray:
    """All paragraphs tokenised and joined, each followed by EOS."""
    ids = tokenizer([p["text"] for p in paragraphs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return np.fromiter((t for seq in ids for t in (*seq, eos)), dtype=np.int64)


def windows(stream: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping seq_len windows of a token stream (evaluation)."""
    n = len(stream) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len).copy())


@torch.no_grad()
def mean_loss(model, x: torch.Tensor, batch_size: int = 16) -> float:
    """Token-averaged next-token loss (nats) over windows x."""
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        n = xb.numel() - xb.shape[0]
        tot += model(input_ids=xb, labels=xb).loss.item() * n
        cnt += n
    return tot / cnt


def unigram_loss(train: np.ndarray, test: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) of an add-one unigram model fit on train, on test."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[test].mean())


def _lr(step: int, p) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    t = (step - p.warmup) / max(1, p.steps - p.warmup)
    return p.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain(params, out_dir: Path, progress: bool = True) -> dict:
    """Train tokenizer + model, save both to out_dir (safetensors), return the metrics."""

    t0 = time.time()
    pp = params.model.pretrain
    corp = corpus(params.data.seed)
    tokenizer = train_tokenizer([p["text"] for p in corp["pretrain"]], params.model.architecture.vocab_size)
    train = token_stream(tokenizer, corp["pretrain"])
    held = token_stream(tokenizer, corp["heldout"])
    t_tok = time.time() - t0

    threads = torch.get_num_threads()
    torch.set_num_threads(pp.threads)
    try:
        return _train(params, out_dir, tokenizer, train, held, t0, t_tok, progress)
    finally:
        torch.set_num_threads(threads)


def _train(params, out_dir: Path, tokenizer, train, held, t0: float, t_tok: float, progress: bool) -> dict:
    from tqdm.auto import tqdm
    from transformers import MistralForCausalLM

    pp = params.model.pretrain
    torch.manual_seed(params.run.seed)
    config = mistral_config(params, tokenizer)
    if pp.init_std is not None:
        config.initializer_range = pp.init_std
    model = MistralForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": pp.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=pp.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng([params.data.seed, params.run.seed, 7])
    n_eval = 32 if params.run.smoke else 64
    eval_train = windows(train[rng.integers(0, len(train) // 2):], pp.seq_len, n_eval)
    eval_held = windows(held, pp.seq_len, n_eval)
    curve = []
    eval_every = max(1, pp.steps // 8)
    bar = tqdm(range(pp.steps), desc="pretrain", disable=not progress)
    for step in bar:
        model.train()
        starts = rng.integers(0, len(train) - pp.seq_len - 1, pp.batch_size)
        xb = torch.from_numpy(np.stack([train[s:s + pp.seq_len] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = _lr(step, pp)
        loss = model(input_ids=xb, labels=xb).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        row = {"step": step + 1, "train_batch_loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
        if (step + 1) % eval_every == 0 or step + 1 == pp.steps:
            row["heldout_loss"] = mean_loss(model, eval_held)
        curve.append(row)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    t_train = time.time() - t0 - t_tok

    V = len(tokenizer)
    metrics = {
        "train_loss": mean_loss(model, eval_train),
        "heldout_loss": mean_loss(model, windows(held, pp.seq_len)),
        "unigram_heldout_loss": unigram_loss(train, held, V),
        "unigram_train_loss": unigram_loss(train, train, V),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": V,
        "train_tokens": int(len(train)), "heldout_tokens": int(len(held)),
        "tokens_seen": int(pp.steps * pp.batch_size * pp.seq_len),
        "seconds_tokenizer": t_tok, "seconds_train": t_train, "torch_threads": torch.get_num_threads(),
        "curve": curve, "key": model_key(params),
    }
    for k in ("train", "heldout", "unigram_heldout"):
        metrics[f"{k}_ppl"] = math.exp(metrics[f"{k}_loss"])
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    files.atomic_write_json(out_dir / "pretrain_metrics.json", metrics)
    return metrics


def build(params, progress: bool = True, force: bool = False) -> Path:
    """Path of the default model for these params, pretraining it first if not cached
    (`cache.cached_dir`: builders of one key wait on its lock; `force` retrains)."""
    return cache.cached_dir("models", model_spec(params), lambda tmp: pretrain(params, tmp, progress=progress),
                            force=force)


def metrics(params) -> dict:
    """The pretraining metrics saved next to the default model (builds it if needed)."""
    return files.read_json(build(params) / "pretrain_metrics.json")
