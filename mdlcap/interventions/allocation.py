"""Per-layer expert counts for the allocation experiment (paper §3.3-3.4), every method spending
exactly the same integer budget `total` over the decoder layers.

    uniform(L, total)                 total / L per layer (the remainder to the top layers)
    mola_pyramid(L, total)            MoLA's fixed "triangle": 2/4/6/8 per quarter, scaled to total
    layerif(scores, total, exponent)  LayerIF's heuristic on influence scores (its public code)
    alphalora(model, total, exponent) AlphaLoRA: heavy-tail PL-alpha (Hill) of each layer's weights
    mdl(q, total, ...)                Algorithm 1 (METHOD.md §2; `mdlcap.theory.allocation.allocate_integer`)

`METHODS` is the one list of these names (`allocate` dispatches on it). The paper's Tables 4-5
are `mdlcap.study.paper`; notebook 03's result tables and verdict are `mdlcap.study.allocation`.

How the paper's α, β, γ and budget scaling (its Table 3) enter our integer program
----------------------------------------------------------------------------------
All decoder layers of Mistral/Gemma (and of our default model) have the same shapes, so one LoRA
expert costs the same FLOPs c at every layer. We measure cost in "standard layers" as the paper
does: c_k = s (the budget scaling, 0.0276 for Mistral-7B) and B = s * total, so the constraint
Σ c_k n_k <= B is Σ n_k <= total. The literal program then reads

    min Σ α s n_k - β q_k^γ log(1 + n_k),   Σ n_k <= total,  n_k >= n_min        (Eq 11)

and its unconstrained optimum is n_k = β q_k^γ / (α s) - 1 (Eq 12). Whether that spends the
budget depends on K and q: with α = 1, β = 0.9, γ = 0.5, s = 0.0276 the sum is at most
0.9 sqrt(K)/0.0276 - K (equality at uniform q), i.e. 84 > 40 for our K = 8 (binds) but only
152.6 < 160 for Mistral's K = 32: the continuous program leaves budget unspent there (the integer
greedy happens to reach 5 per layer = 160 at exactly uniform q, and falls short as q spreads).
The comparison with LayerIF is at an equal budget, so `mdl` solves the budget as an equality
(Σ n_k = total; `allocate_integer(..., spend_all=True)`). With equal costs the linear term is then the constant α B, so α and s drop out and
β only scales the objective: the counts depend on q, γ and n_min alone, and they coincide with
the literal program's whenever its budget binds (the greedy order β q^γ Δlog(1+n) - α c is the same
for every α when all c_k are equal). `mdl_literal` returns the literal program's counts so a
notebook can show whether, and by how much, it under-spends.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdlcap.scores.registry import SCORE_METHODS
from mdlcap.theory.allocation import allocate_integer

MOLA_PATTERN = (2, 4, 6, 8)
# LayerIF's exponent on (max - s) per pool, as its allocator notebook runs `scale_values_final`
# (github.com/HadiAskari/Expert_Allocation, LayerIF_Computation/expert_allocator.ipynb): 2 on the
# sums over all samples ("All IF values"), 3 on the sums over beneficial samples ("Only positive").
LAYERIF_EXPONENTS = {"layerif_all": 2.0, "layerif_pos": 3.0}
BASELINES = ("uniform", "mola", "alphalora", "layerif_all", "layerif_pos")
# The one list of allocation method names (`allocate` dispatches on them; params validate against
# them): the baselines, then Algorithm 1 on the q of every scores.csv method ("mdl_<score method>").
METHODS = BASELINES + tuple(f"mdl_{m}" for m in SCORE_METHODS)


def _check_total(total: int, n_layers: int, n_min: int = 0) -> int:
    if isinstance(total, bool) or int(total) != total:
        raise ValueError(f"total: must be an integer, got {total!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers: must be >= 1, got {n_layers}")
    if n_min < 0:
        raise ValueError(f"n_min: must be >= 0, got {n_min}")
    if total < n_min * n_layers:
        raise ValueError(f"total: must be >= n_min * n_layers = {n_min * n_layers}, got {total}")
    return int(total)


def _as_vector(x, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    if v.size == 0:
        raise ValueError(f"{name}: must not be empty")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: must be finite (no NaN/inf), got {v}")
    return v


def largest_remainder(shares, total: int, n_min: int = 0) -> np.ndarray:
    """Integers summing to `total`, each >= n_min, proportional to `shares` (>= 0): give n_min to
    every entry, split the rest in proportion, floor, then hand the leftover units to the largest
    fractional parts (ties to the lower index)."""
    w = _as_vector(shares, "shares")
    if np.any(w < 0):
        raise ValueError(f"shares: must be >= 0, got {w}")
    total = _check_total(total, w.size, n_min)
    free = total - n_min * w.size
    w = w if w.sum() > 0 else np.ones_like(w)
    frac = w / w.sum() * free
    counts = np.floor(frac).astype(int)
    left = free - counts.sum()
    order = np.argsort(-(frac - counts), kind="stable")
    counts[order[:left]] += 1
    return counts + n_min


def uniform(n_layers: int, total: int) -> np.ndarray:
    """total // L per layer; the remainder goes one each to the top layers (MoLA: higher layers
    need more experts)."""
    total = _check_total(total, n_layers)
    counts = np.full(n_layers, total // n_layers, dtype=int)
    r = total - counts.sum()
    if r:
        counts[n_layers - r:] += 1
    return counts


def mola_pyramid(n_layers: int, total: int, pattern: Sequence[int] = MOLA_PATTERN, n_min: int = 1) -> np.ndarray:
    """MoLA's "triangle" (Gao et al. 2024): experts 2/4/6/8 on the four quarters of the layers
    (160 for 32 layers), scaled to `total` with largest-remainder rounding. Layer k is in quarter
    floor(len(pattern) * k / L)."""
    total = _check_total(total, n_layers, n_min)
    pat = np.asarray(pattern, dtype=float)
    if pat.size == 0 or np.any(pat <= 0):
        raise ValueError(f"pattern: must be positive numbers, got {list(pattern)}")
    raw = pat[(np.arange(n_layers) * pat.size) // n_layers]
    if raw.sum() == total and np.all(raw == np.round(raw)) and raw.min() >= n_min:
        return raw.astype(int)        # e.g. 8 layers, 40 experts: exactly 2,2,4,4,6,6,8,8
    return _scaled_with_floor(raw, total, n_min)


def _scaled_with_floor(raw: np.ndarray, total: int, n_min: int) -> np.ndarray:
    """Proportional to raw (not to raw - n_min), clipped at n_min, rounding that keeps the sum."""
    x = raw / raw.sum() * total
    counts = np.maximum(np.floor(x).astype(int), n_min)
    while counts.sum() > total:            # take back from the largest over-allocated entries
        over = np.where(counts > n_min, counts - x, -np.inf)
        counts[int(np.argmax(over))] -= 1
    left = total - counts.sum()
    order = np.argsort(-(x - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


def layerif(scores, total: int, exponent: float = 3.0) -> np.ndarray:
    """LayerIF's expert-allocation heuristic, as its public code does it (Askari et al. 2025,
    github.com/HadiAskari/Expert_Allocation, `scale_values_final`; re-implemented, not copied):

      1. invert the layer influence sums: v_k = max_j s_j - s_k  (more negative influence = more
         beneficial training data through that layer = more experts; the top-scoring layer gets 0);
         if all v_k are 0 they become 1e-6 (uniform); here uniform weights too, and also when
         every v_k^exponent underflows to 0 (tiny score gaps; the reference would divide 0 by 0);
      2. raise to a power: w_k = v_k^exponent  (`LAYERIF_EXPONENTS`: 2 for All, 3 for +ve);
      3. scale to the total minus one per layer: f_k = w_k / Σ w * (total - L);
      4. floor and add one per layer: n_k = floor(f_k) + 1;
      5. hand the remaining total - Σ n_k units to the largest fractional parts f_k - floor(f_k).

    Only differences s_j - s_k enter, and then only their ratios: the counts do not change when a
    constant is added to every score or every score is multiplied by a positive number.
    Ties in step 5 go to the higher index, as the reference's reversed argsort does."""
    s = _as_vector(scores, "scores")
    if exponent <= 0:
        raise ValueError(f"exponent: must be > 0, got {exponent}")
    total = _check_total(total, s.size, n_min=1)
    w = (s.max() - s) ** exponent
    if not w.sum() > 0:              # all v_k = 0 (the reference: 1e-6 each), or v**exponent underflows
        w = np.ones_like(w)
    f = w / w.sum() * (total - s.size)
    counts = np.floor(f).astype(int) + 1
    left = total - counts.sum()
    order = np.argsort(f - np.floor(f), kind="stable")[::-1]
    counts[order[:left]] += 1
    return counts


# --------------------------------------------------------------------------- AlphaLoRA
def pl_alpha_hill(weight, bins: int = 100) -> float:
    """PL_Alpha_Hill of one weight matrix as AlphaLoRA computes it (Qing et al. 2024,
    github.com/morelife2017/alphalora, expert_number.py `fix_finger`, the same estimator as
    AlphaPruning's and WeightWatcher's "xmin_peak"): the power-law exponent α of the empirical
    spectral density of WᵀW, larger α = lighter tail = less well trained layer (more experts).

      eigenvalues λ = svdvals(W)², ascending, none filtered (the reference's filter_zeros=False);
      peak: a histogram of log10 λ with `bins` equal bins over [min, max]; xmin2 = 10^(left edge of
            the fullest bin, the first one on ties);
      window: candidate x_min = λ_i (all but the largest) with log10(0.95·xmin2) <= λ_i <= 1.5·xmin2,
            the lower bound compared with λ itself, not log10 λ, exactly as the reference does (so
            it rarely excludes anything; the window is in effect λ_i <= 1.5·xmin2);
      Hill at each candidate: α_i = 1 + n_i / Σ_{j>=i} log(λ_j / λ_i), n_i = N - i;
      Kolmogorov–Smirnov distance D_i = max_j |1 - (λ_j/λ_i)^(1-α_i) - (j-i)/n_i| when α_i > 1,
            else 1 (the reference's initial value); the α with the smallest D, the first on ties.

    Deviation: where no candidate gives a fit (every D_i = 1: the window holds no candidate with
    α > 1) the reference returns the α array's first entry (0 when λ_0 lies outside the window);
    this returns 1.0, the reference's own default for "no valid alpha", so a degenerate matrix
    cannot give α = 0 (which AlphaLoRA's α^2.5 would turn into a zero share). Computed in float64
    from float32 singular values (the reference keeps float32 throughout).
    """
    import torch

    if not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"bins: must be an integer >= 1, got {bins!r}")
    w = torch.as_tensor(weight).detach()
    if w.dim() != 2:
        raise ValueError(f"weight: must be a matrix, got shape {tuple(w.shape)}")
    ev = torch.sort(torch.linalg.svdvals(w.float()).double() ** 2).values
    n_all = ev.numel()
    if n_all < 2 or not bool(ev[0] > 0):
        ev = ev[ev > 0]
        n_all = ev.numel()
        if n_all < 2:
            return 1.0
    logs = torch.log(ev)
    lg10 = torch.log10(ev)
    lo, hi = float(lg10.min()), float(lg10.max())
    counts = torch.histc(lg10, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    xmin2 = 10.0 ** float(edges[int(torch.argmax(counts))])
    w_lo, w_hi = float(np.log10(0.95 * xmin2)), 1.5 * xmin2
    best_alpha, best_d = None, 1.0
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])          # Σ_{j>=i} log λ_j
    for i in range(n_all - 1):
        x = float(ev[i])
        if x < w_lo:
            continue
        if x > w_hi:
            break
        n = n_all - i
        denom = float(suffix[i]) - n * float(logs[i])
        if denom <= 0:
            continue
        alpha = 1.0 + n / denom
        if alpha <= 1:
            continue
        seq = torch.arange(n, dtype=torch.float64)
        d = float(torch.max(torch.abs(1.0 - (ev[i:] / x) ** (1.0 - alpha) - seq / n)))
        if d < best_d:
            best_d, best_alpha = d, alpha
    return 1.0 if best_alpha is None else float(best_alpha)


def layer_alphas(model) -> np.ndarray:
    """Mean PL-alpha over the linear projections of each decoder layer (AlphaLoRA's layer quality)."""
    from torch import nn

    from mdlcap.models import decoder_layers
    from mdlcap.interventions.moe import LoraMoELinear

    out = []
    for layer in decoder_layers(model):
        a = []
        for m in layer.modules():
            if isinstance(m, LoraMoELinear):
                continue
            if isinstance(m, nn.Linear):
                a.append(pl_alpha_hill(m.weight))
        out.append(float(np.mean(a)) if a else 1.0)
    return np.asarray(out)


def alphalora(alphas, total: int, exponent: float = 2.5, n_min: int = 1) -> np.ndarray:
    """AlphaLoRA (Qing et al. 2024): experts ∝ α_k^exponent (its default exponent 2.5), rounded to
    integers >= n_min that sum to `total`."""
    a = _as_vector(alphas, "alphas")
    if np.any(a <= 0):
        raise ValueError(f"alphas: must be > 0, got {a}")
    total = _check_total(total, a.size, n_min)
    return _scaled_with_floor(a ** exponent, total, n_min)


# --------------------------------------------------------------------------- MDL (Algorithm 1)
def _mdl_inputs(q, total, costs, budget_scaling, n_min):
    qv = _as_vector(q, "q")
    if np.any(qv < 0) or qv.sum() <= 0:
        raise ValueError(f"q: must be >= 0 and not all zero, got {qv}")
    qv = qv / qv.sum()
    total = _check_total(total, qv.size, n_min)
    if budget_scaling <= 0:
        raise ValueError(f"budget_scaling: must be > 0, got {budget_scaling}")
    c = np.ones_like(qv) if costs is None else _as_vector(costs, "costs")
    if c.size != qv.size:
        raise ValueError(f"costs: needs one entry per layer ({qv.size}), got {c.size}")
    if np.any(c <= 0):
        raise ValueError(f"costs: must be > 0, got {c}")
    c = c / c.min()                         # in units of the cheapest layer's expert
    return qv, total, budget_scaling * c, budget_scaling * total


def mdl(q, total: int, *, alpha: float = 1.0, beta: float = 0.9, gamma: float = 0.5, n_min: int = 1,
        costs=None, budget_scaling: float = 0.0276) -> np.ndarray:
    """Algorithm 1 with the budget spent (Σ c_k n_k = B, see the module docstring): the exact integer
    optimum (equal costs) of Σ β q_k^γ log(1 + n_k) under the budget, through
    `mdlcap.theory.allocation.allocate_integer(..., spend_all=True)` (the linear price α Σ c n is the
    constant α B once the whole budget is spent, so it does not move the counts)."""
    qv, total, c, budget = _mdl_inputs(q, total, costs, budget_scaling, n_min)
    res = allocate_integer(qv, c, budget, alpha=alpha, beta=beta, gamma=gamma, n_min=n_min, spend_all=True)
    counts = np.asarray(res.counts, dtype=int)
    if costs is None and counts.sum() != total:
        raise RuntimeError(f"allocate_integer spent {counts.sum()} of {total} experts with spend_all=True")
    return counts


def mdl_literal(q, total: int, *, alpha: float = 1.0, beta: float = 0.9, gamma: float = 0.5,
                budget_scaling: float = 0.0276, n_min: int = 1, costs=None) -> np.ndarray:
    """The literal inequality program (Eq 11) with the paper's constants: may spend less than
    `total` when the budget does not bind."""
    qv, total, c, budget = _mdl_inputs(q, total, costs, budget_scaling, n_min)
    res = allocate_integer(qv, c, budget, alpha=alpha, beta=beta, gamma=gamma, n_min=n_min)
    return np.asarray(res.counts, dtype=int)


def literal_unconstrained_total(q, *, alpha: float = 1.0, beta: float = 0.9, gamma: float = 0.5,
                                budget_scaling: float = 0.0276) -> float:
    """Σ_k max(0, β q_k^γ / (α s) - 1): experts the literal program wants before the budget (Eq 12
    at μ = 0); the budget binds iff this exceeds `total`."""
    qv = _as_vector(q, "q")
    if np.any(qv < 0) or qv.sum() <= 0:
        raise ValueError(f"q: must be >= 0 and not all zero, got {qv}")
    qv = qv / qv.sum()
    return float(np.maximum(0.0, beta * qv ** gamma / (alpha * budget_scaling) - 1.0).sum())


# --------------------------------------------------------------------------- dispatch
def score_vector(scores, task: str, method: str, column: str = "score") -> np.ndarray | None:
    """Per-layer `column` of notebook 02's scores.csv (a frame with task, method, layer, score, q)
    for (task, method), layer order; None if that pair is absent."""
    sel = scores[(scores["task"] == task) & (scores["method"] == method)].sort_values("layer")
    return None if sel.empty else sel[column].to_numpy(dtype=float)


def mdl_scores(scores, task: str, method: str) -> np.ndarray | None:
    """The q Algorithm 1 takes for (task, score method) from scores.csv, or None when that pair is
    absent or no layer has a positive score (q is NaN there: Algorithm 1 has nothing to weigh)."""
    q = score_vector(scores, task, method, "q")
    return None if q is None or not np.all(np.isfinite(q)) else q


def allocate(method: str, *, n_layers: int, total: int, params, scores=None, task: str | None = None,
             alphas=None) -> np.ndarray | None:
    """Expert counts (or ranks) for one method; `params` is the allocation section.

    uniform, mola, alphalora (needs `alphas`), layerif_all / layerif_pos (LayerIF's heuristic on the
    raw layer influence scores of scores.csv), mdl_<score method> (Algorithm 1 on that method's q,
    e.g. mdl_layerif_pos = the paper's MDL-with-LayerIF-scores, mdl_cg_ggn = ζ² by CG on the GGN).
    Returns None when the scores the method needs are absent from `scores`, and for mdl_* when
    no layer of the task has a positive score (q is NaN there: Algorithm 1 has nothing to weigh;
    LayerIF's heuristic, which inverts max s − s, still allocates)."""
    if method not in METHODS:
        raise ValueError(f"method: unknown allocation method '{method}'; allowed {list(METHODS)}")
    if method == "uniform":
        return uniform(n_layers, total)
    if method == "mola":
        return mola_pyramid(n_layers, total, n_min=max(params.n_min, 1))
    if method == "alphalora":
        return None if alphas is None else alphalora(alphas, total, exponent=params.alphalora_exponent,
                                                      n_min=max(params.n_min, 1))
    if scores is None or task is None:
        raise ValueError(f"scores: method '{method}' needs scores.csv and a task")
    if method in LAYERIF_EXPONENTS:
        s = score_vector(scores, task, method, "score")
        return None if s is None else layerif(layerif_raw_influence(s), total, exponent=LAYERIF_EXPONENTS[method])
    q = mdl_scores(scores, task, method[4:])                # mdl_<score method>
    if q is None:
        return None
    return mdl(q, total, alpha=params.alpha, beta=params.beta, gamma=params.gamma, n_min=params.n_min,
               budget_scaling=params.budget_scaling)


def layerif_raw_influence(score) -> np.ndarray:
    """LayerIF's input (signed layer influence sums, more negative = more beneficial) from the
    scores.csv `score` of a layerif method. See `LAYERIF_SCORE_SIGN`."""
    return LAYERIF_SCORE_SIGN * np.asarray(score, dtype=float)


# scores.csv stores LayerIF scores so that larger = more capacity (q >= 0 on the simplex); LayerIF's
# heuristic takes the signed influence sums where larger (less negative) = fewer experts, so the
# raw input is the negated score, i.e. exactly Σ_i I_k(i) (no offset is stored; `layerif` only uses
# max(s) - s, so an offset would be moot anyway).
LAYERIF_SCORE_SIGN = -1.0
