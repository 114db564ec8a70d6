"""The seven zero-shot stand-ins: test split only, answerable by a model pretrained on the corpus.

Each generator is `make(rng, sents, n) -> [(query, choices, label), ...]` over the prose
sentences of the HELD-OUT split (`mdlcap.default.corpus.sentences(seed, "heldout")`), so they
test generalisation, not memory.

  rte            premise -> an entailed span of it vs that span with two words swapped in (2)
  boolq          passage -> the verbatim claim vs the claim with one word swapped (2)
  winogrande     context sentence + a sentence up to a word mentioned before: that word vs
                 another earlier-mentioned word, each with the rest of the sentence (2)
  hellaswag      sentence start -> its real ending vs shuffled endings of other sentences (4)
  arc_easy       next word vs random corpus words (4)
  arc_challenge  next word vs words from the same paragraph (4)
  openbookqa     previous sentence as the "book", then arc_challenge on the next one (4)

All but winogrande walk the sentences in one seeded random order (`_walk`), asking the task's
`item` function for a row per sentence until `n` rows are made.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mdlcap.default.tasks.common import STOP, Row, by_paragraph, content_words, place_answer


@dataclass
class _Sentence:
    """One sentence offered to an item function, with what the walk computed once for all."""
    s: dict                         # {"text", "para", "title", "source"}
    words: list[str]                # its words, final full stop removed
    cw: list[int]                   # content_words(words)
    sents: list[dict]               # every held-out sentence
    vocab: list[str]                # their alphabetic words of > 3 letters, sorted
    by_para: dict[int, list[int]]   # paragraph -> sentence indices


def _walk(rng, sents, n_total: int, item: Callable[..., Row | None]) -> list[Row]:
    vocab = sorted({w for s in sents for w in s["text"].rstrip(".").split() if w.isalpha() and len(w) > 3})
    para = by_paragraph(sents)
    order = rng.permutation(len(sents))
    rows, k = [], 0
    while len(rows) < n_total:
        s = sents[int(order[k % len(order)])]
        k += 1
        words = s["text"].rstrip(".").split()
        row = item(rng, _Sentence(s, words, content_words(words), sents, vocab, para))
        if row is not None:
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- hellaswag
def _hellaswag_item(rng, x: _Sentence) -> Row | None:
    # the real ending vs endings of other held-out sentences with their words shuffled:
    # a small LM cannot judge topical fit (tried: at chance) but can judge fluency
    words, sents = x.words, x.sents
    cut = int(len(words) * 0.6)
    if len(words) - cut < 3:
        return None
    ending = " ".join(words[cut:]) + "."
    others = []
    while len(others) < 3:
        o = sents[int(rng.integers(len(sents)))]["text"].rstrip(".").split()
        oe = o[int(len(o) * 0.6):]
        oe = " ".join(oe[j] for j in rng.permutation(len(oe))) + "."
        if oe != ending and oe not in others:
            others.append(oe)
    choices, label = place_answer(rng, ending, others, 4)
    return " ".join(words[:cut]), choices, label


def hellaswag(rng, sents, n_total: int) -> list[Row]:
    return _walk(rng, sents, n_total, _hellaswag_item)


# --------------------------------------------------------------------------- arc_easy / arc_challenge / openbookqa
def _cloze_item(task: str):
    """Next content word of a sentence vs 3 distractors: random corpus words (arc_easy) or words
    of the same paragraph (arc_challenge; openbookqa also prefixes another sentence of it)."""
    def item(rng, x: _Sentence) -> Row | None:
        words, s, sents, by_para = x.words, x.s, x.sents, x.by_para
        if not x.cw:
            return None
        j = x.cw[int(rng.integers(len(x.cw)))]
        target = words[j]
        if task == "arc_easy":
            pool = [x.vocab[int(t)] for t in rng.choice(len(x.vocab), 12, replace=False)]
        else:
            para_words = {w for t in by_para[s["para"]] for w in sents[t]["text"].rstrip(".").split()}
            pool = sorted(w for w in para_words | set(words) if w.isalpha() and len(w) > 3 and w != target)
            if len(pool) < 3:
                return None
        prefix = " ".join(words[:j])
        choices, label = place_answer(rng, target, pool, 4)
        if task == "openbookqa":
            prev = [sents[t]["text"] for t in by_para[s["para"]] if sents[t]["text"] != s["text"]]
            if not prev:
                return None
            prefix = prev[0] + " " + prefix
        return prefix, choices, label
    return item


def arc_easy(rng, sents, n_total: int) -> list[Row]:
    return _walk(rng, sents, n_total, _cloze_item("arc_easy"))


def arc_challenge(rng, sents, n_total: int) -> list[Row]:
    return _walk(rng, sents, n_total, _cloze_item("arc_challenge"))


def openbookqa(rng, sents, n_total: int) -> list[Row]:
    return _walk(rng, sents, n_total, _cloze_item("openbookqa"))


# --------------------------------------------------------------------------- boolq
def _boolq_item(rng, x: _Sentence) -> Row | None:
    words = x.words
    n = min(len(words), int(rng.integers(6, 10)))
    claim = [w.lower() if i == 0 else w for i, w in enumerate(words[:n])]
    idx = [i for i in range(1, n) if words[i].isalpha()]
    if not idx:
        return None
    bad = list(claim)
    bad[idx[int(rng.integers(len(idx)))]] = x.vocab[int(rng.integers(len(x.vocab)))]
    if bad == claim:
        return None
    q = f"{x.s['text']}\nQuestion: is it true that"
    choices, label = place_answer(rng, " ".join(claim) + "?", [" ".join(bad) + "?"], 2)
    return q, choices, label


def boolq(rng, sents, n_total: int) -> list[Row]:
    return _walk(rng, sents, n_total, _boolq_item)


# --------------------------------------------------------------------------- rte
def _rte_item(rng, x: _Sentence) -> Row | None:
    # entailed: a span of the premise; not entailed: the same span with two words
    # replaced by words of another sentence (a span of another sentence: at chance)
    words, sents = x.words, x.sents
    n = int(rng.integers(5, 8))
    if len(words) < n + 1:
        return None
    a = int(rng.integers(0, len(words) - n + 1))
    span = words[a:a + n]
    o = [w for w in sents[int(rng.integers(len(sents)))]["text"].rstrip(".").split() if w.isalpha()]
    if len(o) < 2:
        return None
    bad = list(span)
    for j, w in zip(rng.choice(n, 2, replace=False), rng.choice(len(o), 2, replace=False)):
        bad[int(j)] = o[int(w)]
    if bad == span:
        return None
    q = f"{x.s['text']}\nIn other words,"
    choices, label = place_answer(rng, " ".join(span) + ".", [" ".join(bad) + "."], 2)
    return q, choices, label


def rte(rng, sents, n_total: int) -> list[Row]:
    return _walk(rng, sents, n_total, _rte_item)


# --------------------------------------------------------------------------- winogrande
_WINO_SKIP = {"when", "which", "will", "then", "than", "there", "their", "they", "have", "been", "into",
              "such", "only", "also", "that", "this", "with", "from"}


def winogrande(rng, sents, n_total: int) -> list[Row]:
    """Referent choice, as WinoGrande: a context sentence (another sentence of the same paragraph,
    the preceding one where there is one), then a sentence up to a content word; the options are
    that word and another content word mentioned earlier (in the context or the sentence so far),
    each followed by the rest of the sentence. The blank is, where the sentence has one, a word
    mentioned before, so that both options are earlier mentions. The context sentence also keeps
    these items from repeating a hellaswag item's text with another context/continuation split
    (lm-eval pools such requests across tasks and then scores the shorter continuation wrongly)."""
    para = by_paragraph(sents)
    eligible = [k for k, s in enumerate(sents) if len(para[s["para"]]) > 1]
    order = [eligible[int(i)] for i in rng.permutation(len(eligible))]
    rows, k = [], 0
    while len(rows) < n_total:
        if not order or k >= 20 * len(order):
            raise ValueError(f"data: winogrande yields only {len(rows)} items from the held-out text, asked {n_total}")
        kk = order[k % len(order)]
        k += 1
        idx = para[sents[kk]["para"]]
        pos = idx.index(kk)
        ctx = sents[idx[pos - 1] if pos > 0 else idx[pos + 1]]["text"]
        words, ctx_words = sents[kk]["text"].rstrip(".").split(), ctx.rstrip(".").split()
        cands = []
        for j in content_words(words):
            earlier = [w for w in dict.fromkeys(ctx_words + words[:j]) if w.isalpha() and len(w) > 3
                       and w != words[j] and w.lower() not in STOP and w.lower() not in _WINO_SKIP]
            if earlier:
                cands.append((j, earlier, words[j] in ctx_words + words[:j]))
        if not cands:
            continue
        mentioned = [c for c in cands if c[2]]
        pick = mentioned or cands
        j, earlier, _ = pick[int(rng.integers(len(pick)))]
        alt = earlier[int(rng.integers(len(earlier)))]
        rest = " ".join(words[j + 1:])
        rest = (" " + rest if rest else "") + "."
        choices, label = place_answer(rng, words[j] + rest, [alt + rest], 2)
        rows.append((ctx + " " + " ".join(words[:j]), choices, label))
    return rows
