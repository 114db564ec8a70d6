"""The params section of notebook 08 (`online`: ζ² updated online during fine-tuning against
AdaLoRA, METHOD.md §7, Appendix G iii), kept beside `mdlcap.study.params`, which holds the schema
and the loader and reads this section and its value rules from here.

Learning rates. Every method trains at `allocation.lr` unless `lr_grid` names it: then its lr is
the candidate with the lowest final held-out (validation) loss on `tuning_seed`, a seed outside
the compared ones, per task (`mdlcap.study.online_cells.lr_selection`). The default grid tunes
AdaLoRA alone: its factorisation P diag(E) Q starts from E = 0 and P, Q ~ N(0, 0.02²), so at
LoRA's Adam lr its update ΔW grows far more slowly than LoRA's B A (A at Kaiming scale), and its
authors choose its lr per task (their GLUE scripts: 5e-4 to 1.2e-3 over thousands of steps). The
LoRA methods keep the lr notebook 03 chose for LoRA; tuning the baseline alone favours it.

The budget is an average rank per decoder layer (`target_rank`), so the total Σ_k r_k =
target_rank × L is a multiple of the layer count for any model (AdaLoRA's target_r is an integer
average) and one file works for the default and the 7B models alike. The schedule is given as
fractions of each cell's optimizer steps (`mdlcap.interventions.rank_schedule.RankSchedule`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ONLINE_METHODS = ("uniform", "static_mdl", "adalora", "online_mdl")   # notebook 08's four rank methods


@dataclass
class OnlineParams:
    """Notebook 08: uniform LoRA, static MDL ranks (ζ² at step 0), AdaLoRA and online MDL ranks at one
    final total rank and one step count (interventions.online_ranks, interventions.adalora)."""
    tasks: list[str] | None = None       # None: notebook 03's tasks (allocation.tasks, else data.finetune_tasks)
    methods: list[str] = field(default_factory=lambda: list(ONLINE_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    r_max: int = 8                       # every layer's starting rank (online MDL; AdaLoRA's init_r)
    target_rank: int = 4                 # final mean rank per decoder layer: budget = target_rank × L
    n_min: int = 1                       # the rank program's floor per layer
    surrogate: str = "diag_fisher"       # ζ² surrogate of the online updates (scores registry)
    scoring_batches: int = 4             # fixed scoring batches (from the task's train split)
    gamma: float = 0.5                   # the rank program's curvature exponent (the paper's γ)
    keep: str = "magnitude"              # which components a shrinking layer keeps (rank_mask)
    t_init: float = 0.1                  # warm-up, fraction of the steps (AdaLoRA's tinit)
    delta_t: float = 0.1                 # between updates (AdaLoRA's deltaT)
    t_final: float = 0.8                 # the final allocation; fixed after (AdaLoRA: tfinal = 1 − this)
    orth_reg_weight: float = 0.5         # AdaLoRA's orthogonality penalty (peft's default)
    lr_grid: dict[str, list[float]] = field(default_factory=dict)   # method -> candidate lrs (lr_selection)
    tuning_seed: int = 1000              # the seed the lr candidates are trained on, outside `seeds`


def resolve(p) -> None:
    """Fill the defaults that follow other sections: `online.tasks` None becomes notebook 03's tasks,
    so a params file with any task list loads without naming notebook 08's tasks."""
    if p.online.tasks is None:
        p.online.tasks = list(p.allocation.tasks or p.data.finetune_tasks)


def check_values(p, need) -> None:
    """The value rules of `online` (`need(cond, key, rule)` raises naming the key); the surrogate and
    keep names are read from their registries (imported on call: they load torch)."""
    from mdlcap.interventions.rank_mask import KEEP_RULES
    from mdlcap.scores.registry import METHODS as score_methods

    o = p.online
    need(bool(o.tasks) and all(t in p.data.finetune_tasks for t in o.tasks), "online.tasks",
         "must be a non-empty subset of data.finetune_tasks")
    need(bool(o.methods) and len(set(o.methods)) == len(o.methods) and all(m in ONLINE_METHODS for m in o.methods),
         "online.methods", f"must be a non-empty subset of {list(ONLINE_METHODS)}, each once")
    need(len(set(o.seeds)) == len(o.seeds) >= 1, "online.seeds", "must list at least one seed, each once")
    need(o.r_max >= 1, "online.r_max", "must be >= 1")
    need(0 <= o.n_min <= o.target_rank, "online.n_min", "must lie in [0, online.target_rank]")
    need(1 <= o.target_rank <= o.r_max, "online.target_rank", "must lie in [1, online.r_max]")
    need(o.surrogate in score_methods, "online.surrogate", f"must be one of {list(score_methods)}")
    need(o.scoring_batches >= 1, "online.scoring_batches", "must be >= 1")
    need(o.gamma > 0, "online.gamma", "must be > 0")
    need(o.keep in KEEP_RULES, "online.keep", f"must be one of {list(KEEP_RULES)}")
    need(0.0 <= o.t_init < o.t_final <= 1.0, "online.t_init", "must satisfy 0 <= t_init < t_final <= 1")
    need(0.0 < o.delta_t <= 1.0, "online.delta_t", "must lie in (0, 1]")
    need(o.orth_reg_weight >= 0, "online.orth_reg_weight", "must be >= 0")
    need(set(o.lr_grid) <= set(o.methods), "online.lr_grid", f"its keys must be among online.methods {o.methods}")
    need(all(v and len(set(v)) == len(v) and min(v) > 0 for v in o.lr_grid.values()), "online.lr_grid",
         "every method's list must be non-empty, each lr > 0 and listed once")
    need(o.tuning_seed not in o.seeds, "online.tuning_seed", "must not be one of online.seeds (the lr is chosen apart "
         "from the seeds the comparison resamples)")
    need(not any(len(v) > 1 for v in o.lr_grid.values()) or p.allocation.validation_every > 0, "online.lr_grid",
         "choosing among several lrs reads the held-out loss: it needs allocation.validation_every > 0")
