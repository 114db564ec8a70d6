"""Time per pruner per decoder layer -> results/bench/pruning.csv.

Default: a random model with the tiny run's architecture (params/tiny.yaml) and its calibration
size (n_calibration sequences of calibration_seq_len tokens), on CPU. `--shape mistral-7b` builds
randomly initialised layers with true Mistral-7B shapes (hidden 4096, MLP 14336, 32 heads over 8
KV heads, 128 calibration sequences of 2048 tokens, bf16) for a GPU: the reference numbers are
Wanda minutes, SparseGPT about 10 minutes per 7B model on one A100.

    .venv/bin/python bench/bench_pruning.py [--shape tiny|mistral-7b] [--layers N] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdlcap import files as mio  # noqa: E402
from mdlcap.study import params as mparams  # noqa: E402
from mdlcap.interventions import pruning as P  # noqa: E402
from mdlcap.models import random_model  # noqa: E402


def shapes(name: str, layers: int | None):
    if name == "tiny":
        p = mparams.load(ROOT / "params/tiny.yaml")
        a = p.model.architecture
        cfg = dict(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                   num_hidden_layers=layers or a.num_hidden_layers, num_attention_heads=a.num_attention_heads,
                   num_key_value_heads=a.num_key_value_heads, max_position_embeddings=a.max_position_embeddings)
        return cfg, p.data.n_calibration, p.data.calibration_seq_len, torch.float32
    if name == "mistral-7b":
        cfg = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers or 2,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)
        return cfg, 128, 2048, torch.bfloat16
    raise ValueError(f"--shape: must be tiny or mistral-7b, got {name!r}")


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "results/bench/pruning.csv"))
    args = ap.parse_args(argv)

    cfg, n_seq, seq_len, dtype = shapes(args.shape, args.layers)
    if args.device == "cpu":
        dtype = torch.float32
    model = random_model(seed=0, **cfg).to(device=args.device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, cfg["vocab_size"], (min(args.batch_size, n_seq - i), seq_len), generator=g)}
               for i in range(0, n_seq, args.batch_size)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for pruner in P.PRUNERS:
        model.load_state_dict(state)
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        recs = P.prune_model(model, [0.5] * cfg["num_hidden_layers"], pruner, batches, progress=False)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
        for r in recs:
            rows.append({"shape": args.shape, "device": args.device, "dtype": str(dtype).replace("torch.", ""),
                         "pruner": pruner, "layer": r["layer"], "prune_seconds": r["seconds"],
                         "wall_seconds_per_layer": wall / len(recs), "measured_sparsity": r["measured"],
                         "calib_tokens": n_seq * seq_len, "hidden_size": cfg["hidden_size"],
                         "intermediate_size": cfg["intermediate_size"], "peak_gib": peak,
                         "threads": torch.get_num_threads()})
        print(f"{pruner:10s} {wall:8.2f} s for {len(recs)} layers "
              f"({wall / len(recs):.3f} s/layer incl. calibration forward)", flush=True)
    df = pd.DataFrame(rows)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    mio.atomic_write_text(args.out, buf.getvalue())
    print(f"wrote {args.out}")
    return df


if __name__ == "__main__":
    main()
