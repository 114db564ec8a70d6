"""The paper's and the proposal's quantitative claims, each checked against a run's tables.

Every `ours` value is read from a file a notebook wrote; a claim whose notebook has not run
is reported as "not testable here" with the reason, never filled in by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from mdlcap.study.paper import CLAIMED, PAPER_TABLE4, PRUNING_TABLES, TABLE3, THRESHOLDS, table_averages


@dataclass
class ClaimResult:
    ours: str
    scale: str
    verdict: str          # reproduced / not reproduced / partly / not testable here / not assessable (unconverged solves)
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


def _json(run_root: Path, notebook: str, name: str):
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
    ok = err < THRESHOLDS["lemma1_rel_error"]
    return ClaimResult(f"max relative error {err:.1e} over random blocks", "random PD/indefinite blocks",
                       "reproduced" if ok else "not reproduced",
                       "exact linear algebra; Appendix C's bias bound holds for H ⪰ 0"
                       + ("" if s.get("appC_bound_holds_psd") else " (bias bound FAILED)"))


def _closed_forms(r: Path) -> ClaimResult:
    s = _json(r, "01_derivations", "summary")
    a, p = s["allocate_max_rel_diff_x_vs_cvxpy"], s["prune_max_rel_diff_x_vs_cvxpy"]
    ok = max(a, p) < THRESHOLDS["closed_form_rel_error"] and s["monotonicity_violations"] == 0
    n = s["allocate_instances"] + s["prune_instances"]
    return ClaimResult(f"max rel. |x − x_cvxpy|: allocation {a:.1e}, pruning {p:.1e}; "
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
    from mdlcap.study.curvature_scores import zeta_vs_gradnorm   # notebook 02's own verdict, on its tables
    verdict = zeta_vs_gradnorm(_csv(r, "02_curvature_scores", "validation_rank_correlation"),
                               _csv(r, "02_curvature_scores", "validation_vs_damping"))
    t, d = verdict["targets"]["finetune_heldout_decrease"], verdict["damping"]
    g = float(t["grad_norm"])
    over_lam = (f"best converged ζ² over λ {d['best_rho']:+.2f} at λ={d['best_damping']:g}" if d["best_rho"] is not None
                else "no λ of the grid converged")
    if t["cg_ggn_beats_grad_norm"] is None:          # unconverged CG: the verdict is not a number
        return ClaimResult(f"ζ² (CG-GGN) not assessable (CG did not converge) vs ‖g‖² {g:+.2f}; {over_lam}", _scale(r),
                           "not assessable",
                           "every ζ² in a verdict must come from a CG solve with relative residual ≤ "
                           f"{THRESHOLDS['cg_rel_residual']:g}; unconverged λ: {d['unconverged_dampings']}")
    z, ok = float(t["cg_ggn_rho"]), t["cg_ggn_beats_grad_norm"]
    return ClaimResult(
        f"Spearman with one-layer fine-tuning gain: ζ² (CG-GGN, converged) {z:+.2f} vs ‖g‖² {g:+.2f}; {over_lam}",
        _scale(r), "reproduced" if ok else "not reproduced",
        "ranking of layers by measured held-out decrease; the paper never tests this claim; CG solves converged "
        f"(relative residual ≤ {THRESHOLDS['cg_rel_residual']:g}); unconverged λ left out: {d['unconverged_dampings'] or 'none'}")


CLAIMS += [
    Claim("ζ² ranks layers by reducible risk and strictly dominates the gradient norm", "abstract, §2.2",
          "claimed, not measured", _zeta_vs_gradnorm),
]


# --------------------------------------------------------------------------- notebook 03
def _alloc_pool(pool: str, paper: str):
    def check(r: Path) -> ClaimResult:
        vs = _json(r, "03_allocation", "verdict")       # study.allocation.verdict, as notebook 03 wrote it
        v = next((x for x in vs if x["pool"] == pool), None)
        if v is None:
            raise FileNotFoundError(r / "03_allocation" / "verdict.json")
        ok = v["call"] == "MDL better"
        return ClaimResult(f"MDL − LayerIF = {v['diff_points']:+.2f} pts (seed noise {v['seed_noise_points']:.2f}, "
                           f"{v['n_seeds']} seeds): {v['call']}", _scale(r),
                           "reproduced" if ok else "not reproduced",
                           f"paper: {paper}; stand-in tasks on the embedded model are not the paper's benchmarks")
    return check


def _sciq(r: Path) -> ClaimResult:
    c = _csv(r, "03_allocation", "paper_comparison")
    row = c[(c.pool == "All") & (c.paper_task == "ScienceQA")]
    if row.empty:
        raise FileNotFoundError(r / "03_allocation" / "paper_comparison.csv")
    d = float(row.ours_diff.iloc[0])
    return ClaimResult(f"MDL − LayerIF on the ScienceQA stand-in: {d:+.2f} pts", _scale(r),
                       "reproduced" if d > THRESHOLDS["sciq_gain_points"] else "not reproduced",
                       "single-task gap of the All pool")


def _gemma(r: Path) -> ClaimResult:
    if "gemma" not in r.name:
        return ClaimResult("—", "—", "not testable here", "needs Gemma-7B weights and GPUs "
                           "(`make all PARAMS=params/gemma-7b.yaml`)")
    return _alloc_pool("+ve", "ties on Gemma-7B")(r)


def _pool_claim(pool: str, label: str) -> Claim:
    mdl, lif, diff = table_averages(PAPER_TABLE4, pool)
    return Claim(f"MDL expert allocation beats LayerIF on Mistral-7B ({label} scores)", "§3.4, Table 4",
                 f"{mdl:.2f} vs {lif:.2f} ({diff:+.2f})", _alloc_pool(pool, f"{diff:+.2f} on Mistral-7B"))


CLAIMS += [
    _pool_claim("All", "All"),
    _pool_claim("+ve", "+ve"),
    Claim("Largest single gain on ScienceQA", "§3.4, Table 4", f"{CLAIMED['allocation_sciq_gain']:+g}", _sciq),
    Claim("MDL and LayerIF tie on Gemma-7B", "§3.4, Table 5", "ties", _gemma),
]


# --------------------------------------------------------------------------- notebook 04
def _pruning_parity(r: Path) -> ClaimResult:
    t = _csv(r, "04_pruning", "paper_vs_ours")
    t = t[t.score_method.str.startswith("layerif")]
    if t.empty:
        raise FileNotFoundError(r / "04_pruning" / "paper_vs_ours.csv")
    worst = float(t.ours_diff.abs().max())
    per = ", ".join(f"{p} {d:+.2f}" for p, d in t.groupby("pruner", sort=False).ours_diff.first().items())
    deg = _csv(r, "04_pruning", "mdl_degeneracy")
    ours = deg[(deg.model == "ours") & (deg.q != "uniform q")]
    # every MDL ratio vector is constant
    same_as_uniform = bool((ours.spread.abs() < THRESHOLDS["uniform_ratio_spread"]).all())
    at = f"{float(t.mdl_sparsity.iloc[0]):.0%}" if "mdl_sparsity" in t else "50%"   # both sides at MDL's sparsity
    return ClaimResult(f"MDL − LayerIF mean zero-shot accuracy, both at {at} global sparsity: {per} pts"
                       + ("; MDL ratios uniform (all at ρ_max)" if same_as_uniform else ""), _scale(r),
                       ("reproduced, trivially" if same_as_uniform else "reproduced")
                       if worst <= THRESHOLDS["pruning_parity_points"]
                       else "not reproduced",
                       "parity holds trivially where the paper's program is degenerate (uniform ratios, notebook 01)"
                       if same_as_uniform else "MDL and LayerIF ratios differ and are compared head to head")


def _gemma_pruning(r: Path) -> ClaimResult:
    if "gemma" not in r.name:
        return ClaimResult("—", "—", "not testable here", "needs Gemma-7B weights and GPUs")
    return _pruning_parity(r)


PRUNER_LABELS = {"magnitude": "Mag", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
CLAIMS += [
    Claim("At 50% sparsity MDL ratios match LayerIF on Mistral-7B", "§3.4, Table 1",
          ", ".join(f"{PRUNER_LABELS[pr]} {v['mdl']:.2f} vs {v['layerif']:.2f}"
                    for (model, pr), v in PRUNING_TABLES.items() if model == "Mistral-7B"), _pruning_parity),
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
