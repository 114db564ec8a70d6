"""What the task generators share: the example schema, answer placement, word and paragraph helpers.

Every example, whatever its source, has one schema

    {"id": str, "query": str, "choices": list[str], "label": int}

scored the lm-eval way: the model's log-likelihood of `" " + choices[i]` after `query`; the
prediction is the arg-max, accuracy is the fraction equal to `label`. A generator returns rows
`(query, choices, label)`; `example` adds the id.
"""
from __future__ import annotations

from typing import Any

Row = tuple[str, list[str], int]


def example(task: str, split: str, i: int, query: str, choices: list[str], label: int) -> dict[str, Any]:
    return {"id": f"{task}-{split}-{i}", "query": query, "choices": list(choices), "label": int(label)}


def place_answer(rng, correct: str, distractors: list[str], n: int) -> tuple[list[str], int]:
    """Put the correct choice at a random position among n-1 distinct distractors."""
    pool = [d for d in dict.fromkeys(distractors) if d != correct]
    if len(pool) < n - 1:
        raise ValueError(f"distractors: need {n - 1} distinct, got {len(pool)}")
    picks = [pool[k] for k in rng.choice(len(pool), n - 1, replace=False)]
    label = int(rng.integers(n))
    picks.insert(label, correct)
    return picks, label


STOP = {"the", "a", "an", "of", "to", "is", "in", "and", "or", "be", "it", "for", "as", "by", "on",
        "that", "this", "are", "with", "if", "not", "can", "at", "its", "from"}


def content_words(words: list[str]) -> list[int]:
    """Indices of the content words of a sentence (alphabetic, > 3 letters, no stop word, not
    among the first three)."""
    return [i for i, w in enumerate(words) if i >= 3 and w.isalpha() and w.lower() not in STOP and len(w) > 3]


def by_paragraph(sents) -> dict[int, list[int]]:
    """paragraph id → indices of its sentences in `sents`, in order."""
    out: dict[int, list[int]] = {}
    for k, s in enumerate(sents):
        out.setdefault(s["para"], []).append(k)
    return out
