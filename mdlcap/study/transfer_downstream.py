"""Notebook 05 §3: does a transferred allocation matter for the model? (METHOD.md §4)

For chosen ordered task pairs, LoRA-MoE is fine-tuned on the target task with the target's own
Algorithm-1 expert counts ("native") and with the source's ("transferred"), per seed, exactly
as notebook 03 fine-tunes a cell; `downstream_summary` pairs them (by seed and by test item)
into a 95 % bootstrap interval (`mdlcap.study.stats.paired_interval`) with its minimum detectable
effect, and `downstream_verdicts` reads each verdict from that interval.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mdlcap import models
from mdlcap.interventions import allocation as ab
from mdlcap.interventions import finetune as ft
from mdlcap.study.cells import Job, run_cells
from mdlcap.study.stats import paired_interval


def downstream_pairs(real, tasks, n_pairs: int = 2, method: str = "cg_ggn") -> list[tuple[str, str]]:
    """Task pairs for the fine-tuning check: among `tasks`, the ordered pair with the largest
    allocation regret under `method`'s scores, then the smallest (then the next largest ...)."""
    if real is None or len(real) == 0 or n_pairs <= 0:
        return []
    ok = real[(real["error"] == "") & (real["program"] == "allocate") & (real["method"] == method)
              & real["source"].isin(tasks) & real["target"].isin(tasks)]
    ok = ok.drop_duplicates(["source", "target"]).sort_values("regret", ascending=False)
    pairs = list(zip(ok["source"], ok["target"]))
    picked, lo, hi = [], len(pairs) - 1, 0
    while len(picked) < min(n_pairs, len(pairs)):
        if len(picked) % 2 == 0:
            picked.append(pairs[hi]); hi += 1
        else:
            picked.append(pairs[lo]); lo -= 1
    return picked


def downstream(params, scores, pairs, *, method: str = "mdl_cg_ggn", device: str = "cpu") -> pd.DataFrame:
    """Accuracy on the target task of LoRA-MoE fine-tuned with the target's own allocation
    ("native") and with the source's ("transferred"), per seed of params.allocation.

    Allocations come from `mdlcap.interventions.allocation.allocate(method, ...)` (Algorithm 1 on
    the task's scores); the cells are notebook 03's (`mdlcap.study.cells.run_cells`: same settings,
    one cache entry per cell, over `run.workers` processes on CPU), so equal counts share one run
    and a cell notebook 03 already trained is read back (`cached` True)."""
    A = params.allocation
    acc = ft.make_accelerator(device)
    base, tok = models.load(params, device=str(acc.device), progress=False)
    L = len(models.decoder_layers(base))
    cells = []
    for s, t in pairs:
        native = ab.allocate(method, n_layers=L, total=A.total_experts, params=A, scores=scores, task=t)
        moved = ab.allocate(method, n_layers=L, total=A.total_experts, params=A, scores=scores, task=s)
        if native is None or moved is None:
            raise ValueError(f"method: {method!r} has no scores for {s!r} or {t!r} in scores.csv")
        same = bool(np.array_equal(native, moved))
        for seed in A.seeds:
            for kind, counts in (("native", native), ("transferred", moved)):
                cells.append(({"source": s, "target": t, "seed": int(seed), "kind": kind,
                               "counts": " ".join(map(str, counts)), "same_counts": same},
                              Job(t, int(seed), counts=tuple(int(c) for c in counts))))
    workers = params.run.workers if acc.device.type == "cpu" else 1
    recs = run_cells(params, [j for _, j in cells], workers=workers, base=base, tok=tok, accelerator=acc,
                     desc="downstream cells")
    return pd.DataFrame([{**row, "accuracy": recs[j.key(params)]["accuracy"], "items": recs[j.key(params)]["items"],
                          "cached": recs[j.key(params)].get("cached", False)} for row, j in cells])


def downstream_summary(down: pd.DataFrame, real: pd.DataFrame, score_method: str) -> pd.DataFrame:
    """Per (source, target): mean native and transferred accuracy over seeds, their paired
    difference in points with its 95 % interval over seeds and test items (ci_low, ci_high, mde),
    whether the counts were the same, and the pair's allocation regret and regret/bound under
    `score_method`'s scores (from notebook 05 §2's table)."""
    rows = []
    for (s, t), g in down.groupby(["source", "target"], sort=False):
        seeds = sorted(g.seed.unique())
        item = {k: np.array([g[(g.kind == k) & (g.seed == sd)]["items"].iloc[0] for sd in seeds], dtype=float)
                for k in ("native", "transferred")}
        iv = paired_interval(100.0 * (item["transferred"] - item["native"]))
        rows.append({"source": s, "target": t, "native": float(g[g.kind == "native"].accuracy.mean()),
                     "transferred": float(g[g.kind == "transferred"].accuracy.mean()), "seeds": len(seeds),
                     "n_items": iv["n_items"], "diff_points": iv["diff"], "ci_low": iv["ci_low"],
                     "ci_high": iv["ci_high"], "mde": iv["mde"], "same_counts": bool(g.same_counts.iloc[0])})
    per_pair = pd.DataFrame(rows)
    reg = real[(real.program == "allocate") & (real.method == score_method) & (real.error == "")]
    return per_pair.merge(reg[["source", "target", "regret", "ratio"]], on=["source", "target"], how="left")


def downstream_verdicts(per_pair: pd.DataFrame) -> list[str]:
    """One verdict line per pair, read from the 95 % interval of transferred − native accuracy."""
    lines = []
    for r in per_pair.itertuples():
        if r.same_counts:
            what = "identical expert counts: the transfer costs nothing here"
        elif not np.isfinite(r.ci_low):
            what = "no interval (one seed and one item)"
        elif r.ci_high < 0 or r.ci_low > 0:
            what = f"{'lower' if r.ci_high < 0 else 'higher'} accuracy with the transferred allocation"
        else:
            what = f"no resolvable difference (the design detects {r.mde:.2f} points)"
        lines.append(f"VERDICT {r.source} -> {r.target}: transferred - native {r.diff_points:+.2f} points, "
                     f"95 % CI [{r.ci_low:+.2f}, {r.ci_high:+.2f}] over {r.seeds} seeds x {r.n_items} items; {what}.")
    return lines
