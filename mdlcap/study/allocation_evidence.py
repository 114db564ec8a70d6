"""Notebook 03's evidence: did every cell learn, and what the paired intervals say about the methods.

    learning = learning_table(results, tasks_csv, sanity_csv)   per (task, method): above chance,
                                                                 below the ceiling, held-out loss plateaued,
                                                                 vs full fine-tune
    problems = design_problems(learning, results, min_seeds)    what the design fails (empty: none)
    iv = intervals(results, tasks, paper_order)                 MDL − baseline, per task and averaged (points)
    curves = loss_curves(results)                               mean training and held-out loss (the figure)

The comparisons are `paper.ALLOCATION_COMPARISONS`; each is paired by seed (same adapter
initialisation and batch order for both methods) and by test item (same questions), and its 95 %
interval comes from `stats.paired_interval` (scipy.stats.bootstrap, BCa, seeds and items
resampled independently). The task average pairs item i of every task into one column (all
tasks score the same number of test items), which resamples items within each task: the
stratified bootstrap of a mean over tasks. The rows are written in the one intervals schema
(`stats.interval_row`), the paper's difference for the matched task (Table 4, Mistral-7B) as
the claim, so every verdict says whether that claim lies inside, above or below the interval
and whether the design could have detected it (the minimum detectable effect).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mdlcap.interventions.finetune import held_out_plateau
from mdlcap.study.paper import (ALLOCATION_COMPARISONS, ALLOCATION_METRIC, AVERAGE_TASK, PAPER_TABLE4, PAPER_TASKS,
                                THRESHOLDS)
from mdlcap.study.stats import interval_frame, interval_row, paired_interval

CEILING = THRESHOLDS["allocation_ceiling"]
PLATEAU = THRESHOLDS["allocation_plateau"]
Z_CHANCE = THRESHOLDS["above_chance_z"]


# ----------------------------------------------------------------------------- did the cells learn?
def learning_table(results: pd.DataFrame, tasks_csv: pd.DataFrame, sanity_csv: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Per (task, method): mean and lowest accuracy over seeds, chance (notebook 00's tasks.csv),
    the z-score of the lowest seed against chance, whether every seed is above chance (z >
    THRESHOLDS["above_chance_z"]) and below the ceiling (accuracy < THRESHOLDS["allocation_ceiling"]),
    the largest `held_out_plateau` over seeds (the share of the held-out loss's improvement after its
    first evaluation made in the last quarter of its evaluations: 0 when its best came earlier; NaN,
    and not plateaued, for a seed whose curve cannot be judged) and whether every seed plateaued
    (<= THRESHOLDS["allocation_plateau"]), the held-out loss at its start, minimum and end (means over
    seeds), and the mean accuracy as a fraction of notebook 00's full fine-tune of the same task
    (when given)."""
    chance = tasks_csv.set_index("task")["chance"]
    full = sanity_csv.set_index("task")["finetuned_acc"] if sanity_csv is not None else pd.Series(dtype=float)
    rows = []
    for (task, method), g in results.groupby(["task", "method"], sort=False):
        n = np.array([len(i) for i in g["items"]], dtype=float)
        c = float(chance[task])
        lo = float(g["accuracy"].min())
        z = (lo - c) / math.sqrt(c * (1 - c) / n.min())
        late = [held_out_plateau(x) for x in g["val_losses"]]
        plateau = float("nan") if any(math.isnan(v) for v in late) else float(max(late))
        val = np.stack([np.asarray(x, dtype=float) for x in g["val_losses"]])
        rows.append({"task": task, "method": method, "n_seeds": len(g), "n_items": int(n.min()),
                     "accuracy_mean": float(g["accuracy"].mean()), "accuracy_min": lo,
                     "accuracy_max": float(g["accuracy"].max()), "chance": c, "z_min_vs_chance": z,
                     "above_chance": bool(z > Z_CHANCE), "below_ceiling": bool(g["accuracy"].max() < CEILING),
                     "steps": int(g["steps"].max()), "val_loss_start": float(val[:, 0].mean()),
                     "val_loss_min": float(val.min(axis=1).mean()), "val_loss_end": float(val[:, -1].mean()),
                     "late_improvement_max": plateau, "plateaued": bool(plateau <= PLATEAU),
                     "full_finetune_acc": float(full.get(task, float("nan"))),
                     "fraction_of_full_finetune": float(g["accuracy"].mean() / full[task]) if task in full else float("nan")})
    return pd.DataFrame(rows)


def design_problems(learning: pd.DataFrame, results: pd.DataFrame, min_seeds: int) -> list[str]:
    """The ways this run's design falls short of one that can rank methods (empty list: none):
    fewer than `min_seeds` seeds shared by every method, a cell at chance or at the ceiling, a cell
    whose held-out loss had not plateaued."""
    out = []
    seeds = results.groupby(["task", "method"])["seed"].apply(frozenset)
    if seeds.nunique() != 1:
        out.append("methods were not run on the same seeds")
    if min(len(s) for s in seeds) < min_seeds:
        out.append(f"fewer than {min_seeds} seeds per method ({min(len(s) for s in seeds)})")
    for label, col in (("at chance (some seed)", "above_chance"), ("at the ceiling (some seed)", "below_ceiling"),
                       ("not plateaued (some seed)", "plateaued")):
        bad = learning[~learning[col]]
        if len(bad):
            out.append(f"{label}: " + ", ".join(f"{t}/{m}" for t, m in zip(bad.task, bad.method)))
    return out


def loss_curves(results: pd.DataFrame, smooth: int = 5) -> pd.DataFrame:
    """task, method, split, step, loss: the training loss per step averaged over seeds, then a
    centred rolling mean over `smooth` steps (batch-to-batch noise hides the trend otherwise), and
    the held-out loss at its evaluation steps averaged over seeds (split "validation")."""
    rows = []
    for (task, method), g in results.groupby(["task", "method"], sort=False):
        L = np.mean(np.stack([np.asarray(x, dtype=float) for x in g["losses"]]), axis=0)
        L = pd.Series(L).rolling(smooth, center=True, min_periods=1).mean().to_numpy()
        rows += [{"task": task, "method": method, "split": "train", "step": i + 1, "loss": float(v)}
                 for i, v in enumerate(L)]
        V = np.mean(np.stack([np.asarray(x, dtype=float) for x in g["val_losses"]]), axis=0)
        rows += [{"task": task, "method": method, "split": "validation", "step": int(t), "loss": float(v)}
                 for t, v in zip(g["val_steps"].iloc[0], V)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- paired intervals
def item_matrix(results: pd.DataFrame, task: str, method: str, seeds) -> np.ndarray:
    """seeds x items correctness (0/1) of one method on one task, seeds in the order given."""
    sel = results[(results["task"] == task) & (results["method"] == method)].set_index("seed")["items"]
    missing = [s for s in seeds if s not in sel.index]
    if missing:
        raise ValueError(f"results: {task}/{method} lacks seeds {missing}")
    return np.array([sel.loc[s] for s in seeds], dtype=float)


def paired_points(results: pd.DataFrame, task: str, base: str, other: str, seeds) -> np.ndarray:
    """seeds x items differences other − base in accuracy points (100 × (correct_other − correct_base))."""
    a, b = item_matrix(results, task, base, seeds), item_matrix(results, task, other, seeds)
    if a.shape != b.shape:
        raise ValueError(f"results: {task}: {base} and {other} scored different items ({a.shape} vs {b.shape})")
    return 100.0 * (b - a)


def accuracy_and_loss_intervals(results: pd.DataFrame, task: str, comparisons, *,
                                n_resamples: int = 4999) -> list[dict]:
    """`interval_row`s of every (base, other) in `comparisons` present in `results` (one task; its
    method, seed, items and heldout_loss columns): "other − base" in accuracy points over seeds and
    test items, and in held-out loss over seeds (lower is better, so "negative" favours other). No
    paper number: the verdict says whether the interval excludes 0 (notebooks 07 and 08)."""
    seeds, methods = sorted(set(results.seed)), set(results.method)
    loss = results.set_index(["method", "seed"])["heldout_loss"]
    rows = []
    for base, other in comparisons:
        if base not in methods or other not in methods:
            continue
        name = f"{other} - {base}"
        d = paired_points(results, task, base, other, seeds)
        rows.append(interval_row(name, task, "accuracy_points", paired_interval(d, n_resamples=n_resamples), None))
        dl = np.array([[loss[(other, s)] - loss[(base, s)]] for s in seeds])
        rows.append(interval_row(name, task, "heldout_loss", paired_interval(dl, n_resamples=n_resamples), None))
    return rows


def paper_task_index(task: str, order) -> int | None:
    """Position of our `task` in the paper's Tables 4-5 columns (PAPER_TASKS, then the Average):
    tasks are matched by their position in `order` (the params' data.finetune_tasks: cola, mrpc,
    csqa, obqa, sciq <-> CoLA, MRPC, CommonsenseQA, OpenBookQA, ScienceQA); None when unmatched."""
    if task == AVERAGE_TASK:
        return len(PAPER_TASKS)
    order = list(order)
    return order.index(task) if task in order and order.index(task) < len(PAPER_TASKS) else None


def paper_claim(comparison: str, task: str, tasks, paper_order=None) -> float | None:
    """The paper's difference (Table 4, Mistral-7B) for `comparison` on our `task` matched by
    `paper_task_index` in `paper_order` (default `tasks`), or on the Average; None where the paper
    makes no such claim (MDL − uniform, an unmatched task)."""
    pool = {"MDL - LayerIF (All)": "All", "MDL - LayerIF (+ve)": "+ve"}.get(comparison)
    i = paper_task_index(task, paper_order if paper_order is not None else tasks)
    if pool is None or i is None:
        return None
    return round(PAPER_TABLE4[(pool, "MDL")][i] - PAPER_TABLE4[(pool, "LayerIF")][i], 2)


def intervals(results: pd.DataFrame, tasks, paper_order=None, *, confidence: float = 0.95,
              n_resamples: int = 4999) -> pd.DataFrame:
    """Every comparison of `paper.ALLOCATION_COMPARISONS` whose two methods were run: one row per
    task where both ran and one for the Average (mean over those tasks; `average_tasks` says
    which), in the intervals schema; metric `paper.ALLOCATION_METRIC` (points)."""
    rows = []
    have = set(results["method"])
    for comp, (base, other) in ALLOCATION_COMPARISONS.items():
        if not {base, other} <= have:
            continue
        seeds = sorted(set(results[results.method == base].seed) & set(results[results.method == other].seed))
        both = [t for t in tasks if {base, other} <= set(results[results.task == t].method)]
        if not both:
            continue
        per_task = {t: paired_points(results, t, base, other, seeds) for t in both}
        for t, d in per_task.items():
            res = paired_interval(d, confidence=confidence, n_resamples=n_resamples)
            rows.append(interval_row(comp, t, ALLOCATION_METRIC, res, paper_claim(comp, t, tasks, paper_order)))
        n = {d.shape[1] for d in per_task.values()}
        if len(n) != 1:
            raise ValueError(f"tasks: the task average pairs items across tasks and needs equal test sizes, got {n}")
        avg = np.mean(np.stack(list(per_task.values())), axis=0)
        res = paired_interval(avg, confidence=confidence, n_resamples=n_resamples)
        rows.append(interval_row(comp, AVERAGE_TASK, ALLOCATION_METRIC, res,
                                 paper_claim(comp, AVERAGE_TASK, tasks, paper_order)))
    return interval_frame(rows)


def average_tasks(iv: pd.DataFrame) -> dict[str, list[str]]:
    """{comparison: the tasks its Average row averages} (those with a per-task row)."""
    return {c: [t for t in g.task if t != AVERAGE_TASK] for c, g in iv.groupby("comparison", sort=False)}


def verdict_lines(iv: pd.DataFrame) -> list[str]:
    """One line per comparison on the task average: difference, interval, MDE, the paper's claim
    and the verdict read from the interval."""
    out, over = [], average_tasks(iv)
    for r in iv[iv["task"] == AVERAGE_TASK].itertuples(index=False):
        claim = "no paper claim" if math.isnan(r.claim) else f"paper (Mistral-7B) {r.claim:+.2f}"
        out.append(f"{r.comparison}: {r.diff:+.2f} points, {r.confidence:.0%} CI [{r.ci_low:+.2f}, {r.ci_high:+.2f}] "
                   f"over {', '.join(over[r.comparison])} ({r.n_seeds} seeds x {r.n_items} items per task; "
                   f"MDE {r.mde:.2f}); {claim} -> {r.verdict}")
    return out
