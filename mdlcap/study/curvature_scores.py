"""Notebook 02's drivers and tables (METHOD.md §1): score every task with every method into
scores.csv, compare the methods' rankings, and the cost of each method in gradient passes.

    results = score_tasks(model, tok, params, tasks, methods)   # {(task, method): Gains}, cached
    scores = scores_frame(results)                              # scores.csv (mdlcap.scores.table)

CG solves and their convergence rule: study.cg_solves; the validation of the rankings against
measured one-block decreases, with intervals: study.validation; Appendix C: study.appendix_c.

Every table the notebook shows is one function here; the notebook only calls and plots.
"""
from __future__ import annotations

import importlib.util
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats

from mdlcap.models import fingerprint_batches, fingerprint_model
from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import Gains, resolve_blocks
from mdlcap.scores.registry import SCORE_METHODS, cached_gains, layer_gains
from mdlcap.study.cg_solves import block_converged, cg_gains, solve_kwargs
from mdlcap.study.measure import measure
from mdlcap.study import layerif

LAYERIF_POOLS = ("layerif_all", "layerif_pos")
DIAGNOSTIC_KEYS = ("iterations", "rel_residual", "preconditioner", "damping_requested", "damping_needed",
                   "damping_used", "damping_raises", "ritz_min_H", "ritz_max_H", "rayleigh_min_H",
                   "ritz_min_preconditioned", "ritz_max_preconditioned", "damping_needed_lower_bound", "grad_norm2")
COST_KEYS = ("seconds", "grad_pass_seconds", "peak_bytes", "n_batches", "n_sequences")


# ----------------------------------------------------------------------------- batches and the cost unit
def scoring_batches(params, tokenizer, task: str, split: str = "train", n_batches: int | None = None,
                    batch_size: int | None = None) -> list[dict]:
    """Batches a task is scored on: fine-tune tasks from `mdlcap.default.data.task_batches` (loss on the gold
    answer), "calibration" from the calibration text (split "train") or the held-out text (other
    splits) in windows of min(scoring.max_len, data.calibration_seq_len) tokens."""
    from mdlcap.default import data as D
    sp = params.scoring
    n_batches = n_batches or sp.n_batches
    batch_size = batch_size or sp.batch_size
    if task == "calibration":
        texts = D.texts(params, "calibration" if split == "train" else "heldout")
        seq = min(sp.max_len, params.data.calibration_seq_len)
        out = D.lm_batches(tokenizer, texts, seq, batch_size)
    else:
        ex = D.load_task(params, task, split)[: n_batches * batch_size]
        out = D.task_batches(tokenizer, ex, batch_size, max_len=sp.max_len)
    if not out:
        raise ValueError(f"task: no {split} data for '{task}'")
    return out[:n_batches]


def take_samples(batches, n: int) -> list[dict]:
    """The first n samples of a list of dict batches (the last batch cut short)."""
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        k = min(left, ag.batch_size_of(b))
        out.append({key: (v[:k] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for key, v in b.items()})
        left -= k
    return out


def layerif_samples(params, tokenizer, task: str) -> layerif.LayerIFData:
    """What LayerIF is computed on (`mdlcap.study.layerif`): scoring.layerif_train / layerif_val
    samples, and the task's whole training split (scoring batches) to fine-tune its LoRA on.
    Unpacks as (train, validation)."""
    sp = params.scoring
    train = take_samples(scoring_batches(params, tokenizer, task, "train",
                                         n_batches=-(-sp.layerif_train // sp.batch_size)), sp.layerif_train)
    val = take_samples(scoring_batches(params, tokenizer, task, "validation",
                                       n_batches=-(-sp.layerif_val // sp.batch_size)), sp.layerif_val)
    fin = [] if task == "calibration" else scoring_batches(params, tokenizer, task, "train",
                                                           n_batches=-(-params.data.n_train // sp.batch_size))
    return layerif.with_lora_setup(params, task, train, val, fin or None)


def gradient_pass(model, batches, loss_fn=None) -> None:
    """One forward+backward over the batches w.r.t. all decoder-layer parameters (the cost unit)."""
    params = [p for ps in resolve_blocks(model, None).values() for p in ps] if loss_fn is None else \
        [p for p in model.parameters()]
    ag.block_gradients(model, batches, params, loss_fn)


# ----------------------------------------------------------------------------- §1 scores
def score_batches(model, sp, task: str, methods, batches, layerif_data=None, *, model_key: str | None = None,
                  use_cache: bool = True, progress: bool = True) -> dict[str, Gains]:
    """Scores of one task on given batches for the scores.csv methods asked (SCORE_METHODS), `sp`
    the params' scoring section. Each (task, method) is cached in the one cache (namespace
    "scores"): an interrupted run resumes. `.meta` holds the call's seconds, peak memory and the
    seconds of one gradient pass over the same data (the cost unit). `layerif_data`: the
    (train, validation) samples of LayerIF, needed when a layerif pool is asked."""
    unknown = [m for m in methods if m not in SCORE_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; allowed {list(SCORE_METHODS)}")
    model_key = model_key or fingerprint_model(model)
    blocks = None if sp.blocks == "layer" else sp.blocks
    out: dict[str, Gains] = {}
    unit_cache: dict[str, float] = {}

    def unit(bs):                                   # seconds of one gradient pass over bs
        k = fingerprint_batches(bs)
        if k not in unit_cache:
            gradient_pass(model, bs)                # warm-up
            unit_cache[k] = measure(lambda: gradient_pass(model, bs))[1]
        return unit_cache[k]

    def cached(method, bs, compute, extra=None):
        spec = {"model": model_key, "data": fingerprint_batches(bs), "task": task, "method": method,
                "damping": sp.damping, "blocks": sp.blocks, **(extra or {})}
        return cached_gains(spec, compute) if use_cache else compute()

    def timed(fn, bs):
        def run():
            res, dt, mem = measure(fn)
            res.meta.update({"seconds": dt, "peak_bytes": mem, "grad_pass_seconds": unit(bs),
                             "n_batches": len(bs), "n_sequences": sum(ag.batch_size_of(b) for b in bs)})
            return res
        return run

    for m in methods:
        if m in LAYERIF_POOLS:
            continue
        if m == "cg_hessian" and sp.hessian_tasks is not None and task not in sp.hessian_tasks:
            continue
        if m.startswith("cg_"):          # the same batches as every other method; λ by the damping policy
            fn = (lambda curv=m[3:]: cg_gains(model, batches, sp, curv, blocks=blocks, progress=progress))
            out[m] = cached(m, batches, timed(fn, batches),
                            {**solve_kwargs(sp), "policy": sp.cg_damping_policy,
                             "grid": None if sp.cg_damping_policy == "fixed" else list(sp.lambda_grid)})
        else:
            fn = (lambda m=m: layer_gains(model, batches, method=m, damping=sp.damping, blocks=blocks,
                                          group_size=sp.group_size, progress=progress))
            out[m] = cached(m, batches, timed(fn, batches))
    pools = [m for m in methods if m in LAYERIF_POOLS]
    if pools:
        if layerif_data is None:
            raise ValueError("layerif_data: the (train, validation) samples are needed for LayerIF")
        lif = layerif.as_layerif_data(layerif_data, sp)
        train, val = lif

        def compute_if():            # DataInf on the LoRA of a LoRA fine-tune of the task (mdlcap.study.layerif)
            (inf, lmeta), dt, mem = measure(lambda: layerif.layerif_influence(
                model, lif, damping_scale=sp.layerif_damping_scale, model_key=model_key, use_cache=use_cache,
                progress=progress))
            meta = {"seconds": dt, "peak_bytes": mem, "grad_pass_seconds": unit(train + val),
                    "n_batches": len(train) + len(val), "n_sequences": sum(ag.batch_size_of(b) for b in train + val),
                    **lmeta}
            both = {p: Gains(inf.layer_scores(p[8:]), {k: {"influence_sum": v} for k, v in inf.layer_sums(p[8:]).items()},
                             method=p, damping=0.0, meta=meta) for p in LAYERIF_POOLS}
            return Gains({}, {}, method="layerif", meta={"pools": {k: v.to_json() for k, v in both.items()}})

        res = cached("layerif", train + val, compute_if, {"damping_scale": sp.layerif_damping_scale,
                                                          "lora": lif.lora_spec()})
        for p in pools:
            out[p] = Gains.from_json(res.meta["pools"][p])
    return out


def score_task(model, tokenizer, params, task: str, methods, *, model_key: str | None = None,
               use_cache: bool = True, progress: bool = True) -> dict[str, Gains]:
    """`score_batches` on the task's scoring batches (and LayerIF samples when a pool is asked)."""
    batches = scoring_batches(params, tokenizer, task, "train")
    pools = any(m in LAYERIF_POOLS for m in methods)
    return score_batches(model, params.scoring, task, methods, batches,
                         layerif_samples(params, tokenizer, task) if pools else None,
                         model_key=model_key, use_cache=use_cache, progress=progress)


def score_tasks(model, tokenizer, params, tasks, methods, *, progress: bool = True) -> dict[tuple[str, str], Gains]:
    """{(task, method): Gains} for every task, in task then method order (scores.csv's order)."""
    model_key = fingerprint_model(model)
    results = {}
    for task in tasks:
        for m, g in score_task(model, tokenizer, params, task, methods, model_key=model_key,
                               progress=progress).items():
            results[(task, m)] = g
    return results


def scored_methods(scores: pd.DataFrame) -> list[str]:
    """The methods present in a scores table, in SCORE_METHODS order."""
    return [m for m in SCORE_METHODS if m in set(scores["method"])]


def q_table(scores: pd.DataFrame) -> pd.DataFrame:
    """q_k (Eq 10) with one row per (task, method) and one column per layer."""
    return scores.pivot_table(index=["task", "method"], columns="layer", values="q")


def cg_diagnostics(results: Mapping[tuple[str, str], Gains]) -> pd.DataFrame:
    """One row per (task, cg method, layer): ζ², `converged` (relative residual of the unpreconditioned
    system <= paper.THRESHOLDS["cg_rel_residual"], no negative curvature: study.cg_solves), CG's
    iterations, residual, preconditioner, damping (requested, needed by this block, used: one value
    per task and method) and Ritz values (of H without a preconditioner, else of M⁻¹(H + λI))."""
    rows = []
    for (task, m), g in results.items():
        if m.startswith("cg_"):
            for layer, (blk, d) in enumerate(g.diagnostics.items()):
                rows.append({"task": task, "method": m, "layer": layer, "zeta2": g[blk],
                             "converged": block_converged(d), **{k: d.get(k) for k in DIAGNOSTIC_KEYS}})
    return pd.DataFrame(rows)


def cg_summary(cg_diag: pd.DataFrame) -> pd.DataFrame:
    """Per cg method: blocks converged / solved, mean iterations, median and largest relative residual,
    the damping used (smallest and largest over tasks; within a task it is one value), the largest
    damping any block needed, the most negative Ritz value of H."""
    return cg_diag.groupby("method").agg(
        converged=("converged", "sum"), solves=("converged", "size"), iterations=("iterations", "mean"),
        rel_residual=("rel_residual", "median"), rel_residual_max=("rel_residual", "max"),
        damping_used_min=("damping_used", "min"), damping_used_max=("damping_used", "max"),
        damping_needed_max=("damping_needed", "max"), ritz_min_H=("ritz_min_H", "min"))


def damping_per_task(cg_diag: pd.DataFrame) -> pd.DataFrame:
    """Per (task, cg method): the one damping used for all its layers (asserted), how many layers needed
    that much (exact Hessian: the largest need sets it) and whether every layer converged."""
    rows = []
    for (task, m), g in cg_diag.groupby(["task", "method"], sort=False):
        used = g["damping_used"].unique()
        if len(used) != 1:
            raise ValueError(f"cg_diag: ({task}, {m}) used {len(used)} different dampings; one per task is the rule")
        rows.append({"task": task, "method": m, "damping_used": float(used[0]),
                     "damping_requested": float(g["damping_requested"].iloc[0]),
                     "damping_needed_min": float(g["damping_needed"].min()),
                     "damping_needed_max": float(g["damping_needed"].max()),
                     "layers_converged": int(g["converged"].sum()), "layers": len(g),
                     "converged": bool(g["converged"].all())})
    return pd.DataFrame(rows)


def rank_correlation(scores: pd.DataFrame, tasks, methods) -> pd.DataFrame:
    """Spearman ρ and Kendall τ over layers between every pair of methods, per task."""
    rows = []
    for task in tasks:
        sub = scores[scores["task"] == task].pivot(index="layer", columns="method", values="score")
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                if a in sub and b in sub:
                    rows.append({"task": task, "method_a": a, "method_b": b,
                                 "spearman": stats.spearmanr(sub[a], sub[b]).statistic,
                                 "kendall": stats.kendalltau(sub[a], sub[b]).statistic})
    return pd.DataFrame(rows)


def rank_matrix(rank_corr: pd.DataFrame, methods) -> pd.DataFrame:
    """Symmetric method × method matrix of the Spearman ρ averaged over tasks (1 on the diagonal)."""
    mean_rho = rank_corr.groupby(["method_a", "method_b"])["spearman"].mean()
    R = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
    for (a, b), v in mean_rho.items():
        R.loc[a, b] = R.loc[b, a] = v
    return R


# ----------------------------------------------------------------------------- §4 cost
def cost_table(results: Mapping[tuple[str, str], Gains]) -> pd.DataFrame:
    """One row per (task, method): seconds, seconds of one gradient pass, peak memory, data size,
    and the cost in gradient passes."""
    cost = pd.DataFrame([{"task": task, "method": m, **{k: g.meta.get(k) for k in COST_KEYS}}
                         for (task, m), g in results.items()])
    cost["grad_passes"] = cost["seconds"] / cost["grad_pass_seconds"]
    cost["peak_MB"] = cost["peak_bytes"] / 2**20
    return cost


def cost_per_method(cost: pd.DataFrame, methods) -> pd.DataFrame:
    """Per method (in `methods` order): median gradient passes, total seconds, largest peak memory."""
    return cost.groupby("method").agg(grad_passes_median=("grad_passes", "median"), seconds_total=("seconds", "sum"),
                                      peak_MB_max=("peak_MB", "max")).reindex([m for m in methods
                                                                               if m in set(cost["method"])])


def optional_libraries() -> dict[str, bool]:
    """Whether the libraries the notebook considered (curvlinops, kronfluence, BackPACK) are installed."""
    return {name: importlib.util.find_spec(name) is not None for name in ("curvlinops", "kronfluence", "backpack")}
