"""Multi-GPU entry point: fill notebook 03's fine-tuning cells from a launcher, e.g. on 4 GPUs
(DDP, one model copy per GPU):

    accelerate launch --num_processes 4 --mixed_precision bf16 -m mdlcap.study.launch \\
        params/mistral-7b.yaml [--tasks cola mrpc] [--methods mdl_layerif_pos layerif_pos] [--seeds 0]

Each (task, method, seed) cell is trained by all processes together (DDP through accelerate,
every process on its share of the batches) and evaluated on the main process; the record goes
to the one cache (`mdlcap.cache`, namespace "finetune"), where notebooks 03 and 05 then find it.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mdlcap import files, models
from mdlcap.interventions.allocation import layer_alphas
from mdlcap.interventions.finetune import allocations_for, cached_cell, make_accelerator, task_train_batches
from mdlcap.scores.table import load_scores
from mdlcap.study.params import load
from mdlcap.study.run import resolve_device


def main(argv: Sequence[str] | None = None) -> None:
    """Fine-tune (and cache) notebook 03's cells for the given params under the current launch."""
    ap = argparse.ArgumentParser(prog="python -m mdlcap.study.launch", description=main.__doc__)
    ap.add_argument("params_path")
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--methods", nargs="*")
    ap.add_argument("--seeds", nargs="*", type=int)
    ap.add_argument("--results", default=None, help="results root, where scores.csv is read (default: <project>/results)")
    args = ap.parse_args(argv)
    params = load(args.params_path)

    root = Path(args.results) if args.results else files.project_root() / "results"
    run_root = root / params.run.name
    accelerator = make_accelerator(resolve_device(params),
                                   mixed_precision="bf16" if params.model.dtype == "bfloat16" else "no")
    model, tok = models.load(params, device=str(accelerator.device))
    scores = load_scores(run_root)
    L = len(models.decoder_layers(model))
    alphas = layer_alphas(model) if "alphalora" in params.allocation.methods else None
    for task in args.tasks or params.allocation.tasks or params.data.finetune_tasks:
        allocs = allocations_for(params, scores, L, task, alphas=alphas)
        batches = task_train_batches(params, tok, task)
        for method in args.methods or list(allocs):
            if method not in allocs:
                raise SystemExit(f"--methods: '{method}' has no allocation for task '{task}' (scores missing?)")
            for seed in args.seeds if args.seeds is not None else params.allocation.seeds:
                rec = cached_cell(model, tok, params, task, seed=seed, counts=allocs[method],
                                  accelerator=accelerator, batches=batches)
                if accelerator.is_main_process:
                    print(f"{task} {method} seed {seed}: accuracy {rec['accuracy']:.4f}"
                          f"{' (cached)' if rec['cached'] else ''}", flush=True)


if __name__ == "__main__":
    main()
