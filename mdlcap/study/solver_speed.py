"""Solver speed (notebook 01 §5, bench/bench_programs.py): the closed forms against cvxpy.

`timing_table` times bisection, the exact breakpoint solver and cvxpy on the same binding
instances (`mdlcap.theory.instances.bench_instance`) and returns one row per program, K and
method: the structured record that `speed.csv` holds and claims read through `speed_numbers`.
Targets come from `mdlcap.study.paper.CLAIMED`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mdlcap.study.derivations import Section
from mdlcap.study.paper import CLAIMED
from mdlcap.theory import programs as P
from mdlcap.theory.instances import bench_instance
from mdlcap.theory.reference import allocate_cvxpy, prune_cvxpy

PROGRAMS = ("allocate", "prune")
METHODS = ("bisection", "exact")


def median_call_time(fn, *, min_time: float = 0.2, min_calls: int = 5, max_calls: int = 20_000) -> tuple[float, int]:
    """Median wall time of single calls of fn() (each call timed on its own), and the count."""
    import time

    fn()                                                     # warm up (imports, caches)
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def timing_table(Ks=(32, 1_000, 100_000, 1_000_000), programs=PROGRAMS,
                 cvxpy_max_K: int = 10_000, cvxpy_time_limit: float = 20.0, min_time: float = 0.2,
                 progress: bool = True):
    """Median time per call for bisection, exact and cvxpy (same instances, same process).

    cvxpy is timed as a user calls it (build, canonicalise, solve: `*_cvxpy`), with the time
    inside the solver alone in `cvxpy_solver_s`; it is skipped above `cvxpy_max_K` or once a
    call took longer than `cvxpy_time_limit` seconds. Speed-ups are cvxpy time / our time.
    Returns a pandas DataFrame (one row per program, K, method).
    """
    from tqdm.auto import tqdm

    solve = {"allocate": P.allocate, "prune": P.prune}
    ref = {"allocate": allocate_cvxpy, "prune": prune_cvxpy}
    rows = []
    jobs = [(p, int(K)) for p in programs for K in Ks]
    too_slow = set()
    for prog, K in tqdm(jobs, desc="timing", **({} if progress else {"disable": True})):
        args, kw = bench_instance(prog, K)
        exact = solve[prog](*args, method="exact", **kw)
        x_exact = exact.n if prog == "allocate" else exact.rho
        for method in METHODS:
            res = solve[prog](*args, method=method, **kw)
            t, calls = median_call_time(lambda: solve[prog](*args, method=method, **kw), min_time=min_time)
            x = res.n if prog == "allocate" else res.rho
            rows.append(dict(program=prog, K=K, method=method, median_s=t, calls=calls,
                             active=bool(res.active), kkt_residual=res.kkt_residual,
                             max_abs_diff_vs_exact=float(np.max(np.abs(x - x_exact))),
                             cvxpy_solver_s=np.nan))
        if K <= cvxpy_max_K and prog not in too_slow:
            out = ref[prog](*args, **kw)
            t, calls = median_call_time(lambda: ref[prog](*args, **kw), min_time=min_time, min_calls=3)
            solver_t = float(out.solve_time)
            if t > cvxpy_time_limit:
                too_slow.add(prog)
            rows.append(dict(program=prog, K=K, method="cvxpy", median_s=t, calls=calls,
                             active=None, kkt_residual=np.nan,
                             max_abs_diff_vs_exact=float(np.max(np.abs(out.x - x_exact))),
                             cvxpy_solver_s=solver_t, cvxpy_route=out.route))
            for r in rows:
                if r["program"] == prog and r["K"] == K and r["method"] != "cvxpy":
                    r["speedup_vs_cvxpy"] = t / r["median_s"]
                    r["speedup_vs_cvxpy_solver_only"] = solver_t / r["median_s"]
    return pd.DataFrame(rows)



def speed_numbers(speed: pd.DataFrame) -> dict:
    """The headline numbers of a `timing_table` (e.g. read back from speed.csv): the largest K
    timed, and for each solver method the worst (over both programs) median seconds there, the
    worst median µs at K = 32 and the smallest speed-up over cvxpy at K = 32."""
    ours = speed[speed.method.isin(METHODS)]
    big = int(ours.K.max())
    out = {"largest_K": big}
    for method in METHODS:
        g = ours[ours.method == method]
        at32 = g[g.K == 32]
        out[f"{method}_largest_K_s"] = float(g[g.K == big].median_s.max())
        out[f"{method}_K32_us"] = float(at32.median_s.max() * 1e6)
        out[f"{method}_speedup_K32"] = float(at32.speedup_vs_cvxpy.min())
    return out


def speed_section(Ks, cvxpy_max_K: int, min_time: float):
    """Notebook 01 §5: the timing table, its summary values (per program and method at K = 32,
    and whether each meets the proposal's targets, `paper.CLAIMED`) and the lines the notebook prints."""
    speed = timing_table(Ks, cvxpy_max_K=cvxpy_max_K, min_time=min_time)
    s = Section(tables={"speed": speed})
    big = max(Ks)
    max_us, min_x = CLAIMED["solver_time_target_K32_us"], CLAIMED["solver_speedup_target_K32"]
    targets = {}
    for prog in PROGRAMS:
        t = speed[speed.program == prog].set_index(["K", "method"])
        at = {}
        for method in METHODS:
            us = float(t.loc[(32, method), "median_s"]) * 1e6
            x = float(t.loc[(32, method), "speedup_vs_cvxpy"])
            s.summary[f"{prog}_{method}_K32_median_us"] = us
            s.summary[f"{prog}_{method}_speedup_K32"] = x
            at[method] = (us, x, float(t.loc[(big, method), "median_s"]) if (big, method) in t.index else float("nan"))
            targets[f"{prog}_{method}"] = (us <= max_us, x >= min_x)
        s.lines.append(f"{prog}: K=32 bisection {at['bisection'][0]:.0f} µs ({at['bisection'][1]:.0f}× cvxpy), "
                       f"exact {at['exact'][0]:.0f} µs ({at['exact'][1]:.0f}× cvxpy); largest K={big:,}: bisection "
                       f"{at['bisection'][2]:.3f} s, exact {at['exact'][2]:.3f} s.")
    s.summary[f"speed_targets_K32_(<={max_us:g}us, >={min_x:g}x)"] = targets
    s.lines.append(f"Targets at K=32 (≤ {max_us:g} µs, ≥ {min_x:g}× cvxpy): {targets}")
    return s
