"""Notebook 02's drivers and tables (METHOD.md §1): score every task with every method into
scores.csv, validate the rankings against measured one-layer loss decreases, Appendix C's
λ-sweep (Eq 18–19) on the real model, and the cost of each method in gradient passes.

    results = score_tasks(model, tok, params, tasks, methods)   # {(task, method): Gains}, cached
    scores = scores_frame(results)                              # scores.csv (mdlcap.scores.table)
    verdict = zeta_vs_gradnorm(validation, by_lam)              # also what claims.py reads back

Every table the notebook shows is one function here; the notebook only calls and plots.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from mdlcap.models import fingerprint_batches, fingerprint_model
from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import Gains, resolve_blocks
from mdlcap.scores.newton import applied_step, block_quadratic
from mdlcap.scores.registry import SCORE_METHODS, ZETA2_METHODS, cached_gains, layer_gains, score_method_name
from mdlcap.study.measure import measure
from mdlcap.study import layerif

LAYERIF_POOLS = ("layerif_all", "layerif_pos")
DIAGNOSTIC_KEYS = ("iterations", "rel_residual", "damping_used", "damping_raises", "ritz_min_H", "ritz_max_H",
                   "damping_needed_lower_bound", "grad_norm2")
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
        if m.startswith("cg_"):
            bs = batches[: sp.cg_batches]
            fn = (lambda curv=m[3:], bs=bs: layer_gains(model, bs, method="cg", curvature=curv, damping=sp.damping,
                                                         blocks=blocks, max_iter=sp.cg_max_iter, tol=sp.cg_tol,
                                                         progress=progress))
            out[m] = cached(m, bs, timed(fn, bs), {"max_iter": sp.cg_max_iter, "tol": sp.cg_tol})
        else:
            fn = (lambda m=m: layer_gains(model, batches, method=m, damping=sp.damping, blocks=blocks,
                                          progress=progress))
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
    """One row per (task, cg method, layer): ζ² and CG's iterations, residual, damping and Ritz values."""
    rows = []
    for (task, m), g in results.items():
        if m.startswith("cg_"):
            for layer, (blk, d) in enumerate(g.diagnostics.items()):
                rows.append({"task": task, "method": m, "layer": layer, "zeta2": g[blk],
                             **{k: d[k] for k in DIAGNOSTIC_KEYS}})
    return pd.DataFrame(rows)


def cg_summary(cg_diag: pd.DataFrame) -> pd.DataFrame:
    """Per cg method: mean iterations, median relative residual, largest damping used, most negative Ritz value of H."""
    return cg_diag.groupby("method").agg(iterations=("iterations", "mean"), rel_residual=("rel_residual", "median"),
                                         damping_used_max=("damping_used", "max"), ritz_min_H=("ritz_min_H", "min"))


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


def validation_decreases(model, sp, cg_batches, train_batches, heldout_batches, *, progress: bool = True):
    """single_layer_decreases of every decoder layer: the Newton step from CG on the GGN over
    `cg_batches` (damping sp.damping), fine-tuning on `train_batches`; a `layer` column first."""
    newton = layer_gains(model, cg_batches, method="cg", curvature="ggn", damping=sp.damping, max_iter=sp.cg_max_iter,
                         tol=sp.cg_tol, return_steps=True, progress=progress)
    dec = single_layer_decreases(model, train_batches, heldout_batches, newton.steps,
                                 finetune_steps=sp.validation_steps, lr=sp.validation_lr, progress=progress)
    dec.insert(0, "layer", range(len(dec)))
    return dec


def validation_rank_correlation(scores: pd.DataFrame, dec: pd.DataFrame, task: str, methods) -> pd.DataFrame:
    """Spearman ρ and Kendall τ over layers between each method's scores for `task` and the measured
    decreases (Newton step, one-layer fine-tuning)."""
    rows = []
    sub = scores[scores["task"] == task]
    for m in methods:
        s = sub[sub["method"] == m].sort_values("layer")["score"].to_numpy()
        if len(s) != len(dec):
            continue
        for target in TARGETS:
            y = dec[target].to_numpy()
            rows.append({"method": m, "target": target, "spearman": stats.spearmanr(s, y).statistic,
                         "kendall": stats.kendalltau(s, y).statistic})
    return pd.DataFrame(rows)


def damping_validation(model, sp, cg_batches, train_batches, y) -> pd.DataFrame:
    """For each λ of sp.lambda_grid and method cg_ggn / diag_fisher / kfac: Spearman ρ of the scores
    with the measured decreases `y`, beside the (λ-free) gradient norm's ρ and CG's median residual."""
    gn_rho = stats.spearmanr(layer_gains(model, train_batches, method="grad_norm", progress=False).values_array(),
                             y).statistic
    rows = []
    for lam in sp.lambda_grid:
        for m in ("cg", "diag_fisher", "kfac"):
            g = layer_gains(model, cg_batches if m == "cg" else train_batches, method=m, curvature="ggn", damping=lam,
                            max_iter=sp.cg_max_iter, tol=sp.cg_tol, progress=False)
            rows.append({"damping": lam, "method": score_method_name(m, "ggn" if m == "cg" else None),
                         "spearman_finetune": stats.spearmanr(g.values_array(), y).statistic,
                         "grad_norm_spearman": gn_rho,
                         "cg_rel_residual_median": (float(np.median([d["rel_residual"] for d in g.diagnostics.values()]))
                                                    if m == "cg" else float("nan"))})
    return pd.DataFrame(rows)


def zeta_vs_gradnorm(validation: pd.DataFrame, by_lam: pd.DataFrame | None = None) -> dict:
    """The verdict on "ζ² ranks layers by reducible risk and beats the gradient norm", from the
    validation_rank_correlation table (and validation_vs_damping when given), as notebook 02 and
    claims.py both read it.

    "targets": per measured decrease, the gradient norm's ρ, the best ζ² surrogate and its ρ, how
    many surrogates beat the gradient norm, cg_ggn's ρ and whether it beats it;
    "damping" (with by_lam): the gradient norm's ρ, the λ at which cg_ggn beats it, cg_ggn's best ρ
    over λ and its λ, and CG's median residual at the grid's first λ."""
    v = validation.pivot(index="method", columns="target", values="spearman")
    targets = {}
    for target in v.columns:
        gn = v.loc["grad_norm", target] if "grad_norm" in v.index else float("nan")
        zeta = {m: v.loc[m, target] for m in ZETA2_METHODS if m in v.index}
        best = max(zeta, key=lambda m: zeta[m]) if zeta else None
        n_better = sum(1 for z in zeta.values() if z > gn)
        targets[target] = {"grad_norm": gn, "best_zeta2": best, "best_zeta2_rho": zeta.get(best),
                           "n_zeta2_beating": n_better, "n_zeta2": len(zeta),
                           "cg_ggn_beats_grad_norm": bool(zeta.get("cg_ggn", -9) > gn),
                           "cg_ggn_rho": zeta.get("cg_ggn")}
    out = {"targets": targets, "damping": None}
    if by_lam is not None:
        gn_rho = float(by_lam["grad_norm_spearman"].iloc[0])
        cg = by_lam[by_lam["method"] == "cg_ggn"]
        best = cg.loc[cg["spearman_finetune"].idxmax()]
        out["damping"] = {"grad_norm_rho": gn_rho,
                          "cg_ggn_beats_at": cg[cg["spearman_finetune"] > gn_rho]["damping"].tolist(),
                          "best_rho": float(best["spearman_finetune"]), "best_damping": float(best["damping"]),
                          "first_rel_residual": float(cg.iloc[0]["cg_rel_residual_median"])}
    return out


# ----------------------------------------------------------------------------- §3 Appendix C
def damping_sweep(model, batches, blocks: Mapping[str, list], lambdas, *, max_iter: int = 20, tol: float = 1e-6,
                  loss_fn=None, progress: bool = True):
    """Appendix C on a real model: for each block and λ, predicted decrease ½ζ², the layer-restricted
    quadratic at d* under the GGN (= −½ζ² − (λ/2)‖d*‖² by Lemma 1 / Eq 18) and under the exact
    Hessian, and the true loss change L(θ + d*) − L(θ). Returns a DataFrame."""
    base = ag.mean_loss(model, batches, loss_fn)
    rows = []
    for name, params in blocks.items():
        for lam in tqdm(list(lambdas), desc=f"λ sweep {name}", disable=ag.progress_off(progress)):
            r = layer_gains(model, batches, method="cg", curvature="ggn", damping=float(lam), blocks={name: params},
                            loss_fn=loss_fn, max_iter=max_iter, tol=tol, progress=False, return_steps=True)
            d = r.steps[name]
            qg = block_quadratic(model, batches, params, d, curvature="ggn", loss_fn=loss_fn)
            qh = block_quadratic(model, batches, params, d, curvature="hessian", loss_fn=loss_fn)
            with applied_step(params, d):
                true = ag.mean_loss(model, batches, loss_fn) - base
            z2 = r[name]
            rows.append({"block": name, "damping": float(lam), "zeta2": z2, "predicted_decrease": 0.5 * z2,
                         "quadratic_ggn": qg["quadratic"], "quadratic_hessian": qh["quadratic"],
                         "eq18_value": -0.5 * z2 - 0.5 * lam * qg["d_norm2"], "bias_term": lam * qg["d_norm2"],
                         "true_change": true, "step_norm": math.sqrt(qg["d_norm2"]),
                         "cg_iterations": r.diagnostics[name]["iterations"],
                         "cg_rel_residual": r.diagnostics[name]["rel_residual"],
                         "ritz_min_H": r.diagnostics[name]["ritz_min_H"]})
    return pd.DataFrame(rows)


def appendix_c_layers(scores: pd.DataFrame, task: str, n: int) -> list[int]:
    """The n layers the sweep looks at: those with the largest (⌈n/2⌉) and smallest (⌊n/2⌋) cg_ggn ζ²."""
    cg_val = scores[(scores["task"] == task) & (scores["method"] == "cg_ggn")].sort_values("score")
    order = cg_val["layer"].to_list()
    return sorted(set(order[::-1][: max(1, n // 2 + n % 2)] + order[: n // 2]))[:n]


def appendix_c_sweep(model, batches, layers, sp, *, progress: bool = True) -> pd.DataFrame:
    """damping_sweep over sp.lambda_grid for the given decoder layers (CG on the GGN, sp.appendix_c_iter iterations)."""
    blocks = resolve_blocks(model)
    names = list(blocks)
    return damping_sweep(model, batches, {names[k]: blocks[names[k]] for k in layers}, sp.lambda_grid,
                         max_iter=sp.appendix_c_iter, tol=sp.cg_tol, progress=progress)


def appendix_c_summary(sweep: pd.DataFrame) -> dict:
    """Eq 18's identity error, Eq 19's bias bound, how often the true change is the predicted
    decrease, the relative error of −½ζ² (median, at the smallest and largest λ) and, with two or
    more layers, per λ whether ζ² and the true decrease pick the same layer."""
    eq18_err = (sweep["quadratic_ggn"] - sweep["eq18_value"]).abs() / sweep["eq18_value"].abs()
    bias_ok = ((sweep["bias_term"] >= 0) & (sweep["bias_term"] <= sweep["zeta2"] * (1 + 1e-6))).all()
    sign_ok = (np.sign(sweep["true_change"]) == np.sign(-sweep["predicted_decrease"])).mean()
    rel_err = ((sweep["true_change"] + sweep["predicted_decrease"]).abs() / sweep["predicted_decrease"].abs())
    lo, hi = sweep["damping"].min(), sweep["damping"].max()
    out = {"eq18_max_rel_error": float(eq18_err.max()), "bias_bound_holds": bool(bias_ok),
           "true_change_is_decrease_fraction": float(sign_ok), "rel_error_median": float(rel_err.median()),
           "rel_error_smallest_lambda": float(rel_err[sweep["damping"] == lo].median()),
           "rel_error_largest_lambda": float(rel_err[sweep["damping"] == hi].median()), "ranking": None}
    z = sweep.pivot(index="damping", columns="block", values="zeta2")
    t = -sweep.pivot(index="damping", columns="block", values="true_change")
    if z.shape[1] >= 2:   # Appendix C: is the ranking of layers by ζ² the ranking by the true decrease, at each λ?
        agree = (z.idxmax(axis=1) == t.idxmax(axis=1))
        out["ranking"] = [{"damping": float(lam), "largest_zeta2": z.loc[lam].idxmax(),
                           "largest_true_decrease": t.loc[lam].idxmax(), "same": bool(agree[lam])} for lam in z.index]
        out["ranking_agreement"] = float(agree.mean())
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
