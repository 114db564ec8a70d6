"""Comparative claims read from the intervals notebooks write (`<notebook>/intervals.csv`, schema
`stats.INTERVAL_COLUMNS`): the claims-table row of one interval, and the vocabulary of its verdict.

Verdicts from an interval (`interval_claim_verdict`; `stats.interval_verdict`'s word in brackets):

  a difference claim: the paper's method wins by `claim` (a negative claim: loses by it; the
  interval is read on the claim's side)
    reproduced                        the interval holds the claim and excludes 0 [reproduced]
    reproduced, larger than claimed   the whole interval lies beyond the claim [larger than claimed]
    consistent, not significant       0 and the claim both inside; the design could see the claim
                                      (mde ≤ |claim|) [consistent, not significant]
    underpowered                      0 and the claim both inside and mde > |claim|: this design
                                      cannot tell them apart [underpowered]
    partly (smaller than claimed)     the interval lies between 0 and the claim, excluding both
    not reproduced                    the interval holds 0 but lies below the claim
    not reproduced (reversed)         the interval lies wholly on the other side of 0
    not assessable                    no interval (nan) [not assessable]
  no claimed value (claim None; "beats" without a number)
    reproduced / not reproduced (reversed) / no resolvable difference: the interval excludes 0
    on the claimed side / on the other / holds 0 [positive / negative / no resolvable difference]
  a parity claim ("matches", margin m = the claim's tolerance; the equivalence (TOST) words)
    reproduced       the interval lies inside [−m, +m] [equivalent]
    underpowered     the interval holds 0 but reaches beyond ±m: too wide to show parity [inconclusive]
    partly           the interval excludes 0 and overlaps ±m [inconclusive]
    not reproduced   the interval lies wholly outside [−m, +m] [differ]
  no interval to read
    not testable here   the notebook has not run, wrote no intervals.csv (a run made before
                        intervals: "rerun notebook NN"), or has no row for the comparison
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class ClaimResult:
    ours: str
    scale: str
    verdict: str          # see the module docstring; plus "not testable here", "not assessable (unconverged solves)"
    why: str
    ci_low: float | None = None            # the interval a comparative verdict was read from (None: not comparative)
    ci_high: float | None = None
    mde: float | None = None               # minimum detectable effect of the design (same unit)
    claim: float | None = None             # the paper's value of the difference the verdict tests
    interval_verdict: str | None = None    # stats.interval_verdict's word (or interval_row's, without a claim)


def run_scale(run_root: Path) -> str:
    """The scale a run measured at: the model its manifest names (the embedded default in words)."""
    import json
    m = run_root / "manifest.json"
    if m.exists():
        name = json.loads(m.read_text()).get("params", {}).get("model", {}).get("name_or_path", "?")
        return "embedded default model (CPU)" if name == "default" else name
    return run_root.name


# --------------------------------------------------------------------------- verdicts read from intervals
INTERVALS_FILE = "intervals.csv"
_FORMATS = {   # metric -> (format of a difference, unit text)
    "accuracy_points": ("{:+.2f}", " pts"), "zeroshot_points": ("{:+.2f}", " pts"),
    "perplexity_rel": ("{:+.2%}", " perplexity"), "rel_ppl": ("{:+.2%}", " perplexity"),
    "heldout_loss": ("{:+.4f}", " nats"),
}


def _fmt(metric: str, x: float, signed: bool = True) -> str:
    f, _ = _FORMATS.get(metric, ("{:+.3g}", ""))
    return f.format(x) if signed else f.replace("+", "").format(x)


def interval_claim_verdict(ci_low: float, ci_high: float, mde: float | None, claim: float | None = None,
                           margin: float | None = None) -> tuple[str, str, str]:
    """(claims-table verdict, stats word, a clause saying why) for the interval [ci_low, ci_high]
    of a difference "paper's method − baseline", the mapping of the module docstring: `claim` the
    paper's difference (None: only its sign is claimed), `margin` set for a parity claim."""
    from mdlcap.study.stats import equivalence_verdict, interval_verdict

    if margin is not None and not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin: must be a positive finite tolerance, got {margin!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not assessable", "not assessable", "no interval (too few seeds/items to resample)"
    if ci_low > ci_high:
        raise ValueError(f"ci_low: must be <= ci_high, got {ci_low} > {ci_high}")
    iv = f"[{ci_low:+.3g}, {ci_high:+.3g}]"
    if margin is not None:
        word = equivalence_verdict(ci_low, ci_high, margin)       # the interval form of TOST
        if word == "equivalent":
            return "reproduced", word, f"the interval {iv} lies inside the parity margin ±{margin:g}"
        if word == "differ":
            return "not reproduced", word, f"the interval {iv} lies outside the parity margin ±{margin:g}"
        if ci_low <= 0 <= ci_high:
            return "underpowered", word, f"the interval {iv} holds 0 but reaches beyond ±{margin:g}: too wide to show parity"
        return "partly", word, f"the interval {iv} excludes 0 and overlaps the parity margin ±{margin:g}"
    if claim is None or not math.isfinite(claim):
        word = "positive" if ci_low > 0 else "negative" if ci_high < 0 else "no resolvable difference"
        return ({"positive": "reproduced", "negative": "not reproduced (reversed)"}.get(word, word), word,
                f"the interval {iv} " + {"positive": "excludes 0: the method wins", "negative": "excludes 0 the other way",
                                         "no resolvable difference": "holds 0"}[word])
    s = -1.0 if claim < 0 else 1.0                        # read the interval on the claim's side
    lo, hi = sorted((s * ci_low, s * ci_high))
    c = abs(claim)
    word = interval_verdict(lo, hi, c, mde)
    if word == "smaller than claimed":
        if lo > 0:
            return "partly (smaller than claimed)", word, f"the interval {iv} lies between 0 and the paper's {claim:+g}"
        if hi < 0:
            return "not reproduced (reversed)", word, f"the interval {iv} lies on the other side of 0 from the paper's {claim:+g}"
        return "not reproduced", word, f"the interval {iv} holds 0 and lies below the paper's {claim:+g}"
    table = {"reproduced": "reproduced", "larger than claimed": "reproduced, larger than claimed"}.get(word, word)
    why = {"reproduced": f"the interval {iv} holds the paper's {claim:+g} and excludes 0",
           "larger than claimed": f"the interval {iv} lies beyond the paper's {claim:+g}",
           "consistent, not significant": f"the interval {iv} holds both 0 and the paper's {claim:+g}",
           "underpowered": f"the interval {iv} holds both 0 and the paper's {claim:+g}, and the design's MDE "
                           f"{mde:.3g} exceeds {c:g}: it could not tell them apart"}[word]
    return table, word, why


def from_interval(run_root: Path, notebook: str, comparison: str, task: str, metric: str, *,
                  claim: float | None = None, margin: float | None = None, scale: str | None = None,
                  note: str = "", lower_is_better: bool = False) -> ClaimResult:
    """A comparative claim read from one row (comparison, task, metric) of
    `<run_root>/<notebook>/intervals.csv`: `ours` = "<diff> [<ci_low>, <ci_high>], MDE <mde>", the
    verdict from the interval (`interval_claim_verdict`, with the paper's `claim` value or the
    parity `margin`), `note` appended to the why. `lower_is_better` (a loss, a perplexity): the method
    wins when the difference is negative, so the verdict is read from the negated interval (and
    claim); `ours` keeps the signs as measured. A run without the file (made before notebooks
    wrote intervals) or without the row is "not testable here", never a point-estimate verdict."""
    from mdlcap.study.stats import INTERVAL_COLUMNS

    run_root = Path(run_root)
    nn = notebook[:2]
    p = run_root / notebook / INTERVALS_FILE
    if not p.exists():
        why = (f"no {INTERVALS_FILE} (rerun notebook {nn})" if (run_root / notebook).is_dir()
               else f"notebook {nn} has not run")
        return ClaimResult("—", "—", "not testable here", why, claim=claim)
    t = pd.read_csv(p)
    missing = [c for c in INTERVAL_COLUMNS if c not in t.columns]
    if missing:
        raise ValueError(f"{p}: lacks the intervals columns {missing} (stats.INTERVAL_COLUMNS)")
    rows = t[(t["comparison"] == comparison) & (t["task"].astype(str) == str(task)) & (t["metric"] == metric)]
    if rows.empty:
        return ClaimResult("—", "—", "not testable here",
                           f"{notebook}/{INTERVALS_FILE} has no row {comparison!r} / {task!r} / {metric!r} "
                           "(a smoke-size run, or the task is not in this run's mix)", claim=claim)
    if len(rows) > 1:
        raise ValueError(f"{p}: {len(rows)} rows for comparison {comparison!r}, task {task!r}, metric {metric!r}; "
                         "an intervals table holds one row per comparison / task / metric")
    x = rows.iloc[0]
    lo, hi, mde, diff = (float(x[k]) for k in ("ci_low", "ci_high", "mde", "diff"))
    if lower_is_better:
        verdict, word, why = interval_claim_verdict(-hi, -lo, mde, None if claim is None else -claim, margin)
        why = f"lower is better: read on −({comparison}); " + why
    else:
        verdict, word, why = interval_claim_verdict(lo, hi, mde, claim, margin)
    mde_txt = f", MDE {_fmt(metric, mde, signed=False)}" if math.isfinite(mde) else ""
    unit = _FORMATS.get(metric, ("", ""))[1]
    ours = (f"{comparison}: {_fmt(metric, diff)}{unit} [{_fmt(metric, lo)}, {_fmt(metric, hi)}]{mde_txt}"
            if math.isfinite(lo) else f"{comparison}: {_fmt(metric, diff)}{unit}, no interval")
    design = f"{float(x['confidence']):.0%} paired bootstrap ({x['method']}), {int(x['n_seeds'])} seeds × {int(x['n_items'])} items"
    return ClaimResult(ours, scale if scale is not None else run_scale(run_root), verdict,
                       f"{why}; {design}" + (f"; {note}" if note else ""),
                       ci_low=lo, ci_high=hi, mde=mde, claim=claim, interval_verdict=word)


def combine(parts: dict[str, ClaimResult]) -> ClaimResult:
    """One claim row from several interval results (e.g. one per pruner): `ours` and `why` joined
    by label, the verdict the common one, else "mixed (label: verdict, ...)"."""
    if not parts:
        raise ValueError("parts: needs at least one labelled ClaimResult")
    vs = [r.verdict for r in parts.values()]
    first = next(iter(parts.values()))
    if all(r.ours == "—" and r.verdict == first.verdict and r.why == first.why for r in parts.values()):
        return first                                   # e.g. every part "not testable here" for one reason
    verdict = vs[0] if len(set(vs)) == 1 else "mixed (" + ", ".join(f"{k}: {r.verdict}" for k, r in parts.items()) + ")"
    scale = next((r.scale for r in parts.values() if r.scale != "—"), "—")
    whys = list(dict.fromkeys(r.why for r in parts.values()))
    return ClaimResult("; ".join(f"{k} {r.ours}" for k, r in parts.items()), scale, verdict,
                       whys[0] if len(whys) == 1 else "; ".join(f"{k}: {r.why}" for k, r in parts.items()))
