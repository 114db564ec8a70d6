"""bench/bench_7b.py (issue 18): the --tiny run end to end in a subprocess (JSON schema, markdown
table), and the guards the real 7B run relies on (time budget, memory estimate, error isolation)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_7b.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_7b", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench7b") / "7b_tiny.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), wall


def test_tiny_run_schema(tiny_run):
    data, _, wall = tiny_run
    assert wall < 60, f"--tiny took {wall:.0f} s"
    assert data["schema"] == "mdlcap.bench_7b/1" and data["finished"] is True
    env = data["environment"]
    for k in ("device_name", "torch", "cuda", "transformers"):
        assert k in env
    assert env["torch"] and env["device_name"]
    cfg = data["config"]
    assert cfg["layers"] == 2 and cfg["hidden"] == 64 and cfg["device"] == "cpu" and cfg["dtype"] == "fp32"
    m = data["measurements"]
    expected = {"scoring/grad_norm", "scoring/diag_fisher", "scoring/kfac", "scoring/cg_ggn", "moe/train_step",
                "lmeval/arc_easy", "pruning/magnitude", "pruning/wanda", "pruning/sparsegpt"}
    assert set(m) == expected
    for name, r in m.items():
        assert r["status"] in ("ok", "skipped", "error", "timeout"), (name, r)
        if r["status"] == "ok":
            assert r["wall_s"] > 0 and r["peak_mem_bytes"] > 0 and r["peak_mem_kind"], (name, r)
        else:
            assert r.get("reason"), (name, r)
    # at tiny size everything fits and runs
    assert all(r["status"] == "ok" for r in m.values()), {k: r.get("reason") for k, r in m.items()}


def test_tiny_run_costs(tiny_run):
    m = tiny_run[0]["measurements"]
    for meth in ("grad_norm", "diag_fisher", "kfac", "cg_ggn"):
        r = m[f"scoring/{meth}"]
        assert r["grad_passes"] > 0 and r["grad_passes_wall"] > 0 and r["passes"]["seqs_per_gradient_eval"] == 2
    assert m["scoring/grad_norm"]["grad_passes"] == pytest.approx(1.0)
    # true Fisher (labels sampled from the model): diag_fisher takes g from one batch pass and the
    # Fisher from one per-sample forward + backward of the sampled-label loss -> 2 passes; K-FAC shares
    # one forward between the true-loss backward (g) and the sampled-label backward (factors) -> 1.5
    assert m["scoring/diag_fisher"]["grad_passes"] == pytest.approx(2.0)
    assert m["scoring/kfac"]["grad_passes"] == pytest.approx(1.5)
    # CG, 2 blocks x 3 iterations: gradient (1 fwd + 1 bwd), per block 1 fwd + 1 bwd to build the
    # graphs, 2 model-deep backward products per iteration and one more product for the true final
    # residual -> (3 + 19) / 2 = 11 gradient passes
    cg = m["scoring/cg_ggn"]
    assert cg["cg_iterations_done"] == {"layers.0": 3, "layers.1": 3}
    assert cg["grad_passes"] == pytest.approx(11.0)
    assert "mem_estimate_bytes" in m["scoring/kfac"]
    moe = m["moe/train_step"]
    assert moe["experts_total"] == 10 and sum(moe["experts_per_layer"]) == 10 and moe["tokens_per_s"] > 0
    lm = m["lmeval/arc_easy"]
    assert lm["requests"] >= 100 and lm["s_per_100_requests"] > 0
    for p in ("magnitude", "wanda", "sparsegpt"):
        assert m[f"pruning/{p}"]["measured_sparsity_mean"] == pytest.approx(0.5, abs=0.01)


def test_tiny_run_markdown(tiny_run):
    data, md, _ = tiny_run
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert lines[0].startswith("| measurement | status | wall s | peak GiB")
    rows = {l.split("|")[1].strip(): l for l in lines[2:]}
    assert set(rows) == set(data["measurements"])
    assert "tok/s" in rows["moe/train_step"] and "s/100 req" in rows["lmeval/arc_easy"]


def test_kfac_7b_is_skipped_by_estimate():
    """The K-FAC factors of Mistral-7B do not fit an H200 (139 GiB): skipped, not attempted."""
    B = _bench_module()
    a = B.parse_args(["--device", "cpu", "--dtype", "bf16"])
    cfg = B.model_config(a)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (32, 4096, 14336)
    model = B.meta_model(cfg)
    sure, rough = B.memory_estimate("kfac", model, cfg, a)
    assert sure > 200 * B.GiB
    assert B.memory_verdict(sure, rough, 139 * B.GiB, "cuda").startswith("needs ~")
    sure, rough = B.memory_estimate("grad_norm", model, cfg, a)
    assert B.memory_verdict(sure, rough, 130 * B.GiB, "cuda") is None


def test_guards_timeout_error_skip(tmp_path):
    B = _bench_module()
    a = B.parse_args(["--tiny", "--out", str(tmp_path / "g.json"), "--time-budget-s", "1"])
    bench = B.Bench(a)
    bench.plan(["t/slow", "t/error", "t/skip", "t/ok"])

    def slow(rec):
        while True:
            time.sleep(0.01)

    r = bench.measure("t/slow", slow)
    assert r["status"] == "timeout" and 0.9 < r["wall_s"] < 5
    r = bench.measure("t/error", lambda rec: 1 / 0)
    assert r["status"] == "error" and "ZeroDivisionError" in r["reason"]
    r = bench.measure("t/skip", lambda rec: pytest.fail("must not run"), estimate=lambda: (1 << 60, 0))
    assert r["status"] == "skipped" and "GiB" in r["reason"]
    r = bench.measure("t/ok", lambda rec: {"x": 1})
    assert r["status"] == "ok" and r["x"] == 1
    saved = json.loads((tmp_path / "g.json").read_text())["measurements"]
    assert [saved[k]["status"] for k in ("t/slow", "t/error", "t/skip", "t/ok")] == ["timeout", "error", "skipped", "ok"]
    assert "skipped: " in (tmp_path / "g.md").read_text()
    # --resume keeps what was ok and reruns the rest
    a2 = B.parse_args(["--tiny", "--out", str(tmp_path / "g.json"), "--resume"])
    b2 = B.Bench(a2)
    assert set(b2.kept) == {"t/ok"}
