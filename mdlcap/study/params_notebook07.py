"""The params sections of notebook 07 (`joint`, `psi`), kept beside `mdlcap.study.params`, which
holds the schema and the loader and reads these two sections and their value rules from here."""
from __future__ import annotations

from dataclasses import dataclass, field


def _pruners() -> list[str]:
    from mdlcap.interventions.pruning import PRUNERS
    return list(PRUNERS)


@dataclass
class JointParams:
    """Notebook 07 §1: one description-length budget for pruning and experts (study.joint_program)."""
    task: str | None = None              # the fine-tune task (above chance, below the ceiling); None: the first
                                         # of allocation.tasks (or of data.finetune_tasks), see `resolve`
    score_method: str = "cg_ggn"         # q of every plan: this scores.csv method on `task`
    pruner: str = "wanda"
    rho_max: float = 0.7                 # box of the joint and the separate Algorithm 2 (0.51 leaves no room to move)
    beta: float = 1.0                    # the joint program's constants (mdlcap.programs.joint's defaults)
    lam: float = 2.0
    gamma: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    solver_instances: int = 100          # random instances of the cvxpy / KKT check


@dataclass
class PsiParams:
    """Notebook 07 §2: ψ calibrated per pruner (study.psi_calibration)."""
    pruners: list[str] = field(default_factory=_pruners)
    grid: list[float] = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.6, 0.7, 0.8])   # ρ of the layer-alone curves
    rho_max: float = 0.8                 # box of every calibrated and ρ² program
    score_method: str = "cg_ggn"         # q of the ρ² program and LayerIF's map (score source: pruning's calibration)


def resolve(p) -> None:
    """Fill the defaults that follow other sections: `joint.task` None becomes the first task notebook
    03 fine-tunes on, so a params file with any task list loads without naming notebook 07's task."""
    if p.joint.task is None:
        p.joint.task = (p.allocation.tasks or p.data.finetune_tasks)[0]


def check_values(p, need, known, score_methods) -> None:
    """The value rules of `joint` and `psi` (`need(cond, key, rule)` raises naming the key)."""
    j, ps = p.joint, p.psi
    need(j.task in p.data.finetune_tasks, "joint.task", "must be one of data.finetune_tasks")
    need(j.score_method in score_methods, "joint.score_method", f"must be one of {list(score_methods)}")
    need(j.pruner in known, "joint.pruner", f"must be one of {list(known)}")
    need(p.pruning.target <= j.rho_max <= 1.0, "joint.rho_max", "must lie in [pruning.target, 1] (feasible box)")
    need(j.beta > 0 and j.lam > 0 and j.gamma > 0, "joint.beta", "and joint.lam, joint.gamma must be > 0")
    need(len(set(j.seeds)) == len(j.seeds) >= 1, "joint.seeds", "must list at least one seed, each once")
    need(j.solver_instances >= 1, "joint.solver_instances", "must be >= 1")
    need(bool(ps.pruners) and all(x in known for x in ps.pruners), "psi.pruners", f"must be a non-empty subset of {list(known)}")
    need(len(ps.grid) >= 2 and len(set(ps.grid)) == len(ps.grid) and all(0.0 < x < 1.0 for x in ps.grid), "psi.grid",
         "must hold >= 2 distinct values in (0, 1) (a and p of each fit)")
    need(p.pruning.target <= ps.rho_max <= 1.0, "psi.rho_max", "must lie in [pruning.target, 1] (feasible box)")
    need(ps.score_method in score_methods, "psi.score_method", f"must be one of {list(score_methods)}")
