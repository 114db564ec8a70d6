"""Curvature-guided bit allocation (CAQ, proposal 003; METHOD.md §5) on small image classifiers.

A network is a chain of stages f_i = post_i ∘ op_i (op: Linear or Conv2d; post: ReLU / pooling).
Stage i is quantised at p_i bits: its weight (one scale per tensor) and, where the proposal
asks ("inputs and outputs are represented with p_i bits"), its input activation (one scale
per sample: relative precision 2^{-p}) go through symmetric round-and-clamp in float32.
Biases stay float32 (they are a rounding error of the memory bill).

  build_model(name, in_shape, n_classes)     MLP-2, MLP-4, a small 4-conv + FC CNN
  fake_quantize(t, bits, scale=None)          symmetric round-and-clamp
  layer_stats(model, x, y)                    κ_i, L_i, diam(Ω_i), FLOPs, params, grad norm, HAWQ trace
  kappa(stage, x)                             Hutchinson-style ‖H v‖/‖v‖ over Rademacher probes
  spectral_norm(op, in_shape)                 L_i by power iteration on the weight operator
  study_model(...)                            every allocation method for one trained network
Solvers live in `precision_solve`, data loaders in `precision_data`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mdlcap.interventions.precision.data import DATASETS, ImageData, load_image_data  # noqa: F401  (re-export)
from mdlcap.interventions.precision.solve import (BIT_CHOICES, Infeasible, allocate_exact, allocate_min_error,  # noqa: F401
                              caq_relaxed, caq_tables, composed_error, composition_weights,
                              mdl_bits, pareto_front, precision_floor)

MODELS = ("mlp2", "mlp4", "cnn")
CACHE_VERSION = 3


# --------------------------------------------------------------------------- quantisation
def fake_quantize(t: torch.Tensor, bits: int, scale: float | torch.Tensor | None = None, *,
                  per_sample: bool = False) -> torch.Tensor:
    """Symmetric uniform quantiser, simulated in float32:
    q = clamp(round(t / s), −(2^{b−1}−1), 2^{b−1}−1) · s,  s = max|t| / (2^{b−1}−1) unless given.
    Error ≤ s/2 inside the range; values beyond it are clamped. `per_sample=True` takes one
    scale per leading index (each activation vector its own max: a relative precision 2^{-p}
    as in the proposal's model, and no clamping of unseen test activations)."""
    if int(bits) != bits or bits < 2:
        raise ValueError(f"bits: must be an integer >= 2, got {bits}")
    qmax = float(2 ** (int(bits) - 1) - 1)
    t32 = t.to(torch.float32)
    if scale is None:
        if per_sample:
            scale = t32.detach().abs().flatten(1).amax(dim=1).view(-1, *[1] * (t.ndim - 1)) / qmax
        else:
            scale = t32.detach().abs().max() / qmax
    scale = torch.as_tensor(scale, dtype=torch.float32, device=t.device)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))       # all-zero rows: nothing to round
    q = torch.clamp(torch.round(t32 / safe), -qmax, qmax) * safe
    q = torch.where(scale > 0, q, t32)
    return q.to(t.dtype)


# --------------------------------------------------------------------------- models
class Stage(nn.Module):
    """One quantisable unit: op (Linear / Conv2d) followed by post (activation, pooling)."""

    def __init__(self, op: nn.Module, post: nn.Module | None = None, flatten: bool = False):
        super().__init__()
        self.op = op
        self.post = post if post is not None else nn.Identity()
        self.flatten = flatten

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.flatten else x

    def forward(self, x: torch.Tensor, bits: int | None = None, quantize_input: bool = True) -> torch.Tensor:
        x = self.prepare(x)
        w = self.op.weight
        if bits is not None:
            if quantize_input:
                x = fake_quantize(x, bits, per_sample=True)
            w = fake_quantize(w, bits)
        if isinstance(self.op, nn.Linear):
            z = F.linear(x, w, self.op.bias)
        else:
            z = F.conv2d(x, w, self.op.bias, self.op.stride, self.op.padding)
        return self.post(z)


class QuantNet(nn.Module):
    """A chain of stages; forward(x, bits=[p_1..p_L], act_scales=[...]) runs it fake-quantised."""

    def __init__(self, stages: list[Stage], name: str = ""):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.name = name

    def forward(self, x, bits=None, quantize_activations: bool = True, only: int | None = None):
        """Fake-quantised at bits[i] per stage (None: float32); `only=i` quantises stage i alone."""
        for i, st in enumerate(self.stages):
            b = None if bits is None or (only is not None and i != only) else int(bits[i])
            x = st(x, b, quantize_activations)
        return x

    def stage_inputs(self, x) -> list[torch.Tensor]:
        """Input of every stage (as the stage sees it, flattened for Linear stages)."""
        outs = []
        with torch.no_grad():
            for st in self.stages:
                outs.append(st.prepare(x))
                x = st(x)
        return outs


def build_model(name: str, in_shape: tuple[int, ...], n_classes: int) -> QuantNet:
    """MLP-2 (d-256-C), MLP-4 (d-512-256-128-C) as in the proposal's table; `cnn`: 4 conv
    layers (3×3; 8, 16, 16, 32 channels: narrow, for 2 CPU cores) with two poolings, then FC —
    the proposal's CNN-4 layout."""
    d = int(np.prod(in_shape))
    if name == "mlp2":
        return QuantNet([Stage(nn.Linear(d, 256), nn.ReLU(), flatten=True), Stage(nn.Linear(256, n_classes))], name)
    if name == "mlp4":
        return QuantNet([Stage(nn.Linear(d, 512), nn.ReLU(), flatten=True), Stage(nn.Linear(512, 256), nn.ReLU()),
                         Stage(nn.Linear(256, 128), nn.ReLU()), Stage(nn.Linear(128, n_classes))], name)
    if name == "cnn":
        c = in_shape[0]
        return QuantNet([
            Stage(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU()),
            Stage(nn.Conv2d(8, 16, 3, padding=1), nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))),
            Stage(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),
            Stage(nn.Conv2d(16, 32, 3, padding=1), nn.Sequential(nn.ReLU(), nn.AdaptiveMaxPool2d(2))),
            Stage(nn.Linear(128, n_classes), flatten=True)], name)
    raise ValueError(f"model: must be one of {list(MODELS)}, got {name!r}")


def train(model: QuantNet, data: ImageData, *, epochs: int, lr: float = 1e-3, batch_size: int = 64,
          seed: int = 0, device: str = "cpu", progress: bool = False) -> QuantNet:
    """Plain float32 training with Adam and cross-entropy (the proposal trains at fp32 first)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(data.x_train, device=device)
    y = torch.as_tensor(data.y_train, device=device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc=f"train {model.name}", disable=not progress, leave=False):
        perm = torch.randperm(len(y), generator=g).to(device)
        for j in range(0, len(y), batch_size):
            idx = perm[j:j + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def trained_model(name: str, data: ImageData, *, seed: int, epochs: int, lr: float, batch_size: int,
                  device: str = "cpu") -> QuantNet:
    """Train once and cache the weights (safetensors) under .cache/mdlcap/precision/."""
    from safetensors.torch import load_file, save_file

    from mdlcap import files as mio

    key = mio.cache_key({"v": CACHE_VERSION, "model": name, "data": data.name, "n": len(data.y_train),
                         "shape": data.shape, "seed": seed, "epochs": epochs, "lr": lr, "bs": batch_size,
                         "y0": data.y_train[:32].tolist()})
    path = mio.cache_dir("precision", "weights") / f"{name}-{key}.safetensors"
    torch.manual_seed(seed)
    model = build_model(name, data.shape, data.n_classes)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.to(device).eval()
    train(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return model


# --------------------------------------------------------------------------- estimators
def _rademacher(shape, gen, device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen).to(device=device, dtype=torch.float32) * 2 - 1)


def _hvp_sqnorm(stage: nn.Module, x: torch.Tensor):
    """v ↦ H v for H = ∇²_x Σ_n ‖f(x_n)‖² (block-diagonal over samples n): double backward."""
    x = x.detach().requires_grad_(True)
    out = stage(x)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)

    def hvp(v):
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True)
        return hv
    return hvp


def kappa(stage: nn.Module, x: torch.Tensor, *, n_probes: int = 16, batch_size: int = 64, n_batches: int = 4,
          power_iters: int = 20, seed: int = 0) -> dict[str, float]:
    """Second-order sensitivity of stage f: H_n = ∇²_x ‖f(x_n)‖² per input sample x_n (prop. §2.1).

      kappa      mean over samples and Rademacher probes v of ‖H_n v‖/‖v‖ (the proposal's recipe)
      kappa_rms  sqrt(mean ‖H_n v‖²/‖v‖²): E‖Hv‖² = tr(H²) for Rademacher v, so this estimates
                 the RMS eigenvalue ‖H_n‖_F/√d (Hutchinson), averaged over samples
      kappa_op   max over samples of ‖H_n‖₂, by power iteration on the block-diagonal operator
    over up to `n_batches` batches of `x`.
    """
    if n_probes < 1 or n_batches < 1:
        raise ValueError("n_probes/n_batches: must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    ratios, op = [], 0.0
    for b in range(min(n_batches, math.ceil(len(x) / batch_size))):
        xb = x[b * batch_size:(b + 1) * batch_size]
        hvp = _hvp_sqnorm(stage, xb)
        dims = tuple(range(1, xb.ndim))
        for _ in range(n_probes):
            v = _rademacher(xb.shape, gen, xb.device)
            hv = hvp(v)
            ratios.append((hv.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)).detach())
        v = torch.randn(xb.shape, generator=gen).to(xb.device)
        lam = torch.zeros(())
        for _ in range(power_iters):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * len(dims))
            hv = hvp(v)
            lam = hv.flatten(1).norm(dim=1)                 # per-sample ‖H_n v_n‖ with ‖v_n‖ = 1
            v = hv.detach()
        op = max(op, float(lam.max()))
    r = torch.cat(ratios)
    return {"kappa": float(r.mean()), "kappa_rms": float(r.pow(2).mean().sqrt()), "kappa_op": op}


def spectral_norm(op: nn.Module, in_shape: tuple[int, ...], *, n_iter: int = 50, seed: int = 0) -> float:
    """L_i = ‖W‖₂ of the linear map x ↦ op(x) − bias, by power iteration on WᵀW (prop. §2.1:
    '50 iterations of power method'). The adjoint comes from autograd, so convolutions work."""
    gen = torch.Generator().manual_seed(seed)
    w = op.weight.detach()

    def A(x):
        return F.linear(x, w) if isinstance(op, nn.Linear) else F.conv2d(x, w, None, op.stride, op.padding)

    v = torch.randn((1, *in_shape), generator=gen).to(w.device)
    sigma = 0.0
    for _ in range(n_iter):
        v = (v / v.norm()).requires_grad_(True)
        u = A(v)
        (atu,) = torch.autograd.grad(u, v, grad_outputs=u)  # Wᵀ W v
        sigma = float(u.detach().norm())
        v = atu.detach()
    return sigma


def local_lipschitz(stage: nn.Module, x: torch.Tensor, *, n_iter: int = 20, seed: int = 0) -> float:
    """Sampling-based L_i: max over samples of the stage Jacobian's norm at x_n (power iteration)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    v = torch.randn(x.shape, generator=gen).to(x.device)
    dims = [1] * (x.ndim - 1)
    s = torch.zeros(len(x))
    _, vjp = torch.func.vjp(stage, x)                      # linearisation point is fixed: build once
    for _ in range(n_iter):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *dims)
        _, jv = torch.func.jvp(stage, (x,), (v,))
        (jtjv,) = vjp(jv)
        s = jv.detach().flatten(1).norm(dim=1)
        v = jtjv
    return float(s.max())


def _weight_stages(model: QuantNet):
    return [st.op.weight for st in model.stages]


def sensitivity(model: QuantNet, x: torch.Tensor, y: torch.Tensor, *, n_probes: int = 16, batch_size: int = 64,
                n_batches: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline sensitivities per layer weight W_i of the cross-entropy loss:
    gradient norm E_batch ‖∇_{W_i} ℓ‖², and the Hessian trace tr(∇²_{W_i} ℓ) by Hutchinson
    (Rademacher v over all weights, v_iᵀ(Hv)_i is unbiased for tr(H_ii); as HAWQ-V2)."""
    gen = torch.Generator().manual_seed(seed)
    ws = _weight_stages(model)
    gn = np.zeros(len(ws))
    tr = np.zeros(len(ws))
    nb = min(n_batches, math.ceil(len(y) / batch_size))
    for b in range(nb):
        xb, yb = x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
        loss = F.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, ws, create_graph=True)
        gn += np.array([float(g.detach().pow(2).sum()) for g in grads]) / nb
        for _ in range(n_probes):
            vs = [_rademacher(w.shape, gen, w.device) for w in ws]
            hv = torch.autograd.grad(grads, ws, grad_outputs=vs, retain_graph=True)
            tr += np.array([float((v * h).sum()) for v, h in zip(vs, hv)]) / (nb * n_probes)
    return gn, tr


def layer_stats(model: QuantNet, x: torch.Tensor, y: torch.Tensor, *, n_probes: int = 16, n_batches: int = 4,
                batch_size: int = 64, power_iters: int = 50, seed: int = 0) -> pd.DataFrame:
    """Per stage: κ (three readings), L (weight power iteration and local Jacobian), diam(Ω_i)
    = max ‖x_i‖, mean ‖x_i‖, activation scale max|x_i|, FLOPs (MACs per sample), params,
    gradient norm² and Hessian trace of the loss (for the baselines)."""
    model.eval()
    inputs = model.stage_inputs(x)
    rows = []
    for i, (st, xi) in enumerate(zip(model.stages, inputs)):
        k = kappa(st, xi, n_probes=n_probes, batch_size=batch_size, n_batches=n_batches,
                  power_iters=min(power_iters, 20), seed=seed + i)
        with torch.no_grad():
            z = st.op(xi[:1])
        op = st.op
        macs = int(z.numel() * (op.in_features if isinstance(op, nn.Linear)
                                else op.in_channels * op.kernel_size[0] * op.kernel_size[1] // op.groups))
        norms = xi.flatten(1).norm(dim=1)
        rows.append({
            "layer": i, "kind": type(op).__name__, **k,
            "lipschitz": spectral_norm(op, tuple(xi.shape[1:]), n_iter=power_iters, seed=seed + i),
            "lipschitz_local": local_lipschitz(st, xi[:batch_size], n_iter=min(power_iters, 20), seed=seed + i),
            "diam": float(norms.max()), "x_norm_mean": float(norms.mean()),
            "act_scale_max": float(xi.abs().max()),
            "flops": macs, "params": int(op.weight.numel()),
        })
    gn, tr = sensitivity(model, x, y, n_probes=n_probes, batch_size=batch_size, n_batches=n_batches, seed=seed)
    df = pd.DataFrame(rows)
    df["grad_norm2"] = gn
    df["hess_trace"] = tr
    return df


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: QuantNet, bits, x: torch.Tensor, y: torch.Tensor, *,
             quantize_activations: bool = True, ref_logits: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy of the fake-quantised network and its output (logit) error ‖F̃(x) − F(x)‖."""
    ref = model(x) if ref_logits is None else ref_logits
    out = model(x, bits=list(bits), quantize_activations=quantize_activations)
    e = (out - ref).norm(dim=1)
    return {"acc": float((out.argmax(1) == y).float().mean()), "out_err_mean": float(e.mean()),
            "out_err_max": float(e.max())}


@torch.no_grad()
def layer_contributions(model: QuantNet, bits, x: torch.Tensor, *,
                        quantize_activations: bool = True) -> np.ndarray:
    """Observed output error (max over samples) when ONLY stage i is quantised at p_i."""
    ref = model(x)
    return np.array([float((model(x, bits=list(bits), quantize_activations=quantize_activations, only=i)
                            - ref).norm(dim=1).max())
                     for i in range(len(model.stages))])


@torch.no_grad()
def empirical_min_bits(model: QuantNet, x: torch.Tensor, eps, *,
                       bit_range=range(2, 25), quantize_activations: bool = True) -> np.ndarray:
    """Smallest integer p with max_n ‖f̃_i(x_n) − f_i(x_n)‖ ≤ eps at the stage's OWN output, stage
    i alone quantised at p (input and weight): what the 'lower bound' p*_i claims to bound.
    `eps` is one number or one per stage; NaN where no width in `bit_range` suffices."""
    inputs = model.stage_inputs(x)
    eps = np.broadcast_to(np.asarray(eps, dtype=float), (len(inputs),))
    out = []
    for i, (st, xi) in enumerate(zip(model.stages, inputs)):
        ref = st(xi)
        found = np.nan
        for p in bit_range:
            if float((st(xi, p, quantize_activations) - ref).flatten(1).norm(dim=1).max()) <= eps[i]:
                found = p
                break
        out.append(found)
    return np.array(out, dtype=float)


# --------------------------------------------------------------------------- the study
@dataclass
class StudyConfig:
    bits: tuple[int, ...] = BIT_CHOICES
    eps_rel: tuple[float, ...] = tuple(np.logspace(-3, np.log10(3.0), 12))   # ε_target / median ‖F(x)‖
    avg_bits_targets: tuple[float, ...] = (4, 5, 6, 7, 8, 10, 12, 16)
    uniform_int: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16)
    n_random: int = 100
    quantize_activations: bool = True
    eps0: float = 0.0
    mdl_alpha: float = 0.01
    mdl_beta: float = 1.0
    mdl_gamma: float = 0.5
    kappa_factor: float = 2.0
    floor_eps_rel: tuple[float, ...] = (1e-2, 1e-1)
    seed: int = 0


def _bits_str(bits) -> str:
    return "-".join(str(int(b)) for b in bits)


def study_model(model: QuantNet, data: ImageData, stats: pd.DataFrame, cfg: StudyConfig,
                device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Run every allocation method on one trained network; one row per (method, knob).

    `knob`: ε_target / median ‖F(x)‖ for the CAQ rows (−b: ε = Φ of uniform b bits), the average-bits target for the
    budgeted baselines, the width for uniform. Returns {"alloc": allocations with test accuracy, avg bits, predicted Φ and observed error,
    "floor": p*_i against the empirically needed bits, "contrib": per-layer predicted vs observed
    error contributions of the CAQ allocations}.
    """
    grid = np.asarray(cfg.bits, dtype=np.float64)
    xv = torch.as_tensor(data.x_val, device=device)
    yv = torch.as_tensor(data.y_val, device=device)
    xt = torch.as_tensor(data.x_test, device=device)
    yt = torch.as_tensor(data.y_test, device=device)
    with torch.no_grad():
        ref_t, ref_v = model(xt), model(xv)
    fp_acc = float((ref_t.argmax(1) == yt).float().mean())
    out_scale = float(ref_v.norm(dim=1).median())
    Ls = stats["lipschitz"].to_numpy(float)
    diam = stats["diam"].to_numpy(float)
    kap = stats["kappa"].to_numpy(float)
    flops = stats["flops"].to_numpy(float)
    n_par = stats["params"].to_numpy(float)
    a = composition_weights(Ls, diam)
    in_term = float(np.prod(Ls) * cfg.eps0)
    cache: dict[tuple, dict] = {}

    def ev(bits):
        key = tuple(int(b) for b in bits)
        if key not in cache:
            r = evaluate(model, key, xt, yt, quantize_activations=cfg.quantize_activations, ref_logits=ref_t)
            r["avg_bits"] = float(np.dot(key, n_par) / n_par.sum())
            r["bitops"] = float(np.dot(key, flops))
            r["phi"] = composed_error(Ls, diam, key, cfg.eps0)
            cache[key] = r
        return cache[key]

    rows = []

    def add(method, knob, bits, **extra):
        rows.append({"method": method, "knob": float(knob), "bits": _bits_str(bits), **ev(bits), **extra})

    # uniform on the proposal's grid and on every integer width (a stronger reference)
    for b in cfg.bits:
        add("uniform", b, [b] * len(a))
    for b in cfg.uniform_int:
        add("uniform_int", b, [b] * len(a))
    # CAQ: exact integer optimum and the proposal's relaxation + rounding, over ε_target
    contrib = []
    # the sweep, plus the Φ of every uniform allocation on the grid: at those targets CAQ and
    # uniform promise the same error, so CAQ's bit-operations can only be lower (exactness)
    # (knob −b marks "ε = Φ(uniform b)"; positive knobs are ε / median ‖F(x)‖, shared across seeds)
    targets = [(float(r), float(r) * out_scale) for r in cfg.eps_rel]
    targets += [(-float(b), composed_error(Ls, diam, [b] * len(a), cfg.eps0) * (1 + 1e-9)) for b in cfg.bits]
    for r, eps in targets:
        p_star = precision_floor(kap, diam, eps)
        cost, err, allowed = caq_tables(a, flops, cfg.bits, p_star)
        try:   # ablation: the same program without the floors p_i ≥ p*_i (does p* matter?)
            add("caq_exact_nofloor", r, grid[allocate_exact(cost, err, eps - in_term).choice], eps_target=eps)
        except Infeasible:
            pass
        try:
            al = allocate_exact(cost, err, eps - in_term, allowed)
            bits = grid[al.choice]
            add("caq_exact", r, bits, eps_target=eps, max_floor=float(p_star.max()),
                n_floor_above_min=int(np.sum(p_star > grid.min())))
            contrib.append(pd.DataFrame({"eps_rel": r, "eps_target": eps, "layer": np.arange(len(a)), "bits": bits,
                                         "predicted": a * np.exp2(-bits),
                                         "observed": layer_contributions(model, bits, xt,
                                                                         quantize_activations=cfg.quantize_activations)}))
        except Infeasible:
            pass
        try:
            ch = caq_relaxed(a, flops, eps - in_term, cfg.bits, p_star, solver="pgd")
            add("caq_relaxed", r, grid[ch], eps_target=eps)
        except Infeasible:
            pass
        # robustness: κ off by a factor 2 (all up, all down, random per layer)
        rng = np.random.default_rng(cfg.seed + 17)
        for tag, fac in (("x2", np.full(len(a), cfg.kappa_factor)), ("x0.5", np.full(len(a), 1 / cfg.kappa_factor)),
                         ("rand", cfg.kappa_factor ** rng.choice([-1.0, 1.0], size=len(a)))):
            try:
                c2, e2, al2 = caq_tables(a, flops, cfg.bits, precision_floor(kap * fac, diam, eps))
                add(f"caq_exact_kappa_{tag}", r, grid[allocate_exact(c2, e2, eps - in_term, al2).choice], eps_target=eps)
            except Infeasible:
                pass
    # sensitivity baselines: min Σ s_i ‖Q_p(W_i) − W_i‖ s.t. memory ≤ target, exact
    dW2 = np.array([[float((fake_quantize(st.op.weight.detach(), int(b)) - st.op.weight.detach()).pow(2).sum())
                     for b in cfg.bits] for st in model.stages])
    mem = n_par[:, None] * grid[None, :]
    gn = stats["grad_norm2"].to_numpy(float)
    tr = np.clip(stats["hess_trace"].to_numpy(float), 0.0, None) / n_par
    fronts = {"grad_norm": pareto_front(mem, np.sqrt(gn)[:, None] * np.sqrt(dW2)),   # first order: ‖g‖‖ΔW‖
              "hawq_trace": pareto_front(mem, tr[:, None] * dW2)}                   # HAWQ-V2: tr(H)/n ‖ΔW‖²
    for t in cfg.avg_bits_targets:
        cap = t * n_par.sum()
        for name, fr in fronts.items():
            try:
                add(name, t, grid[allocate_min_error(None, None, cap, front=fr).choice])
            except Infeasible:
                pass
        try:
            ch, _ = mdl_bits(kap / kap.sum(), n_par, t, cfg.bits, alpha=cfg.mdl_alpha, beta=cfg.mdl_beta,
                             gamma=cfg.mdl_gamma)
            add("mdl", t, grid[ch])
        except (ImportError, AttributeError):
            pass
    # random search: 100 allocations with average bits ≤ target, best on validation
    rng = np.random.default_rng(cfg.seed)
    scales_cache = {}
    for t in cfg.avg_bits_targets:
        best, best_acc = None, -1.0
        for _ in range(cfg.n_random):
            ch = rng.integers(0, len(grid), size=len(a))
            while np.dot(grid[ch], n_par) > t * n_par.sum() * (1 + 1e-12):
                i = rng.choice(np.flatnonzero(ch > 0))
                ch[i] -= 1
            key = tuple(int(b) for b in grid[ch])
            if key not in scales_cache:
                scales_cache[key] = evaluate(model, key, xv, yv, quantize_activations=cfg.quantize_activations,
                                             ref_logits=ref_v)["acc"]
            if scales_cache[key] > best_acc:
                best, best_acc = key, scales_cache[key]
        add("random_best", t, best, val_acc=best_acc)
    alloc = pd.DataFrame(rows)
    alloc["fp32_acc"] = fp_acc
    alloc["out_scale"] = out_scale
    # how tight is the proposal's "lower bound" p*? compare with the bits each stage needs
    floors = []
    xin = model.stage_inputs(xv)
    with torch.no_grad():
        med_out = [float(model.stages[i](xin[i]).flatten(1).norm(dim=1).median()) for i in range(len(a))]
    kap_op = stats["kappa_op"].to_numpy(float)
    for r in cfg.floor_eps_rel:
        eps_i = r * np.asarray(med_out)
        p_emp = empirical_min_bits(model, xv, eps_i, quantize_activations=cfg.quantize_activations)
        for i in range(len(a)):
            floors.append({"eps_rel": r, "layer": i, "eps": eps_i[i],
                           "p_star": 0.5 * np.log2(kap[i] * diam[i] ** 2 / eps_i[i]),
                           "p_star_op": 0.5 * np.log2(kap_op[i] * diam[i] ** 2 / eps_i[i]),
                           "p_linear": float(np.log2(Ls[i] * diam[i] / eps_i[i])),
                           "p_empirical": p_emp[i]})
    return {"alloc": alloc, "floor": pd.DataFrame(floors),
            "contrib": pd.concat(contrib, ignore_index=True) if contrib else pd.DataFrame()}


def config_from_params(pp, seed: int = 0) -> StudyConfig:
    """StudyConfig from a params.precision section."""
    lo, hi = pp.eps_rel_range
    return StudyConfig(bits=tuple(pp.bit_choices), eps_rel=tuple(np.logspace(np.log10(lo), np.log10(hi), pp.n_eps)),
                       avg_bits_targets=tuple(pp.avg_bits_targets), n_random=pp.n_random,
                       quantize_activations=pp.quantize_activations, eps0=pp.eps0, mdl_alpha=pp.mdl_alpha,
                       mdl_beta=pp.mdl_beta, mdl_gamma=pp.mdl_gamma, kappa_factor=pp.kappa_factor, seed=seed)


def run_study(params, data: ImageData, model_name: str, seed: int, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Train (cached), measure layer statistics and run `study_model` for one (model, seed).

    Results are cached as CSV under .cache/mdlcap/precision/results/, keyed by the precision
    params, the data and the code version, so an interrupted notebook resumes where it stopped.
    """
    from mdlcap import files as mio

    pp = params.precision
    key = mio.cache_key({"v": CACHE_VERSION, "pp": {k: v for k, v in vars(pp).items() if k != "seeds" and k != "models"},
                         "model": model_name, "seed": seed, "data": data.describe(), "y0": data.y_test[:32].tolist()})
    folder = mio.cache_dir("precision", "results", f"{model_name}-s{seed}-{key}")
    names = ("stats", "alloc", "floor", "contrib")
    if all((folder / f"{n}.csv").exists() for n in names):
        return {n: pd.read_csv(folder / f"{n}.csv") for n in names}
    threads = torch.get_num_threads()
    if device == "cpu":
        # networks this small gain nothing from intra-op threads, and on a shared 2-core
        # machine two spinning threads ran 3-5x slower than one (measured while writing this)
        torch.set_num_threads(1)
    try:
        out = _run_study_uncached(params, data, model_name, seed, device)
    finally:
        torch.set_num_threads(threads)
    for n in names:
        df = out[n].copy()
        df.insert(0, "seed", seed)
        df.insert(0, "model", model_name)
        out[n] = df
        mio.atomic_write_text(folder / f"{n}.csv", df.to_csv(index=False))
    return out


def _run_study_uncached(params, data: ImageData, model_name: str, seed: int, device: str) -> dict[str, pd.DataFrame]:
    pp = params.precision
    model = trained_model(model_name, data, seed=seed, epochs=pp.epochs, lr=pp.lr, batch_size=pp.batch_size,
                          device=device)
    torch.manual_seed(seed)
    xv = torch.as_tensor(data.x_val, device=device)
    yv = torch.as_tensor(data.y_val, device=device)
    stats = layer_stats(model, xv, yv, n_probes=pp.n_probes, n_batches=pp.n_batches, batch_size=pp.batch_size,
                        power_iters=pp.power_iters, seed=seed)
    return {"stats": stats, **study_model(model, data, stats, config_from_params(pp, seed), device=device)}
