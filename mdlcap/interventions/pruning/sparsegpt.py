"""SparseGPT (Frantar & Alistarh 2023): optimal-brain-surgeon pruning of one weight matrix with
reconstruction of the weights not pruned."""
from __future__ import annotations

import torch

from mdlcap.interventions.pruning.masks import check_nm, check_ratio, n_pruned, nm_mask, smallest_mask


@torch.no_grad()
def sparsegpt_prune_(weight: torch.Tensor, hessian: torch.Tensor, ratio: float, nm=None, *,
                     blocksize: int = 128, damp: float = 0.01) -> float:
    """SparseGPT (Frantar & Alistarh 2023) on one weight matrix, in place; returns the OBS
    error estimate Σ (w − q)² / U_jj² / 2 summed over pruned weights.

    H = 2XXᵀ/n is dampened by damp·mean(diag H) and inverted; the upper Cholesky factor U of
    H⁻¹ (H⁻¹ = UᵀU) gives, column by column, the OBS saliency w²/U_jj² and the update
    δW[:, j:] = −(w − q)/U_jj · U[j, j:] that spreads the pruning error of column j over the
    columns not yet visited (row j of U is column j's inverse Hessian after eliminating the
    columns before it). Columns
    are processed in blocks; updates to later blocks are applied lazily once per block. The
    mask is chosen per block (adaptive mask selection); the number pruned per block is set by
    cumulative rounding so that the whole matrix loses exactly round(ratio·numel) weights.
    """
    nm = check_nm(nm)
    ratio = check_ratio(ratio) if nm is None else nm[0] / nm[1]
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian: must be ({cols}, {cols}) for a weight with {cols} inputs, got {tuple(hessian.shape)}")
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize: must be a multiple of m={nm[1]}, got {blocksize}")
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0                  # inputs never active: any weight there is free
    H[dead, dead] = 1.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)    # H⁻¹ = UᵀU
    loss = torch.zeros((), device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if nm is None:
            # exact total: block b prunes round(ratio·end) − round(ratio·start) weights
            k = n_pruned(rows * i2, ratio) - n_pruned(rows * i1, ratio)
            mask1 = smallest_mask(W1 ** 2 / d.view(1, -1) ** 2, k)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for j in range(i2 - i1):
            w = W1[:, j]
            if nm is not None and j % nm[1] == 0:
                group = W1[:, j:j + nm[1]] ** 2 / d[j:j + nm[1]].view(1, -1) ** 2
                mask1[:, j:j + nm[1]] = nm_mask(group, *nm)
            q = w.clone()
            q[mask1[:, j]] = 0
            err = (w - q) / d[j]
            W1[:, j:] -= err.unsqueeze(1) * U1[j, j:].unsqueeze(0)   # OBS update of later columns
            W1[:, j] = q
            Err1[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]                           # lazy batch update
        loss += (Err1 ** 2).sum() / 2                               # Σ (w − q)² / U_jj² / 2
    weight.copy_(W.to(weight.dtype))
    return float(loss)

