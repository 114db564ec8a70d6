"""LayerIF (Askari et al. 2025): influence of each training sample on the validation loss,
restricted to one layer, with DataInf's closed-form inverse (Kwon et al. 2023). These are the
scores the paper's experiments fed into its programs in place of ζ² (METHOD.md §1).

DataInf works per parameter tensor t (its `compute_hvp_proposed` loops over weight names). With
per-sample training gradients g_{i,t} (of sample i's own loss) and the validation gradient
v_t = (1/n_val) Σ_m ∇_t ℓ_m (the mean of per-sample validation gradients), the influence of
up-weighting sample i is

    I_t(i) = − v_tᵀ (F_t + λ_t I)⁻¹ g_{i,t},       F_t = (1/n) Σ_j g_{j,t} g_{j,t}ᵀ       (paper Eq 4–5)

and DataInf swaps the inverse of the average for the average of rank-one inverses (Sherman–Morrison):

    (F_t + λI)⁻¹ ≈ (1/n) Σ_j (λI + g_j g_jᵀ)⁻¹ = (1/(nλ)) Σ_j (I − g_j g_jᵀ / (λ + ‖g_j‖²))

so  I_t(i) = −(1/λ_t) [ v_tᵀg_{i,t} − w_tᵀg_{i,t} ],   w_t = (1/n) Σ_j g_{j,t} (v_tᵀg_{j,t})/(λ_t + ‖g_{j,t}‖²),
with DataInf's per-tensor damping λ_t = c · mean_j (‖g_{j,t}‖² / d_t), c = 0.1 (the reference writes
`torch.mean(S) / lambda_const_param` with S_j = mean(g_j²) and lambda_const_param = 10: the mean is
over the tensor's d_t entries, so λ_t is 0.1 · mean_j ‖g_{j,t}‖² / d_t). A block (decoder layer) k
sums its tensors, as LayerIF's `compute_IF` does: I_k(i) = Σ_{t∈k} I_t(i).

Negative I_k(i) = up-weighting sample i lowers the validation loss (beneficial). Layer sums:
  "all":  Σ_i I_k(i) over all training samples;
  "pos":  the sum over beneficial samples only (the paper's "+ve" pool; LayerIF's allocator drops
          the samples whose influence is > 0).
scores.csv stores the signed −Σ (`Influence.layer_scores`), larger = more beneficial data through
the layer; no offset is added, so a layer whose data is harmful on balance has a negative score
(the programs map it to q = 0, `mdlcap.theory.programs`; LayerIF's heuristic uses max − s, which no
offset changes).

Which tensors: `mdlcap.study.layerif` runs this on the LoRA A/B tensors of a LoRA fine-tuned on the
task (DataInf's and the issue's setting). Called on a base model with `blocks=None` it scores the
full weights of every decoder layer, per tensor: a labelled extra (LayerIF's public
`compute_gradient` takes the base model's full self-attention weights, per tensor).
`per_tensor=False` treats each block as one tensor (the earlier variant of this module).

Remaining deviations: the reference sums the influence over validation samples (a factor n_val
on every score, immaterial to the pools, the heuristic and q); the loss is the study's answer-only
task loss (the references use labels = input_ids, the whole sequence).

Practical choice: per-sample gradients are kept in memory when they fit `store_limit_bytes`
(one pass); otherwise three streaming passes compute vᵀg_j and ‖g_j‖² (pass 1), w (pass 2) and
wᵀg_i (pass 3), so memory is one model-sized vector whatever n is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from mdlcap.scores.autograd import (acc_dtype, allreduce_, call_loss, check_batches, global_count, grads,
                                    model_device, progress_off, scoring_mode, split_samples, to_device)
from mdlcap.scores.blocks import resolve_blocks

POOLS = ("all", "pos")


@dataclass
class Influence:
    """Per-sample, per-layer influence I_k(i) (rows = this process's training samples)."""
    values: np.ndarray                     # (n_train, K)
    block_names: list[str]
    damping: np.ndarray                    # λ_t per tensor (block order, then tensor order)
    diagnostics: dict = field(default_factory=dict)

    def layer_sums(self, pool: str = "all") -> dict[str, float]:
        """Σ_i I_k(i) over the pool ("all" or "pos" = beneficial samples, I_k(i) < 0), summed
        over processes when torch.distributed is up."""
        if pool not in POOLS:
            raise ValueError(f"pool: must be 'all' or 'pos', got {pool!r}")
        v = self.values if pool == "all" else np.minimum(self.values, 0.0)
        s = torch.tensor(v.sum(0), dtype=torch.float64)
        allreduce_([s])
        return dict(zip(self.block_names, s.tolist()))

    def layer_scores(self, pool: str = "all") -> dict[str, float]:
        """Scores for scores.csv: the signed −Σ_i I_k(i) (more beneficial influence = larger), with no
        offset. "pos" scores are ≥ 0 by construction; "all" scores are negative where a layer's
        data is harmful on balance."""
        return {k: -v for k, v in self.layer_sums(pool).items()}


def _sample_stream(batches, device):
    for b in batches:
        for s in split_samples(to_device(b, device)):
            yield s


def layer_influence(model, train_batches, val_batches, *, blocks=None, loss_fn=None, damping_scale: float = 0.1,
                    per_tensor: bool = True, progress: bool = True,
                    store_limit_bytes: int = 256 * 2**20) -> Influence:
    """LayerIF influence I_k(i) for every training sample i and block k (DataInf inverse per tensor,
    summed over the block's tensors).

    train_batches / val_batches: dict batches as for `registry.layer_gains`; both are split into
    single samples. blocks: as `resolve_blocks` (None: one block per decoder layer), or a mapping
    name -> parameter list (e.g. a layer's LoRA tensors). damping_scale: c in
    λ_t = c · mean_j ‖g_{j,t}‖² / d_t (DataInf: 0.1). per_tensor=False: one λ and one
    Sherman–Morrison step per block instead of per tensor.
    """
    if not (isinstance(damping_scale, (int, float)) and damping_scale > 0):
        raise ValueError(f"damping_scale: must be > 0, got {damping_scale!r}")
    train_batches = check_batches(train_batches)
    val_batches = check_batches(val_batches)
    blk = resolve_blocks(model, blocks)
    names = list(blk)
    params = [p for ps in blk.values() for p in ps]
    if not params:
        raise ValueError("blocks: no parameters to score")
    dtype = acc_dtype(params)
    device = model_device(model)
    # groups: the tensors DataInf inverts separately, each with the block it belongs to
    bounds = np.cumsum([0] + [len(ps) for ps in blk.values()])
    if per_tensor:
        groups = [(k, [i]) for k in range(len(names)) for i in range(bounds[k], bounds[k + 1])]
    else:
        groups = [(k, list(range(bounds[k], bounds[k + 1]))) for k in range(len(names))]
    owner = np.array([k for k, _ in groups])
    sizes = np.array([sum(params[i].numel() for i in idx) for _, idx in groups], dtype=float)

    def per_group(gs):
        return [torch.cat([gs[i].reshape(-1).to(dtype) for i in idx]) for _, idx in groups]

    n_local = sum(len(split_samples(b)) for b in train_batches)
    store = n_local * int(sizes.sum()) * torch.finfo(dtype).bits // 8 <= store_limit_bytes
    stored: list[list[torch.Tensor]] = []
    T = len(groups)
    vg = np.zeros((n_local, T))
    gg = np.zeros((n_local, T))
    with scoring_mode(model, params):
        def sample_grads(batches, desc, total):
            for s in tqdm(_sample_stream(batches, device), total=total, desc=desc, leave=False,
                          disable=progress_off(progress)):
                loss, _ = call_loss(model, s, loss_fn)
                yield per_group(grads(loss, params))

        # v: mean of per-sample validation gradients (DataInf's compute_val_grad_avg)
        n_val_local = sum(len(split_samples(b)) for b in val_batches)
        v = [torch.zeros(int(d), dtype=dtype, device=device) for d in sizes]
        for g in sample_grads(val_batches, "layerif validation", n_val_local):
            for a, b in zip(v, g):
                a += b
        allreduce_(v)
        n_val = global_count(n_val_local, device)
        v = [a / n_val for a in v]
        # pass 1: vᵀg_j and ‖g_j‖² per tensor
        for i, g in enumerate(sample_grads(train_batches, "layerif pass 1", n_local)):
            vg[i] = [torch.dot(a, b).item() for a, b in zip(v, g)]
            gg[i] = [torch.dot(a, a).item() for a in g]
            if store:
                stored.append(g)
        n = global_count(n_local, device)
        tot = torch.tensor(gg.sum(0), dtype=torch.float64)
        allreduce_([tot])
        lam = damping_scale * tot.numpy() / n / sizes                             # DataInf's λ_t
        coef = vg / (lam + gg)                                                   # (vᵀg_j)/(λ + ‖g_j‖²)
        # pass 2: w_t = (1/n) Σ_j coef_jt g_jt
        w = [torch.zeros_like(a) for a in v]
        it = iter(stored) if store else sample_grads(train_batches, "layerif pass 2", n_local)
        for j, g in enumerate(it):
            for t in range(T):
                w[t] += float(coef[j, t]) * g[t]
        allreduce_(w)
        w = [a / n for a in w]
        # pass 3: wᵀg_i
        wg = np.zeros_like(vg)
        it = iter(stored) if store else sample_grads(train_batches, "layerif pass 3", n_local)
        for i, g in enumerate(it):
            wg[i] = [torch.dot(a, b).item() for a, b in zip(w, g)]
    per_t = -(vg - wg) / lam                                                     # I_t(i), Sherman–Morrison
    values = np.zeros((n_local, len(names)))
    np.add.at(values.T, owner, per_t.T)                                          # I_k(i) = Σ_{t∈k} I_t(i)
    backward = n_val_local + n_local * (1 if store else 3)                       # per-sample forward+backward
    return Influence(values=values, block_names=names, damping=lam,
                     diagnostics={"n_train": n, "n_val": n_val, "stored_gradients": store,
                                  "damping_scale": damping_scale, "per_tensor": per_tensor,
                                  "n_tensors": T, "block_sizes": [int(sizes[owner == k].sum()) for k in range(len(names))],
                                  "sample_backward_passes": backward})
