"""Text passages of the default data: "calibration" (a C4 stand-in: corpus text the pretraining
never saw and the tasks never use; pruning calibrates on it) and "heldout" (perplexity).

Each passage joins whole paragraphs of its corpus split, in a seeded order, until it holds about
`data.calibration_seq_len` tokens or more (5 characters a token, generously). Under
`data.source: hub` the calibration passages come from C4 (`mdlcap.default.hub.c4_texts`).
"""
from __future__ import annotations

import numpy as np

from mdlcap.default.corpus import corpus
from mdlcap.default.hub import c4_texts

TEXT_SPLITS = ("calibration", "heldout")


def make_texts(params, split: str) -> list[str]:
    """Passages of roughly calibration_seq_len tokens or more (about 4 characters a token)."""
    if params.data.source == "hub" and split == "calibration":
        return c4_texts(params)
    n = params.data.n_calibration if split == "calibration" else params.data.n_heldout
    min_chars = 5 * params.data.calibration_seq_len
    paras = corpus(params.data.seed)[split]
    rng = np.random.default_rng([params.data.seed, 5, TEXT_SPLITS.index(split)])
    order = rng.permutation(len(paras))
    out, buf = [], []
    for k in order:
        buf.append(paras[int(k)]["text"])
        if sum(len(b) for b in buf) >= min_chars:
            out.append("\n\n".join(buf))
            buf = []
            if len(out) == n:
                break
    if len(out) < n:
        raise ValueError(f"data.n_{'calibration' if split == 'calibration' else 'heldout'}: corpus split "
                         f"'{split}' yields only {len(out)} passages of >= {min_chars} characters, asked {n}")
    return out
