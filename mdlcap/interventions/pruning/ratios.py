"""Ratio methods: per-layer scores turned into per-layer pruning ratios with the same
parameter-weighted global target s — uniform; OWL (Yin et al. 2024) with its layer outlier
ratios; the LayerIF/AlphaPruning min–max mapping (ε = 0.3, clip 0.99, rescaled to the target); MDL (Algorithm 2, Eq 14–15, through
`mdlcap.theory.pruning.prune`)."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from mdlcap.interventions.pruning.calibration import layerwise
from mdlcap.interventions.pruning.layers import global_sparsity, prunable_linears
from mdlcap.interventions.pruning.masks import wanda_metric
from mdlcap.theory import pruning as program

RATIO_METHODS = ("uniform", "owl", "layerif", "mdl", "mdl_eq", "mdl_eq_free")


def _check_sizes_target(sizes, target, n: int | None = None) -> tuple[np.ndarray, float]:
    N = np.asarray(sizes, dtype=float).reshape(-1)
    if N.size == 0 or not np.all(np.isfinite(N)) or N.min() <= 0:
        raise ValueError("sizes: must be a non-empty vector of positive finite layer sizes")
    if n is not None and N.size != n:
        raise ValueError(f"sizes: length {N.size} does not match the scores' length {n}")
    t = float(target)
    if not (0.0 < t < 1.0):
        raise ValueError(f"target: global sparsity must lie in (0, 1), got {target}")
    return N, t


def _check_scores(q, name: str = "q") -> np.ndarray:
    q = np.asarray(q, dtype=float).reshape(-1)
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError(f"{name}: must be a non-empty vector of finite numbers")
    return q


def _shift_to_target(base: np.ndarray, sizes: np.ndarray, target: float, lo=0.0, hi=1.0) -> np.ndarray:
    """ρ = clip(base + t, lo, hi) with the shift t found by bisection so that the
    parameter-weighted mean equals the target (exact up to float tolerance)."""
    f = lambda t: global_sparsity(np.clip(base + t, lo, hi), sizes) - target  # noqa: E731
    a, b = lo - base.max() - 1.0, hi - base.min() + 1.0
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if f(m) < 0 else (a, m)
    return np.clip(base + 0.5 * (a + b), lo, hi)


def uniform_ratios(sizes, target: float) -> np.ndarray:
    """ρ_k = s for every layer."""
    N, t = _check_sizes_target(sizes, target)
    return np.full(N.size, t)


def owl_ratios(outlier_ratio, sizes, target: float, lam: float = 0.08) -> np.ndarray:
    """OWL (Yin et al. 2024): layers with more outliers keep more weights.
    D_k (outlier ratio) is min–max mapped to [0, 2λ]; ρ_k = s − (mapped_k − weighted mean),
    i.e. a band of width 2λ around s with parameter-weighted mean s (clipped to [0, 1])."""
    D = _check_scores(outlier_ratio, "outlier_ratio")
    N, t = _check_sizes_target(sizes, target, D.size)
    if lam < 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    span = D.max() - D.min()
    mapped = (D - D.min()) / span * 2 * lam if span > 0 else np.zeros_like(D)
    return _shift_to_target(-mapped, N, t)


LAYERIF_CAP = 0.99      # LayerIF's lib/prune.py `ww_sparsity`: a ratio above 0.99 is set to 0.99


def scale_to_target(base, sizes, target: float, cap: float = 1.0) -> np.ndarray:
    """ρ_k = min(c · base_k, cap) with the one c > 0 that makes Σ N_k ρ_k = s Σ N_k, exactly.

    Without a clip this is AlphaPruning's `scaler` (c = s ΣN / Σ N base). When c · base_k would
    exceed `cap` those layers are held at `cap` and c is raised until the clipped vector meets the
    target again (sorted breakpoints: the layers clip in decreasing base_k; c is linear between
    breakpoints), so the ratios stay proportional to base among the unclipped layers and the
    global sparsity is the target. Needs base > 0, sizes > 0, 0 < s ≤ cap ≤ 1."""
    base = np.asarray(base, dtype=float)
    N, t = _check_sizes_target(sizes, target, base.size)
    if not (np.all(np.isfinite(base)) and base.min() > 0):
        raise ValueError("base: must be finite and > 0")
    if not (t <= cap <= 1.0):
        raise ValueError(f"cap: must lie in [target, 1] = [{t:g}, 1], got {cap}")
    order = np.argsort(-base, kind="stable")               # the order layers clip in
    Nb, No = (N * base)[order], N[order]
    rest = np.concatenate([np.cumsum(Nb[::-1])[::-1], [0.0]])   # Σ_{i≥j} N b over the unclipped tail
    clipped = np.concatenate([[0.0], np.cumsum(No)])             # Σ_{i<j} N over the clipped head
    need = t * N.sum()
    for j in range(base.size):
        c = (need - cap * clipped[j]) / rest[j]
        if c * base[order[j]] <= cap:                     # layer j and all after it stay below the cap
            return np.minimum(c * base, cap)
    return np.full(base.size, cap)                         # s = cap: every layer at the cap


def layerif_ratios(score, sizes, target: float, epsilon: float = 0.3, cap: float = LAYERIF_CAP) -> np.ndarray:
    """LayerIF / AlphaPruning mapping (AlphaPruning `lib/prune.py::ww_sparsity`, which LayerIF's
    pruning code reuses): the score is mapped linearly in its min–max (not in rank) to
    [1 − ε, 1 + ε], base_k = (1 − ε) + 2ε (m_k − min m)/(max m − min m), then multiplied by one
    scaler so that Σ N_k ρ_k = s Σ N_k, i.e. ρ_k = s · base_k · ΣN / Σ N base (the interval is
    s·[1−ε, 1+ε] up to that scaler). ε = 0.3 is both references' default (`--epsilon`).

    Orientation: the references' metric m grows with the ratio (AlphaPruning's α: less trained,
    pruned more). Our `score` is an importance (larger = more useful: LayerIF's −Σ_i I_k(i),
    ζ², OWL-free scores), so m = −score: the most important layer gets 1 − ε and is pruned least.
    The map is invariant to the score's scale and offset, so the signed score (negative entries
    included) is used as it is; no score must be > 0.

    Deviation: a ratio above the cap. AlphaPruning has no guard (a ratio ≥ 1 prunes the whole
    matrix in Wanda, breaks magnitude's threshold index); LayerIF sets every ratio above 0.99 to
    0.99 and leaves the global sparsity below the target. Here the same 0.99 cap is applied and the
    scaler is raised (`scale_to_target`), so the global sparsity stays exactly s (equal budgets
    for every method compared); below the cap nothing differs from the references. A constant
    score gives uniform ratios (the references would divide by zero)."""
    m = _check_scores(score, "score")
    N, t = _check_sizes_target(sizes, target, m.size)
    if not (0 <= epsilon < 1):
        raise ValueError(f"epsilon: must lie in [0, 1), got {epsilon}")
    if not (t <= cap <= 1.0):
        raise ValueError(f"cap: must lie in [target, 1] = [{t:g}, 1], got {cap}")
    span = m.max() - m.min()
    u = (m - m.min()) / span if span > 0 else np.zeros_like(m)
    base = (1 + epsilon) - 2 * epsilon * u                 # 1+ε for the least important layer
    return scale_to_target(base, N, t, cap)


def mdl_ratios(q, sizes, target: float, *, bits: float = 16.0, lam: float = 2.0, gamma: float = 1.0,
               rho_max: float = 1.0, equality: bool = False, size_unit: float = 1.0) -> np.ndarray:
    """Algorithm 2 (paper Eq 14–15) via `mdlcap.theory.pruning.prune`. With the paper's raw N_k
    (size_unit=1), b=16, λ=2, γ=1 every layer sits at ρ_max (METHOD.md §3); `equality=True` is the
    non-degenerate variant ρ_k ∝ N_k q_k^{−γ} (clipped) that meets the target exactly."""
    q = _check_scores(q)
    N, t = _check_sizes_target(sizes, target, q.size)
    res = program.prune(q, N / size_unit, t, bits=bits, lam=lam, gamma=gamma, rho_max=rho_max,
                         equality=equality)
    return np.asarray(res.rho, dtype=float)


@torch.no_grad()
def outlier_ratios(model: nn.Module, batches: Iterable[dict], M: float = 5.0, progress: bool = True) -> np.ndarray:
    """OWL's layerwise outlier distribution on the dense model: the share of Wanda scores
    |W_ij|·‖X_j‖ in a layer (all its prunable linears together) above M × their mean."""
    out: list[float] = []

    def visit(i, layer, stats):
        metrics = [wanda_metric(m.weight, stats[n].sq).flatten() for n, m in prunable_linears(layer).items()]
        allm = torch.cat(metrics)
        out.append(float((allm > M * allm.mean()).float().mean()))

    layerwise(model, batches, visit, progress=progress, desc="OWL outliers")
    return np.array(out)

