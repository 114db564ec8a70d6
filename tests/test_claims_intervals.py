"""Comparative claims read from intervals.csv (study.claim_verdicts): every verdict path, the
fallback for a run without intervals, and the notebook-03/04 claims on written tables."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mdlcap.study import claims, paper, report, stats
from mdlcap.study.claim_verdicts import combine, from_interval, interval_claim_verdict


def _res(diff, lo, hi, mde, n_seeds=5, n_items=200):
    return {"diff": diff, "ci_low": lo, "ci_high": hi, "se": mde / 2.8, "mde": mde, "n_seeds": n_seeds,
            "n_items": n_items, "confidence": 0.95, "method": "BCa"}


def _write(run, notebook, rows):
    d = run / notebook
    d.mkdir(parents=True, exist_ok=True)
    stats.interval_frame(rows).to_csv(d / "intervals.csv", index=False)
    return d


@pytest.mark.parametrize("lo, hi, mde, claim, verdict, word", [
    (1.0, 4.0, 2.0, 2.66, "reproduced", "reproduced"),
    (3.0, 5.0, 1.0, 2.66, "reproduced, larger than claimed", "larger than claimed"),
    (-0.5, 3.0, 2.0, 2.66, "consistent, not significant", "consistent, not significant"),
    (-2.0, 4.0, 4.5, 2.66, "underpowered", "underpowered"),
    (0.2, 1.0, 0.5, 2.66, "partly (smaller than claimed)", "smaller than claimed"),
    (-1.0, 1.0, 1.5, 2.66, "not reproduced", "smaller than claimed"),
    (-3.0, -1.0, 1.5, 2.66, "not reproduced (reversed)", "smaller than claimed"),
    (math.nan, math.nan, math.nan, 2.66, "not assessable", "not assessable"),
    # a negative claim (the paper's method loses by 2.83) is read on its own side
    (-4.0, -2.0, 1.5, -2.83, "reproduced", "reproduced"),
    (1.0, 2.0, 1.5, -2.83, "not reproduced (reversed)", "smaller than claimed"),
    # no claimed value: only the sign
    (0.5, 2.0, 1.0, None, "reproduced", "positive"),
    (-2.0, -0.5, 1.0, None, "not reproduced (reversed)", "negative"),
    (-0.5, 2.0, 1.0, None, "no resolvable difference", "no resolvable difference"),
])
def test_difference_verdicts(lo, hi, mde, claim, verdict, word):
    v, w, why = interval_claim_verdict(lo, hi, mde, claim)
    assert (v, w) == (verdict, word) and why


def test_the_word_is_stats_own_verdict():
    """For a positive claim the word is exactly what interval_row writes into intervals.csv."""
    for lo, hi, mde in [(1.0, 4.0, 2.0), (-2.0, 4.0, 4.5), (-0.5, 3.0, 2.0), (0.2, 1.0, 0.5), (3.0, 5.0, 1.0)]:
        row = stats.interval_row("c", "t", "m", _res((lo + hi) / 2, lo, hi, mde), 2.66)
        assert interval_claim_verdict(lo, hi, mde, 2.66)[1] == row["verdict"]
        row = stats.interval_row("c", "t", "m", _res((lo + hi) / 2, lo, hi, mde), None)
        assert interval_claim_verdict(lo, hi, mde, None)[1] == row["verdict"]


@pytest.mark.parametrize("lo, hi, verdict", [
    (-0.4, 0.6, "reproduced"), (1.2, 2.0, "not reproduced"), (-2.0, -1.5, "not reproduced"),
    (-1.5, 1.5, "underpowered"), (0.3, 1.4, "partly")])
def test_parity_verdicts(lo, hi, verdict):
    v, word, _ = interval_claim_verdict(lo, hi, 1.0, None, margin=1.0)
    assert v == verdict and word == stats.equivalence_verdict(lo, hi, 1.0)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="ci_low"):
        interval_claim_verdict(2.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="margin"):
        interval_claim_verdict(0.0, 1.0, 1.0, None, margin=0.0)
    with pytest.raises(ValueError, match="parts"):
        combine({})


def test_missing_file_is_not_testable_never_a_point_verdict(tmp_path):
    r = from_interval(tmp_path, "03_allocation", "MDL - LayerIF (All)", "Average", "accuracy_points", claim=2.66)
    assert r.verdict == "not testable here" and r.why == "notebook 03 has not run"
    d = tmp_path / "03_allocation"
    d.mkdir()
    (d / "verdict.json").write_text(json.dumps([{"pool": "All", "diff_points": 5.0, "call": "MDL better"}]))
    r = from_interval(tmp_path, "03_allocation", "MDL - LayerIF (All)", "Average", "accuracy_points", claim=2.66)
    assert r.verdict == "not testable here" and r.why == "no intervals.csv (rerun notebook 03)" and r.ours == "—"
    # the report's claims table says the same for a run made before intervals
    t = report.claims_table(tmp_path).set_index("claim")
    row = t.loc["MDL expert allocation beats LayerIF on Mistral-7B (All scores)"]
    assert row.verdict == "not testable here" and "rerun notebook 03" in row.why


def test_row_lookup_missing_duplicate_and_schema(tmp_path):
    _write(tmp_path, "03_allocation", [stats.interval_row("MDL - uniform", "Average", "accuracy_points",
                                                          _res(1.0, 0.2, 1.8, 1.1), None)])
    r = from_interval(tmp_path, "03_allocation", "MDL - LayerIF (All)", "Average", "accuracy_points")
    assert r.verdict == "not testable here" and "has no row" in r.why
    r = from_interval(tmp_path, "03_allocation", "MDL - uniform", "Average", "accuracy_points")
    assert r.verdict == "reproduced" and r.interval_verdict == "positive"
    assert r.ours == "MDL - uniform: +1.00 pts [+0.20, +1.80], MDE 1.10"
    assert (r.ci_low, r.ci_high, r.mde) == (0.2, 1.8, 1.1) and "5 seeds × 200 items" in r.why
    row = stats.interval_row("MDL - uniform", "Average", "accuracy_points", _res(1.0, 0.2, 1.8, 1.1), None)
    _write(tmp_path, "03_allocation", [row, row])
    with pytest.raises(ValueError, match="one row per comparison"):
        from_interval(tmp_path, "03_allocation", "MDL - uniform", "Average", "accuracy_points")
    pd.DataFrame({"comparison": ["MDL - uniform"]}).to_csv(tmp_path / "03_allocation" / "intervals.csv", index=False)
    with pytest.raises(ValueError, match="INTERVAL_COLUMNS"):
        from_interval(tmp_path, "03_allocation", "MDL - uniform", "Average", "accuracy_points")


def test_from_a_real_bootstrap(tmp_path):
    rng = np.random.default_rng(0)
    d = 3.0 + rng.normal(0, 0.3, size=(5, 1)) + rng.normal(0, 4.0, size=(5, 300))
    res = stats.paired_interval(d, n_resamples=999)
    _write(tmp_path, "03_allocation", [stats.interval_row("MDL - LayerIF (All)", "Average", "accuracy_points",
                                                          res, 2.66)])
    r = from_interval(tmp_path, "03_allocation", "MDL - LayerIF (All)", "Average", "accuracy_points", claim=2.66)
    written = pd.read_csv(tmp_path / "03_allocation" / "intervals.csv").verdict.iloc[0]
    assert r.interval_verdict == written and r.verdict.startswith("reproduced") and r.ci_low > 0
    assert f"MDE {res['mde']:.2f}" in r.ours and (r.ci_low, r.ci_high) == (res["ci_low"], res["ci_high"])


def test_notebook03_claims_read_intervals(tmp_path):
    all_, pos = (paper.table_averages(paper.PAPER_TABLE4, pool)[2] for pool in ("All", "+ve"))
    m = paper.ALLOCATION_METRIC
    _write(tmp_path, "03_allocation", [
        stats.interval_row("MDL - LayerIF (All)", paper.AVERAGE_TASK, m, _res(3.0, 1.5, 4.5, 2.0), all_),
        stats.interval_row("MDL - LayerIF (+ve)", paper.AVERAGE_TASK, m, _res(0.1, -1.8, 2.0, 2.6), pos),
        stats.interval_row("MDL - LayerIF (All)", "sciq", m, _res(1.0, -3.0, 5.0, 5.5), 13.36),
        stats.interval_row("MDL - uniform", paper.AVERAGE_TASK, m, _res(-1.0, -2.0, -0.2, 1.0), None)])
    t = report.claims_table(tmp_path).set_index("claim")
    a = t.loc["MDL expert allocation beats LayerIF on Mistral-7B (All scores)"]
    assert a.verdict == "reproduced" and a.paper == "83.07 vs 80.41 (+2.66)"
    assert a.ours.startswith("MDL - LayerIF (All): +3.00 pts [+1.50, +4.50], MDE 2.00") and a.interval == "[+1.5, +4.5]"
    p = t.loc["MDL expert allocation beats LayerIF on Mistral-7B (+ve scores)"]
    assert p.verdict == "underpowered" and p.paper == "84.06 vs 83.39 (+0.67)"
    s = t.loc["Largest single gain on ScienceQA"]
    assert s.verdict == "not reproduced" and s.paper == "+13.4"      # [−3, 5] holds 0, lies below 13.4
    u = t.loc["MDL expert allocation beats uniform experts per layer"]
    assert u.verdict == "not reproduced (reversed)"
    z = t.loc["Algorithm 1 on the curvature gain ζ² beats uniform experts per layer"]
    assert z.verdict == "not testable here" and "has no row 'MDL(zeta2) - uniform'" in z.why
    assert t.loc["MDL and LayerIF tie on Gemma-7B"].verdict == "not testable here"


def test_notebook04_parity_claim_reads_intervals(tmp_path):
    c, m = paper.PRUNING_PARITY_COMPARISONS[0], paper.PRUNING_PARITY_METRIC
    rows = [stats.interval_row(c, "magnitude", m, _res(0.1, -0.5, 0.7, 0.8), None),
            stats.interval_row(c, "wanda", m, _res(0.0, -0.6, 0.6, 0.8), None),
            stats.interval_row(c, "sparsegpt", m, _res(0.2, -0.4, 0.8, 0.8), None),
            stats.interval_row(c, "wanda", "perplexity_rel", _res(0.01, -0.02, 0.04, 0.04), None)]
    _write(tmp_path, "04_pruning", rows)
    row = report.claims_table(tmp_path).set_index("claim").loc["At 50% sparsity MDL ratios match LayerIF on Mistral-7B"]
    assert row.verdict == "reproduced" and "Mag mdl - layerif@mdl: +0.10 pts [-0.50, +0.70]" in row.ours
    eq = report.claims_table(tmp_path).set_index("claim").loc[
        "At 50% sparsity the MDL program's equality variant (not degenerate) matches LayerIF on Mistral-7B"]
    assert eq.verdict == "not testable here" and "has no row 'mdl_eq - layerif'" in eq.why
    rows[1] = stats.interval_row(c, "wanda", m, _res(0.0, -2.0, 2.0, 2.8), None)      # too wide to show parity
    _write(tmp_path, "04_pruning", rows)
    row = report.claims_table(tmp_path).set_index("claim").loc["At 50% sparsity MDL ratios match LayerIF on Mistral-7B"]
    assert row.verdict == "mixed (Mag: reproduced, Wanda: underpowered, SparseGPT: reproduced)"
    # the paper's program degenerate (every MDL ratio at ρ_max): parity holds trivially
    pd.DataFrame({"model": ["ours"], "q": ["cg_ggn"], "spread": [0.0]}).to_csv(
        tmp_path / "04_pruning" / "mdl_degeneracy.csv", index=False)
    _write(tmp_path, "04_pruning", [r for i, r in enumerate(rows) if i != 1]
           + [stats.interval_row(c, "wanda", m, _res(0.0, -0.6, 0.6, 0.8), None)])
    row = report.claims_table(tmp_path).set_index("claim").loc["At 50% sparsity MDL ratios match LayerIF on Mistral-7B"]
    assert row.verdict == "reproduced, trivially" and "uniform (all at ρ_max)" in row.ours


def test_comparison_names_come_from_paper():
    assert claims.pool_comparison("All") in paper.ALLOCATION_COMPARISONS
    assert claims.UNIFORM_COMPARISON in paper.ALLOCATION_COMPARISONS
    with pytest.raises(ValueError, match="pool"):
        claims.pool_comparison("nope")
    assert set(paper.PRUNING_PARITY_COMPARISONS) == {"mdl - layerif@mdl", "mdl_eq - layerif"}


def test_notebook03_writer_and_claims_agree(tmp_path):
    """The rows allocation_evidence.intervals writes are the rows the claims read."""
    from mdlcap.study import allocation_evidence as ev

    rng = np.random.default_rng(0)
    rows = []
    for t in ("cola", "sciq"):
        for s in range(5):
            u = rng.random(200)
            for m, a in {"uniform": 0.5, "layerif_all": 0.4, "mdl_layerif_all": 0.6}.items():
                items = (u < a).astype(int).tolist()
                rows.append({"task": t, "method": m, "seed": s, "accuracy": float(np.mean(items)), "items": items})
    iv = ev.intervals(pd.DataFrame(rows), ["cola", "sciq"], paper_order=["cola", "mrpc", "csqa", "obqa", "sciq"],
                      n_resamples=999)
    (tmp_path / "03_allocation").mkdir()
    iv.to_csv(tmp_path / "03_allocation" / "intervals.csv", index=False)
    t = report.claims_table(tmp_path).set_index("claim")
    a = t.loc["MDL expert allocation beats LayerIF on Mistral-7B (All scores)"]
    assert a.verdict == "reproduced, larger than claimed" and a.ci_low > 2.66          # a 20-point gain
    assert t.loc["MDL expert allocation beats uniform experts per layer"].verdict == "reproduced"
    assert t.loc["Largest single gain on ScienceQA"].verdict != "not testable here"    # the per-task row is found
    assert "has no row 'MDL - LayerIF (+ve)'" in t.loc["MDL expert allocation beats LayerIF on Mistral-7B (+ve scores)"].why
