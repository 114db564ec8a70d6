"""K-FAC's accumulators (scores.kfac.KfacHooks): a weight-sized S only for EK-FAC, an input factor
A only for modules that own their input (k/v reuse q's, up reuses gate's), the same on processes
that hold no batch; and bench/bench_scoring_memory.py end to end at minimal size (streaming's
memory test: tests/test_scores_streaming.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mdlcap.models import random_model
from mdlcap.scores import kfac
from mdlcap.scores.registry import layer_gains

ROOT = Path(__file__).resolve().parents[1]


def _batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 48, (2, 8), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def _model():
    return random_model(seed=0, vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture
def recorded(monkeypatch):
    seen = []

    class Recording(kfac.KfacHooks):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self)
    monkeypatch.setattr(kfac, "KfacHooks", Recording)
    return seen


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_accumulators_only_where_used(recorded, method):
    model = _model()
    gains = layer_gains(model, _batches(), method=method, damping=1e-3, progress=False)
    assert len(gains) == 2 and all(v > 0 for v in gains.values())
    (hooks,) = recorded
    linears = list(hooks.linears)
    shared = [k for k in linears if k.endswith(("k_proj", "v_proj", "up_proj"))]
    assert len(shared) == 6
    assert set(hooks.alias) == set(shared)
    assert set(hooks.A) == set(linears) - set(shared)
    assert set(hooks.G) == set(linears)
    if method == "kfac":
        assert hooks.S == {}
    else:
        assert set(hooks.S) == set(linears)
        assert all(hooks.S[k].shape == hooks.linears[k].weight.shape for k in linears)


def test_without_sharing_every_module_owns_its_A(recorded, monkeypatch):
    monkeypatch.setattr(kfac, "SHARE_KFAC_INPUTS", False)
    layer_gains(_model(), _batches(), method="kfac", damping=1e-3, progress=False)
    (hooks,) = recorded
    assert hooks.alias == {} and set(hooks.A) == set(hooks.linears) and hooks.S == {}


SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    from mdlcap.models import random_model
    from mdlcap.scores.registry import layer_gains
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 48, (2, 8), generator=g)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    model = random_model(seed=0, vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2).double()
    single = len(sys.argv) > 2
    if not single:
        dist.init_process_group("gloo")
        r = dist.get_rank()
        batches = batches if r == 0 else []              # rank 1 holds no batch
    res = {m: dict(layer_gains(model, batches, method=m, damping=1e-2, progress=False)) for m in ("kfac", "ekfac")}
    name = "single.json" if single else f"rank{r}.json"
    if not single:
        dist.barrier()
        dist.destroy_process_group()
    with open(os.path.join(sys.argv[1], name), "w") as f:
        json.dump(res, f)
''')


@pytest.mark.distributed
def test_a_process_without_batches_agrees(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, str(script), str(tmp_path), "single"], check=True, env=env, timeout=120)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path)],
                   check=True, env=env, timeout=180)
    want = json.loads((tmp_path / "single.json").read_text())
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        for m in want:
            for k in want[m]:
                assert got[m][k] == pytest.approx(want[m][k], rel=1e-9), (r, m, k)


def test_bench_scoring_memory_minimal(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_scoring_memory", ROOT / "bench" / "bench_scoring_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "mem.json"
    res = mod.main(["--hidden", "32", "--vocab", "64", "--depths", "1", "2", "--seqs", "1", "--seq-len", "8",
                    "--methods", *mod.METHODS, "--threads", "1", "--inprocess", "--out", str(out)])
    want = {(m, d, g) for m in mod.METHODS for d in (1, 2) for g in mod.GROUPINGS}
    assert {(r["method"], r["depth"], r["grouping"]) for r in res["rows"]} == want
    assert all(r["finite"] and r["seconds"] > 0 and r["peak_bytes"] >= 0 and r["est_group_bytes"] > 0
               for r in res["rows"])
    assert all(r["n_groups"] == (r["depth"] if r["grouping"] == "one" else 1) for r in res["rows"])
    assert set(res["slope_bytes_per_layer"]) == {f"{m}/{g}" for m in mod.METHODS for g in mod.GROUPINGS}
    assert json.loads(out.read_text())["rows"] and out.with_suffix(".md").read_text().startswith("| method")
    att = mod.main(["--hidden", "32", "--vocab", "64", "--depths", "2", "--seqs", "1", "--seq-len", "8",
                    "--methods", "kfac", "--groupings", "one", "--blocks", "attn", "--threads", "1", "--inprocess",
                    "--out", str(tmp_path / "attn.json")])
    assert [(r["blocks"], r["n_groups"]) for r in att["rows"]] == [("attn", 2)]
