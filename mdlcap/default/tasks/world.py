"""A generated world of made-up objects and the rooms they are kept in (csqa and obqa stand-ins).

The room of an object is a hidden function of its name's suffix: tuning can learn the rule,
no pretraining text holds it.
"""
from __future__ import annotations

PLACES = ["kitchen", "garden", "library", "garage", "office"]
SUFFIX = {"kitchen": ["ol", "ump"], "garden": ["ish", "ern"], "library": ["ax", "ope"],
          "garage": ["ink", "ast"], "office": ["ulo", "eft"]}
ONSETS = ["bl", "gr", "tr", "sn", "fl", "pl", "dr", "kr", "st", "sp", "m", "n", "v", "z", "w", "h", "j", "br"]
VOWELS = ["a", "e", "i", "o", "u", "oo", "ai"]


def nonce_objects(rng, n: int) -> list[tuple[str, str]]:
    """n made-up object names with their places; the place is a hidden function of the suffix."""
    seen, out = set(), []
    while len(out) < n:
        place = PLACES[len(out) % len(PLACES)]
        stem = ONSETS[int(rng.integers(len(ONSETS)))] + VOWELS[int(rng.integers(len(VOWELS)))]
        name = stem + SUFFIX[place][int(rng.integers(2))]
        if name not in seen:
            seen.add(name)
            out.append((name, place))
    return out
