"""The default run's design, asserted on the tables it wrote (results/tiny/, committed): seeds
shared by every method, every fine-tuning cell learned (above chance, below the ceiling,
plateaued), ≥ 16 validation blocks on every fine-tune task, every pruning row at its stated
global sparsity, a zero-shot mean with s.e. ≤ 1 point, and an interval on every comparison.

These read the committed run, not a fresh one: a rerun that broke the design fails here."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "results" / "tiny"


def _csv(nb: str, name: str) -> pd.DataFrame:
    p = RUN / nb / f"{name}.csv"
    if not p.exists():
        pytest.fail(f"{p.relative_to(ROOT)} is missing: the committed default run must hold it")
    return pd.read_csv(p)


@pytest.fixture(scope="module")
def params():
    from mdlcap.study.params import load
    return load(ROOT / "params" / "tiny.yaml")


def test_allocation_cells_share_seeds_and_every_cell_is_above_chance(params):
    from mdlcap.study.paper import THRESHOLDS
    res, learning = _csv("03_allocation", "results"), _csv("03_allocation", "learning")
    seeds = res.groupby(["task", "method"])["seed"].apply(lambda s: tuple(sorted(s)))
    assert seeds.nunique() == 1 and len(seeds.iloc[0]) >= THRESHOLDS["allocation_min_seeds"]
    assert list(seeds.iloc[0]) == sorted(params.allocation.seeds)
    assert set(learning.task) == set(params.allocation.tasks or params.data.finetune_tasks)
    assert learning.above_chance.all(), learning[~learning.above_chance]
    assert (learning.n_items == params.data.n_test).all()            # every test item scored


def test_allocation_cells_are_below_the_ceiling_and_plateaued():
    learning = _csv("03_allocation", "learning")
    assert learning.below_ceiling.all(), learning[~learning.below_ceiling]
    assert learning.plateaued.all(), learning[~learning.plateaued]
    assert json.loads((RUN / "03_allocation" / "design_problems.json").read_text()) == []


def test_every_comparison_has_an_interval_and_a_verdict():
    from mdlcap.study.stats import INTERVAL_COLUMNS
    for nb in ("02_curvature_scores", "03_allocation", "04_pruning"):
        iv = _csv(nb, "intervals")
        assert list(iv.columns) == list(INTERVAL_COLUMNS) and len(iv)
        assert iv.verdict.notna().all() and (iv.ci_low <= iv.ci_high + 1e-12).all()
    alloc = _csv("03_allocation", "intervals")
    assert {"MDL - LayerIF (All)", "MDL - uniform"} <= set(alloc.comparison)
    avg = alloc[alloc.task == "Average"]
    assert avg.mde.notna().all() and (avg.n_seeds >= 5).all()


def test_validation_has_every_task_at_16_blocks_or_more(params):
    from mdlcap.study.validation import check_validation_design
    blocks = _csv("02_curvature_scores", "validation_blocks")
    n = check_validation_design(blocks, params.data.finetune_tasks, min_blocks=16)
    assert len(n) == 5


def test_pruning_rows_sit_at_equal_sparsity_and_zero_shot_has_power():
    from mdlcap.study.pruning_intervals import zeroshot_power_ok
    budgets = _csv("04_pruning", "budget_check")
    assert len(budgets) and budgets.equal_budget.all(), budgets[~budgets.equal_budget]
    assert zeroshot_power_ok(_csv("04_pruning", "zeroshot_power"))
