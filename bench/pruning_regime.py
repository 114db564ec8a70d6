"""Does a default-model recipe react to pruning as large models do? -> results/bench/pruning_regime.csv

Issue 15 asks for an embedded default in which 50% uniform magnitude pruning raises held-out
perplexity by >= 20% and the three pruners order as in the literature (magnitude worst; Wanda
and SparseGPT recover much of it). This pretrains one recipe (params/tiny.yaml with `--set`
overrides of `model.*`) into a temporary folder, outside the cache, and prunes every decoder
layer to 50% with each pruner through notebook 04's bench (`mdlcap.study.pruning.setup(...).run`:
its calibration and held-out texts, its SparseGPT settings, its perplexity and its cache).

    .venv/bin/python bench/pruning_regime.py --set model.pretrain.weight_decay=0.0 --tag wd0

One row per recipe is appended to the CSV: the overrides, dense held-out perplexity, each
pruner's perplexity and relative increase, and the pretraining wall time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdlcap.default import data  # noqa: E402
from mdlcap.default import pretrain as pre  # noqa: E402
from mdlcap.models import decoder_layers  # noqa: E402
from mdlcap.study import params as mparams  # noqa: E402
from mdlcap.study import pruning as study_pruning  # noqa: E402

PRUNERS = ("magnitude", "wanda", "sparsegpt")


def overridden(path: Path, sets: list[str]):
    """params/tiny.yaml with `a.b.c=value` overrides (value parsed as YAML), validated."""
    raw = yaml.safe_load(path.read_text())
    for s in sets:
        if "=" not in s:
            raise SystemExit(f"--set: must be key.path=value, got {s!r}")
        key, value = s.split("=", 1)
        node = raw
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    return mparams.from_dict(raw, f"{path.name} + {sets}")


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params/tiny.yaml"))
    ap.add_argument("--set", action="append", default=[], help="override, e.g. model.pretrain.steps=2000")
    ap.add_argument("--tag", default="")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "results/bench/pruning_regime.csv"))
    args = ap.parse_args(argv)

    p = overridden(Path(args.params), args.set)
    data.ensure(p)
    from transformers import AutoTokenizer, MistralForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        metrics = pre.pretrain(p, Path(tmp), progress=False)
        wall = time.time() - t0
        model = MistralForCausalLM.from_pretrained(tmp, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(tmp)
    torch.set_num_threads(p.model.pretrain.threads)
    model.eval()
    bench = study_pruning.setup(p, model, tok)
    row = {"tag": args.tag, "overrides": " ".join(args.set), "pretrain_s": round(wall, 1),
           "train_ppl": metrics["train_ppl"], "dense": bench.run(None, "dense", need_accuracy=False)["perplexity"]}
    ratios = np.full(len(decoder_layers(model)), args.sparsity)
    for pruner in PRUNERS:
        row[pruner] = bench.run(ratios, pruner, need_accuracy=False)["perplexity"]
        row[f"{pruner}_rel"] = row[pruner] / row["dense"] - 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([row])
    df.to_csv(out, mode="a", header=not out.exists(), index=False)
    print(df.T.to_string())
    return df


if __name__ == "__main__":
    main()
