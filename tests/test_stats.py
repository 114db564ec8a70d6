"""study.stats: the two-way paired bootstrap, its minimum detectable effect, and verdicts."""
import math

import numpy as np
import pytest

from mdlcap.study import stats


def test_interval_covers_true_mean_and_shrinks_with_more_items():
    rng = np.random.default_rng(0)
    seed_eff = rng.normal(0, 0.5, size=(6, 1))
    small = 1.0 + seed_eff + rng.normal(0, 1.0, size=(6, 40))
    big = 1.0 + seed_eff + rng.normal(0, 1.0, size=(6, 400))
    a = stats.paired_interval(small, n_resamples=999)
    b = stats.paired_interval(big, n_resamples=999)
    assert a["ci_low"] < 1.0 < a["ci_high"] and b["ci_low"] < 1.0 < b["ci_high"]
    assert a["n_seeds"] == 6 and a["n_items"] == 40
    assert b["mde"] < a["mde"]
    z = 1.959963984540054
    assert a["mde"] == pytest.approx((z + stats.Z_POWER) * a["se"])


def test_seed_effect_widens_the_interval():
    """Resampling seeds as well as items: a common per-seed shift must count as noise."""
    rng = np.random.default_rng(1)
    items = rng.normal(0, 0.1, size=(5, 200))
    no_seed = stats.paired_interval(items, n_resamples=999)
    with_seed = stats.paired_interval(items + np.array([[-1.0], [-0.5], [0.0], [0.5], [1.0]]), n_resamples=999)
    assert (with_seed["ci_high"] - with_seed["ci_low"]) > 5 * (no_seed["ci_high"] - no_seed["ci_low"])


def test_degenerate_designs():
    flat = stats.paired_interval(np.full((3, 4), 0.25))
    assert flat["ci_low"] == flat["ci_high"] == 0.25 and flat["se"] == 0.0
    one = stats.paired_interval(np.array([[0.3]]))
    assert math.isnan(one["ci_low"]) and stats.interval_verdict(one["ci_low"], one["ci_high"], 1.0) == "not assessable"
    per_seed = stats.paired_interval(np.array([[0.1], [0.3], [0.2], [0.4], [0.25]]), n_resamples=999)
    assert per_seed["n_items"] == 1 and per_seed["ci_low"] < 0.25 < per_seed["ci_high"]


@pytest.mark.parametrize("bad, match", [(np.array([]), "non-empty"), (np.array([[np.nan, 1.0]]), "finite")])
def test_bad_input_names_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_interval(bad)
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_interval(np.ones((2, 2)) + np.eye(2), confidence=1.5)


def test_interval_verdicts():
    v = stats.interval_verdict
    assert v(0.5, 3.0, 2.66) == "reproduced"
    assert v(-0.2, 1.0, 2.66) == "smaller than claimed"
    assert v(-3.0, -1.0, 0.67) == "smaller than claimed"
    assert v(3.0, 4.0, 2.66) == "larger than claimed"
    assert v(-1.0, 4.0, 2.66, mde=3.5) == "underpowered"
    assert v(-1.0, 4.0, 2.66, mde=2.0) == "consistent, not significant"
    with pytest.raises(ValueError, match="ci_low"):
        v(2.0, 1.0, 0.5)
