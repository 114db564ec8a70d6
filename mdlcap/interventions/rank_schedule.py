"""When a rank schedule may change the adapters' ranks during fine-tuning: AdaLoRA's three phases
(Zhang et al. 2023, peft `AdaLoraConfig`), written once so that online MDL ranks
(`mdlcap.interventions.online_ranks`) and AdaLoRA (`mdlcap.interventions.adalora`) change ranks
at the same steps of the same run (METHOD.md §7, Appendix G iii).

    s = RankSchedule(total_steps=192, t_init=0.1, delta_t=0.1, t_final=0.8)
    s.init, s.delta, s.final          # 19, 19, 154 (fractions of total_steps, rounded)
    s.updates                         # (38, 57, 76, 95, 114, 133, 152, 154)
    s.is_update(38)                   # True
    s.adalora()                       # {"tinit": 19, "tfinal": 38, "deltaT": 19, "total_step": 192}

Phases, with `step` the number of optimizer steps done (1 … total_steps,
`mdlcap.interventions.finetune.finetune`'s callback): warm-up `step <= init` (no change),
allocation `init < step < final` (a change at every multiple of `delta`), the final allocation at
`step == final`, then a fixed phase `step > final` (no change). This is peft's
`RankAllocator.budget_schedule` / `update_and_allocate` read with `tfinal = total_steps − final`:
it masks at `step % deltaT == 0` strictly inside the middle phase and forces the final mask at
`total_step − tfinal`.

Every argument is a step count (int) or a fraction of `total_steps` (float in [0, 1]); `delta_t`
as a fraction is rounded to at least one step. Deviation from AdaLoRA: AdaLoRA counts its final
phase from the end (`tfinal` steps long); here `t_final` is the step at which it starts, as the
issue states the schedule, and `adalora()` converts.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

__all__ = ["RankSchedule", "resolve_steps"]


def resolve_steps(value, total_steps: int, name: str, *, at_least: int = 0) -> int:
    """A step count from an int (steps) or a float in [0, 1] (a fraction of `total_steps`, rounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a step count (int) or a fraction of the steps (float), got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: a fraction of the steps must lie in [0, 1], got {value!r}")
        steps = int(round(value * total_steps))
    else:
        steps = int(value)
    steps = max(steps, at_least)
    if not 0 <= steps <= total_steps:
        raise ValueError(f"{name}: must lie in [0, total_steps={total_steps}], got {steps}")
    return steps


@dataclass(frozen=True)
class RankSchedule:
    """AdaLoRA's warm-up / allocation / fixed phases in optimizer steps (module docstring)."""
    total_steps: int
    t_init: int | float = 0.1
    delta_t: int | float = 0.1
    t_final: int | float = 0.8

    def __post_init__(self):
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 2:
            raise ValueError(f"total_steps: must be an integer >= 2, got {self.total_steps!r}")
        if not self.init < self.final:
            raise ValueError(f"t_init: the warm-up ({self.init} steps) must end before t_final ({self.final}): "
                             "no allocation phase is left")
        if self.final < 1:
            raise ValueError("t_final: must be at least step 1")

    @cached_property
    def init(self) -> int:
        return resolve_steps(self.t_init, self.total_steps, "t_init")

    @cached_property
    def delta(self) -> int:
        return resolve_steps(self.delta_t, self.total_steps, "delta_t", at_least=1)

    @cached_property
    def final(self) -> int:
        return resolve_steps(self.t_final, self.total_steps, "t_final")

    def is_update(self, step: int) -> bool:
        """Whether ranks may change after optimizer step `step` (1-based)."""
        return step == self.final or (self.init < step < self.final and step % self.delta == 0)

    @cached_property
    def updates(self) -> tuple[int, ...]:
        """Every step at which ranks change, in order (the last is `final`)."""
        return tuple(s for s in range(1, self.total_steps + 1) if self.is_update(s))

    def phase(self, step: int) -> str:
        """"warmup", "allocation", "final" (the step of the final allocation) or "fixed"."""
        if step <= self.init:
            return "warmup"
        if step < self.final:
            return "allocation"
        return "final" if step == self.final else "fixed"

    def adalora(self) -> dict:
        """peft `AdaLoraConfig`'s schedule fields for the same phases."""
        return {"tinit": self.init, "tfinal": self.total_steps - self.final, "deltaT": self.delta,
                "total_step": self.total_steps}
