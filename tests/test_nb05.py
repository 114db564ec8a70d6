"""Notebook 05 (transfer regret) end to end at smoke size; checks values in its tables."""
from __future__ import annotations

import pandas as pd
import pytest

from mdlcap.study.params import load

from conftest import ROOT, SMOKE, run_notebook

pytestmark = pytest.mark.notebook


def _check_synthetic(out):
    p = load(ROOT / SMOKE).transfer
    counts = pd.read_csv(out / "violations.csv")
    assert set(counts.program) == {"allocate", "prune"}
    # every instance counted once, in one of the four regimes
    assert counts.groupby("program").instances.sum().to_dict() == {"allocate": p.n_instances, "prune": p.n_instances}
    assert set(counts.regime) <= {"interior", "both_active", "one_active", "clipped"}
    inst = pd.read_csv(out / "instances.csv")
    assert len(inst) == 2 * p.n_instances
    assert (inst.regret >= -1e-12).all()
    # the counterexample table lists exactly the counted violations, with their inputs
    bad = pd.read_csv(out / "counterexamples.csv")
    assert len(bad) == int(counts.violations.sum()) == int(inst.violated.sum())
    assert {"q_source", "q_target", "args"} <= set(bad.columns)
    # regret against δ: slope 2 where the solution stays interior
    slopes = pd.read_csv(out / "slopes.csv")
    interior = slopes[slopes.single_regime == "interior"].slope_regret.dropna()
    assert len(interior) >= 1
    assert interior.between(1.5, 2.5).all(), interior.tolist()
    sweep = pd.read_csv(out / "sweep.csv")
    assert sorted(set(sweep.delta)) == sorted(p.deltas)
    assert (sweep.bound >= sweep.vi_bound * (1 - 1e-9)).all()
    assert (out / "regret_vs_delta.png").stat().st_size > 0
    assert (out / "manifest.json").exists()


def test_nb05_synthetic():
    out = run_notebook("05_transfer_regret")
    _check_synthetic(out)


def test_nb05_real_drift(request):
    """Section 2 on notebook 02's smoke scores (skipped while notebook 02 is not in the repo)."""
    if not (ROOT / "notebooks" / "02_curvature_scores.ipynb").exists():
        pytest.skip("notebook 02 not present yet")
    request.getfixturevalue("smoke_scores")
    out = run_notebook("05_transfer_regret")
    _check_synthetic(out)
    real = pd.read_csv(out / "real_drift.csv", keep_default_na=False)
    ok = real[real.error == ""]
    assert len(ok) > 0
    tasks = sorted(set(ok.source) | set(ok.target))
    for (m, v), g in ok.groupby(["method", "variant"]):
        # every ordered pair of distinct tasks, once
        assert len(g) == len(set(zip(g.source, g.target))) == len(tasks) * (len(tasks) - 1)
    assert (ok.source != ok.target).all()
    assert (ok.regret.astype(float) >= -1e-12).all()
    assert set(ok.program) == {"allocate", "prune"}
    assert (out / "real_drift_heatmap.png").exists()
    # section 3: native vs transferred expert counts, fine-tuned per seed on the target task
    p = load(ROOT / SMOKE)
    if p.transfer.downstream_pairs > 0:
        down = pd.read_csv(out / "downstream.csv")
        pairs = set(zip(down.source, down.target))
        assert 1 <= len(pairs) <= p.transfer.downstream_pairs
        assert len(down) == len(pairs) * len(p.allocation.seeds) * 2
        assert set(down.kind) == {"native", "transferred"}
        assert down.accuracy.between(0, 1).all()
        for (s, t), g in down.groupby(["source", "target"]):
            counts = g.groupby("kind").counts.first()
            assert (counts["native"] == counts["transferred"]) == bool(g.same_counts.iloc[0])
            # every allocation spends the same budget of experts
            assert sum(map(int, counts["native"].split())) == sum(map(int, counts["transferred"].split())) \
                == p.allocation.total_experts
        summ = pd.read_csv(out / "downstream_summary.csv")
        assert {"diff_points", "ci_low", "ci_high", "mde", "n_items"} <= set(summ.columns)
        assert (summ.ci_low <= summ.diff_points + 1e-9).all() and (summ.diff_points <= summ.ci_high + 1e-9).all()
