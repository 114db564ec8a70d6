"""Kronecker factors of K-FAC (scores.kfac, METHOD.md §1): a factor Σ_r x_r x_rᵀ accumulated from
rows, and the eigendecompositions of many factors at once.

Few rows (n ≤ GRAM_ROWS · dim, e.g. the 512-wide MLP factors of the default model from 256 loss
tokens): the eigenpairs come from the n × n Gram matrix X Xᵀ = U S Uᵀ (eigenvectors Xᵀ U (S/c)^-1/2
of c·XᵀX, eigenvalues S; the remaining dim − r eigenvalues are exactly 0), an eigh of n³ instead
of dim³. scores.kfac.KfacFactors treats the missing part of the basis as eigenvalue 0.
"""
from __future__ import annotations

import torch

from mdlcap.scores import autograd as ag

GRAM_ROWS = 0.75            # a factor summed from n ≤ GRAM_ROWS·dim rows is eigendecomposed from its n×n Gram matrix


class Factor:
    """A Kronecker factor Σ_r x_r x_rᵀ (dim × dim). While it has few rows (n ≤ GRAM_ROWS·dim, one
    process) the rows are kept and `eig` works on the n × n Gram matrix X Xᵀ (same nonzero
    eigenvalues, eigenvectors Xᵀ U S^-1/2; the rest of the spectrum is exactly 0): an eigh of n³
    instead of dim³. Otherwise (or under torch.distributed, whose all-reduce needs the dense sum)
    the dense sum is accumulated."""

    def __init__(self, dim, dtype, device):
        self.dim, self.dtype, self.device = dim, dtype, device
        self.dense, self.rows, self.n = None, [], 0

    def add(self, x: torch.Tensor) -> None:
        if self.dense is None and self.n + x.shape[0] <= GRAM_ROWS * self.dim and ag.dist_group() is None:
            self.rows.append(x)
        else:
            self.fold().addmm_(x.T, x)
        self.n += x.shape[0]

    def fold(self) -> torch.Tensor:
        """The dense sum (rows folded in)."""
        if self.dense is None:
            self.dense = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)
        for r in self.rows:
            self.dense.addmm_(r.T, r)
        self.rows = []
        return self.dense

    def gram_eig(self, scale: float):
        """(eigenvalues, orthonormal eigenvectors dim × r) of scale·Σ x xᵀ for its r nonzero eigenvalues."""
        x = torch.cat(self.rows) if self.rows else torch.zeros(0, self.dim, dtype=self.dtype, device=self.device)
        s, u = torch.linalg.eigh((x @ x.T) * scale)
        keep = s > (s.max() if s.numel() else 0) * self.dim * torch.finfo(self.dtype).eps
        s, u = s[keep], u[:, keep]
        return s, (x.T @ u) / torch.sqrt(s / scale)


def eigh_batched(mats: dict[str, Factor], scale: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """key -> (eigenvalues ≥ 0, eigenvectors) of mats[key] · scale: dense factors by one batched eigh
    per size; few-row factors from their Gram matrix (eigenvectors of the nonzero eigenvalues only)."""
    by_size: dict[int, list[str]] = {}
    out = {}
    for k, m in mats.items():
        if m.dense is None:
            out[k] = m.gram_eig(scale)
        else:
            by_size.setdefault(m.dim, []).append(k)
    for keys in by_size.values():
        ev, q = torch.linalg.eigh(torch.stack([mats[k].fold() for k in keys]) * scale)
        for j, k in enumerate(keys):
            out[k] = (ev[j].clamp_min(0), q[j])
    return {k: out[k] for k in mats}
