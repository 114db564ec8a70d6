"""LayerIF (Askari et al. 2025): influence of each training sample on the validation loss,
restricted to one layer, with DataInf's closed-form inverse (Kwon et al. 2023). These are the
scores the paper's experiments fed into its programs in place of ζ² (METHOD.md §1).

For layer k with per-sample training gradients g_i (of sample i's own loss, w.r.t. θ_k) and the
validation-loss gradient v = ∇_{θ_k} L_val, the influence of up-weighting sample i is

    I_k(i) = − vᵀ (F_k + λ_k I)⁻¹ g_i,          F_k = (1/n) Σ_j g_j g_jᵀ            (paper Eq 4–5)

DataInf swaps the inverse of the average for the average of rank-one inverses (Sherman–Morrison):

    (F_k + λI)⁻¹ ≈ (1/n) Σ_j (λI + g_j g_jᵀ)⁻¹ = (1/(nλ)) Σ_j (I − g_j g_jᵀ / (λ + ‖g_j‖²))

so  I_k(i) = −(1/λ_k) [ vᵀg_i − wᵀg_i ],   w = (1/n) Σ_j g_j (vᵀg_j)/(λ_k + ‖g_j‖²),
with DataInf's damping λ_k = c · mean_j ‖g_j‖² / d_k (c = 0.1).

Negative I_k(i) = up-weighting sample i lowers the validation loss (beneficial). Layer scores:
  "all":  the sum of I_k(i) over all training samples;
  "pos":  the sum over beneficial samples only (the paper's "+ve" pool).
Both are signed sums, more negative = more beneficial data flows through the layer. scores.csv
stores −sum (see `layer_scores`), so larger = more capacity.

Practical choice: full-layer per-sample gradients are never stored. Three streaming passes over
the training samples compute vᵀg_j and ‖g_j‖² (pass 1), w (pass 2) and wᵀg_i (pass 3), so
memory is one layer-sized vector per layer whatever n is; the cost is 3 per-sample
forward+backward passes (with `store_limit_bytes` large enough the gradients are kept and
one pass suffices).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from mdlcap.scores.autograd import (acc_dtype, allreduce_, block_gradients, call_loss, check_batches, flat,
                                    global_count, grads, model_device, progress_off, scoring_mode, split_samples,
                                    to_device)
from mdlcap.scores.blocks import resolve_blocks


@dataclass
class Influence:
    """Per-sample, per-layer influence I_k(i) (rows = this process's training samples)."""
    values: np.ndarray                     # (n_train, K)
    block_names: list[str]
    damping: np.ndarray                    # λ_k per block
    diagnostics: dict = field(default_factory=dict)

    def layer_sums(self, pool: str = "all") -> dict[str, float]:
        """Σ_i I_k(i) over the pool ("all" or "pos" = beneficial samples, I_k(i) < 0), summed
        over processes when torch.distributed is up."""
        if pool not in ("all", "pos"):
            raise ValueError(f"pool: must be 'all' or 'pos', got {pool!r}")
        v = self.values if pool == "all" else np.minimum(self.values, 0.0)
        s = torch.tensor(v.sum(0), dtype=torch.float64)
        allreduce_([s])
        return dict(zip(self.block_names, s.tolist()))

    def layer_scores(self, pool: str = "all") -> dict[str, float]:
        """Capacity scores ≥ 0 for scores.csv: −Σ_i I_k(i) (more beneficial influence = larger),
        shifted up by the most negative value if any layer's sum is harmful (> 0), so that the
        scores lie on a simplex after normalisation; the shift does not change LayerIF's
        heuristic (it uses max − s) nor the order of layers."""
        neg = -np.array(list(self.layer_sums(pool).values()))
        if neg.min() < 0:
            neg = neg - neg.min()
        return dict(zip(self.block_names, neg.tolist()))


def _sample_stream(batches, device):
    for b in batches:
        for s in split_samples(to_device(b, device)):
            yield s


def layer_influence(model, train_batches, val_batches, *, blocks=None, loss_fn=None, damping_scale: float = 0.1,
                    progress: bool = True, store_limit_bytes: int = 256 * 2**20) -> Influence:
    """LayerIF influence I_k(i) for every training sample i and block k (DataInf inverse).

    train_batches / val_batches: dict batches as for `registry.layer_gains`; training batches are
    split into single samples. damping_scale: c in λ_k = c · mean‖g_j‖² / d_k (DataInf uses 0.1).
    """
    if not (isinstance(damping_scale, (int, float)) and damping_scale > 0):
        raise ValueError(f"damping_scale: must be > 0, got {damping_scale!r}")
    train_batches = check_batches(train_batches)
    val_batches = check_batches(val_batches)
    blk = resolve_blocks(model, blocks)
    names = list(blk)
    params = [p for ps in blk.values() for p in ps]
    sizes = [sum(p.numel() for p in ps) for ps in blk.values()]
    dtype = acc_dtype(params)
    device = model_device(model)
    bounds = np.cumsum([0] + [len(ps) for ps in blk.values()])

    def per_block(gs):                       # flat gradient per block
        return [flat(gs[bounds[k]:bounds[k + 1]], dtype) for k in range(len(names))]

    v = per_block(block_gradients(model, val_batches, params, loss_fn))         # ∇ L_val per block
    n_local = sum(len(split_samples(b)) for b in train_batches)
    store = n_local * sum(sizes) * torch.finfo(dtype).bits // 8 <= store_limit_bytes
    stored: list[list[torch.Tensor]] = []
    vg = np.zeros((n_local, len(names)))
    gg = np.zeros((n_local, len(names)))
    with scoring_mode(model, params):
        def sample_grads(desc):
            for s in tqdm(_sample_stream(train_batches, device), total=n_local, desc=desc, leave=False,
                          disable=progress_off(progress)):
                loss, _ = call_loss(model, s, loss_fn)
                yield per_block(grads(loss, params))

        # pass 1: vᵀg_j and ‖g_j‖²
        for i, g in enumerate(sample_grads("layerif pass 1")):
            vg[i] = [torch.dot(a, b).item() for a, b in zip(v, g)]
            gg[i] = [torch.dot(a, a).item() for a in g]
            if store:
                stored.append(g)
        n = global_count(n_local, device)
        tot = torch.tensor(gg.sum(0), dtype=torch.float64)
        allreduce_([tot])
        lam = damping_scale * tot.numpy() / n / np.array(sizes, dtype=float)     # DataInf's λ_k
        coef = vg / (lam + gg)                                                   # (vᵀg_j)/(λ + ‖g_j‖²)
        # pass 2: w_k = (1/n) Σ_j coef_jk g_j
        w = [torch.zeros_like(a) for a in v]
        it = iter(stored) if store else sample_grads("layerif pass 2")
        for j, g in enumerate(it):
            for k in range(len(names)):
                w[k] += float(coef[j, k]) * g[k]
        allreduce_(w)
        w = [a / n for a in w]
        # pass 3: wᵀg_i
        wg = np.zeros_like(vg)
        it = iter(stored) if store else sample_grads("layerif pass 3")
        for i, g in enumerate(it):
            wg[i] = [torch.dot(a, b).item() for a, b in zip(w, g)]
    values = -(vg - wg) / lam                                                    # I_k(i), Sherman–Morrison
    return Influence(values=values, block_names=names, damping=lam,
                     diagnostics={"n_train": n, "stored_gradients": store, "damping_scale": damping_scale,
                                  "block_sizes": sizes})
