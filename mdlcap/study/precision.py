"""Notebook 06 drivers: the CAQ study of one trained network per (model, seed), cached, and the
verdict the notebook prints (CAQ, METHOD.md §5).

    run_study(params, data, model, seed)    train (cached), layer statistics, every allocation method
    run_all(params, data)                   run_study over params.precision.models × seeds, concatenated
    alt_grid_params(params)                 the params of the finer-grid ablation (None if not asked)
    verdict(saving)                         does the proposal's 15-25 % saving show up?
    summary_lines(tables, ...)              the verdict paragraph, computed from the tables

`study_model` runs, on one network: uniform on the grid and at every integer width; CAQ exact
(with and without the floors p*, and with κ off by a factor), CAQ relax-and-round; the
gradient-norm and HAWQ sensitivity baselines, the MDL program with capacity = bits; the best of
`n_random` random allocations. The tables of the notebook are `mdlcap.interventions.precision.analysis`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mdlcap import cache
from mdlcap.interventions.precision.data import ImageData
from mdlcap.interventions.precision.measure import empirical_min_bits, evaluate, layer_contributions
from mdlcap.interventions.precision.quantize import QuantNet, fake_quantize
from mdlcap.interventions.precision.solve import (BIT_CHOICES, Infeasible, allocate_exact, allocate_min_error,
                                                  caq_relaxed, caq_tables, composed_error, composition_weights,
                                                  mdl_bits, pareto_front, precision_floor)
from mdlcap.interventions.precision.stats import layer_stats
from mdlcap.interventions.precision.train import trained_model
from mdlcap.study.paper import CLAIMED, THRESHOLDS

TABLES = ("stats", "alloc", "floor", "contrib")
BASELINES = ("grad_norm", "hawq_trace", "random_best", "mdl")


# --------------------------------------------------------------------------- one network
@dataclass
class StudyConfig:
    bits: tuple[int, ...] = BIT_CHOICES
    eps_rel: tuple[float, ...] = tuple(np.logspace(-3, np.log10(3.0), 12))   # ε_target / median ‖F(x)‖
    avg_bits_targets: tuple[float, ...] = (4, 5, 6, 7, 8, 10, 12, 16)
    uniform_int: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16)
    n_random: int = 100
    quantize_activations: bool = True
    eps0: float = 0.0
    mdl_alpha: float = 0.01
    mdl_beta: float = 1.0
    mdl_gamma: float = 0.5
    kappa_factor: float = 2.0
    floor_eps_rel: tuple[float, ...] = (1e-2, 1e-1)
    seed: int = 0


def _bits_str(bits) -> str:
    return "-".join(str(int(b)) for b in bits)


def study_model(model: QuantNet, data: ImageData, stats: pd.DataFrame, cfg: StudyConfig,
                device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Run every allocation method on one trained network; one row per (method, knob).

    `knob`: ε_target / median ‖F(x)‖ for the CAQ rows (−b: ε = Φ of uniform b bits), the average-bits target for the
    budgeted baselines, the width for uniform. Returns {"alloc": allocations with test accuracy, avg bits, predicted Φ and observed error,
    "floor": p*_i against the empirically needed bits, "contrib": per-layer predicted vs observed
    error contributions of the CAQ allocations}.
    """
    grid = np.asarray(cfg.bits, dtype=np.float64)
    xv = torch.as_tensor(data.x_val, device=device)
    yv = torch.as_tensor(data.y_val, device=device)
    xt = torch.as_tensor(data.x_test, device=device)
    yt = torch.as_tensor(data.y_test, device=device)
    with torch.no_grad():
        ref_t, ref_v = model(xt), model(xv)
    fp_acc = float((ref_t.argmax(1) == yt).float().mean())
    out_scale = float(ref_v.norm(dim=1).median())
    Ls = stats["lipschitz"].to_numpy(float)
    diam = stats["diam"].to_numpy(float)
    kap = stats["kappa"].to_numpy(float)
    flops = stats["flops"].to_numpy(float)
    n_par = stats["params"].to_numpy(float)
    a = composition_weights(Ls, diam)
    in_term = float(np.prod(Ls) * cfg.eps0)
    cache: dict[tuple, dict] = {}

    def ev(bits):
        key = tuple(int(b) for b in bits)
        if key not in cache:
            r = evaluate(model, key, xt, yt, quantize_activations=cfg.quantize_activations, ref_logits=ref_t)
            r["avg_bits"] = float(np.dot(key, n_par) / n_par.sum())
            r["bitops"] = float(np.dot(key, flops))
            r["phi"] = composed_error(Ls, diam, key, cfg.eps0)
            cache[key] = r
        return cache[key]

    rows = []

    def add(method, knob, bits, **extra):
        rows.append({"method": method, "knob": float(knob), "bits": _bits_str(bits), **ev(bits), **extra})

    # uniform on the proposal's grid and on every integer width (a stronger reference)
    for b in cfg.bits:
        add("uniform", b, [b] * len(a))
    for b in cfg.uniform_int:
        add("uniform_int", b, [b] * len(a))
    # CAQ: exact integer optimum and the proposal's relaxation + rounding, over ε_target
    contrib = []
    # the sweep, plus the Φ of every uniform allocation on the grid: at those targets CAQ and
    # uniform promise the same error, so CAQ's bit-operations can only be lower (exactness)
    # (knob −b marks "ε = Φ(uniform b)"; positive knobs are ε / median ‖F(x)‖, shared across seeds)
    targets = [(float(r), float(r) * out_scale) for r in cfg.eps_rel]
    targets += [(-float(b), composed_error(Ls, diam, [b] * len(a), cfg.eps0) * (1 + 1e-9)) for b in cfg.bits]
    for r, eps in targets:
        p_star = precision_floor(kap, diam, eps)
        cost, err, allowed = caq_tables(a, flops, cfg.bits, p_star)
        try:   # ablation: the same program without the floors p_i ≥ p*_i (does p* matter?)
            add("caq_exact_nofloor", r, grid[allocate_exact(cost, err, eps - in_term).choice], eps_target=eps)
        except Infeasible:
            pass
        try:
            al = allocate_exact(cost, err, eps - in_term, allowed)
            bits = grid[al.choice]
            add("caq_exact", r, bits, eps_target=eps, max_floor=float(p_star.max()),
                n_floor_above_min=int(np.sum(p_star > grid.min())))
            contrib.append(pd.DataFrame({"eps_rel": r, "eps_target": eps, "layer": np.arange(len(a)), "bits": bits,
                                         "predicted": a * np.exp2(-bits),
                                         "observed": layer_contributions(model, bits, xt,
                                                                         quantize_activations=cfg.quantize_activations)}))
        except Infeasible:
            pass
        try:
            ch = caq_relaxed(a, flops, eps - in_term, cfg.bits, p_star, solver="pgd")
            add("caq_relaxed", r, grid[ch], eps_target=eps)
        except Infeasible:
            pass
        # robustness: κ off by a factor 2 (all up, all down, random per layer)
        rng = np.random.default_rng(cfg.seed + 17)
        for tag, fac in (("x2", np.full(len(a), cfg.kappa_factor)), ("x0.5", np.full(len(a), 1 / cfg.kappa_factor)),
                         ("rand", cfg.kappa_factor ** rng.choice([-1.0, 1.0], size=len(a)))):
            try:
                c2, e2, al2 = caq_tables(a, flops, cfg.bits, precision_floor(kap * fac, diam, eps))
                add(f"caq_exact_kappa_{tag}", r, grid[allocate_exact(c2, e2, eps - in_term, al2).choice], eps_target=eps)
            except Infeasible:
                pass
    # sensitivity baselines: min Σ s_i ‖Q_p(W_i) − W_i‖ s.t. memory ≤ target, exact
    dW2 = np.array([[float((fake_quantize(st.op.weight.detach(), int(b)) - st.op.weight.detach()).pow(2).sum())
                     for b in cfg.bits] for st in model.stages])
    mem = n_par[:, None] * grid[None, :]
    gn = stats["grad_norm2"].to_numpy(float)
    tr = np.clip(stats["hess_trace"].to_numpy(float), 0.0, None) / n_par
    fronts = {"grad_norm": pareto_front(mem, np.sqrt(gn)[:, None] * np.sqrt(dW2)),   # first order: ‖g‖‖ΔW‖
              "hawq_trace": pareto_front(mem, tr[:, None] * dW2)}                   # HAWQ-V2: tr(H)/n ‖ΔW‖²
    for t in cfg.avg_bits_targets:
        cap = t * n_par.sum()
        for name, fr in fronts.items():
            try:
                add(name, t, grid[allocate_min_error(None, None, cap, front=fr).choice])
            except Infeasible:
                pass
        try:
            ch, _ = mdl_bits(kap / kap.sum(), n_par, t, cfg.bits, alpha=cfg.mdl_alpha, beta=cfg.mdl_beta,
                             gamma=cfg.mdl_gamma)
            add("mdl", t, grid[ch])
        except (ImportError, AttributeError):
            pass
    # random search: 100 allocations with average bits ≤ target, best on validation
    rng = np.random.default_rng(cfg.seed)
    scales_cache = {}
    for t in cfg.avg_bits_targets:
        best, best_acc = None, -1.0
        for _ in range(cfg.n_random):
            ch = rng.integers(0, len(grid), size=len(a))
            while np.dot(grid[ch], n_par) > t * n_par.sum() * (1 + 1e-12):
                i = rng.choice(np.flatnonzero(ch > 0))
                ch[i] -= 1
            key = tuple(int(b) for b in grid[ch])
            if key not in scales_cache:
                scales_cache[key] = evaluate(model, key, xv, yv, quantize_activations=cfg.quantize_activations,
                                             ref_logits=ref_v)["acc"]
            if scales_cache[key] > best_acc:
                best, best_acc = key, scales_cache[key]
        add("random_best", t, best, val_acc=best_acc)
    alloc = pd.DataFrame(rows)
    alloc["fp32_acc"] = fp_acc
    alloc["out_scale"] = out_scale
    # how tight is the proposal's "lower bound" p*? compare with the bits each stage needs
    floors = []
    xin = model.stage_inputs(xv)
    with torch.no_grad():
        med_out = [float(model.stages[i](xin[i]).flatten(1).norm(dim=1).median()) for i in range(len(a))]
    kap_op = stats["kappa_op"].to_numpy(float)
    for r in cfg.floor_eps_rel:
        eps_i = r * np.asarray(med_out)
        p_emp = empirical_min_bits(model, xv, eps_i, quantize_activations=cfg.quantize_activations)
        for i in range(len(a)):
            floors.append({"eps_rel": r, "layer": i, "eps": eps_i[i],
                           "p_star": 0.5 * np.log2(kap[i] * diam[i] ** 2 / eps_i[i]),
                           "p_star_op": 0.5 * np.log2(kap_op[i] * diam[i] ** 2 / eps_i[i]),
                           "p_linear": float(np.log2(Ls[i] * diam[i] / eps_i[i])),
                           "p_empirical": p_emp[i]})
    return {"alloc": alloc, "floor": pd.DataFrame(floors),
            "contrib": pd.concat(contrib, ignore_index=True) if contrib else pd.DataFrame()}




def config_from_params(pp, seed: int = 0) -> StudyConfig:
    """StudyConfig from a params.precision section."""
    lo, hi = pp.eps_rel_range
    return StudyConfig(bits=tuple(pp.bit_choices), eps_rel=tuple(np.logspace(np.log10(lo), np.log10(hi), pp.n_eps)),
                       avg_bits_targets=tuple(pp.avg_bits_targets), n_random=pp.n_random,
                       quantize_activations=pp.quantize_activations, eps0=pp.eps0, mdl_alpha=pp.mdl_alpha,
                       mdl_beta=pp.mdl_beta, mdl_gamma=pp.mdl_gamma, kappa_factor=pp.kappa_factor, seed=seed)


# --------------------------------------------------------------------------- one (model, seed), cached
def run_study(params, data: ImageData, model_name: str, seed: int, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Train (cached), measure layer statistics and run `study_model` for one (model, seed).

    The four tables are kept as CSV in the one cache (namespace "precision"), keyed by the
    precision params, the data and the code version, so an interrupted notebook resumes where it
    stopped. A fresh computation returns the tables it computed, a cached one reads them back.
    """
    pp = params.precision
    spec = {"kind": "study", "pp": {k: v for k, v in vars(pp).items() if k != "seeds" and k != "models"},
            "model": model_name, "seed": seed, "data": data.describe(), "y0": data.y_test[:32].tolist()}
    computed: dict[str, pd.DataFrame] = {}

    def build(folder) -> None:
        threads = torch.get_num_threads()
        if device == "cpu":
            # networks this small gain nothing from intra-op threads, and on a shared 2-core
            # machine two spinning threads ran 3-5x slower than one (measured while writing this)
            torch.set_num_threads(1)
        try:
            out = _study_one(params, data, model_name, seed, device)
        finally:
            torch.set_num_threads(threads)
        for n in TABLES:
            df = out[n].copy()
            df.insert(0, "seed", seed)
            df.insert(0, "model", model_name)
            computed[n] = df
            df.to_csv(folder / f"{n}.csv", index=False)

    folder = cache.cached_dir("precision", spec, build)
    return computed or {n: pd.read_csv(folder / f"{n}.csv") for n in TABLES}


def _study_one(params, data: ImageData, model_name: str, seed: int, device: str) -> dict[str, pd.DataFrame]:
    pp = params.precision
    model = trained_model(model_name, data, seed=seed, epochs=pp.epochs, lr=pp.lr, batch_size=pp.batch_size,
                          device=device)
    torch.manual_seed(seed)
    xv = torch.as_tensor(data.x_val, device=device)
    yv = torch.as_tensor(data.y_val, device=device)
    stats = layer_stats(model, xv, yv, n_probes=pp.n_probes, n_batches=pp.n_batches, batch_size=pp.batch_size,
                        power_iters=pp.power_iters, seed=seed)
    return {"stats": stats, **study_model(model, data, stats, config_from_params(pp, seed), device=device)}


def run_all(params, data: ImageData, device: str = "cpu", progress: bool = True,
            desc: str = "models x seeds") -> dict[str, pd.DataFrame]:
    """run_study for every (model, seed) of params.precision, each table concatenated."""
    from tqdm.auto import tqdm

    pp = params.precision
    parts: dict[str, list] = {k: [] for k in TABLES}
    for m, s in tqdm([(m, s) for m in pp.models for s in pp.seeds], desc=desc, disable=not progress):
        out = run_study(params, data, m, s, device=device)
        for k in TABLES:
            parts[k].append(out[k])
    return {k: pd.concat(parts[k], ignore_index=True) for k in TABLES}


def alt_grid_params(params):
    """The params of the finer-grid ablation: bit_choices = precision.alt_bit_choices and the
    average-bits targets widened by 2 and 3 bits; None when alt_bit_choices is empty."""
    pp = params.precision
    if not pp.alt_bit_choices:
        return None
    pp_alt = dataclasses.replace(pp, bit_choices=list(pp.alt_bit_choices),
                                 avg_bits_targets=sorted({2.0, 3.0, *pp.avg_bits_targets}))
    return dataclasses.replace(params, precision=pp_alt)


# --------------------------------------------------------------------------- the verdict
def verdict(saving: pd.DataFrame, drop: float = THRESHOLDS["caq_accuracy_loss_points"],
            method: str = "caq_exact") -> dict:
    """Does the proposal's 15-25 % memory saving over uniform at equal accuracy show up
    (`paper.CLAIMED["caq_saving_range"]`)? `saving` is `analysis.memory_saving`'s table."""
    lo, hi = CLAIMED["caq_saving_range"]
    d = saving[(saving.method == method) & (saving.drop_pts == drop)]
    mean_u = float(d["saving_vs_uniform"].mean())
    mean_ui = float(d["saving_vs_uniform_int"].mean())
    if not np.isfinite(mean_u):
        word = "cannot be judged (no method reached the accuracy target)"
    elif mean_u < lo:
        word = f"does NOT show up (below {100 * lo:.0f} %)"
    elif mean_u <= hi:
        word = f"shows up (inside {100 * lo:.0f}-{100 * hi:.0f} %)"
    else:
        word = f"shows up and exceeds {100 * hi:.0f} %"
    return {"method": method, "drop_pts": drop, "saving_vs_uniform_mean": mean_u,
            "saving_vs_uniform_int_mean": mean_ui,
            "per_model": {r.model: round(float(r.saving_vs_uniform), 4) for r in d.itertuples()},
            "verdict": word}


def baseline_saving(saving: pd.DataFrame, drop: float = THRESHOLDS["caq_accuracy_loss_points"]) -> pd.Series:
    """Mean saving over uniform of each baseline (BASELINES) at the accuracy-loss threshold."""
    d = saving[(saving.drop_pts == drop) & saving.method.isin(list(BASELINES))]
    return d.groupby("method")["saving_vs_uniform"].mean()


def summary(t: dict[str, pd.DataFrame], data_description: str, alt_bit_choices=None) -> tuple[dict, list[str]]:
    """The verdict of notebook 06 from its tables: (the verdict dicts for the manifest, the lines
    to print). `t` holds "alloc", "saving", "tightness", "floor_tightness", "robustness",
    "relaxation", "kappa_bits" and, for the finer-grid ablation, "saving_alt"."""
    drop = THRESHOLDS["caq_accuracy_loss_points"]
    saving, tight, ft, rob = t["saving"], t["tightness"], t["floor_tightness"], t["robustness"]
    relax, corr, alloc = t["relaxation"], t["kappa_bits"], t["alloc"]
    v, v0 = verdict(saving, drop=drop), verdict(saving, drop=0.0)
    best_base = baseline_saving(saving, drop)
    ft_p = ft[ft.estimate == "p_star"]
    caq_t = tight[tight.method == "caq_exact"]
    out = {"within_1pt": v, "no_drop": v0}
    lines = [
        f"Data: {data_description}",
        f"CAQ (exact) memory saving over uniform at ≤1 pt accuracy loss: {100 * v['saving_vs_uniform_mean']:.1f}% "
        f"(per model {v['per_model']}); at no loss: {100 * v0['saving_vs_uniform_mean']:.1f}%.",
        f"The proposal's expected 15-25% saving {v['verdict']}.",
    ]
    gap = v["saving_vs_uniform_mean"] - v["saving_vs_uniform_int_mean"]
    lines.append(f"Against uniform at ANY integer width (2..16 bits) CAQ's saving is "
                 f"{100 * v['saving_vs_uniform_int_mean']:.1f}% "
                 + ("(negative: a finer uniform grid needs fewer bits than CAQ)" if v["saving_vs_uniform_int_mean"] < 0 else "")
                 + f"; {100 * gap:.1f} points of the saving over the {{4,8,16,32}} grid come from that grid's coarseness alone.")
    lines.append("Baselines' saving over uniform at ≤1 pt: " + str({k: round(100 * x, 1) for k, x in best_base.items()}))
    lines.append(f"Composition bound Φ: held (Φ ≥ observed) in {100 * caq_t['bound_held_frac'].mean():.0f}% of CAQ "
                 f"allocations, median factor Φ/observed {caq_t['factor_median'].median():.2g}; within 10x in "
                 f"{100 * caq_t['within_10x_frac'].mean():.0f}%.")
    fails = alloc[alloc.method.isin(["caq_exact", "uniform"]) & (alloc.phi < alloc.out_err_max)]
    if len(fails):
        fb = sorted({min(int(x) for x in b.split("-")) for b in fails.bits})
        lines.append(f"  Φ < observed in {len(fails)} allocations, whose narrowest layer has {fb} bits "
                     "(at 32 bits float32 arithmetic itself, ~2^-24 relative, exceeds the modelled 2^-32 rounding).")
    lines.append(f"p* as a lower bound: valid in {100 * ft_p['valid_lower_bound_frac'].mean():.0f}% of (layer, ε) cases, "
                 f"mean gap p_empirical − p* = {ft_p['gap_bits_mean'].mean():.2f} bits.")
    lines.append(f"κ robustness (2x): allocation changed in "
                 f"{100 * rob[rob.variant != 'caq_exact_nofloor']['changed_frac'].mean():.0f}% of cases; "
                 f"dropping the floors changed it in {100 * rob[rob.variant == 'caq_exact_nofloor']['changed_frac'].mean():.0f}%.")
    lines.append(f"Relax-and-round costs {100 * relax['excess_mean'].mean():.1f}% more bit-operations than the exact "
                 "optimum on average.")
    lines.append("κ-bits Spearman correlation per model: " + str(dict(zip(corr.model, corr.spearman_kappa_bits_mean.round(2)))))
    if "saving_alt" in t:
        v_alt = verdict(t["saving_alt"], drop=drop)
        out["alt_grid"] = v_alt
        alt_base = baseline_saving(t["saving_alt"], drop)
        lines.append(f"On the finer grid {alt_bit_choices}: CAQ saves {100 * v_alt['saving_vs_uniform_mean']:.1f}% over "
                     f"uniform at ≤1 pt (per model {v_alt['per_model']}), i.e. the claim {v_alt['verdict']}; baselines: "
                     + str({k: round(100 * x, 1) for k, x in alt_base.items()}))
    return out, lines
