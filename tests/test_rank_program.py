"""The capped rank program, its regret under drift (mdlcap.interventions.rank_program) and the
AdaLoRA-style schedule (mdlcap.interventions.rank_schedule)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mdlcap.interventions import rank_program as rp
from mdlcap.interventions.rank_schedule import RankSchedule


def _brute(q, budget, r_max, n_min, gamma=0.5):
    best, arg = -np.inf, None
    for r in itertools.product(range(n_min, r_max + 1), repeat=len(q)):
        if sum(r) == budget:
            v = float(np.dot(np.asarray(q) ** gamma, np.log1p(r)))
            if v > best + 1e-12:
                best, arg = v, r
    return best, arg


@pytest.mark.parametrize("seed", range(40))
def test_capped_ranks_are_the_exact_optimum(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(2, 5))
    r_max = int(rng.integers(2, 7))
    n_min = int(rng.integers(0, 2))
    budget = int(rng.integers(K * n_min, K * r_max + 1))
    q = rng.dirichlet(np.full(K, 0.3))                   # peaked: the cap binds often
    gamma = float(rng.choice([0.5, 1.0, 2.0]))
    r = rp.capped_ranks(q, budget, r_max, n_min=n_min, gamma=gamma)
    assert r.sum() == budget and r.max() <= r_max and r.min() >= n_min
    best, _ = _brute(q, budget, r_max, n_min, gamma)
    assert float(np.dot(q ** gamma, np.log1p(r))) == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_capped_ranks_clamp_and_reject_bad_budgets():
    q = np.array([0.94, 0.02, 0.02, 0.02])
    r = rp.capped_ranks(q, 12, 4)
    assert r[0] == 4 and r.sum() == 12                    # uncapped it would take more than 4
    assert list(rp.capped_ranks([1.0, 0.0, 0.0], 7, 4)) == [4, 2, 1]   # zero scores share the rest evenly
    with pytest.raises(ValueError, match="budget"):
        rp.capped_ranks(q, 17, 4)
    with pytest.raises(ValueError, match="budget"):
        rp.capped_ranks(q, 3, 4)
    with pytest.raises(ValueError, match="q"):
        rp.capped_ranks([0.5, np.nan], 4, 4)


def test_floor_substitution_keeps_the_objective_up_to_a_constant():
    rng = np.random.default_rng(0)
    q, n_min = rng.dirichlet(np.ones(5)), 2
    consts = []
    for _ in range(5):
        r = rng.uniform(n_min, 9, 5)
        m = (r - n_min) / (1 + n_min)
        consts.append(rp.rank_objective(r, q) - rp.rank_objective(m, q))
    assert np.ptp(consts) < 1e-12
    assert rp.relaxed_budget(5, 20, 2) == pytest.approx((20 - 10) / 3)


def test_keep_regret_is_zero_without_drift_nonnegative_and_within_theorem_4():
    rng = np.random.default_rng(1)
    q0 = rng.dirichlet(np.ones(6) * 2)
    same = rp.keep_regret(q0, q0, 24, 8)
    assert same["drift"] == 0 and same["regret_ranks"] == 0 and same["regret"] == 0 and same["bound"] == 0
    moved = 0
    for s in range(30):
        qt = rng.dirichlet(np.ones(6) * 2)
        d = rp.keep_regret(q0, qt, 24, 8)
        assert d["regret_ranks"] >= -1e-12 and d["regret"] >= -1e-12
        assert d["regret"] <= d["bound"] * (1 + 1e-9) + 1e-13      # Theorem 4 on the relaxation
        assert d["regret"] <= d["vi_bound"] * (1 + 1e-9) + 1e-13
        assert d["drift"] == pytest.approx(np.linalg.norm(qt - q0))
        assert sum(d["ranks"]) == 24
        moved += d["regret_ranks"] > 0
    assert moved > 0                                      # drift did cost something somewhere
    with pytest.raises(ValueError, match="length"):
        rp.keep_regret(q0, q0[:5] / q0[:5].sum(), 24, 8)


def test_schedule_phases_match_adalora():
    s = RankSchedule(total_steps=192, t_init=0.1, delta_t=0.1, t_final=0.8)
    assert (s.init, s.delta, s.final) == (19, 19, 154)
    assert s.updates == (38, 57, 76, 95, 114, 133, 152, 154)
    assert [s.phase(t) for t in (1, 19, 20, 154, 155)] == ["warmup", "warmup", "allocation", "final", "fixed"]
    assert s.adalora() == {"tinit": 19, "tfinal": 38, "deltaT": 19, "total_step": 192}
    steps = RankSchedule(total_steps=20, t_init=2, delta_t=3, t_final=15)
    assert steps.updates == (3, 6, 9, 12, 15)
    assert not any(steps.is_update(t) for t in (1, 2, 16, 20))
    with pytest.raises(ValueError, match="t_init"):
        RankSchedule(total_steps=20, t_init=0.9, t_final=0.5)
    with pytest.raises(ValueError, match="t_final"):
        RankSchedule(total_steps=20, t_final=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        RankSchedule(total_steps=1)
