"""The paper's and the proposal's quantitative claims, each checked against a run's tables.

Every `ours` value is read from a file a notebook wrote; a claim whose notebook has not run
is reported as "not testable here" with the reason, never filled in by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd


@dataclass
class ClaimResult:
    ours: str
    scale: str
    verdict: str          # reproduced / not reproduced / partly / not testable here
    why: str


@dataclass
class Claim:
    text: str
    source: str            # where the paper/proposal makes it
    paper: str             # the paper's figure, as stated
    check: Callable[[Path], ClaimResult]

    def evaluate(self, run_root: Path) -> ClaimResult:
        return self.check(Path(run_root))


def _csv(run_root: Path, notebook: str, name: str) -> pd.DataFrame:
    p = run_root / notebook / f"{name}.csv"
    if not p.exists():
        raise FileNotFoundError(p)
    return pd.read_csv(p)


def _json(run_root: Path, notebook: str, name: str) -> dict:
    import json
    p = run_root / notebook / f"{name}.json"
    if not p.exists():
        raise FileNotFoundError(p)
    return json.loads(p.read_text())


def _scale(run_root: Path) -> str:
    import json
    m = run_root / "manifest.json"
    if m.exists():
        name = json.loads(m.read_text()).get("params", {}).get("model", {}).get("name_or_path", "?")
        return "embedded default model (CPU)" if name == "default" else name
    return run_root.name


CLAIMS: list[Claim] = []


# --------------------------------------------------------------------------- notebook 01
def _lemma1(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    err = s["lemma1_max_decrease_rel_err"]
    ok = err < 1e-8
    return ClaimResult(f"max relative error {err:.1e} over random blocks", "random PD/indefinite blocks",
                       "reproduced" if ok else "not reproduced",
                       "exact linear algebra; Appendix C's bias bound holds for H ⪰ 0"
                       + ("" if s.get("appC_bound_holds_psd") else " (bias bound FAILED)"))


def _closed_forms(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    a, p = s["allocate_max_rel_diff_x_vs_cvxpy"], s["prune_max_rel_diff_x_vs_cvxpy"]
    ok = max(a, p) < 1e-4 and s["monotonicity_violations"] == 0
    n = s["allocate_instances"] + s["prune_instances"]
    return ClaimResult(f"max rel. |x − x_cvxpy|: allocation {a:.1e}, pruning {p:.1e}; "
                       f"{s['monotonicity_violations']} monotonicity violations",
                       f"{n} random instances, K 2–512", "reproduced" if ok else "not reproduced",
                       "closed form (Eq 12/13, 15) agrees with cvxpy"
                       + ("; where they differ ours has the lower objective"
                          if s["allocate_closed_form_better_where_differs"] and s["prune_closed_form_better_where_differs"]
                          else "; cvxpy sometimes finds a lower objective"))


def _solver_speed(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    t6 = max(s["allocate_bisection_K1000000_s"], s["prune_bisection_K1000000_s"])
    us = max(s["allocate_bisection_K32_median_us"], s["prune_bisection_K32_median_us"])
    sp = min(s["allocate_exact_speedup_K32"], s["prune_exact_speedup_K32"])
    return ClaimResult(f"K=32: ≤{us:.0f} µs (bisection), exact solver ≥{sp:.0f}× faster than cvxpy; "
                       f"K=10⁶: {t6:.2f} s", "numpy on this machine's CPU",
                       "reproduced" if t6 < 5 else "not reproduced",
                       "O(K log 1/ε) bisection and an exact O(K log K) breakpoint solver; "
                       "the 1000× target over cvxpy at K=32 is " + ("met" if sp >= 1000 else "not met (Python call overhead floor)"))


def _pruning_degenerate(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    deg = s["pruning_degenerate_at_paper_hparams"]
    lo, hi = s["equality_rho_range"]
    return ClaimResult(
        ("every layer pruned at ρ_max (uniform) for raw and normalised N_k" if deg else "ratios vary across layers")
        + f"; equality variant spreads ρ over [{lo:.2f}, {hi:.2f}]",
        "Mistral-7B layer sizes from MistralConfig()", "not reproduced" if deg else "reproduced",
        f"with b=16, λ=2, γ=1 the target binds only for λ ≥ {s['pruning_lam_crit_raw_min']:.1e} (raw N_k)")


CLAIMS += [
    Claim("ζ² is twice the best second-order decrease from one layer (Lemma 1)", "§2.2, Lemma 1",
          "exact (proof)", _lemma1),
    Claim("Both programs have unique closed-form minimisers (Theorems 2–3)", "§3.1, Thm 2–3",
          "exact (proof)", _closed_forms),
    Claim("Solvers run in O(K log 1/ε) by bisection", "§3.2, Alg. 1–2", "O(K log 1/ε)", _solver_speed),
    Claim("MDL pruning ratios concentrate sparsity on low-gain layers at the paper's hyper-parameters",
          "§3.1 Eq 15, Table 3", "layer-wise ratios (b=16, λ=2, γ=1, s=0.5, clip 0.51)", _pruning_degenerate),
]


# --------------------------------------------------------------------------- notebook 06
def _caq_saving(r: Path) -> ClaimResult:
    from .precision_analysis import verdict
    v = verdict(_csv(r, "06_precision_allocation", "memory_saving"))
    m = v["saving_vs_uniform_mean"]
    ok = "NOT" not in v["verdict"] and "cannot" not in v["verdict"]
    per = ", ".join(f"{k} {100 * x:.0f}%" for k, x in v["per_model"].items())
    return ClaimResult(f"{100 * m:.1f}% saving vs uniform {{4,8,16,32}} at ≤1 pt loss ({per}); "
                       f"{100 * v['saving_vs_uniform_int_mean']:.1f}% vs uniform at any integer width",
                       "MLP-2/MLP-4/CNN on scikit-learn digits, 5 seeds",
                       "reproduced" if ok else "not reproduced",
                       "uniform at any integer width does better than on the {4,8,16,32} grid, so part of the "
                       "saving is the grid's coarseness" if v["saving_vs_uniform_int_mean"] < m else
                       "saving holds against uniform at any integer width too")


CLAIMS += [
    Claim("CAQ saves 15–25% memory over uniform precision at equal accuracy", "proposal (seed 003)",
          "15–25%", _caq_saving),
]
