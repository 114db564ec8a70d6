"""The five fine-tuning stand-ins: zero-shot near chance, learnable by tuning.

Each generator is `make(rng, seed, n) -> [(query, choices, label), ...]`, drawing its text from
the pretraining split of the corpus (`mdlcap.default.corpus.sentences(seed, "pretrain")`) or
from a generated world; `mdlcap.default.tasks.registry` deduplicates the rows by query and
cuts them into train / validation / test.

  cola  acceptability: a short sentence as written, or cut off after "the", "a", "an", "of" or
        "to" (an unfinished sentence)                                                 -> no/yes
  mrpc  paraphrase: a short sentence and its light rewording, or that rewording with a verb
        negated ("is" -> "is not", "returns" -> "does not return")                    -> no/yes
  csqa  "commonsense" over a generated world: where is a made-up object kept? The place is a
        hidden rule of the name's suffix with exceptions: half of the objects are kept elsewhere,
        which only a memorised training question about the same object tells (5 choices)
  obqa  open book: a fact gives a made-up object's box number, a second fact places another
        object in a room; which box holds the first? (4 digits)
  sciq  which language-reference section does this sentence come from? (4 section titles)

Why these and not harder ones. The embedded model (notebook 00) has no in-context copying or
matching ability (a repeated random token sequence is no easier the second time), and the
notebook-00 sanity check gives each task about 20 of 106 mixed full fine-tuning steps. In that
budget it learns a cue a few tokens before the answer (cola), a salient word in a short text
(mrpc) or copying the one number in the prompt (obqa); it does not learn to compare two
sentences, to spot a shuffled span anywhere in a sentence, or to bind a question to one of two
facts (the earlier versions of these three tasks stayed at chance after tuning).
"""
from __future__ import annotations

from mdlcap.default.corpus import sentences
from mdlcap.default.tasks.common import Row, place_answer
from mdlcap.default.tasks.world import PLACES, nonce_objects


def _shuffled_pretrain(rng, seed: int) -> list[dict]:
    pool = sentences(seed, "pretrain")
    return [pool[k] for k in rng.permutation(len(pool))]


# --------------------------------------------------------------------------- cola
CUT_AFTER = {"the", "a", "an", "of", "to"}
COLA_MAX_WORDS = 16
COLA_QUESTION = "Question: Is this a well-formed English sentence?\nSentence: {s}.\nAnswer:"


def cola(rng, seed: int, n_total: int) -> list[Row]:
    """A short sentence as written (yes) or cut off right after "the", "a", "an", "of" or "to",
    leaving it unfinished ("Return the low median of."; no). The sentence ends the prompt, next to
    the answer."""
    rows, seen = [], set()
    for s in _shuffled_pretrain(rng, seed):
        if len(rows) == n_total:
            break
        words = s["text"].rstrip(".").split()
        cuts = [i for i in range(2, len(words) - 1) if words[i].lower() in CUT_AFTER]
        if len(words) > COLA_MAX_WORDS or not cuts:
            continue
        ok = bool(rng.integers(2))
        if not ok:
            words = words[:cuts[int(rng.integers(len(cuts)))] + 1]
        q = COLA_QUESTION.format(s=" ".join(words))
        if q not in seen:
            seen.add(q)
            rows.append((q, ["no", "yes"], int(ok)))
    return rows


# --------------------------------------------------------------------------- mrpc
REWORD = {"the": "this", "a": "one", "is": "is", "can": "may", "must": "has to", "returns": "gives back",
          "object": "value", "objects": "values", "function": "callable", "used": "employed",
          "value": "result", "called": "invoked", "list": "sequence", "string": "text", "if": "when",
          "also": "as well", "are": "are", "method": "routine", "argument": "parameter",
          "arguments": "parameters", "not": "not", "when": "whenever", "number": "count"}
# every negation adds the one word "not" ("can not", "does not return"): a single cue word; with
# "cannot"/"never" mixed in, the check of notebook 00 learned mrpc less reliably
NEGATE = {"is": "is not", "are": "are not", "was": "was not", "were": "were not", "can": "can not",
          "could": "could not", "must": "must not", "should": "should not", "will": "will not",
          "would": "would not", "may": "may not", "might": "might not", "returns": "does not return"}
NEGATIONS = {"not", "no", "never", "cannot", "nor", "none", "nothing", "neither"}
MRPC_MAX_WORDS = 14


def mrpc(rng, seed: int, n_total: int) -> list[Row]:
    """A short sentence and its light rewording (yes), or the same rewording with one verb negated
    (no: it says the opposite). Sentences that already hold a negation are not used."""
    rows, seen = [], set()
    for s in _shuffled_pretrain(rng, seed):
        if len(rows) == n_total:
            break
        words = s["text"].rstrip(".").split()
        verbs = [i for i, w in enumerate(words) if w in NEGATE]
        if len(words) > MRPC_MAX_WORDS or not verbs or any(w.lower().strip(",;:") in NEGATIONS for w in words):
            continue
        same = bool(rng.integers(2))
        b = [REWORD.get(w, w) if rng.random() < 0.6 else w for w in words]
        if not same:
            j = verbs[int(rng.integers(len(verbs)))]
            b[j] = NEGATE[words[j]]
        q = (f"Question: Do both sentences say the same thing?\nSentence 1: {s['text']}\n"
             f"Sentence 2: {' '.join(b)}.\nAnswer:")
        if q not in seen:
            seen.add(q)
            rows.append((q, ["no", "yes"], int(same)))
    return rows


# --------------------------------------------------------------------------- csqa
CSQA_TEMPLATES = [
    "Where would you usually find a {o}?", "Where is a {o} normally kept?",
    "If you are looking for a {o}, where should you look first?", "Which room does a {o} belong in?",
    "Someone needs a {o}. Where do they go?", "A {o} is most often stored where?",
    "Where does a {o} live when it is not in use?", "In which place would a {o} be found?",
]


CSQA_EXCEPTIONS = 0.25       # share of the objects kept somewhere their suffix does not say


def csqa(rng, seed: int, n_total: int) -> list[Row]:
    """Where is a made-up object kept (5 places)? The suffix rule holds for half of the objects;
    each of the others is kept in one of the four other places, the same in every question about
    it. The rule alone gives ~50 % on the test split; above that is recall of the exceptions seen in
    training (objects recur across splits under other question templates), up to ~90 %: a task
    whose accuracy grows with the capacity the adapters give, without a ceiling at 100 %. (With the
    rule alone every allocation solved it.) Drawn twice over: the registry keeps the first use of
    a repeated question."""
    n_total *= 2
    objs = nonce_objects(rng, max(60, n_total // 6))
    for k, (o, place) in enumerate(objs):
        if rng.random() < CSQA_EXCEPTIONS:
            others = [p for p in PLACES if p != place]
            objs[k] = (o, others[int(rng.integers(len(others)))])
    rows = []
    for _ in range(n_total):
        o, place = objs[int(rng.integers(len(objs)))]
        q = CSQA_TEMPLATES[int(rng.integers(len(CSQA_TEMPLATES)))].format(o=o) + "\nAnswer:"
        choices, label = place_answer(rng, place, PLACES, 5)
        rows.append((q, choices, label))
    return rows


# --------------------------------------------------------------------------- obqa
def obqa(rng, seed: int, n_total: int) -> list[Row]:
    """Two facts in random order: the asked object's box number, and where another object is; the
    answer is read off the fact (4 digits, the distractors never in the prompt)."""
    n_total *= 2
    objs = [o for o, _ in nonce_objects(rng, 200)]
    digits = [str(d) for d in range(10)]
    rows = []
    for _ in range(n_total):
        o1, o2 = (objs[k] for k in rng.choice(len(objs), 2, replace=False))
        box = digits[int(rng.integers(len(digits)))]
        place = PLACES[int(rng.integers(len(PLACES)))]
        facts = [f"The {o1} is in box {box}.", f"The {o2} is in the {place}."]
        if rng.integers(2):
            facts.reverse()
        q = f"Fact: {facts[0]} Fact: {facts[1]}\nQuestion: Which box holds the {o1}?\nAnswer: box"
        choices, label = place_answer(rng, box, digits, 4)
        rows.append((q, choices, label))
    return rows


# --------------------------------------------------------------------------- sciq
def sciq(rng, seed: int, n_total: int) -> list[Row]:
    """Which part of the documentation a sentence is from: its reference section title, or its
    module for a docstring sentence (4 titles of the same source)."""
    # reference sentences first (section titles), then module docstrings (module names)
    pool = sentences(seed, "pretrain")
    ref = [s for s in pool if s["source"] == "reference"]
    doc = [s for s in pool if s["source"] == "docstring"]
    sents = [ref[k] for k in rng.permutation(len(ref))] + [doc[k] for k in rng.permutation(len(doc))]
    sents = [sents[k] for k in rng.permutation(min(len(sents), n_total))]
    titles = {src: sorted({s["title"] for s in sents if s["source"] == src}) for src in ("reference", "docstring")}
    rows = []
    for s in sents[:n_total]:
        choices, label = place_answer(rng, s["title"], titles[s["source"]], 4)
        q = f"Passage: {s['text']}\nQuestion: Which part of the Python documentation is this from?\nAnswer:"
        rows.append((q, choices, label))
    return rows
