"""Multisection: the bisection of Algorithms 1–2 (paper §3.2; METHOD.md §2–3), vectorised.

Both programs' dual equations are monotone in one scalar; `method="bisection"` finds the root
with a fixed number of rounds set by the tolerance. The exact breakpoint solvers
(`mdlcap.theory.breakpoints`) are the default; this one is kept as the paper's procedure.
"""
from __future__ import annotations

import math

import numpy as np

GRID_CELLS = 4096      # points per round × K kept near this (one numpy pass per round)


def rounds(lo: float, hi: float, tol: float, m: int) -> int:
    """Multisection rounds to shrink [lo, hi] to width ≤ tol·lo (each round divides by m+1)."""
    if hi - lo <= tol * lo:
        return 0
    return int(math.ceil(math.log((hi - lo) / (tol * lo)) / math.log(m + 1)))


_FRACTIONS: dict[int, np.ndarray] = {}


def multisection(f_grid, f_point, level, lo, hi, tol, K):
    """Largest x in [lo, hi] (to relative precision tol) with f(x) ≤ level, f nondecreasing.

    Vectorised bisection ("multisection"): each round evaluates f at m evenly spaced points at
    once (one (m, K) numpy pass, `f_grid(grid, buffer)`) and keeps the sub-interval where f
    crosses `level`, so the bracket shrinks by m+1 per round; m = 1 is plain bisection
    (`f_point`, large K). The number of rounds is fixed in advance by `tol`. Same O(K log 1/ε)
    work up to a constant, without the Python overhead of ~40 tiny steps at small K. Returns
    (lo, hi, rounds): f(lo) ≤ level < f(hi) is kept throughout (assuming it held on entry).
    """
    m = max(1, min(63, GRID_CELLS // K))
    r = rounds(lo, hi, tol, m)
    if m == 1:
        for _ in range(r):
            mid = 0.5 * (lo + hi)
            if f_point(mid) <= level:
                lo = mid
            else:
                hi = mid
        return lo, hi, r
    frac = _FRACTIONS.get(m)
    if frac is None:
        frac = _FRACTIONS[m] = np.arange(1, m + 1) / (m + 1.0)
    buf = np.empty((m, K))
    for _ in range(r):
        grid = frac * (hi - lo) + lo
        j = int(np.count_nonzero(f_grid(grid, buf) <= level))   # first j points still at/under level
        if j:
            lo = float(grid[j - 1])
        if j < m:
            hi = float(grid[j])
    return lo, hi, r
