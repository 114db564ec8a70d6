"""Fine-tuning cells in worker processes: notebook 03's (task, method, seed) grid, and any other
list of cells, spread over `run.workers` processes on one machine.

    records = run_cells(params, jobs, workers=2)      # jobs: [Job(task, seed, counts=... | ranks=...)]
    Job(task, seed, counts=..., prune=("wanda", ratios))   # fine-tune a pruned copy of the base (notebook 07)

Each cell is `mdlcap.interventions.finetune.cached_cell`: one entry of the one cache, computed in
isolation from its own seed (adapter init, batch order) on one torch thread, so its result does
not depend on which worker ran it, in which order, or how many workers there were; an
interrupted run resumes from the cells already written. Jobs with the same cache key (methods
that give identical counts) are run once.

Why not accelerate / torchrun: those split ONE training run over processes (DDP, the 7B path:
`python -m mdlcap.study.launch`); here the cells are independent runs, so the parallelism is
over cells: `concurrent.futures.ProcessPoolExecutor` with the "spawn" start method (no torch
state shared with the parent), each worker loading the base model once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from mdlcap.interventions import finetune as ft


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


_WORKER: dict = {}


def _init_worker(params, threads: int) -> None:
    import torch

    from mdlcap import models
    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    base, tok = models.load(params, device="cpu")
    _WORKER.update(params=params, base=base, tok=tok, batches={}, bases={})


def init_worker(params, threads: int) -> None:
    """A worker process's initializer (spawn pools of other cell kinds, e.g. notebook 08's): one
    torch thread count, the base model and tokenizer loaded once into `worker_state()`."""
    _init_worker(params, threads)


def worker_state() -> dict:
    """This worker process's params, base, tok and per-task batch cache (set by `init_worker`)."""
    return _WORKER


def _run(job: Job, params, base, tok, batches: dict, bases: dict, accelerator=None) -> dict:
    """One job through `finetune.cached_cell`, its task's training batches built once in `batches`
    and its pruned base (if any) in `bases`, which holds one pruned copy at a time (a 7B model
    has room for one); a cached cell needs neither."""
    counts = None if job.counts is None else list(job.counts)
    ranks = None if job.ranks is None else list(job.ranks)
    if job.task not in batches:
        batches[job.task] = ft.task_train_batches(params, tok, job.task)
    model = base
    if job.prune is not None and not ft.cell_cached(params, job.task, job.seed, counts, ranks, job.base_spec(params)):
        if job.prune not in bases:
            bases.clear()
            bases[job.prune] = pruned_base(params, base, tok, job.prune)
        model = bases[job.prune]
    return ft.cached_cell(model, tok, params, job.task, seed=job.seed, counts=counts, ranks=ranks,
                          accelerator=accelerator, batches=batches[job.task], base_spec=job.base_spec(params))


def _run_job(job: Job) -> dict:
    w = _WORKER
    return _run(job, w["params"], w["base"], w["tok"], w["batches"], w["bases"])


def run_cells(params, jobs: Sequence[Job], *, workers: int = 1, base=None, tok=None, accelerator=None,
              desc: str | None = "fine-tune cells") -> dict[str, dict]:
    """{cache key: record} for every job (each distinct key run once), through the cache.

    workers = 1 runs in this process on `base`/`tok` (and `accelerator`: the GPU / multi-process
    path); workers > 1 starts that many CPU processes of one torch thread each. A tqdm bar titled
    `desc` counts finished cells (none if None)."""
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    unique: dict[str, Job] = {}
    for j in jobs:
        unique.setdefault(j.key(params), j)
    bar = None if desc is None else tqdm(total=len(unique), desc=desc)
    out: dict[str, dict] = {}
    if workers == 1 or len(unique) <= 1:
        if base is None or tok is None:
            raise ValueError("base/tok: the in-process path (workers = 1) needs the base model and tokenizer")
        batches: dict[str, list] = {}
        bases: dict = {}
        for key, j in unique.items():
            out[key] = _run(j, params, base, tok, batches, bases, accelerator)
            if bar is not None:
                bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(params, 1)) as pool:
            futures = {pool.submit(_run_job, j): key for key, j in unique.items()}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return out
