"""Notebook 04's drivers (mdlcap.study.pruning): the cached evaluation of one pruned model and
every table the notebook shows, on a random tiny Mistral and on hand-made result frames."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mdlcap.interventions import pruning as P
from mdlcap.study import paper
from mdlcap.study import pruning as S
from mdlcap.study import pruning_ratios as R
from mdlcap.study.params import PruningParams


# the same tiny GQA decoder and padded batches as the pruning tests
from test_pruning import batches, model  # noqa: E402,F401


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    return tmp_path


def test_evaluate_config_caches_and_restores_the_dense_weights(model, batches, tmp_cache):
    m = copy.deepcopy(model)
    dense = {k: v.clone() for k, v in m.state_dict().items()}
    calls = []

    def evaluate(mm, need_accuracy):
        calls.append(need_accuracy)
        sp = P.measured_sparsity(mm)
        return {"perplexity": float(sp.mean()), "accuracy": {"t": 0.5} if need_accuracy else None}

    kw = dict(calib_batches=batches, evaluate=evaluate, key_extra={"m": 1})
    a = S.evaluate_config(m, [0.2, 0.4, 0.6], "wanda", need_accuracy=False, **kw)
    assert a["perplexity"] == pytest.approx(0.4, abs=0.02) and calls == [False]
    for k, v in m.state_dict().items():                 # dense weights are back
        assert torch.equal(v, dense[k]), k
    b = S.evaluate_config(m, np.array([0.2, 0.4, 0.6]) + 1e-12, "wanda", need_accuracy=False, **kw)
    assert b == a and calls == [False]                  # same ratios (to 1e-9): served from the cache
    c = S.evaluate_config(m, [0.2, 0.4, 0.6], "wanda", need_accuracy=True, **kw)
    assert c["accuracy"] == {"t": 0.5} and calls == [False, True]   # accuracy missing: evaluated again
    S.evaluate_config(m, [0.2, 0.4, 0.6], "sparsegpt", need_accuracy=False, **kw)
    assert len(calls) == 3 and len(list((tmp_cache / "pruning").glob("*.json"))) == 2
    d = S.evaluate_config(m, [0.2, 0.4, 0.6], "wanda", need_accuracy=True, **kw)
    assert d == c and len(calls) == 3                    # the entry with accuracy is served


def _bench(model, batches, monkeypatch):
    """A Bench whose evaluation is cheap and deterministic: perplexity = 10 + 10 x mean sparsity,
    accuracy per task = 0.5 - mean sparsity / 4."""
    def fake(m, tok, params, heldout, seq_len, eval_limit, need_accuracy):
        sp = float(P.measured_sparsity(m).mean())
        return {"perplexity": 10 + 10 * sp, "accuracy": {"a": 0.5 - sp / 4, "b": 0.5 - sp / 8} if need_accuracy else None}

    monkeypatch.setattr(S, "evaluate", fake)
    params = SimpleNamespace(pruning=PruningParams(sweep=[0.3, 0.5], sparsegpt_blocksize=16))
    return S.Bench(model, None, params, batches, [], 16, None, P.layer_sizes(model), {"test": 1})


def _scores(L=3):
    rows = []
    for method, q in (("cg_ggn", [0.2, 0.3, 0.5]), ("layerif_all", [0.5, 0.25, 0.25])):
        for task in ("calibration", "cola", "mrpc"):
            rows += [{"task": task, "method": method, "layer": k, "score": 4.0 * v, "q": v} for k, v in enumerate(q)]
    return pd.DataFrame(rows)


def test_ratio_plan_vectors_and_summary():
    pp = PruningParams()
    sizes = np.array([100, 100, 100])
    plan = R.ratio_plan(_scores(), sizes, np.array([0.01, 0.02, 0.05]), pp)
    vec = R.plan_vectors(plan)
    assert ("uniform", "-", "-") in vec and ("owl", "-", "-") in vec
    matched = {"uniform@mdl", "owl@mdl", "layerif@mdl"}
    assert {k[0] for k in vec} == set(P.RATIO_METHODS) | matched
    assert len([k for k in vec if k[0] == "mdl"]) == 6           # 2 score methods x 3 source tasks
    summ = R.ratios_summary(vec, sizes, pp.target)
    at_target = summ[~summ.ratio_method.isin({"mdl"} | matched)]
    assert np.allclose(at_target["global_sparsity"], pp.target, atol=1e-12)
    assert np.allclose(summ[summ.ratio_method == "mdl"]["global_sparsity"], pp.rho_max)   # clipped: METHOD.md §3
    # equal budgets: every vector sits at the sparsity it is compared at; the matches at the paper MDL's
    assert np.allclose(summ["global_sparsity"], summ["compared_at"], atol=1e-12)
    assert np.allclose(summ[summ.ratio_method.isin(matched)]["compared_at"], pp.rho_max)
    assert len([k for k in vec if k[0] == "layerif@mdl"]) == 6
    assert np.allclose(vec[("uniform@mdl", "cg_ggn", "cola")], vec[("mdl", "cg_ggn", "cola")])   # the same model
    assert (summ["spread"] >= 0).all()
    cfg = S.table_configs(vec, PruningParams(table_score_tasks=["calibration"], table_methods=["uniform", "mdl"]))
    assert {k[0] for k in cfg} == {"uniform", "mdl", "uniform@mdl"} and all(k[2] in ("-", "calibration") for k in cfg)
    cfg = S.table_configs(vec, PruningParams(table_methods=["uniform", "layerif"]))
    assert {k[0] for k in cfg} == {"uniform", "layerif"}                 # no mdl, no matches
    assert R.first_source(["cola", "calibration"]) == "calibration" and R.first_source([]) is None
    sc = R.sweep_scores(_scores(), ["cg_ggn"], "cola")
    assert set(sc.method) == {"cg_ggn"} and set(sc.task) == {"cola"} and len(sc) == 3
    assert R.sweep_scores(_scores(), [], "cola") is None
    # the paper's program meeting the target exactly: nothing to match
    exact = R.plan_vectors(R.ratio_plan(_scores(), sizes, None, PruningParams(rho_max=0.5)))
    assert not any(k[0].endswith("@mdl") for k in exact)


def test_ratio_plan_keeps_sources_with_zero_or_negative_scores():
    """Issue 14: a LayerIF source with a harmful layer (score < 0, so q = 0 from scores_from_gains)
    is kept for every method: MDL takes q_k = 0 as rho_k = rho_max, LayerIF maps the signed score."""
    from mdlcap.scores.table import scores_frame
    pp = PruningParams()
    sizes = np.array([100, 100, 100])
    sc = scores_frame({("cola", "layerif_all"): {"a": -0.5, "b": 1.0, "c": 3.0}})
    assert sc["q"].tolist() == [0.0, 0.25, 0.75]
    vec = R.plan_vectors(R.ratio_plan(sc, sizes, None, pp))
    assert {k[0] for k in vec if k[1] == "layerif_all"} == {"layerif", "mdl", "mdl_eq", "mdl_eq_free",
                                                            "uniform@mdl", "layerif@mdl"}
    lif = vec[("layerif", "layerif_all", "cola")]
    np.testing.assert_allclose(lif, P.layerif_ratios([-0.5, 1.0, 3.0], sizes, pp.target))
    assert lif[0] == lif.max() and P.global_sparsity(lif, sizes) == pytest.approx(pp.target, abs=1e-12)
    eq = vec[("mdl_eq", "layerif_all", "cola")]
    assert eq[0] == pp.rho_max and P.global_sparsity(eq, sizes) == pytest.approx(pp.target, abs=1e-12)
    assert vec[("mdl_eq_free", "layerif_all", "cola")][0] == 1.0
    # unusable sources raise, naming the source and the rule (never silently dropped)
    for bad, rule in ((sc.assign(q=[-0.1, 0.5, 0.6]), "q < 0"), (sc.assign(q=0.0), "no q > 0"),
                      (sc.assign(score=[np.nan, 1.0, 1.0]), "non-finite"), (sc.iloc[:2], "2 layers")):
        with pytest.raises(ValueError, match=rf"^scores: layerif_all/cola .*{rule}"):
            R.ratio_plan(bad, sizes, None, pp)


def test_select_scores():
    pp = PruningParams(score_methods=["cg_ggn", "nope"], score_tasks=["cola"])
    scores, want, missing, tasks = R.select_scores(_scores(), pp)
    assert want == ["cg_ggn"] and missing == ["nope"] and tasks == ["cola"] and len(scores) == 3


def test_mdl_degeneracy_table_and_verdict():
    pp = PruningParams()
    sizes_7b = {"Mistral-7B": np.full(32, 218_103_808), "Gemma-7B": np.full(28, 264_241_152)}
    deg = R.mdl_degeneracy(_scores()[lambda d: d.task == "cola"], np.full(3, 1000), pp, sizes_7b)
    assert list(dict.fromkeys(deg["model"])) == ["ours", "Mistral-7B", "Gemma-7B"]
    assert set(deg[deg.model == "ours"]["q"]) == {"uniform q", "cg_ggn/cola", "layerif_all/cola"}
    assert set(deg[deg.model != "ours"]["q"]) == {"uniform q", "our most uneven q, stretched"}
    assert (deg[deg.model == "Gemma-7B"]["rho_max"] == paper.RHO_MAX_CLIP["Gemma-7B"]).all()
    # raw N_k, b = 16, lambda = 2: every layer at rho_max, the target inactive (METHOD.md §3)
    assert (deg["spread"] < 1e-12).all() and (deg["nu"] == 0).all() and not deg["target_active"].any()
    assert np.allclose(deg["global"], deg["rho_max"])
    v = R.degeneracy_verdict(deg, pp)
    assert "are UNIFORM" in v and "inactive (nu = 0)" in v and "Every layer is clipped at rho_max" in v
    v2 = R.degeneracy_verdict(deg.assign(spread=0.1, nu=1.0), pp)
    assert "NOT uniform" in v2 and "active in some cases" in v2 and "clipped" not in v2


def _results():
    """A pruning_results frame: two pruners, calibration + two fine-tune sources, the paper's MDL at
    0.51 with its LayerIF/uniform matches, and the dense row."""
    rows = []
    acc = {"magnitude": 0.40, "wanda": 0.50}
    for pr in ("magnitude", "wanda"):
        rows.append({"pruner": pr, "ratio_method": "uniform", "score_method": "-", "score_task": "-",
                     "mean_acc": acc[pr], "perplexity": 30.0, "compared_at": 0.5, "requested_global": 0.5})
        for i, task in enumerate(("calibration", "cola", "mrpc")):
            for rm, d, sp in (("mdl", 0.0, 0.51), ("uniform@mdl", 0.0, 0.51), ("layerif@mdl", 0.02 + 0.01 * i, 0.51),
                              ("mdl_eq", 0.01, 0.5), ("mdl_eq_free", 0.02, 0.5), ("layerif", 0.03 + 0.01 * i, 0.5)):
                rows.append({"pruner": pr, "ratio_method": rm, "score_method": "cg_ggn", "score_task": task,
                             "mean_acc": acc[pr] + d, "perplexity": 20.0 + i + 10 * d, "compared_at": sp,
                             "requested_global": sp})
    rows.append({"pruner": "dense", "ratio_method": "dense", "score_method": "-", "score_task": "-",
                 "mean_acc": 0.6, "perplexity": 10.0, "compared_at": 0.0, "requested_global": 0.0})
    return pd.DataFrame(rows)


def test_result_tables_average_rows_and_dense():
    acc, ppl = S.result_tables(_results(), ["magnitude", "wanda"], ["cg_ggn"])
    assert list(acc.columns) == ["sparsity", "magnitude", "wanda"] and list(acc.index.names) == [
        "score_method", "score_task", "ratio_method"]
    # the paper's Average rows: mean over the fine-tune sources (cola, mrpc), calibration on its own
    assert acc.loc[("cg_ggn", "average", "layerif"), "wanda"] == pytest.approx(100 * (0.5 + 0.045))
    assert acc.loc[("cg_ggn", "average", "layerif@mdl"), "wanda"] == pytest.approx(100 * (0.5 + 0.035))
    assert acc.loc[("cg_ggn", "average", "mdl"), "magnitude"] == pytest.approx(40.0)
    assert acc.loc[("cg_ggn", "calibration", "layerif"), "wanda"] == pytest.approx(53.0)
    # the sparsity each row is at: the paper's MDL and its matches at 0.51, the rest at the target
    assert acc.loc[("cg_ggn", "cola", "mdl"), "sparsity"] == pytest.approx(0.51)
    assert acc.loc[("cg_ggn", "average", "layerif@mdl"), "sparsity"] == pytest.approx(0.51)
    assert acc.loc[("cg_ggn", "cola", "mdl_eq"), "sparsity"] == ppl.loc[("-", "-", "uniform"), "sparsity"] == 0.5
    assert ("cg_ggn", "average", "mdl") not in ppl.index
    assert (acc.loc[("-", "-", "dense"), ["magnitude", "wanda"]] == 60.0).all()
    assert (ppl.loc[("-", "-", "dense"), ["magnitude", "wanda"]] == 10.0).all()
    assert len(acc) == 1 + 6 * 3 + 5 + 1
    only_cal = _results()[lambda d: d.score_task.isin(["-", "calibration"])]
    acc2, _ = S.result_tables(only_cal, ["magnitude", "wanda"], ["cg_ggn"])   # no fine-tune source: calibration
    assert acc2.loc[("cg_ggn", "average", "layerif"), "wanda"] == pytest.approx(53.0)


def test_paper_vs_ours_and_verdict():
    cmp = S.paper_vs_ours(_results(), ["magnitude", "wanda"], ["cg_ggn"])
    assert list(cmp.pruner) == ["magnitude", "wanda"]
    r = cmp.set_index("pruner").loc["wanda"]
    assert r.ours_mdl == pytest.approx(50.0) and r.ours_layerif == pytest.approx(54.5)
    assert r.mdl_sparsity == pytest.approx(0.51) and r.ours_layerif_at_mdl == pytest.approx(53.5)
    # MDL - LayerIF at equal sparsity: the paper's program against LayerIF re-solved at 0.51
    assert r.ours_diff == pytest.approx(-3.5) and r.ours_uniform_at_mdl == pytest.approx(50.0)
    assert r.ours_uniform == pytest.approx(50.0)
    assert r.ours_diff_eq == pytest.approx(-3.5) and r.ours_diff_eq_free == pytest.approx(-2.5)
    assert r.ppl_mdl == pytest.approx(21.5) and r.ppl_layerif_at_mdl == pytest.approx(21.85)
    assert r.ppl_layerif == pytest.approx(21.95)
    tab = paper.PRUNING_TABLES
    assert r.paper_mdl == tab[("Mistral-7B", "wanda")]["mdl"]
    assert r.paper_diff_gemma == pytest.approx(tab[("Gemma-7B", "wanda")]["mdl"] - tab[("Gemma-7B", "wanda")]["layerif"])
    v = S.paper_verdict(cmp, n_eval=100, n_tasks=4)
    assert "sampling s.e. <= 2.5 points" in v and "agrees with the paper's Mistral table in 2 of 2" in v
    assert "at s = 0.510" in v and "at equal global sparsity" in v
    # where the paper's program meets the target there is no match: LayerIF at the target is the match
    at_target = _results()[lambda d: ~d.ratio_method.str.endswith("@mdl")].assign(
        requested_global=lambda d: d.requested_global.where(d.ratio_method != "mdl", 0.5))
    r2 = S.paper_vs_ours(at_target, ["wanda"], ["cg_ggn"]).iloc[0]
    assert r2.ours_layerif_at_mdl == pytest.approx(54.5) and r2.ours_diff == pytest.approx(-4.5)


def test_budget_check_and_verdict():
    res = _results()
    res["measured_global"] = res["requested_global"] + 0.001
    chk = S.budget_check(res, mask_tol=0.5 / 64)
    assert len(chk) == len(res) - 1 and chk["equal_budget"].all()
    assert "every row at its budget" in S.budget_verdict(chk, 0.5) and "[0.5, 0.51]" in S.budget_verdict(chk, 0.5)
    bad = res.assign(compared_at=lambda d: d.compared_at.where(d.ratio_method != "layerif@mdl", 0.5))
    chk = S.budget_check(bad, mask_tol=0.5 / 64)
    assert (~chk["equal_budget"]).sum() == 6 and "6 rows OFF their budget" in S.budget_verdict(chk, 0.5)


def test_sweep_gain_and_verdict():
    sweep = pd.DataFrame({"target": [0.3, 0.3, 0.5, 0.5, 0.5], "ratio_method": ["uniform", "owl", "uniform", "owl", "mdl"],
                          "perplexity": [10.0, 9.8, 20.0, 17.0, 21.0]})
    gain = S.sweep_gain(sweep)
    assert list(gain.target) == [0.3, 0.5] and list(gain.best_method) == ["owl", "owl"]
    assert gain.rel_gain_vs_uniform.tolist() == pytest.approx([0.02, 0.15])
    assert gain.worst_over_best.tolist() == pytest.approx([10 / 9.8, 21 / 17])
    assert "first beats uniform by > 5% perplexity at s = 0.5 (owl)" in S.sweep_verdict(gain, [0.3, 0.5])
    assert "no ratio method beats uniform" in S.sweep_verdict(gain[gain.target == 0.3], [0.3])
    # equal budgets: a row at another sparsity (the paper's MDL, clipped) is not compared
    off = sweep.assign(requested_global=[0.3, 0.3, 0.5, 0.51, 0.5])
    assert S.sweep_gain(off).set_index("target").loc[0.5, "best_method"] == "mdl"
    assert S.sweep_clip(0.7, PruningParams()) == pytest.approx(0.71) and S.sweep_clip(0.995, PruningParams()) == 1.0


def test_bench_tables_on_a_small_model(model, batches, tmp_cache, monkeypatch):
    m = copy.deepcopy(model)
    bench = _bench(m, batches, monkeypatch)
    pp = bench.params.pruning
    dense = bench.run(None, "dense")
    assert dense["global_sparsity"] < 0.01 and S.mean_accuracy(dense) == pytest.approx(0.5, abs=0.01)
    vec = R.plan_vectors(R.ratio_plan(None, bench.sizes, None, pp))
    res = S.pruning_results(bench, vec, S.table_configs(vec, pp), ["magnitude", "wanda"], dense, progress=False)
    assert list(res.pruner) == ["magnitude", "wanda", "dense"] and (res["max_layer_dev"] <= 0.5 / 32 + 1e-9).all()
    assert np.allclose(res["measured_global"][:2], pp.target, atol=0.5 / 32)
    assert S.mask_tolerance(m) == 0.5 / 32 and S.budget_check(res, S.mask_tolerance(m))["equal_budget"].all()
    assert {"acc_a", "acc_b", "key"} <= set(res.columns)
    nm = S.two_four_table(bench, ["wanda"], progress=False)
    assert np.allclose(nm["measured_global"], 0.5) and nm["mean_acc"].between(0, 1).all()
    sweep = S.sparsity_sweep(bench, None, None, pp, progress=False)
    assert sorted(set(sweep.target)) == [0.3, 0.5] and set(sweep.ratio_method) == {"uniform"}
    assert np.allclose(sweep["measured_global"], sweep["target"], atol=0.5 / 32)
    # the sweep's uniform 0.5 wanda model is the table's: one cache entry, counted once
    assert len(bench.keys) == 1 + 2 + 1 + 1


def test_ratio_plan_keeps_a_source_without_positive_scores_for_the_map_only():
    """LayerIF can find every layer's data net harmful: q is undefined (scores_frame writes NaN), the
    LayerIF map still uses the signed scores, MDL rows are not computed and the plan says why."""
    import warnings as W
    import numpy as np
    import pandas as pd
    from mdlcap.scores.table import scores_frame
    from mdlcap.study.params import PruningParams
    from mdlcap.study.pruning_ratios import ratio_plan
    df = scores_frame({("calibration", "layerif_all"): {"layers.0": -3.0, "layers.1": -1.0, "layers.2": -2.0}})
    assert df["q"].isna().all() and (df["score"] < 0).all()
    with W.catch_warnings(record=True) as caught:
        W.simplefilter("always")
        plan = ratio_plan(df, [10, 10, 10], None, PruningParams(), methods=("uniform", "layerif", "mdl", "mdl_eq"))
    assert set(plan["ratio_method"]) == {"uniform", "layerif"}
    assert plan.attrs["unusable"] and "q is undefined" in plan.attrs["unusable"][0]
    assert any("q is undefined" in str(w.message) for w in caught)
    lif = plan[plan["ratio_method"] == "layerif"].sort_values("layer")["ratio"].to_numpy()
    assert np.average(lif, weights=[10, 10, 10]) == pytest.approx(0.5) and lif[1] < lif[2] < lif[0]
