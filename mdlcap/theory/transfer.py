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

PROGRAMS = ("allocate", "prune")
REGIMES = ("interior", "both_active", "one_active", "clipped")

_ARGS = {
    "allocate": {"cost", "budget", "alpha", "beta", "gamma", "tol", "method"},
    "prune": {"sizes", "target", "bits", "lam", "gamma", "rho_max", "equality", "tol", "method"},
}
# defaults of mdlcap.theory.programs (METHOD.md §6); the bound needs them to compute its constants.
# method="exact" (sorted breakpoints, no iteration tolerance): regret at δ = 1e-4 is ~1e-10 and
# must not drown in a bisection's stopping error.
_DEFAULTS = {
    "allocate": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5, "method": "exact"},
    "prune": {"bits": 16.0, "lam": 2.0, "gamma": 1.0, "rho_max": 1.0, "equality": False, "method": "exact"},
}
_REQUIRED = {"allocate": ("cost", "budget"), "prune": ("sizes", "target")}
_CLIP_TOL = 1e-9          # a coordinate within this (relative) distance of a bound counts as clipped


# --------------------------------------------------------------------------- validation
def _check_program(program: str) -> str:
    if program not in PROGRAMS:
        raise ValueError(f"program: must be one of {list(PROGRAMS)}, got {program!r}")
    return program


def _check_q(q: Any, name: str) -> np.ndarray:
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
    qs, qt = _check_q(q_source, "q_source"), _check_q(q_target, "q_target")
    if qs.shape != qt.shape:
        raise ValueError(f"q_source: length {qs.size} must match q_target's length {qt.size}")
    return qs, qt


def _check_args(program: str, args: dict) -> dict:
    unknown = sorted(set(args) - _ARGS[program])
    if unknown:
        raise ValueError(f"{unknown[0]}: not an argument of programs.{program} "
                         f"(allowed: {sorted(_ARGS[program])})")
    missing = [k for k in _REQUIRED[program] if k not in args]
    if missing:
        raise ValueError(f"{missing[0]}: required for program {program!r}")
    return {**_DEFAULTS[program], **args}


# --------------------------------------------------------------------------- solving
def _solve(program: str, q: np.ndarray, args: dict):
    """The program's minimiser x*(q), by mdlcap.theory.programs (the one solver of the package)."""
    from mdlcap.theory import programs
    return getattr(programs, program)(q, **args)


def _x(program: str, res) -> np.ndarray:
    return np.asarray(res.n if program == "allocate" else res.rho, dtype=float)


def _objective_gap(program: str, x_a: np.ndarray, x_b: np.ndarray, q: np.ndarray, args: dict) -> float:
    """F(x_a; q) − F(x_b; q), summed per coordinate to avoid cancelling two large totals.

    allocation (METHOD.md §2): F(n; q) = Σ α c_k n_k − β Σ q_k^γ log(1 + n_k)
    pruning    (METHOD.md §3): F(ρ; q) = Σ b N_k (1 − ρ_k) + λ Σ q_k^γ ρ_k²
    """
    qg = q ** args["gamma"]
    d = x_a - x_b
    if program == "allocate":
        c = np.broadcast_to(np.asarray(args["cost"], dtype=float), q.shape)
        # log(1+a) − log(1+b) = log1p((a−b)/(1+b)): exact for tiny differences
        terms = args["alpha"] * c * d - args["beta"] * qg * np.log1p(d / (1.0 + x_b))
    else:
        N = np.broadcast_to(np.asarray(args["sizes"], dtype=float), q.shape)
        terms = d * (-args["bits"] * N + args["lam"] * qg * (x_a + x_b))
    return float(np.sum(terms))


def _gradient(program: str, x: np.ndarray, q: np.ndarray, args: dict) -> np.ndarray:
    """∇_x F(x; q): α c − β q^γ/(1+n) (allocation), −b N + 2λ q^γ ρ (pruning)."""
    qg = q ** args["gamma"]
    if program == "allocate":
        return args["alpha"] * np.asarray(args["cost"], dtype=float) - args["beta"] * qg / (1.0 + x)
    return -args["bits"] * np.asarray(args["sizes"], dtype=float) + 2 * args["lam"] * qg * x


def _local_smoothness(program: str, xs: np.ndarray, xt: np.ndarray, q: np.ndarray, args: dict) -> float:
    """max over the segment [x_T, x_S] of the (diagonal) Hessian of F(·; q)."""
    qg = q ** args["gamma"]
    if program == "allocate":
        return float(np.max(args["beta"] * qg / (1.0 + np.minimum(xs, xt)) ** 2))
    return float(np.max(2 * args["lam"] * qg))


def objective(program: str, x: Any, q: Any, **program_args) -> float:
    """F(x; q) at any decision x, by the programs' own objective functions (Eq 11 / Eq 14)."""
    from mdlcap.theory import programs
    _check_program(program)
    qq = _check_q(q, "q")
    a = _check_args(program, program_args)
    if program == "allocate":
        return programs.allocation_objective(x, qq, np.broadcast_to(np.asarray(a["cost"], float), qq.shape),
                                             alpha=a["alpha"], beta=a["beta"], gamma=a["gamma"])
    return programs.pruning_objective(x, qq, np.broadcast_to(np.asarray(a["sizes"], float), qq.shape),
                                      bits=a["bits"], lam=a["lam"], gamma=a["gamma"])


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


def _pair(program: str, q_source: Any, q_target: Any, program_args: dict):
    _check_program(program)
    qs, qt = _check_pair(q_source, q_target)
    n_max = program_args.pop("n_max", "solutions")
    args = _check_args(program, program_args)
    rs = _solve(program, qs, args)
    rt = rs if np.array_equal(qs, qt) else _solve(program, qt, args)
    return qs, qt, args, n_max, rs, rt


def regret(program: str, q_source: Any, q_target: Any, **program_args) -> float:
    """R = F_T(x*(q_S); q_T) − F_T(x*(q_T); q_T)   (Eq 20).

    `program_args` are those of `mdlcap.theory.programs.allocate` (cost, budget, alpha, beta, gamma)
    or `mdlcap.theory.programs.prune` (sizes, target, bits, lam, gamma, rho_max, equality).
    """
    qs, qt, args, _, rs, rt = _pair(program, q_source, q_target, dict(program_args))
    return _objective_gap(program, _x(program, rs), _x(program, rt), qt, args)


def _n_max(n_max: Any, qs: np.ndarray, qt: np.ndarray, xs: np.ndarray, xt: np.ndarray, args: dict) -> float:
    need = float(max(xs.max(), xt.max()))
    if isinstance(n_max, str):
        if n_max == "solutions":
            return need
        if n_max == "bracket":
            c = np.broadcast_to(np.asarray(args["cost"], dtype=float), qs.shape)
            cap = args["budget"] / c                   # no coordinate can exceed the whole budget
            if args["alpha"] > 0:                      # the μ=0 water level bounds every solution
                top = max(np.max(args["beta"] * q ** args["gamma"] / (args["alpha"] * c)) for q in (qs, qt)) - 1.0
                return float(max(min(top, cap.max()), need))
            return float(cap.max())
        raise ValueError(f"n_max: must be 'solutions', 'bracket' or a number, got {n_max!r}")
    try:
        v = float(n_max)
    except (TypeError, ValueError):
        raise ValueError(f"n_max: must be 'solutions', 'bracket' or a number, got {n_max!r}") from None
    if not np.isfinite(v) or v < need * (1 - 1e-12):
        raise ValueError(f"n_max: must be finite and >= the solutions' largest n ({need:.6g}), "
                         f"else the box does not contain them; got {v!r}")
    return v


def _max_pow_on_segment(qs: np.ndarray, qt: np.ndarray, e: float) -> float:
    """max over k and t ∈ [0,1] of ((1−t) q_S,k + t q_T,k)^e: attained at an end point."""
    if e == 0.0:
        return 1.0
    with np.errstate(divide="ignore"):
        return float(max(np.max(qs ** e), np.max(qt ** e)))


def _bound(program: str, qs: np.ndarray, qt: np.ndarray, args: dict, n_max: Any, xs, xt) -> RegretBound:
    g = float(args["gamma"])
    qg = qt ** g
    drift = float(np.linalg.norm(qs - qt))
    lq_pow = _max_pow_on_segment(qs, qt, g - 1.0)
    box = None
    if program == "prune":
        lam = float(args["lam"])
        mu, L_theta = 2 * lam * float(qg.min()), 2 * lam * float(qg.max())
        L_q = 2 * lam * g * float(args["rho_max"]) * lq_pow
    else:
        beta = float(args["beta"])
        box = _n_max(n_max, qs, qt, xs, xt, args)
        mu = beta * float(qg.min()) / (1.0 + box) ** 2
        L_theta = beta * float(qg.max())
        L_q = beta * g * lq_pow
    with np.errstate(divide="ignore", invalid="ignore"):
        if drift == 0.0 or L_q == 0.0:
            bound = vi = 0.0            # no drift, or F does not depend on q: regret is 0
        elif mu == 0.0:
            bound = vi = float("inf")   # a zero score: F_T is not strongly convex
        else:
            vi = L_q ** 2 * drift ** 2 / (2 * mu)
            bound = 0.5 * L_theta * (L_q / mu) ** 2 * drift ** 2
        cond = L_theta / mu if mu > 0 else float("inf")
    return RegretBound(program=program, bound=float(bound), mu=mu, L_theta=L_theta, L_q=float(L_q),
                       drift=drift, condition=float(cond), vi_bound=float(vi), n_max=box)


def regret_bound(program: str, q_source: Any, q_target: Any, **program_args) -> RegretBound:
    """Theorem 4's bound (Eq 21) with μ, L_θ, L_q computed as METHOD.md §4 gives them.

    Same arguments as `regret`, plus `n_max` for allocation ("solutions", "bracket" or a number;
    see the module docstring). Zero drift gives a zero bound; a zero target score makes μ = 0
    and the bound infinite (F_T is then not strongly convex).
    """
    qs, qt, args, n_max, rs, rt = _pair(program, q_source, q_target, dict(program_args))
    return _bound(program, qs, qt, args, n_max, _x(program, rs), _x(program, rt))


def _clipped(program: str, x: np.ndarray, args: dict) -> int:
    if program == "allocate":
        return int(np.sum(x <= _CLIP_TOL))
    rm = float(args["rho_max"])
    return int(np.sum((x <= _CLIP_TOL) | (x >= rm * (1 - _CLIP_TOL))))


def _active(program: str, res, args: dict) -> bool:
    if program == "prune" and args.get("equality", False):
        return True                     # an equality target always binds
    return bool(res.active)


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
    """Solve both programs once and return regret, bound (with constants) and the regime."""
    qs, qt, args, n_max, rs, rt = _pair(program, q_source, q_target, dict(program_args))
    xs, xt = _x(program, rs), _x(program, rt)
    b = _bound(program, qs, qt, args, n_max, xs, xt)
    sa, ta = _active(program, rs, args), _active(program, rt, args)
    cs, ct = _clipped(program, xs, args), _clipped(program, xt, args)
    return Transfer(program=program, regret=_objective_gap(program, xs, xt, qt, args), bound=b,
                    regime=regime(sa, ta, cs, ct), x_source=xs, x_target=xt,
                    source_active=sa, target_active=ta, clipped_source=cs, clipped_target=ct,
                    dx=float(np.linalg.norm(xs - xt)),
                    first_order=float(np.dot(_gradient(program, xt, qt, args), xs - xt)),
                    L_local=_local_smoothness(program, xs, xt, qt, args))


def classify(program: str, q_source: Any, q_target: Any, **program_args) -> str:
    """The regime of an instance (see `regime`)."""
    return evaluate(program, q_source, q_target, **program_args).regime


# --------------------------------------------------------------------------- synthetic drift
def drift(q: Any, delta: float, direction: Any) -> np.ndarray:
    """Scores drifted multiplicatively: q_S ∝ q ⊙ exp(δ z), which stays on the simplex for any δ.

    For small δ, ‖q_S − q‖ grows linearly in δ, so regret ∝ δ² reads as slope 2 on a log-log plot.
    """
    qq = _check_q(q, "q")
    z = np.asarray(direction, dtype=float)
    if z.shape != qq.shape:
        raise ValueError(f"direction: length {z.size} must match q's length {qq.size}")
    if not (np.isfinite(delta) and delta >= 0):
        raise ValueError(f"delta: must be finite and >= 0, got {delta!r}")
    with np.errstate(divide="ignore"):
        logits = np.log(qq) + delta * z
    w = np.exp(logits - logits[np.isfinite(logits)].max())
    return w / w.sum()


def _unconstrained_use(program: str, q: np.ndarray, args: dict) -> float:
    """Budget used (Σ c n) or mass pruned (Σ N ρ) by the solution with the constraint slack,
    obtained from the solver itself with a budget too large / a target too small to bind."""
    if program == "allocate":
        a = {**args, "budget": 1e12}
        return float(np.sum(np.asarray(a["cost"]) * _x(program, _solve(program, q, a))))
    a = {**args, "target": 1e-12, "equality": False}
    return float(np.sum(np.asarray(a["sizes"]) * _x(program, _solve(program, q, a))))


def random_instance(program: str, K: int, delta: float, rng: np.random.Generator,
                    mode: str | None = None) -> dict:
    """A random (q_S, q_T, program_args) aimed at one regime (`mode`; random if None).

    The mode only steers the parameters toward a regime; `evaluate` then classifies what
    the instance really is. Allocation: costs U(0.5, 2) or equal, γ ∈ [0.1, 1.5], α = 1,
    β scaled so the water level gives a few units per layer; pruning: sizes in normalised
    units (N_k / mean N, see METHOD.md §3's warning about raw counts), b = 16, γ ∈ [0.25, 2],
    ρ_max ∈ [0.3, 1], λ scaled so ρ(0) sits below or above ρ_max as the mode needs.
    """
    _check_program(program)
    if mode is None:
        mode = REGIMES[rng.integers(len(REGIMES))]
    if mode not in REGIMES:
        raise ValueError(f"mode: must be one of {list(REGIMES)} or None, got {mode!r}")
    if not (isinstance(K, (int, np.integer)) and K >= 2):
        raise ValueError(f"K: must be an integer >= 2, got {K!r}")
    spread = np.exp(rng.uniform(np.log(0.3), np.log(1.0))) if mode == "clipped" else rng.uniform(3.0, 20.0)
    q_t = rng.dirichlet(np.full(K, spread))
    q_t = np.maximum(q_t, 1e-4)
    q_t /= q_t.sum()
    z = rng.standard_normal(K)
    q_s = drift(q_t, delta, z)
    sizes = np.ones(K) if rng.random() < 0.5 else rng.uniform(0.5, 2.0, K)
    if program == "allocate":
        gamma = float(rng.uniform(0.1, 1.5))
        qg = q_t ** gamma
        scale = rng.uniform(1.5, 5.0) if mode == "clipped" else rng.uniform(20.0, 200.0)
        args = {"cost": sizes, "alpha": 1.0, "beta": float(scale * sizes.mean() / qg.mean()),
                "gamma": gamma, "budget": 1.0}
    else:
        gamma = float(rng.uniform(0.25, 2.0))
        qg = q_t ** gamma
        rho_max = float(rng.uniform(0.3, 1.0))
        scale = rng.uniform(0.3, 1.5) if mode == "clipped" else rng.uniform(3.0, 10.0)
        # ρ_k(0) = b N_k / (2 λ q_k^γ) ≈ ρ_max / scale for a typical layer
        args = {"sizes": sizes, "bits": 16.0, "gamma": gamma, "rho_max": rho_max,
                "lam": float(16.0 * sizes.mean() * scale / (2 * qg.mean() * rho_max)),
                "target": 0.5 * rho_max, "equality": False}
    # set the budget / target relative to what the unconstrained solutions use
    u_s, u_t = (_unconstrained_use(program, q, args) for q in (q_s, q_t))
    lo, hi = min(u_s, u_t), max(u_s, u_t)
    total = float(np.sum(sizes))
    if program == "allocate":
        if mode == "interior":
            b = hi * rng.uniform(1.05, 2.0)
        elif mode == "both_active":
            b = lo * rng.uniform(0.5, 0.95)
        elif mode == "one_active":
            b = lo + (hi - lo) * rng.uniform(0.1, 0.9) if hi > lo else lo
        else:
            b = max(hi, 1e-6) * rng.uniform(0.2, 1.6)
        args["budget"] = float(max(b, 1e-6))
    else:
        rm = args["rho_max"]
        if mode == "interior":                        # target below what both prune anyway
            t = lo / total * rng.uniform(0.2, 0.95)
        elif mode == "both_active":
            if rng.random() < 0.5:
                args["equality"] = True
                t = rm * rng.uniform(0.2, 0.8)
            else:
                t = hi / total * rng.uniform(1.05, 1.5)
        elif mode == "one_active":
            t = (lo + (hi - lo) * rng.uniform(0.1, 0.9)) / total if hi > lo else lo / total
        else:
            t = rm * rng.uniform(0.05, 0.95)
        args["target"] = float(np.clip(t, 1e-6, rm * 0.999))
    return {"program": program, "mode": mode, "delta": float(delta), "q_source": q_s,
            "q_target": q_t, "direction": z, "args": args}


def _row(program: str, tr: Transfer) -> dict:
    b = tr.bound
    return {"program": program, "regime": tr.regime, "regret": tr.regret, "bound": b.bound,
            "vi_bound": b.vi_bound, "ratio": tr.ratio, "drift": b.drift, "mu": b.mu,
            "L_theta": b.L_theta, "L_q": b.L_q, "condition": b.condition, "n_max": b.n_max,
            "source_active": tr.source_active, "target_active": tr.target_active,
            "clipped_source": tr.clipped_source, "clipped_target": tr.clipped_target,
            "dx": tr.dx, "first_order": tr.first_order, "L_local": tr.L_local,
            "step1_holds": tr.step1_holds, "step2_holds": tr.step2_holds,
            "step2_local_holds": tr.step2_local_holds, "violated": tr.violated,
            "vi_violated": tr.regret > b.vi_bound * (1 + 1e-9) + 1e-13}


def search(program: str, n_instances: int, K: int, deltas: Any, seed: int = 0, progress: bool = True,
           n_max: Any = "solutions"):
    """Evaluate `n_instances` random instances (δ drawn log-uniformly over the range of `deltas`,
    regimes steered in turn) and return one row per instance: regret, bound, constants, regime,
    whether Eq 21 (`violated`) or the constraint-robust bound (`vi_violated`) was exceeded,
    and the instance's inputs (`q_source`, `q_target`, `args` as JSON-ready lists)."""
    import pandas as pd
    from tqdm import tqdm

    _check_program(program)
    if not (isinstance(n_instances, (int, np.integer)) and n_instances >= 1):
        raise ValueError(f"n_instances: must be an integer >= 1, got {n_instances!r}")
    d = np.asarray(deltas, dtype=float)
    if d.size == 0 or np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("deltas: must be a non-empty list of finite numbers > 0")
    rng = np.random.default_rng(seed)
    rows = []
    # progress=True leaves the bar to tqdm's defaults (TQDM_DISABLE=1 silences it in `make all`)
    for i in tqdm(range(n_instances), desc=f"search {program}", **({} if progress else {"disable": True})):
        delta = float(np.exp(rng.uniform(np.log(d.min()), np.log(d.max()))))
        inst = random_instance(program, K, delta, rng, mode=REGIMES[i % len(REGIMES)])
        tr = evaluate(program, inst["q_source"], inst["q_target"], **inst["args"],
                      **({"n_max": n_max} if program == "allocate" else {}))
        rows.append({"instance": i, "mode": inst["mode"], "delta": delta, **_row(program, tr),
                     "q_source": inst["q_source"].tolist(), "q_target": inst["q_target"].tolist(),
                     "args": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in inst["args"].items()}})
    return pd.DataFrame(rows)


def sweep(program: str, K: int, deltas: Any, n_per_regime: int = 3, seed: int = 0, n_max: Any = "solutions"):
    """Regret and bound against δ for fixed instances (q_T, drift direction, program args),
    `n_per_regime` steered toward each regime; one row per (instance, δ)."""
    import pandas as pd

    _check_program(program)
    d = np.sort(np.asarray(deltas, dtype=float))
    if d.size < 2 or np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("deltas: need at least two finite numbers > 0")
    rng = np.random.default_rng(seed)
    rows = []
    for mode in ("interior", "both_active", "clipped"):
        for j in range(n_per_regime):
            # the budget is set against the largest drift, then held fixed while δ shrinks
            inst = random_instance(program, K, float(d.max()), rng, mode=mode)
            for delta in d:
                q_s = drift(inst["q_target"], delta, inst["direction"])
                tr = evaluate(program, q_s, inst["q_target"], **inst["args"],
                              **({"n_max": n_max} if program == "allocate" else {}))
                rows.append({"instance": f"{mode}-{j}", "mode": mode, "delta": float(delta),
                             **_row(program, tr)})
    return pd.DataFrame(rows)


def fit_slope(x: Any, y: Any) -> float:
    """Least-squares slope of log y against log x (NaN if fewer than two positive pairs)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def violation_counts(df):
    """Per (program, regime): instances, violations of Eq 21 and of the constraint-robust bound,
    failures of the proof's intermediate steps, and how close the regret came to each bound."""
    import pandas as pd

    g = df.assign(first_order_share=np.where(df["regret"] > 0, df["first_order"] / df["regret"].where(df["regret"] > 0), 0.0),
                  vi_ratio=np.where(df["vi_bound"] > 0, df["regret"] / df["vi_bound"].where(df["vi_bound"] > 0), 0.0))
    out = g.groupby(["program", "regime"], sort=False).agg(
        instances=("regret", "size"),
        violations=("violated", "sum"),
        vi_violations=("vi_violated", "sum"),
        step1_failures=("step1_holds", lambda s: int((~s.astype(bool)).sum())),
        step2_failures=("step2_holds", lambda s: int((~s.astype(bool)).sum())),
        step2_local_failures=("step2_local_holds", lambda s: int((~s.astype(bool)).sum())),
        max_ratio=("ratio", "max"),
        median_ratio=("ratio", "median"),
        max_vi_ratio=("vi_ratio", "max"),
        max_first_order_share=("first_order_share", "max"),
        min_regret=("regret", "min"),
    ).reset_index()
    order = {r: i for i, r in enumerate(REGIMES)}
    return out.sort_values(["program", "regime"], key=lambda s: s.map(order) if s.name == "regime" else s,
                           ignore_index=True).pipe(pd.DataFrame)


def sweep_slopes(sw):
    """Fitted log-log slope of regret (and of the bound) against δ for each swept instance."""
    import pandas as pd

    rows = []
    for (program, inst), g in sw.groupby(["program", "instance"], sort=False):
        regs = sorted(set(g["regime"]))
        rows.append({"program": program, "instance": inst, "mode": g["mode"].iloc[0],
                     "regimes": "|".join(regs), "single_regime": regs[0] if len(regs) == 1 else "mixed",
                     "slope_regret": fit_slope(g["delta"], g["regret"]),
                     "slope_bound": fit_slope(g["delta"], g["bound"]),
                     "max_ratio": float(g["ratio"].max())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- real drift
def scores_by_task(scores, method: str) -> dict[str, np.ndarray]:
    """q vectors (ordered by layer) per task for one scoring method of notebook 02's scores.csv.

    Each vector is renormalised to sum to one: the CSV keeps 6 significant digits, so the
    stored q sums to 1 only up to rounding."""
    sub = scores[scores["method"] == method]
    out = {}
    for task, g in sub.groupby("task", sort=True):
        q = g.sort_values("layer")["q"].to_numpy(dtype=float)
        if q.size and np.all(np.isfinite(q)) and np.all(q >= 0) and q.sum() > 0:
            out[str(task)] = q / q.sum()
    return out


def real_variants(params, n_layers: int) -> dict[str, tuple[str, dict]]:
    """The program settings used on real scores, read from params (allocation, pruning).

    Layers of a uniform decoder have equal sizes and equal expert costs, so costs and sizes are
    constant vectors (normalised units). Allocation follows the paper literally (α, β, γ of
    params; costs = budget_scaling, budget = budget_scaling × total_experts, as
    `allocation_baselines.mdl_literal`). With equal costs and a binding budget α drops out of the
    regret (Σ n = total_experts at both solutions), so α = 0 would give the same numbers.
    Pruning follows the paper's inequality target, where ρ(0) ≫ ρ_max makes every layer clip
    (METHOD.md §3's warning: regret is then identically 0), and the non-degenerate equality-target
    variant.
    """
    a, p = params.allocation, params.pruning
    ones = np.ones(n_layers)
    return {
        "allocate: paper (alpha, cost=budget_scaling)": ("allocate", {
            "cost": a.budget_scaling * ones, "budget": a.budget_scaling * a.total_experts,
            "alpha": a.alpha, "beta": a.beta, "gamma": a.gamma}),
        "prune: paper (>= target)": ("prune", {
            "sizes": ones, "target": p.target, "bits": p.bits, "lam": p.lam, "gamma": p.gamma,
            "rho_max": p.rho_max, "equality": False}),
        "prune: equality target": ("prune", {
            "sizes": ones, "target": p.target, "bits": p.bits, "lam": p.lam, "gamma": p.gamma,
            "rho_max": p.rho_max, "equality": True}),
    }


def task_pairs(q_by_task: dict[str, np.ndarray], program: str, n_max: Any = "solutions", **program_args):
    """Regret, bound and ratio for every ordered (source, target) pair of distinct tasks.

    A pair the program rejects (e.g. a zero score with γ > 0 in pruning) gets its reason in
    `error` instead of numbers."""
    import pandas as pd

    rows = []
    tasks = list(q_by_task)
    for s in tasks:
        for t in tasks:
            if s == t:
                continue
            row = {"source": s, "target": t, "program": program}
            try:
                tr = evaluate(program, q_by_task[s], q_by_task[t], **program_args,
                              **({"n_max": n_max} if program == "allocate" else {}))
            except ValueError as e:
                rows.append({**row, "error": str(e)})
                continue
            rows.append({**row, **_row(program, tr), "error": ""})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- adversarial search
_POSITIVE_ARGS = {"allocate": ("beta", "gamma", "budget"), "prune": ("lam", "gamma", "target", "rho_max")}


def _perturb(program: str, q_s: np.ndarray, q_t: np.ndarray, args: dict, rng: np.random.Generator, step: float):
    """Random multiplicative move of both score vectors and of the program's scalar arguments."""
    def move(q):
        w = np.log(q) + step * rng.standard_normal(q.size)
        w = np.exp(w - w.max())
        return w / w.sum()
    a = dict(args)
    for k in _POSITIVE_ARGS[program]:
        a[k] = float(a[k] * np.exp(step * rng.standard_normal()))
    if program == "prune":
        a["rho_max"] = float(min(a["rho_max"], 1.0))
        a["target"] = float(min(a["target"], a["rho_max"]))
    return move(q_s), move(q_t), a


def adversarial_search(program: str, starts, steps: int = 300, seed: int = 0, step: float = 0.3):
    """Hill-climb regret / Eq 21 from the given starting instances (rows of `search`, with their
    q_source, q_target and args): a move of the scores and scalar arguments is kept when it raises
    the ratio. A counterexample search that does not rely on luck; one row per start with the best
    ratio found, its regime and its inputs."""
    import pandas as pd

    _check_program(program)
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for _, r in starts.iterrows():
        q_s, q_t = np.asarray(r["q_source"], float), np.asarray(r["q_target"], float)
        args = {k: (np.asarray(v, float) if isinstance(v, list) else v) for k, v in r["args"].items()}
        best = evaluate(program, q_s, q_t, **args)
        start_ratio = best.ratio
        for _ in range(steps):
            try:
                # step sizes log-uniform over two decades: coarse moves explore, fine ones refine
                cand = _perturb(program, q_s, q_t, args, rng, step * 10 ** -rng.uniform(0, 2))
                tr = evaluate(program, cand[0], cand[1], **cand[2])
            except ValueError:
                continue                     # the move left the programs' domain (e.g. target > ρ_max)
            if np.isfinite(tr.ratio) and tr.ratio > best.ratio:
                q_s, q_t, args, best = cand[0], cand[1], cand[2], tr
        rows.append({"program": program, "start_instance": r.get("instance"), "start_regime": r["regime"],
                     "start_ratio": start_ratio, **_row(program, best),
                     "q_source": q_s.tolist(), "q_target": q_t.tolist(),
                     "args": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in args.items()}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- downstream effect
def downstream_pairs(real, tasks, n_pairs: int = 2, method: str = "cg_ggn") -> list[tuple[str, str]]:
    """Task pairs for the fine-tuning check: among `tasks`, the ordered pair with the largest
    allocation regret under `method`'s scores, then the smallest (then the next largest ...)."""
    if real is None or len(real) == 0 or n_pairs <= 0:
        return []
    ok = real[(real["error"] == "") & (real["program"] == "allocate") & (real["method"] == method)
              & real["source"].isin(tasks) & real["target"].isin(tasks)]
    ok = ok.drop_duplicates(["source", "target"]).sort_values("regret", ascending=False)
    pairs = list(zip(ok["source"], ok["target"]))
    picked, lo, hi = [], len(pairs) - 1, 0
    while len(picked) < min(n_pairs, len(pairs)):
        if len(picked) % 2 == 0:
            picked.append(pairs[hi]); hi += 1
        else:
            picked.append(pairs[lo]); lo -= 1
    return picked


def downstream(params, scores, pairs, *, cache_dir, method: str = "mdl_cg_ggn", device: str = "cpu",
               reuse=()):
    """Accuracy on the target task of LoRA-MoE fine-tuned with the target's own allocation
    ("native") and with the source's ("transferred"), per seed of params.allocation.

    Allocations come from `allocation_baselines.allocate(method, ...)` (Algorithm 1 on the task's
    scores), fine-tuning and lm-eval accuracy from `finetune.cached_cell` (notebook 03's cell:
    same settings, results cached per allocation, so equal counts share one run). A cell already
    in one of the `reuse` folders (e.g. notebook 03's cache, same cell key) is copied, not re-run."""
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    from mdlcap.interventions import allocation as ab
    from mdlcap import files as mio
    from mdlcap.interventions import finetune as ft
    from mdlcap import models
    from mdlcap.models import decoder_layers

    A = params.allocation
    acc = ft.make_accelerator(device)
    base, tok = models.load(params, device=str(acc.device), progress=False)
    L = len(decoder_layers(base))
    rows = []
    cells = [(s, t, seed) for s, t in pairs for seed in A.seeds]
    batches = {}
    for s, t, seed in tqdm(cells, desc="downstream cells"):
        native = ab.allocate(method, n_layers=L, total=A.total_experts, params=A, scores=scores, task=t)
        moved = ab.allocate(method, n_layers=L, total=A.total_experts, params=A, scores=scores, task=s)
        if native is None or moved is None:
            raise ValueError(f"method: {method!r} has no scores for {s!r} or {t!r} in scores.csv")
        if t not in batches:
            batches[t] = ft.task_train_batches(params, tok, t)
        for kind, counts in (("native", native), ("transferred", moved)):
            name = f"{t}_{ft.cell_key(params, t, seed, [int(c) for c in counts])}.json"
            mine = Path(cache_dir) / name
            for d in reuse:
                if not mine.exists() and (Path(d) / name).exists():
                    mio.atomic_write_bytes(mine, (Path(d) / name).read_bytes())
            rec = ft.cached_cell(cache_dir, base, tok, params, t, seed=seed, counts=[int(c) for c in counts],
                                 accelerator=acc, batches=batches[t])
            rows.append({"source": s, "target": t, "seed": int(seed), "kind": kind,
                         "accuracy": rec["accuracy"], "counts": " ".join(map(str, counts)),
                         "same_counts": bool(np.array_equal(native, moved)), "cached": rec.get("cached", False)})
    return pd.DataFrame(rows)
