"""Peak memory and time of `layer_gains` per scoring method as decoder depth grows (issue 14, item 8):
with one block per group (`group_size=1`, METHOD.md §1 streaming) the peak stays flat in depth; with
all blocks in one group (the default call) it grows by one block's working memory per layer.

Model: randomly initialised Mistral-type decoders (`mdlcap.models.random_model`) with Mistral-7B's
layer shapes by default (hidden 4096, MLP 14336, 32 query / 8 key-value heads), float32, a
vocabulary of 4096 (not a layer shape; 32000 only adds build time and resident weights; --vocab),
at reduced depth (1, 2, 3 layers), on CPU; `--hidden` scales the width at the 7B ratios.
`--blocks attn` scores each layer's attention block only (q/k/v/o + input norm): a 7B layer's full
K-FAC needs three eigendecompositions of 14336 × 14336 factors (about 2 minutes each on 2 cores),
so the default K-FAC/EK-FAC runs use the attention blocks (factors ≤ 4096²), which keeps one
invocation under 10 minutes; `--blocks layer --hidden 1024` runs full layers at the 7B ratios.

Peak memory: `mdlcap.study.measure.measure`, the resident set size sampled every 2 ms above its
level before the call (the model and the batches are already resident), each (method, depth,
grouping) in a fresh subprocess so no freed memory of one run hides the next one's peak, with
glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=1 MiB) so that every large tensor is its own
mapping, returned when freed: the resident set then tracks live memory. Why RSS and not
tracemalloc: tracemalloc does not see torch's CPU allocator; torch's profiler memory timeline
needs stacks and shapes recorded (slow at this size). On a GPU (`--device cuda`) measure reports
CUDA max_memory_allocated instead. `est_group_MiB` is `scores.streaming.working_bytes` for the
largest group: the planner's estimate beside the measurement.

Slope: per (method, grouping), the least-squares fit of peak memory on depth (MiB per layer).

    nice -n 19 .venv/bin/python bench/bench_scoring_memory.py --methods grad_norm diag_fisher cg
    nice -n 19 .venv/bin/python bench/bench_scoring_memory.py --blocks attn --methods kfac ekfac --out results/bench/scoring_memory_kfac.json
    .venv/bin/python bench/bench_scoring_memory.py --hidden 32 --depths 1 --seqs 1 --seq-len 8 --inprocess
Results go to results/bench/ (git-ignored): JSON rows and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("grad_norm", "diag_fisher", "cg", "kfac", "ekfac")
GROUPINGS = ("one", "all")        # one block per group (streaming) | all blocks in one group (default call)


def config(hidden: int, depth: int, vocab: int) -> dict:
    """MistralConfig kwargs with Mistral-7B's ratios at width `hidden` (4096: the 7B shapes)."""
    heads = max(1, hidden // 128)
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 14336 // 4096,
                num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                max_position_embeddings=4096, tie_word_embeddings=False)


def blocks_of(model, kind: str):
    """None (one block per decoder layer) or {layers.i.attn: that layer's attention + input norm}."""
    if kind == "layer":
        return None
    from mdlcap.models import decoder_layers
    return {f"layers.{i}.attn": list(layer.self_attn.parameters()) + list(layer.input_layernorm.parameters())
            for i, layer in enumerate(decoder_layers(model))}


def run_one(method: str, depth: int, grouping: str, args) -> dict:
    """Build the model and the batches, then measure one layer_gains call."""
    import torch

    from mdlcap.models import random_model
    from mdlcap.scores.blocks import resolve_blocks
    from mdlcap.scores.registry import layer_gains
    from mdlcap.scores.streaming import block_groups, working_bytes
    from mdlcap.study.measure import measure

    torch.set_num_threads(args.threads)
    cfg = config(args.hidden, depth, args.vocab)
    model = random_model(seed=0, **cfg).to(args.device)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, args.vocab, (args.seqs, args.seq_len), generator=g).to(args.device)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    blocks = blocks_of(model, args.blocks)
    kw = dict(method=method, damping=1e-3, blocks=blocks, progress=False, max_iter=args.cg_iters)
    if grouping == "one":
        kw["group_size"] = 1
    groups = block_groups(model, resolve_blocks(model, blocks), method, batches, group_size=kw.get("group_size"))
    est = max(working_bytes(model, [p for ps in gr.values() for p in ps], method, n_batches=len(batches),
                            batch_size=args.seqs) for gr in groups)
    gains, seconds, peak = measure(lambda: layer_gains(model, batches, **kw))
    return {"method": method, "grouping": grouping, "blocks": args.blocks, "depth": depth,
            "n_groups": next(iter(gains.diagnostics.values()))["n_groups"], "seconds": seconds,
            "peak_bytes": peak, "est_group_bytes": est, "n_params": sum(p.numel() for p in model.parameters()),
            "hidden": args.hidden, "intermediate": cfg["intermediate_size"],
            "tokens": args.batches * args.seqs * args.seq_len, "finite": all(v == v for v in gains.values())}


def slopes(rows: list[dict]) -> dict[str, float]:
    """Per "method/grouping": least-squares slope of peak bytes on depth (bytes per decoder layer)."""
    out = {}
    for key in sorted({f"{r['method']}/{r['grouping']}" for r in rows}):
        pts = [(r["depth"], r["peak_bytes"]) for r in rows if f"{r['method']}/{r['grouping']}" == key]
        if len({x for x, _ in pts}) < 2:
            continue
        xm = sum(x for x, _ in pts) / len(pts)
        ym = sum(y for _, y in pts) / len(pts)
        out[key] = sum((x - xm) * (y - ym) for x, y in pts) / sum((x - xm) ** 2 for x, _ in pts)
    return out


def markdown(rows: list[dict], slope: dict[str, float]) -> str:
    lines = ["| method | blocks | grouping | depth | groups | peak MiB | est. group MiB | seconds |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['blocks']} | {r['grouping']} | {r['depth']} | {r['n_groups']} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {r['est_group_bytes'] / 2**20:.0f} | {r['seconds']:.1f} |")
    lines += ["", "| method/grouping | MiB per layer (slope) |", "|---|---:|"]
    lines += [f"| {m} | {s / 2**20:.0f} |" for m, s in slope.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--methods", nargs="+", default=["grad_norm", "diag_fisher", "cg"], choices=METHODS)
    ap.add_argument("--groupings", nargs="+", default=list(GROUPINGS), choices=GROUPINGS)
    ap.add_argument("--blocks", default="layer", choices=("layer", "attn"))
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--seqs", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--cg-iters", type=int, default=3, help="CG iterations per block (memory, not convergence)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inprocess", action="store_true", help="no subprocess per run (peaks less clean)")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "DEPTH", "GROUPING"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "scoring_memory.json")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.one[2], args)))
        return {}
    rows, result = [], {}
    passthrough = list(argv if argv is not None else sys.argv[1:])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    for depth in args.depths:
        for method in args.methods:
            for grouping in args.groupings:
                if args.inprocess:
                    rows.append(run_one(method, depth, grouping, args))
                else:
                    res = subprocess.run([sys.executable, __file__, *passthrough, "--one", method, str(depth), grouping],
                                         capture_output=True, text=True, env=env)
                    if res.returncode != 0:
                        raise RuntimeError(f"{method} depth {depth} {grouping}: {res.stderr[-2000:]}")
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{method:12s} {grouping:4s} depth {depth}: {r['peak_bytes'] / 2**20:8.0f} MiB "
                      f"(est. {r['est_group_bytes'] / 2**20:6.0f}) {r['seconds']:8.1f} s", flush=True)
                result = write(rows, args.out)            # after every row: a stopped run keeps what it measured
    return result


def write(rows: list[dict], out: Path) -> dict:
    result = {"rows": rows, "slope_bytes_per_layer": slopes(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, result["slope_bytes_per_layer"]))
    return result


if __name__ == "__main__":
    main()
