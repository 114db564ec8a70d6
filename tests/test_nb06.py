"""Notebook 06 at smoke size: the written tables hold consistent values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import run_notebook
from mdlcap.interventions.precision import solve as S


@pytest.fixture(scope="module")
def nb06():
    return run_notebook("06_precision_allocation")


@pytest.mark.notebook
def test_nb06_tables(nb06):
    alloc = pd.read_csv(nb06 / "allocations.csv")
    stats = pd.read_csv(nb06 / "layer_stats.csv")
    methods = set(alloc.method)
    assert {"uniform", "uniform_int", "caq_exact", "caq_relaxed", "grad_norm", "hawq_trace", "random_best"} <= methods
    # uniform rows: every layer at the knob's width, average bits equal to it
    u = alloc[alloc.method == "uniform"]
    assert np.allclose(u.avg_bits, u.knob)
    assert all(set(b.split("-")) == {str(int(k))} for b, k in zip(u.bits, u.knob))
    assert alloc.acc.between(0, 1).all() and (alloc.out_err_max >= alloc.out_err_mean).all()
    # Φ in the table is the composition formula on the measured L_i and diam_i
    for (model, seed), d in alloc.groupby(["model", "seed"]):
        st = stats[(stats.model == model) & (stats.seed == seed)].sort_values("layer")
        for _, r in d.head(10).iterrows():
            bits = [int(b) for b in r.bits.split("-")]
            assert r.phi == pytest.approx(S.composed_error(st.lipschitz, st.diam, bits), rel=1e-4)
    # CAQ meets its own error target, and the exact solver is never beaten by relax-and-round
    caq = alloc[alloc.method == "caq_exact"]
    assert len(caq) > 0 and (caq.phi <= caq.eps_target * (1 + 1e-6)).all()
    rel = pd.read_csv(nb06 / "relaxation_vs_exact.csv")
    assert (rel.min_excess >= -1e-9).all()
    # estimators are positive and κ readings ordered: mean ≤ RMS, L from weights ≥ local Jacobian
    assert (stats.kappa > 0).all() and (stats.kappa <= stats.kappa_rms * (1 + 1e-6)).all()
    assert (stats.lipschitz_local <= stats.lipschitz * (1 + 1e-3)).all()
    floor = pd.read_csv(nb06 / "floor_check.csv")
    assert floor.p_empirical.dropna().between(2, 24).all()
    saving = pd.read_csv(nb06 / "memory_saving.csv")
    uni = saving[saving.method == "uniform"]
    assert np.allclose(uni.saving_vs_uniform.dropna(), 0.0)
    for name in ("pareto_frontier", "precision_heatmap", "kappa_vs_bits", "error_waterfall", "phi_vs_observed"):
        assert (nb06 / f"{name}.png").stat().st_size > 1000
    assert (nb06 / "manifest.json").exists()
