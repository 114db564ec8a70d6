"""Do regenerated results match the committed ones? Table by table, value by value.

    python -m mdlcap.study.check_results results/tiny [--rev HEAD] [--rtol 0] [--ignore REGEX]
    make check-results                    # the same on results/$(RUN) against HEAD

Every CSV and JSON table committed under the run folder at `--rev` (read with `git show`) is
compared with the file now in the working tree: same columns, same number of rows, and every
value equal (numbers within `--rtol`/`--atol`, default exactly: the tables are written with a
fixed format, so a reproducible run writes the same text). Columns that measure the machine and
not the method (seconds, speed-ups, peak memory, timing repeats, cache state and keys, paths)
are left out, in key/value tables the rows so named too; manifests, figures and the report are
not compared. Exits 1 listing what differs, 0 when every value matches.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from mdlcap import files

# Names (column names, JSON keys, key/value row keys) of values that depend on the machine or on
# the cache's state, not on the method: wall times and speeds, memory peaks, timing repeats,
# whether a cell came from the cache, cache keys, folders.
VOLATILE = re.compile(
    r"(^|_)(seconds?|secs?|time|timing|elapsed|wall|calls|cached|key|path|dir|root)($|_)"
    r"|_s$|_us$|^s_|speedup|peak|rss|_mb($|_)|^mb_|bytes"
    r"|^grad_passes"                 # cost in gradient passes, measured as a ratio of wall times
    r"|speed_target",                # whether a solver met a time target on this machine
    re.IGNORECASE)
# Rows whose every value depends on the machine's speed: (file name, column, value). cvxpy's last
# fallback (SCS) runs under a time limit, so how accurate its answer is depends on the machine.
TIME_LIMITED_ROWS = {"speed.csv": ("method", "cvxpy")}
TABLE_SUFFIXES = (".csv", ".json")
NOT_TABLES = ("manifest.json",)
MAX_LISTED = 10                      # differences listed per table


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def committed_tables(root: Path, run_dir: str, rev: str) -> list[str]:
    """Repository paths of the tables committed under run_dir at rev."""
    out = git(root, "ls-tree", "-r", "--name-only", rev, "--", run_dir)
    if out.returncode:
        raise SystemExit(f"check_results: git ls-tree {rev} {run_dir}: {out.stderr.strip()}")
    return sorted(p for p in out.stdout.splitlines()
                  if p.endswith(TABLE_SUFFIXES) and Path(p).name not in NOT_TABLES)


def show(root: Path, rev: str, path: str) -> str:
    out = git(root, "show", f"{rev}:{path}")
    if out.returncode:
        raise SystemExit(f"check_results: git show {rev}:{path}: {out.stderr.strip()}")
    return out.stdout


def volatile(name: Any, ignore: re.Pattern | None = None) -> bool:
    s = str(name)
    return bool(VOLATILE.search(s) or (ignore is not None and ignore.search(s)))


def same_value(a: Any, b: Any, rtol: float, atol: float) -> bool:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        if math.isnan(na) or math.isnan(nb):
            return math.isnan(na) and math.isnan(nb)
        return na == nb or abs(na - nb) <= atol + rtol * abs(na)
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    return str(a) == str(b)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def compare_frames(old: pd.DataFrame, new: pd.DataFrame, *, rtol: float = 0.0, atol: float = 0.0,
                   ignore: re.Pattern | None = None, drop_rows: tuple[str, Any] | None = None) -> list[str]:
    """Differences between a committed table and a regenerated one (empty: the same).
    `drop_rows` = (column, value): rows holding that value are machine-dependent and left out."""
    if drop_rows is not None and drop_rows[0] in old.columns and drop_rows[0] in new.columns:
        col, value = drop_rows
        old = old[old[col] != value].reset_index(drop=True)
        new = new[new[col] != value].reset_index(drop=True)
    if list(old.columns[:2]) == ["key", "value"] and list(new.columns[:2]) == ["key", "value"]:
        old = old[~old["key"].map(lambda k: volatile(k, ignore))].reset_index(drop=True)
        new = new[~new["key"].map(lambda k: volatile(k, ignore))].reset_index(drop=True)
        keep_old, keep_new = list(old.columns), list(new.columns)
    else:
        keep_old = [c for c in old.columns if not volatile(c, ignore)]
        keep_new = [c for c in new.columns if not volatile(c, ignore)]
    diffs = []
    if keep_old != keep_new:
        diffs.append(f"columns differ: committed {keep_old}, now {keep_new}")
        return diffs
    if len(old) != len(new):
        return [f"rows differ: committed {len(old)}, now {len(new)}"]
    for c in keep_old:
        for i, (a, b) in enumerate(zip(old[c].tolist(), new[c].tolist())):
            if not same_value(a, b, rtol, atol):
                diffs.append(f"row {i} column {c!r}: committed {a!r}, now {b!r}")
    return diffs


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def compare_json(old: Any, new: Any, *, rtol: float = 0.0, atol: float = 0.0,
                 ignore: re.Pattern | None = None) -> list[str]:
    def keep(flat: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flat.items()
                if not any(volatile(part, ignore) for part in re.split(r"[.\[\]]", k) if part)}
    a, b = keep(flatten(old)), keep(flatten(new))
    diffs = [f"{k}: only committed" for k in sorted(set(a) - set(b))]
    diffs += [f"{k}: only now" for k in sorted(set(b) - set(a))]
    diffs += [f"{k}: committed {a[k]!r}, now {b[k]!r}" for k in sorted(set(a) & set(b))
              if not same_value(a[k], b[k], rtol, atol)]
    return diffs


def compare_text(name: str, old: str, new: str, **kw) -> list[str]:
    """Compare two versions of one table file (CSV or JSON text)."""
    if name.endswith(".json"):
        return compare_json(json.loads(old), json.loads(new), **kw)
    return compare_frames(pd.read_csv(io.StringIO(old)), pd.read_csv(io.StringIO(new)),
                          drop_rows=TIME_LIMITED_ROWS.get(Path(name).name), **kw)


def check(root: Path, run_dir: str, rev: str = "HEAD", **kw) -> dict[str, list[str]]:
    """table path -> its differences, for every table that differs, is missing or is new."""
    root = Path(root)
    run_dir = Path(run_dir).resolve().relative_to(root.resolve()).as_posix() \
        if Path(run_dir).is_absolute() else Path(run_dir).as_posix()
    committed = committed_tables(root, run_dir, rev)
    now = sorted(p.relative_to(root).as_posix() for p in (root / run_dir).rglob("*")
                 if p.is_file() and p.suffix in TABLE_SUFFIXES and p.name not in NOT_TABLES
                 and not any(part.startswith(".") or part in ("cache", "scores") for part in
                             p.relative_to(root / run_dir).parts[:-1]))
    report: dict[str, list[str]] = {}
    for path in committed:
        f = root / path
        if not f.exists():
            report[path] = ["missing now"]
            continue
        d = compare_text(path, show(root, rev, path), f.read_text(), **kw)
        if d:
            report[path] = d
    for path in sorted(set(now) - set(committed)):
        report[path] = [f"not committed at {rev}"]
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdlcap.study.check_results", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="results/<run>")
    ap.add_argument("--rev", default="HEAD", help="git revision holding the reference tables (default HEAD)")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance on numbers (default 0: exact)")
    ap.add_argument("--atol", type=float, default=0.0, help="absolute tolerance on numbers (default 0)")
    ap.add_argument("--ignore", default=None, help="regex of further column names / keys to leave out")
    a = ap.parse_args(argv)
    root = files.project_root()
    ignore = re.compile(a.ignore) if a.ignore else None
    report = check(root, a.run_dir, a.rev, rtol=a.rtol, atol=a.atol, ignore=ignore)
    n = len(committed_tables(root, Path(a.run_dir).as_posix(), a.rev))
    if not report:
        print(f"check_results: all {n} tables under {a.run_dir} match {a.rev}")
        return 0
    for path, diffs in report.items():
        print(f"{path}: {len(diffs)} difference(s)")
        for d in diffs[:MAX_LISTED]:
            print(f"  {d}")
        if len(diffs) > MAX_LISTED:
            print(f"  ... and {len(diffs) - MAX_LISTED} more")
    print(f"check_results: {len(report)} table(s) under {a.run_dir} differ from, are missing from or are new "
          f"to the {n} committed at {a.rev}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
