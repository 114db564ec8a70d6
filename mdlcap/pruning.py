"""Stable import path for model pruning (its code: `mdlcap.interventions.pruning`)."""
from mdlcap.interventions.pruning import PRUNERS, prune_model  # noqa: F401
