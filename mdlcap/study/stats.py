"""Seed statistics shared by the notebooks' verdicts: task averages per seed and the paired call.

Why not scipy.stats: the call is "is the mean paired difference more than z standard errors from
zero", with the one-seed and zero-spread cases spelled out, which is three lines, not a test.
"""
from __future__ import annotations

import math


def per_seed_average(results, methods=None):
    """Average accuracy over tasks for each (method, seed) from the long results frame
    (columns task, method, seed, accuracy); only seeds where the method has every task."""
    df = results if methods is None else results[results["method"].isin(methods)]
    n_tasks = df["task"].nunique()
    g = df.groupby(["method", "seed"])["accuracy"].agg(["mean", "count"]).reset_index()
    return g[g["count"] == n_tasks].drop(columns="count").rename(columns={"mean": "accuracy"})


def paired_call(diffs, z: float) -> dict:
    """Mean of the paired (per-seed) differences, its standard error over seeds (ddof=1; NaN for
    one seed), and the sign it resolves to: +1 / -1 when |mean| > z se (or se = 0 and mean != 0),
    0 when it does not, None with one seed (noise unknown)."""
    n = len(diffs)
    diff = float(diffs.mean())
    se = float(diffs.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if n < 2:
        sign = None
    elif (abs(diff) > z * se and se > 0) or (se == 0 and diff != 0):
        sign = 1 if diff > 0 else -1
    else:
        sign = 0
    return {"n": n, "diff": diff, "se": se, "sign": sign}
