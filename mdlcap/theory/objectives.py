"""The two programs as objects: what Theorem 4 (METHOD.md §4) needs from each, in one place.

    ALLOCATE  Eq 11 (METHOD.md §2), decision n, solver `mdlcap.theory.allocation.allocate`
    PRUNE     Eq 14 (METHOD.md §3), decision ρ, solver `mdlcap.theory.pruning.prune`

Each object solves its program, reads the decision off the result, evaluates the objective F,
its gradient and curvature, and gives the constants μ, L_θ, L_q of the bound. A program's
arguments, which of them are required and their defaults are read from its solver's
signature, so they are written once, in the solver. `PROGRAMS` maps a name to its object.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from mdlcap.theory.allocation import allocate, allocation_objective
from mdlcap.theory.pruning import prune, pruning_objective

CLIP_TOL = 1e-9          # a coordinate within this (relative) distance of a bound counts as clipped


class Program:
    """One program: `solver(q, **args)` and the pieces of Theorem 4 that depend on it."""
    name: str
    solver: Callable
    x_attr: str           # the result's decision attribute
    weights: str          # the per-layer vector argument (costs or sizes)
    positive_args: tuple  # scalar arguments that must stay > 0 (for searches that move them)

    def __init__(self) -> None:
        params = list(inspect.signature(self.solver).parameters.values())[1:]      # after q
        self.allowed = frozenset(p.name for p in params)
        self.required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        self.defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def __repr__(self) -> str:
        return f"<program {self.name}>"

    def check_args(self, args: dict) -> dict:
        """The solver's defaults overlaid with `args`; names the first unknown or missing one."""
        unknown = sorted(set(args) - self.allowed)
        if unknown:
            raise ValueError(f"{unknown[0]}: not an argument of programs.{self.name} "
                             f"(allowed: {sorted(self.allowed)})")
        missing = [k for k in self.required if k not in args]
        if missing:
            raise ValueError(f"{missing[0]}: required for program {self.name!r}")
        return {**self.defaults, **args}

    def solve(self, q: np.ndarray, args: dict):
        """The minimiser x*(q), by the program's solver (the one solver of the package)."""
        return self.solver(q, **args)

    def x(self, res) -> np.ndarray:
        return np.asarray(getattr(res, self.x_attr), dtype=float)

    def vector(self, args: dict, q: np.ndarray) -> np.ndarray:
        """The per-layer costs / sizes, broadcast to q's shape."""
        return np.broadcast_to(np.asarray(args[self.weights], dtype=float), q.shape)

    def active(self, res, args: dict) -> bool:
        return bool(res.active)


class Allocation(Program):
    """Eq 11: F(n; q) = Σ α c_k n_k − β Σ q_k^γ log(1 + n_k), n ≥ 0, Σ c n ≤ B."""
    name, solver, x_attr, weights = "allocate", staticmethod(allocate), "n", "cost"
    positive_args = ("beta", "gamma", "budget")

    def objective(self, x, q: np.ndarray, args: dict) -> float:
        return allocation_objective(x, q, self.vector(args, q), alpha=args["alpha"], beta=args["beta"],
                                    gamma=args["gamma"])

    def objective_gap(self, x_a: np.ndarray, x_b: np.ndarray, q: np.ndarray, args: dict) -> float:
        """F(x_a; q) − F(x_b; q), summed per coordinate to avoid cancelling two large totals."""
        qg = q ** args["gamma"]
        d = x_a - x_b
        c = self.vector(args, q)
        # log(1+a) − log(1+b) = log1p((a−b)/(1+b)): exact for tiny differences
        terms = args["alpha"] * c * d - args["beta"] * qg * np.log1p(d / (1.0 + x_b))
        return float(np.sum(terms))

    def gradient(self, x: np.ndarray, q: np.ndarray, args: dict) -> np.ndarray:
        """∇_n F = α c − β q^γ / (1 + n)."""
        qg = q ** args["gamma"]
        return args["alpha"] * np.asarray(args["cost"], dtype=float) - args["beta"] * qg / (1.0 + x)

    def local_smoothness(self, xs: np.ndarray, xt: np.ndarray, q: np.ndarray, args: dict) -> float:
        """max over the segment [x_T, x_S] of the diagonal Hessian β q^γ / (1 + n)²."""
        qg = q ** args["gamma"]
        return float(np.max(args["beta"] * qg / (1.0 + np.minimum(xs, xt)) ** 2))

    def clipped(self, x: np.ndarray, args: dict) -> int:
        """Coordinates at the bound n_k = 0."""
        return int(np.sum(x <= CLIP_TOL))

    def unconstrained_use(self, q: np.ndarray, args: dict) -> float:
        """Σ c n of the solution with a budget too large to bind."""
        a = {**args, "budget": 1e12}
        return float(np.sum(np.asarray(a["cost"]) * self.x(self.solve(q, a))))

    def box(self, n_max: Any, qs: np.ndarray, qt: np.ndarray, xs: np.ndarray, xt: np.ndarray, args: dict) -> float:
        """The box n ≤ n_max on which μ > 0: "solutions", "bracket" or a number (see transfer)."""
        need = float(max(xs.max(), xt.max()))
        if isinstance(n_max, str):
            if n_max == "solutions":
                return need
            if n_max == "bracket":
                c = self.vector(args, qs)
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

    def constants(self, qg: np.ndarray, g: float, lq_pow: float, args: dict, box: float | None):
        """(μ, L_θ, L_q) on the box: β min q_T^γ/(1+n_max)², β max q_T^γ, βγ max q^{γ−1}."""
        beta = float(args["beta"])
        return beta * float(qg.min()) / (1.0 + box) ** 2, beta * float(qg.max()), beta * g * lq_pow


class Pruning(Program):
    """Eq 14: F(ρ; q) = Σ b N_k (1 − ρ_k) + λ Σ q_k^γ ρ_k², 0 ≤ ρ ≤ ρ_max, Σ N ρ ≥ s Σ N (or =)."""
    name, solver, x_attr, weights = "prune", staticmethod(prune), "rho", "sizes"
    positive_args = ("lam", "gamma", "target", "rho_max")

    def objective(self, x, q: np.ndarray, args: dict) -> float:
        return pruning_objective(x, q, self.vector(args, q), bits=args["bits"], lam=args["lam"], gamma=args["gamma"])

    def objective_gap(self, x_a: np.ndarray, x_b: np.ndarray, q: np.ndarray, args: dict) -> float:
        """F(x_a; q) − F(x_b; q), summed per coordinate to avoid cancelling two large totals."""
        qg = q ** args["gamma"]
        d = x_a - x_b
        N = self.vector(args, q)
        terms = d * (-args["bits"] * N + args["lam"] * qg * (x_a + x_b))
        return float(np.sum(terms))

    def gradient(self, x: np.ndarray, q: np.ndarray, args: dict) -> np.ndarray:
        """∇_ρ F = −b N + 2λ q^γ ρ."""
        qg = q ** args["gamma"]
        return -args["bits"] * np.asarray(args["sizes"], dtype=float) + 2 * args["lam"] * qg * x

    def local_smoothness(self, xs: np.ndarray, xt: np.ndarray, q: np.ndarray, args: dict) -> float:
        """The diagonal Hessian 2λ q^γ does not depend on ρ: its largest entry."""
        qg = q ** args["gamma"]
        return float(np.max(2 * args["lam"] * qg))

    def clipped(self, x: np.ndarray, args: dict) -> int:
        """Coordinates at a bound of the box, ρ_k = 0 or ρ_max."""
        rm = float(args["rho_max"])
        return int(np.sum((x <= CLIP_TOL) | (x >= rm * (1 - CLIP_TOL))))

    def active(self, res, args: dict) -> bool:
        if args.get("equality", False):
            return True                     # an equality target always binds
        return bool(res.active)

    def unconstrained_use(self, q: np.ndarray, args: dict) -> float:
        """Σ N ρ of the solution with a target too small to bind."""
        a = {**args, "target": 1e-12, "equality": False}
        return float(np.sum(np.asarray(a["sizes"]) * self.x(self.solve(q, a))))

    def box(self, n_max: Any, qs, qt, xs, xt, args: dict) -> None:
        return None                         # the Hessian is constant: no box needed

    def constants(self, qg: np.ndarray, g: float, lq_pow: float, args: dict, box: None):
        """(μ, L_θ, L_q): 2λ min q_T^γ, 2λ max q_T^γ, 2λγ ρ_max max q^{γ−1}."""
        lam = float(args["lam"])
        mu, L_theta = 2 * lam * float(qg.min()), 2 * lam * float(qg.max())
        return mu, L_theta, 2 * lam * g * float(args["rho_max"]) * lq_pow


ALLOCATE, PRUNE = Allocation(), Pruning()
PROGRAMS: dict[str, Program] = {p.name: p for p in (ALLOCATE, PRUNE)}


def program(name: str) -> Program:
    """The program called `name` ("allocate" or "prune")."""
    if name not in PROGRAMS:
        raise ValueError(f"program: must be one of {list(PROGRAMS)}, got {name!r}")
    return PROGRAMS[name]
