"""Tables and figures of notebook 06, computed from `mdlcap.study.precision.run_study` outputs
(the verdict, which reads the proposal's numbers, is `mdlcap.study.precision.verdict`).

Every function takes the long tables (`alloc`, `stats`, `floor`, `contrib`, concatenated over
models and seeds) and returns a DataFrame or a matplotlib figure; nothing here is typed in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MAIN = ["uniform", "caq_exact", "caq_relaxed", "grad_norm", "hawq_trace", "random_best", "mdl"]
STAT_COLUMNS = ["kappa", "kappa_rms", "kappa_op", "lipschitz", "lipschitz_local", "diam", "flops", "params",
                "grad_norm2", "hess_trace"]


def bits_matrix(alloc: pd.DataFrame) -> list[list[int]]:
    return [[int(b) for b in s.split("-")] for s in alloc["bits"]]


def frontier(alloc: pd.DataFrame, methods=MAIN + ["uniform_int"]) -> pd.DataFrame:
    """Mean accuracy and average bits over seeds per (model, method, knob), and whether the
    point lies on the method's accuracy-vs-bits Pareto frontier (no point with fewer or equal
    bits has higher accuracy)."""
    df = alloc[alloc.method.isin(methods)]
    g = (df.groupby(["model", "method", "knob"], as_index=False)
         .agg(avg_bits=("avg_bits", "mean"), acc=("acc", "mean"), acc_std=("acc", "std"), n_seeds=("seed", "nunique")))
    g = g.sort_values(["model", "method", "avg_bits", "acc"], ascending=[True, True, True, False])
    g["on_front"] = False
    for _, idx in g.groupby(["model", "method"]).groups.items():
        best = -np.inf
        for i in idx:
            if g.at[i, "acc"] > best + 1e-12:
                g.at[i, "on_front"] = True
                best = g.at[i, "acc"]
    return g.reset_index(drop=True)


def memory_saving(alloc: pd.DataFrame, drops=(0.0, 0.5, 1.0, 2.0), methods=MAIN) -> pd.DataFrame:
    """Memory at fixed accuracy (prop. §4.3 metric 2): per model and seed, the fewest average bits
    a method needs to keep test accuracy ≥ fp32 accuracy − drop (points); saving versus uniform
    (the proposal's grid {4,8,16,32}) and versus uniform at any integer width."""
    rows = []
    for (model, seed), d in alloc.groupby(["model", "seed"]):
        fp = float(d["fp32_acc"].iloc[0])
        for drop in drops:
            target = fp - drop / 100 - 1e-9
            need = {m: d[(d.method == m) & (d.acc >= target)]["avg_bits"].min() for m in set(methods) | {"uniform", "uniform_int"}}
            for m in methods:
                rows.append({"model": model, "seed": seed, "drop_pts": drop, "method": m, "min_avg_bits": need[m],
                             "saving_vs_uniform": 1 - need[m] / need["uniform"],
                             "saving_vs_uniform_int": 1 - need[m] / need["uniform_int"]})
    per_seed = pd.DataFrame(rows)
    return (per_seed.groupby(["model", "drop_pts", "method"], as_index=False)
            .agg(min_avg_bits=("min_avg_bits", "mean"), saving_vs_uniform=("saving_vs_uniform", "mean"),
                 saving_vs_uniform_std=("saving_vs_uniform", "std"),
                 saving_vs_uniform_int=("saving_vs_uniform_int", "mean"),
                 n_seeds=("min_avg_bits", "count")))


def accuracy_at_memory(alloc: pd.DataFrame, budgets=(4.5, 5.0, 6.0, 8.0), methods=MAIN) -> pd.DataFrame:
    """Accuracy at fixed memory (prop. §4.3 metric 3): best test accuracy with average bits ≤
    budget, per seed, and its gain over uniform (in accuracy points)."""
    rows = []
    for (model, seed), d in alloc.groupby(["model", "seed"]):
        for b in budgets:
            best = {m: d[(d.method == m) & (d.avg_bits <= b + 1e-9)]["acc"].max() for m in set(methods) | {"uniform"}}
            for m in methods:
                rows.append({"model": model, "seed": seed, "avg_bits_budget": b, "method": m, "acc": best[m],
                             "gain_pts_vs_uniform": 100 * (best[m] - best["uniform"])})
    per_seed = pd.DataFrame(rows)
    return (per_seed.groupby(["model", "avg_bits_budget", "method"], as_index=False)
            .agg(acc=("acc", "mean"), acc_std=("acc", "std"), gain_pts_vs_uniform=("gain_pts_vs_uniform", "mean"),
                 memory_frac_of_fp32=("avg_bits_budget", lambda s: float(s.iloc[0]) / 32)))


def tightness(alloc: pd.DataFrame, methods=("caq_exact",)) -> pd.DataFrame:
    """Predicted Φ against the observed worst-case logit error: factor Φ / observed (≥ 1: the
    composition bound held), per model and method (prop. §4.4 (3): 'within 10×')."""
    d = alloc[alloc.method.isin(methods) & (alloc.out_err_max > 0)].copy()
    d["factor"] = d["phi"] / d["out_err_max"]
    return (d.groupby(["model", "method"], as_index=False)
            .agg(n=("factor", "size"), factor_median=("factor", "median"), factor_min=("factor", "min"),
                 factor_max=("factor", "max"), bound_held_frac=("factor", lambda f: float(np.mean(f >= 1))),
                 within_10x_frac=("factor", lambda f: float(np.mean((f >= 0.1) & (f <= 10))))))


def floor_tightness(floor: pd.DataFrame) -> pd.DataFrame:
    """How the proposal's 'lower bound' p* compares with the bits a layer really needs for error
    ε at its own output (stage alone quantised). A valid lower bound has p* ≤ p_empirical; the
    gap p_empirical − p* says how loose it is. Also for κ read as the Hessian's operator norm
    and for the linear-regime formula p ≥ log₂(L‖x‖/ε) of the same theorem."""
    rows = []
    d = floor.dropna(subset=["p_empirical"])
    for (model, r), g in d.groupby(["model", "eps_rel"]):
        for est in ("p_star", "p_star_op", "p_linear"):
            gap = g["p_empirical"] - g[est]
            rows.append({"model": model, "eps_rel": r, "estimate": est, "n": len(g),
                         "valid_lower_bound_frac": float(np.mean(gap >= 0)),
                         "gap_bits_mean": float(gap.mean()), "gap_bits_min": float(gap.min()),
                         "gap_bits_max": float(gap.max())})
    return pd.DataFrame(rows)


def robustness(alloc: pd.DataFrame) -> pd.DataFrame:
    """CAQ with κ off by 2× (all up, all down, random per layer) and without floors, against CAQ
    itself at the same (model, seed, ε): how often the allocation changes, bits and accuracy."""
    base = alloc[alloc.method == "caq_exact"].set_index(["model", "seed", "knob"])[["bits", "avg_bits", "acc"]]
    rows = []
    for m in ("caq_exact_kappa_x2", "caq_exact_kappa_x0.5", "caq_exact_kappa_rand", "caq_exact_nofloor"):
        d = alloc[alloc.method == m]
        j = d.merge(base.reset_index(), on=["model", "seed", "knob"], suffixes=("", "_base"))
        for model, g in j.groupby("model"):
            rows.append({"model": model, "variant": m, "n": len(g),
                         "changed_frac": float(np.mean(g["bits"] != g["bits_base"])),
                         "d_avg_bits_mean": float((g["avg_bits"] - g["avg_bits_base"]).mean()),
                         "d_acc_pts_mean": float(100 * (g["acc"] - g["acc_base"]).mean()),
                         "d_acc_pts_max_abs": float(100 * (g["acc"] - g["acc_base"]).abs().max())})
    return pd.DataFrame(rows)


def kappa_vs_bits(alloc: pd.DataFrame, stats: pd.DataFrame, method: str = "caq_exact") -> pd.DataFrame:
    """One row per (allocation, layer): κ_i and the bits it got (prop. §4.3 metric 4)."""
    d = alloc[alloc.method == method].reset_index(drop=True)
    rows = []
    for (_, r), bits in zip(d.iterrows(), bits_matrix(d)):
        for i, b in enumerate(bits):
            rows.append({"model": r["model"], "seed": r["seed"], "knob": r["knob"], "layer": i, "bits": b})
    out = pd.DataFrame(rows)
    return out.merge(stats[["model", "seed", "layer", "kappa", "lipschitz", "diam", "flops"]], on=["model", "seed", "layer"])


def kappa_bits_correlation(kb: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation of κ_i with allocated bits, within each allocation, averaged."""
    from scipy.stats import spearmanr

    rows = []
    for model, g in kb.groupby("model"):
        rs = []
        for _, a in g.groupby(["seed", "knob"]):
            if a["bits"].nunique() > 1 and a["kappa"].nunique() > 1:
                rs.append(spearmanr(a["kappa"], a["bits"]).statistic)
        rows.append({"model": model, "n_nonuniform_allocations": len(rs),
                     "spearman_kappa_bits_mean": float(np.mean(rs)) if rs else np.nan})
    return pd.DataFrame(rows)


def layer_stats_mean(stats: pd.DataFrame, cols=STAT_COLUMNS) -> pd.DataFrame:
    """Layer statistics averaged over seeds, indexed by (model, layer)."""
    return stats.groupby(["model", "layer"])[list(cols)].mean()


def waterfall(contrib: pd.DataFrame, model: str, seed: int) -> tuple[float, pd.DataFrame]:
    """The error contributions of one CAQ allocation of (model, seed) for the waterfall figure:
    the middle ε_rel among those whose allocation is not uniform (the middle ε_rel of all when
    every one is uniform). Returns (ε_rel, its rows)."""
    c = contrib[(contrib.model == model) & (contrib.seed == seed)]
    nonuni = [r for r, g in c.groupby("eps_rel") if g["bits"].nunique() > 1]
    r_pick = nonuni[len(nonuni) // 2] if nonuni else sorted(c["eps_rel"].unique())[len(c["eps_rel"].unique()) // 2]
    return r_pick, c[c.eps_rel == r_pick]


def relaxation_vs_exact(alloc: pd.DataFrame) -> pd.DataFrame:
    """Extra bit-operations of relax-and-round over the exact optimum at the same (model, seed, ε),
    per model (≥ 0 by exactness; a negative min_excess would be a solver bug)."""
    ex = alloc[alloc.method == "caq_exact"][["model", "seed", "knob", "bitops"]]
    rl = alloc[alloc.method == "caq_relaxed"][["model", "seed", "knob", "bitops"]]
    j = rl.merge(ex, on=["model", "seed", "knob"], suffixes=("", "_exact"))
    j["excess_bitops"] = j["bitops"] / j["bitops_exact"] - 1
    return j.groupby("model").agg(n=("excess_bitops", "size"), excess_mean=("excess_bitops", "mean"),
                                  excess_max=("excess_bitops", "max"),
                                  worse_frac=("excess_bitops", lambda e: float(np.mean(e > 1e-12))),
                                  min_excess=("excess_bitops", "min")).reset_index()


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_pareto(front: pd.DataFrame):
    plt = _plt()
    models = list(front.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for meth, g in front[front.model == m].groupby("method"):
            f = g[g.on_front].sort_values("avg_bits")
            ax.plot(f["avg_bits"], 100 * f["acc"], marker="o", ms=3, label=meth,
                    ls="--" if meth == "uniform_int" else "-", color="k" if meth == "uniform_int" else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks([2, 3, 4, 6, 8, 12, 16, 24, 32], ["2", "3", "4", "6", "8", "12", "16", "24", "32"])
        ax.set_xlabel("average bits per weight")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(m)
        lo = 100 * front[front.model == m]["acc"].quantile(0.2)
        hi = 100 * front[front.model == m]["acc"].max()
        ax.set_ylim(max(0, lo - 2), min(100.2, hi + 0.5))
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def heatmap_table(alloc: pd.DataFrame, model: str, seed: int, avg_bits: float = 8.0, methods=MAIN) -> pd.DataFrame:
    """Layers × methods: each method's allocation whose average bits is closest to `avg_bits`."""
    d = alloc[(alloc.model == model) & (alloc.seed == seed)]
    cols = {}
    for m in methods:
        g = d[d.method == m]
        if len(g):
            r = g.iloc[int(np.argmin(np.abs(g["avg_bits"].to_numpy() - avg_bits)))]
            cols[f"{m} ({r['avg_bits']:.1f})"] = [int(b) for b in r["bits"].split("-")]
    return pd.DataFrame(cols).rename_axis("layer")


def plot_heatmap(table: pd.DataFrame, title: str = ""):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 2, 0.5 * table.shape[0] + 1.5))
    im = ax.imshow(np.log2(table.to_numpy(float)), cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), [f"layer {i}" for i in table.index])
    fig.colorbar(im, ax=ax, label="log2 bits")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_kappa_scatter(kb: pd.DataFrame):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    rng = np.random.default_rng(0)
    for m, g in kb.groupby("model"):
        ax.scatter(g["kappa"], g["bits"] * np.exp(rng.normal(0, 0.04, len(g))), s=8, alpha=0.5, label=m)
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("κ_i (mean ‖H v‖/‖v‖)")
    ax.set_ylabel("bits allocated by CAQ (jittered)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_waterfall(contrib: pd.DataFrame, title: str = ""):
    """Cumulative error by layer: predicted a_i 2^{-p_i} (composition) and observed (layer alone)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    c = contrib.sort_values("layer")
    x = np.arange(len(c))
    for k, (col, off, color) in enumerate((("predicted", -0.2, "tab:blue"), ("observed", 0.2, "tab:orange"))):
        v = c[col].to_numpy(float)
        bottoms = np.concatenate([[0], np.cumsum(v)[:-1]])
        ax.bar(x + off, v, 0.4, bottom=bottoms, color=color, label=f"{col} (total {v.sum():.3g})")
    ax.set_xticks(x, [f"L{i}\n{int(b)} bits" for i, b in zip(c["layer"], c["bits"])])
    ax.set_ylabel("cumulative output error")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_phi_vs_observed(alloc: pd.DataFrame, methods=("caq_exact", "uniform", "uniform_int")):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    d = alloc[alloc.method.isin(methods) & (alloc.out_err_max > 0)]
    for (m, meth), g in d.groupby(["model", "method"]):
        ax.scatter(g["out_err_max"], g["phi"], s=10, alpha=0.6, label=f"{m}/{meth}")
    lim = [d[["phi", "out_err_max"]].min().min(), d[["phi", "out_err_max"]].max().max()]
    for f, ls in ((1, "-"), (10, ":"), (0.1, ":")):
        ax.plot(lim, [f * v for v in lim], "k", ls=ls, lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("observed max ‖F̃(x) − F(x)‖ (test)")
    ax.set_ylabel("predicted Φ")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
