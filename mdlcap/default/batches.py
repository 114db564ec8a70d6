"""Token batches for `model(**batch)`: next-token windows of text, and task examples whose loss
falls on the gold answer only (the way lm-eval scores a choice).

    lm_batches(tokenizer, texts, seq_len, batch_size)        calibration, perplexity, pretraining-style
    task_batches(tokenizer, examples, batch_size, max_len)   fine-tuning, scoring (loss on the answer)
"""
from __future__ import annotations


def lm_batches(tokenizer, texts: list[str], seq_len: int, batch_size: int) -> list[dict]:
    """Next-token batches: the texts joined by EOS, cut into seq_len windows (last partial dropped)."""
    import torch
    if seq_len < 2:
        raise ValueError(f"seq_len: must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"texts: {len(stream)} tokens in all, fewer than seq_len={seq_len}")
    ids = torch.tensor(stream[: n * seq_len]).view(n, seq_len)
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size]),
             "labels": ids[i:i + batch_size].clone()} for i in range(0, n, batch_size)]


def encode_example(tokenizer, example: dict, max_len: int = 128) -> tuple[list[int], list[int]]:
    """Token ids of query + " " + gold answer, and labels (-100 except on the answer), split
    between context and continuation the way lm-eval scores a choice."""
    ctx = tokenizer(example["query"])["input_ids"]
    ans = tokenizer(" " + example["choices"][example["label"]], add_special_tokens=False)["input_ids"]
    ids = (ctx + ans)[-max_len:]
    labels = ([-100] * len(ctx) + ans)[-max_len:]
    return ids, labels


def task_batches(tokenizer, examples: list[dict], batch_size: int, max_len: int = 128,
                 group_by_length: bool = False) -> list[dict]:
    """Batches for `model(**batch)` whose `.loss` is the LM loss on the gold answer tokens only
    (labels -100 on the query and the padding). Right-padded; truncated from the left.
    `group_by_length`: batch examples of similar length together (sorted by token count, ties in
    the given order), as transformers' `group_by_length` does, so a batch pads to little more
    than its own examples (sciq's passages: 62 tokens median, 122 at most); a training loop that
    shuffles the batches still sees them in random order."""
    import torch
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [encode_example(tokenizer, ex, max_len) for ex in examples]
    if group_by_length:
        encoded = sorted(encoded, key=lambda e: len(e[0]))
    out = []
    for i in range(0, len(encoded), batch_size):
        enc = encoded[i:i + batch_size]
        L = max(len(ids) for ids, _ in enc)
        ids = torch.full((len(enc), L), pad, dtype=torch.long)
        lab = torch.full((len(enc), L), -100, dtype=torch.long)
        att = torch.zeros((len(enc), L), dtype=torch.long)
        for r, (x, y) in enumerate(enc):
            ids[r, :len(x)] = torch.tensor(x)
            lab[r, :len(y)] = torch.tensor(y)
            att[r, :len(x)] = 1
        out.append({"input_ids": ids, "attention_mask": att, "labels": lab})
    return out
