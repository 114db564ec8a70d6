"""Notebook 04 (pruning ratios: MDL vs LayerIF, OWL, uniform): every table the notebook shows.

    bench = setup(params, model, tok)          calibration batches, held-out texts, cache key parts
    bench.run(ratios, pruner)                  one pruned model's evaluation (`evaluate_config`, cached)
    (§2, the ratio plans and the MDL degeneracy table: `mdlcap.study.pruning_ratios`)
    pruning_results / result_tables            §3 Table 1/2 format, with the paper's Average rows
    budget_check                               every row at the global sparsity it is compared at
    paper_vs_ours / paper_verdict              §3 beside the paper's Tables 1-2
    (§3, paired intervals at equal sparsity, the parity verdicts, zero-shot power: `mdlcap.study.pruning_intervals`)
    two_four_table                             §4 2:4 semi-structured rows
    sparsity_sweep / sweep_gain                §5 perplexity vs sparsity; `sweep_verdict`

Equal budgets: every row is compared at one global sparsity, the target s, except the paper's MDL
program and the methods re-solved at its own sparsity ("<method>@mdl", `mdlcap.study.pruning_ratios`);
each row carries the budget it is compared at (`compared_at`) and its requested and measured
global sparsity, and `budget_check` says how far each is from it.

Each pruned model is one entry of the "pruning" cache (`mdlcap.cache`), keyed by everything that
determines it, so identical ratio vectors from different methods are evaluated once and an
interrupted run resumes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from mdlcap import cache, evaluation
from mdlcap.default import data
from mdlcap.interventions.pruning import (global_sparsity, layer_sizes, measured_sparsity, prunable_linears,
                                          prune_model, restore_weights)
from mdlcap.models import decoder_layers, fingerprint_model
from mdlcap.study.paper import THRESHOLDS, pruning_table
from mdlcap.study.pruning_ratios import (BUDGET_TOL, MATCH_SUFFIX, base_method, compared_at, ratio_plan,
                                         zeroshot_listed)

AVERAGE_METHODS = ("mdl", "layerif@mdl", "mdl_eq", "mdl_eq_free", "layerif")   # the paper's "Average (MDL)" rows


# =========================================================================== one pruned model
def evaluate_config(model: nn.Module, ratios, pruner: str, *, calib_batches,
                    evaluate: Callable[[nn.Module, bool], dict], key_extra: dict, need_accuracy: bool = True,
                    nm=None, blocksize: int = 128, damp: float = 0.01, progress: bool = False) -> dict:
    """Prune a copy-in-place of `model` with (ratios, pruner), evaluate it, restore the dense
    weights. `evaluate(model, need_accuracy)` returns a dict (perplexity, accuracies). Results are
    cached (`cache.cached("pruning", spec)`), keyed by everything that determines them (ratios
    rounded to 1e-9, pruner, n:m, calibration/evaluation settings in `key_extra`), so identical
    ratio vectors from different methods are evaluated once and an interrupted run resumes. An
    entry computed without accuracy is computed again when accuracy is asked for. Besides the
    means, an entry keeps what the paired intervals resample (`mdlcap.study.pruning_intervals`):
    `window_loss`, the mean next-token loss (nats) of every held-out window in order, and `items`,
    {task: 0/1 correctness of each zero-shot question in doc order} (None without accuracy)."""
    r = None if ratios is None else [round(float(x), 9) for x in np.asarray(ratios, float)]
    spec = {"pruner": pruner, "ratios": r, "nm": list(nm) if nm else None,
            "blocksize": blocksize, "damp": damp, **key_extra}
    key = cache.key("pruning", spec)
    computed = []

    def compute() -> dict:
        computed.append(True)
        t0 = time.perf_counter()
        with restore_weights(model):
            if ratios is None and nm is None:          # the dense model
                recs = [{"layer": i, "requested": 0.0, "measured": float(s), "seconds": 0.0}
                        for i, s in enumerate(measured_sparsity(model))]
            else:
                recs = prune_model(model, ratios, pruner, calib_batches, nm=nm, blocksize=blocksize, damp=damp,
                                   progress=progress)
            t_prune = time.perf_counter() - t0
            ev = evaluate(model, need_accuracy)
        sizes = layer_sizes(model)
        measured = [rec["measured"] for rec in recs]
        return {"key": key, "pruner": pruner, "nm": list(nm) if nm else None,
                "requested": [rec["requested"] for rec in recs], "measured": measured,
                "global_sparsity": global_sparsity(measured, sizes),
                "prune_seconds": t_prune, "eval_seconds": time.perf_counter() - t0 - t_prune,
                "perplexity": ev.get("perplexity"), "accuracy": ev.get("accuracy"),
                "window_loss": ev.get("window_loss"), "items": ev.get("items")}

    out = cache.cached("pruning", spec, compute)
    if out.get("accuracy") is None and need_accuracy and not computed:
        cache.path("pruning", spec).unlink(missing_ok=True)
        out = cache.cached("pruning", spec, compute)
    return out


def calibration_batches(params, tok) -> list[dict]:
    """The calibration windows pruning uses: `data.lm_batches` of the calibration texts (batches of
    8), cut to the first `pruning.calibration_sequences` windows when that is set."""
    calib = data.lm_batches(tok, data.texts(params, "calibration"), params.data.calibration_seq_len, batch_size=8)
    if params.pruning.calibration_sequences is None:
        return calib
    kept, n = [], params.pruning.calibration_sequences
    for b in calib:
        if n <= 0:
            break
        kept.append({k: v[:n] for k, v in b.items()})
        n -= kept[-1]["input_ids"].shape[0]
    return kept


def evaluate(model: nn.Module, tok, params, heldout: Sequence[str], seq_len: int, eval_limit,
             need_accuracy: bool) -> dict:
    """Held-out perplexity, exp of the mean of the per-window losses `window_loss` (every window has
    seq_len − 1 predicted tokens, so this is the token-weighted perplexity), and (if asked) lm-eval
    accuracy per zero-shot task with each question's 0/1 correctness (`items`)."""
    wl = evaluation.window_losses(model, tok, heldout, seq_len)
    out = {"perplexity": float(np.exp(np.mean(wl))), "window_loss": [round(x, 7) for x in wl]}
    if need_accuracy:
        out["accuracy"], out["items"] = evaluation.lm_eval_items(model, tok, params, list(params.data.zeroshot_tasks),
                                                                 limit=eval_limit)
    return out


@dataclass
class Bench:
    """One dense model and everything its pruned copies are evaluated with (see `setup`)."""
    model: nn.Module
    tok: object
    params: object
    calib_batches: list
    heldout: list
    seq_len: int
    eval_limit: int | None
    sizes: np.ndarray
    key_extra: dict
    keys: set = field(default_factory=set)      # cache entries this run used

    @property
    def n_calib(self) -> int:
        return sum(b["input_ids"].shape[0] for b in self.calib_batches)

    def describe(self) -> str:
        return (f"{len(self.sizes)} decoder layers, N_k = {self.sizes[0]:,} prunable weights each (total "
                f"{self.sizes.sum():,}); calibration {self.n_calib} x {self.seq_len} tokens; {len(self.heldout)} "
                f"held-out texts; lm-eval limit {self.eval_limit}")

    def evaluate(self, model: nn.Module, need_accuracy: bool) -> dict:
        return evaluate(model, self.tok, self.params, self.heldout, self.seq_len, self.eval_limit, need_accuracy)

    def run(self, ratios, pruner: str, need_accuracy: bool = True, nm=None) -> dict:
        """`evaluate_config` of this model with the params' SparseGPT settings."""
        pp = self.params.pruning
        res = evaluate_config(self.model, ratios, pruner, calib_batches=self.calib_batches, evaluate=self.evaluate,
                              key_extra=self.key_extra, need_accuracy=need_accuracy, nm=nm,
                              blocksize=pp.sparsegpt_blocksize, damp=pp.sparsegpt_damp)
        self.keys.add(res["key"])
        return res


def setup(params, model: nn.Module, tok) -> Bench:
    """The notebook's evaluation bench: calibration batches, held-out texts, lm-eval limit
    (`pruning.eval_limit`, else `data.zeroshot_limit`) and the cache key parts."""
    p = params
    calib = calibration_batches(p, tok)
    heldout = data.texts(p, "heldout")
    seq_len = p.data.calibration_seq_len
    eval_limit = p.pruning.eval_limit if p.pruning.eval_limit is not None else p.data.zeroshot_limit
    n_calib = sum(b["input_ids"].shape[0] for b in calib)
    key_extra = {"model": fingerprint_model(model), "data": data.data_key(p), "calib": [n_calib, seq_len],
                 "eval": {"limit": eval_limit, "tasks": list(p.data.zeroshot_tasks), "heldout": len(heldout)}}
    return Bench(model, tok, p, calib, heldout, seq_len, eval_limit, layer_sizes(model), key_extra)


def _bar(items, desc: str, progress: bool):
    """A tqdm bar over `items`; with progress on, TQDM_DISABLE (set by `make all`/tests) decides."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, **({} if progress else {"disable": True}))


def mean_accuracy(res: dict) -> float:
    """Mean zero-shot accuracy over the tasks of one evaluation."""
    return float(np.mean(list(res["accuracy"].values())))


# =========================================================================== §3 Table 1/2 format
def table_configs(vectors: dict[tuple, np.ndarray], pp) -> list[tuple]:
    """The ratio configurations the table evaluates: `pruning.table_methods` (a "<method>@mdl"
    match when both its method and "mdl" are listed), score-free ones and those of
    `pruning.table_score_tasks` (all when empty)."""
    def listed(rm):
        return base_method(rm) in pp.table_methods and (not rm.endswith(MATCH_SUFFIX) or "mdl" in pp.table_methods)
    return [k for k in vectors if listed(k[0])
            and (k[2] == "-" or not pp.table_score_tasks or k[2] in pp.table_score_tasks)]


def result_record(pruner: str, config: tuple, ratios: np.ndarray, res: dict, sizes, budget: float) -> dict:
    """One row of pruning_results: the budget it is compared at, requested vs measured sparsity,
    perplexity, accuracies (NaN where the row was evaluated on perplexity only, `zeroshot_listed`)."""
    acc = res["accuracy"] or {}
    return {"pruner": pruner, "ratio_method": config[0], "score_method": config[1], "score_task": config[2],
            "compared_at": float(budget),
            "requested_global": global_sparsity(ratios, sizes), "measured_global": res["global_sparsity"],
            "max_layer_dev": float(np.max(np.abs(np.array(res["measured"]) - ratios))),
            "perplexity": res["perplexity"], "mean_acc": float(np.mean(list(acc.values()))) if acc else np.nan,
            **{f"acc_{t}": a for t, a in acc.items()}, "prune_seconds": res["prune_seconds"], "key": res["key"]}


def dense_record(dense: dict) -> dict:
    """The dense model's row of pruning_results."""
    return {"pruner": "dense", "ratio_method": "dense", "score_method": "-", "score_task": "-",
            "compared_at": 0.0, "requested_global": 0.0, "measured_global": dense["global_sparsity"], "max_layer_dev": 0.0,
            "perplexity": dense["perplexity"], "mean_acc": mean_accuracy(dense),
            **{f"acc_{t}": a for t, a in dense["accuracy"].items()}, "prune_seconds": 0.0, "key": dense["key"]}


def pruning_results(bench: Bench, vectors: dict[tuple, np.ndarray], configs: Sequence[tuple],
                    pruners: Sequence[str], dense: dict, progress: bool = True) -> pd.DataFrame:
    """Every (pruner, configuration) evaluated (pruner-major order), then the dense row; each row
    with the budget it is compared at (`compared_at`: the params' target, or the paper MDL's).
    Zero-shot accuracy only for the configurations `zeroshot_listed` (the others: perplexity), which
    are evaluated first, so an unlisted row with the same ratios as a listed one shows its accuracy."""
    todo = [(pr, k) for pr in pruners for k in configs]
    pp = bench.params.pruning
    target = pp.target
    first = sorted(range(len(todo)), key=lambda i: not zeroshot_listed(todo[i][1], pp))
    for i in _bar(first, "pruned models", progress):
        pr, k = todo[i]
        bench.run(vectors[k], pr, need_accuracy=zeroshot_listed(k, pp))
    records = [result_record(pr, k, vectors[k], bench.run(vectors[k], pr, need_accuracy=False), bench.sizes,
                             compared_at(k, vectors, bench.sizes, target)) for pr, k in todo]
    return pd.DataFrame(records + [dense_record(dense)])


def mask_tolerance(model: nn.Module) -> float:
    """Largest gap between a requested and a measured layer sparsity that integer masks allow:
    Wanda rounds per output row (half a weight of the narrowest input), magnitude and SparseGPT
    per matrix (finer); so 0.5 / min in_features over the prunable linears."""
    return 0.5 / min(m.in_features for layer in decoder_layers(model) for m in prunable_linears(layer).values())


def budget_check(results: pd.DataFrame, mask_tol: float) -> pd.DataFrame:
    """Per pruned row: the budget it is compared at, the gap of its requested global sparsity (must be
    ≤ BUDGET_TOL: the ratio vectors are solved for it) and of its measured one (≤ `mask_tol`, the
    integer rounding of masks), and whether both hold."""
    pruned = results[results["pruner"] != "dense"]
    out = pruned[["pruner", "ratio_method", "score_method", "score_task", "compared_at", "requested_global",
                  "measured_global"]].copy()
    out["requested_gap"] = (out["requested_global"] - out["compared_at"]).abs()
    out["measured_gap"] = (out["measured_global"] - out["compared_at"]).abs()
    out["equal_budget"] = (out["requested_gap"] <= BUDGET_TOL) & (out["measured_gap"] <= mask_tol)
    return out.reset_index(drop=True)


def budget_verdict(check: pd.DataFrame, target: float) -> str:
    """One line: the budgets the rows are compared at and whether every row meets its budget."""
    budgets = sorted(set(check["compared_at"].round(6)))
    bad = check[~check["equal_budget"]]
    return (f"BUDGETS: rows compared at global sparsity {budgets} (target {target:g}; any other value is the "
            f"paper's MDL program and the methods re-solved at its sparsity); largest requested gap "
            f"{check['requested_gap'].max():.1e}, largest measured gap {check['measured_gap'].max():.1e}; "
            + ("every row at its budget." if bad.empty else f"{len(bad)} rows OFF their budget: "
               + ", ".join(f"{r.pruner}/{r.ratio_method}/{r.score_task}" for r in bad.itertuples())))


def fine_tune_sources(pruned: pd.DataFrame) -> list[str]:
    """Score source tasks the paper's Average rows average over: the fine-tune tasks evaluated
    (calibration is listed on its own), or every evaluated source if there is none."""
    evaluated_tasks = sorted(set(pruned["score_task"]) - {"-"})
    return [t for t in evaluated_tasks if t != "calibration"] or evaluated_tasks


def result_tables(results: pd.DataFrame, pruners: Sequence[str], score_methods: Sequence[str]):
    """(accuracy %, perplexity) in the paper's Table 1/2 layout: rows (score_method, score_task,
    ratio_method), a `sparsity` column (the requested global sparsity: the target, or the paper
    MDL program's own for "mdl" and the "<method>@mdl" rows), then one column per pruner; accuracy
    gets the paper's "Average (MDL)" rows (mean over the fine-tune score sources, score_task
    "average"); both end with the dense row."""
    idx = ["score_method", "score_task", "ratio_method"]
    pruned = results[results["pruner"] != "dense"]
    dense = results[results["pruner"] == "dense"].iloc[0]
    sparsity = pruned.groupby(idx, sort=False)["requested_global"].mean().rename("sparsity")
    table_acc = (100 * pruned.pivot_table(index=idx, columns="pruner", values="mean_acc", sort=False))[list(pruners)]
    table_ppl = pruned.pivot_table(index=idx, columns="pruner", values="perplexity", sort=False)[list(pruners)]
    table_acc, table_ppl = (pd.concat([sparsity, t], axis=1)[["sparsity", *pruners]] for t in (table_acc, table_ppl))
    ft = fine_tune_sources(pruned)
    avg_rows = []
    for sm in score_methods:
        for rm in AVERAGE_METHODS:
            sel = pruned[(pruned.score_method == sm) & (pruned.ratio_method == rm) & pruned.score_task.isin(ft)]
            if len(sel):
                avg_rows.append({"score_method": sm, "score_task": "average", "ratio_method": rm,
                                 "sparsity": sel["requested_global"].mean(),
                                 **{pr: 100 * sel[sel.pruner == pr]["mean_acc"].mean() for pr in pruners}})
    if avg_rows:
        table_acc = pd.concat([table_acc, pd.DataFrame(avg_rows).set_index(idx)])
    table_acc.loc[("-", "-", "dense"), :] = [0.0] + [100 * dense["mean_acc"]] * len(pruners)
    table_ppl.loc[("-", "-", "dense"), :] = [0.0] + [dense["perplexity"]] * len(pruners)
    return table_acc, table_ppl


def _at_mdl_budget(pruned: pd.DataFrame, sel: pd.DataFrame, pr: str, rm: str, col: str, sources) -> float:
    """Mean of `col` of ratio method `rm` at the paper MDL program's budget, over `sources`: the
    "<rm>@mdl" row of a source where its MDL row missed the target, else the `rm` row (then at the
    target, which is that MDL row's sparsity too)."""
    vals = []
    for t in sources:
        st = sel[sel.score_task == t]
        if not len(st[st.ratio_method == "mdl"]):
            continue
        m = st[st.ratio_method == rm + MATCH_SUFFIX]
        if not len(m):
            m = (pruned[(pruned.pruner == pr) & (pruned.ratio_method == rm)] if rm == "uniform"
                 else st[st.ratio_method == rm])
        vals.extend(m[col].tolist())
    return float(np.mean(vals)) if vals else float("nan")


def paper_vs_ours(results: pd.DataFrame, pruners: Sequence[str], score_methods: Sequence[str]) -> pd.DataFrame:
    """Our MDL (and MDL-eq, MDL-eq-free), LayerIF and uniform accuracy per (score method, pruner),
    averaged over the fine-tune score sources, beside the paper's Tables 1-2 (`paper.pruning_table`):
    what is comparable is the MDL − LayerIF difference, and only at equal global sparsity. So
    `ours_diff` is the paper's program ("mdl", at its own sparsity `mdl_sparsity`) minus LayerIF
    re-solved at that sparsity (`ours_layerif_at_mdl`, "layerif@mdl"), and `ours_diff_eq` /
    `ours_diff_eq_free` are the equality variants minus LayerIF, all at the target."""
    paper = pruning_table()
    pruned = results[results["pruner"] != "dense"]
    ft = fine_tune_sources(pruned)
    rows = []
    for sm in score_methods:
        for pr in pruners:
            sel = pruned[(pruned.pruner == pr) & (pruned.score_method == sm) & pruned.score_task.isin(ft)]
            g = lambda rm, col: sel[sel.ratio_method == rm][col].mean()  # noqa: E731
            at = lambda rm, col: _at_mdl_budget(pruned, sel, pr, rm, col, ft)  # noqa: E731
            rows.append({"score_method": sm, "pruner": pr, "mdl_sparsity": g("mdl", "requested_global"),
                         "ours_mdl": 100 * g("mdl", "mean_acc"),
                         "ours_layerif_at_mdl": 100 * at("layerif", "mean_acc"),
                         "ours_uniform_at_mdl": 100 * at("uniform", "mean_acc"),
                         "ours_mdl_eq": 100 * g("mdl_eq", "mean_acc"),
                         "ours_mdl_eq_free": 100 * g("mdl_eq_free", "mean_acc"),
                         "ours_layerif": 100 * g("layerif", "mean_acc"),
                         "ours_uniform": 100 * pruned[(pruned.pruner == pr)
                                                     & (pruned.ratio_method == "uniform")]["mean_acc"].mean(),
                         "ppl_mdl": g("mdl", "perplexity"), "ppl_layerif_at_mdl": at("layerif", "perplexity"),
                         "ppl_mdl_eq": g("mdl_eq", "perplexity"),
                         "ppl_mdl_eq_free": g("mdl_eq_free", "perplexity"), "ppl_layerif": g("layerif", "perplexity")})
    ours = pd.DataFrame(rows)
    ours["ours_diff"] = ours["ours_mdl"] - ours["ours_layerif_at_mdl"]
    ours["ours_diff_eq"] = ours["ours_mdl_eq"] - ours["ours_layerif"]
    ours["ours_diff_eq_free"] = ours["ours_mdl_eq_free"] - ours["ours_layerif"]
    cmp = ours.merge(paper[paper.model == "Mistral-7B"][["pruner", "paper_mdl", "paper_layerif", "paper_diff"]],
                     on="pruner")
    return cmp.merge(paper[paper.model == "Gemma-7B"][["pruner", "paper_diff"]]
                     .rename(columns={"paper_diff": "paper_diff_gemma"}), on="pruner")


def paper_verdict(cmp: pd.DataFrame, n_eval: int, n_tasks: int) -> str:
    """Per-cell MDL − LayerIF lines (each at equal global sparsity) and the sign agreement with the
    paper's Mistral table, against the sampling s.e. of one accuracy number (n_eval questions x
    n_tasks tasks)."""
    se = 100 * np.sqrt(0.25 / (n_eval * n_tasks))
    lines = [f"(one accuracy number rests on ~{n_eval} questions x {n_tasks} tasks: sampling s.e. <= {se:.1f} points)"]
    for _, r in cmp.iterrows():
        lines.append(f"{r.score_method:12s} {r.pruner:10s}: ours MDL-LayerIF = {r.ours_diff:+.2f} at s = "
                     f"{r.mdl_sparsity:.3f} (MDL-eq {r.ours_diff_eq:+.2f}, MDL-eq-free {r.ours_diff_eq_free:+.2f} at the "
                     f"target) points, ppl MDL {r.ppl_mdl:.2f} vs LayerIF {r.ppl_layerif_at_mdl:.2f}; paper Mistral "
                     f"{r.paper_diff:+.2f}, Gemma {r.paper_diff_gemma:+.2f}")
    same_sign = [np.sign(round(a, 6)) == np.sign(b) for a, b in zip(cmp.ours_diff, cmp.paper_diff)]
    lines.append(f"\nVERDICT: at equal global sparsity, the sign of MDL - LayerIF agrees with the paper's Mistral table "
                 f"in {sum(same_sign)} of {len(cmp)} (score method, pruner) cells; our largest |MDL - LayerIF| is "
                 f"{cmp.ours_diff.abs().max():.2f} points against a sampling s.e. of about {se:.1f} points per number.")
    return "\n".join(lines)


# =========================================================================== §4 2:4, §5 sweep
def two_four_table(bench: Bench, pruners: Sequence[str], progress: bool = True) -> pd.DataFrame:
    """2:4 semi-structured pruning of every layer under each pruner: sparsity, perplexity, accuracy."""
    rows = []
    for pr in _bar(pruners, "2:4 models", progress):
        res = bench.run(None, pr, nm=(2, 4))
        rows.append({"pruner": pr, "pattern": "2:4", "measured_global": res["global_sparsity"],
                     "perplexity": res["perplexity"], "mean_acc": mean_accuracy(res)})
    return pd.DataFrame(rows)


def sweep_clip(target: float, pp) -> float:
    """The paper's MDL clip moved with the target: ρ_max = s + (ρ_max − s at the table's target)."""
    return min(1.0, target + (pp.rho_max - pp.target))


def sparsity_sweep(bench: Bench, scores, outliers, pp, progress: bool = True) -> pd.DataFrame:
    """Held-out perplexity of every `pruning.sweep_methods` ratio vector at each `pruning.sweep`
    target under `pruning.sweep_pruner` (`scores`: one score vector's rows, or None)."""
    jobs = []
    for s in pp.sweep:
        sp = ratio_plan(scores, bench.sizes, outliers, pp, target=s, rho_max=sweep_clip(s, pp),
                        methods=pp.sweep_methods)
        for rm, g in sp.groupby("ratio_method", sort=False):
            jobs.append((s, rm, g.sort_values("layer")["ratio"].to_numpy()))
    rows = []
    for s, rm, v in _bar(jobs, f"sweep ({pp.sweep_pruner})", progress):
        res = bench.run(v, pp.sweep_pruner, need_accuracy=False)
        rows.append({"target": s, "ratio_method": rm, "requested_global": global_sparsity(v, bench.sizes),
                     "measured_global": res["global_sparsity"], "spread": v.max() - v.min(),
                     "perplexity": res["perplexity"]})
    return pd.DataFrame(rows)


def sweep_gain(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per target: uniform's perplexity, the best other method and its relative gain over uniform,
    and the worst/best perplexity ratio, over the rows at that target only (equal budgets: the
    paper's MDL program and its "@mdl" matches, at another sparsity, are left out when they
    carry `requested_global`)."""
    gain = []
    if "requested_global" in sweep:
        sweep = sweep[(sweep["requested_global"] - sweep["target"]).abs() <= BUDGET_TOL]
    for s, g in sweep.groupby("target"):
        u = g[g.ratio_method == "uniform"]["perplexity"].mean()
        other = g[g.ratio_method != "uniform"]
        best = other.loc[other["perplexity"].idxmin()] if len(other) else None
        gain.append({"target": s, "uniform_ppl": u, "best_method": None if best is None else best.ratio_method,
                     "best_ppl": np.nan if best is None else best.perplexity,
                     "rel_gain_vs_uniform": np.nan if best is None else 1 - best.perplexity / u,
                     "worst_over_best": g["perplexity"].max() / g["perplexity"].min()})
    return pd.DataFrame(gain)


def sweep_verdict(gain: pd.DataFrame, sweep_targets: Sequence[float]) -> str:
    """From which sparsity a non-uniform method beats uniform by more than
    THRESHOLDS["sweep_rel_gain"] in perplexity."""
    rel = THRESHOLDS["sweep_rel_gain"]
    hit = gain[gain["rel_gain_vs_uniform"] > rel]
    return "VERDICT: " + (f"layer-wise allocation first beats uniform by > {rel:.0%} perplexity at s = "
                          f"{hit['target'].min():g} ({hit.iloc[0]['best_method']})" if len(hit) else
                          f"no ratio method beats uniform by > {rel:.0%} perplexity at any swept sparsity "
                          f"{list(sweep_targets)}")
