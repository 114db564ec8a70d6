"""Notebook 03's drivers: every table it shows, from allocations to the verdict against the paper.

    allocation_table(params, scores, L, tasks, alphas)   counts of every method, long format
    budget_check(scores, tasks, A)                       does the literal Eq-11 program spend the budget?
    allocated_methods / counts_wide / identical_pools    which methods have counts; counts by layer;
                                                         (task, LayerIF, MDL) pairs with the same counts
    finetune_cells(...)                                  one cached fine-tune per (task, method, seed),
                                                         over run.workers processes (study.cells)
    summary / summary_wide / paper_format_table          accuracy mean ± std over seeds (Table 4 layout)
    paired_differences / paper_comparison                MDL − LayerIF beside the paper's Tables 4–5
    rank_experiment / rank_table                         capacity = LoRA rank (peft rank_pattern)

Did the cells learn, and the verdicts read from paired intervals: `mdlcap.study.allocation_evidence`.

The allocation methods themselves are `mdlcap.interventions.allocation`; the paper's numbers
are `mdlcap.study.paper`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mdlcap.interventions import allocation as ab
from mdlcap.interventions import finetune as ft
from mdlcap.study.cells import Job, run_cells
from mdlcap.study.allocation_evidence import paper_task_index
from mdlcap.study.paper import AVERAGE_TASK, PAPER_TABLE4, PAPER_TABLE5, PAPER_TASKS
from mdlcap.study.stats import per_seed_average

# the per-cell lists of a fine-tuning record (counts, items, curves): kept in the results frame for
# the evidence tables, left out of the CSV tables
LIST_COLUMNS = ["counts", "ranks", "items", "losses", "val_steps", "val_losses"]

# Table 4's score pools: (LayerIF's heuristic, Algorithm 1) on the same influence scores
POOLS = {"All": ("layerif_all", "mdl_layerif_all"), "+ve": ("layerif_pos", "mdl_layerif_pos")}
BUDGET_CHECK_SCORES = ("layerif_all", "layerif_pos", "cg_ggn")


# --------------------------------------------------------------------------- allocations
def allocation_table(params, scores, n_layers: int, tasks, alphas=None) -> pd.DataFrame:
    """task, method, layer, experts for every method of `allocation.methods` that `scores` supports."""
    rows = []
    for task in tasks:
        for method, counts in ft.allocations_for(params, scores, n_layers, task, alphas=alphas).items():
            rows += [{"task": task, "method": method, "layer": k, "experts": int(c)} for k, c in enumerate(counts)]
    return pd.DataFrame(rows)


def budget_check(scores, tasks, A) -> pd.DataFrame:
    """Per task and score method: how many experts the literal program (Eq 11, the paper's α, β, s)
    wants unconstrained (Eq 12 at μ = 0), how many its integer solution spends, and whether those
    counts equal the budget-spending `mdl` ones."""
    rows = []
    for task in tasks:
        for sm in BUDGET_CHECK_SCORES:
            q = ab.mdl_scores(scores, task, sm)
            if q is None:
                continue
            lit = ab.mdl_literal(q, A.total_experts, alpha=A.alpha, beta=A.beta, gamma=A.gamma,
                                 budget_scaling=A.budget_scaling, n_min=A.n_min)
            rows.append({"task": task, "scores": sm, "wanted_continuous": ab.literal_unconstrained_total(
                             q, alpha=A.alpha, beta=A.beta, gamma=A.gamma, budget_scaling=A.budget_scaling),
                         "literal_integer_total": int(lit.sum()), "budget": A.total_experts,
                         "same_as_spent": bool(np.array_equal(lit, ab.mdl(q, A.total_experts, gamma=A.gamma,
                                                                          n_min=A.n_min)))})
    return pd.DataFrame(rows)


def allocated_methods(alloc: pd.DataFrame, methods) -> tuple[list[str], list[str]]:
    """(methods of `methods` that have an allocation, in that order; the sorted rest)."""
    have = [m for m in methods if m in set(alloc["method"])]
    return have, sorted(set(methods) - set(have))


def counts_wide(alloc: pd.DataFrame) -> pd.DataFrame:
    """(task, method) x layer table of the counts."""
    return alloc.pivot_table(index=["task", "method"], columns="layer", values="experts")


def counts_of(alloc: pd.DataFrame, task: str, method: str, column: str = "experts") -> list[int]:
    """One method's per-layer counts for one task, layer order."""
    return alloc[(alloc.task == task) & (alloc.method == method)].sort_values("layer")[column].tolist()


def identical_pools(alloc: pd.DataFrame, tasks, methods) -> list[tuple[str, str, str]]:
    """(task, LayerIF method, MDL method) where both are run and give the same counts."""
    return [(t, a_, b_) for t in tasks for a_, b_ in POOLS.values()
            if {a_, b_} <= set(methods) and np.array_equal(
                alloc[(alloc.task == t) & (alloc.method == a_)].experts.to_numpy(),
                alloc[(alloc.task == t) & (alloc.method == b_)].experts.to_numpy())]


# --------------------------------------------------------------------------- fine-tuning
def finetune_cells(params, alloc: pd.DataFrame, tasks, methods, *, base=None, tok=None, accelerator=None,
                   workers: int = 1, desc: str | None = "fine-tune cells") -> pd.DataFrame:
    """`finetune.cached_cell` for every (task, method, seed), over `workers` processes
    (`mdlcap.study.cells.run_cells`; methods with identical counts share one run); one row per
    cell in (task, method, seed) order, with the per-item correctness (`items`) and per-step
    losses (`losses`) the evidence tables read."""
    have = set(zip(alloc["task"], alloc["method"]))       # a method without counts on a task is left out
    cells = [(t, m, s) for t in tasks for m in methods if (t, m) in have for s in params.allocation.seeds]
    jobs = {c: Job(c[0], int(c[2]), counts=tuple(counts_of(alloc, c[0], c[1]))) for c in cells}
    recs = run_cells(params, list(jobs.values()), workers=workers, base=base, tok=tok, accelerator=accelerator,
                     desc=desc)
    return pd.DataFrame([{**recs[j.key(params)], "method": c[1]} for c, j in jobs.items()])


def training_overview(results: pd.DataFrame) -> pd.DataFrame:
    """Mean first/last loss and trainable parameters per method."""
    return results.groupby("method")[["loss_first", "loss_last", "trainable_params"]].mean().round(4)


# --------------------------------------------------------------------------- result tables
def summary(results, tasks):
    """mean, std (over seeds, ddof=1; NaN for one seed) and n per (task, method), in %, with an
    'Average' task whose spread is that of the per-seed task averages."""
    per = results.groupby(["task", "method"])["accuracy"].agg(["mean", "std", "count"]).reset_index()
    avg = per_seed_average(results).groupby("method")["accuracy"].agg(["mean", "std", "count"]).reset_index()
    avg.insert(0, "task", "Average")
    out = pd.concat([per, avg], ignore_index=True)
    out[["mean", "std"]] *= 100.0
    order = {t: i for i, t in enumerate(list(tasks) + ["Average"])}
    return out.sort_values(["task", "method"], key=lambda s: s.map(order) if s.name == "task" else s) \
              .rename(columns={"count": "n_seeds"}).reset_index(drop=True)


def summary_wide(summ: pd.DataFrame, tasks, methods) -> pd.DataFrame:
    """`summary` as tasks + Average x methods, cells 'mean ± std'."""
    return summ.assign(cell=summ["mean"].map("{:.2f}".format) + " ± " + summ["std"].map("{:.2f}".format)) \
               .pivot(index="task", columns="method", values="cell").reindex(list(tasks) + ["Average"])[list(methods)]


def paper_format_table(results, tasks):
    """Table 4's layout on our runs: rows = tasks + Average, columns = (pool, LayerIF | MDL) with
    'mean ± std' over seeds (accuracy in %). Pools without both methods are left out."""
    s = summary(results, tasks)
    cols = {}
    for pool, (lif, mdl_m) in POOLS.items():
        for label, m in (("LayerIF", lif), ("MDL", mdl_m)):
            sel = s[s["method"] == m].set_index("task")
            if sel.empty:
                break
            cols[(pool, label)] = [f"{sel.loc[t, 'mean']:.2f} ± {sel.loc[t, 'std']:.2f}"
                                   if t in sel.index else "" for t in list(tasks) + ["Average"]]
    df = pd.DataFrame(cols, index=list(tasks) + ["Average"])
    df.index.name = "Dataset"
    return df


def paired_differences(results):
    """MDL - LayerIF accuracy (points) per pool, task and seed, plus an 'Average' task per seed."""
    rows = []
    for pool, (lif, mdl_m) in POOLS.items():
        a = results[results["method"] == lif].set_index(["task", "seed"])["accuracy"]
        b = results[results["method"] == mdl_m].set_index(["task", "seed"])["accuracy"]
        both = a.index.intersection(b.index)
        if len(both) == 0:
            continue
        d = ((b.loc[both] - a.loc[both]) * 100.0).rename("diff").reset_index()
        d.insert(0, "pool", pool)
        rows.append(d)
        n_tasks = d["task"].nunique()
        avg = d.groupby("seed")["diff"].agg(["mean", "count"]).reset_index()
        avg = avg[avg["count"] == n_tasks]
        rows.append(pd.DataFrame({"pool": pool, "task": "Average", "seed": avg["seed"], "diff": avg["mean"]}))
    if not rows:
        return pd.DataFrame(columns=["pool", "task", "seed", "diff"])
    return pd.concat(rows, ignore_index=True)


def paper_comparison(results, tasks, paper_order=None):
    """Ours beside the paper: per pool and task, our LayerIF / MDL mean accuracy (%), the mean and
    seed-std of the paired difference, then the paper's Mistral-7B (Table 4) and, for +ve, Gemma-7B
    (Table 5) values and differences. Our tasks are matched to the paper's by their position in
    `paper_order` (default `tasks`; the params' data.finetune_tasks: cola, mrpc, csqa, obqa, sciq
    <-> CoLA, MRPC, CommonsenseQA, OpenBookQA, ScienceQA)."""
    s = summary(results, tasks)
    d = paired_differences(results)
    names = list(tasks) + [AVERAGE_TASK]
    order = paper_order if paper_order is not None else tasks
    paper_idx = {t: paper_task_index(t, order) for t in names}
    rows = []
    for pool, (lif, mdl_m) in POOLS.items():
        a, b = s[s["method"] == lif].set_index("task"), s[s["method"] == mdl_m].set_index("task")
        if a.empty or b.empty:
            continue
        for t in names:
            pi = paper_idx[t]
            dd = d[(d["pool"] == pool) & (d["task"] == t)]["diff"]
            row = {"pool": pool, "task": t,
                   "paper_task": (list(PAPER_TASKS) + ["Average"])[pi] if pi is not None else "",
                   "ours_LayerIF": a["mean"].get(t, float("nan")), "ours_MDL": b["mean"].get(t, float("nan")),
                   "ours_diff": float(dd.mean()) if len(dd) else float("nan"),
                   "ours_diff_std": float(dd.std(ddof=1)) if len(dd) > 1 else float("nan")}
            for model, table in (("mistral", PAPER_TABLE4), ("gemma", PAPER_TABLE5)):
                lo, hi = table.get((pool, "LayerIF")), table.get((pool, "MDL"))
                ok = lo is not None and pi is not None
                row[f"{model}_LayerIF"] = lo[pi] if ok else float("nan")
                row[f"{model}_MDL"] = hi[pi] if ok else float("nan")
                row[f"{model}_diff"] = round(hi[pi] - lo[pi], 2) if ok else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- capacity = LoRA rank
def rank_allocation(scores, task: str, method: str, n_layers: int, A):
    """Per-layer LoRA ranks, lora_r x L in all, at least 1 each: uniform or Algorithm 1 on the q of
    `mdl_<score method>`; None when those scores are absent."""
    R = A.lora_r * n_layers
    if method == "uniform":
        return ab.uniform(n_layers, R)
    q = ab.mdl_scores(scores, task, method[4:])
    return None if q is None else ab.mdl(q, R, gamma=A.gamma, n_min=1)


def rank_experiment(params, scores, n_layers: int, tasks, *, base=None, tok=None, accelerator=None,
                    workers: int = 1):
    """(rank allocations, results): one cached fine-tune per (task, rank method, seed)."""
    A = params.allocation
    rank_alloc, cells = [], {}
    for task in tasks:
        for method in A.rank_methods:
            ranks = rank_allocation(scores, task, method, n_layers, A)
            if ranks is None:
                continue
            rank_alloc += [{"task": task, "method": method, "layer": k, "rank": int(r)} for k, r in enumerate(ranks)]
            for seed in A.seeds:
                cells[(task, method, seed)] = Job(task, int(seed), ranks=tuple(int(r) for r in ranks))
    recs = run_cells(params, list(cells.values()), workers=workers, base=base, tok=tok, accelerator=accelerator,
                     desc="rank cells")
    return pd.DataFrame(rank_alloc), pd.DataFrame([{**recs[j.key(params)], "method": c[1]} for c, j in cells.items()])


def rank_table(rank_results: pd.DataFrame, tasks) -> pd.DataFrame:
    """Mean accuracy over seeds (%) per task x rank method, plus the task Average row."""
    rt = rank_results.pivot_table(index="task", columns="method", values="accuracy", aggfunc="mean").reindex(tasks) * 100
    rt.loc["Average"] = rt.mean()
    return rt


def rank_gains(rt: pd.DataFrame) -> dict[str, float]:
    """Task-average accuracy of each non-uniform rank method minus uniform ranks (points)."""
    return {m: rt.loc["Average", m] - rt.loc["Average", "uniform"] for m in rt.columns if m != "uniform"}
