"""Argument checks shared by the two programs (METHOD.md §6: bad input raises a ValueError that
names the argument and the rule it broke).

The numba kernels (`mdlcap.theory.breakpoints`) check values without raising; the solvers call
these Python checks only after a kernel reported bad input, to say which rule failed.
"""
from __future__ import annotations

import math

import numpy as np

METHODS = ("bisection", "exact")


def vector(x, name: str, *, positive: bool = False, allow_scalar_len: int | None = None) -> np.ndarray:
    """1-D finite float array; `positive` requires > 0, else ≥ 0. A scalar broadcasts if allowed."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 0 and allow_scalar_len is not None:
        a = np.full(allow_scalar_len, float(a))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: must be a non-empty 1-D array (got shape {a.shape})")
    mn = a.min()                                  # NaN propagates into min, inf into the sum:
    if (mn > 0 if positive else mn >= 0) and math.isfinite(a.sum()):   # two reductions, fast path
        return a
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: must be finite (found NaN or inf)")
    if positive and not mn > 0:
        raise ValueError(f"{name}: every entry must be > 0 (min is {mn:g})")
    if mn < 0:
        raise ValueError(f"{name}: every entry must be >= 0 (min is {mn:g})")
    raise ValueError(f"{name}: entries too large (their sum overflows)")


def scores(q, name: str = "q") -> np.ndarray:
    """Scores as the programs take them: finite, every q_k ≥ 0, at least one > 0 (METHOD.md §1).
    q_k = 0 is a layer with no positive gain (each program takes it as the limit of its closed
    form); a negative entry is rejected: the one place that maps negative scores to 0 is
    `mdlcap.theory.programs.scores_from_gains`."""
    try:
        a = vector(q, name)
    except ValueError as e:
        if "must be >= 0" not in str(e):
            raise
        raise ValueError(f"{e}; a program takes scores >= 0: map negative scores to 0 with "
                         "scores_from_gains (a layer with no positive gain gets no capacity)") from None
    if not a.sum() > 0:
        raise ValueError(f"{name}: must not be all zero (scores need some positive gain)")
    return a


def scalar(x, name: str, *, lo: float = -math.inf, lo_open: bool = False, hi: float = math.inf) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a real number (got {x!r})") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite (got {v})")
    if (v <= lo) if lo_open else (v < lo):
        raise ValueError(f"{name}: must be {'>' if lo_open else '>='} {lo:g} (got {v:g})")
    if v > hi:
        raise ValueError(f"{name}: must be <= {hi:g} (got {v:g})")
    return v


def same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{nb}: length {b.size} does not match {na} (length {a.size})")


def check_tol(tol) -> float:
    t = scalar(tol, "tol", lo=0.0, lo_open=True)
    if t >= 1.0:
        raise ValueError(f"tol: must be in (0, 1) (got {t:g})")
    return t


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS} (got {method!r})")
    return method



def kernel_arrays(x, y, *, scalar_second: bool = False):
    """Two float64 vectors of one length for a `breakpoints` kernel, or None if the shapes are
    wrong (the Python validators then say how); the kernels check the values."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if b.ndim == 0 and scalar_second:
        b = np.full(a.shape, float(b))
    if a.ndim != 1 or b.shape != a.shape:
        return None
    return a, b

