"""Notebook 05's tables (mdlcap.study.transfer_regret / transfer_downstream) and the program
objects Theorem 4 works with (mdlcap.theory.objectives), at tiny sizes."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mdlcap.study import transfer_downstream as TD
from mdlcap.study import transfer_regret as T
from mdlcap.theory import objectives, transfer
from mdlcap.theory import programs as P


def test_program_objects_read_their_solvers():
    for name, solver in (("allocate", P.allocate), ("prune", P.prune)):
        prog = objectives.program(name)
        sig = inspect.signature(solver).parameters
        assert prog.defaults == {k: p.default for k, p in sig.items() if p.default is not p.empty}
        assert set(prog.required) | set(prog.defaults) == set(sig) - {"q"}
    assert objectives.ALLOCATE.required == ("cost", "budget") and objectives.PRUNE.required == ("sizes", "target")
    assert transfer.PROGRAMS == ("allocate", "prune")
    with pytest.raises(ValueError, match="program"):
        objectives.program("odd")
    with pytest.raises(ValueError, match="lam: not an argument of programs.allocate"):
        objectives.ALLOCATE.check_args({"cost": 1.0, "budget": 1.0, "lam": 2.0})
    with pytest.raises(ValueError, match="target: required"):
        objectives.PRUNE.check_args({"sizes": np.ones(3)})


def test_objective_gap_matches_objectives():
    q = np.array([0.2, 0.3, 0.5])
    for prog, args, xa, xb in (
            (objectives.ALLOCATE, dict(cost=np.ones(3), budget=2.0, alpha=1.0, beta=5.0, gamma=0.5),
             np.array([0.5, 1.0, 0.2]), np.array([0.4, 1.2, 0.3])),
            (objectives.PRUNE, dict(sizes=np.ones(3), target=0.3, bits=16.0, lam=40.0, gamma=1.0, rho_max=0.8),
             np.array([0.2, 0.3, 0.4]), np.array([0.25, 0.35, 0.3]))):
        a = prog.check_args(args)
        gap = prog.objective_gap(xa, xb, q, a)
        assert gap == pytest.approx(prog.objective(xa, q, a) - prog.objective(xb, q, a), rel=1e-10)
        eps = 1e-7 * np.eye(3)[1]
        fd = (prog.objective(xa + eps, q, a) - prog.objective(xa - eps, q, a)) / 2e-7
        assert prog.gradient(xa, q, a)[1] == pytest.approx(fd, rel=1e-5)


@pytest.fixture(scope="module")
def synthetic():
    inst = T.search_all(8, 4, [1e-3, 0.1], seed=2, progress=False)
    sw = T.sweep_all(4, [1e-3, 1e-2, 1e-1], n_per_regime=1, seed=1)
    return inst, sw


def test_search_and_sweep_all(synthetic):
    inst, sw = synthetic
    assert inst.groupby("program").size().to_dict() == {"allocate": 8, "prune": 8}
    assert list(dict.fromkeys(inst.program)) == list(transfer.PROGRAMS)
    assert set(T.VECTOR_COLUMNS) <= set(inst.columns)
    assert len(sw) == 2 * 3 * 3 and sorted(set(sw.delta)) == [1e-3, 1e-2, 1e-1]


def test_slopes_tables(synthetic):
    _, sw = synthetic
    slopes = T.sweep_slopes(sw)
    pooled = T.pooled_slopes(slopes)
    assert list(pooled.columns) == ["program", "single_regime", "instances", "median_slope", "min_slope", "max_slope"]
    assert pooled.instances.sum() == len(slopes) == 6


def test_counterexamples_and_step2_failures(synthetic):
    inst, _ = synthetic
    fake = inst.copy()
    fake.loc[fake.index[0], "violated"] = True
    fake.loc[fake.index[:2], "step2_local_holds"] = False
    bad = T.counterexamples(fake)
    assert len(bad) == int(fake.violated.sum()) and isinstance(bad.q_source.iloc[0], str)
    assert eval(bad.q_source.iloc[0]) == fake.loc[bad.index[0], "q_source"]
    weak = T.step2_failures(fake)
    assert len(weak) == int((~fake.step2_local_holds).sum())
    assert (np.diff(weak.excess.to_numpy()) <= 0).all()
    assert T.with_inputs(inst).args.map(type).eq(str).all()


def test_adversarial_and_verdict(synthetic):
    inst, sw = synthetic
    adv = T.adversarial(inst, steps=3, seed=0)
    assert set(adv.program) <= set(transfer.PROGRAMS) and (adv.ratio >= adv.start_ratio - 1e-15).all()
    counts = T.violation_counts(inst)
    lines, record = T.synthetic_verdict(counts, adv, inst, T.sweep_slopes(sw), steps=3)
    assert record["instances"] == 16 and record["violations"] == int(counts.violations.sum() + adv.violated.sum())
    assert lines[-1].startswith("VERDICT")
    assert any("Hill climbing (3 moves" in line for line in lines)


def _scores(tasks=("a", "b", "c"), K=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m in ("cg_ggn", "grad_norm"):
        for t in tasks:
            q = rng.dirichlet(np.full(K, 5.0))
            rows += [{"task": t, "method": m, "layer": k, "q": float(q[k])} for k in range(K)]
    return pd.DataFrame(rows)


def _params():
    return SimpleNamespace(
        allocation=SimpleNamespace(budget_scaling=0.1, total_experts=8, alpha=1.0, beta=0.9, gamma=0.5),
        pruning=SimpleNamespace(target=0.5, bits=16.0, lam=2.0, gamma=1.0, rho_max=0.51))


def test_real_drift_tables():
    real = T.real_drift(_scores(), ["cg_ggn", "grad_norm"], _params())
    assert set(real.method) == {"cg_ggn", "grad_norm"} and set(real.program) == {"allocate", "prune"}
    assert len(real) == 2 * len(T.real_variants(_params(), 4)) * 6           # 3 tasks: 6 ordered pairs
    assert (real.error == "").all() and (real.regret >= -1e-12).all()
    summ = T.real_drift_summary(real)
    assert summ.pairs.tolist() == [6] * len(summ)
    # the paper's >= target clips every layer at ρ_max: zero regret
    paper = summ[summ.variant == "prune: paper (>= target)"]
    assert (paper.zero_regret == 6).all()
    assert T.rejected_pairs(real) == ["pairs the programs rejected: 0"]
    bad = real.copy()
    bad.loc[bad.index[:2], "error"] = "q: boom"
    assert len(T.rejected_pairs(bad)) == 2
    assert T.real_drift(_scores(), [], _params()).empty


def test_downstream_pairs_summary_and_verdicts():
    real = T.real_drift(_scores(), ["cg_ggn"], _params())
    pairs = TD.downstream_pairs(real, ["a", "b", "c"], 2, method="cg_ggn")
    assert len(pairs) == 2 and pairs[0] != pairs[1]
    assert TD.downstream_pairs(real, ["a"], 2) == [] and TD.downstream_pairs(None, ["a"], 2) == []
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):                                   # transferred loses 10 points on every seed
        u = rng.random(200)
        for k, acc, c in (("native", 0.5, "2 2 2 2"), ("transferred", 0.4, "3 1 2 2")):
            items = (u < acc).astype(int).tolist()
            rows.append({"source": "a", "target": "b", "seed": s, "kind": k, "accuracy": float(np.mean(items)),
                         "items": items, "counts": c, "same_counts": False})
    down = pd.DataFrame(rows)
    per = TD.downstream_summary(down, real, "cg_ggn")
    assert per.seeds.tolist() == [3] and per.n_items.tolist() == [200]
    assert per.diff_points.iloc[0] == pytest.approx(-10.0, abs=1.0) and per.ci_high.iloc[0] < 0 < per.mde.iloc[0]
    assert np.isfinite(per.regret.iloc[0])
    (line,) = TD.downstream_verdicts(per)
    assert line.startswith("VERDICT a -> b") and "lower accuracy" in line and "95 % CI" in line
    null = TD.downstream_summary(down.assign(items=down["items"].where(down.kind == "native").ffill()), real, "cg_ggn")
    assert null.diff_points.iloc[0] == 0 and "no resolvable difference" in TD.downstream_verdicts(null)[0]
    same = per.assign(same_counts=True)
    assert "identical expert counts" in TD.downstream_verdicts(same)[0]
