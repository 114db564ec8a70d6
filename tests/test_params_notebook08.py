"""The `online` params section of notebook 08 (mdlcap.study.params_notebook08): defaults, smoke
values, and value rules that name the key."""
from __future__ import annotations

import pytest

from mdlcap.study import params as P
from mdlcap.study.params_notebook08 import ONLINE_METHODS


def test_defaults_and_smoke_section():
    tiny = P.load("params/tiny.yaml")                      # its online section validates
    assert tiny.online.methods == list(ONLINE_METHODS) and tiny.online.target_rank <= tiny.online.r_max
    smoke = P.load("params/smoke.yaml")
    assert (smoke.online.r_max, smoke.online.target_rank, smoke.online.surrogate) == (4, 2, "grad_norm")
    assert smoke.online.tasks == ["csqa"] and smoke.online.seeds == [0, 1]
    assert tiny.online.tuning_seed not in tiny.online.seeds and len(tiny.online.lr_grid["adalora"]) >= 2
    assert P.from_dict({}).online.lr_grid == {}            # by default every method trains at allocation.lr


@pytest.mark.parametrize("text, key", [
    ("online:\n  target_rank: 9\n", "online.target_rank"),
    ("online:\n  n_min: 5\n  target_rank: 4\n", "online.n_min"),
    ("online:\n  methods: [uniform, lora_ga]\n", "online.methods"),
    ("online:\n  methods: [uniform, uniform]\n", "online.methods"),
    ("online:\n  surrogate: layerif_all\n", "online.surrogate"),
    ("online:\n  keep: random\n", "online.keep"),
    ("online:\n  t_init: 0.9\n  t_final: 0.5\n", "online.t_init"),
    ("online:\n  delta_t: 0.0\n", "online.delta_t"),
    ("online:\n  tasks: [nosuchtask]\n", "online.tasks"),
    ("online:\n  seeds: []\n", "online.seeds"),
    ("online:\n  scoring_batches: 0\n", "online.scoring_batches"),
    ("online:\n  orth_reg_weight: -1.0\n", "online.orth_reg_weight"),
    ("online:\n  lr_grid:\n    lora_ga: [1.0e-3]\n", "online.lr_grid"),
    ("online:\n  methods: [uniform]\n  lr_grid:\n    adalora: [1.0e-3]\n", "online.lr_grid"),
    ("online:\n  lr_grid:\n    adalora: []\n", "online.lr_grid"),
    ("online:\n  lr_grid:\n    adalora: [1.0e-3, 1.0e-3]\n", "online.lr_grid"),
    ("online:\n  lr_grid:\n    adalora: [-1.0e-3]\n", "online.lr_grid"),
    ("online:\n  seeds: [0, 1]\n  tuning_seed: 1\n", "online.tuning_seed"),
    ("allocation:\n  validation_every: 0\nonline:\n  lr_grid:\n    adalora: [1.0e-3, 3.0e-3]\n", "online.lr_grid"),
])
def test_value_rules_name_the_key(tmp_path, text, key):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(P.ParamsError, match=f"'{key}'"):
        P.load(f)


def test_unknown_online_key_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("online:\n  budget: 32\n")
    with pytest.raises(P.ParamsError, match=r"'online.budget'"):
        P.load(f)


def test_task_defaults_follow_notebook_03s_tasks():
    """Unset, notebook 07's task and notebook 08's tasks follow allocation.tasks (else the fine-tune
    tasks), so a params file with any task list loads without naming them (it failed before)."""
    p = P.from_dict({"data": {"finetune_tasks": ["cola", "obqa"]}})
    assert (p.joint.task, p.online.tasks) == ("cola", ["cola", "obqa"])
    p = P.from_dict({"data": {"finetune_tasks": ["cola", "obqa"]}, "allocation": {"tasks": ["obqa"]}})
    assert (p.joint.task, p.online.tasks) == ("obqa", ["obqa"])
    p = P.from_dict({"data": {"finetune_tasks": ["cola", "obqa"]}, "joint": {"task": "obqa"}})
    assert p.joint.task == "obqa"                          # a named task is kept
