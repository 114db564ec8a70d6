"""mdlcap.study.cells: independent fine-tuning cells in worker processes, each distinct cache key
run once, and a result that does not depend on the number of workers."""
from __future__ import annotations

import pytest


def test_jobs_with_one_key_run_once_and_bad_workers_are_refused(monkeypatch):
    from mdlcap.interventions import finetune as ft
    from mdlcap.study import cells, params

    p = params.load("params/mistral-7b.yaml")          # hub id: resolving it builds nothing
    calls = []
    monkeypatch.setattr(ft, "task_train_batches", lambda prm, tok, task: [])
    monkeypatch.setattr(ft, "cached_cell", lambda b, t, prm, task, **kw: calls.append((task, kw["seed"])) or
                        {"task": task, "seed": kw["seed"], "counts": kw["counts"]})
    jobs = [cells.Job("cola", 0, counts=(1, 2)), cells.Job("cola", 0, counts=(1, 2)), cells.Job("cola", 1, counts=(1, 2))]
    out = cells.run_cells(p, jobs, workers=1, base=object(), tok=object(), desc=None)
    assert len(out) == 2 and sorted(calls) == [("cola", 0), ("cola", 1)]
    assert out[jobs[2].key(p)]["seed"] == 1
    with pytest.raises(ValueError, match="workers"):
        cells.run_cells(p, jobs, workers=0, desc=None)
    with pytest.raises(ValueError, match="base/tok"):
        cells.run_cells(p, jobs, workers=1, desc=None)


@pytest.mark.notebook
@pytest.mark.timeout(600)
def test_two_workers_give_the_cells_one_worker_gives(smoke_prepared):
    """The same two smoke cells, trained in two spawned processes and in this one (each from an
    empty cache entry): identical per-step losses and per-item correctness."""
    import dataclasses

    import torch

    from mdlcap import cache, models
    from mdlcap.interventions import finetune as ft
    from mdlcap.study import cells, params

    p = params.load("params/smoke.yaml")
    p = dataclasses.replace(p, allocation=dataclasses.replace(p.allocation, lr=1.234e-3))   # keys of this test only
    base, tok = models.load(p, device="cpu")
    L = p.model.architecture.num_hidden_layers
    jobs = [cells.Job("csqa", 0, counts=tuple([2] * L)), cells.Job("csqa", 1, counts=tuple([1] * (L - 1) + [3]))]

    def clear():
        for j in jobs:
            cache.path("finetune", ft.cell_spec(p, j.task, j.seed, list(j.counts)), prefix=f"{j.task}_").unlink(missing_ok=True)

    clear()
    two = cells.run_cells(p, jobs, workers=2, desc=None)
    clear()
    torch.set_num_threads(1)
    one = cells.run_cells(p, jobs, workers=1, base=base, tok=tok, desc=None)
    clear()
    for k in one:
        assert not one[k]["cached"] and not two[k]["cached"]
        assert one[k]["losses"] == two[k]["losses"] and one[k]["items"] == two[k]["items"]


def test_a_pruned_job_has_its_own_key_prunes_a_copy_once_and_skips_pruning_when_cached(monkeypatch):
    from mdlcap.interventions import finetune as ft
    from mdlcap.study import cells, params

    p = params.load("params/mistral-7b.yaml")
    plain = cells.Job("cola", 0, counts=(1, 2))
    pruned = cells.Job("cola", 0, counts=(1, 2), prune=("wanda", (0.5, 0.5)))
    other = cells.Job("cola", 0, counts=(1, 2), prune=("wanda", (0.4, 0.6)))
    assert plain.base_spec(p) is None and plain.key(p) == ft.cell_key(p, "cola", 0, counts=(1, 2))
    assert len({plain.key(p), pruned.key(p), other.key(p)}) == 3            # what was done to the base counts
    assert pruned.base_spec(p)["ratios"] == [0.5, 0.5] and pruned.base_spec(p)["pruner"] == "wanda"
    made, seen = [], []
    monkeypatch.setattr(ft, "task_train_batches", lambda prm, tok, task: [])
    monkeypatch.setattr(cells, "pruned_base", lambda prm, base, tok, prune: made.append(prune) or ("pruned", prune))
    monkeypatch.setattr(ft, "cell_cached", lambda *a, **kw: False)
    monkeypatch.setattr(ft, "cached_cell", lambda b, t, prm, task, **kw: seen.append((b, kw["base_spec"])) or {"seed": kw["seed"]})
    base = object()
    jobs = [plain, pruned, cells.Job("cola", 1, counts=(1, 2), prune=("wanda", (0.5, 0.5))), other]
    cells.run_cells(p, jobs, workers=1, base=base, tok=object(), desc=None)
    assert made == [("wanda", (0.5, 0.5)), ("wanda", (0.4, 0.6))]            # one pruned copy per ratio vector
    assert seen[0] == (base, None) and seen[1][0] == ("pruned", ("wanda", (0.5, 0.5))) and seen[2][0] is seen[1][0]
    made.clear()
    monkeypatch.setattr(ft, "cell_cached", lambda *a, **kw: True)
    cells.run_cells(p, jobs[1:2], workers=1, base=base, tok=object(), desc=None)
    assert made == []                                                          # a cached cell is not pruned
