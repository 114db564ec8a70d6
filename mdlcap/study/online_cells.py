"""Notebook 08: ζ² updated online during fine-tuning against AdaLoRA (issue 17; METHOD.md §7.4;
paper Appendix G iii). Four rank methods at one final total rank and one step count:

    recs = online_cells(params, base=model, tok=tok, workers=2)   # one cached record per (task, method, seed)
    lr_table(tuning_cells(params))                                # the tuned methods' candidate lrs (cache hits)
    res = results_table(recs)                                     # accuracy, held-out loss, final budget, passes
    iv = online_intervals(res)                                    # paired 95 % intervals of COMPARISONS
    rank_table(recs); drift_table(recs); loss_table(recs); overhead_table(recs); verdict_lines(iv, ...)

  uniform     peft LoRA, every layer at online.target_rank;
  static_mdl  peft LoRA with the capped rank program's ranks from ζ² (online.surrogate) at step 0;
  adalora     peft AdaLoRA, init_r = r_max, target_r = target_rank (`interventions.adalora`);
  online_mdl  LoRA at r_max with rank masks, ζ² rescored and the program re-solved on the schedule
              (`interventions.online_ranks.OnlineRanks`).
All share the schedule (`RankSchedule` from the online.t_* fractions of the cell's steps), the
training recipe of `allocation` (epochs, batches, seed: adapter init and batch order; the lr too,
except for a method `online.lr_grid` tunes: its lr is chosen per task on `online.tuning_seed` by
the final held-out loss, `lr_selection`, see `mdlcap.study.params_notebook08`), the
held-out loss (`finetune.task_validation`; AdaLoRA's orthogonality penalty off) and the lm-eval
test split. The budget Σ_modules rank = target_rank × L × (modules per layer) is the same final
total for every method. Ranks are reported per module (a layer's AdaLoRA rank is its modules' mean).
Each record is one entry of the "online" cache namespace (key: `finetune.cell_spec` of the base
run plus the method and the online section), computed in `run.workers` spawn processes that load
the base model once (`study.cells`' worker), so a record does not depend on which worker ran it.
"""
from __future__ import annotations

import copy
import re
import time
from dataclasses import asdict, replace
from typing import Callable

import numpy as np
import pandas as pd

from mdlcap import cache
from mdlcap.interventions import finetune as ft
from mdlcap.study.allocation_evidence import accuracy_and_loss_intervals
from mdlcap.study.cells import cell_state, task_batches, worker_state
from mdlcap.study.pool import run_jobs
from mdlcap.study.stats import interval_frame

COMPARISONS = (("adalora", "online_mdl"), ("static_mdl", "online_mdl"), ("uniform", "online_mdl"),
               ("uniform", "adalora"))                                     # (base, other): "other - base"
UNIT = {"accuracy_points": "points", "heldout_loss": "nats"}


def cell_spec(params, task: str, method: str, seed: int, lr: float | None = None) -> dict:
    """The cache spec of one record: the base fine-tuning spec (at `lr`, None: allocation.lr), the
    method and the online section (its task, method and seed lists and its lr grid excluded: they
    choose cells, not a cell's result; the cell's own lr is in the base spec)."""
    o = asdict(params.online)
    for k in ("tasks", "methods", "seeds", "lr_grid", "tuning_seed"):
        o.pop(k)
    return {**ft.cell_spec(_at_lr(params, lr), task, seed), "method": method, "online": o}


def _at_lr(params, lr: float | None):
    """`params` with allocation.lr = lr (a copy; `params` itself when lr is None or equal)."""
    if lr is None or float(lr) == params.allocation.lr:
        return params
    return replace(params, allocation=replace(params.allocation, lr=float(lr)))


def _lora(base, ranks, params):
    from peft import get_peft_model

    from mdlcap.interventions.moe import rank_config
    a = params.allocation
    return get_peft_model(copy.deepcopy(base), rank_config([int(r) for r in ranks], target_modules=a.target_modules,
                                                           alpha_ratio=a.lora_alpha / a.lora_r))


def run_online_cell(base, tok, params, task: str, method: str, seed: int, batches=None, lr: float | None = None) -> dict:
    """Fine-tune a copy of `base` on `task` with one rank method (module docstring) at `lr` (None:
    allocation.lr) and evaluate it:
    accuracy and per-item correctness on the test split, held-out loss along training and at the
    end, per-layer ranks (per module) at every schedule step, OnlineRanks' trajectory and passes."""
    import torch

    from mdlcap.evaluation import lm_eval_items
    from mdlcap.interventions import adalora as ada
    from mdlcap.interventions.online_ranks import OnlineRanks
    from mdlcap.interventions.rank_mask import attach_masks, lora_modules
    from mdlcap.interventions.rank_schedule import RankSchedule
    from mdlcap.models import decoder_layers

    a, o = params.allocation, params.online
    t0 = time.time()
    batches = ft.task_train_batches(params, tok, task) if batches is None else batches
    L, epochs = len(decoder_layers(base)), ft.task_epochs(params, task)
    budget, steps = o.target_rank * L, epochs * len(batches)
    sched = RankSchedule(total_steps=steps, t_init=o.t_init, delta_t=o.delta_t, t_final=o.t_final)
    held = ft.task_validation(params, tok, task)
    torch.manual_seed(seed)
    online = trajectory = None
    passes = {"step0_passes": 0, "update_passes": 0, "penalty_pass_fraction": 0.0}
    if method in ("static_mdl", "online_mdl"):
        model = _lora(base, [o.r_max] * L, params)
        online = OnlineRanks(attach_masks(model), batches[: o.scoring_batches], budget=budget, schedule=sched,
                             method=o.surrogate, gamma=o.gamma, n_min=o.n_min, keep=o.keep)
        ranks0 = online.start(model)
        passes["step0_passes"] = online.cost()["step0_passes"]
        if method == "static_mdl":
            torch.manual_seed(seed)
            model, online = _lora(base, ranks0, params), None
            trajectory = [{"step": 0, "ranks": [float(r) for r in ranks0]}]
    elif method == "uniform":
        model = _lora(base, [o.target_rank] * L, params)
        trajectory = [{"step": 0, "ranks": [float(o.target_rank)] * L}]
    elif method == "adalora":
        model = ada.add_adalora(copy.deepcopy(base), ada.adalora_config(
            L, budget, o.r_max, sched, target_modules=a.target_modules, alpha_ratio=a.lora_alpha / a.lora_r,
            orth_reg_weight=o.orth_reg_weight))
        if held is not None:
            held = ada.AdaLoraValidation(held.batches, every=held.every)
    else:
        raise ValueError(f"method: must be one of uniform, static_mdl, adalora, online_mdl, got {method!r}")
    callback = online if method == "online_mdl" else ada.AdaLoraStep(model, sched) if method == "adalora" else None
    lr = a.lr if lr is None else float(lr)
    losses = ft.finetune(model, batches, epochs=epochs, lr=lr, seed=seed, warmup_ratio=a.warmup_ratio, progress=False,
                         validation=held, callback=callback)
    t1 = time.time()
    if method == "adalora":
        final = ada.module_ranks(model)
        per = [sum(1 for n in final if re.search(rf"layers\.{k}\.", n)) for k in range(L)]
        trajectory = [{"step": r["step"], "ranks": [x / n for x, n in zip(r["ranks"], per)]}
                      for r in callback.trajectory]
        tokens = int(np.mean([int(b["attention_mask"].sum()) for b in batches]))
        passes["penalty_pass_fraction"] = ada.orthogonality_cost(model, tokens)["pass_fraction"]
        total, r_top = int(sum(final.values())), int(max(final.values()))
    else:
        per = [len(m) for m in lora_modules(model)]
        if online is not None:
            trajectory = [{"step": r["step"], "ranks": [float(x) for x in r["ranks"]]} for r in online.trajectory]
            passes["update_passes"] = online.cost()["update_passes"]
        last = trajectory[-1]["ranks"]
        total, r_top = int(round(sum(x * n for x, n in zip(last, per)))), int(max(last))
    accs, items = lm_eval_items(model, tok, params, [task], limit=a.eval_limit)
    keys = ("step", "phase", "drift", "regret_ranks", "regret", "bound", "vi_bound", "update_passes", "passes")
    return {"task": task, "method": method, "seed": int(seed), "accuracy": accs[task], "items": items[task],
            "val_steps": [] if held is None else held.steps,
            "val_losses": [] if held is None else [round(float(x), 5) for x in held.losses],
            "heldout_loss": float("nan") if held is None else float(held.losses[-1]),
            "steps": len(losses), "schedule_updates": list(sched.updates), "rank_trajectory": trajectory,
            "final_total_rank": total, "budget_total_rank": int(budget * per[0]), "final_max_rank": r_top,
            "online_trajectory": [] if online is None else [{k: r[k] for k in keys} for r in online.trajectory],
            **passes, "train_seconds": round(t1 - t0, 3), "eval_seconds": round(time.time() - t1, 3)}


def cached_online_cell(base, tok, params, task: str, method: str, seed: int,
                       batches: Callable[[], list] | None = None, lr: float | None = None) -> dict:
    """`run_online_cell` through the one cache (namespace "online"); adds "cached" and "lr".
    `batches`: a callable that returns the task's training batches, called only when the record
    is not in the cache (None: `run_online_cell` builds them)."""
    fresh = []

    def compute():
        fresh.append(True)
        return run_online_cell(base, tok, params, task, method, seed, None if batches is None else batches(), lr)

    rec = cache.cached("online", cell_spec(params, task, method, seed, lr), compute, prefix=f"{task}_{method}_")
    return {**rec, "cached": not fresh, "lr": params.allocation.lr if lr is None else float(lr)}


def _job(state: dict, job: tuple[str, str, int, float]) -> dict:
    """One (task, method, seed, lr) record from a worker's state (`study.cells.worker_state`); the
    task's training batches are built once per worker, and only for a record the cache lacks."""
    task = job[0]
    return cached_online_cell(state["base"], state["tok"], state["params"], *job[:3],
                              batches=lambda: task_batches(state, task), lr=job[3])


# --------------------------------------------------------------------------- learning rates
def tuned_methods(params) -> list[str]:
    """The methods whose lr is chosen among several candidates (online.lr_grid, > 1 entry)."""
    o = params.online
    return [m for m in o.methods if len(o.lr_grid.get(m, ())) > 1]


def fixed_lr(params, method: str) -> float:
    """The lr of an untuned method: its single lr_grid entry, else allocation.lr."""
    grid = params.online.lr_grid.get(method, ())
    if len(grid) > 1:
        raise ValueError(f"method: {method!r} has {len(grid)} candidate lrs (online.lr_grid): its lr is chosen "
                         "by lr_selection")
    return float(grid[0]) if grid else params.allocation.lr


def tuning_jobs(params) -> list[tuple[str, str, int, float]]:
    """(task, method, online.tuning_seed, lr) for every tuned method's candidate lr on every task."""
    o = params.online
    return [(t, m, int(o.tuning_seed), float(lr)) for t in o.tasks for m in tuned_methods(params)
            for lr in o.lr_grid[m]]


def lr_selection(tuning: list[dict]) -> dict[tuple[str, str], float]:
    """Per (task, method), the candidate lr with the lowest final held-out loss on the tuning seed
    (ties: the smaller lr). The held-out loss is the validation split's, the accuracy verdicts read
    the test split; a candidate that diverged (non-finite loss) is never chosen."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in tuning:
        loss = float(r["heldout_loss"])
        if not np.isfinite(loss):
            continue
        k, cand = (r["task"], r["method"]), (loss, float(r["lr"]))
        best[k] = min(best.get(k, cand), cand)
    missing = {(r["task"], r["method"]) for r in tuning} - set(best)
    if missing:
        raise ValueError(f"tuning: no candidate lr of {sorted(missing)} reached a finite held-out loss")
    return {k: lr for k, (_, lr) in best.items()}


def lr_table(tuning: list[dict]) -> pd.DataFrame:
    """task, method, lr, final held-out loss, test accuracy and whether lr_selection chose it."""
    chosen = lr_selection(tuning)
    return pd.DataFrame([{"task": r["task"], "method": r["method"], "seed": r["seed"], "lr": r["lr"],
                          "heldout_loss": r["heldout_loss"], "accuracy": r["accuracy"],
                          "chosen": chosen[(r["task"], r["method"])] == r["lr"]} for r in tuning],
                        columns=["task", "method", "seed", "lr", "heldout_loss", "accuracy", "chosen"])


# --------------------------------------------------------------------------- running the cells
def _execute(params, base, tok, workers: int, jobs: list, then=None) -> dict:
    """Run `jobs` (task, method, seed, lr) through the cache (`study.pool.run_jobs`); `then(job, rec)`
    returns jobs that may start once `job` is done (the tuned methods' cells wait for their lr).
    {job: record}."""
    state = cell_state(params, base, tok) if workers <= 1 else None
    return run_jobs(_job, jobs, workers=max(1, workers), setup=worker_state, setup_args=(params,), state=state,
                    then=then, desc="online cells")


def online_cells(params, *, base=None, tok=None, workers: int = 1) -> list[dict]:
    """Every (task, method, seed) of the online section, in that order, through the cache, each
    with its "lr". A tuned method's candidates run first on online.tuning_seed (`tuning_jobs`),
    alongside the untuned methods' cells; its compared cells start at the lr `lr_selection` chose
    once its task's candidates are done. `workers` > 1: spawn processes of one torch thread
    (`study.cells.worker_state`). The candidates' records: `tuning_cells` (from the cache)."""
    o = params.online
    tuned = set(tuned_methods(params))
    compared = [(t, m, int(s)) for t in o.tasks for m in o.methods for s in o.seeds]
    tune = tuning_jobs(params)
    tune_set = set(tune)
    waiting = {(t, m): [c for c in compared if c[:2] == (t, m)] for t in o.tasks for m in tuned}
    n_candidates = {k: sum(1 for j in tune if j[:2] == k) for k in waiting}
    done_tuning: dict = {k: [] for k in waiting}
    start = tune + [(*c, fixed_lr(params, c[1])) for c in compared if c[1] not in tuned]
    lrs: dict = {}

    def then(job, rec):
        if job not in tune_set:
            return []
        k = job[:2]
        done_tuning[k].append(rec)
        if len(done_tuning[k]) < n_candidates[k]:
            return []
        lrs[k] = lr_selection(done_tuning[k])[k]
        return [(*c, lrs[k]) for c in waiting[k]]

    out = _execute(params, base, tok, workers, start, then)
    by_cell = {j[:3]: rec for j, rec in out.items() if j not in tune_set}
    return [by_cell[c] for c in compared]


def tuning_cells(params, *, base=None, tok=None, workers: int = 1) -> list[dict]:
    """The tuned methods' candidate-lr records (`tuning_jobs`), through the cache: after
    `online_cells` these are cache hits (no model, no batches needed); `workers` > 1 runs the
    missing ones in that many processes."""
    jobs = tuning_jobs(params)
    out = _execute(params, base, tok, workers, jobs)
    return [out[j] for j in jobs]


# --------------------------------------------------------------------------- tables
def results_table(recs: list[dict]) -> pd.DataFrame:
    """One row per record, with its per-item correctness (`items`) for the intervals."""
    keep = ("task", "method", "seed", "accuracy", "heldout_loss", "items", "steps", "final_total_rank",
            "budget_total_rank", "final_max_rank", "step0_passes", "update_passes", "penalty_pass_fraction",
            "train_seconds", "eval_seconds")
    return pd.DataFrame([{k: r[k] for k in keep} for r in recs])


def summary_table(res: pd.DataFrame) -> pd.DataFrame:
    """Per task and method: accuracy (%) and held-out loss, mean and std over seeds; final budget."""
    g = res.groupby(["task", "method"], sort=False)
    return pd.DataFrame({"accuracy_mean": g.accuracy.mean() * 100, "accuracy_std": g.accuracy.std() * 100,
                         "heldout_loss_mean": g.heldout_loss.mean(), "heldout_loss_std": g.heldout_loss.std(),
                         "final_total_rank": g.final_total_rank.max(), "n_seeds": g.seed.nunique()}).reset_index()


def online_intervals(res: pd.DataFrame, *, n_resamples: int = 4999) -> pd.DataFrame:
    """Paired 95 % intervals of COMPARISONS present in `res`, per task: accuracy in points (seeds ×
    items) and held-out loss (seeds; lower is better); no paper number (future work)."""
    return interval_frame([row for task, r in res.groupby("task", sort=False)
                           for row in accuracy_and_loss_intervals(r, task, COMPARISONS, n_resamples=n_resamples)])


def rank_table(recs: list[dict]) -> pd.DataFrame:
    """task, method, seed, step, layer, rank (per module) at every recorded schedule step."""
    return pd.DataFrame([{"task": r["task"], "method": r["method"], "seed": r["seed"], "step": t["step"],
                          "layer": k, "rank": x} for r in recs for t in r["rank_trajectory"]
                         for k, x in enumerate(t["ranks"])])


def loss_table(recs: list[dict]) -> pd.DataFrame:
    """task, method, seed, step, heldout_loss along training."""
    return pd.DataFrame([{"task": r["task"], "method": r["method"], "seed": r["seed"], "step": s, "heldout_loss": v}
                         for r in recs for s, v in zip(r["val_steps"], r["val_losses"])])


def drift_table(recs: list[dict]) -> pd.DataFrame:
    """Online MDL's updates: drift ‖q(t) − q(0)‖, regret of the step-0 ranks (integer and continuous),
    Theorem 4's bound and its ratio, passes, per task, seed and step."""
    cols = ["task", "seed", "step", "phase", "drift", "regret_ranks", "regret", "bound", "vi_bound",
            "update_passes", "passes"]
    t = pd.DataFrame([{"task": r["task"], "seed": r["seed"], **u} for r in recs if r["method"] == "online_mdl"
                      for u in r["online_trajectory"]], columns=cols)
    t["regret_over_bound"] = (t.regret / t.bound.where(t.bound > 0)).astype(float)
    return t


def overhead_table(res: pd.DataFrame) -> pd.DataFrame:
    """Per method: gradient passes beyond training's (step 0 scoring, online updates; AdaLoRA 0 plus
    its orthogonality penalty as a fraction of one pass per step), training steps, wall seconds."""
    g = res.groupby("method", sort=False)
    out = pd.DataFrame({"train_steps": g.steps.mean(), "step0_passes": g.step0_passes.mean(),
                        "update_passes": g.update_passes.mean(),
                        "penalty_pass_fraction_per_step": g.penalty_pass_fraction.mean(),
                        "train_seconds": g.train_seconds.mean()})
    out["extra_passes"] = out.step0_passes + out.update_passes
    out["extra_passes_per_step"] = out.extra_passes / out.train_steps
    return out.reset_index()


def verdict_lines(iv: pd.DataFrame, drift: pd.DataFrame | None = None, overhead: pd.DataFrame | None = None) -> list[str]:
    """One line per interval (difference, CI, MDE, verdict; lower held-out loss is better), the
    regret against Theorem 4's bound, and the overhead."""
    lines = [f"{r.task}: {r.comparison} ({r.metric}): {r.diff:+.3f} {UNIT.get(r.metric, '')}, CI [{r.ci_low:+.3f}, "
             f"{r.ci_high:+.3f}], MDE {r.mde:.3f} ({r.n_seeds} seeds x {r.n_items} items) -> {r.verdict}"
             + (" (lower is better)" if r.metric == "heldout_loss" else "") for r in iv.itertuples(index=False)]
    if drift is not None and len(drift):
        u = drift[drift.step > 0]
        over = int((u.regret > u.bound + 1e-9).sum())
        lines.append(f"online MDL: {len(u)} updates, largest drift {u.drift.max():.3g}, largest regret of the step-0 "
                     f"ranks {u.regret.max():.3g} (integer {u.regret_ranks.max():.3g}); regret above Theorem 4's bound "
                     f"in {over} of {len(u)} -> {'bound holds' if over == 0 else 'BOUND VIOLATED'}")
    if overhead is not None and len(overhead):
        lines += [f"overhead {r.method}: {r.extra_passes:.0f} extra gradient passes over {r.train_steps:.0f} steps "
                  f"({r.extra_passes_per_step:.3f} per step), penalty {r.penalty_pass_fraction_per_step:.2e} of a pass "
                  f"per step, {r.train_seconds:.1f} s training" for r in overhead.itertuples(index=False)]
    return lines


def _grid_edge(lr: float, grid) -> str:
    """The end of an lr sentence: whether the chosen `lr` sits at an edge of its candidate `grid`."""
    if len(grid) > 1 and lr == max(grid):
        return "; the largest candidate won, so a larger lr might do better still."
    if len(grid) > 1 and lr == min(grid):
        return "; the smallest candidate won, so a smaller lr might do better still."
    return "."


def meaning_lines(iv: pd.DataFrame, drift: pd.DataFrame | None = None, lrs: pd.DataFrame | None = None,
                  base_lr: float | None = None) -> list[str]:
    """Notebook 08's "What it means", read from the numbers: per task and comparison, which method
    each interval favours (accuracy: higher is better; held-out loss: lower is better) or that the
    design could not tell them apart (with its MDE: not evidence of equivalence); whether the
    held-out loss resolves what the accuracy cannot; what the drift and the regret of the step-0
    ranks say about re-solving online; the lrs `lr_selection` chose (`lr_table`), whether the choice
    sat at an edge of the grid, and which methods trained untuned at the recipe's `base_lr`."""
    out = []
    for r in iv.itertuples(index=False):
        other, base = (x.strip() for x in r.comparison.split(" - "))
        loss = r.metric == "heldout_loss"
        unit, fmt = ("nats", "{:+.3f}") if loss else ("points", "{:+.1f}")
        ci = f"{fmt.format(r.diff)} {unit} [{fmt.format(r.ci_low)}, {fmt.format(r.ci_high)}]"
        what = "held-out loss" if loss else "test accuracy"
        if r.verdict == "no resolvable difference":
            out.append(f"{r.task}, {what}: {other} and {base} cannot be told apart ({ci}); a true difference below "
                       f"the design's MDE of {r.mde:.3g} {unit} was out of its reach, so this is not evidence that "
                       "they are equal.")
        elif r.verdict in ("positive", "negative"):
            better = other if (r.verdict == "negative") == loss else base
            worse = base if better == other else other
            out.append(f"{r.task}, {what}: {better} beats {worse} ({other} − {base} = {ci}; the interval excludes 0).")
        else:
            out.append(f"{r.task}, {what}: {r.comparison} = {ci}: {r.verdict}.")
    for (task, comp), g in iv.groupby(["task", "comparison"], sort=False):
        v = dict(zip(g.metric, g.verdict))
        if v.get("accuracy_points") == "no resolvable difference" and v.get("heldout_loss") in ("positive", "negative"):
            n = int(g[g.metric == "accuracy_points"].n_items.iloc[0])
            out.append(f"{task}, {comp}: the held-out loss separates what {n} test items per seed cannot: the loss "
                       "is the finer measurement, the accuracy the one a user sees.")
    if drift is not None and len(drift):
        u = drift[drift.step > 0]
        if len(u):
            share = float((u.regret / u.bound.where(u.bound > 0)).max())
            out.append(f"The scores drift by at most {u.drift.max():.3g} (‖q(t) − q(0)‖₂) while the adapters learn; "
                       f"keeping the step-0 ranks costs at most {u.regret.max():.3g} in the program's objective, "
                       f"at worst {share:.2g} of Theorem 4's bound"
                       + (" (the bound holds at every update)." if (u.regret <= u.bound + 1e-9).all()
                          else " (the bound is VIOLATED at some update)."))
    if lrs is not None and len(lrs):
        for (task, m), g in lrs.groupby(["task", "method"], sort=False):
            lr = float(g[g.chosen].lr.iloc[0])
            out.append(f"{task}, {m} trains at lr {lr:g}, the best final held-out loss of "
                       f"{sorted(float(x) for x in g.lr)} on seed {int(g.seed.iloc[0])} (outside the compared seeds)"
                       + _grid_edge(lr, g.lr))
        tuned = sorted(set(lrs.method))
        compared = {x.strip() for c in iv.comparison for x in c.split(" - ")}
        untuned = sorted(compared - set(tuned))
        if untuned:
            out.append(f"Only {', '.join(tuned)} had its lr tuned; {', '.join(untuned)} train at the recipe's lr"
                       + (f" ({base_lr:g})" if base_lr is not None else "") + f". A difference in {', '.join(tuned)}'s "
                       "favour may come from the tuning rather than the method: tuning every method on one grid is "
                       "the fair test.")
    return out
