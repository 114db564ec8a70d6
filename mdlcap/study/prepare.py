"""Notebook 00 drivers: the tables that say whether the embedded default model and the stand-in
tasks can carry the study (held-out perplexity against a unigram model, zero-shot accuracy above
chance, fine-tuning stand-ins learnable).

    model_summary(p, model, tokenizer, met)     one row: architecture, size, pretraining cost
    pretrain_losses(met), pretrain_curve(met)   model vs unigram loss; the training curve
    task_tables(p)                              one row per task (sizes, choices, chance) and an example each
    evaluated_tasks(p)                          the tasks notebook 00 scores, fine-tune tasks first
    zeroshot_table(p, tasks, zs)                zero-shot accuracy with a z-score against chance
    perplexity_table(p, model, tokenizer)       held-out perplexity
    finetune_sanity(p, model, tokenizer, acc)   a short full fine-tune: are the fine-tune stand-ins learnable?

A task is above chance when z = (acc − chance) / sqrt(chance (1 − chance) / n) exceeds
`paper.THRESHOLDS["above_chance_z"]` (2).
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import pandas as pd
import torch

from mdlcap import evaluation
from mdlcap.default import data, pretrain
from mdlcap.default.tasks.registry import FINETUNE_SPLITS, stands_for
from mdlcap.study.paper import THRESHOLDS

Z_ABOVE_CHANCE = THRESHOLDS["above_chance_z"]


# --------------------------------------------------------------------------- 1. the model
def model_summary(p, model, tokenizer, met: dict | None = None) -> pd.DataFrame:
    """One row describing the loaded model; with the pretraining metrics `met` of the embedded
    default, also the tokens and time its pretraining took."""
    cfg = model.config
    summary = pd.DataFrame([{
        "model": p.model.name_or_path, "architecture": type(model).__name__,
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
        "vocab": len(tokenizer), "parameters": sum(q.numel() for q in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }])
    if met is not None:
        summary["tokens_seen"] = met["tokens_seen"]
        summary["train_tokens"] = met["train_tokens"]
        summary["pretrain_seconds"] = round(met["seconds_tokenizer"] + met["seconds_train"], 1)
        summary["pretrain_threads"] = met["torch_threads"]
    return summary


def pretrain_losses(met: dict) -> pd.DataFrame:
    """Train and held-out loss and perplexity of the model and of the add-one unigram baseline."""
    losses = pd.DataFrame([
        {"split": "train", "model_loss": met["train_loss"], "model_ppl": met["train_ppl"],
         "unigram_loss": met["unigram_train_loss"], "unigram_ppl": math.exp(met["unigram_train_loss"])},
        {"split": "heldout", "model_loss": met["heldout_loss"], "model_ppl": met["heldout_ppl"],
         "unigram_loss": met["unigram_heldout_loss"], "unigram_ppl": met["unigram_heldout_ppl"]},
    ])
    losses["ppl_ratio_model_over_unigram"] = losses["model_ppl"] / losses["unigram_ppl"]
    return losses


def pretrain_verdict(losses: pd.DataFrame, smoke: bool = False) -> list[str]:
    """Does the model beat the unigram baseline on held-out text?"""
    by = losses.set_index("split")
    held = by.loc["heldout"]
    gap = by.loc["heldout", "model_loss"] - by.loc["train", "model_loss"]
    return [f"held-out perplexity {held.model_ppl:.1f} vs unigram {held.unigram_ppl:.1f} "
            f"(ratio {held.ppl_ratio_model_over_unigram:.2f}); held-out minus train loss {gap:+.3f} nats",
            "VERDICT: " + ("the model has learned its text: it beats the unigram baseline on held-out text"
                           if held.model_ppl < held.unigram_ppl else
                           "the model does NOT beat the unigram baseline on held-out text"
                           + (" (expected at smoke size)" if smoke else ""))]


def pretrain_curve(met: dict) -> pd.DataFrame:
    """One row per pretraining step: batch loss, learning rate, held-out loss where evaluated."""
    return pd.DataFrame(met["curve"])


def plot_pretrain_curve(curve: pd.DataFrame, unigram_heldout_loss: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["step"], curve["train_batch_loss"], lw=0.8, alpha=0.7, label="train batch loss")
    ev = curve.dropna(subset=["heldout_loss"])
    ax.plot(ev["step"], ev["heldout_loss"], "o-", label="held-out loss")
    ax.axhline(unigram_heldout_loss, color="k", ls="--", lw=1, label="unigram, held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Pretraining the embedded default")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 2. the tasks
def local_tasks(p) -> list[tuple[str, str]]:
    """(kind, task) of every task with a local file: the fine-tune tasks, and the zero-shot ones
    when the data is generated (under data.source: hub they are lm-eval's own)."""
    out = [("finetune", t) for t in p.data.finetune_tasks]
    if p.data.source == "generated":
        out += [("zeroshot", t) for t in p.data.zeroshot_tasks]
    return out


def task_tables(p) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tasks, examples): per task its kind, the paper's task it stands for, split sizes, median
    number of choices and chance (mean 1/#choices on test); and its first test example."""
    rows, examples = [], []
    for kind, t in local_tasks(p):
        splits = FINETUNE_SPLITS if kind == "finetune" else ("test",)
        d = {s: data.load_task(p, t, s) for s in splits}
        test = d["test"]
        rows.append({"task": t, "kind": kind, "stands_for": stands_for(t),
                     **{f"n_{s}": len(d.get(s, [])) for s in FINETUNE_SPLITS},
                     "n_choices": int(np.median([len(r["choices"]) for r in test])),
                     "chance": float(np.mean([1 / len(r["choices"]) for r in test]))})
        ex = test[0]
        examples.append({"task": t, "query": ex["query"], "choices": " | ".join(ex["choices"]),
                         "answer": ex["choices"][ex["label"]]})
    return pd.DataFrame(rows), pd.DataFrame(examples)


# --------------------------------------------------------------------------- 3. zero-shot accuracy
def evaluated_tasks(p) -> list[str]:
    """Every task notebook 00 scores zero-shot: fine-tune tasks, then the other zero-shot tasks."""
    return list(p.data.finetune_tasks) + [t for t in p.data.zeroshot_tasks if t not in p.data.finetune_tasks]


def zeroshot_table(p, tasks: pd.DataFrame, zs: dict[str, float]) -> pd.DataFrame:
    """Zero-shot accuracy per task; for generated data also the items scored, chance, the z-score
    against chance and whether it exceeds Z_ABOVE_CHANCE."""
    acc = pd.DataFrame({"task": list(zs), "zeroshot_acc": list(zs.values())})
    if p.data.source == "generated":
        acc = tasks[["task", "kind", "stands_for", "n_test", "chance"]].merge(acc, on="task")
        n = acc["n_test"] if p.data.zeroshot_limit is None else np.minimum(acc["n_test"], p.data.zeroshot_limit)
        acc["n_scored"] = n
        acc["z_vs_chance"] = (acc["zeroshot_acc"] - acc["chance"]) / np.sqrt(acc["chance"] * (1 - acc["chance"]) / n)
        acc["above_chance"] = acc["z_vs_chance"] > Z_ABOVE_CHANCE
    return acc


def zeroshot_verdict(acc: pd.DataFrame) -> list[str]:
    """Which zero-shot stand-ins are answered above chance, and how the fine-tune ones start."""
    if "above_chance" not in acc:
        return []
    zsk, ftk = acc[acc.kind == "zeroshot"], acc[acc.kind == "finetune"]
    return [f"VERDICT: {int(zsk.above_chance.sum())}/{len(zsk)} zero-shot stand-ins above chance (z > 2): "
            f"{', '.join(zsk[zsk.above_chance].task)}; not: {', '.join(zsk[~zsk.above_chance].task) or 'none'}",
            f"         fine-tune stand-ins zero-shot: mean acc - chance = {(ftk.zeroshot_acc - ftk.chance).mean():+.3f}; "
            f"above chance: {', '.join(ftk[ftk.above_chance].task) or 'none'}"]


def perplexity_table(p, model, tokenizer) -> pd.DataFrame:
    """Held-out perplexity at data.calibration_seq_len, and the number of passages of each text split."""
    texts = data.texts(p, "heldout")
    ppl = evaluation.perplexity(model, tokenizer, texts, seq_len=p.data.calibration_seq_len)
    return pd.DataFrame([{"heldout_passages": len(texts), "seq_len": p.data.calibration_seq_len,
                          "perplexity": ppl, "calibration_passages": len(data.texts(p, "calibration"))}])


# --------------------------------------------------------------------------- 4. learnability
def finetune_full(model, batches: list[dict], steps: int, lr: float = 1e-3, seed: int = 0,
                  progress: bool = True) -> list[float]:
    """Plain full fine-tuning (AdamW, constant lr) for `steps` steps cycling over shuffled
    `batches` (e.g. mdlcap.default.batches.task_batches): the learnability sanity check of notebook 00,
    not the study's LoRA fine-tuning (mdlcap.interventions.finetune). Returns the loss per step."""
    from tqdm.auto import tqdm
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if not batches:
        raise ValueError("batches: must be a non-empty list")
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    order, losses = [], []
    model.train()
    for _ in tqdm(range(steps), desc="fine-tune", disable=not progress):
        if not order:
            order = list(rng.permutation(len(batches)))
        b = {k: v.to(dev) for k, v in batches[order.pop()].items()}
        loss = model(**b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def sanity_table(acc: pd.DataFrame, finetuned: dict[str, float], steps: int) -> pd.DataFrame:
    """Fine-tune stand-ins before and after the sanity fine-tune: gain, and learned when the tuned
    accuracy is Z_ABOVE_CHANCE standard errors above chance."""
    learn = acc[acc.kind == "finetune"][["task", "stands_for", "n_scored", "chance", "zeroshot_acc"]].copy()
    learn["finetuned_acc"] = learn["task"].map(finetuned)
    se = np.sqrt(learn["chance"] * (1 - learn["chance"]) / learn["n_scored"])
    learn["gain_over_zeroshot"] = learn["finetuned_acc"] - learn["zeroshot_acc"]
    learn["learned"] = (learn["finetuned_acc"] - learn["chance"]) / se > Z_ABOVE_CHANCE
    learn["ft_steps"] = steps
    return learn


def finetune_sanity(p, model, tokenizer, acc: pd.DataFrame, smoke: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """A copy of the model fully fine-tuned (AdamW, lr 1e-3, batches of 16) on the mixed, shuffled
    training splits of the fine-tune tasks, for 2/3 of an epoch (10 steps at smoke size), then
    scored by lm-eval: (sanity_table, lines to print)."""
    rng = np.random.default_rng(p.run.seed)
    train = [ex for t in p.data.finetune_tasks for ex in data.load_task(p, t, "train")]
    train = [train[k] for k in rng.permutation(len(train))]
    batches = data.task_batches(tokenizer, train, batch_size=16, max_len=model.config.max_position_embeddings)
    steps = 10 if smoke else 2 * len(batches) // 3
    tuned = copy.deepcopy(model)
    t0 = time.time()
    losses = finetune_full(tuned, batches, steps=steps, lr=1e-3, seed=p.run.seed)
    seconds = time.time() - t0
    ft = evaluation.lm_eval_accuracy(tuned, tokenizer, p, list(p.data.finetune_tasks), limit=p.data.zeroshot_limit)
    del tuned
    learn = sanity_table(acc, ft, steps)
    return learn, [f"full fine-tune: {steps} steps of 16 ({seconds:.0f} s), loss {np.mean(losses[:5]):.3f} -> "
                   f"{np.mean(losses[-5:]):.3f}",
                   f"VERDICT: {int(learn.learned.sum())}/{len(learn)} fine-tuning stand-ins learned above chance "
                   f"(z > 2) after a short full fine-tune; mean gain over zero-shot {learn.gain_over_zeroshot.mean():+.3f}"]
