"""Layer gains ζ_k² = g_kᵀ (H_kk + λI)⁻¹ g_k (paper Eq 8, METHOD.md §1) with several curvature
surrogates: the one entry point and the one list of method names.

    gains = layer_gains(model, batches, method="cg", curvature="ggn", damping=1e-3)
    gains["layers.3"]                # ζ² of decoder layer 3
    gains.diagnostics["layers.3"]    # CG iterations, relative residual, damping used, ...

g_k and H_kk are those of the MEAN loss over all batches (and over all processes when
torch.distributed is initialised: sums are all-reduced, weighted by batch count).
Memory: layer_gains(..., group_size=1) (or max_group_bytes=b) scores the blocks one group at a
time (scores.streaming), so peak memory is one group's, not the model's; the scores are the same,
each group costs its own passes (METHOD.md §1, Streaming).

Methods (METHODS; scores.csv names in SCORE_METHODS)
  cg           matrix-free conjugate gradient on (H_kk + λI) d = g_k; H_kk is the Gauss–Newton
               matrix Jᵀ ∇²ℓ J ("ggn", PSD) or the exact Hessian ("hessian"; indefinite, so the
               damping is raised until CG sees positive curvature and the damping used is reported)
               (scores.newton, scores.operators, scores.cg)
  diag_fisher  diagonal Fisher of the mean loss, (1/M) Σ_i (∇S_i)² with S_i sequence i's token-SUM
               loss and M the loss tokens of all batches (scores.diag_fisher; conventions scores.fisher)
  kfac         K-FAC-expand factors A = (1/M) Σ_t a aᵀ, G = (1/M) Σ_t g gᵀ over loss tokens per
               nn.Linear (other parameters: diagonal)
  ekfac        K-FAC eigenbasis with eigenvalues re-fitted to per-sequence gradients (George et al. 2018)
               fisher="true" (default): labels drawn from the model at every
               loss token (unbiased for the GGN); "empirical": the batch's labels. fisher_samples:
               draws per loss token (true Fisher).
               (both scores.kfac)
  grad_norm    ‖g_k‖² (the baseline the paper says ζ² dominates)
LayerIF (layerif_all, layerif_pos) is not a ζ² surrogate: see scores.influence.

Why by hand: curvlinops / kronfluence / BackPACK are not installed here and none of them computes a
layer-restricted Newton decrement on a Hugging Face model under torch.distributed in one call; the
products needed are a few lines of torch.autograd each (reverse-over-reverse, which every operator
supports, unlike forward mode).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from mdlcap import cache
from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import Gains, resolve_blocks
from mdlcap.scores.diag_fisher import gains_diag_fisher
from mdlcap.scores.fisher import check_fisher
from mdlcap.scores.kfac import gains_kfac
from mdlcap.scores.newton import gains_cg
from mdlcap.scores.operators import CURVATURES, PRECONDITIONERS
from mdlcap.scores.streaming import block_groups, grad_only_for, params_of

METHODS = ("cg", "diag_fisher", "kfac", "ekfac", "grad_norm")
# scores.csv method names (the one list): method/curvature -> column value, then LayerIF's two pools
SCORE_METHODS = ("cg_ggn", "cg_hessian", "diag_fisher", "kfac", "ekfac", "grad_norm", "layerif_all", "layerif_pos")
ZETA2_METHODS = ("cg_ggn", "cg_hessian", "diag_fisher", "kfac", "ekfac")   # the ζ² surrogates among them

__all__ = ["METHODS", "CURVATURES", "SCORE_METHODS", "ZETA2_METHODS", "layer_gains", "score_method_name",
           "gains_grad_norm", "cached_gains"]


def gains_grad_norm(model, batches, blocks, *, loss_fn, progress):
    """(gains, diagnostics) of the baseline ‖g_k‖²."""
    all_params = [p for ps in blocks.values() for p in ps]
    grads = ag.block_gradients(model, batches, all_params, loss_fn, progress=progress)
    gains, diags, i = {}, {}, 0
    for name, params in blocks.items():
        g = ag.flat(grads[i:i + len(params)], ag.acc_dtype(params))
        i += len(params)
        gains[name] = torch.dot(g, g).item()
        diags[name] = {"n_params": int(g.numel())}
    return gains, diags


def layer_gains(model: nn.Module, batches, *, method: str = "cg", curvature: str = "ggn",
                damping: float = 1e-3, blocks=None, loss_fn: Callable | None = None,
                max_iter: int = 50, tol: float = 1e-6, cache_graphs: bool = True,
                progress: bool = True, return_steps: bool = False,
                fisher_granularity: str = "sample", max_damping_raises: int = 12,
                fisher: str = "true", fisher_samples: int = 1,
                group_size: int | None = None, max_group_bytes: int | None = None,
                preconditioner: str = "none", shared_damping: bool = True) -> Gains:
    """ζ_k² = g_kᵀ (H_kk + λI)⁻¹ g_k for every block k (Eq 8), for the mean loss over `batches`.

    method: "cg" (curvature "ggn" or "hessian"), "diag_fisher", "kfac", "ekfac", "grad_norm".
    blocks: None (one per decoder layer), "attn_mlp", or {name: [params] | nn.Module}.
    loss_fn(model, batch) -> loss or (loss, outputs); default model(**batch).loss (and .logits
    as the outputs the Gauss–Newton matrix linearises).
    cg only: preconditioner "none" | "diag" | "kfac" (PCG, scores.newton.gains_cg: the same
    solution in fewer iterations); shared_damping: the exact Hessian's raised damping is one λ for
    all blocks of the call (the largest any block needs, across groups too).

    Streaming (METHOD.md §1): the blocks are scored in consecutive groups, each group by its own
    passes over the batches, so the working memory (accumulators, factors, eigenvectors, CG
    vectors) is that of one group, not of the model. group_size=m: m blocks per group;
    max_group_bytes=b: as many blocks per group as fit b bytes by `streaming.working_bytes`'
    estimate (a block larger than b alone); neither (default): one group, all blocks in the
    same passes. The scores do not depend on the grouping (g_k and H_kk are the mean loss's
    whatever else is scored); the cost does: G groups make G× the passes of one (memory traded
    for passes). Every block's diagnostics say which group scored it ("group") and how many
    there were ("n_groups").
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {list(METHODS)}, got {method!r}")
    if method == "cg" and curvature not in CURVATURES:
        raise ValueError(f"curvature: must be one of {list(CURVATURES)}, got {curvature!r}")
    if not isinstance(damping, (int, float)) or not math.isfinite(damping) or damping <= 0:
        raise ValueError(f"damping: must be a finite number > 0, got {damping!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol: must be >= 0, got {tol!r}")
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner: must be one of {list(PRECONDITIONERS)}, got {preconditioner!r}")
    if method in ("diag_fisher", "kfac", "ekfac"):
        check_fisher(fisher, loss_fn, fisher_samples, "fisher_samples")
    if fisher_granularity not in ("sample", "batch"):
        raise ValueError(f"fisher_granularity: must be 'sample' or 'batch', got {fisher_granularity!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError("loss_fn: must be callable as loss_fn(model, batch)")
    batches = ag.check_batches(batches)
    blk = resolve_blocks(model, blocks)
    damping = float(damping)
    groups = block_groups(model, blk, method, batches, max_group_bytes=max_group_bytes, group_size=group_size,
                          curvature=curvature, cache_graphs=cache_graphs)
    gains, diags, steps = {}, {}, ({} if (method == "cg" and return_steps) else None)
    for gi, blk in enumerate(groups):
        s = None
        with grad_only_for(model, params_of(blk)):
            if method == "cg":
                g, d, s = gains_cg(model, batches, blk, curvature=curvature, damping=damping, loss_fn=loss_fn,
                                   max_iter=max_iter, tol=tol, cache_graphs=cache_graphs, progress=progress,
                                   return_steps=return_steps, max_damping_raises=max_damping_raises,
                                   preconditioner=preconditioner, shared_damping=bool(shared_damping))
            elif method == "diag_fisher":
                g, d = gains_diag_fisher(model, batches, blk, damping=damping, loss_fn=loss_fn,
                                         progress=progress, granularity=fisher_granularity, fisher=fisher,
                                         mc_samples=fisher_samples)
            elif method in ("kfac", "ekfac"):
                g, d = gains_kfac(model, batches, blk, damping=damping, loss_fn=loss_fn, progress=progress,
                                  eigen_corrected=(method == "ekfac"), fisher=fisher, mc_samples=fisher_samples)
            else:  # grad_norm: ‖g_k‖²
                g, d = gains_grad_norm(model, batches, blk, loss_fn=loss_fn, progress=progress)
        gains.update(g)
        for k in blk:
            diags[k] = {**d.get(k, {}), "group": gi, "n_groups": len(groups)}
        if steps is not None and s is not None:
            steps.update(s)
    if method == "cg" and curvature == "hessian" and shared_damping and len(groups) > 1:
        # one λ for all blocks across groups: re-solve the groups below the largest λ any block needed
        lam = max(d["damping_needed"] for d in diags.values())
        for gi, blk in enumerate(groups):
            if min(diags[k]["damping_used"] for k in blk) < lam:
                with grad_only_for(model, params_of(blk)):
                    g, d, s = gains_cg(model, batches, blk, curvature=curvature, damping=lam, loss_fn=loss_fn,
                                       max_iter=max_iter, tol=tol, cache_graphs=cache_graphs, progress=progress,
                                       return_steps=return_steps, max_damping_raises=0,
                                       preconditioner=preconditioner, shared_damping=False)
                gains.update(g)
                for k in blk:
                    diags[k] = {**d[k], "damping_requested": damping, "damping_needed": diags[k]["damping_needed"],
                                "damping_raises": diags[k]["damping_raises"], "group": gi, "n_groups": len(groups)}
                if steps is not None and s is not None:
                    steps.update(s)
    for k, v in gains.items():
        if not math.isfinite(v):
            raise FloatingPointError(f"layer_gains: non-finite ζ² for block '{k}' ({method}); check the loss and damping")
    return Gains(gains, diags, method=method, curvature=curvature if method == "cg" else None,
                 damping=damping, steps=steps)


def score_method_name(method: str, curvature: str | None = None) -> str:
    """Name used in scores.csv: cg -> cg_ggn / cg_hessian, others unchanged."""
    return f"cg_{curvature}" if method == "cg" else method


def cached_gains(spec: Mapping[str, Any], compute: Callable[[], Gains]) -> Gains:
    """compute() once per spec through the one cache (namespace "scores"; `spec` names the model,
    the data, the method, the damping and anything else that changes the scores)."""
    return Gains.from_json(cache.cached("scores", spec, lambda: compute().to_json()))
