"""Peak memory and time of `layer_gains` per scoring method as decoder depth grows (issue 14).

Randomly initialised Mistral-type decoders with the 7B model's layer ratios (hidden : intermediate
= 4096 : 14336, 4 query heads per key/value head, vocabulary 32000) at a reduced width (default
hidden 1024, so a 4-layer model fits a 24 GB CPU machine), float32, depth 1, 2, 4. Each
(method, depth) runs in a fresh subprocess, so that freed memory of one run cannot hide the peak
of the next; peak memory is `mdlcap.study.measure.measure` (resident set size above the level
before the call on CPU, CUDA max_memory_allocated on a GPU). The slope per layer is the
least-squares fit of peak memory on depth: what each decoder layer adds.

K-FAC holds the factors of every Linear module at once (G: out², A: in² per distinct input, plus
a weight-sized S for EK-FAC only), so its memory grows linearly with depth; true streaming (one
layer's factors at a time) is issue 14's later work.

    nice -n 19 .venv/bin/python bench/bench_scoring_memory.py            # -> results/bench/scoring_memory.json/.md
    .venv/bin/python bench/bench_scoring_memory.py --hidden 32 --depths 1 --seqs 1 --seq-len 8 --inprocess
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("grad_norm", "diag_fisher", "kfac", "ekfac")


def config(hidden: int, depth: int, vocab: int) -> dict:
    """MistralConfig kwargs with Mistral-7B's ratios at width `hidden`."""
    heads = max(1, hidden // 128)
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 14336 // 4096,
                num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                max_position_embeddings=4096, tie_word_embeddings=False)


def run_one(method: str, depth: int, args) -> dict:
    """Build the model and the batches, then measure one layer_gains call."""
    import torch

    from mdlcap.models import random_model
    from mdlcap.scores.registry import layer_gains
    from mdlcap.study.measure import measure

    torch.manual_seed(0)
    cfg = config(args.hidden, depth, args.vocab)
    model = random_model(seed=0, **cfg).to(args.device)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, args.vocab, (args.seqs, args.seq_len), generator=g).to(args.device)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    n_params = sum(p.numel() for p in model.parameters())
    gains, seconds, peak = measure(lambda: layer_gains(model, batches, method=method, damping=1e-3, progress=False))
    return {"method": method, "depth": depth, "seconds": seconds, "peak_bytes": peak, "n_params": n_params,
            "hidden": args.hidden, "intermediate": cfg["intermediate_size"], "tokens": args.batches * args.seqs * args.seq_len,
            "finite": all(v == v for v in gains.values())}


def slopes(rows: list[dict]) -> dict[str, float]:
    """Per method: least-squares slope of peak bytes on depth (bytes per decoder layer)."""
    out = {}
    for m in sorted({r["method"] for r in rows}):
        pts = [(r["depth"], r["peak_bytes"]) for r in rows if r["method"] == m]
        if len(pts) < 2:
            continue
        xm = sum(x for x, _ in pts) / len(pts)
        ym = sum(y for _, y in pts) / len(pts)
        out[m] = sum((x - xm) * (y - ym) for x, y in pts) / sum((x - xm) ** 2 for x, _ in pts)
    return out


def markdown(rows: list[dict], slope: dict[str, float]) -> str:
    lines = ["| method | depth | peak MiB | seconds |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['depth']} | {r['peak_bytes'] / 2**20:.0f} | {r['seconds']:.2f} |")
    lines += ["", "| method | MiB per layer (slope) |", "|---|---:|"]
    lines += [f"| {m} | {s / 2**20:.0f} |" for m, s in slope.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inprocess", action="store_true", help="no subprocess per run (peaks less clean)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "DEPTH"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "scoring_memory.json")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return {}
    rows = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for depth in args.depths:
        for method in args.methods:
            if args.inprocess:
                rows.append(run_one(method, depth, args))
            else:
                res = subprocess.run([sys.executable, __file__, *passthrough, "--one", method, str(depth)],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{method:12s} depth {depth}: {r['peak_bytes'] / 2**20:8.0f} MiB {r['seconds']:8.2f} s", flush=True)
    result = {"rows": rows, "slope_bytes_per_layer": slopes(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, result["slope_bytes_per_layer"]))
    return result


if __name__ == "__main__":
    main()
