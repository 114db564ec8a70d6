"""Benchmark: closed-form programs (bisection, exact breakpoints) against cvxpy, per K.

    .venv/bin/python bench/bench_programs.py [--quick]

Writes results/bench/programs.csv (atomically): median seconds per call for each program, K
and method, and the speed-up over cvxpy measured in the same run. Targets (issue 2): allocate
and prune at K = 32 ≤ 100 µs median and ≥ 1000× faster than cvxpy; K = 1e6 ≤ 1 s.
"""
from __future__ import annotations

import argparse
import io
import sys

from mdlcap import files as mio
from mdlcap.study.solver_speed import timing_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 32 and 1000 only")
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/programs.csv)")
    a = ap.parse_args(argv)
    Ks = (32, 1_000) if a.quick else (32, 1_000, 10_000, 100_000, 1_000_000)
    df = timing_table(Ks, cvxpy_max_K=10_000)
    out = a.out or mio.project_root() / "results" / "bench" / "programs.csv"
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    mio.atomic_write_text(out, buf.getvalue())
    cols = ["program", "K", "method", "median_s", "speedup_vs_cvxpy", "max_abs_diff_vs_exact"]
    print(df[[c for c in cols if c in df]].to_string(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
