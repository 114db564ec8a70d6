"""Seed statistics shared by the notebooks' verdicts: task averages per seed, and paired bootstrap
intervals with the design's minimum detectable effect. paired_interval and stratified_interval
resample with scipy.stats.bootstrap (seeds and items, BCa).
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


# ----------------------------------------------------------------------------- paired intervals
# The verdicts of a powered design (every comparison of methods paired by seed and item, read
# from a 95 % interval that states the smallest effect it could detect). Resampling is
# scipy.stats.bootstrap's: seeds and items are passed as two independent samples, so scipy
# resamples each on its own: the two-way (seed × item) bootstrap of a crossed design.
Z_POWER = 0.8416212335729143        # z_{0.80}: 80 % power, the usual convention for a detectable effect


def _check_options(confidence: float, method: str) -> None:
    if not (0 < confidence < 1):
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence!r}")
    if method not in ("BCa", "percentile", "basic"):
        raise ValueError(f"method: must be 'BCa', 'percentile' or 'basic', got {method!r}")


def _interval(res, mean: float, z: float, out: dict) -> dict:
    """`out` with scipy's interval, its standard error and the MDE; the normal interval (flagged in
    `method`) where BCa is undefined (e.g. a near-constant statistic)."""
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    se = float(res.standard_error)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = mean - z * se, mean + z * se
        out = {**out, "method": f"{out['method']} failed; normal"}
    return {**out, "ci_low": lo, "ci_high": hi, "se": se, "mde": float((z + Z_POWER) * se)}


def paired_interval(diffs, *, confidence: float = 0.95, n_resamples: int = 4999, method: str = "BCa",
                    seed: int = 0) -> dict:
    """Mean of paired differences d[s, i] (rows = seeds, columns = items; a 1-D array is one row of
    items, or pass shape (n_seeds, 1) for per-seed values) with a `confidence` bootstrap interval
    that resamples seeds and items independently (scipy.stats.bootstrap, two samples, unpaired
    between them, both indexing the same paired table), and its minimum detectable effect
    mde = (z_{1-α/2} + z_{0.80}) · se, se the bootstrap standard error: the smallest true
    difference this design finds with 80 % power at level α.

    Degenerate designs say so instead of returning an interval: fewer than 2 units on both axes
    gives `ci` (nan, nan); zero spread gives the point as the interval (se 0)."""
    import numpy as np
    from scipy import stats as st

    d = np.asarray(diffs, dtype=float)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"diffs: must be a non-empty 1-D or 2-D (seeds x items) array, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("diffs: every paired difference must be finite")
    _check_options(confidence, method)
    n_seeds, n_items = d.shape
    mean = float(d.mean())
    out = {"diff": mean, "n_seeds": n_seeds, "n_items": n_items, "confidence": confidence, "method": method}
    z = st.norm.ppf(0.5 + confidence / 2)
    axes = [a for a, n in ((0, n_seeds), (1, n_items)) if n > 1]
    if not axes:
        return {**out, "ci_low": math.nan, "ci_high": math.nan, "se": math.nan, "mde": math.nan}
    if np.ptp(d) == 0:
        return {**out, "ci_low": mean, "ci_high": mean, "se": 0.0, "mde": 0.0}

    def stat(*idx):
        sel = [np.arange(n_seeds), np.arange(n_items)]
        for a, ix in zip(axes, idx):
            sel[a] = ix.astype(int)
        return d[np.ix_(sel[0], sel[1])].mean()

    samples = tuple(np.arange(d.shape[a], dtype=float) for a in axes)
    res = st.bootstrap(samples, stat, paired=False, vectorized=False, n_resamples=n_resamples,
                       confidence_level=confidence, method=method, rng=np.random.default_rng(seed))
    return _interval(res, mean, z, out)


def interval_verdict(ci_low: float, ci_high: float, claim: float, mde: float | None = None) -> str:
    """What the interval says about a claimed difference `claim` (> 0: the paper's method wins):
      "not assessable"      no interval (nan)
      "underpowered"        the interval holds both 0 and the claim and the design's mde > |claim|:
                            this experiment could not have told them apart (fix the experiment)
      "reproduced"          the claim is inside the interval and the interval excludes 0
      "consistent, not significant"   both 0 and the claim inside, mde ≤ |claim|
      "smaller than claimed"          the whole interval lies below the claim (incl. reversed sign)
      "larger than claimed"           the whole interval lies above the claim
    """
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not assessable"
    if ci_low > ci_high:
        raise ValueError(f"ci_low: must be <= ci_high, got {ci_low} > {ci_high}")
    if claim > ci_high:
        return "smaller than claimed"
    if claim < ci_low:
        return "larger than claimed"
    if ci_low <= 0.0 <= ci_high:
        if mde is not None and math.isfinite(mde) and mde > abs(claim):
            return "underpowered"
        return "consistent, not significant"
    return "reproduced"


# ----------------------------------------------------------------------------- the interval tables
# Every notebook that compares methods writes its verdicts as rows of this one schema
# (<notebook>/intervals.csv), which claims.py and the report read back.
INTERVAL_COLUMNS = ("comparison", "task", "metric", "diff", "ci_low", "ci_high", "se", "mde", "n_seeds",
                    "n_items", "confidence", "method", "claim", "verdict")


def interval_row(comparison: str, task: str, metric: str, res: dict, claim: float | None) -> dict:
    """One row of an intervals table: `res` from `paired_interval`, `claim` the paper's value of
    the same difference (None: no claim; the verdict then only says whether the interval
    excludes 0: "positive", "negative" or "no resolvable difference")."""
    lo, hi = res["ci_low"], res["ci_high"]
    if claim is None or (isinstance(claim, float) and math.isnan(claim)):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            verdict = "not assessable"
        else:
            verdict = "positive" if lo > 0 else "negative" if hi < 0 else "no resolvable difference"
        claim = math.nan
    else:
        verdict = interval_verdict(lo, hi, float(claim), res.get("mde"))
    return {"comparison": comparison, "task": task, "metric": metric, "diff": res["diff"], "ci_low": lo,
            "ci_high": hi, "se": res["se"], "mde": res["mde"], "n_seeds": res["n_seeds"],
            "n_items": res["n_items"], "confidence": res["confidence"], "method": res["method"],
            "claim": claim, "verdict": verdict}


def interval_frame(rows) -> "pd.DataFrame":
    """The rows of `interval_row` as a frame in INTERVAL_COLUMNS order (empty frame with the
    columns when there are none)."""
    import pandas as pd
    return pd.DataFrame(list(rows), columns=list(INTERVAL_COLUMNS))


# ----------------------------------------------------------------------------- equivalence, strata
def equivalence_verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """An equivalence rule on a confidence interval of a difference, for a claimed parity
    |diff| ≤ margin (the interval form of two one-sided tests, TOST):
      "equivalent"      the whole interval lies inside [−margin, +margin]
      "differ"          the interval lies wholly outside it (disjoint: ci_low > margin or ci_high < −margin)
      "inconclusive"    it straddles a margin (too wide, or the difference sits near the margin)
      "not assessable"  no interval (nan)
    The endpoints on the margin count as inside."""
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin: must be a finite number > 0, got {margin!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not assessable"
    if ci_low > ci_high:
        raise ValueError(f"ci_low: must be <= ci_high, got {ci_low} > {ci_high}")
    if -margin <= ci_low and ci_high <= margin:
        return "equivalent"
    if ci_low > margin or ci_high < -margin:
        return "differ"
    return "inconclusive"


def stratified_interval(strata, *, confidence: float = 0.95, n_resamples: int = 4999, method: str = "BCa",
                        seed: int = 0) -> dict:
    """`paired_interval` for a mean over strata: `strata` is a list of 1-D arrays of paired
    differences (one per stratum, e.g. the questions of one task), the statistic the mean over
    strata of each stratum's mean, and scipy.stats.bootstrap resamples the items of every stratum
    on its own (each stratum one sample, so every resample keeps each stratum's size). Returns
    paired_interval's keys (n_seeds = 1, n_items = all items, n_strata). A stratum of one item is
    held fixed by the resampling; fewer than 2 items in every stratum gives ci (nan, nan); zero
    spread everywhere gives the point as the interval."""
    import numpy as np
    from scipy import stats as st

    if isinstance(strata, np.ndarray) and strata.ndim == 1:
        raise ValueError("strata: must be a list of 1-D arrays (one per stratum), got one 1-D array")
    ds = [np.asarray(x, dtype=float) for x in strata]
    if not ds or any(x.ndim != 1 or x.size == 0 for x in ds):
        raise ValueError("strata: must be a non-empty list of non-empty 1-D arrays")
    if not all(np.all(np.isfinite(x)) for x in ds):
        raise ValueError("strata: every paired difference must be finite")
    _check_options(confidence, method)
    mean = float(np.mean([x.mean() for x in ds]))
    out = {"diff": mean, "n_seeds": 1, "n_items": int(sum(x.size for x in ds)), "n_strata": len(ds),
           "confidence": confidence, "method": method}
    z = st.norm.ppf(0.5 + confidence / 2)
    if all(x.size < 2 for x in ds):
        return {**out, "ci_low": math.nan, "ci_high": math.nan, "se": math.nan, "mde": math.nan}
    if all(np.ptp(x) == 0 for x in ds):
        return {**out, "ci_low": mean, "ci_high": mean, "se": 0.0, "mde": 0.0}
    var = [x for x in ds if x.size > 1]
    fixed = sum(x.mean() for x in ds if x.size < 2)

    def stat(*samples, axis=-1):
        return (sum(np.mean(s, axis=axis) for s in samples) + fixed) / len(ds)

    res = st.bootstrap(tuple(var), stat, paired=False, vectorized=True, n_resamples=n_resamples,
                       confidence_level=confidence, method=method, rng=np.random.default_rng(seed))
    return _interval(res, mean, z, out)
