"""Online MDL rank allocation: ζ² recomputed during fine-tuning and Algorithm 1 re-solved for the
LoRA ranks (the paper's future work iii, its Appendix G; METHOD.md §7), as a `finetune` callback.

    masks = attach_masks(peft_model)                       # a LoRA at r_max in every layer
    online = OnlineRanks(masks, scoring_batches, budget=32, schedule=RankSchedule(total_steps=192))
    online.start(peft_model)                               # q(0), the step-0 ranks (the static MDL's)
    finetune(peft_model, batches, ..., callback=online)    # updates on the schedule
    online.trajectory                                      # one row per update (below)
    online.cost()                                          # gradient passes, exactly

At every update step of the schedule (`mdlcap.interventions.rank_schedule`: AdaLoRA's warm-up,
updates every delta_t, final allocation at t_final, then fixed), the callback scores every decoder
layer with a ζ² surrogate of the scores registry (`mdlcap.scores.registry.layer_gains`, default
`diag_fisher` on whole batches) on the same fixed scoring batches, maps the gains to q (Eq 10),
solves the capped rank program (`rank_program.capped_ranks`: Σ r_k = budget, n_min <= r_k <= r_max)
and applies the ranks by masking (`rank_mask.RankMasks.set_ranks`, which zeroes the Adam moments
of newly masked components). Each row of `trajectory`: step, phase, q, the ranks applied, the
newly masked components per layer, the drift ‖q(t) − q(0)‖₂, the regret of keeping the step-0
ranks (`regret_ranks`, integer, the program's own objective at q(t)), the continuous regret and
Theorem 4's bound on the relaxation (`regret`, `bound`, `vi_bound`: `rank_program.keep_regret`),
this update's gradient passes and the cumulative count. Row 0 is `start`'s: q(0) and the step-0
ranks, which the static MDL baseline trains with from the first step (peft `rank_pattern`),
while the online LoRA trains at r_max until its first update.

Which parameters are scored: the base layer's, not the adapter's. The gradient with respect to a
frozen weight W at the current adapters is the gradient with respect to the effective weight
W + s B diag(m) A, so scoring the base parameters of layer k measures the reducible risk left in
the layer's whole weight space, the quantity the paper's ζ² is defined on (and the one the static
baseline uses at step 0, where B = 0 makes the LoRA model the base model). The adapter's own
parameters would be a circular score: a masked component has zero gradient (the mask multiplies
it), so a layer that lost rank could never win it back, and at step 0 ∂L/∂A = 0 (B = 0), so the
step-0 score would see only B. The price: the scored block is the whole layer (memory of one
gradient of the base model; `score_args={"group_size": m}` streams it, METHOD.md §1, at m-times
the passes, counted). Scoring runs in eval mode under `scores.autograd.scoring_mode` and draws its
Fisher labels from generators seeded by the batch content, so it touches neither the training RNG
nor the adapters' gradients.

Cost, exactly: every backward pass through the network during scoring is counted by a hook on
the output embedding's output (a tensor hook fires once per backward through it), so
`grad_norm` costs one pass per scoring batch, `diag_fisher` on whole batches two (the gradient
and one Fisher draw), and a call's passes are measured, not estimated. Deviations from AdaLoRA:
AdaLoRA's sensitivity reuses the training gradients (0 extra passes) and lowers its budget on a
cubic schedule from init_r per module to target_r; here the total rank is the final budget from
the first update on (the issue's fixed-budget program), the ranks are per decoder layer (one rank
for all of a layer's modules, the paper's blocks) and the score costs extra passes (`cost`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mdlcap.interventions.rank_mask import RankMasks
from mdlcap.interventions.rank_program import DEFAULT_BETA, DEFAULT_GAMMA, capped_ranks, keep_regret
from mdlcap.interventions.rank_schedule import RankSchedule
from mdlcap.models import decoder_layers
from mdlcap.scores.registry import METHODS, layer_gains
from mdlcap.theory.programs import scores_from_gains

__all__ = ["OnlineRanks", "base_blocks", "count_backward_passes", "DEFAULT_SCORE_ARGS"]

DEFAULT_SCORE_ARGS = {"diag_fisher": {"fisher_granularity": "batch"}}   # one Fisher backward per batch


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def base_blocks(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Block `layers.k` = the parameters of decoder layer k that are not adapters ("lora_" in the name)."""
    return {f"layers.{k}": [p for n, p in layer.named_parameters() if "lora_" not in n]
            for k, layer in enumerate(decoder_layers(_unwrap(model)))}


class _Count:
    n = 0


@contextmanager
def count_backward_passes(model: nn.Module):
    """Counts, while inside, the backward passes through the model's output embedding (its output
    gets a tensor hook on every forward; each backward through it fires the hook once)."""
    head = _unwrap(model).get_output_embeddings()
    if head is None:
        raise ValueError("model: has no output embedding to count backward passes at")
    counter = _Count()

    def tick(_grad):
        counter.n += 1

    def on_forward(_mod, _args, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(tick)

    handle = head.register_forward_hook(on_forward)
    try:
        yield counter
    finally:
        handle.remove()


class OnlineRanks:
    """The online MDL rank callback (module docstring)."""

    def __init__(self, masks: RankMasks, scoring_batches: Sequence[dict], *, budget: int, schedule: RankSchedule,
                 method: str = "diag_fisher", damping: float = 1e-3, gamma: float = DEFAULT_GAMMA,
                 beta: float = DEFAULT_BETA, n_min: int = 1, keep: str = "magnitude", score_args: dict | None = None):
        if method not in METHODS:
            raise ValueError(f"method: must be one of {list(METHODS)}, got {method!r}")
        if not isinstance(schedule, RankSchedule):
            raise ValueError("schedule: must be a RankSchedule")
        if len(set(masks.r_max)) != 1:
            raise ValueError(f"masks: every layer must start at one r_max, got {masks.r_max}")
        if not scoring_batches:
            raise ValueError("scoring_batches: must not be empty")
        self.masks, self.batches, self.schedule = masks, list(scoring_batches), schedule
        self.r_max, self.budget, self.n_min = int(masks.r_max[0]), int(budget), int(n_min)
        self.method, self.damping, self.gamma, self.beta, self.keep = method, float(damping), gamma, beta, keep
        self.score_args = dict(DEFAULT_SCORE_ARGS.get(method, {}) if score_args is None else score_args)
        capped_ranks(np.ones(len(masks.layers)), self.budget, self.r_max, n_min=self.n_min)   # budget checks
        self.trajectory: list[dict] = []
        self.passes = 0
        self.q0: np.ndarray | None = None
        self.ranks0: np.ndarray | None = None

    def score(self, model: nn.Module) -> tuple[np.ndarray, int]:
        """(q per decoder layer, backward passes it took): the surrogate on the base parameters."""
        with count_backward_passes(model) as c:
            gains = layer_gains(_unwrap(model), self.batches, method=self.method, blocks=base_blocks(model),
                                damping=self.damping, progress=False, **self.score_args)
        self.passes += c.n
        return scores_from_gains(gains.values_array()), c.n

    def _row(self, step: int, q: np.ndarray, passes: int, t0: float, dropped=None, **extra) -> dict:
        row = {"step": int(step), "phase": "start" if step == 0 else self.schedule.phase(step),
               "q": [float(x) for x in q], "ranks": self.masks.ranks(), "dropped": dropped,
               **extra, "update_passes": int(passes), "passes": int(self.passes),
               "seconds": round(time.time() - t0, 4)}
        self.trajectory.append(row)
        return row

    def start(self, model: nn.Module) -> np.ndarray:
        """Score at step 0 (before training): q(0) and the step-0 ranks, which the static MDL baseline
        uses and the regret compares with. The LoRA stays at r_max until the first update."""
        if self.q0 is not None:
            raise RuntimeError("start: already called")
        t0 = time.time()
        self.q0, n = self.score(model)
        self.ranks0 = capped_ranks(self.q0, self.budget, self.r_max, n_min=self.n_min, gamma=self.gamma,
                                   beta=self.beta)
        self._row(0, self.q0, n, t0, ranks_mdl=self.ranks0.tolist(), drift=0.0, regret_ranks=0.0, regret=0.0,
                  bound=0.0, vi_bound=0.0)
        return self.ranks0

    def __call__(self, step: int, model: nn.Module, optimizer=None) -> dict | None:
        """`finetune`'s callback: at an update step, score, re-solve and mask; else nothing."""
        if self.q0 is None:
            raise RuntimeError("OnlineRanks: call start(model) before training (q(0) is the step-0 score)")
        if not self.schedule.is_update(int(step)):
            return None
        t0 = time.time()
        q, n = self.score(model)
        d = keep_regret(self.q0, q, self.budget, self.r_max, n_min=self.n_min, gamma=self.gamma, beta=self.beta,
                        ranks0=self.ranks0)
        dropped = self.masks.set_ranks(d["ranks"], keep=self.keep, optimizer=optimizer)
        return self._row(step, q, n, t0, dropped=dropped, ranks_mdl=d["ranks"], drift=d["drift"],
                         regret_ranks=d["regret_ranks"], regret=d["regret"], bound=d["bound"],
                         vi_bound=d["vi_bound"])

    @property
    def updates(self) -> list[dict]:
        """The trajectory's rows after step 0."""
        return [r for r in self.trajectory if r["step"] > 0]

    def cost(self) -> dict:
        """Gradient (backward) passes: at step 0 (shared with the static baseline) and in the updates
        (the online method's overhead), with the scoring batches and the passes per batch."""
        step0 = self.trajectory[0]["update_passes"] if self.trajectory else 0
        extra = sum(r["update_passes"] for r in self.updates)
        per = [r["update_passes"] / len(self.batches) for r in self.trajectory]
        return {"scoring_batches": len(self.batches), "updates": len(self.updates), "step0_passes": int(step0),
                "update_passes": int(extra), "total_passes": int(self.passes),
                "passes_per_batch": float(per[0]) if per and len(set(per)) == 1 else per}
