"""Stable import path for the params loader (its code: `mdlcap.study.params`)."""
from mdlcap.study.params import Params, ParamsError, load  # noqa: F401
