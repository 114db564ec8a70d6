"""The LoRA-MoE training step under a real 2-process CPU launch (torchrun, gloo backend; the
`Accelerator` inside `finetune` picks the launch up as MULTI_CPU): the two ranks see different
batches, yet DDP's gradient averaging leaves them with identical adapter weights, and those differ
from the initial ones.

Why torchrun and not `accelerate launch --cpu --num_processes 2`: accelerate sends several CPU
processes through mpirun (absent here); on GPUs `accelerate launch --num_processes N` calls the
same torch.distributed.run launcher used below."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    from safetensors.torch import save_file
    from mdlcap.interventions import moe
    from mdlcap.interventions.finetune import finetune, make_accelerator
    from mdlcap.models import random_model

    out = sys.argv[1]
    acc = make_accelerator("cpu")
    model = random_model(seed=0, num_hidden_layers=2)
    moe.add_lora_moe(model, [2, 3], r=4, alpha=8, seed=0)
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(4):
        x = torch.randint(0, 32, (2, 10), generator=g)
        batches.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x})
    seen = []
    orig_forward = model.forward
    def spy(*a, **kw):
        seen.append(hashlib.sha256(kw["input_ids"].numpy().tobytes()).hexdigest()[:12])
        return orig_forward(*a, **kw)
    model.forward = spy
    losses = finetune(model, batches, epochs=1, lr=5e-3, seed=0, accelerator=acc, progress=False)
    rank = acc.process_index
    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    changed = max((state[n] - init[n]).abs().max().item() for n in state)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": acc.num_processes, "seen": seen, "losses": losses, "changed": changed}, f)
''')


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_process_cpu_launch_synchronises_adapters(tmp_path):
    import json

    from safetensors.torch import load_file

    script = tmp_path / "train_step.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT),
           "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[0]["world"] == info[1]["world"] == 2
    # each rank ran 2 of the 4 batches, and not the same ones
    assert len(info[0]["seen"]) == len(info[1]["seen"]) == 2
    assert set(info[0]["seen"]).isdisjoint(info[1]["seen"])
    assert info[0]["losses"] == info[1]["losses"]          # reduced (averaged) over the ranks
    assert info[0]["changed"] > 1e-4
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and len(w0) > 0
    for name in w0:
        assert (w0[name] - w1[name]).abs().max().item() < 1e-6, name
