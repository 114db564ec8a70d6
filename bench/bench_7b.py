"""Benchmark of the 7B path on one GPU: ζ² scoring, pruning, LoRA-MoE, lm-eval (issue 18).

Randomly initialised models with the true shapes (transformers `MistralConfig()` defaults, or
`GemmaConfig()` = Gemma-7B with --model gemma), bf16 on the GPU; cost does not depend on the
weights, and the machine reaches no model hub. Everything runs through the package's own code:

  scoring   `mdlcap.curvature.layer_gains`: grad_norm, diag_fisher, kfac for every decoder layer
            on --score-seqs x --seq-len tokens (8 x 512), and CG on the GGN for --cg-layers layers
            (the first and the last) at --cg-iters iterations (tol 0: all iterations run). grad_norm
            is one gradient evaluation, so it is the cost unit: each method's cost in gradient
            passes is given as counted passes (sequence-forwards through the model + backward passes
            through it, over the same for one gradient evaluation) and as wall time over grad_norm's.
  moe       `mdlcap.interventions.moe.add_lora_moe` with --experts (the paper's 160) spread over the
            layers by Algorithm 1 (`mdlcap.programs.allocate_integer`, spend_all, costs = per-layer
            expert FLOPs, q = the diag_fisher ζ² of this run when there), then one training step
            through `mdlcap.interventions.finetune.finetune` (after one warm-up step): tokens/s.
  lmeval    `mdlcap.evaluation.lm_eval_accuracy` on one generated zero-shot task (local YAML and
            JSONL written by `mdlcap.default.data.ensure`), tokenizer from
            `mdlcap.default.pretrain.train_tokenizer`: seconds per 100 loglikelihood requests.
  pruning   `mdlcap.pruning.prune_model`, whole model at params.pruning.target (50%): magnitude,
            then Wanda and SparseGPT with the layer-wise calibration loop on --calib-samples x
            --calib-seq-len random tokens (128 x 2048). A pruner cut by the time budget reports the
            layers it finished and the projected time for all of them.

Protection: every measurement runs in try/except (an error is recorded, the next one runs), under
a per-measurement time budget (SIGALRM; a watchdog thread ends the process if a C call ignores
it) and, for the scoring methods, pruning and MoE, after an estimate of its memory need is checked
against free device memory: "skipped: <reason>" instead of an out-of-memory crash (K-FAC holds the
factors of every module at once: ~254 GiB of factors and accumulators for Mistral-7B, ~467 GiB
for Gemma-7B, before activations). The JSON is rewritten atomically after
every measurement, so an outer timeout still leaves the results so far; SIGTERM marks the running
measurement "killed". Per measurement: status, wall_s, peak memory (CUDA max_memory_allocated,
reset between measurements; on CPU the peak resident set size, sampled), tokens, and the
measurement's own figures. A markdown table is written beside the JSON (same stem, .md).

    .venv/bin/python bench/bench_7b.py --tiny                   # seconds on CPU (tests/test_bench_7b.py)
    .venv/bin/python bench/bench_7b.py --tiny --only scoring --layers 3

Running the GPU benchmark (H200, 139 GiB)
-----------------------------------------
The default is the real run: Mistral-7B shapes, cuda, bf16 -> results/bench/7b_h200.json/.md.
The device image has torch, transformers, accelerate, tokenizers, numba, scipy and pyyaml but not
lm-eval (carry it as wheels, see the device README) -- without it the lmeval row records the
ImportError and the rest runs. From the repository root, with an outer timeout a little above
the script's own --total-budget-s (it stops starting measurements when that is spent), so that a
rerun fits in the session's device time:

    PYTHONUNBUFFERED=1 timeout -k 15 450 python3 bench/bench_7b.py --total-budget-s 420 \\
        --time-budget-s 120 --out $OUT/7b_h200.json            # device run(timeout_s=480)

Rerun only what is missing or failed (measurements already "ok" in the JSON are kept): copy the
JSON that came back to results/bench/ here (git-ignored: name it in the run's carry), then

    cp results/bench/7b_h200.json $OUT/ && timeout -k 15 300 python3 bench/bench_7b.py --resume \
        --only pruning --calib-samples 32 --out $OUT/7b_h200.json     # carry=["results/bench"]

Guesses for an H200, not yet measured: model build ~10 s, grad_norm ~1 s, diag_fisher a few s,
kfac skipped (memory), CG 2 layers x 10 iterations = 23 counted gradient passes, magnitude ~10 s,
Wanda ~1 min; SparseGPT at 128 x 2048 likely exceeds a 120 s budget (its per-column loop is
Python, ~39k columns a layer): the row then gives the layers done and the projected total.
--model gemma: CG's estimate (activations of three graph orders, 8 x 512 tokens) is near the
card's size; an out-of-memory error on CUDA is caught and recorded like any other error.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mdlcap.study.measure import rss_bytes  # noqa: E402  (after the path: the device copy is not installed)

SECTIONS = ("scoring", "lmeval", "moe", "pruning")     # run order: moe adds adapters in place
SCORING = ("grad_norm", "diag_fisher", "kfac", "cg_ggn")      # grad_norm first: the cost unit
PRUNING = ("magnitude", "wanda", "sparsegpt")
SCHEMA = "mdlcap.bench_7b/1"
GiB = 2 ** 30
TINY = dict(model="mistral", layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512,
            seq_len=32, batch=2, score_seqs=2, cg_iters=3, calib_samples=4, calib_seq_len=32, calib_batch=2,
            moe_seqs=2, lmeval_items=25, device="cpu", dtype="fp32", time_budget_s=60.0, total_budget_s=300.0,
            out=str(ROOT / "results" / "bench" / "7b_tiny.json"))
FULL = dict(model="mistral", layers=None, hidden=None, intermediate=None, heads=None, kv_heads=None, vocab=None,
            seq_len=512, batch=8, score_seqs=8, cg_iters=10, calib_samples=128, calib_seq_len=2048, calib_batch=8,
            moe_seqs=8, lmeval_items=100, device="cuda", dtype="bf16", time_budget_s=120.0, total_budget_s=None,
            out=str(ROOT / "results" / "bench" / "7b_h200.json"))
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


# =============================================================================== arguments
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny CPU preset (hidden 64, 2 layers, fp32): seconds")
    ap.add_argument("--model", choices=("mistral", "gemma"))
    for name in ("layers", "hidden", "intermediate", "heads", "kv-heads", "vocab", "seq-len", "batch",
                 "score-seqs", "cg-iters", "calib-samples", "calib-seq-len", "calib-batch", "moe-seqs",
                 "lmeval-items"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--cg-layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=None,
                    help="LoRA-MoE experts in all (default 160 at full depth, else 5 per layer)")
    ap.add_argument("--lmeval-task", default="arc_easy", help="generated zero-shot task (mdlcap.default.data)")
    ap.add_argument("--params", default=str(ROOT / "params" / "smoke.yaml"),
                    help="params file for damping, pruning target, LoRA-MoE recipe and lm-eval data")
    ap.add_argument("--device", choices=("cuda", "cpu"))
    ap.add_argument("--dtype", choices=tuple(DTYPES))
    ap.add_argument("--time-budget-s", type=float, help="per measurement")
    ap.add_argument("--total-budget-s", type=float, help="no measurement starts (or runs) past this")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out")
    ap.add_argument("--resume", action="store_true", help="keep measurements already 'ok' in --out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    preset = TINY if a.tiny else FULL
    for k, v in preset.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in a.only if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown {bad}; choose from {list(SECTIONS)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu, e.g. with --tiny)")
    return a


def model_config(a):
    """MistralConfig()/GemmaConfig() defaults (the 7B shapes), with any size the CLI overrides."""
    from transformers import GemmaConfig, MistralConfig

    cfg = MistralConfig() if a.model == "mistral" else GemmaConfig()
    over = {"num_hidden_layers": a.layers, "hidden_size": a.hidden, "intermediate_size": a.intermediate,
            "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab}
    for k, v in over.items():
        if v is not None:
            setattr(cfg, k, v)
    if a.hidden is not None or a.heads is not None:
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    cfg.use_cache = False
    return cfg


def meta_model(cfg):
    """The architecture on the meta device: shapes and parameter counts, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def build_model(cfg, a):
    """Random weights (seed a.seed), created directly on the device in the benchmark dtype."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(a.seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[a.dtype])
    try:
        with torch.device(a.device):
            model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to(device=a.device, dtype=DTYPES[a.dtype])
    model.eval()
    return model


def random_batches(n_seqs, seq_len, batch, vocab, seed, labels=True) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n_seqs, batch):
        ids = torch.randint(0, vocab, (min(batch, n_seqs - i), seq_len), generator=g)
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            b["labels"] = ids.clone()
        out.append(b)
    return out


# =============================================================================== environment, memory
def environment(a) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
           "host": platform.node(), "device_type": a.device}
    try:
        import lm_eval
        env["lm_eval"] = getattr(lm_eval, "__version__", "installed")
    except ImportError:
        env["lm_eval"] = None
    if a.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(device_name=p.name, device_memory_gib=p.total_memory / GiB, device_sms=p.multi_processor_count,
                   capability=f"{p.major}.{p.minor}")
    else:
        env["device_name"] = f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return env


def free_bytes(device) -> int:
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class PeakMemory:
    """CUDA: max_memory_allocated (reset at start). CPU: peak RSS sampled every 5 ms."""

    def __init__(self, device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device == "cuda" else "cpu_peak_rss_sampled"

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_bytes()
            self.peak, self._stop = self.base, threading.Event()

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, rss_bytes())
            self._th = threading.Thread(target=sample, daemon=True)
            self._th.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._th.join()
            self.peak = max(self.peak, rss_bytes())


def linear_shapes(model) -> list[tuple[int, int]]:
    from mdlcap.models import decoder_layers
    return [(m.in_features, m.out_features) for layer in decoder_layers(model)
            for m in layer.modules() if isinstance(m, torch.nn.Linear)]


def activation_bytes(cfg, tokens: int, elem: int, graph_orders: int = 1) -> int:
    """Rough bytes autograd keeps for one forward of `tokens` tokens (per layer ~ 12 h + 5 I values
    a token, logits with their float32 loss copy), times the number of graphs kept."""
    h, i, v, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    return graph_orders * tokens * (L * (12 * h + 5 * i) * elem + v * (elem + 8))


def memory_estimate(kind: str, model, cfg, a, **kw) -> tuple[int, int]:
    """(sure, rough) bytes a measurement needs beyond the model: `sure` = what the package
    allocates explicitly (float32 accumulators for bf16 parameters, K-FAC factors, Hessians),
    `rough` = autograd's activations. An estimate to refuse the hopeless, not a prediction."""
    from mdlcap.models import decoder_layers

    elem = DTYPES[a.dtype].itemsize
    P = sum(p.numel() for layer in decoder_layers(model) for p in layer.parameters())
    B, T = a.batch, a.seq_len
    if kind == "grad_norm":            # float32 gradient accumulator + one gradient in the model dtype
        return 4 * P + elem * P, activation_bytes(cfg, B * T, elem)
    if kind == "diag_fisher":          # gradient and Fisher accumulators; per-sample passes
        return 8 * P + elem * P, activation_bytes(cfg, T, elem)
    if kind == "kfac":                 # A, G, S per Linear (all modules at once), eigenbases, 2 accumulators
        lin = linear_shapes(model)
        A = sum(i * i for i, o in lin)
        G = sum(o * o for i, o in lin)
        S = sum(i * o for i, o in lin)
        QA = A * 3 // 7 if len(lin) % 7 == 0 else A    # q/k/v and gate/up share an input: 3 of 7 distinct
        return 4 * (A + G + S + QA + G) + 8 * P + elem * P, activation_bytes(cfg, B * T, elem)
    if kind == "cg_ggn":               # gradient of the blocks, CG vectors; graphs kept for every product
        return 4 * kw["all_block_params"] + 6 * 4 * kw["block_params"], \
            activation_bytes(cfg, B * T, elem, graph_orders=3)
    if kind == "pruning":              # calibration hidden states (in and out) + one layer's statistics
        h, i = cfg.hidden_size, cfg.intermediate_size
        hid = 2 * a.calib_samples * a.calib_seq_len * h * elem
        stats = 4 * sum(x * x for x, _ in linear_shapes(model)[:7]) if kw.get("hessian") else 0
        work = 6 * 4 * max(i, h) ** 2 if kw.get("hessian") else 4 * max(i, h) * h
        return hid + stats + work, activation_bytes(cfg, a.calib_batch * a.calib_seq_len, elem) // cfg.num_hidden_layers
    if kind == "moe":                  # adapters in float32 + gradients + AdamW moments
        return 16 * kw["adapter_params"], activation_bytes(cfg, a.moe_seqs * a.seq_len, elem)
    raise ValueError(kind)


def memory_verdict(sure: int, rough: int, free: int, device: str) -> str | None:
    """A skip reason, or None. On CUDA an out-of-memory error is caught and recorded, so only the
    sure part must fit; on CPU (swap, the OOM killer) the whole estimate must."""
    need = sure if device == "cuda" else sure + rough
    if need > 0.95 * free:
        what = "explicit allocations" if device == "cuda" else "explicit allocations + activations"
        return f"needs ~{need / GiB:.1f} GiB ({what}, by estimate), {free / GiB:.1f} GiB free on {device}"
    return None


# =============================================================================== counting passes
class PassCounter:
    """Counts passes through the model: sequence-forwards (forward pre-hook on the model) and
    backward passes (torch.autograd.grad / backward calls), each backward weighted by the batch
    size of the latest forward (all batches here have one shape). Calls that differentiate only
    with respect to non-leaf tensors (the logits: GGN's ∇_zℓ and ∇²ℓ·v) stop at the head and are
    counted apart."""

    def __init__(self, model):
        self.model = model
        self.fwd_seqs = self.bwd_seqs = self.model_calls = self.bwd_calls = self.head_calls = 0
        self._last = 0

    def _pre(self, module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self._last = n
        self.fwd_seqs += n
        self.model_calls += 1

    def _count(self, inputs):
        ins = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs or [])
        if ins and all(t.grad_fn is not None for t in ins):
            self.head_calls += 1
        else:
            self.bwd_calls += 1
            self.bwd_seqs += self._last

    def __enter__(self):
        self._grad, self._backward = torch.autograd.grad, torch.autograd.backward
        orig_grad, orig_backward = self._grad, self._backward

        def grad(outputs, inputs, *args, **kw):
            self._count(inputs)
            return orig_grad(outputs, inputs, *args, **kw)

        def backward(tensors, *args, **kw):
            self._count(kw.get("inputs"))
            return orig_backward(tensors, *args, **kw)

        torch.autograd.grad, torch.autograd.backward = grad, backward
        self._h = self.model.register_forward_pre_hook(self._pre, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        torch.autograd.grad, torch.autograd.backward = self._grad, self._backward
        self._h.remove()

    def summary(self, seqs_per_gradient: int) -> dict:
        return {"forward_seqs": self.fwd_seqs, "backward_seqs": self.bwd_seqs, "model_calls": self.model_calls,
                "backward_calls": self.bwd_calls, "head_only_backward_calls": self.head_calls,
                "seqs_per_gradient_eval": seqs_per_gradient,
                "grad_passes": (self.fwd_seqs + self.bwd_seqs) / (2 * seqs_per_gradient)}


# =============================================================================== the runner
class MeasurementTimeout(BaseException):
    """Raised by SIGALRM inside a measurement (BaseException: no `except Exception` swallows it)."""


class Bench:
    def __init__(self, a):
        self.a, self.t_start = a, time.monotonic()
        self.out = Path(a.out)
        self.md = self.out.with_suffix(".md")
        self.current: str | None = None
        self._open = False                  # a "name ..." line waits for its result
        self.current_deadline = None
        self.lock = threading.Lock()
        old = {}
        if a.resume and self.out.exists():
            try:
                old = json.loads(self.out.read_text()).get("measurements", {})
            except (OSError, ValueError):
                old = {}
        self.data = {"schema": SCHEMA, "started": dt.datetime.now().isoformat(timespec="seconds"),
                     "finished": None, "argv": sys.argv[1:], "config": {}, "environment": {},
                     "measurements": {}}
        self.kept = {k: v for k, v in old.items() if v.get("status") == "ok"}

    # ---------------------------------------------------------------- files
    def write(self):
        from mdlcap import files
        with self.lock:
            files.atomic_write_text(self.out, json.dumps(self.data, indent=1, default=str) + "\n")
            files.atomic_write_text(self.md, markdown(self.data))

    def plan(self, names):
        for n in names:
            self.data["measurements"][n] = self.kept.get(n, {"status": "pending"})
        self.write()

    def remaining(self) -> float:
        if self.a.total_budget_s is None:
            return float("inf")
        return self.a.total_budget_s - (time.monotonic() - self.t_start)

    # ---------------------------------------------------------------- one measurement
    def measure(self, name, fn, *, estimate=None, tokens=None):
        """Run fn() -> dict of extra fields under the time budget and peak-memory tracking."""
        a = self.a
        if name in self.kept:
            print(f"{name:24s} kept from {self.out.name}", flush=True)
            return self.kept[name]
        rec = {"status": "running", "tokens": tokens}
        budget = min(a.time_budget_s, self.remaining())
        if self.remaining() < 5:
            rec.update(status="skipped", reason="total time budget spent")
            return self._done(name, rec)
        if estimate is not None:
            try:
                sure, rough = (int(x) for x in estimate())
                free = free_bytes(a.device)
                rec.update(mem_estimate_bytes=sure + rough, mem_estimate_sure_bytes=sure, mem_free_bytes=free)
                why = memory_verdict(sure, rough, free, a.device)
                if why:
                    rec.update(status="skipped", reason=why)
                    return self._done(name, rec)
            except Exception as e:                                   # noqa: BLE001
                rec["mem_estimate_error"] = repr(e)
        self.data["measurements"][name] = rec
        self.current, self.current_deadline = name, time.monotonic() + budget
        self.write()
        print(f"{name:24s} ...", end=" ", flush=True)
        self._open = True
        t0 = time.perf_counter()
        old = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, budget)
        peak = PeakMemory(a.device)
        try:
            with peak:
                extra = fn(rec) or {}
            rec.update(extra)
            rec["status"] = rec.get("status") if rec.get("status") not in ("running", None) else "ok"
        except MeasurementTimeout:
            rec.update(status="timeout", reason=f"time budget {budget:.0f} s reached")
        except Exception as e:                                       # noqa: BLE001
            rec.update(status="error", reason=f"{type(e).__name__}: {e}"[:2000],
                       traceback=traceback.format_exc(limit=8)[-3000:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            self.current = None
        rec["wall_s"] = time.perf_counter() - t0
        rec.update(peak_mem_bytes=int(peak.peak), base_mem_bytes=int(peak.base),
                   peak_extra_mem_bytes=int(peak.peak - peak.base), peak_mem_kind=peak.kind)
        if rec["status"] == "timeout" and rec.get("progress"):
            done, total = rec["progress"]
            if done:
                rec["projected_full_s"] = rec["wall_s"] * total / done
                rec["reason"] += f" after {done}/{total} layers (projected {rec['projected_full_s']:.0f} s for all)"
        cleanup()
        return self._done(name, rec)

    def _done(self, name, rec):
        self.data["measurements"][name] = rec
        self.write()
        msg = f"{rec['status']:8s}" + (f" {rec['wall_s']:8.2f} s" if rec.get("wall_s") is not None else "")
        if rec.get("peak_mem_bytes") is not None:
            msg += f"  peak {rec['peak_mem_bytes'] / GiB:7.2f} GiB"
        if rec.get("reason"):
            msg += f"  ({rec['reason'][:160]})"
        print(msg if self._open else f"{name:24s} {msg}", flush=True)
        self._open = False
        return rec

    def watchdog(self, grace: float):
        """Ends the process if a measurement outlives its budget by `grace` s (a C call that never
        returns to Python, where SIGALRM cannot act), after writing what is known."""
        def loop():
            while True:
                time.sleep(1.0)
                d, name = self.current_deadline, self.current
                if name is not None and d is not None and time.monotonic() > d + grace:
                    self.data["measurements"][name].update(
                        status="killed", reason=f"no return {grace:.0f} s past its time budget; process ended")
                    self.data["finished"] = False
                    self.write()
                    os._exit(3)
        threading.Thread(target=loop, daemon=True).start()

    def on_sigterm(self, signum, frame):
        if self.current is not None:
            self.data["measurements"][self.current].update(status="killed", reason=f"signal {signum} (outer timeout)")
        self.data["finished"] = False
        self.write()
        os._exit(128 + signum)


def _raise_timeout(signum, frame):
    raise MeasurementTimeout()


def cleanup():
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# =============================================================================== sections
def run_scoring(bench: Bench, model, cfg, params, state: dict):
    from mdlcap.curvature import layer_gains
    from mdlcap.models import decoder_layers

    a = bench.a
    damping = params.scoring.damping
    batches = [{k: v.to(a.device) for k, v in b.items()}
               for b in random_batches(a.score_seqs, a.seq_len, a.batch, cfg.vocab_size, a.seed + 1)]
    n_seqs = sum(b["input_ids"].shape[0] for b in batches)
    tokens = n_seqs * a.seq_len
    layers = decoder_layers(model)
    picks = sorted({0, len(layers) - 1})[: a.cg_layers] if a.cg_layers <= 2 else \
        sorted(set(int(round(x)) for x in torch.linspace(0, len(layers) - 1, a.cg_layers).tolist()))
    cg_blocks = {f"layers.{i}": list(layers[i].parameters()) for i in picks}
    all_bp = sum(p.numel() for ps in cg_blocks.values() for p in ps)
    max_bp = max(sum(p.numel() for p in ps) for ps in cg_blocks.values())
    layer_gains(model, batches[:1], method="grad_norm", damping=damping, progress=False)   # warm-up (not timed)
    cleanup()
    unit = bench.kept.get("scoring/grad_norm", {}).get("wall_s")

    for m in SCORING:
        name = f"scoring/{m}"

        def fn(rec, m=m):
            kw = dict(method=m, damping=damping, progress=False)
            if m == "cg_ggn":
                kw.update(method="cg", curvature="ggn", blocks=cg_blocks, max_iter=a.cg_iters, tol=0.0)
            with PassCounter(model) as pc:
                g = layer_gains(model, batches, **kw)
            out = {"passes": pc.summary(n_seqs), "grad_passes": pc.summary(n_seqs)["grad_passes"],
                   "blocks": len(g), "n_seqs": n_seqs, "seq_len": a.seq_len}
            if m == "cg_ggn":
                out.update(cg_layers=picks, cg_iters=a.cg_iters,
                           cg_iterations_done={k: v.get("iterations") for k, v in g.diagnostics.items()})
            else:
                out["gains"] = list(g.values())
            return out

        est = (lambda m=m: memory_estimate(m, model, cfg, a, block_params=max_bp, all_block_params=all_bp))
        rec = bench.measure(name, fn, estimate=est, tokens=tokens)
        if m == "grad_norm" and rec.get("status") == "ok":
            unit = rec["wall_s"]
        if rec.get("gains"):
            state[f"gains_{m}"] = rec["gains"]
        if rec.get("status") == "ok" and unit:
            rec["grad_pass_wall_s"] = unit
            rec["grad_passes_wall"] = rec["wall_s"] / unit
            bench.write()


def run_moe(bench: Bench, model, cfg, params, state: dict):
    from mdlcap.interventions import moe
    from mdlcap.interventions.finetune import finetune, make_accelerator
    from mdlcap.programs import allocate_integer

    a = bench.a
    al = params.allocation
    L = cfg.num_hidden_layers
    full_depth = L == (32 if a.model == "mistral" else 28)
    total = a.experts if a.experts is not None else (160 if full_depth else 5 * L)
    batch = random_batches(a.moe_seqs, a.seq_len, a.moe_seqs, cfg.vocab_size, a.seed + 2)
    tokens = a.moe_seqs * a.seq_len

    def fn(rec):
        import numpy as np
        costs = np.asarray(moe.layer_expert_costs(model, al.lora_r, al.target_modules), float)
        q_src = "diag_fisher" if state.get("gains_diag_fisher") else "grad_norm" if state.get("gains_grad_norm") \
            else "uniform"
        q = np.asarray(state.get(f"gains_{q_src}") or np.ones(L), float)
        q = q / q.sum() if q.sum() > 0 else np.full(L, 1.0 / L)
        c = costs / costs.min()
        res = allocate_integer(q, c, float(total), alpha=al.alpha, beta=al.beta, gamma=al.gamma,
                               n_min=al.n_min, spend_all=True)
        counts = [int(x) for x in res.counts]
        moe.add_lora_moe(model, counts, r=al.lora_r, alpha=al.lora_alpha, target_modules=al.target_modules,
                         top_k=al.top_k, seed=a.seed)
        n_train = moe.trainable_parameters(model)[0]
        free = free_bytes(a.device)
        sure, rough = memory_estimate("moe", model, cfg, a, adapter_params=n_train)
        rec.update(mem_estimate_bytes=sure + rough, mem_estimate_sure_bytes=sure, mem_free_bytes=free)
        why = memory_verdict(sure, rough, free, a.device)
        if why:
            return {"status": "skipped", "reason": why}
        acc = make_accelerator(a.device)
        kw = dict(epochs=1, lr=al.lr, accelerator=acc, aux_loss_coef=al.aux_loss_coef, progress=False)
        finetune(model, batch, **kw)                                     # warm-up step (optimizer, kernels)
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses = finetune(model, batch, **kw)
        if a.device == "cuda":
            torch.cuda.synchronize()
        step = time.perf_counter() - t0
        return {"experts_total": int(sum(counts)), "experts_per_layer": counts, "q_source": q_src,
                "expert_cost_per_layer": costs.tolist(), "adapter_params": n_train, "step_s": step,
                "tokens_per_s": tokens / step, "loss": losses[-1], "lora_r": al.lora_r, "top_k": al.top_k}

    bench.measure("moe/train_step", fn, tokens=tokens)


def run_lmeval(bench: Bench, model, cfg, params):
    a = bench.a
    task = a.lmeval_task

    def fn(rec):
        from mdlcap.default import data as D
        from mdlcap.default.pretrain import train_tokenizer
        from mdlcap.evaluation import lm_eval_accuracy

        d = params.data
        p = dataclasses.replace(params, data=dataclasses.replace(
            d, finetune_tasks=list(d.finetune_tasks[:1]), zeroshot_tasks=[task],
            n_test=max(d.n_test, a.lmeval_items)))
        t0 = time.perf_counter()
        D.ensure(p)
        tok = train_tokenizer(D.texts(p, "calibration"), min(512, cfg.vocab_size))
        setup = time.perf_counter() - t0
        items = D.load_task(p, task, "test")[: a.lmeval_items]
        requests = sum(len(x["choices"]) for x in items)
        lm_eval_accuracy(model, tok, p, [task], limit=2)                  # warm-up: task index, imports
        t0 = time.perf_counter()
        acc = lm_eval_accuracy(model, tok, p, [task], limit=len(items))[task]
        wall = time.perf_counter() - t0
        return {"task": task, "items": len(items), "requests": requests, "eval_s": wall,
                "s_per_100_requests": 100 * wall / requests, "accuracy": acc, "setup_s": setup,
                "tokenizer_vocab": len(tok)}

    bench.measure(f"lmeval/{task}", fn)


def run_pruning(bench: Bench, cfg, params):
    from mdlcap.models import decoder_layers
    from mdlcap.pruning import prune_model

    a = bench.a
    pp = params.pruning
    calib = random_batches(a.calib_samples, a.calib_seq_len, a.calib_batch, cfg.vocab_size, a.seed + 3, labels=False)
    for pruner in PRUNING:
        name = f"pruning/{pruner}"
        if name in bench.kept:
            bench.measure(name, None)
            continue
        model = None
        try:
            t0 = time.perf_counter()
            model = build_model(cfg, a)
            build_s = time.perf_counter() - t0
        except Exception as e:                                           # noqa: BLE001
            bench._done(name, {"status": "error", "reason": f"model build: {type(e).__name__}: {e}"})
            continue
        L = cfg.num_hidden_layers
        uses_calib = pruner != "magnitude"

        def fn(rec, pruner=pruner, model=model):
            seen = set()
            rec["progress"] = [0, L]

            def pre(i):
                def hook(mod, args):
                    if i not in seen:          # layer i's first calibration forward: layers < i are done
                        seen.add(i)
                        rec["progress"] = [i, L]
                return hook
            hs = [l.register_forward_pre_hook(pre(i)) for i, l in enumerate(decoder_layers(model))]
            try:
                recs = prune_model(model, [pp.target] * L, pruner, calib if uses_calib else None,
                                   blocksize=pp.sparsegpt_blocksize, damp=pp.sparsegpt_damp, progress=False)
            finally:
                for h in hs:
                    h.remove()
            rec["progress"] = [L, L]
            meas = [r["measured"] for r in recs]
            return {"target": pp.target, "layers": len(recs), "measured_sparsity_mean": sum(meas) / len(meas),
                    "layer_s": [r["seconds"] for r in recs], "build_s": build_s,
                    "calib_samples": a.calib_samples if uses_calib else 0, "calib_seq_len": a.calib_seq_len}

        est = (lambda pruner=pruner, model=model: memory_estimate("pruning", model, cfg, a,
                                                                  hessian=pruner == "sparsegpt"))
        bench.measure(name, fn, estimate=est, tokens=a.calib_samples * a.calib_seq_len if uses_calib else 0)
        del model
        cleanup()


# =============================================================================== markdown
def _fmt(x, nd=2):
    return "" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(data: dict) -> str:
    env, cfg = data.get("environment", {}), data.get("config", {})
    lines = [f"# 7B benchmark: {cfg.get('model', '?')} on {env.get('device_name', '?')}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, transformers {env.get('transformers')}, "
             f"lm-eval {env.get('lm_eval')}; {cfg.get('layers')} layers, hidden {cfg.get('hidden')}, "
             f"{cfg.get('params_total', 0) / 1e9:.2f} B parameters, {cfg.get('dtype')}; "
             f"finished: {data.get('finished')}", "",
             "| measurement | status | wall s | peak GiB | tokens | grad passes (counted) | grad passes (wall) "
             "| throughput | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in data.get("measurements", {}).items():
        peak = r.get("peak_mem_bytes")
        thr = ""
        if r.get("tokens_per_s") is not None:
            thr = f"{r['tokens_per_s']:.0f} tok/s"
        elif r.get("s_per_100_requests") is not None:
            thr = f"{r['s_per_100_requests']:.3f} s/100 req"
        note = r.get("reason") or ""
        if r.get("status") == "skipped":
            note = f"skipped: {note}"
        if r.get("measured_sparsity_mean") is not None:
            note = (note + "; " if note else "") + f"sparsity {r['measured_sparsity_mean']:.3f}"
        if r.get("experts_per_layer") is not None:
            note = (note + "; " if note else "") + f"{r['experts_total']} experts {r['experts_per_layer']}"
        lines.append(f"| {name} | {r.get('status')} | {_fmt(r.get('wall_s'))} | "
                     f"{_fmt(peak / GiB if peak is not None else None, 3)} | {_fmt(r.get('tokens'))} | "
                     f"{_fmt(r.get('grad_passes'))} | {_fmt(r.get('grad_passes_wall'))} | {thr} | "
                     f"{note.replace('|', '/')[:200]} |")
    return "\n".join(lines) + "\n"


# =============================================================================== main
def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")          # lm-eval's bars would fill the device's output tail
    from mdlcap import params as mparams

    params = mparams.load(a.params)
    if a.device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    bench = Bench(a)
    cfg = model_config(a)
    names = []
    if "scoring" in a.only:
        names += [f"scoring/{m}" for m in SCORING]
    if "lmeval" in a.only:
        names.append(f"lmeval/{a.lmeval_task}")
    if "moe" in a.only:
        names.append("moe/train_step")
    if "pruning" in a.only:
        names += [f"pruning/{p}" for p in PRUNING]
    bench.data["environment"] = environment(a)
    n_params = sum(p.numel() for p in meta_model(cfg).parameters())
    bench.data["config"] = {
        "model": a.model, "config_class": type(cfg).__name__, "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads, "head_dim": getattr(cfg, "head_dim", None), "vocab": cfg.vocab_size,
        "params_total": n_params, "device": a.device, "dtype": a.dtype, "seq_len": a.seq_len, "batch": a.batch,
        "score_seqs": a.score_seqs, "cg_layers": a.cg_layers, "cg_iters": a.cg_iters,
        "calib_samples": a.calib_samples, "calib_seq_len": a.calib_seq_len, "calib_batch": a.calib_batch,
        "moe_seqs": a.moe_seqs, "lmeval_items": a.lmeval_items, "time_budget_s": a.time_budget_s,
        "total_budget_s": a.total_budget_s, "params_file": str(a.params), "sections": a.only, "seed": a.seed}
    bench.plan(names)
    signal.signal(signal.SIGTERM, bench.on_sigterm)
    bench.watchdog(grace=max(30.0, 0.25 * a.time_budget_s))
    print(f"{a.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {n_params / 1e9:.3f} B params, "
          f"{a.device} {a.dtype} -> {bench.out}", flush=True)

    state: dict = {}
    if any(s in a.only for s in ("scoring", "moe", "lmeval")):
        model = None
        try:
            t0 = time.perf_counter()
            model = build_model(cfg, a)
            bench.data["config"]["build_s"] = time.perf_counter() - t0
        except Exception as e:                                           # noqa: BLE001
            for n in names:
                if not n.startswith("pruning/") and n not in bench.kept:
                    bench._done(n, {"status": "error", "reason": f"model build: {type(e).__name__}: {e}"})
        if model is not None:
            for section, fn in (("scoring", lambda: run_scoring(bench, model, cfg, params, state)),
                                ("lmeval", lambda: run_lmeval(bench, model, cfg, params)),
                                ("moe", lambda: run_moe(bench, model, cfg, params, state))):  # moe last: adds adapters
                if section in a.only:
                    try:
                        fn()
                    except Exception as e:                               # noqa: BLE001  (set-up outside measure)
                        for n in names:
                            if n.startswith(section) and bench.data["measurements"][n].get("status") == "pending":
                                bench._done(n, {"status": "error", "reason": f"set-up: {type(e).__name__}: {e}",
                                                "traceback": traceback.format_exc(limit=8)[-3000:]})
            del model
            cleanup()
    if "pruning" in a.only:
        try:
            run_pruning(bench, cfg, params)
        except Exception as e:                                           # noqa: BLE001
            for n in names:
                if n.startswith("pruning/") and bench.data["measurements"][n].get("status") == "pending":
                    bench._done(n, {"status": "error", "reason": f"set-up: {type(e).__name__}: {e}"})
    bench.data["finished"] = True
    bench.data["total_s"] = time.monotonic() - bench.t_start
    bench.write()
    print(f"wrote {bench.out} and {bench.md} ({bench.data['total_s']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
