"""Stable import path for Theorem 4 (its code: `mdlcap.theory.transfer`)."""
from mdlcap.theory.transfer import RegretBound, Transfer, classify, evaluate, objective, regret, regret_bound  # noqa: F401
