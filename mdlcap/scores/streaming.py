"""Streaming the layer gains through groups of blocks (METHOD.md §1, §6): a scoring method's
working memory is that of the blocks it scores at once, so `registry.layer_gains` runs it on one
group of consecutive blocks at a time and its peak memory grows with one group, not with the model.

    groups = block_groups(model, blocks, "kfac", batches, max_group_bytes=8 * 2**30)
    with grad_only_for(model, params_of(groups[0])): ...      # autograd records only what that group needs

Why grouping changes no score: g_k and H_kk are those of the mean loss over all batches whatever
else is scored alongside block k (Eq 8 restricts H to the diagonal block); every method's
accumulators are per parameter or per nn.Linear, so a group's are exactly the same numbers.
What it costs: every group makes its own passes over the batches (G groups → G× the gradient
passes of one group): memory is traded for passes.

`working_bytes` is an ESTIMATE of the parameter-sized memory a method allocates for a set of blocks
(accumulators, Kronecker factors and their eigenvectors, CG vectors, cached graphs' first-order
gradients). Activations (∝ tokens × width × layers the backward crosses) are not counted: they do
not depend on how many blocks are scored, and `grad_only_for` keeps autograd from recording the
layers before the group at all.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import torch
from torch import nn

from mdlcap.scores import autograd as ag

__all__ = ["working_bytes", "block_groups", "grad_only_for", "params_of"]


def params_of(blocks: Mapping[str, list]) -> list:
    """All parameters of the blocks, in block order."""
    return [p for ps in blocks.values() for p in ps]


def _linear_shapes(model: nn.Module, params) -> list[tuple[int, int]]:
    ids = {id(p) for p in params}
    return [(m.out_features, m.in_features) for m in model.modules()
            if isinstance(m, nn.Linear) and id(m.weight) in ids]


def working_bytes(model: nn.Module, params, method: str, *, curvature: str = "ggn", n_batches: int = 1,
                  batch_size: int = 1, cache_graphs: bool = True) -> int:
    """Estimated parameter-sized working memory (bytes) of `method` scoring `params` at once.

      grad_norm    2n   gradient accumulator + autograd's gradients
      diag_fisher  7n   gradient and Fisher accumulators, autograd's gradients, their squares, the
                        block's flattened g and F and the quotient (measured ≈ 6.7n on a 7B layer)
      kfac         4n + Σ_Linear 3(out² + in²)   (factors G, A; eigenvectors; eigh workspace)
      ekfac        kfac + Σ_Linear (2 + B)·out·in   (S, its update, B per-sample projected gradients)
      cg           (10 + n_batches if cache_graphs) n   (gradient, CG's x r p Ap, operator vectors,
                   temporaries; each cached batch graph holds one first-order gradient; measured
                   ≈ 9.6n on a 7B layer with one batch)
    n = number of parameters, B = largest batch size, elements of the accumulation dtype.
    Measured on 7B-shaped layers (bench/bench_scoring_memory.py): grad_norm, diag_fisher and cg
    within 10% for one block; for several blocks at once and for kfac/ekfac an upper bound (the
    flattened per-block copies are not simultaneous; K-FAC's shared input factors and lazily
    allocated G: ≈ 1/5 of the estimate on 7B attention blocks), so budgets err towards more groups.
    """
    params = list(params)
    n = sum(p.numel() for p in params)
    elem = torch.finfo(ag.acc_dtype(params)).bits // 8
    if method == "grad_norm":
        units = 2 * n
    elif method == "diag_fisher":
        units = 7 * n
    elif method in ("kfac", "ekfac"):
        shapes = _linear_shapes(model, params)
        units = 4 * n + sum(3 * (o * o + i * i) for o, i in shapes)
        if method == "ekfac":
            units += sum((2 + batch_size) * o * i for o, i in shapes)
    elif method == "cg":
        units = (10 + (n_batches if cache_graphs else 0)) * n
    else:
        raise ValueError(f"method: no memory estimate for {method!r}")
    return int(units * elem)


def block_groups(model: nn.Module, blocks: Mapping[str, list], method: str, batches, *,
                 max_group_bytes: int | None = None, group_size: int | None = None,
                 curvature: str = "ggn", cache_graphs: bool = True) -> list[dict[str, list]]:
    """Consecutive groups of `blocks` (in block order) scored together.

    group_size=m: m blocks per group (the last may hold fewer). max_group_bytes=b: as many
    consecutive blocks as fit b by `working_bytes` (greedy; a block that alone exceeds b forms a
    group of its own). Neither: one group of all blocks (every block scored in the same passes).
    The groups depend only on the blocks' shapes and the arguments, so every torch.distributed
    process forms the same ones (their all-reduces pair up)."""
    if group_size is not None and max_group_bytes is not None:
        raise ValueError("group_size, max_group_bytes: give at most one of them")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size: must be an integer >= 1 or None, got {group_size!r}")
    if max_group_bytes is not None and (isinstance(max_group_bytes, bool) or not isinstance(max_group_bytes, int)
                                        or max_group_bytes < 1):
        raise ValueError(f"max_group_bytes: must be an integer >= 1 (bytes) or None, got {max_group_bytes!r}")
    names = list(blocks)
    if group_size is None and max_group_bytes is None:
        return [dict(blocks)]
    if group_size is not None:
        return [{k: blocks[k] for k in names[i:i + group_size]} for i in range(0, len(names), group_size)]
    n_batches = len(batches)
    bsz = max([ag.batch_size_of(b) for b in batches], default=1)
    groups, cur, cur_bytes = [], {}, 0
    for k in names:
        kb = working_bytes(model, blocks[k], method, curvature=curvature, n_batches=n_batches,
                           batch_size=bsz, cache_graphs=cache_graphs)
        if cur and cur_bytes + kb > max_group_bytes:
            groups.append(cur)
            cur, cur_bytes = {}, 0
        cur[k] = blocks[k]
        cur_bytes += kb
    groups.append(cur)
    return groups


@contextmanager
def grad_only_for(model: nn.Module, params):
    """requires_grad off, while inside, for every model parameter not in `params` that has it on
    (restored on exit): the forward pass then records no graph before the first scored layer and
    keeps no gradient buffers for the rest. The scored parameters' gradients and curvature
    products are unchanged (autograd.grad is taken with respect to them only)."""
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
