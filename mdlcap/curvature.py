"""Stable import path for the layer gains ζ² (their code: `mdlcap.scores`)."""
from mdlcap.scores.curvature import Gains, layer_gains, resolve_blocks  # noqa: F401
