"""`make report`: collect results/<run>/ into results/<run>/REPORT.md, a results section.

The report reads like the paper's results section, at most MAX_LINES lines: a short run
manifest (params, revision, hardware, each notebook's wall time), the claims table (each
quantitative claim of the paper and the proposal, the paper's figure, ours read from the
tables the notebooks wrote, never typed in, with the interval a comparative verdict was read
from, the scale, and the verdict), then per notebook its key figures (KEY_FIGURES) and key
tables (KEY_TABLES, each notebook's intervals.csv first, at most KEY_ROWS rows inlined), and
last an index linking every CSV, JSON and figure of the run (relative links, not inlined).
Executed notebooks are rendered to HTML beside it with nbconvert.

    python -m mdlcap.study.report results/tiny [--no-html] [--readme README.md]
    python -m mdlcap.study.report results/tiny --against other/results/tiny [--out agreement.csv]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from mdlcap import files as mio
from mdlcap.study.claims import CLAIMS, ClaimResult

MAX_LINES = 600          # the report's length limit (issue 15): raw tables are linked, not inlined
KEY_ROWS = 12            # rows of a key table shown inline; the rest is in the linked CSV
INTERVALS = "intervals"  # every comparing notebook's verdict table (stats.INTERVAL_COLUMNS), always key

# The tables a reader of each notebook's results needs first, in the order shown (names of the
# CSVs the notebook writes, without .csv; a name the run lacks is skipped).
KEY_TABLES = {
    "00_prepare": ["pretrain_losses", "finetune_sanity", "zeroshot_accuracy"],
    "01_derivations": ["lemma1", "closed_form_vs_cvxpy"],
    "02_curvature_scores": ["validation_rank_correlation", "cg_damping", "cost_per_method"],
    "03_allocation": ["learning", "paper_comparison", "mdl_budget_check"],
    "04_pruning": ["table_perplexity", "table_accuracy", "sweep_gain"],
    "05_transfer_regret": ["violations", "slopes_pooled", "downstream_summary"],
    "06_precision_allocation": ["relaxation_vs_exact", "kappa_bits_correlation"],
    "07_joint_and_psi": ["joint_budget", "joint_summary", "psi_fits", "psi_additivity"],
    "08_online_scores": ["online_summary", "online_overhead"],
}
# The figures shown per notebook (PNG stems); a notebook not named here shows every figure it wrote.
KEY_FIGURES = {
    "02_curvature_scores": ["validation_intervals", "rank_correlation", "scores_by_layer"],
    "03_allocation": ["intervals", "loss_curves", "allocations"],
    "04_pruning": ["layer_ratios", "sparsity_sweep"],
    "05_transfer_regret": ["regret_vs_delta", "real_drift_heatmap"],
    "06_precision_allocation": ["pareto_frontier", "precision_heatmap", "error_waterfall"],
    "07_joint_and_psi": ["joint_allocation", "joint_vs_separate", "psi_curves", "psi_intervals", "psi_additivity"],
    "08_online_scores": ["online_intervals", "online_rank_trajectories", "online_drift_regret"],
}
CLAIM_COLUMNS = ["claim", "source", "paper", "ours", "scale", "verdict", "why"]
README_COLUMNS = ["claim", "paper", "ours", "scale", "verdict"]


def _md_table(df: pd.DataFrame, max_rows: int = KEY_ROWS, link: str | None = None) -> str:
    shown = df.head(max_rows)
    cols = [str(c) for c in shown.columns]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    if len(df) > max_rows:
        where = f"[{Path(link).name}]({link})" if link else "the CSV"
        lines.append(f"\n*({len(df) - max_rows} more rows in {where})*")
    return "\n".join(lines)


def notebook_dirs(run_root: Path) -> list[Path]:
    return sorted(p for p in run_root.iterdir() if p.is_dir() and p.name[:2].isdigit())


def _interval_text(r: ClaimResult) -> str:
    if r.ci_low is None:
        return ""
    return f"[{r.ci_low:+.3g}, {r.ci_high:+.3g}]" if pd.notna(r.ci_low) else "none"


def claims_table(run_root: Path) -> pd.DataFrame:
    """One row per claim: CLAIM_COLUMNS, plus `interval` ("[lo, hi]" where the verdict was read
    from an interval, "" for a claim that compares no methods) and ci_low, ci_high, mde, claim_value."""
    rows = []
    for c in CLAIMS:
        try:
            r = c.evaluate(run_root)
        except (KeyError, IndexError) as e:
            r = ClaimResult(ours="—", scale="—", verdict="not testable here",
                            why=f"this run's tables lack the value ({e}); a smoke-size run skips it")
        except FileNotFoundError as e:
            r = ClaimResult(ours="—", scale="—", verdict="not testable here",
                            why=f"the notebook that measures it has not run ({Path(str(e.filename or e)).name})")
        rows.append({"claim": c.text, "source": c.source, "paper": c.paper, "ours": r.ours, "scale": r.scale,
                     "verdict": r.verdict, "why": r.why, "interval": _interval_text(r), "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "mde": r.mde, "claim_value": r.claim})
    return pd.DataFrame(rows)


def render_html(run_root: Path) -> list[Path]:
    """Executed notebooks -> HTML (nbconvert), beside REPORT.md under html/."""
    out = []
    for nb in sorted(run_root.glob("[0-9][0-9]_*.ipynb")):
        target = run_root / "html"
        target.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--output-dir", str(target),
                        str(nb)], check=True, capture_output=True)
        out.append(target / (nb.stem + ".html"))
    return out


def _minutes(t: dict) -> str:
    if t.get("wall_s") is not None:
        return f"{float(t['wall_s']) / 60:.1f}"
    try:
        d = datetime.fromisoformat(t["finished"]) - datetime.fromisoformat(t["started"])
    except (KeyError, TypeError, ValueError):
        return "?"
    return f"{d.total_seconds() / 60:.1f}"


def manifest_section(run_root: Path) -> list[str]:
    """The run in a few lines: params, revision, hardware, packages, wall time per notebook."""
    m = mio.read_json(run_root / "manifest.json") if (run_root / "manifest.json").exists() else {}
    git, hw, pk = m.get("git", {}), m.get("hardware", {}), m.get("packages", {})
    main = ("torch", "transformers", "numpy", "scipy", "pandas", "cvxpy", "lm_eval")
    parts = ["## The run", "",
             f"- params `{m.get('params_file', '?')}` (sha256 `{str(m.get('params_sha256'))[:12]}`), "
             f"git `{str(git.get('revision'))[:12]}`{' (uncommitted changes)' if git.get('dirty') else ''}, "
             f"threads {m.get('determinism', {}).get('threads', '?')}",
             f"- {hw.get('platform', '?')}, {hw.get('cpu_count', '?')} CPUs, CUDA {hw.get('cuda', '?')} "
             f"{hw.get('gpus', '')}".rstrip(),
             "- " + ", ".join(f"{k} {pk[k]}" for k in main if pk.get(k))
             + " (all packages: [manifest.json](manifest.json))", ""]
    nbs = m.get("notebooks", {})
    if nbs:
        total = sum(float(x) for x in (_minutes(t) for t in nbs.values()) if x != "?")
        parts += ["| notebook | finished | wall (min) |", "|---|---|---|"]
        parts += [f"| {f'[{n}](html/{n}.html)' if (run_root / 'html' / f'{n}.html').exists() else n} "
                  f"| {t.get('finished', '?')} | {_minutes(t)} |" for n, t in nbs.items()]
        parts += [f"| total | | {total:.1f} |", ""]
    return parts


def _table_section(d: Path, stem: str, rows: int) -> list[str]:
    csv = d / f"{stem}.csv"
    try:
        df = pd.read_csv(csv)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return []
    link = f"{d.name}/{csv.name}"
    if rows <= 0:
        return [f"- [{csv.name}]({link}) (key table, {len(df)} rows)"]
    return [f"### {stem}", "", _md_table(df, rows, link), ""]


def notebook_section(d: Path, rows: int) -> list[str]:
    """A notebook's key figures and key tables (its intervals first), `rows` rows each (0: links)."""
    parts = [f"## {d.name}", ""]
    html = d.parent / "html" / f"{d.name}.html"
    if html.exists():
        parts += [f"The executed notebook: [html/{html.name}](html/{html.name}).", ""]
    figs = KEY_FIGURES.get(d.name)
    for png in sorted(d.glob("*.png")):
        if figs is None or png.stem in figs:
            parts += [f"![{png.stem}]({d.name}/{png.name})", ""]
    for stem in [INTERVALS] + KEY_TABLES.get(d.name, []):
        parts += _table_section(d, stem, rows)
    return parts + [""]


def index_section(run_root: Path, compact: bool = False) -> list[str]:
    """Every CSV, JSON and figure of the run as a relative link (one line per file, or per
    notebook when `compact`), with each CSV's shape."""
    parts = ["## Every file of the run", "",
             "Raw tables (CSV), summaries (JSON) and figures, linked rather than inlined.", ""]
    for d in notebook_dirs(run_root):
        files = sorted(p for p in d.iterdir() if p.suffix in (".csv", ".json", ".png"))
        if not files:
            continue
        if compact:
            parts += [f"- **{d.name}**: " + ", ".join(f"[{p.name}]({d.name}/{p.name})" for p in files)]
            continue
        parts += [f"### {d.name} (files)", ""]
        for p in files:
            shape = ""
            if p.suffix == ".csv":
                try:
                    df = pd.read_csv(p)
                    shape = f": {len(df)} rows × {df.shape[1]} columns"
                except pd.errors.EmptyDataError:
                    shape = ": empty"
            parts.append(f"- [{p.name}]({d.name}/{p.name}){shape}")
        parts.append("")
    return parts


def render(run_root: Path) -> str:
    """The report's text: within MAX_LINES, shrinking inlined tables (KEY_ROWS, then 8, then 5 rows),
    then the index (one line per notebook), then the tables to links, until it fits."""
    run_root = Path(run_root)
    head = [f"# Report: run `{run_root.name}`", "",
            "Generated by `make report` from the files the notebooks wrote; nothing here is typed in.", ""]
    head += manifest_section(run_root)
    t = claims_table(run_root)
    head += ["## Claims: the paper vs this run", "",
             "A claim that compares methods is read from a paired bootstrap interval (95 %, the notebook's "
             "`intervals.csv`): *ours* gives the difference, its interval and the design's minimum detectable "
             "effect (MDE); the verdict says where the paper's value lies in it "
             "(vocabulary: `mdlcap.study.claim_verdicts`).", "",
             _md_table(t[CLAIM_COLUMNS], len(t)), ""]
    text = ""
    for rows, compact in ((KEY_ROWS, False), (8, False), (5, False), (5, True), (0, True)):
        body = [line for d in notebook_dirs(run_root) for line in notebook_section(d, rows)]
        text = "\n".join(head + body + index_section(run_root, compact)) + "\n"
        if text.count("\n") <= MAX_LINES:
            break
    return text


def verdict_agreement(run_a: str | Path, run_b: str | Path) -> pd.DataFrame:
    """The claims tables of two runs side by side: one row per claim with each run's `ours`,
    interval and verdict and whether the verdicts agree (`agree`). Issue 15's robustness check
    reads it for two runs that differ only in a setting that should not matter (the torch threads
    of pretraining): a verdict that flips under such a change was never evidence."""
    a, b = claims_table(Path(run_a)), claims_table(Path(run_b))
    if list(a.claim) != list(b.claim):
        raise ValueError("run_b: its claims differ from run_a's (runs of different code versions)")
    return pd.DataFrame({"claim": a.claim, "verdict_a": a.verdict, "verdict_b": b.verdict,
                         "agree": a.verdict == b.verdict, "ours_a": a.ours, "ours_b": b.ours,
                         "interval_a": a.interval, "interval_b": b.interval})


def build(run_root: str | Path, html: bool = True) -> Path:
    run_root = Path(run_root)
    if not run_root.is_dir():
        raise ValueError(f"run_root: no such results folder '{run_root}' (run `make all` first)")
    if html:
        render_html(run_root)
    return mio.atomic_write_text(run_root / "REPORT.md", render(run_root))


START, END = "<!-- claims:start -->", "<!-- claims:end -->"


def update_readme(run_root: Path, readme: Path) -> None:
    """Rewrite the README's claims section (between the markers) from this run's claims table."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"readme: '{readme}' lacks the {START} / {END} markers")
    t = claims_table(Path(run_root))[README_COLUMNS]
    body = (f"*Written by `make report` from `{Path(run_root).as_posix()}`; comparative verdicts are read from "
            "95 % paired bootstrap intervals (the difference, [interval], MDE = the design's minimum detectable "
            f"effect); the full report with the key tables and figures: "
            f"[REPORT.md]({Path(run_root).as_posix()}/REPORT.md).*\n\n" + _md_table(t, len(t)))
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    mio.atomic_write_text(readme, f"{head}{START}\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_root", help="results/<run> folder")
    ap.add_argument("--no-html", action="store_true", help="skip the nbconvert HTML rendering")
    ap.add_argument("--readme", help="also rewrite this README's claims section")
    ap.add_argument("--against", metavar="RUN_ROOT_B",
                    help="only compare the claims' verdicts with another run's (verdict_agreement), no report")
    ap.add_argument("--out", help="with --against: write the comparison to this CSV")
    a = ap.parse_args(argv)
    if a.against:
        t = verdict_agreement(a.run_root, a.against)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            mio.atomic_write_text(Path(a.out), t.to_csv(index=False))
        print(t[["claim", "verdict_a", "verdict_b", "agree"]].to_string(index=False))
        print(f"{int(t.agree.sum())} of {len(t)} verdicts agree")
        return 0
    print(build(a.run_root, html=not a.no_html))
    if a.readme:
        update_readme(Path(a.run_root), Path(a.readme))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
