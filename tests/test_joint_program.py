"""Notebook 07 §1's drivers (mdlcap.study.joint_program): the solver checks, the expert cost, the
three plans at one description length, and the paired intervals, on hand-made inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mdlcap.study import joint_program as jp
from mdlcap.study import params as P


@pytest.fixture(scope="module")
def tiny():
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2)
    return MistralForCausalLM(cfg)


def test_solver_checks_meet_the_rule_and_bad_counts_are_refused():
    pytest.importorskip("cvxpy")
    checks = jp.solver_checks(6, seed=1)
    assert len(checks) == 6 and (checks.kkt_residual <= 1e-9).all()
    assert (checks.obj_rel_excess <= 1e-9).all()
    assert "within" in jp.solver_verdict(checks)
    bad = checks.assign(kkt_residual=checks.kkt_residual + 1.0)
    assert "OUTSIDE" in jp.solver_verdict(bad)
    with pytest.raises(ValueError, match="n_instances"):
        jp.solver_checks(0)


def test_expert_bits_count_what_one_more_expert_adds(tiny):
    from mdlcap.interventions.moe import add_lora_moe, trainable_parameters
    import copy
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    c = jp.expert_bits(tiny, targets, 4, 16.0)
    assert c.shape == (4,) and np.all(c == c[0])
    n = {}
    for e in (2, 3):
        m = copy.deepcopy(tiny)
        add_lora_moe(m, [e] * 4, r=4, target_modules=targets, seed=0)
        n[e] = trainable_parameters(m)[0]
    assert (n[3] - n[2]) / 4 * 16.0 == pytest.approx(c[0])      # LoRA A, B and a router row per module
    with pytest.raises(ValueError, match="target_modules"):
        jp.expert_bits(tiny, ["nope"], 4, 16.0)
    with pytest.raises(ValueError, match="r:"):
        jp.expert_bits(tiny, targets, 0, 16.0)


def test_plans_spend_one_budget_and_the_joint_moves_capacity_towards_high_q():
    p = P.load("params/tiny.yaml")
    q = np.array([0.4, 0.08, 0.08, 0.1, 0.1, 0.08, 0.08, 0.08])
    N = np.full(8, 393216.0)
    c = np.full(8, 460800.0)
    plans = jp.joint_plans(q, N, c, p)
    assert list(plans) == list(jp.JOINT_METHODS)
    B = plans["separate"]["bits"]
    assert plans["uniform"]["bits"] == pytest.approx(B, rel=1e-12)
    assert plans["joint"]["bits"] <= B * (1 + 1e-12) and plans["joint"]["bits"] >= B - c[0]   # no whole expert left over
    assert plans["separate"]["sparsity"] == pytest.approx(p.pruning.target, abs=1e-9)
    assert plans["uniform"]["counts"].sum() == plans["separate"]["counts"].sum() == p.allocation.total_experts
    j = plans["joint"]
    assert j["counts"][0] == j["counts"].max() and j["ratios"][0] == j["ratios"].min()   # the high-q layer
    assert np.all(j["ratios"] <= p.joint.rho_max + 1e-12) and j["result"].gap >= -1e-12
    t = jp.budget_table(plans)
    assert np.allclose(t.set_index("method").loc[["separate", "uniform"], "rel_to_budget"], 0, atol=1e-12)
    long = jp.plan_table(plans, q, N)
    assert len(long) == 3 * 8 and set(long.method) == set(jp.JOINT_METHODS)
    with pytest.raises(ValueError, match="sizes/cost"):
        jp.joint_plans(q, N[:3], c, p)


def _results(acc, seeds=range(5), n_items=64, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m, a in acc.items():
        for s in seeds:
            items = (rng.random(n_items) < a).astype(int).tolist()
            rows.append({"task": "sciq", "method": m, "seed": s, "accuracy": float(np.mean(items)), "items": items,
                         "heldout_loss": 1.0 - a + 0.01 * s})
    return pd.DataFrame(rows)


def test_intervals_pair_seeds_and_items_and_read_the_direction():
    res = _results({"joint": 0.9, "separate": 0.3, "uniform": 0.3})
    iv = jp.joint_intervals(res, "sciq", n_resamples=999)
    assert len(iv) == 2 * len(jp.COMPARISONS)
    acc = iv[(iv.metric == "accuracy_points") & (iv.comparison == "joint - separate")].iloc[0]
    assert acc.verdict == "positive" and acc.ci_low > 30 and acc.n_seeds == 5 and acc.n_items == 64
    loss = iv[(iv.metric == "heldout_loss") & (iv.comparison == "joint - separate")].iloc[0]
    assert loss["diff"] == pytest.approx(-0.6) and loss.verdict == "negative"    # lower loss: joint better
    assert all(": " in x and "->" in x for x in jp.verdict_lines(iv))
    with pytest.raises(ValueError, match="^results: comparisons"):
        jp.joint_intervals(res[res.method != "uniform"], "sciq", n_resamples=99)
    s = jp.joint_summary(res)
    assert list(s.method) == list(jp.JOINT_METHODS) and (s.n_seeds == 5).all()
