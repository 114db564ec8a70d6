"""scores.csv, the contract between notebook 02 and the programs of notebooks 03–05
(METHOD.md §1, Eq 10): one row per (task, method, layer) with the score ζ_k² (or a method's
stand-in for it) and q_k = max(score_k, 0) / Σ_j max(score_j, 0) on the simplex.

    df = scores_frame({(task, method): gains, ...})      # columns task, method, layer, score, q
    df = load_scores(run.root, task="cola", method="cg_ggn")
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

from mdlcap.theory.programs import scores_from_gains

COLUMNS = ["task", "method", "layer", "score", "q"]


def scores_frame(results: Mapping[tuple[str, str], Mapping[str, float]]):
    """{(task, method): {block: score}} -> long DataFrame task, method, layer, score, q (Eq 10: q on
    the simplex). `score` is kept as computed (signed for LayerIF); q comes from
    `scores_from_gains`, the one place that maps a negative score to q = 0 (a layer with no
    positive gain gets no capacity). A source with no positive score at all (LayerIF where every
    layer's training data is net harmful) keeps its scores and gets q = NaN: q is undefined, and
    the programs that need it say so (`mdlcap.study.pruning_ratios.source_scores`)."""
    import pandas as pd
    rows = []
    for (task, method), gains in results.items():
        vals = [float(v) for v in gains.values()]
        if any(not math.isfinite(v) for v in vals):
            raise ValueError(f"results: scores for ({task}, {method}) must be finite")
        q = scores_from_gains(vals) if any(v > 0 for v in vals) else [math.nan] * len(vals)
        for layer, v in enumerate(vals):
            rows.append({"task": task, "method": method, "layer": layer, "score": v, "q": float(q[layer])})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_scores(run_root: str | os.PathLike, task: str | None = None, method: str | None = None):
    """scores.csv written by notebook 02 (columns task, method, layer, score, q), optionally filtered."""
    import pandas as pd
    path = Path(run_root) / "02_curvature_scores" / "scores.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 02 first (make nb NB=02 PARAMS=...)")
    df = pd.read_csv(path)
    if task is not None:
        if task not in set(df["task"]):
            raise ValueError(f"task: {task!r} not in {path} (have {sorted(set(df['task']))})")
        df = df[df["task"] == task]
    if method is not None:
        if method not in set(df["method"]):
            raise ValueError(f"method: {method!r} not in {path} (have {sorted(set(df['method']))})")
        df = df[df["method"] == method]
    return df.reset_index(drop=True)
