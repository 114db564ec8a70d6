"""Transfer regret under score drift (paper Appendix D, Theorem 4; METHOD.md §4).

A program (allocation, METHOD.md §2, or pruning, METHOD.md §3) is solved with source scores q_S and its
decision x*(q_S) is deployed on the target task, whose scores are q_T. The regret is

    R = F_T(x*(q_S); q_T) − F_T(x*(q_T); q_T) ≥ 0                                 (Eq 20)

and Theorem 4 bounds it by

    R ≤ (L_θ / 2) (L_q / μ)² ‖q_S − q_T‖²                                          (Eq 21)

with μ, L_θ the strong-convexity and smoothness constants of F_T(·; q_T) and L_q the Lipschitz
constant of q ↦ ∇_x F(x; q). The constants are computed explicitly (METHOD.md §4):

* pruning:    μ = 2λ min q_T^γ,  L_θ = 2λ max q_T^γ,  L_q = 2λγ ρ_max max q^{γ−1}
* allocation: μ = β min q_T^γ / (1 + n_max)²,  L_θ = β max q_T^γ,  L_q = βγ max q^{γ−1}

where "max q^{γ−1}" runs over the segment between q_S and q_T (both end points; the map is
monotone in each q_k, so the end points attain the maximum), because the proof applies the
Lipschitz condition along that segment. μ and L_θ are those of the *target* program: the proof
only uses strong convexity and smoothness of F_T(·; q_T).

Allocation needs a box n ≤ n_max for μ > 0 (the Hessian β q^γ/(1+n)² vanishes as n → ∞).
`n_max="solutions"` (default) takes the larger of the two solutions' largest coordinates: the
smallest box holding the segment between x*(q_S) and x*(q_T), which is all the proof uses.
`n_max="bracket"` takes the water-filling bracket, the μ=0 solution max_k β q_k^γ/(α c_k) − 1
over both score vectors (capped by B/c_k), which contains every solution for any budget; a
number fixes the box directly (it must contain both solutions).

The proof's second step drops the first-order term ⟨∇F_T(x_T), x_S − x_T⟩, which vanishes at
interior minimisers and when the budget binds at both solutions, but not in general. A
variational-inequality argument (used by `RegretBound.vi_bound`) avoids that step and holds
for any common convex feasible set: strong convexity from x_S gives
R ≤ ⟨∇F_T(x_S), x_S − x_T⟩ − (μ/2)‖Δx‖², source optimality gives
⟨∇F(x_S; q_S), x_S − x_T⟩ ≤ 0, so R ≤ L_q‖Δq‖‖Δx‖ − (μ/2)‖Δx‖² ≤ L_q²‖Δq‖²/(2μ).
Since L_θ ≥ μ, Eq 21 equals that bound times the condition number L_θ/μ ≥ 1, so it too holds
in every regime when the constants are valid on the segment. Notebook 05 measures both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mdlcap.theory.objectives import PROGRAMS as _OBJECTS
from mdlcap.theory.objectives import Program, program

__all__ = ["PROGRAMS", "REGIMES", "RegretBound", "Transfer", "regret", "regret_bound", "evaluate", "classify",
           "objective", "regime", "drift", "eq21_bound", "vi_bound", "check_q"]

PROGRAMS = tuple(_OBJECTS)           # ("allocate", "prune")
REGIMES = ("interior", "both_active", "one_active", "clipped")


# --------------------------------------------------------------------------- validation
def check_q(q: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(q, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a 1-D array of numbers") from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: must be finite (no NaN/inf)")
    if np.any(a < 0):
        raise ValueError(f"{name}: must be non-negative (scores lie on the simplex)")
    if abs(a.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name}: must lie on the simplex (sum to 1), sums to {a.sum():.6g}")
    return a


def _check_pair(q_source: Any, q_target: Any) -> tuple[np.ndarray, np.ndarray]:
    qs, qt = check_q(q_source, "q_source"), check_q(q_target, "q_target")
    if qs.shape != qt.shape:
        raise ValueError(f"q_source: length {qs.size} must match q_target's length {qt.size}")
    return qs, qt



def objective(program_name: str, x: Any, q: Any, **program_args) -> float:
    """F(x; q) at any decision x, by the programs' own objective functions (Eq 11 / Eq 14)."""
    prog = program(program_name)
    qq = check_q(q, "q")
    return prog.objective(x, qq, prog.check_args(program_args))


# --------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class RegretBound:
    """Theorem 4's bound with its constants (METHOD.md §4)."""
    program: str
    bound: float          # (L_θ/2)(L_q/μ)² ‖q_S − q_T‖²   (Eq 21)
    mu: float             # strong convexity of F_T(·; q_T) on the box
    L_theta: float        # smoothness of F_T(·; q_T) on the box
    L_q: float            # Lipschitz constant of q ↦ ∇_x F(x; q) along [q_S, q_T]
    drift: float          # ‖q_S − q_T‖₂
    condition: float      # L_θ / μ, the target program's condition number
    vi_bound: float       # L_q² ‖Δq‖² / (2μ): the constraint-robust bound (module docstring)
    n_max: float | None = None   # allocation box; None for pruning


@dataclass(frozen=True)
class Transfer:
    """Everything about deploying source scores on the target: solutions, regret, bound, regime."""
    program: str
    regret: float
    bound: RegretBound
    regime: str
    x_source: np.ndarray
    x_target: np.ndarray
    source_active: bool
    target_active: bool
    clipped_source: int   # coordinates of x*(q_S) at a bound (n = 0; ρ = 0 or ρ_max)
    clipped_target: int
    dx: float             # ‖x*(q_S) − x*(q_T)‖₂
    first_order: float    # ⟨∇F_T(x_T), x_S − x_T⟩: the term the proof's Step 2 drops (≥ 0)
    L_local: float        # largest curvature of F_T on the segment [x_T, x_S]

    @property
    def step1_holds(self) -> bool:
        """Eq 22: ‖Δx‖ ≤ (L_q/μ)‖Δq‖."""
        b = self.bound
        return self.dx <= (b.L_q / b.mu) * b.drift * (1 + 1e-9) + 1e-12 if b.mu > 0 else True

    @property
    def step2_holds(self) -> bool:
        """Step 2 with the first-order term dropped: R ≤ (L_θ/2)‖Δx‖²."""
        return self.regret <= 0.5 * self.bound.L_theta * self.dx ** 2 * (1 + 1e-9) + 1e-13

    @property
    def step2_local_holds(self) -> bool:
        """Step 2 with the tightest smoothness constant on the segment: R ≤ (L_local/2)‖Δx‖²."""
        return self.regret <= 0.5 * self.L_local * self.dx ** 2 * (1 + 1e-9) + 1e-13

    @property
    def ratio(self) -> float:
        """regret / bound (≤ 1 when the bound holds); 0 when both are 0."""
        if self.bound.bound == 0.0:
            return 0.0 if self.regret <= 0.0 else float("inf")
        return self.regret / self.bound.bound

    @property
    def violated(self) -> bool:
        """The measured regret exceeds Eq 21 by more than floating-point noise."""
        return self.regret > self.bound.bound * (1 + 1e-9) + 1e-13


    @property
    def vi_violated(self) -> bool:
        """The regret exceeds the constraint-robust bound L_q²‖Δq‖²/(2μ) beyond noise."""
        return self.regret > self.bound.vi_bound * (1 + 1e-9) + 1e-13

    def row(self) -> dict:
        """One table row: regret, bound, constants, regime and the proof's step checks."""
        b = self.bound
        return {"program": self.program, "regime": self.regime, "regret": self.regret, "bound": b.bound,
                "vi_bound": b.vi_bound, "ratio": self.ratio, "drift": b.drift, "mu": b.mu,
                "L_theta": b.L_theta, "L_q": b.L_q, "condition": b.condition, "n_max": b.n_max,
                "source_active": self.source_active, "target_active": self.target_active,
                "clipped_source": self.clipped_source, "clipped_target": self.clipped_target,
                "dx": self.dx, "first_order": self.first_order, "L_local": self.L_local,
                "step1_holds": self.step1_holds, "step2_holds": self.step2_holds,
                "step2_local_holds": self.step2_local_holds, "violated": self.violated,
                "vi_violated": self.vi_violated}


# --------------------------------------------------------------------------- Theorem 4
def _pair(program_name: str, q_source: Any, q_target: Any, program_args: dict):
    prog = program(program_name)
    qs, qt = _check_pair(q_source, q_target)
    n_max = program_args.pop("n_max", "solutions")
    args = prog.check_args(program_args)
    rs = prog.solve(qs, args)
    rt = rs if np.array_equal(qs, qt) else prog.solve(qt, args)
    return prog, qs, qt, args, n_max, rs, rt


def regret(program: str, q_source: Any, q_target: Any, **program_args) -> float:
    """Eq 20: R = F_T(x*(q_S); q_T) − F_T(x*(q_T); q_T).

    `program_args` are those of `mdlcap.theory.programs.allocate` (cost, budget, alpha, beta, gamma)
    or `mdlcap.theory.programs.prune` (sizes, target, bits, lam, gamma, rho_max, equality).
    """
    prog, qs, qt, args, _, rs, rt = _pair(program, q_source, q_target, dict(program_args))
    return prog.objective_gap(prog.x(rs), prog.x(rt), qt, args)


def max_pow_on_segment(qs: np.ndarray, qt: np.ndarray, e: float) -> float:
    """max over k and t ∈ [0,1] of ((1−t) q_S,k + t q_T,k)^e: attained at an end point."""
    if e == 0.0:
        return 1.0
    with np.errstate(divide="ignore"):
        return float(max(np.max(qs ** e), np.max(qt ** e)))


def eq21_bound(L_theta: float, L_q: float, mu: float, drift_norm: float) -> float:
    """Eq 21: (L_θ / 2) (L_q / μ)² ‖q_S − q_T‖²."""
    return 0.5 * L_theta * (L_q / mu) ** 2 * drift_norm ** 2


def vi_bound(L_q: float, mu: float, drift_norm: float) -> float:
    """The constraint-robust bound L_q² ‖q_S − q_T‖² / (2μ) (module docstring; Eq 21 = it × L_θ/μ)."""
    return L_q ** 2 * drift_norm ** 2 / (2 * mu)


def _bound(prog: Program, qs: np.ndarray, qt: np.ndarray, args: dict, n_max: Any, xs, xt) -> RegretBound:
    g = float(args["gamma"])
    qg = qt ** g
    drift_norm = float(np.linalg.norm(qs - qt))
    lq_pow = max_pow_on_segment(qs, qt, g - 1.0)
    box = prog.box(n_max, qs, qt, xs, xt, args)
    mu, L_theta, L_q = prog.constants(qg, g, lq_pow, args, box)
    with np.errstate(divide="ignore", invalid="ignore"):
        if drift_norm == 0.0 or L_q == 0.0:
            bound = vi = 0.0            # no drift, or F does not depend on q: regret is 0
        elif mu == 0.0:
            bound = vi = float("inf")   # a zero score: F_T is not strongly convex
        else:
            vi = vi_bound(L_q, mu, drift_norm)
            bound = eq21_bound(L_theta, L_q, mu, drift_norm)
        cond = L_theta / mu if mu > 0 else float("inf")
    return RegretBound(program=prog.name, bound=float(bound), mu=mu, L_theta=L_theta, L_q=float(L_q),
                       drift=drift_norm, condition=float(cond), vi_bound=float(vi), n_max=box)


def regret_bound(program: str, q_source: Any, q_target: Any, **program_args) -> RegretBound:
    """Theorem 4's bound (Eq 21) with μ, L_θ, L_q computed as METHOD.md §4 gives them.

    Same arguments as `regret`, plus `n_max` for allocation ("solutions", "bracket" or a number;
    see the module docstring). Zero drift gives a zero bound; a zero target score makes μ = 0
    and the bound infinite (F_T is then not strongly convex).
    """
    prog, qs, qt, args, n_max, rs, rt = _pair(program, q_source, q_target, dict(program_args))
    return _bound(prog, qs, qt, args, n_max, prog.x(rs), prog.x(rt))


def regime(source_active: bool, target_active: bool, clipped_source: int, clipped_target: int) -> str:
    """Which case of the proof an instance falls in.

    clipped:     some coordinate of either solution sits at a bound (n_k = 0, ρ_k ∈ {0, ρ_max});
    interior:    no clipping and the budget/target constraint binds at neither solution;
    both_active: no clipping and it binds at both (Theorem 4's proof is valid in these two);
    one_active:  no clipping and it binds at exactly one of them.
    """
    if clipped_source or clipped_target:
        return "clipped"
    if source_active and target_active:
        return "both_active"
    if not source_active and not target_active:
        return "interior"
    return "one_active"


def evaluate(program: str, q_source: Any, q_target: Any, **program_args) -> Transfer:
    """Solve both programs once and return regret (Eq 20), bound (Eq 21, with constants) and the regime."""
    prog, qs, qt, args, n_max, rs, rt = _pair(program, q_source, q_target, dict(program_args))
    xs, xt = prog.x(rs), prog.x(rt)
    b = _bound(prog, qs, qt, args, n_max, xs, xt)
    sa, ta = prog.active(rs, args), prog.active(rt, args)
    cs, ct = prog.clipped(xs, args), prog.clipped(xt, args)
    return Transfer(program=prog.name, regret=prog.objective_gap(xs, xt, qt, args), bound=b,
                    regime=regime(sa, ta, cs, ct), x_source=xs, x_target=xt,
                    source_active=sa, target_active=ta, clipped_source=cs, clipped_target=ct,
                    dx=float(np.linalg.norm(xs - xt)),
                    first_order=float(np.dot(prog.gradient(xt, qt, args), xs - xt)),
                    L_local=prog.local_smoothness(xs, xt, qt, args))


def classify(program: str, q_source: Any, q_target: Any, **program_args) -> str:
    """The regime of an instance (see `regime`)."""
    return evaluate(program, q_source, q_target, **program_args).regime


# --------------------------------------------------------------------------- synthetic drift
def drift(q: Any, delta: float, direction: Any) -> np.ndarray:
    """Scores drifted multiplicatively: q_S ∝ q ⊙ exp(δ z), which stays on the simplex for any δ.

    For small δ, ‖q_S − q‖ grows linearly in δ, so regret ∝ δ² reads as slope 2 on a log-log plot.
    """
    qq = check_q(q, "q")
    z = np.asarray(direction, dtype=float)
    if z.shape != qq.shape:
        raise ValueError(f"direction: length {z.size} must match q's length {qq.size}")
    if not (np.isfinite(delta) and delta >= 0):
        raise ValueError(f"delta: must be finite and >= 0, got {delta!r}")
    with np.errstate(divide="ignore"):
        logits = np.log(qq) + delta * z
    w = np.exp(logits - logits[np.isfinite(logits)].max())
    return w / w.sum()
