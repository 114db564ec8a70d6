"""Expert-count allocations (mdlcap.interventions.allocation): every method spends the budget exactly."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdlcap.interventions import allocation as ab


def test_layerif_matches_hand_worked_example():
    # scores s; v = max(s) - s = [5,3,1,4,2,0,6,1.5], sum 22.5; exponent 1, total 40, L = 8:
    # f = v / 22.5 * 32 = [7.11, 4.27, 1.42, 5.69, 2.84, 0, 8.53, 2.13]; floor + 1 = [8,5,2,6,3,1,9,3]
    # (sum 37); the 3 largest fractional parts (.84 at 4, .69 at 3, .53 at 6) get one more each.
    s = [-5.0, -3.0, -1.0, -4.0, -2.0, 0.0, -6.0, -1.5]
    assert ab.layerif(s, 40, exponent=1.0).tolist() == [8, 5, 2, 7, 4, 1, 10, 3]
    # exponent 3: w = v^3 = [125,27,1,64,8,0,216,3.375], sum 444.375; f = w/444.375*32
    # = [9.0, 1.94, .072, 4.61, .576, 0, 15.55, .243]; floor+1 = [10,2,1,5,1,1,16,1] (37);
    # remainder 3 to fractional parts .94 (1), .61 (3), .576 (4)
    assert ab.layerif(s, 40, exponent=3.0).tolist() == [10, 3, 1, 6, 2, 1, 16, 1]


def test_layerif_top_layer_gets_one_and_equal_scores_are_uniform():
    c = ab.layerif([1.0, 2.0, 3.0, 10.0], 20, exponent=2.0)
    assert c[3] == 1 and c.sum() == 20 and c[0] > c[1] > c[2] >= 1
    assert ab.layerif([0.3] * 8, 40).tolist() == [5] * 8


def test_mola_pyramid_shape():
    assert ab.mola_pyramid(32, 160).tolist() == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8
    assert ab.mola_pyramid(8, 40).tolist() == [2, 2, 4, 4, 6, 6, 8, 8]
    c = ab.mola_pyramid(28, 140)                  # Gemma-7B: 28 layers
    assert c.sum() == 140 and np.all(np.diff(c) >= 0) and c[0] < c[-1]
    c = ab.mola_pyramid(8, 20)                    # scaled down: still non-decreasing, >= 1
    assert c.sum() == 20 and np.all(np.diff(c) >= 0) and c.min() >= 1


def test_uniform():
    assert ab.uniform(8, 40).tolist() == [5] * 8
    assert ab.uniform(8, 43).tolist() == [5] * 5 + [6] * 3


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 40), extra=st.integers(0, 200),
       scores=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=40, max_size=40),
       exponent=st.sampled_from([0.5, 1.0, 2.0, 3.0]))
def test_every_heuristic_spends_the_budget_exactly(L, extra, scores, exponent):
    total = L + extra
    s = np.asarray(scores[:L])
    for counts in (ab.layerif(s, total, exponent), ab.uniform(L, total), ab.mola_pyramid(L, total),
                   ab.alphalora(np.abs(s) + 1.0, total), ab.largest_remainder(np.abs(s), total, n_min=1)):
        assert counts.dtype.kind == "i" and counts.sum() == total and counts.min() >= 1, counts


def test_bad_input_raises_value_error_naming_the_argument():
    with pytest.raises(ValueError, match="total"):
        ab.layerif([1.0, 2.0, 3.0], 2)            # fewer experts than layers
    with pytest.raises(ValueError, match="scores"):
        ab.layerif([1.0, float("nan")], 4)
    with pytest.raises(ValueError, match="exponent"):
        ab.layerif([1.0, 2.0], 4, exponent=0)
    with pytest.raises(ValueError, match="total"):
        ab.uniform(4, 2.5)
    with pytest.raises(ValueError, match="q"):
        ab.literal_unconstrained_total([0.0, 0.0])


def test_pl_alpha_hill_recovers_a_power_law():
    # singular values s_i with s_i^2 ~ Pareto(alpha - 1) tail: eigenvalue density ~ x^-alpha
    rng = np.random.default_rng(0)
    alpha = 3.0
    ev = (1.0 - rng.random(400)) ** (-1.0 / (alpha - 1.0))
    w = np.diag(np.sqrt(ev))
    assert ab.pl_alpha_hill(w) == pytest.approx(alpha, rel=0.2)


def test_literal_program_budget_binding_rule():
    # Eq 12 at mu = 0 with alpha=1, beta=0.9, gamma=0.5, s=0.0276 and uniform q:
    q8, q32 = np.full(8, 1 / 8), np.full(32, 1 / 32)
    assert ab.literal_unconstrained_total(q8) == pytest.approx(8 * (0.9 * (1 / 8) ** 0.5 / 0.0276 - 1))
    assert ab.literal_unconstrained_total(q8) > 40          # our 8 layers: the budget binds
    assert ab.literal_unconstrained_total(q32) < 160        # Mistral's 32 layers: it does not


def test_mdl_spends_budget_and_follows_scores():
    q = np.array([0.05, 0.1, 0.2, 0.3, 0.15, 0.1, 0.05, 0.05])
    c = ab.mdl(q, 40, gamma=0.5, n_min=1)
    assert c.sum() == 40 and c.min() >= 1
    for i in range(8):                                      # more score, never fewer experts
        for j in range(8):
            if q[i] > q[j]:
                assert c[i] >= c[j], (i, j, c)
    assert ab.mdl(np.full(8, 0.125), 40).tolist() == [5] * 8
    # gamma = 0 ignores the scores
    assert ab.mdl(q, 40, gamma=0.0).tolist() == [5] * 8


def test_mdl_equals_literal_program_when_budget_binds():
    q = np.array([0.05, 0.1, 0.2, 0.3, 0.15, 0.1, 0.05, 0.05])
    assert ab.literal_unconstrained_total(q) > 40
    np.testing.assert_array_equal(ab.mdl(q, 40), ab.mdl_literal(q, 40, alpha=1.0, beta=0.9))
