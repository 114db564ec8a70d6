"""Pruning masks of one weight matrix: magnitude (Han et al. 2015), the Wanda metric and mask
(Sun et al. 2023), exact-count selection (whole matrix or per output row) and the n:m
semi-structured pattern (2:4). Every mask prunes exactly round(ratio · count) weights."""
from __future__ import annotations

import math

import torch


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """A pruning ratio as a float in [0, 1] (ValueError naming `name` otherwise)."""
    ratio = float(ratio)
    if not (0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"{name}: must lie in [0, 1], got {ratio}")
    return ratio


def check_nm(nm) -> tuple[int, int] | None:
    """An n:m pattern as (n, m) with 0 <= n <= m, m >= 1; None stays None (unstructured)."""
    if nm is None:
        return None
    n, m = (int(v) for v in nm)
    if not (m >= 1 and 0 <= n <= m):
        raise ValueError(f"nm: must be (n, m) with 0 <= n <= m and m >= 1, got {nm}")
    return n, m


def n_pruned(count: int, ratio: float) -> int:
    """Number of weights pruned from `count` at `ratio`: nearest integer (half rounds up)."""
    return int(math.floor(count * ratio + 0.5))


def smallest_mask(metric: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly k smallest entries of a tensor (ties at the threshold broken by
    position). kthvalue + comparison is several times faster than topk for k ~ numel/2."""
    flat = metric.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=metric.device)
    if k >= flat.numel():
        mask[:] = True
    elif k > 0:
        thr = torch.kthvalue(flat.cpu() if flat.device.type == "mps" else flat, k).values.to(flat.device)
        mask = flat < thr
        need = k - int(mask.sum())
        if need > 0:
            mask[torch.nonzero(flat == thr).flatten()[:need]] = True
    return mask.view_as(metric)


def _row_mask(metric: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per output row, mark exactly the round(ratio · in_features) smallest entries."""
    rows, cols = metric.shape
    k = n_pruned(cols, ratio)
    if k <= 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(metric, dtype=torch.bool)
    thr = torch.kthvalue(metric, k, dim=1, keepdim=True).values
    mask = metric < thr
    if bool((mask.sum(1) != k).any()):          # ties at a row's threshold: exact per-row selection
        mask = torch.zeros_like(metric, dtype=torch.bool)
        mask.scatter_(1, torch.topk(metric, k, dim=1, largest=False).indices, True)
    return mask


def nm_mask(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """n:m pattern: in every group of m consecutive input weights of a row, the n smallest."""
    rows, cols = metric.shape
    if cols % m:
        raise ValueError(f"nm: in_features {cols} is not a multiple of m={m}")
    g = metric.reshape(rows, cols // m, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    if n > 0:
        mask.scatter_(2, torch.topk(g, n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, ratio: float, nm=None) -> torch.Tensor:
    """Magnitude pruning (Han et al. 2015): the round(ratio·numel) smallest |W| of the matrix."""
    metric = weight.detach().abs().float()
    nm = check_nm(nm)
    if nm is not None:
        return nm_mask(metric, *nm)
    return smallest_mask(metric, n_pruned(metric.numel(), check_ratio(ratio)))


def wanda_metric(weight: torch.Tensor, in_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda score S_ij = |W_ij| · ‖X_j‖₂ (X_j: input feature j over all calibration tokens)."""
    return weight.detach().abs().float() * in_sq_norm.float().clamp_min(0).sqrt().view(1, -1)


def wanda_mask(weight: torch.Tensor, in_sq_norm: torch.Tensor, ratio: float, nm=None) -> torch.Tensor:
    """Wanda (Sun et al. 2023): smallest S_ij compared within each output row."""
    metric = wanda_metric(weight, in_sq_norm)
    nm = check_nm(nm)
    if nm is not None:
        return nm_mask(metric, *nm)
    return _row_mask(metric, check_ratio(ratio))

