"""Benchmark: seconds per lm-eval task on the embedded default model (notebooks 03/04 call
`mdlcap.evaluation.lm_eval_accuracy` many times), and perplexity time.

    .venv/bin/python bench/bench_evaluation.py [--params params/tiny.yaml] [--limit N]

Writes results/bench/evaluation.csv (atomically): per task, items scored, wall seconds of one
`lm_eval_accuracy` call on that task alone (includes lm-eval's per-call set-up), and the
accuracy it returned; plus one row for all tasks in a single call and one for perplexity.
The model and data are built first if not cached (not timed).
"""
from __future__ import annotations

import argparse
import io
import sys
import time

import pandas as pd
import torch

from mdlcap.default import data as D
from mdlcap import evaluation as E
from mdlcap import files as mio
from mdlcap import models as M
from mdlcap.study import params as P


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/tiny.yaml")
    ap.add_argument("--limit", type=int, default=None, help="lm-eval limit per task")
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/evaluation.csv)")
    a = ap.parse_args(argv)
    p = P.load(a.params)
    model, tok = M.load(p, device="cpu", progress=False)
    D.ensure(p)
    tasks = list(p.data.finetune_tasks) + [t for t in p.data.zeroshot_tasks if t not in p.data.finetune_tasks]
    E.lm_eval_accuracy(model, tok, p, tasks[:1], limit=2)          # warm-up: task index, imports
    rows = []
    for t in tasks:
        t0 = time.perf_counter()
        acc = E.lm_eval_accuracy(model, tok, p, [t], limit=a.limit)[t]
        n = len(D.load_task(p, t, "test"))
        rows.append({"what": t, "items": n if a.limit is None else min(n, a.limit),
                     "seconds": time.perf_counter() - t0, "accuracy": acc})
    t0 = time.perf_counter()
    E.lm_eval_accuracy(model, tok, p, tasks, limit=a.limit)
    rows.append({"what": "all_tasks_one_call", "items": sum(r["items"] for r in rows),
                 "seconds": time.perf_counter() - t0, "accuracy": float("nan")})
    texts = D.texts(p, "heldout")
    t0 = time.perf_counter()
    ppl = E.perplexity(model, tok, texts, seq_len=p.data.calibration_seq_len)
    rows.append({"what": "perplexity_heldout", "items": len(texts), "seconds": time.perf_counter() - t0,
                 "accuracy": float("nan"), "perplexity": ppl})
    df = pd.DataFrame(rows)
    df["params"] = a.params
    df["torch_threads"] = torch.get_num_threads()
    out = a.out or mio.project_root() / "results" / "bench" / "evaluation.csv"
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    mio.atomic_write_text(out, buf.getvalue())
    print(df.to_string(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
