"""Stable import path for the layer gains ζ² (their code: `mdlcap.scores`)."""
from mdlcap.scores.blocks import Gains, resolve_blocks  # noqa: F401
from mdlcap.scores.registry import layer_gains  # noqa: F401
