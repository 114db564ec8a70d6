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


def test_layerif_with_underflowing_score_gaps_spreads_evenly():
    s = np.array([0.0, 5e-324, 0.0])                  # v**2 underflows to 0 (hypothesis found it)
    assert ab.layerif(s, 6, 2.0).tolist() == [2, 2, 2]


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


def test_pl_alpha_hill_closed_form_on_a_log_spaced_spectrum():
    # eigenvalues λ_i = 10^(s i), i = 0..N-1: the log10 histogram (100 bins over (N-1)s decades, each
    # narrower than s) holds at most one eigenvalue per bin, so the peak is the first bin, xmin2 = λ_0 = 1,
    # and the window λ <= 1.5 xmin2 holds λ_0 alone (λ_1 = 10^s > 1.5). Hill at x_min = 1:
    # α = 1 + N / Σ_i ln(10^(s i)) = 1 + N / (ln10 s N(N-1)/2) = 1 + 2 / (ln10 s (N-1)).
    N, s = 50, 0.25
    lam = 10.0 ** (s * np.arange(N))
    w = np.diag(np.sqrt(lam))[np.random.default_rng(0).permutation(N)]     # rows permuted: same spectrum
    want = 1.0 + 2.0 / (np.log(10.0) * s * (N - 1))
    assert ab.pl_alpha_hill(w) == pytest.approx(want, rel=1e-5)


def test_pl_alpha_hill_is_a_hill_estimate_inside_the_peak_window():
    # a Marchenko-Pastur bulk plus a separated heavy tail: whatever the KS choice, the α returned is
    # the Hill estimate at some x_min in the window [log10(0.95 p), 1.5 p] around the ESD peak p
    import torch

    torch.manual_seed(0)
    w = torch.randn(256, 128)
    w[:, :6] *= torch.tensor([30.0, 20.0, 15.0, 10.0, 8.0, 6.0])
    ev = np.sort(np.linalg.svd(w.numpy().astype(np.float64), compute_uv=False) ** 2)
    h = np.log10(ev)
    counts, edges = np.histogram(h, bins=100, range=(h.min(), h.max()))
    p = 10.0 ** edges[np.argmax(counts)]
    inside = [i for i in range(len(ev) - 1) if np.log10(0.95 * p) <= ev[i] <= 1.5 * p]
    hill = [1.0 + (len(ev) - i) / np.sum(np.log(ev[i:] / ev[i])) for i in inside]
    a = ab.pl_alpha_hill(w)
    assert ev[-6] > 1.5 * p and len(inside) < len(ev) - 7            # the tail lies outside the window
    assert min(abs(a - x) for x in hill) < 1e-4 * a


def test_pl_alpha_hill_reproduces_the_reference_on_random_matrices():
    # values of AlphaLoRA's fix_finger (expert_number.py, run as published) on the same matrices;
    # issue 14: 192x192 Gaussian, reference 2.25, the earlier whole-spectrum scan 3.75
    import torch

    torch.manual_seed(0)
    assert ab.pl_alpha_hill(torch.randn(192, 192)) == pytest.approx(2.253, abs=2e-3)
    torch.manual_seed(0)
    assert ab.pl_alpha_hill(torch.distributions.StudentT(3.0).sample((512, 192))) == pytest.approx(3.226, abs=2e-3)
    with pytest.raises(ValueError, match="weight"):
        ab.pl_alpha_hill(np.ones(5))
    assert ab.pl_alpha_hill(np.zeros((4, 4))) == 1.0                 # no spectrum to fit: the default


def test_layerif_is_offset_and_scale_invariant():
    s = np.array([-5.0, -3.0, -1.0, -4.0, -2.0, 0.0, -6.0, -1.5])
    for e in (2.0, 3.0):
        base = ab.layerif(s, 40, exponent=e)
        assert ab.layerif(s + 123.4, 40, exponent=e).tolist() == base.tolist()
        assert ab.layerif(7.0 * s, 40, exponent=e).tolist() == base.tolist()


def test_layerif_pools_use_their_own_exponents():
    import pandas as pd
    from types import SimpleNamespace

    assert ab.LAYERIF_EXPONENTS == {"layerif_all": 2.0, "layerif_pos": 3.0}
    score = np.array([0.5, -0.2, 1.5, 0.1, 0.9, -0.7, 2.0, 0.3])       # signed −Σ I, as scores.csv stores it
    rows = [{"task": "t", "method": m, "layer": k, "score": v, "q": 0.0}
            for m in ab.LAYERIF_EXPONENTS for k, v in enumerate(score)]
    frame = pd.DataFrame(rows)
    A = SimpleNamespace(n_min=1, alpha=1.0, beta=0.9, gamma=0.5, budget_scaling=0.0276, alphalora_exponent=2.5)
    got = {m: ab.allocate(m, n_layers=8, total=40, params=A, scores=frame, task="t").tolist()
           for m in ab.LAYERIF_EXPONENTS}
    assert got["layerif_all"] == ab.layerif(-score, 40, exponent=2.0).tolist()
    assert got["layerif_pos"] == ab.layerif(-score, 40, exponent=3.0).tolist()
    assert got["layerif_all"] != got["layerif_pos"]
