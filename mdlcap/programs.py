"""Stable import path for the two programs (their code: `mdlcap.theory.programs`)."""
from mdlcap.theory.programs import (AllocationResult, IntegerAllocationResult, PruningResult,  # noqa: F401
                                    allocate, allocate_integer, allocation_kkt, allocation_objective,
                                    prune, pruning_kkt, pruning_objective, scores_from_gains)
