"""Stable import path for the two programs (their code: `mdlcap.theory.programs`)."""
from mdlcap.theory.programs import (AllocationResult, IntegerAllocationResult, PruningResult,  # noqa: F401
                                    JointIntegerResult, JointResult, allocate, allocate_integer,
                                    allocation_kkt, allocation_objective, joint, joint_integer,
                                    prune, pruning_kkt, pruning_objective, scores_from_gains)
