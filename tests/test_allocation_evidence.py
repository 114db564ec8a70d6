"""Notebook 03's evidence tables on synthetic cells: the paired intervals see a real difference
and not a null one, the task average pairs items across tasks, and the design check flags cells
at chance, at the ceiling or still learning."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mdlcap.study import allocation_evidence as ev

TASKS = ["csqa", "obqa"]


def _results(acc: dict[str, float], seeds=range(5), n_items=200, seed=0, plateau=0.0):
    """Cells whose items are Bernoulli(acc[method]) draws, shared item difficulty across methods."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in TASKS:
        for s in seeds:
            u = rng.random(n_items)                       # one draw per (task, seed, item): paired methods
            for m, a in acc.items():
                items = (u < a).astype(int).tolist()
                rows.append({"task": t, "method": m, "seed": s, "accuracy": float(np.mean(items)),
                             "items": items, "losses": [2.0, 1.5, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7],
                             "val_steps": [0, 1, 2, 3, 4, 5, 6, 7, 8],
                             "val_losses": [2.0, 1.5, 1.2, 1.1, 1.0, 1.0, 1.0, 1.0 - plateau, 1.0 - plateau],
                             "steps": 8})
    return pd.DataFrame(rows)


def test_intervals_find_a_real_gain_and_not_a_null_one():
    res = _results({"uniform": 0.6, "layerif_all": 0.4, "mdl_layerif_all": 0.6})
    order = ["cola", "mrpc", "csqa", "obqa", "sciq"]                         # data.finetune_tasks
    iv = ev.intervals(res, TASKS, paper_order=order, n_resamples=999)
    assert set(iv.comparison) == {"MDL - LayerIF (All)", "MDL - uniform"}      # +ve pool, zeta2 not run
    gain = iv[(iv.comparison == "MDL - LayerIF (All)") & (iv.task == "Average")].iloc[0]
    assert gain["diff"] == pytest.approx(20.0, abs=3) and gain.ci_low > 0 and gain.claim == 2.66
    assert gain.verdict == "larger than claimed" and gain.n_seeds == 5 and gain.n_items == 200
    null = iv[(iv.comparison == "MDL - uniform") & (iv.task == "Average")].iloc[0]
    assert null["diff"] == 0 and null.verdict == "no resolvable difference" and np.isnan(null.claim)
    per_task = iv[(iv.comparison == "MDL - LayerIF (All)") & (iv.task != "Average")]
    assert gain["diff"] == pytest.approx(per_task["diff"].mean())
    # csqa is CommonsenseQA, position 2 of data.finetune_tasks: Table 4's All difference there
    t4 = ev.paper_claim("MDL - LayerIF (All)", "csqa", TASKS, paper_order=order)
    assert per_task.set_index("task").loc["csqa", "claim"] == t4 and t4 is not None


def test_interval_is_wider_with_fewer_items_and_unequal_tests_are_refused():
    acc = {"layerif_all": 0.45, "mdl_layerif_all": 0.5}
    wide = ev.intervals(_results(acc, n_items=40, seed=1), TASKS, n_resamples=999)
    narrow = ev.intervals(_results(acc, n_items=400, seed=1), TASKS, n_resamples=999)
    w = lambda iv: float((iv.ci_high - iv.ci_low)[iv.task == "Average"].iloc[0])
    assert w(narrow) < 0.6 * w(wide)
    res = _results(acc)
    res.loc[(res.task == "obqa"), "items"] = res.loc[(res.task == "obqa"), "items"].map(lambda x: x[:-10])
    with pytest.raises(ValueError, match="equal test sizes"):
        ev.intervals(res, TASKS, n_resamples=99)


def test_learning_table_and_design_problems_flag_what_cannot_rank_methods():
    tasks_csv = pd.DataFrame({"task": TASKS, "chance": [0.2, 0.25]})
    sanity = pd.DataFrame({"task": TASKS, "finetuned_acc": [0.5, 0.8]})
    ok = _results({"uniform": 0.6, "mdl_cg_ggn": 0.62})
    learning = ev.learning_table(ok, tasks_csv, sanity)
    assert learning.above_chance.all() and learning.below_ceiling.all() and learning.plateaued.all()
    assert ev.design_problems(learning, ok, 5) == []
    u = learning.set_index(["task", "method"]).loc[("csqa", "uniform")]
    assert u.fraction_of_full_finetune == pytest.approx(u.accuracy_mean / 0.5)
    bad = _results({"uniform": 0.2, "mdl_cg_ggn": 0.99}, seeds=range(3), plateau=0.2)
    problems = ev.design_problems(ev.learning_table(bad, tasks_csv), bad, 5)
    text = " | ".join(problems)
    assert "fewer than 5 seeds" in text and "at chance" in text and "csqa/uniform" in text
    assert "at the ceiling" in text and "mdl_cg_ggn" in text and "not plateaued" in text
    mixed = pd.concat([ok, _results({"layerif_all": 0.6}, seeds=range(4))], ignore_index=True)
    assert "not run on the same seeds" in " ".join(ev.design_problems(ev.learning_table(mixed, tasks_csv), mixed, 4))


def test_loss_curves_average_seeds_per_step():
    res = _results({"uniform": 0.5}, seeds=range(2))
    res.loc[res.seed == 1, "val_losses"] = res.loc[res.seed == 1, "val_losses"].map(lambda v: [x + 1 for x in v])
    c = ev.loss_curves(res, smooth=1)
    train, val = c[c.split == "train"], c[c.split == "validation"]
    assert len(train) == len(TASKS) * 8 and train[(train.task == "csqa") & (train.step == 1)]["loss"].iloc[0] == 2.0
    assert len(val) == len(TASKS) * 9 and val[(val.task == "csqa") & (val.step == 0)]["loss"].iloc[0] == 2.5


def test_a_held_out_loss_that_turns_up_counts_as_plateaued_and_one_still_falling_does_not():
    tasks_csv = pd.DataFrame({"task": TASKS, "chance": [0.2, 0.25]})
    res = _results({"uniform": 0.6})
    res["val_losses"] = [[2.0, 1.5, 1.2, 1.1, 1.0, 1.05, 1.1, 1.15, 1.2]] * len(res)     # overfits
    assert ev.learning_table(res, tasks_csv).plateaued.all()
    res["val_losses"] = [[2.0 - 0.1 * i for i in range(9)]] * len(res)                   # still learning
    lt = ev.learning_table(res, tasks_csv)
    assert not lt.plateaued.any() and (lt.late_improvement_max > 0.2).all()
    res["val_losses"] = [[2.0, 1.5, 1.2]] * len(res)                                      # too short to judge
    lt = ev.learning_table(res, tasks_csv)
    assert not lt.plateaued.any() and lt.late_improvement_max.isna().all()


def test_a_method_absent_on_one_task_is_compared_on_the_others():
    res = _results({"uniform": 0.4, "layerif_all": 0.4, "mdl_layerif_all": 0.6})
    res = res[~((res.task == "csqa") & (res.method == "mdl_layerif_all"))]      # Algorithm 1 undefined there
    iv = ev.intervals(res, TASKS, n_resamples=99)
    lif = iv[iv.comparison == "MDL - LayerIF (All)"]
    assert list(lif.task) == ["obqa", "Average"] and ev.average_tasks(iv)["MDL - LayerIF (All)"] == ["obqa"]
    assert lif["diff"].iloc[0] == lif["diff"].iloc[1]
    assert "over obqa" in ev.verdict_lines(iv)[0]


