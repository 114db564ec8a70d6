"""The same scoring call under a real 2-process CPU launch (torchrun, gloo): each rank holds half
of the batches, statistics are all-reduced, and every method's ζ² (and LayerIF's layer sums)
equal those of one process that holds all the batches."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    from mdlcap.scores import influence as I
    from mdlcap.scores.registry import layer_gains, score_method_name
    from mdlcap.models import random_model

    def batches(n, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            ids = torch.randint(0, 48, (2, 8), generator=g)
            lab = ids.clone(); lab[:, :3] = -100
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab})
        return out

    def scores(train, val):
        model = random_model(seed=0, vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2).double()
        out = {}
        for m, c in [("cg", "ggn"), ("cg", "hessian"), ("diag_fisher", None), ("kfac", None), ("ekfac", None),
                     ("grad_norm", None)]:
            r = layer_gains(model, train, method=m, curvature=c or "ggn", damping=1e-2, max_iter=30, tol=1e-12,
                              progress=False)
            out[score_method_name(m, c)] = dict(r)
        inf = I.layer_influence(model, train, val, progress=False)
        out["layerif_all"], out["layerif_pos"] = inf.layer_sums("all"), inf.layer_sums("pos")
        return out

    train, val = batches(4, 0), batches(2, 1)
    if len(sys.argv) > 2 and sys.argv[2] == "single":
        res = scores(train, val)
        name = "single.json"
    else:
        dist.init_process_group("gloo")
        r, w = dist.get_rank(), dist.get_world_size()
        res = scores(train[r::w], val[r::w])
        name = f"rank{r}.json"
        dist.barrier()
        dist.destroy_process_group()
    with open(os.path.join(sys.argv[1], name), "w") as f:
        json.dump(res, f)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_two_processes_give_the_single_process_scores(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    single = subprocess.run([sys.executable, str(script), str(tmp_path), "single"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=200)
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    want = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(want) == {"cg_ggn", "cg_hessian", "diag_fisher", "kfac", "ekfac", "grad_norm", "layerif_all",
                         "layerif_pos"}
    for method, gains in want.items():
        for got in ranks:
            assert set(got[method]) == set(gains)
            for block, v in gains.items():
                assert got[method][block] == pytest.approx(v, rel=1e-6, abs=1e-12), (method, block)
