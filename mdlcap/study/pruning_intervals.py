"""Notebook 04: paired intervals of every ratio method against its baselines at equal global sparsity,
the parity verdict of Tables 1-2 read from them, and the zero-shot design's power.

    comparison_intervals(bench, vectors, configs, pruners, dense, score_methods)   -> intervals.csv rows
    intervals_verdict(intervals)                    the claim rows' verdicts and the design check, in words
    zeroshot_power_table(items) / zeroshot_power_ok / zeroshot_items_needed     s.e. of the seven-task mean

Each pruned model's cache entry (`mdlcap.study.pruning.evaluate_config`) keeps the mean loss of every
held-out window and the 0/1 correctness of every zero-shot question, so two models pruned to the same
global sparsity are compared on the same units (METHOD.md §3 "Equal budgets"; schema
`mdlcap.study.stats.INTERVAL_COLUMNS`, metrics `paper.PRUNING_METRICS`):

  perplexity_rel   ppl(method) / ppl(baseline) − 1 = exp(mean over windows of the paired loss
                   difference) − 1 (every window predicts the same number of tokens, so this is the ratio
                   of the token-weighted perplexities exactly). The interval is the BCa bootstrap over
                   held-out windows (`stats.paired_interval`, 1-D: same windows on both sides) of the
                   mean loss difference, mapped through exp(·) − 1 (BCa and percentile intervals follow a
                   monotone map); se by the delta method, exp(d)·se_d; mde as exp(mde_d) − 1.
  zeroshot_points  mean over the tasks of each task's mean paired difference in correctness, in points;
                   BCa bootstrap over questions within each task (`stats.stratified_interval`: each task
                   one stratum, the same questions on both sides). Where the two models answer every
                   question alike there is nothing to resample: the interval is ±mean_t 3/n_t (the rule of
                   three bounds each task's share of discordant questions at 95 %), not a zero-width one.

Comparisons, per pruner (task = pruner name), all at one global sparsity: mdl_eq, mdl_eq_free, layerif,
owl vs uniform and mdl_eq vs layerif at the target; the paper's program "mdl" at its own sparsity vs
"layerif@mdl" and "uniform@mdl" (`COMPARISONS`), plus "uniform<s%> - dense" (the design check: the
default model must lose ≥ THRESHOLDS["pruning_design_rel_ppl"] at 50 % uniform magnitude pruning).
Rows of the paper's score source (`primary_source`: the LayerIF scores on the calibration source) are
named "<method> - <baseline>"; other score sources get " [<score method>/<task>]" appended. The two
parity rows (`CLAIM_COMPARISONS`, zero-shot) carry the paper's Mistral-7B difference as `claim` and
the equivalence verdict (`stats.equivalence_verdict`, margin THRESHOLDS["pruning_parity_points"]).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mdlcap.interventions.pruning import global_sparsity
from mdlcap.study.paper import (AVERAGE_TASK, PRUNING_METRICS, PRUNING_PARITY_COMPARISONS, PRUNING_PARITY_METRIC,
                                THRESHOLDS, pruning_table)
from mdlcap.study.pruning_ratios import BUDGET_TOL, MATCH_SUFFIX, base_method, first_source
from mdlcap.study.stats import equivalence_verdict, interval_frame, interval_row, paired_interval, stratified_interval

PPL, ZS = PRUNING_METRICS
COMPARISONS = (("mdl_eq", "uniform"), ("mdl_eq_free", "uniform"), ("layerif", "uniform"), ("owl", "uniform"),
               ("mdl_eq", "layerif"), ("mdl", "layerif@mdl"), ("mdl", "uniform@mdl"))   # (method, baseline)
CLAIM_COMPARISONS = PRUNING_PARITY_COMPARISONS    # Tables 1-2 parity: at MDL's own sparsity, and at 50 %
assert PRUNING_PARITY_METRIC == ZS and {c for m, b in COMPARISONS for c in [f"{m} - {b}"]} >= set(CLAIM_COMPARISONS)
SCORE_FREE = ("uniform", "owl")


def comparison_name(method: str, baseline: str, source: tuple[str, str] | None = None) -> str:
    """"<method> - <baseline>", with " [<score method>/<task>]" for a score source other than the primary."""
    return f"{method} - {baseline}" + ("" if source is None else f" [{source[0]}/{source[1]}]")


def ppl_rel_interval(loss_method, loss_base, **kw) -> dict:
    """Relative perplexity change ppl(method)/ppl(baseline) − 1 with its paired bootstrap interval over
    held-out windows (module docstring): `loss_*` the per-window mean losses (nats), same windows."""
    a, b = np.asarray(loss_method, float), np.asarray(loss_base, float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"loss_method: must be 1-D and match loss_base (same windows), got {a.shape} vs {b.shape}")
    r = paired_interval(a - b, **kw)
    ex = lambda x: math.exp(x) - 1 if math.isfinite(x) else math.nan   # noqa: E731
    return {**r, "diff": ex(r["diff"]), "ci_low": ex(r["ci_low"]), "ci_high": ex(r["ci_high"]),
            "se": math.exp(r["diff"]) * r["se"] if math.isfinite(r["se"]) else math.nan, "mde": ex(r["mde"])}


def zeroshot_interval(items_method: dict, items_base: dict, tasks: Sequence[str], **kw) -> dict:
    """Mean over `tasks` of the per-task mean paired difference in 0/1 correctness, in points, with the
    stratified bootstrap over each task's questions (module docstring). Same questions on both sides."""
    if not tasks:
        raise ValueError("tasks: must name at least one task")
    strata = []
    for t in tasks:
        if t not in items_method or t not in items_base:
            raise ValueError(f"tasks: '{t}' has no per-item results on both sides")
        a, b = np.asarray(items_method[t], float), np.asarray(items_base[t], float)
        if a.shape != b.shape:
            raise ValueError(f"items_method: task '{t}' has {a.size} items, items_base {b.size} (must be the same "
                             "questions)")
        strata.append(100.0 * (a - b))
    r = stratified_interval(strata, **kw)
    if all(not x.any() for x in strata):
        # every question answered alike: the bootstrap has nothing to resample (a zero-width interval
        # would read as exact parity); bound each task's discordance by the rule of three, 3/n_t (95 %)
        half = float(np.mean([300.0 / x.size for x in strata]))
        r = {**r, "ci_low": -half, "ci_high": half, "se": half / 1.959964, "method": "rule of three (no discordant item)"}
        r["mde"] = (1.959964 + 0.8416212335729143) * r["se"]
    return r


def primary_source(score_methods: Sequence[str], score_tasks: Sequence[str]) -> tuple[str, str] | None:
    """The score source of the claim rows: the paper's LayerIF scores (the first score method named
    layerif*, else the first) on `first_source` of the tasks (calibration when present)."""
    if not score_methods or not score_tasks:
        return None
    sm = next((m for m in score_methods if m.startswith("layerif")), score_methods[0])
    return sm, first_source(list(score_tasks))


def resolve(vectors: dict, label: str, source: tuple[str, str] | None) -> tuple | None:
    """The plan key of `label` for a score source: score-free methods as ("<m>", "-", "-"); a
    "<m>@mdl" that the plan lacks (the paper's program met the target) falls back to "<m>" itself."""
    def key(lab):
        return (lab, "-", "-") if lab in SCORE_FREE else (None if source is None else (lab, *source))
    k = key(label)
    if k in vectors:
        return k
    if label.endswith(MATCH_SUFFIX):
        k = key(base_method(label))
        return k if k in vectors else None
    return None


def comparison_intervals(bench, vectors: dict, configs: Sequence[tuple], pruners: Sequence[str], dense: dict,
                         score_methods: Sequence[str], *, n_resamples: int = 4999, seed: int = 0) -> pd.DataFrame:
    """Every comparison of `COMPARISONS` per pruner and score source (among `configs`, read back from the
    "pruning" cache through `bench.run`, nothing re-evaluated), plus "uniform<s%> - dense": one row per
    metric where both sides have the units (zero-shot only for rows evaluated on it). Raises ValueError
    if the two sides of a comparison are not at the same requested global sparsity."""
    tasks = list(bench.params.data.zeroshot_tasks)
    target = bench.params.pruning.target
    cfg = set(configs)
    sources = list(dict.fromkeys(k[1:] for k in configs if k[1] != "-"))
    prim = primary_source(list(dict.fromkeys(s[0] for s in sources)), [s[1] for s in sources])
    if prim not in sources:
        prim = sources[0] if sources else None
    paper = pruning_table()
    paper_diff = dict(zip(paper[paper.model == "Mistral-7B"].pruner, paper[paper.model == "Mistral-7B"].paper_diff))
    kw = dict(n_resamples=n_resamples, seed=seed)
    rows = []

    def add(name, pr, a, b, claim_row):
        if a.get("window_loss") and b.get("window_loss"):
            rows.append(interval_row(name, pr, PPL, ppl_rel_interval(a["window_loss"], b["window_loss"], **kw), None))
        if a.get("items") and b.get("items"):
            row = interval_row(name, pr, ZS, zeroshot_interval(a["items"], b["items"], tasks, **kw), None)
            if claim_row:
                row["claim"] = float(paper_diff.get(pr, math.nan))
                row["verdict"] = equivalence_verdict(row["ci_low"], row["ci_high"], THRESHOLDS["pruning_parity_points"])
            rows.append(row)

    for pr in pruners:
        uni = ("uniform", "-", "-")
        if uni in cfg:
            add(f"uniform{round(100 * target)} - dense", pr, bench.run(vectors[uni], pr, need_accuracy=False),
                dense, False)
        done = set()
        for src in sources or [None]:
            for m, b in COMPARISONS:
                km, kb = resolve(vectors, m, src), resolve(vectors, b, src)
                if km is None or kb is None or km not in cfg or kb not in cfg or km == kb:
                    continue
                name = comparison_name(m, b, None if src == prim or (km[1] == "-" and kb[1] == "-") else src)
                if name in done:
                    continue
                done.add(name)
                gm, gb = global_sparsity(vectors[km], bench.sizes), global_sparsity(vectors[kb], bench.sizes)
                if abs(gm - gb) > BUDGET_TOL:
                    raise ValueError(f"vectors: {name} compares global sparsity {gm:.6f} with {gb:.6f} (must be equal)")
                add(name, pr, bench.run(vectors[km], pr, need_accuracy=False),
                    bench.run(vectors[kb], pr, need_accuracy=False), name in CLAIM_COMPARISONS)
    return interval_frame(rows)


def intervals_verdict(intervals: pd.DataFrame, target: float = 0.5) -> str:
    """The parity verdicts (claim rows), the design check (uniform − dense perplexity against
    THRESHOLDS["pruning_design_rel_ppl"]) and the widths the design achieved, as lines."""
    margin, goal = THRESHOLDS["pruning_parity_points"], THRESHOLDS["pruning_design_rel_ppl"]
    lines = []
    claim = intervals[intervals.comparison.isin(CLAIM_COMPARISONS) & (intervals.metric == ZS)]
    for r in claim.itertuples():
        lines.append(f"PARITY {r.comparison:18s} {r.task:10s}: {r.diff:+.2f} points, 95% CI [{r.ci_low:+.2f}, "
                     f"{r.ci_high:+.2f}] (paper Mistral {r.claim:+.2f}) -> {r.verdict} (margin ±{margin:g})")
    if claim.empty:
        lines.append("PARITY: no zero-shot claim rows (the MDL and LayerIF rows were not scored on zero-shot)")
    dense = intervals[intervals.comparison.str.endswith("- dense") & (intervals.metric == PPL)]
    for r in dense.itertuples():
        ok = r.ci_low >= goal
        lines.append(f"DESIGN {r.comparison} {r.task:10s}: perplexity {r.diff:+.1%} [{r.ci_low:+.1%}, {r.ci_high:+.1%}]"
                     + (f" ({'meets' if ok else 'MISSES'} the >= {goal:.0%} design goal)" if r.task == "magnitude" else ""))
    for metric, scale, unit in ((PPL, 100, "% of perplexity"), (ZS, 1, "points")):
        sub = intervals[(intervals.metric == metric) & ~intervals.comparison.str.endswith("- dense")]
        if len(sub):
            half = (sub.ci_high - sub.ci_low) / 2
            lines.append(f"WIDTH {metric}: median 95% CI half-width {scale * half.median():.2f} {unit}, median mde "
                         f"{scale * sub.mde.median():.2f} {unit}; "
                         f"{int((sub.verdict.isin(['positive', 'negative'])).sum())} of {len(sub)} method comparisons "
                         "resolve a difference from 0")
    return "\n".join(lines)


# =========================================================================== zero-shot power
def zeroshot_items_needed(n_tasks: int, max_se_points: float | None = None, p: float = 0.5) -> int:
    """Questions per task so that the binomial s.e. of the n_tasks-task mean accuracy,
    sqrt(Σ_t p(1−p)/n) / T, is ≤ max_se_points at accuracy p (0.5: the worst case): n ≥ p(1−p) / (T m²)."""
    m = THRESHOLDS["zeroshot_mean_se_points"] if max_se_points is None else max_se_points
    if n_tasks < 1 or not m > 0 or not 0 <= p <= 1:
        raise ValueError(f"n_tasks: must be >= 1 with max_se_points > 0 and p in [0, 1], got {n_tasks}, {m}, {p}")
    return max(1, math.ceil(p * (1 - p) / (n_tasks * (m / 100) ** 2) - 1e-9))


def zeroshot_power_table(items: dict[str, Sequence[int]]) -> pd.DataFrame:
    """Per task (in name order, whatever order `items` arrived in): questions n, accuracy p, its
    binomial s.e. in points; then the AVERAGE_TASK row:
    total questions, mean accuracy and the s.e. of the task mean sqrt(Σ_t p_t(1−p_t)/n_t)/T, next
    to the worst-case (p = 0.5) s.e. at these n."""
    if not items:
        raise ValueError("items: must hold at least one task's per-item results")
    rows = []
    for t, v in sorted(items.items()):
        a = np.asarray(v, float)
        if a.size == 0:
            raise ValueError(f"items: task '{t}' has no items")
        p = float(a.mean())
        rows.append({"task": t, "n": int(a.size), "p": p, "se_points": 100 * math.sqrt(p * (1 - p) / a.size),
                     "se_points_worst": 100 * math.sqrt(0.25 / a.size)})
    df = pd.DataFrame(rows)
    T = len(df)
    avg = {"task": AVERAGE_TASK, "n": int(df.n.sum()), "p": float(df.p.mean()),
           "se_points": 100 * math.sqrt(float((df.p * (1 - df.p) / df.n).sum())) / T,
           "se_points_worst": 100 * math.sqrt(float((0.25 / df.n).sum())) / T}
    return pd.concat([df, pd.DataFrame([avg])], ignore_index=True)


def zeroshot_power_ok(table: pd.DataFrame, max_se_points: float | None = None, worst_case: bool = False) -> bool:
    """Whether the task mean's s.e. (the AVERAGE_TASK row of `zeroshot_power_table`; worst case p = 0.5
    with `worst_case`) is ≤ max_se_points (THRESHOLDS["zeroshot_mean_se_points"])."""
    m = THRESHOLDS["zeroshot_mean_se_points"] if max_se_points is None else max_se_points
    avg = table[table.task == AVERAGE_TASK]
    if len(avg) != 1:
        raise ValueError(f"table: must hold one '{AVERAGE_TASK}' row (from zeroshot_power_table)")
    return bool(avg.iloc[0]["se_points_worst" if worst_case else "se_points"] <= m)


def zeroshot_power_verdict(table: pd.DataFrame) -> str:
    """One line: questions per task, the s.e. of the task mean (measured p and worst case) against the threshold."""
    m = THRESHOLDS["zeroshot_mean_se_points"]
    avg = table[table.task == AVERAGE_TASK].iloc[0]
    per = table[table.task != AVERAGE_TASK]
    return (f"ZERO-SHOT POWER: {int(per.n.min())}-{int(per.n.max())} questions per task x {len(per)} tasks; s.e. of the "
            f"{len(per)}-task mean {avg.se_points:.2f} points at the dense model's accuracies ({avg.se_points_worst:.2f} "
            f"at p = 0.5), threshold {m:g}: {'met' if zeroshot_power_ok(table) else 'NOT met'}; "
            f"{zeroshot_items_needed(len(per))} per task meet it at any accuracy.")
