"""Fine-tuning cells in worker processes: notebook 03's (task, method, seed) grid, and any other
list of cells, spread over `run.workers` processes on one machine.

    records = run_cells(params, jobs, workers=2)      # jobs: [Job(task, seed, counts=... | ranks=...)]
    Job(task, seed, counts=..., prune=("wanda", ratios))   # fine-tune a pruned copy of the base (notebook 07)

Each cell is `mdlcap.interventions.finetune.cached_cell`: one entry of the one cache, computed in
isolation from its own seed (adapter init, batch order) on one torch thread, so its result does
not depend on which worker ran it, in which order, or how many workers there were; an
interrupted run resumes from the cells already written. Jobs with the same cache key (methods
that give identical counts) are run once.

The processes are `mdlcap.study.pool.run_jobs`' (which says why not accelerate / torchrun), each
worker loading the base model once (`worker_state`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mdlcap.interventions import finetune as ft
from mdlcap.study.pool import check_workers, run_jobs


@dataclass(frozen=True)
class Job:
    """One cell: fine-tune `task` from `seed` with LoRA-MoE `counts` (or peft LoRA `ranks`) per
    layer, on the base model or, with `prune` = (pruner, per-layer ratios), on a copy of it pruned
    with the params' calibration batches and SparseGPT settings (`pruned_base`)."""
    task: str
    seed: int
    counts: tuple[int, ...] | None = None
    ranks: tuple[int, ...] | None = None
    prune: tuple[str, tuple[float, ...]] | None = None

    def base_spec(self, params) -> dict | None:
        """What is done to the base before fine-tuning, as the cell's cache key sees it."""
        if self.prune is None:
            return None
        pp = params.pruning
        return {"pruner": self.prune[0], "ratios": [round(float(r), 9) for r in self.prune[1]],
                "calibration_sequences": pp.calibration_sequences, "blocksize": pp.sparsegpt_blocksize,
                "damp": pp.sparsegpt_damp}

    def key(self, params) -> str:
        return ft.cell_key(params, self.task, self.seed, counts=self.counts, ranks=self.ranks,
                           base_spec=self.base_spec(params))


def pruned_base(params, base, tok, prune: tuple[str, tuple[float, ...]]):
    """A copy of `base` pruned by (pruner, ratios) with notebook 04's calibration batches
    (`mdlcap.study.pruning.calibration_batches`) and the params' SparseGPT block size and damping."""
    import copy

    from mdlcap.interventions.pruning import prune_model
    from mdlcap.study.pruning import calibration_batches

    pp = params.pruning
    model = copy.deepcopy(base)
    prune_model(model, list(prune[1]), prune[0], calibration_batches(params, tok), blocksize=pp.sparsegpt_blocksize,
                damp=pp.sparsegpt_damp, progress=False)
    return model


def cell_state(params, base, tok, accelerator=None) -> dict:
    """The state every pool of cells runs on (notebook 03's and 07's here, notebook 08's online
    cells): params, the base model and tokenizer, an `accelerator` (the GPU / multi-process path,
    in-process only), and empty caches of training batches per task and of the one pruned base."""
    return {"params": params, "base": base, "tok": tok, "accelerator": accelerator, "batches": {}, "bases": {}}


def worker_state(params) -> dict:
    """A worker process's `cell_state` (`study.pool.run_jobs`' setup): the base model and
    tokenizer loaded once per worker, on the CPU."""
    from mdlcap import models

    return cell_state(params, *models.load(params, device="cpu"))


def task_batches(state: dict, task: str) -> list:
    """`task`'s training batches, built once per worker (state["batches"])."""
    if task not in state["batches"]:
        state["batches"][task] = ft.task_train_batches(state["params"], state["tok"], task)
    return state["batches"][task]


def _run(state: dict, job: Job) -> dict:
    """One job through `finetune.cached_cell`; a cell not yet cached gets its task's training
    batches (`task_batches`) and its pruned base (if any) in state["bases"], which holds one pruned
    copy at a time (a 7B model has room for one). A cached cell needs neither."""
    params, base = state["params"], state["base"]
    counts = None if job.counts is None else list(job.counts)
    ranks = None if job.ranks is None else list(job.ranks)
    if ft.cell_cached(params, job.task, job.seed, counts, ranks, job.base_spec(params)):
        model, batches = base, None
    else:
        model, batches = base, task_batches(state, job.task)
        if job.prune is not None:
            bases = state["bases"]
            if job.prune not in bases:
                bases.clear()
                bases[job.prune] = pruned_base(params, base, state["tok"], job.prune)
            model = bases[job.prune]
    return ft.cached_cell(model, state["tok"], params, job.task, seed=job.seed, counts=counts, ranks=ranks,
                          accelerator=state["accelerator"], batches=batches, base_spec=job.base_spec(params))


def run_cells(params, jobs: Sequence[Job], *, workers: int = 1, base=None, tok=None, accelerator=None,
              desc: str | None = "fine-tune cells") -> dict[str, dict]:
    """{cache key: record} for every job (each distinct key run once), through the cache.

    workers = 1 runs in this process on `base`/`tok` (and `accelerator`: the GPU / multi-process
    path); workers > 1 starts that many CPU processes of one torch thread each (`study.pool`,
    `worker_state`). A tqdm bar titled `desc` counts finished cells (none if None)."""
    check_workers(workers)
    unique: dict[str, Job] = {}
    for j in jobs:
        unique.setdefault(j.key(params), j)
    state = None
    if workers == 1 or len(unique) <= 1:
        if base is None or tok is None:
            raise ValueError("base/tok: the in-process path (workers = 1) needs the base model and tokenizer")
        state = cell_state(params, base, tok, accelerator)
    out = run_jobs(_run, list(unique.values()), workers=1 if state is not None else workers, setup=worker_state,
                   setup_args=(params,), state=state, desc=desc)
    return {key: out[j] for key, j in unique.items()}
