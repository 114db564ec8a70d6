"""Independent jobs in worker processes on one machine: the one pool every study's cells run in
(notebook 03's and 07's fine-tuning cells, notebook 07's layer-alone ψ curves, notebook 08's
online cells).

    out = run_jobs(fn, jobs, workers=2, setup=load_state, setup_args=(params,), state=local)
    # {job: fn(state, job)}; state = setup(*setup_args) once per worker, `local` in this process

`fn(state, job)` computes one job from a worker's state (a dict: the model loaded once, batches
built once per task, ...); both `fn` and `setup` are module-level functions, so a spawned process
can import them. `then(job, result)` may return further jobs that start once `job` is done
(notebook 08's compared cells wait for their tuned lr).

Each worker runs one torch thread with tqdm off, so two workers use two cores and a job's result
does not depend on which worker ran it or on how many there were (every study job is also one
entry of the one cache, computed from its own seed).

Why not accelerate / torchrun: those split ONE run over processes (DDP, the 7B path:
`python -m mdlcap.study.launch`); here the jobs are independent runs, so the parallelism is over
jobs: `concurrent.futures.ProcessPoolExecutor` with the "spawn" start method (no torch state
shared with the parent). A spawn pool sends tensors through shared memory, so a `setup` that
receives a model and modifies it in place must deep-copy it first (`psi_calibration`'s does).
"""
from __future__ import annotations

import os
from typing import Callable, Hashable, Iterable, Sequence

_STATE: dict = {}


def check_workers(workers) -> int:
    """`workers` if it is an integer >= 1, else ValueError naming the argument and the rule."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be an integer >= 1, got {workers!r}")
    return workers


def _init(setup: Callable[..., dict], setup_args: tuple, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    _STATE.clear()
    _STATE.update(setup(*setup_args))


def _call(fn: Callable[[dict, Hashable], object], job: Hashable):
    return fn(_STATE, job)


def run_jobs(fn: Callable[[dict, Hashable], object], jobs: Sequence[Hashable], *, workers: int = 1,
             setup: Callable[..., dict] | None = None, setup_args: tuple = (), state: dict | None = None,
             then: Callable[[Hashable, object], Iterable[Hashable]] | None = None, desc: str | None = None,
             progress: bool = True) -> dict:
    """{job: fn(state, job)} for every job and every job `then` adds.

    workers = 1: in this process on `state` (required). workers > 1: that many
    spawn processes of one torch thread, each starting from `setup(*setup_args)` (required). A tqdm
    bar titled `desc` counts finished jobs (none if desc is None or progress is off)."""
    from tqdm.auto import tqdm

    check_workers(workers)
    more: Callable = then or (lambda job, result: ())
    # disable only when asked: an explicit disable=False would override TQDM_DISABLE (make all, tests)
    bar = tqdm(total=len(jobs), desc=desc, **({"disable": True} if desc is None or not progress else {}))
    out: dict = {}
    if workers == 1:
        if state is None:
            raise ValueError("state: the in-process path (workers = 1) needs this process's state")
        queue = list(jobs)
        while queue:
            job = queue.pop(0)
            out[job] = fn(state, job)
            added = list(more(job, out[job]))
            bar.total += len(added)
            queue += added
            bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if setup is None:
            raise ValueError("setup: the worker processes (workers > 1) need a setup function")
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                 initargs=(setup, tuple(setup_args), 1)) as pool:
            running = {pool.submit(_call, fn, j): j for j in jobs}
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    job = running.pop(f)
                    out[job] = f.result()
                    added = list(more(job, out[job]))
                    bar.total += len(added)
                    running.update({pool.submit(_call, fn, k): k for k in added})
                    bar.update(1)
    bar.close()
    return out
