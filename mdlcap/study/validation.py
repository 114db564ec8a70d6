"""Notebook 02 §2: does ζ² rank blocks by the loss decrease one can actually get, and does it beat
the gradient norm? Measured with power: every fine-tune task, blocks fine enough that each task
has ≥ 16, converged solves only, bootstrap intervals on every rank correlation and a paired test
of ζ² against ‖g‖² and each surrogate (METHOD.md §1, Eq 7–8).

    results, dec = validate_tasks(model, tok, params, tasks, methods)   # cached per (task, method)
    table = block_table(results, dec)          # one row per (task, method, block): score, targets, converged
    rho = rank_intervals(table, methods)       # Spearman ρ per (task | Average, method, target) with a 95 % CI
    iv = paired_comparisons(table, methods)    # intervals.csv rows: Δρ = ρ(ζ², y) − ρ(other, y)
    verdict = zeta_vs_gradnorm(iv)             # the claim's verdict, read from the intervals (claims.py too)

Targets, per block k alone (`single_layer_decreases`): the held-out loss decrease after the damped
Newton step d* = −(H_kk + λI)⁻¹ g_k (GGN, the very CG solve whose gᵀx is the block's cg_ggn ζ², at
the policy's λ: score and step agree) and after `scoring.validation_steps` Adam steps on block k only.

Only converged solves enter: a cg_* score of a block whose solve did not reach relative residual
≤ paper.THRESHOLDS["cg_rel_residual"] is dropped from every correlation of that method, and a block
whose Newton solve did not converge is dropped from the Newton target; the tables count the drops.

Statistics. ρ_s is Spearman's rank correlation over a task's blocks. The pooled statistic is the
mean over tasks of the within-task ρ_s (each task its own ranking: scores are not comparable across
tasks). Intervals are scipy.stats.bootstrap's (BCa; percentile where BCa is undefined), resampling
blocks within each task independently (each task one sample, `paired=False` between tasks: a
stratified bootstrap). The paired test resamples the same blocks for ζ² and the other method, so
Δρ's interval carries the correlation between the two rankings. A resample whose blocks all tie on
one side has no ranking: its ρ counts as 0 (with ≥ 16 blocks this has probability < 1e-15).
Deviation: no multiple-comparison correction over the surrogates: each comparison is its own
question (ζ² vs ‖g‖² is the claim; the others are context).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from mdlcap import cache
from mdlcap.models import fingerprint_batches, fingerprint_model
from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import Gains, resolve_blocks
from mdlcap.scores.newton import applied_step
from mdlcap.scores.registry import ZETA2_METHODS, layer_gains, score_method_name
from mdlcap.study.cg_solves import NOT_ASSESSABLE, block_converged, cg_gains, converged, screened_solve, solve_kwargs
from mdlcap.study.curvature_scores import score_batches, scoring_batches
from mdlcap.study.paper import AVERAGE_TASK
from mdlcap.study.stats import Z_POWER, interval_frame, interval_row

TARGETS = ("newton_heldout_decrease", "finetune_heldout_decrease")
ZETA2 = "cg_ggn"                                     # the paper's ζ² (Eq 8, GGN curvature)
VALIDATION_METHODS = tuple(ZETA2_METHODS) + ("grad_norm",)   # LayerIF is per decoder layer: not block-validated
MIN_BLOCKS = 16                                      # blocks per task the design needs (issue 15)
MIN_CELL = 4                                         # fewer valid blocks than this: no correlation for the task
N_RESAMPLES = 9999
DECREASE_COLUMNS = ("layer", "block", "heldout_loss", "newton_heldout_decrease", "newton_train_decrease",
                    "finetune_heldout_decrease", "newton_damping", "newton_rel_residual", "newton_converged")


def comparison_name(other: str) -> str:
    """The intervals.csv name of ζ² (cg_ggn) against `other`: "zeta2 - grad_norm"."""
    return f"zeta2 - {other}"


def metric_name(target: str) -> str:
    """The intervals.csv metric of a target: "spearman:<target>"."""
    return f"spearman:{target}"


# ----------------------------------------------------------------------------- measurements
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
    for name, params in tqdm(blk.items(), desc="single-block decreases", disable=ag.progress_off(progress)):
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


def _with_newton_columns(dec: pd.DataFrame, newton: Gains, lam: float) -> pd.DataFrame:
    dec.insert(0, "layer", range(len(dec)))
    dec["newton_damping"] = lam
    dec["newton_rel_residual"] = [newton.diagnostics[b]["rel_residual"] for b in dec["block"]]
    dec["newton_converged"] = [block_converged(newton.diagnostics[b]) for b in dec["block"]]
    return dec


def validation_decreases(model, sp, train_batches, heldout_batches, *, damping: float | None = None,
                         progress: bool = True):
    """single_layer_decreases of every block of sp.blocks ("layer": decoder layers; "attn_mlp": the
    finer blocks) with the Newton step from CG on the GGN over `train_batches` at the fixed `damping`
    (default sp.damping) and fine-tuning on the same batches; a `layer` column (block index) first, and
    per block whether its Newton solve converged (`newton_converged`, study.cg_solves) with its
    residual: a Newton decrease from an unconverged solve is not the Newton step's."""
    blocks = None if sp.blocks == "layer" else sp.blocks
    lam = sp.damping if damping is None else float(damping)
    newton = layer_gains(model, train_batches, method="cg", curvature="ggn", damping=lam, blocks=blocks,
                         return_steps=True, progress=progress, **solve_kwargs(sp))
    dec = single_layer_decreases(model, train_batches, heldout_batches, newton.steps, blocks=blocks,
                                 finetune_steps=sp.validation_steps, lr=sp.validation_lr, progress=progress)
    return _with_newton_columns(dec, newton, lam)


def validation_scoring(sp):
    """The scoring section with blocks = scoring.validation_blocks (everything else as scored)."""
    return dataclasses.replace(sp, blocks=sp.validation_blocks)


def validation_tasks(params) -> list[str]:
    """scoring.validation_tasks, or every fine-tune task when null."""
    return list(params.scoring.validation_tasks or params.data.finetune_tasks)


def validation_methods(params) -> list[str]:
    """scoring.validation_methods, else the VALIDATION_METHODS among scoring.methods (in that order)."""
    listed = params.scoring.validation_methods
    return [m for m in VALIDATION_METHODS if m in (listed if listed is not None else params.scoring.methods)]


def validate_task(model, tokenizer, params, task: str, methods, *, model_key: str | None = None,
                  use_cache: bool = True, progress: bool = True) -> tuple[dict[str, Gains], pd.DataFrame]:
    """({method: Gains} at the validation blocks, the task's single-block decreases).

    cg_ggn and the Newton target come from ONE solve (study.cg_solves.cg_gains at the damping policy's
    λ, with steps): its ζ² and its decreases are cached together (namespace "scores"); every other
    method of `methods` among VALIDATION_METHODS goes through curvature_scores.score_batches (cached
    per (task, method), blocks = scoring.validation_blocks), on the same training batches."""
    sv = validation_scoring(params.scoring)
    blocks = None if sv.blocks == "layer" else sv.blocks
    model_key = model_key or fingerprint_model(model)
    train = scoring_batches(params, tokenizer, task, "train")
    held = scoring_batches(params, tokenizer, task, "validation")
    others = [m for m in methods if m in VALIDATION_METHODS and m != ZETA2]
    out = score_batches(model, sv, task, others, train, model_key=model_key, use_cache=use_cache, progress=progress)

    def compute():
        g = cg_gains(model, train, sv, "ggn", blocks=blocks, return_steps=True, progress=progress)
        dec = single_layer_decreases(model, train, held, g.steps, blocks=blocks, finetune_steps=sv.validation_steps,
                                     lr=sv.validation_lr, progress=progress)
        return {"gains": g.to_json(), "decreases": _with_newton_columns(dec, g, g.damping).to_dict("records")}

    spec = {"model": model_key, "data": fingerprint_batches(train), "heldout": fingerprint_batches(held),
            "task": task, "method": "validation_cg_ggn", "damping": sv.damping, "blocks": sv.blocks,
            **solve_kwargs(sv), "policy": sv.cg_damping_policy,
            "grid": None if sv.cg_damping_policy == "fixed" else list(sv.lambda_grid),
            "finetune_steps": sv.validation_steps, "lr": sv.validation_lr}
    res = cache.cached("scores", spec, compute) if use_cache else compute()
    zeta = Gains.from_json(res["gains"])
    out = {ZETA2: zeta, **out} if ZETA2 in methods else out
    dec = pd.DataFrame(res["decreases"])            # the cache's JSON sorts keys: back to the measured order
    return {m: out[m] for m in methods if m in out}, dec[[c for c in DECREASE_COLUMNS if c in dec]]


def validate_tasks(model, tokenizer, params, tasks, methods, *, progress: bool = True):
    """validate_task for every task: ({(task, method): Gains}, decreases with a `task` column first)."""
    model_key = fingerprint_model(model)
    results, decs = {}, []
    for task in tasks:
        got, dec = validate_task(model, tokenizer, params, task, methods, model_key=model_key, progress=progress)
        results.update({(task, m): g for m, g in got.items()})
        decs.append(dec.assign(task=task)[["task"] + list(dec.columns)])
    return results, pd.concat(decs, ignore_index=True)


def block_table(results: Mapping[tuple[str, str], Gains], decreases: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method, block): the score, whether it counts (`score_converged`: a cg_*
    block's solve converged, study.cg_solves; always True for the others), the block's measured
    decreases and whether its Newton solve converged. The written table the design check reads."""
    rows = []
    dec = decreases.set_index(["task", "block"])
    for (task, m), g in results.items():
        for i, (blk, s) in enumerate(g.items()):
            d = dec.loc[(task, blk)]
            ok = block_converged(g.diagnostics.get(blk, {})) if m.startswith("cg_") else True
            rows.append({"task": task, "method": m, "block": blk, "block_index": i, "score": float(s),
                         "score_converged": bool(ok), **{t: float(d[t]) for t in TARGETS},
                         "newton_converged": bool(d["newton_converged"])})
    return pd.DataFrame(rows)


def check_validation_design(table: pd.DataFrame, tasks, min_blocks: int = MIN_BLOCKS) -> dict[str, int]:
    """The design issue 15 asks for, on a written block table (validation_blocks.csv): every task of
    `tasks` present with ≥ `min_blocks` distinct blocks. Returns {task: blocks}; raises ValueError
    naming what is missing."""
    need = {"task", "block"}
    if not need <= set(table.columns):
        raise ValueError(f"table: needs columns {sorted(need)}, has {list(table.columns)}")
    n = table.groupby("task")["block"].nunique().to_dict()
    missing = [t for t in tasks if t not in n]
    few = {t: n[t] for t in tasks if t in n and n[t] < min_blocks}
    if missing or few:
        raise ValueError(f"table: every task needs >= {min_blocks} blocks; missing tasks {missing}, too few {few}")
    return {t: int(n[t]) for t in tasks}


# ----------------------------------------------------------------------------- statistics
def spearman(x, y):
    """Spearman ρ along the last axis (broadcasting; average ranks for ties); 0 where one side is constant."""
    rx, ry = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (rx * ry).sum(axis=-1) / den
    return np.where(den > 0, r, 0.0)


def rho_difference(z, o, y):
    """ρ_s(z, y) − ρ_s(o, y) along the last axis: the paired statistic of ζ² (z) against another method (o)."""
    return spearman(z, y) - spearman(o, y)


def task_mean_interval(cells, statistic=spearman, *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                       seed: int = 0) -> dict:
    """Mean over cells (tasks) of `statistic(*cell)` (e.g. Spearman of (score, target); or `rho_difference`
    of (ζ², other, target): paired) with a `confidence` interval from scipy.stats.bootstrap that
    resamples each cell's blocks independently (one sample per cell, BCa; percentile where BCa is
    not finite), se the bootstrap standard error and mde = (z_{1-α/2} + z_{0.80}) · se. Keys as
    stats.paired_interval (diff, ci_low, ci_high, se, mde, n_seeds = 1, n_items = blocks, confidence,
    method) plus n_tasks. No cells: NaN interval ("not assessable")."""
    if not (0 < confidence < 1):
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence!r}")
    cells = [tuple(np.asarray(a, dtype=float) for a in c) for c in cells]
    for c in cells:
        if len({len(a) for a in c}) != 1 or len(c[0]) < 2:
            raise ValueError("cells: every cell needs arrays of one common length >= 2")
    out = {"n_seeds": 1, "n_items": int(sum(len(c[0]) for c in cells)), "n_tasks": len(cells),
           "confidence": confidence, "method": "BCa"}
    if not cells:
        return {**out, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "se": math.nan, "mde": math.nan,
                "method": "none (no blocks)"}
    point = float(np.mean([statistic(*c) for c in cells]))

    def stat(*idx, axis=-1):
        vals = [statistic(*(a[np.asarray(ix).astype(int)] for a in c)) for c, ix in zip(cells, idx)]
        return np.mean(np.broadcast_arrays(*vals), axis=0)

    samples = tuple(np.arange(len(c[0])) for c in cells)
    kw = dict(paired=False, vectorized=True, n_resamples=n_resamples, confidence_level=confidence)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(samples, stat, method="BCa", rng=np.random.default_rng(seed), **kw)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            res = stats.bootstrap(samples, stat, method="percentile", rng=np.random.default_rng(seed), **kw)
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            out["method"] = "percentile (BCa undefined)"
    se = float(res.standard_error)
    z = stats.norm.ppf(0.5 + confidence / 2)
    return {**out, "diff": point, "ci_low": lo, "ci_high": hi, "se": se, "mde": float((z + Z_POWER) * se)}


def _cells(table: pd.DataFrame, methods, target: str):
    """{task: (blocks kept, blocks of the task)} arrays per method: the blocks where every method's
    score counts and, for the Newton target, the Newton solve converged."""
    out = {}
    for task, t in table[table["method"].isin(methods)].groupby("task", sort=False):
        wide = t.pivot(index="block_index", columns="method", values="score")
        ok = t.pivot(index="block_index", columns="method", values="score_converged")
        if not all(m in wide for m in methods):
            continue
        keep = ok[list(methods)].astype(bool).all(axis=1)
        y = t.drop_duplicates("block_index").set_index("block_index").loc[wide.index]
        if target == "newton_heldout_decrease":
            keep &= y["newton_converged"].astype(bool)
        arrs = tuple(wide.loc[keep, m].to_numpy() for m in methods) + (y.loc[keep, target].to_numpy(),)
        out[task] = (arrs, len(wide))
    return out


def _usable(arrs) -> bool:
    """Enough blocks, and no side constant (a constant ranking has no ρ)."""
    return len(arrs[0]) >= MIN_CELL and all(np.ptp(a) > 0 for a in arrs)


def rank_intervals(table: pd.DataFrame, methods, *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> pd.DataFrame:
    """Spearman ρ of each method's block scores with each target, per task and averaged over tasks
    (task = paper.AVERAGE_TASK), with its bootstrap interval (task_mean_interval), the blocks that
    entered and the blocks dropped (unconverged solves), and `assessable` (an interval exists)."""
    rows = []
    for target in TARGETS:
        for m in methods:
            cells = _cells(table, [m], target)
            if not cells:
                continue
            usable = {task: a for task, (a, _) in cells.items() if _usable(a)}
            groups = [(task, [usable[task]] if task in usable else [], n) for task, (_, n) in cells.items()]
            groups.append((AVERAGE_TASK, list(usable.values()), sum(n for _, n in cells.values())))
            for task, kept, n_all in groups:
                r = task_mean_interval(kept, confidence=confidence, n_resamples=n_resamples, seed=seed)
                rows.append({"task": task, "method": m, "target": target, "spearman": r["diff"],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "se": r["se"],
                             "n_blocks": r["n_items"], "n_dropped": int(n_all - r["n_items"]),
                             "n_tasks": r["n_tasks"], "ci_method": r["method"],
                             "assessable": bool(math.isfinite(r["ci_low"]))})
    return pd.DataFrame(rows)


def paired_comparisons(table: pd.DataFrame, methods, *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                       seed: int = 0) -> pd.DataFrame:
    """The paired test of ζ² (cg_ggn) against every other method present, for both targets: per task
    and averaged over tasks, Δρ = ρ_s(ζ², target) − ρ_s(other, target) on the same blocks (both
    scores converged), its bootstrap interval resampling the same blocks for both (paired), and
    the verdict from the interval ("positive" = ζ² ranks better: the paper's dominance reproduced).
    Rows of stats.interval_frame (comparison "zeta2 - <other>", metric "spearman:<target>")."""
    rows = []
    present = set(table["method"])
    if ZETA2 not in present:
        return interval_frame([])
    for other in [m for m in methods if m != ZETA2 and m in present]:
        for target in TARGETS:
            cells = _cells(table, [ZETA2, other], target)
            usable = {task: a for task, (a, _) in cells.items() if _usable(a)}
            for task in list(cells) + [AVERAGE_TASK]:
                kept = list(usable.values()) if task == AVERAGE_TASK else ([usable[task]] if task in usable else [])
                r = task_mean_interval(kept, rho_difference, confidence=confidence, n_resamples=n_resamples, seed=seed)
                rows.append(interval_row(comparison_name(other), task, metric_name(target), r, None))
    return interval_frame(rows)


# ----------------------------------------------------------------------------- λ sensitivity (one task)
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


# ----------------------------------------------------------------------------- the verdict
def zeta_vs_gradnorm(intervals: pd.DataFrame, by_lam: pd.DataFrame | None = None) -> dict:
    """The verdict on "ζ² ranks blocks by reducible risk and strictly dominates the gradient norm",
    read from the task-averaged paired intervals (paired_comparisons, intervals.csv), as notebook 02
    and claims.py both read it.

    "targets": per target, the Average row of "zeta2 - grad_norm": diff (Δρ), ci_low, ci_high, mde,
    n_blocks (None / 0 when not assessable), `verdict` (positive / negative / no resolvable difference /
    not assessable), "cg_ggn" = "beats" / "is beaten by" / "not resolved against" / "not assessable"
    the gradient norm, and `surrogates`: the same verdict against every other method.
    "verdict": "reproduced" when ζ²'s Δρ against ‖g‖² is positive on every assessable target,
    "partly" on some, "not reproduced" on none, "not assessable" when no target is.
    "damping" (with by_lam, one task, point estimates: a sensitivity, no verdict): the gradient
    norm's ρ, the converged λ at which cg_ggn's ρ exceeds it, cg_ggn's best ρ over converged λ and
    its λ (None when none converged), the unconverged λ, CG's median residual at the grid's first λ."""
    word = {"positive": "beats", "negative": "is beaten by", "no resolvable difference": "not resolved against",
            NOT_ASSESSABLE: NOT_ASSESSABLE}
    iv = intervals[intervals["task"] == AVERAGE_TASK]
    targets = {}
    for target in TARGETS:
        t = iv[iv["metric"] == metric_name(target)].set_index("comparison")
        surrogates = {c.removeprefix("zeta2 - "): r["verdict"] for c, r in t.iterrows()}
        name = comparison_name("grad_norm")
        if name not in t.index:
            targets[target] = {"assessable": False, "verdict": NOT_ASSESSABLE, "cg_ggn": NOT_ASSESSABLE,
                               "diff": None, "ci_low": None, "ci_high": None, "mde": None, "n_blocks": 0,
                               "surrogates": surrogates}
            continue
        r = t.loc[name]
        ok = r["verdict"] != NOT_ASSESSABLE
        targets[target] = {"assessable": bool(ok), "verdict": r["verdict"], "cg_ggn": word[r["verdict"]],
                           "diff": float(r["diff"]) if ok else None, "ci_low": float(r["ci_low"]) if ok else None,
                           "ci_high": float(r["ci_high"]) if ok else None, "mde": float(r["mde"]) if ok else None,
                           "n_blocks": int(r["n_items"]),
                           "surrogates": surrogates}
    calls = [t["verdict"] for t in targets.values() if t["assessable"]]
    verdict = (NOT_ASSESSABLE if not calls else "reproduced" if all(c == "positive" for c in calls)
               else "partly" if any(c == "positive" for c in calls) else "not reproduced")
    out = {"targets": targets, "verdict": verdict, "damping": None}
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
