"""Every number the paper (and the CAQ proposal) states, and every verdict threshold: one place.

Notebooks, claims and tables read these; nothing else types them again. Paper numbers are
printed beside our runs, never mixed into them.

    PRUNING_TABLES     Tables 1-2: mean zero-shot accuracy (%) at 50 % sparsity, MDL vs LayerIF
    TABLE3             Table 3: the hyper-parameters of Algorithms 1-2 per model
    RHO_MAX_CLIP       the ratio clip ρ_max of Algorithm 2 per model (Table 3)
    PAPER_TASKS        the fine-tuning benchmarks of Tables 4-5, in their column order
    PAPER_TABLE4/5     Tables 4 (Mistral-7B) and 5 (Gemma-7B): accuracy (%) after LoRA-MoE fine-tuning
    table_averages     a pool's MDL and LayerIF averages and their difference (+2.66, +0.67)
    CLAIMED            the other figures the claims quote, as the paper / proposal states them
    THRESHOLDS         every verdict threshold a notebook or a claim applies
    *_COMPARISONS      the comparison names notebooks write to <notebook>/intervals.csv and claims read
"""
from __future__ import annotations

# --------------------------------------------------------------------------- Tables 1-2 (pruning)
# (model, pruner) -> mean zero-shot accuracy (%) of the "Average (MDL)" and the LayerIF rows, 50 %.
PRUNING_TABLES = {
    ("Mistral-7B", "magnitude"): {"mdl": 56.23, "layerif": 56.41},
    ("Mistral-7B", "wanda"): {"mdl": 58.63, "layerif": 58.67},
    ("Mistral-7B", "sparsegpt"): {"mdl": 60.18, "layerif": 60.18},
    ("Gemma-7B", "magnitude"): {"mdl": 33.34, "layerif": 32.91},
    ("Gemma-7B", "wanda"): {"mdl": 49.47, "layerif": 52.30},
    ("Gemma-7B", "sparsegpt"): {"mdl": 49.22, "layerif": 50.79},
}
PRUNING_TARGET = 0.5          # global sparsity of Tables 1-2


def pruning_table():
    """Tables 1-2 as a frame: model, pruner, paper_mdl, paper_layerif, paper_diff (MDL - LayerIF)."""
    import pandas as pd

    paper = pd.DataFrame([{"model": m, "pruner": pr, "paper_mdl": v["mdl"], "paper_layerif": v["layerif"]}
                          for (m, pr), v in PRUNING_TABLES.items()])
    paper["paper_diff"] = paper["paper_mdl"] - paper["paper_layerif"]
    return paper


# --------------------------------------------------------------------------- Table 3 (hyper-parameters)
RHO_MAX_CLIP = {"Mistral-7B": 0.51, "Gemma-7B": 0.55}
TABLE3 = {
    "Mistral-7B": {"alpha": 1.0, "beta": 0.9, "gamma": 0.5, "budget_scaling": 0.0276, "total_experts": 160,
                   "bits": 16.0, "lam": 2.0, "prune_gamma": 1.0, "target": PRUNING_TARGET,
                   "rho_max": RHO_MAX_CLIP["Mistral-7B"], "epochs": 5},
    "Gemma-7B": {"alpha": 1.0, "beta": 0.9, "gamma": 0.5, "budget_scaling": 0.02,
                 "bits": 16.0, "lam": 2.0, "prune_gamma": 1.0, "target": PRUNING_TARGET,
                 "rho_max": RHO_MAX_CLIP["Gemma-7B"], "epochs": 5},
}

# --------------------------------------------------------------------------- Tables 4-5 (allocation)
PAPER_TASKS = ("CoLA", "MRPC", "CommonsenseQA", "OpenBookQA", "ScienceQA")
PAPER_TABLE4 = {   # Mistral-7B: (pool, method) -> accuracies in PAPER_TASKS order, then the average
    ("All", "LayerIF"): (85.62, 83.59, 81.24, 85.20, 66.41, 80.41),
    ("All", "MDL"): (87.44, 82.72, 80.43, 85.00, 79.77, 83.07),
    ("+ve", "LayerIF"): (86.10, 82.84, 81.40, 85.80, 80.80, 83.39),
    ("+ve", "MDL"): (85.90, 84.23, 80.18, 86.40, 83.59, 84.06),
}
PAPER_TABLE5 = {   # Gemma-7B, +ve pool only (All gave identical counts)
    ("+ve", "LayerIF"): (87.15, 84.41, 82.64, 88.40, 94.69, 87.46),
    ("+ve", "MDL"): (87.34, 84.99, 81.57, 88.80, 94.92, 87.52),
}



def table_averages(table: dict, pool: str) -> tuple[float, float, float]:
    """(MDL, LayerIF, MDL − LayerIF rounded to the table's 2 decimals) task averages of one pool of
    PAPER_TABLE4 or PAPER_TABLE5 (Table 4, All: 83.07, 80.41, +2.66; +ve: 84.06, 83.39, +0.67)."""
    mdl, lif = table[(pool, "MDL")][-1], table[(pool, "LayerIF")][-1]
    return mdl, lif, round(mdl - lif, 2)


# --------------------------------------------------------------------------- quoted figures
# As the paper / proposal writes them (Table 4's average differences: `table_averages`).
CLAIMED = {
    "allocation_sciq_gain": 13.4,              # §3.4: largest single gain (ScienceQA, All pool)
    "caq_saving_range": (0.15, 0.25),          # proposal: CAQ saves 15-25 % memory over uniform precision
    "transfer_regret_order": 2,                # Thm 4: regret O(δ²)
    "solver_speedup_target_K32": 1000,         # proposal: ≥ 1000× faster than cvxpy at K = 32
    "solver_time_target_K32_us": 100,          # proposal: ≤ 100 µs per solve at K = 32
    "zeta_cost_gradient_passes": 3,            # ζ² at ≤ 3× the cost of a gradient pass
}

# --------------------------------------------------------------------------- verdict thresholds
THRESHOLDS = {
    "closed_form_rel_error": 1e-5,   # closed forms vs cvxpy (Theorems 2-3): max relative deviation
    "lemma1_rel_error": 1e-8,        # Lemma 1: ζ²/2 vs the exact one-layer Newton decrease
    "solver_seconds_largest_K": 5.0,  # bisection at the largest K of notebook 01 (K = 1e6) must take less
    "allocation_ceiling": 0.95,      # notebook 03: a cell at or above this accuracy cannot rank methods
    "allocation_plateau": 0.05,      # notebook 03: share of a cell's held-out loss decrease made in its last quarter <= this
    "allocation_min_seeds": 5,       # notebook 03: seeds shared by every method of the powered comparison
    "pruning_parity_points": 1.0,    # Tables 1-2 "match": |MDL - LayerIF| at most this many points
    "zeroshot_mean_se_points": 1.0,  # notebook 04: binomial s.e. of the seven-task zero-shot mean at most this
    "pruning_design_rel_ppl": 0.20,  # notebook 04: 50 % uniform magnitude must raise held-out perplexity this much
    "uniform_ratio_spread": 1e-9,    # a ratio vector with max - min below this is uniform
    "sweep_rel_gain": 0.05,          # notebook 04: layer-wise ratios "matter" above 5 % lower perplexity
    "regret_slope_tolerance": 0.2,   # Thm 4: fitted log-log slope within this of CLAIMED order 2
    "caq_accuracy_loss_points": 1.0,  # CAQ "equal accuracy": at most this many points below full precision
    "above_chance_z": 2.0,           # notebook 00: a task is answered above chance when z > this
    "cg_rel_residual": 1e-3,         # notebook 02: a ζ² solve is converged at ‖b − (H+λI)x‖/‖b‖ <= this (issue 14)
    "program_kkt": 1e-9,             # notebook 07: the joint and calibrated-ψ solves' KKT residual and objective excess over cvxpy
}


# --------------------------------------------------------------------------- interval tables
# The names under which notebooks write their paired comparisons to <notebook>/intervals.csv
# (schema: mdlcap.study.stats.INTERVAL_COLUMNS) and claims.py reads them back.
ALLOCATION_COMPARISONS = {           # notebook 03: comparison -> (baseline method, MDL method)
    "MDL - LayerIF (All)": ("layerif_all", "mdl_layerif_all"),
    "MDL - LayerIF (+ve)": ("layerif_pos", "mdl_layerif_pos"),
    "MDL - uniform": ("uniform", "mdl_layerif_all"),     # the paper's MDL (Table 4's All scores)
    "MDL(zeta2) - uniform": ("uniform", "mdl_cg_ggn"),   # Algorithm 1 on ζ² (CG, GGN), where it is run
}
ALLOCATION_METRIC = "accuracy_points"           # test accuracy, percentage points
PRUNING_METRICS = ("perplexity_rel", "zeroshot_points")   # notebook 04: relative ppl change; zero-shot points
# notebook 04 (task = pruner): the Tables 1-2 parity rows, both sides at one global sparsity: the paper's
# program as it runs (at its own sparsity, LayerIF re-solved there) and the equality variant at the target
PRUNING_PARITY_COMPARISONS = ("mdl - layerif@mdl", "mdl_eq - layerif")
PRUNING_PARITY_METRIC = "zeroshot_points"      # Tables 1-2 report mean zero-shot accuracy
AVERAGE_TASK = "Average"                         # the task-average row of every intervals table
