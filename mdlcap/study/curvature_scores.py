"""Notebook 02's drivers and tables (METHOD.md §1): score every task with every method into
scores.csv, validate the rankings against measured one-layer loss decreases, Appendix C's
λ-sweep (Eq 18–19) on the real model, and the cost of each method in gradient passes.

    results = score_tasks(model, tok, params, tasks, methods)   # {(task, method): Gains}, cached
    scores = scores_frame(results)                              # scores.csv (mdlcap.scores.table)
    verdict = zeta_vs_gradnorm(validation, by_lam)              # also what claims.py reads back

CG solves and their convergence rule: study.cg_solves; Appendix C: study.appendix_c.

Every table the notebook shows is one function here; the notebook only calls and plots.
"""
from __future__ import annotations

import importlib.util
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from mdlcap.models import fingerprint_batches, fingerprint_model
from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import Gains, resolve_blocks
from mdlcap.scores.newton import applied_step
from mdlcap.scores.registry import SCORE_METHODS, ZETA2_METHODS, cached_gains, layer_gains, score_method_name
from mdlcap.study.cg_solves import (NOT_ASSESSABLE, block_converged, cg_gains, converged, screened_solve,
                                    solve_kwargs)
from mdlcap.study.measure import measure
from mdlcap.study import layerif

LAYERIF_POOLS = ("layerif_all", "layerif_pos")
DIAGNOSTIC_KEYS = ("iterations", "rel_residual", "preconditioner", "damping_requested", "damping_needed",
                   "damping_used", "damping_raises", "ritz_min_H", "ritz_max_H", "rayleigh_min_H",
                   "ritz_min_preconditioned", "ritz_max_preconditioned", "damping_needed_lower_bound", "grad_norm2")
COST_KEYS = ("seconds", "grad_pass_seconds", "peak_bytes", "n_batches", "n_sequences")
TARGETS = ("newton_heldout_decrease", "finetune_heldout_decrease")


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


# ----------------------------------------------------------------------------- §2 validation
def single_layer_decreases(model, train_batches, heldout_batches, steps: Mapping[str, list], blocks=None, *,
                           finetune_steps: int = 10, lr: float = 1e-3, loss_fn=None, progress: bool = True):
    """Measured held-out loss decrease per block from (a) the damped Newton step d* of that block alone
    and (b) fine-tuning that block alone (Adam, `finetune_steps` steps cycling over train_batches).
    Parameters are restored after each measurement. Returns a DataFrame, one row per block."""
    blk = resolve_blocks(model, blocks)
    base = ag.mean_loss(model, heldout_batches, loss_fn)
    base_train = ag.mean_loss(model, train_batches, loss_fn)
    rows = []
    device = ag.model_device(model)
    for name, params in tqdm(blk.items(), desc="single-layer decreases", disable=ag.progress_off(progress)):
        row = {"block": name, "heldout_loss": base}
        if name in steps:
            with applied_step(params, steps[name]):
                row["newton_heldout_decrease"] = base - ag.mean_loss(model, heldout_batches, loss_fn)
                row["newton_train_decrease"] = base_train - ag.mean_loss(model, train_batches, loss_fn)
        saved = [p.detach().clone() for p in params]
        with ag.scoring_mode(model, params):
            opt = torch.optim.Adam(params, lr=lr)
            for t in range(finetune_steps):
                b = ag.to_device(train_batches[t % len(train_batches)], device)
                loss, _ = ag.call_loss(model, b, loss_fn)
                for p, g in zip(params, ag.grads(loss, params)):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
            row["finetune_heldout_decrease"] = base - ag.mean_loss(model, heldout_batches, loss_fn)
            with torch.no_grad():
                for p, s0 in zip(params, saved):
                    p.copy_(s0)
        rows.append(row)
    return pd.DataFrame(rows)


def validation_decreases(model, sp, train_batches, heldout_batches, *, damping: float | None = None,
                         progress: bool = True):
    """single_layer_decreases of every block of sp.blocks ("layer": decoder layers; "attn_mlp": the
    finer blocks): the Newton step from CG on the GGN over `train_batches` at `damping` (default
    sp.damping; pass the λ the task's cg_ggn score used, so that score and step agree) and
    fine-tuning on the same batches; a `layer` column (block index, as scores.csv's) first, and per
    block whether its Newton solve converged (`newton_converged`, study.cg_solves) with its
    residual: a Newton decrease from an unconverged solve is not the Newton step's."""
    blocks = None if sp.blocks == "layer" else sp.blocks
    lam = sp.damping if damping is None else float(damping)
    newton = layer_gains(model, train_batches, method="cg", curvature="ggn", damping=lam, blocks=blocks,
                         return_steps=True, progress=progress, **solve_kwargs(sp))
    dec = single_layer_decreases(model, train_batches, heldout_batches, newton.steps, blocks=blocks,
                                 finetune_steps=sp.validation_steps, lr=sp.validation_lr, progress=progress)
    dec.insert(0, "layer", range(len(dec)))
    dec["newton_damping"] = lam
    dec["newton_rel_residual"] = [newton.diagnostics[b]["rel_residual"] for b in dec["block"]]
    dec["newton_converged"] = [block_converged(newton.diagnostics[b]) for b in dec["block"]]
    return dec


def validation_rank_correlation(scores: pd.DataFrame, dec: pd.DataFrame, task: str, methods,
                                cg_diag: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ and Kendall τ over layers between each method's scores for `task` and the measured
    decreases (Newton step, one-layer fine-tuning), with `assessable`: False where the score comes
    from a CG solve that did not converge on every layer (`cg_diag`, the cg_diagnostics table), or
    the target is the Newton decrease and a Newton solve did not converge (dec's newton_converged).
    Unassessable rows keep their ρ for display; every verdict (zeta_vs_gradnorm) skips them."""
    rows = []
    sub = scores[scores["task"] == task]
    newton_ok = bool(dec["newton_converged"].all()) if "newton_converged" in dec else False
    for m in methods:
        s = sub[sub["method"] == m].sort_values("layer")["score"].to_numpy()
        if len(s) != len(dec):
            continue
        solved = cg_diag[(cg_diag["task"] == task) & (cg_diag["method"] == m)] if len(cg_diag) else cg_diag
        score_ok = bool(len(solved) == len(dec) and solved["converged"].all()) if m.startswith("cg_") else True
        for target in TARGETS:
            y = dec[target].to_numpy()
            ok = score_ok and (newton_ok or target != "newton_heldout_decrease")
            rows.append({"method": m, "target": target, "spearman": stats.spearmanr(s, y).statistic,
                         "kendall": stats.kendalltau(s, y).statistic, "assessable": ok})
    return pd.DataFrame(rows)


def damping_validation(model, sp, batches, y, *, known: Mapping[float, Gains] | None = None) -> pd.DataFrame:
    """For each λ of sp.lambda_grid and method cg_ggn / diag_fisher / kfac, all on the same `batches`
    and blocks (sp.blocks): Spearman ρ of the scores with the measured decreases `y`, beside the
    (λ-free) gradient norm's ρ; for cg_ggn its median and largest residual and `converged` (every
    block, study.cg_solves; a row with False enters no verdict). The λ is fixed per row (no policy).
    cg_ggn at λ is taken from `known` (λ -> Gains of the same solve, e.g. the task's score) when
    there, else screened (study.cg_solves.screened_solve): when the hardest block does not converge
    the row is unconverged with ρ = NaN ("not assessable") and the other blocks are not solved."""
    blocks = None if sp.blocks == "layer" else sp.blocks
    gn_rho = stats.spearmanr(layer_gains(model, batches, method="grad_norm", blocks=blocks,
                                         progress=False).values_array(), y).statistic
    rows, hard, known = [], None, dict(known or {})
    for lam in sp.lambda_grid:
        for m in ("cg", "diag_fisher", "kfac"):
            if m == "cg":
                g = known.get(float(lam))
                if g is None:
                    g, hard = screened_solve(model, batches, sp, "ggn", lam, blocks=blocks, hard=hard, progress=False)
            else:
                g = layer_gains(model, batches, method=m, damping=lam, blocks=blocks, progress=False)
            res = [d["rel_residual"] for d in g.diagnostics.values()] if m == "cg" and g is not None else [float("nan")]
            rho = stats.spearmanr(g.values_array(), y).statistic if g is not None else float("nan")
            rows.append({"damping": lam, "method": score_method_name(m, "ggn" if m == "cg" else None),
                         "spearman_finetune": rho, "grad_norm_spearman": gn_rho,
                         "cg_rel_residual_median": float(np.median(res)), "cg_rel_residual_max": float(np.max(res)),
                         "converged": (g is not None and converged(g)) if m == "cg" else True})
    return pd.DataFrame(rows)


def zeta_vs_gradnorm(validation: pd.DataFrame, by_lam: pd.DataFrame | None = None) -> dict:
    """The verdict on "ζ² ranks layers by reducible risk and beats the gradient norm", from the
    validation_rank_correlation table (and validation_vs_damping when given), as notebook 02 and
    claims.py both read it. Rows from unconverged CG solves (`assessable` / `converged` False, or
    the column missing: convergence unknown) enter no comparison: what they would decide is
    "not assessable" (study.cg_solves.NOT_ASSESSABLE), never a number.

    "targets": per measured decrease, `assessable` (the target itself: the Newton decrease needs
    converged Newton solves), the gradient norm's ρ, the best assessable ζ² surrogate and its ρ, how
    many assessable surrogates beat the gradient norm (and how many were left out), cg_ggn's ρ and
    "cg_ggn" = "beats" / "does not beat" / "not assessable" (cg_ggn_beats_grad_norm True/False/None);
    "damping" (with by_lam): the gradient norm's ρ, the converged λ at which cg_ggn beats it, cg_ggn's
    best ρ over converged λ and its λ (None when no λ converged), the unconverged λ, and CG's
    median residual at the grid's first λ."""
    val = validation.copy()
    if "assessable" not in val:
        val["assessable"] = [not str(m).startswith("cg_") for m in val["method"]]
    targets = {}
    for target, t in val.groupby("target", sort=False):
        t = t.set_index("method")
        gn = float(t.loc["grad_norm", "spearman"]) if "grad_norm" in t.index else float("nan")
        zeta = {m: float(t.loc[m, "spearman"]) for m in ZETA2_METHODS if m in t.index and bool(t.loc[m, "assessable"])}
        left_out = [m for m in ZETA2_METHODS if m in t.index and not bool(t.loc[m, "assessable"])]
        # the target itself is measurable when its non-CG rows are (Newton: the Newton solves converged)
        plain = [m for m in t.index if not str(m).startswith("cg_")]
        target_ok = bool(t.loc[plain, "assessable"].all()) if plain else bool(t["assessable"].any())
        best = max(zeta, key=lambda m: zeta[m]) if zeta else None
        cg_ok = target_ok and "cg_ggn" in zeta
        beats = (zeta["cg_ggn"] > gn) if cg_ok else None
        targets[target] = {"assessable": target_ok, "grad_norm": gn if target_ok else None,
                           "best_zeta2": best if target_ok else None,
                           "best_zeta2_rho": zeta.get(best) if target_ok else None,
                           "n_zeta2_beating": sum(1 for z in zeta.values() if z > gn) if target_ok else None,
                           "n_zeta2": len(zeta), "zeta2_not_assessable": left_out,
                           "cg_ggn_beats_grad_norm": beats, "cg_ggn_rho": zeta.get("cg_ggn") if cg_ok else None,
                           "cg_ggn": NOT_ASSESSABLE if beats is None else ("beats" if beats else "does not beat")}
    out = {"targets": targets, "damping": None}
    if by_lam is not None:
        gn_rho = float(by_lam["grad_norm_spearman"].iloc[0])
        cg = by_lam[by_lam["method"] == "cg_ggn"]
        ok = cg["converged"].astype(bool) if "converged" in cg else pd.Series(False, index=cg.index)
        conv = cg[ok]
        best = conv.loc[conv["spearman_finetune"].idxmax()] if len(conv) else None
        out["damping"] = {"grad_norm_rho": gn_rho,
                          "cg_ggn_beats_at": conv[conv["spearman_finetune"] > gn_rho]["damping"].tolist(),
                          "best_rho": float(best["spearman_finetune"]) if best is not None else None,
                          "best_damping": float(best["damping"]) if best is not None else None,
                          "unconverged_dampings": cg[~ok]["damping"].tolist(),
                          "verdict": None if len(conv) else NOT_ASSESSABLE,
                          "first_rel_residual": float(cg.iloc[0]["cg_rel_residual_median"])}
    return out


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
