"""The paper's and the proposal's quantitative claims, each checked against a run's tables.

Every `ours` value is read from a file a notebook wrote; a claim whose notebook has not run
is reported as "not testable here" with the reason, never filled in by hand.

Claims that compare methods are read from the notebook's `intervals.csv` (schema
`stats.INTERVAL_COLUMNS`, one row per comparison / task / metric, written with
`stats.interval_row`; the names are `paper.ALLOCATION_COMPARISONS`, `paper.PRUNING_PARITY_COMPARISONS`,
`paper.AVERAGE_TASK` and the metrics beside them) by `from_interval`: `ours` states the paired
difference, its 95 % bootstrap interval and the design's minimum detectable effect, and the
verdict is read from the interval, never from the point estimate. A run made before a notebook
wrote intervals gets "not testable here" ("no intervals.csv (rerun notebook NN)").
The interval verdicts and their vocabulary: `mdlcap.study.claim_verdicts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from mdlcap.study.claim_verdicts import (ClaimResult, combine, from_interval, interval_claim_verdict,  # noqa: F401
                                         run_scale as _scale)
from mdlcap.study.paper import (ALLOCATION_COMPARISONS, ALLOCATION_METRIC, AVERAGE_TASK, CLAIMED, PAPER_TABLE4,
                                PAPER_TABLE5, PAPER_TASKS, PRUNING_METRICS, PRUNING_PARITY_COMPARISONS,
                                PRUNING_PARITY_METRIC, PRUNING_TABLES, TABLE3, THRESHOLDS, table_averages)


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


def _json(run_root: Path, notebook: str, name: str):
    import json
    p = run_root / notebook / f"{name}.json"
    if not p.exists():
        raise FileNotFoundError(p)
    return json.loads(p.read_text())


CLAIMS: list[Claim] = []


# --------------------------------------------------------------------------- notebook 01
def _lemma1(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    err = s["lemma1_max_decrease_rel_err"]
    ok = err < THRESHOLDS["lemma1_rel_error"]
    return ClaimResult(f"max relative error {err:.1e} over random blocks", "random PD/indefinite blocks",
                       "reproduced" if ok else "not reproduced",
                       "exact linear algebra; Appendix C's bias bound holds for H ⪰ 0"
                       + ("" if s.get("appC_bound_holds_psd") else " (bias bound FAILED)"))


def _closed_forms(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    a, p = s["allocate_max_rel_diff_x_vs_cvxpy"], s["prune_max_rel_diff_x_vs_cvxpy"]
    no_worse = all(s[f"{k}_closed_form_no_worse_where_cvxpy_loose"] for k in ("allocate", "prune"))
    ok = max(a, p) < THRESHOLDS["closed_form_rel_error"] and no_worse and s["monotonicity_violations"] == 0
    n = s["allocate_instances"] + s["prune_instances"]
    conv = s["allocate_instances_cvxpy_converged"] + s["prune_instances_cvxpy_converged"]
    return ClaimResult(f"max rel. |x − x_cvxpy|: allocation {a:.1e}, pruning {p:.1e} (on the {conv} where cvxpy "
                       f"meets its KKT conditions to {THRESHOLDS['closed_form_rel_error']:g}); "
                       f"{s['monotonicity_violations']} monotonicity violations",
                       f"{n} random instances, K 2–512", "reproduced" if ok else "not reproduced",
                       "closed form (Eq 12/13, 15) agrees with cvxpy"
                       + ("; where they differ ours has the lower objective"
                          if s["allocate_closed_form_better_where_differs"] and s["prune_closed_form_better_where_differs"]
                          else "; cvxpy sometimes finds a lower objective"))


def _solver_speed(r: Path) -> ClaimResult:
    from mdlcap.study.solver_speed import speed_numbers
    n = speed_numbers(_csv(r, "01_derivations", "speed"))     # rows program / K / method / median_s
    big, t6, e6 = n["largest_K"], n["bisection_largest_K_s"], n["exact_largest_K_s"]
    us, us_exact, sp = n["bisection_K32_us"], n["exact_K32_us"], n["exact_speedup_K32"]
    return ClaimResult(f"K=32: bisection ≤{us:.0f} µs, exact ≤{us_exact:.1f} µs (≥{sp:.0f}× faster than cvxpy); "
                       f"K={big:.0e}: bisection {t6:.2f} s, exact {e6:.2f} s",
                       "numpy (bisection), numba (exact) on this machine's CPU",
                       "reproduced" if t6 < THRESHOLDS["solver_seconds_largest_K"] else "not reproduced",
                       "O(K log 1/ε) bisection and an exact O(K log K) breakpoint solver (the default); "
                       f"the {CLAIMED['solver_speedup_target_K32']}× target over cvxpy at K=32 is "
                       + ("met" if sp >= CLAIMED["solver_speedup_target_K32"] else "not met in this run"))


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
          "§3.1 Eq 15, Table 3", "layer-wise ratios (b={bits:g}, λ={lam:g}, γ={prune_gamma:g}, s={target:g}, "
          "clip {rho_max:g})".format(**TABLE3["Mistral-7B"]), _pruning_degenerate),
]


# --------------------------------------------------------------------------- notebook 06
def _caq_saving(r: Path) -> ClaimResult:
    from mdlcap.study.precision import verdict
    drop = THRESHOLDS["caq_accuracy_loss_points"]
    v = verdict(_csv(r, "06_precision_allocation", "memory_saving"), drop=drop)
    m = v["saving_vs_uniform_mean"]
    ok = "NOT" not in v["verdict"] and "cannot" not in v["verdict"]
    per = ", ".join(f"{k} {100 * x:.0f}%" for k, x in v["per_model"].items())
    return ClaimResult(f"{100 * m:.1f}% saving vs uniform {{4,8,16,32}} at ≤{drop:g} pt loss ({per}); "
                       f"{100 * v['saving_vs_uniform_int_mean']:.1f}% vs uniform at any integer width",
                       "MLP-2/MLP-4/CNN on scikit-learn digits, 5 seeds",
                       "reproduced" if ok else "not reproduced",
                       "uniform at any integer width does better than on the {4,8,16,32} grid, so part of the "
                       "saving is the grid's coarseness" if v["saving_vs_uniform_int_mean"] < m else
                       "saving holds against uniform at any integer width too")


CAQ_RANGE = "{:.0f}–{:.0f}%".format(*(100 * x for x in CLAIMED["caq_saving_range"]))
CLAIMS += [
    Claim(f"CAQ saves {CAQ_RANGE} memory over uniform precision at equal accuracy", "proposal (seed 003)",
          CAQ_RANGE, _caq_saving),
]


# --------------------------------------------------------------------------- notebook 02
def _zeta_vs_gradnorm(r: Path) -> ClaimResult:
    """Notebook 02's own verdict (study.validation.zeta_vs_gradnorm), read from the task-averaged paired
    intervals of Δρ = ρ_s(ζ², decrease) − ρ_s(‖g‖², decrease) over every task and block (intervals.csv)."""
    from mdlcap.study.validation import TARGETS, zeta_vs_gradnorm
    p = r / "02_curvature_scores" / "intervals.csv"
    if not p.exists():
        return ClaimResult("—", "—", "not testable here", "no intervals.csv (rerun notebook 02)")
    v = zeta_vs_gradnorm(pd.read_csv(p))
    label = {"finetune_heldout_decrease": "one-block fine-tuning", "newton_heldout_decrease": "Newton step"}
    parts = []
    for target in reversed(TARGETS):                 # the fine-tuning decrease first: what allocation relies on
        t = v["targets"][target]
        parts.append(f"{label[target]} Δρ = {t['diff']:+.2f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]"
                     if t["assessable"] else f"{label[target]} not assessable")
    ft = v["targets"]["finetune_heldout_decrease"]
    n = ft["n_blocks"] or v["targets"]["newton_heldout_decrease"]["n_blocks"]
    return ClaimResult(
        "ζ² (CG-GGN) − ‖g‖², Spearman with the measured decrease: " + "; ".join(parts), _scale(r), v["verdict"],
        f"95% BCa bootstrap over {n} converged blocks (mean over tasks of the within-task ρ, blocks resampled within "
        "tasks, paired); reproduced = the interval excludes 0 on ζ²'s side for every target; the paper never tests "
        f"this claim; only CG solves with relative residual ≤ {THRESHOLDS['cg_rel_residual']:g} enter",
        ci_low=ft["ci_low"], ci_high=ft["ci_high"], mde=ft["mde"], claim=None, interval_verdict=ft["verdict"])


CLAIMS += [
    Claim("ζ² ranks layers by reducible risk and strictly dominates the gradient norm", "abstract, §2.2",
          "claimed, not measured", _zeta_vs_gradnorm),
]


# --------------------------------------------------------------------------- notebook 03
def pool_comparison(pool: str) -> str:
    """The intervals.csv comparison of MDL against LayerIF with the `pool` scores ("All", "+ve")."""
    name = f"MDL - LayerIF ({pool})"
    if name not in ALLOCATION_COMPARISONS:
        raise ValueError(f"pool: no comparison {name!r} in paper.ALLOCATION_COMPARISONS")
    return name


UNIFORM_COMPARISON = "MDL - uniform"                  # the paper's MDL (LayerIF All scores) vs uniform
ZETA_UNIFORM_COMPARISON = "MDL(zeta2) - uniform"      # Algorithm 1 on ζ² vs uniform, where notebook 03 runs it
assert UNIFORM_COMPARISON in ALLOCATION_COMPARISONS
NOTE_STANDINS = "stand-in tasks on the embedded model are not the paper's benchmarks"


def _alloc_pool(pool: str, claim: float, model: str = "Mistral-7B"):
    def check(r: Path) -> ClaimResult:
        return from_interval(r, "03_allocation", pool_comparison(pool), AVERAGE_TASK, ALLOCATION_METRIC,
                             claim=claim, note=f"paper {claim:+.2f} on {model}; {NOTE_STANDINS}")
    return check


def _uniform(comparison: str):
    def check(r: Path) -> ClaimResult:
        return from_interval(r, "03_allocation", comparison, AVERAGE_TASK, ALLOCATION_METRIC, claim=None,
                             note="the paper states no number for it (γ = 0 of Eq 13 is the uniform allocation); "
                                  + NOTE_STANDINS)
    return check


def _paper_task(r: Path, paper_task: str) -> str:
    """This run's fine-tune task that stands for the paper's `paper_task` (by the stand-in registry,
    else by position in data.finetune_tasks as notebook 03's paper_comparison matches them)."""
    import json

    from mdlcap.default.tasks.registry import stands_for
    m = r / "manifest.json"
    tasks = (json.loads(m.read_text()).get("params", {}).get("data", {}).get("finetune_tasks") if m.exists() else None) \
        or ["cola", "mrpc", "csqa", "obqa", "sciq"]
    hit = [t for t in tasks if stands_for(t) == paper_task]
    i = PAPER_TASKS.index(paper_task)
    return hit[0] if hit else tasks[i] if i < len(tasks) else paper_task


def _sciq(r: Path) -> ClaimResult:
    return from_interval(r, "03_allocation", pool_comparison("All"), _paper_task(r, "ScienceQA"), ALLOCATION_METRIC,
                         claim=CLAIMED["allocation_sciq_gain"], note="the ScienceQA stand-in, All pool")


def _gemma(r: Path) -> ClaimResult:
    if "gemma" not in r.name:
        return ClaimResult("—", "—", "not testable here", "needs Gemma-7B weights and GPUs "
                           "(`make all PARAMS=params/gemma-7b.yaml`)")
    return _alloc_pool("+ve", table_averages(PAPER_TABLE5, "+ve")[2], "Gemma-7B")(r)


def _pool_claim(pool: str, label: str) -> Claim:
    mdl, lif, diff = table_averages(PAPER_TABLE4, pool)
    return Claim(f"MDL expert allocation beats LayerIF on Mistral-7B ({label} scores)", "§3.4, Table 4",
                 f"{mdl:.2f} vs {lif:.2f} ({diff:+.2f})", _alloc_pool(pool, diff))


CLAIMS += [
    _pool_claim("All", "All"),
    _pool_claim("+ve", "+ve"),
    Claim("Largest single gain on ScienceQA", "§3.4, Table 4", f"{CLAIMED['allocation_sciq_gain']:+g}", _sciq),
    Claim("MDL and LayerIF tie on Gemma-7B", "§3.4, Table 5", "ties", _gemma),
    Claim("MDL expert allocation beats uniform experts per layer", "abstract, §2.3",
          "implied, not measured", _uniform(UNIFORM_COMPARISON)),
    Claim("Algorithm 1 on the curvature gain ζ² beats uniform experts per layer", "abstract, §2.2–2.3",
          "claimed, not measured", _uniform(ZETA_UNIFORM_COMPARISON)),
]


# --------------------------------------------------------------------------- notebook 04
PRUNER_LABELS = {"magnitude": "Mag", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
assert PRUNING_PARITY_METRIC in PRUNING_METRICS
PAPER_PROGRAM_PARITY, EQUALITY_PARITY = PRUNING_PARITY_COMPARISONS


def _mdl_uniform_note(r: Path) -> str:
    """A clause where notebook 04's mdl_degeneracy says every MDL ratio vector is constant (the
    paper's program degenerate at its constants, notebook 01), else ''."""
    try:
        deg = _csv(r, "04_pruning", "mdl_degeneracy")
    except FileNotFoundError:
        return ""
    ours = deg[(deg.model == "ours") & (deg.q != "uniform q")]
    uniform = not ours.empty and bool((ours.spread.abs() < THRESHOLDS["uniform_ratio_spread"]).all())
    return "MDL ratios uniform (all at ρ_max): parity holds trivially where the program is degenerate" if uniform else ""


def _pruning_claims(model: str, comparison: str, margin: float | None, degenerate_note: bool = False):
    def check(r: Path) -> ClaimResult:
        parts = {}
        for (m, pruner), v in PRUNING_TABLES.items():
            if m != model:
                continue
            paper = round(v["mdl"] - v["layerif"], 2)
            parts[PRUNER_LABELS[pruner]] = from_interval(
                r, "04_pruning", comparison, pruner, PRUNING_PARITY_METRIC,
                claim=None if margin is not None else paper, margin=margin,
                note=f"paper {paper:+.2f}" + (f", parity margin ±{margin:g} pts" if margin is not None else ""))
        res = combine(parts)
        note = _mdl_uniform_note(r) if degenerate_note else ""
        if note and res.verdict != "not testable here":
            res.ours += "; MDL ratios uniform (all at ρ_max)"
            res.why += f"; {note}"
            if res.verdict == "reproduced":
                res.verdict = "reproduced, trivially"
        return res
    return check


def _gemma_pruning(r: Path) -> ClaimResult:
    if "gemma" not in r.name:
        return ClaimResult("—", "—", "not testable here", "needs Gemma-7B weights and GPUs")
    return _pruning_claims("Gemma-7B", PAPER_PROGRAM_PARITY, margin=None)(r)


PARITY = THRESHOLDS["pruning_parity_points"]
TABLE1 = ", ".join(f"{PRUNER_LABELS[pr]} {v['mdl']:.2f} vs {v['layerif']:.2f}"
                   for (model, pr), v in PRUNING_TABLES.items() if model == "Mistral-7B")
CLAIMS += [
    Claim("At 50% sparsity MDL ratios match LayerIF on Mistral-7B", "§3.4, Table 1", TABLE1,
          _pruning_claims("Mistral-7B", PAPER_PROGRAM_PARITY, PARITY, degenerate_note=True)),
    Claim("At 50% sparsity the MDL program's equality variant (not degenerate) matches LayerIF on Mistral-7B",
          "§3.4, Table 1; METHOD.md §3", TABLE1, _pruning_claims("Mistral-7B", EQUALITY_PARITY, PARITY)),
    Claim("On Gemma-7B MDL and LayerIF pruning split", "§3.4, Table 2", "mixed", _gemma_pruning),
]


# --------------------------------------------------------------------------- notebook 05
def _regret(r: Path) -> ClaimResult:
    v = _csv(r, "05_transfer_regret", "violations")
    s = _csv(r, "05_transfer_regret", "slopes_pooled")
    n, bad = int(v.instances.sum()), int(v.violations.sum())
    inter = s[s.single_regime == "interior"]
    slope = float(inter.median_slope.median()) if not inter.empty else float(s.median_slope.median())
    ok = bad == 0 and abs(slope - CLAIMED["transfer_regret_order"]) < THRESHOLDS["regret_slope_tolerance"]
    return ClaimResult(f"{bad} violations in {n} random instances (all regimes); regret ∝ δ^{slope:.2f}; "
                       f"largest regret/bound {float(v.max_ratio.max()):.2g}", "synthetic K-layer programs",
                       "reproduced" if ok else "not reproduced",
                       "the bound holds even where the proof's Step 2 fails (clipped coordinates): it has slack")


CLAIMS += [
    Claim("Transfer regret is O(δ²) with the Theorem-4 constants", "Appendix D, Thm 4",
          "R ≤ (L_θ/2)(L_q/μ)²‖q_S − q_T‖²", _regret),
]


# --------------------------------------------------------------------------- notebook 07 (future work)
NB07 = "07_joint_and_psi"


def _interval_tasks(r: Path, notebook: str, comparison: str, metric: str) -> list[str]:
    """The tasks (a fine-tune task; the pruners) of `comparison` / `metric` in a notebook's intervals."""
    from mdlcap.study.claim_verdicts import INTERVALS_FILE
    p = r / notebook / INTERVALS_FILE
    if not p.exists():
        return []
    t = pd.read_csv(p)
    return [str(x) for x in t[(t.comparison == comparison) & (t.metric == metric)].task]


def _future_claim(notebook: str, comparison: str, metric: str, lower_is_better: bool = False):
    """A row of the paper's future work (no paper number): one interval per task, combined."""
    def check(r: Path) -> ClaimResult:
        tasks = _interval_tasks(r, notebook, comparison, metric)
        if not tasks:            # from_interval says why (no file, or no such row)
            return from_interval(r, notebook, comparison, "-", metric, claim=None)
        return combine({t: from_interval(r, notebook, comparison, t, metric, claim=None,
                                         lower_is_better=lower_is_better) for t in tasks})
    return check


CLAIMS += [
    Claim("Beyond the paper: one program that allocates and prunes beats Algorithm 2 then Algorithm 1 at equal "
          "description length (test accuracy)", "Appendix G ii (future work)", "no number (future work)",
          _future_claim(NB07, "joint - separate", "accuracy_points")),
    Claim("Beyond the paper: ψ calibrated per pruner gives lower held-out perplexity than ψ = ρ² at equal sparsity",
          "Appendix F, G i (future work)", "no number (future work)",
          _future_claim(NB07, "psi_calibrated - psi_rho2", "rel_ppl", lower_is_better=True)),
]


# --------------------------------------------------------------------------- notebook 08 (future work)
NB08 = "08_online_scores"


CLAIMS += [
    Claim("Beyond the paper: online MDL ranks beat AdaLoRA at equal final rank budget (test accuracy)",
          "Appendix G iii (future work)", "no number (future work)",
          _future_claim(NB08, "online_mdl - adalora", "accuracy_points")),
    Claim("Beyond the paper: online MDL ranks give a lower held-out loss than AdaLoRA at equal final rank budget",
          "Appendix G iii (future work)", "no number (future work)",
          _future_claim(NB08, "online_mdl - adalora", "heldout_loss", lower_is_better=True)),
]
