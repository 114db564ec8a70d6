"""Notebook 02's CG solves and the rule that keeps unconverged ones out of every verdict (METHOD.md §1).

A ζ² solve counts as converged when its relative residual ‖g − (H_kk + λI)x‖/‖g‖ of the
UNpreconditioned system is at most paper.THRESHOLDS["cg_rel_residual"] (1e-3, issue 14) and CG met
no direction of non-positive curvature. From x₀ = 0 a truncated CG iterate under-estimates ζ² (and
its step is not the Newton step), so a verdict read from an unconverged solve would be about
truncation, not about ζ²: every verdict here says "not assessable" instead.

Damping policy (scoring.cg_damping_policy), one λ for every block of a task, never per block:
  fixed               λ = scoring.damping; blocks that do not converge are flagged
  smallest_converged  λ = scoring.damping, then each larger value of scoring.lambda_grid in turn,
                      until every block converges within scoring.cg_max_iter; a candidate λ is
                      first screened on the block that failed last (the first block at the start),
                      so a λ that cannot work costs one block's solve; if none converges, the
                      largest candidate is solved and flagged. The λ chosen is `Gains.damping` and
                      each block's `damping_used`; the candidates tried are in `meta["damping_tried"]`.
The exact Hessian's damping is raised above the requested λ until CG sees positive curvature, to
the same value for every block (scores.newton.gains_cg, shared_damping).

    g = cg_gains(model, batches, sp, "ggn")     # Gains at the policy's λ, diagnostics flagged
    converged(g)                                # every block converged?
"""
from __future__ import annotations

import math

from mdlcap.scores.blocks import Gains, resolve_blocks
from mdlcap.scores.registry import layer_gains
from mdlcap.study.paper import THRESHOLDS

CG_REL_RESIDUAL = THRESHOLDS["cg_rel_residual"]
NOT_ASSESSABLE = "not assessable"


def solve_kwargs(sp) -> dict:
    """layer_gains keywords of every CG solve of notebook 02 (iterations, tolerance, preconditioner,
    streaming group size)."""
    return {"max_iter": sp.cg_max_iter, "tol": sp.cg_tol, "preconditioner": sp.cg_preconditioner,
            "group_size": sp.group_size}


def block_converged(diag: dict) -> bool:
    """A block's solve converged: relative residual <= the threshold and no negative curvature."""
    r = diag.get("rel_residual")
    return (r is not None and math.isfinite(r) and r <= CG_REL_RESIDUAL
            and not diag.get("negative_curvature", False))


def converged(gains: Gains) -> bool:
    """Every block of a CG result converged (False for an empty result)."""
    return bool(gains.diagnostics) and all(block_converged(d) for d in gains.diagnostics.values())


def damping_candidates(sp, damping: float | None = None) -> list[float]:
    """λ values the policy tries, in order: the requested λ, then (smallest_converged) the larger grid values."""
    lam = float(sp.damping if damping is None else damping)
    if sp.cg_damping_policy == "fixed":
        return [lam]
    return [lam] + sorted(float(x) for x in sp.lambda_grid if x > lam)


def screened_solve(model, batches, sp, curvature: str, damping: float, *, blocks=None, hard: str | None = None,
                   progress: bool = True, return_steps: bool = False) -> tuple[Gains | None, str]:
    """(Gains of every block at `damping`, or None when the solve on block `hard` alone (default the first
    block) did not converge: then no other block is solved; the block to screen next time)."""
    blk = resolve_blocks(model, blocks)
    kw = dict(method="cg", curvature=curvature, progress=progress, **solve_kwargs(sp))
    hard = hard if hard in blk else next(iter(blk))
    if len(blk) > 1 and not converged(layer_gains(model, batches, damping=damping, blocks={hard: blk[hard]}, **kw)):
        return None, hard
    g = layer_gains(model, batches, damping=damping, blocks=blk, return_steps=return_steps, **kw)
    bad = [k for k, d in g.diagnostics.items() if not block_converged(d)]
    return g, (bad[0] if bad else hard)


def cg_gains(model, batches, sp, curvature: str, *, blocks=None, damping: float | None = None,
             progress: bool = True, return_steps: bool = False) -> Gains:
    """CG ζ² of every block at the damping the policy picks (module docstring), one λ for all blocks."""
    blk = resolve_blocks(model, blocks)
    cands = damping_candidates(sp, damping)
    kw = dict(method="cg", curvature=curvature, progress=progress, **solve_kwargs(sp))
    tried, hard = [], next(iter(blk))
    for i, lam in enumerate(cands):
        last = i == len(cands) - 1
        if last:
            g = layer_gains(model, batches, damping=lam, blocks=blk, return_steps=return_steps, **kw)
        else:
            g, hard = screened_solve(model, batches, sp, curvature, lam, blocks=blk, hard=hard, progress=progress,
                                     return_steps=return_steps)
        ok = g is not None and converged(g)
        tried.append({"damping": lam, "screened": hard if g is None else None, "converged": ok})
        if ok or last:
            g.meta.update({"damping_policy": sp.cg_damping_policy, "damping_tried": tried,
                           "converged": ok, "damping_requested": cands[0]})
            used = {d["damping_used"] for d in g.diagnostics.values()}
            g.damping = max(used) if used else lam
            return g
    raise AssertionError("unreachable: the last candidate always returns")
