"""Cost of each layer-scoring method as a multiple of one gradient pass (forward + backward over
the same batches, w.r.t. all decoder-layer parameters), with peak extra memory.

Model: a randomly initialised Mistral with the tiny (default-run) shapes — cost does not depend
on the weights. Data: random token batches with the loss on the last quarter of each sequence.
Target (issue 4): diag_fisher and kfac <= 3 gradient passes.

    .venv/bin/python bench/bench_scoring.py            -> results/bench/scoring.csv
"""
from __future__ import annotations

import io
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdlcap.scores import influence as I  # noqa: E402
from mdlcap import files as mio  # noqa: E402
from mdlcap.study import params as P  # noqa: E402
from mdlcap.scores.registry import layer_gains  # noqa: E402
from mdlcap.study.curvature_scores import gradient_pass  # noqa: E402
from mdlcap.study.measure import measure  # noqa: E402
from mdlcap.models import random_model  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "3"))


def batches(n, B, T, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (B, T), generator=g)
        lab = ids.clone()
        lab[:, : 3 * T // 4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab})
    return out


def timeit(fn):
    fn()                                            # warm-up
    runs = [measure(fn) for _ in range(REPS)]
    return statistics.median(r[1] for r in runs), max(r[2] for r in runs)


def main():
    p = P.load(ROOT / "params" / "tiny.yaml")
    a, sp = p.model.architecture, p.scoring
    model = random_model(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                         num_hidden_layers=a.num_hidden_layers, num_attention_heads=a.num_attention_heads,
                         num_key_value_heads=a.num_key_value_heads, max_position_embeddings=a.max_position_embeddings)
    rows = []
    shapes = [(sp.n_batches, sp.batch_size, sp.max_len), (2, 8, 128)]
    for n, B, T in shapes:
        bs = batches(n, B, T, a.vocab_size)
        unit, unit_mem = timeit(lambda: gradient_pass(model, bs))
        cases = {m: (lambda m=m: layer_gains(model, bs, method=m, damping=sp.damping, progress=False))
                 for m in ("grad_norm", "diag_fisher", "kfac", "ekfac")}
        cg_bs = bs[: sp.cg_batches]
        for curv in ("ggn", "hessian"):
            cases[f"cg_{curv}"] = (lambda curv=curv: layer_gains(model, cg_bs, method="cg", curvature=curv,
                                                                damping=sp.damping, max_iter=sp.cg_max_iter,
                                                                tol=0.0, progress=False))
        n_if = min(sp.layerif_train, n * B)
        cases["layerif"] = lambda: I.layer_influence(model, bs, bs[:1], progress=False,
                                                     damping_scale=sp.layerif_damping_scale)
        for name, fn in cases.items():
            t, mem = timeit(fn) if not name.startswith("cg_") and name != "layerif" else measure(fn)[1:]
            data_unit = unit
            if name.startswith("cg_"):
                data_unit = timeit(lambda: gradient_pass(model, cg_bs))[0]
            rows.append({"method": name, "n_batches": len(cg_bs) if name.startswith("cg_") else n, "batch_size": B,
                         "seq_len": T, "cg_max_iter": sp.cg_max_iter if name.startswith("cg_") else None,
                         "layerif_samples": n_if if name == "layerif" else None,
                         "seconds": t, "grad_pass_seconds": data_unit, "grad_passes": t / data_unit,
                         "peak_MB": mem / 2**20, "grad_pass_peak_MB": unit_mem / 2**20,
                         "threads": torch.get_num_threads()})
            print(f"B={B} T={T} {name:12s} {t:8.3f}s  {t / data_unit:6.2f} grad passes  peak {mem / 2**20:7.1f} MB",
                  flush=True)
    df = pd.DataFrame(rows)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    out = mio.atomic_write_text(ROOT / "results" / "bench" / "scoring.csv", buf.getvalue())
    print(f"wrote {out}")
    for m in ("diag_fisher", "kfac"):
        r = df[df["method"] == m]["grad_passes"]
        print(f"{m}: {', '.join(f'{x:.2f}' for x in r)} gradient passes (target <= 3)")


if __name__ == "__main__":
    main()
