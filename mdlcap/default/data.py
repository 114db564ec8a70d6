"""Task data: generated stand-ins for the paper's tasks (default run) or hub data sets (7B runs).

Every example, whatever its source, has one schema:

    {"id": str, "query": str, "choices": list[str], "label": int}

scored the lm-eval way: the model's log-likelihood of `" " + choices[i]` after `query`;
the prediction is the arg-max, accuracy is the fraction equal to `label`.

Default run (`data.source: generated`). Text comes from English that ships with every Python
install and needs no download: the language reference (`pydoc_data.topics`, ~465 KB) and the
docstrings of the standard library (read with `ast`, never imported or committed). The corpus
is split by paragraph, from `data.seed`, into a pretraining part and a held-out part.

  fine-tuning stand-ins (train / validation / test; zero-shot ~ chance, learnable by tuning)
    cola  acceptability: a short sentence as written, or cut off after "the", "a", "an", "of" or
          "to" (an unfinished sentence)                                                 -> no/yes
    mrpc  paraphrase: a short sentence and its light rewording, or that rewording with a verb
          negated ("is" -> "is not", "returns" -> "does not return")                    -> no/yes
    csqa  "commonsense" over a generated world: where is a made-up object kept? The place is
          a hidden rule of the name's suffix, so tuning must learn the rule (5 choices)
    obqa  open book: a fact gives a made-up object's box number, a second fact places another
          object in a room; which box holds the first? (4 digits)
    sciq  which language-reference section does this sentence come from? (4 section titles)
    (why these and not harder ones: the comment above `_cola`)
  zero-shot stand-ins (test split only; answerable by a model pretrained on the corpus)
    rte            premise -> an entailed span of it vs that span with two words swapped in (2)
    boolq          passage -> the verbatim claim vs the claim with one word swapped (2)
    winogrande     context sentence + a sentence up to a word mentioned before: that word vs
                   another earlier-mentioned word, each with the rest of the sentence (2)
    hellaswag      sentence start -> its real ending vs shuffled endings of other sentences (4)
    arc_easy       next word vs random corpus words (4)
    arc_challenge  next word vs words from the same paragraph (4)
    openbookqa     previous sentence as the "book", then arc_challenge on the next one (4)
  all built from held-out paragraphs, so they test generalisation, not memory.
  texts(params, "calibration") stands in for C4 (pretraining-split text the tasks never use),
  texts(params, "heldout") for perplexity (held-out paragraphs).

7B runs (`data.source: hub`, untested offline): `load_task` converts the paper's hub data sets
into the same schema with the adapters in `HUB_ADAPTERS` (glue/cola, glue/mrpc,
commonsense_qa, openbookqa, ScienceQA text-only); zero-shot tasks then use lm-eval's own task
names and data.
"""
from __future__ import annotations

import ast
import json
import platform
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mdlcap import files as mio

DATA_VERSION = "6"          # bump when a task generator changes: the data cache key follows
CORPUS_VERSION = "4"        # bump only when the corpus or its split changes: the MODEL key follows
FINETUNE_SPLITS = ("train", "validation", "test")
TEXT_SPLITS = ("calibration", "heldout")
GENERATED_FINETUNE = ("cola", "mrpc", "csqa", "obqa", "sciq")
GENERATED_ZEROSHOT = ("rte", "openbookqa", "arc_easy", "arc_challenge", "hellaswag", "boolq", "winogrande")
HELDOUT_FRACTION = 0.12
CALIBRATION_FRACTION = 0.05
MAX_DOCSTRING_CHARS = 1_500_000


# --------------------------------------------------------------------------- corpus
def _pydoc_topics() -> list[tuple[str, str]]:
    """(section title, text) for each topic of the language reference."""
    from pydoc_data.topics import topics
    out = []
    for key in sorted(topics):
        text = topics[key]
        title = text.strip().splitlines()[0].strip() if text.strip() else key
        out.append((title, text))
    return out


_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages",
              "ensurepip", "pydoc_data", "__pycache__", "venv", "tkinter"}


def _stdlib_docstrings(max_chars: int = MAX_DOCSTRING_CHARS) -> list[tuple[str, str]]:
    """(title, docstring) for module/class/function docstrings of the standard library, parsed
    (never imported); the title names the top-level module, e.g. 'The "json" module'."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS for p in rel[:-1]) or rel[-1].startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) >= 80:
                    docs.append((f'The "{rel[0].removesuffix(".py")}" module', d))
                    total += len(d)
        if total >= max_chars:
            break
    return docs


@lru_cache(maxsize=1)
def _paragraphs() -> tuple[dict[str, str], ...]:
    """Every paragraph of the corpus, in a fixed order: reference topics, then docstrings.
    Parsing the standard library takes a while, so the result is cached on disk (git-ignored)."""
    path = mio.cache_dir("corpus") / f"{corpus_version()}.jsonl"
    if path.exists():
        return tuple(_read_jsonl(path))
    paras: list[dict[str, str]] = []
    for title, text in _pydoc_topics():
        for p in re.split(r"\n\s*\n", text):
            if p.strip() and not set(p.strip()) <= set("*=-"):
                paras.append({"source": "reference", "title": title, "text": p.strip("\n")})
    for title, d in _stdlib_docstrings():
        for p in re.split(r"\n\s*\n", d):
            if p.strip():
                paras.append({"source": "docstring", "title": title, "text": p.strip("\n")})
    _write_jsonl(path, paras)
    return tuple(paras)


@lru_cache(maxsize=4)
def corpus(seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """The text corpus split by paragraph: {"pretrain", "calibration", "heldout"} lists of
    {"source", "title", "text"} paragraphs. Deterministic for a seed and a Python version."""
    paras = _paragraphs()
    rng = np.random.default_rng([seed, 1])
    u = rng.random(len(paras))
    held = u < HELDOUT_FRACTION
    calib = (u >= HELDOUT_FRACTION) & (u < HELDOUT_FRACTION + CALIBRATION_FRACTION)
    return {
        "pretrain": [p for p, h, c in zip(paras, held, calib) if not h and not c],
        "calibration": [p for p, c in zip(paras, calib) if c],
        "heldout": [p for p, h in zip(paras, held) if h],
    }


def corpus_version() -> str:
    """What the corpus depends on besides the seed (the stdlib text changes with Python)."""
    return f"py{platform.python_version()}-data{CORPUS_VERSION}"


_WORD = re.compile(r"^[A-Za-z][a-z]*[,;:]?$")


def _prose_sentences(paragraph: str) -> list[str]:
    """Plain English sentences of a paragraph (no code, grammar or tables)."""
    lines = paragraph.splitlines()
    if any(ln.startswith(("   ", "\t", ">>>", "...")) or "::=" in ln or ln.strip().startswith(("*", "+", "|"))
           for ln in lines):
        return []
    text = " ".join(ln.strip() for ln in lines)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        words = s.split()
        if not (7 <= len(words) <= 28) or not s.endswith("."):
            continue
        core = words[:-1] + [words[-1].rstrip(".")]
        if sum(bool(_WORD.match(w)) for w in core) < 0.85 * len(core):
            continue
        out.append(" ".join(words))
    return out


@lru_cache(maxsize=16)
def sentences(seed: int, split: str, source: str | None = None) -> list[dict[str, Any]]:
    """Prose sentences of a corpus split (each text once), with paragraph index and title.
    Sentences of other splits never repeat a pretraining sentence (docstrings repeat)."""
    out, seen = [], set()
    if split != "pretrain":
        seen = {s["text"] for s in sentences(seed, "pretrain")}
    for i, p in enumerate(corpus(seed)[split]):
        if source and p["source"] != source:
            continue
        for s in _prose_sentences(p["text"]):
            if s in seen:
                continue
            seen.add(s)
            out.append({"text": s, "para": i, "title": p["title"], "source": p["source"]})
    return out


# --------------------------------------------------------------------------- generators
def _ex(task: str, split: str, i: int, query: str, choices: list[str], label: int) -> dict[str, Any]:
    return {"id": f"{task}-{split}-{i}", "query": query, "choices": list(choices), "label": int(label)}


def _place_answer(rng, correct: str, distractors: list[str], n: int) -> tuple[list[str], int]:
    """Put the correct choice at a random position among n-1 distinct distractors."""
    pool = [d for d in dict.fromkeys(distractors) if d != correct]
    if len(pool) < n - 1:
        raise ValueError(f"distractors: need {n - 1} distinct, got {len(pool)}")
    picks = [pool[k] for k in rng.choice(len(pool), n - 1, replace=False)]
    label = int(rng.integers(n))
    picks.insert(label, correct)
    return picks, label


# Why the cola/mrpc/obqa stand-ins look the way they do. The embedded model (notebook 00) has no
# in-context copying or matching ability (a repeated random token sequence is no easier the second
# time), and the notebook-00 sanity check gives each task about 20 of 106 mixed full fine-tuning steps.
# In that budget it learns a cue a few tokens before the answer (cola), a salient word in a short
# text (mrpc) or copying the one number in the prompt (obqa); it does not learn to compare two
# sentences, to spot a shuffled span anywhere in a sentence, or to bind a question to one of two
# facts (the earlier versions of these three tasks stayed at chance after tuning).
_CUT_AFTER = {"the", "a", "an", "of", "to"}
COLA_MAX_WORDS = 16
COLA_QUESTION = "Question: Is this a well-formed English sentence?\nSentence: {s}.\nAnswer:"


def _cola(rng, sents, n_total):
    """A short sentence as written (yes) or cut off right after "the", "a", "an", "of" or "to",
    leaving it unfinished ("Return the low median of."; no). The sentence ends the prompt, next to
    the answer."""
    rows, seen = [], set()
    for s in sents:
        if len(rows) == n_total:
            break
        words = s["text"].rstrip(".").split()
        cuts = [i for i in range(2, len(words) - 1) if words[i].lower() in _CUT_AFTER]
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


_REWORD = {"the": "this", "a": "one", "is": "is", "can": "may", "must": "has to", "returns": "gives back",
           "object": "value", "objects": "values", "function": "callable", "used": "employed",
           "value": "result", "called": "invoked", "list": "sequence", "string": "text", "if": "when",
           "also": "as well", "are": "are", "method": "routine", "argument": "parameter",
           "arguments": "parameters", "not": "not", "when": "whenever", "number": "count"}


# every negation adds the one word "not" ("can not", "does not return"): a single cue word; with
# "cannot"/"never" mixed in, the check of notebook 00 learned mrpc less reliably
_NEGATE = {"is": "is not", "are": "are not", "was": "was not", "were": "were not", "can": "can not",
           "could": "could not", "must": "must not", "should": "should not", "will": "will not",
           "would": "would not", "may": "may not", "might": "might not", "returns": "does not return"}
_NEGATIONS = {"not", "no", "never", "cannot", "nor", "none", "nothing", "neither"}
MRPC_MAX_WORDS = 14


def _mrpc(rng, sents, n_total):
    """A short sentence and its light rewording (yes), or the same rewording with one verb negated
    (no: it says the opposite). Sentences that already hold a negation are not used."""
    rows, seen = [], set()
    for s in sents:
        if len(rows) == n_total:
            break
        words = s["text"].rstrip(".").split()
        verbs = [i for i, w in enumerate(words) if w in _NEGATE]
        if len(words) > MRPC_MAX_WORDS or not verbs or any(w.lower().strip(",;:") in _NEGATIONS for w in words):
            continue
        same = bool(rng.integers(2))
        b = [_REWORD.get(w, w) if rng.random() < 0.6 else w for w in words]
        if not same:
            j = verbs[int(rng.integers(len(verbs)))]
            b[j] = _NEGATE[words[j]]
        q = (f"Question: Do both sentences say the same thing?\nSentence 1: {s['text']}\n"
             f"Sentence 2: {' '.join(b)}.\nAnswer:")
        if q not in seen:
            seen.add(q)
            rows.append((q, ["no", "yes"], int(same)))
    return rows


_PLACES = ["kitchen", "garden", "library", "garage", "office"]
_SUFFIX = {"kitchen": ["ol", "ump"], "garden": ["ish", "ern"], "library": ["ax", "ope"],
           "garage": ["ink", "ast"], "office": ["ulo", "eft"]}
_ONSETS = ["bl", "gr", "tr", "sn", "fl", "pl", "dr", "kr", "st", "sp", "m", "n", "v", "z", "w", "h", "j", "br"]
_VOWELS = ["a", "e", "i", "o", "u", "oo", "ai"]
_CSQA_TEMPLATES = [
    "Where would you usually find a {o}?", "Where is a {o} normally kept?",
    "If you are looking for a {o}, where should you look first?", "Which room does a {o} belong in?",
    "Someone needs a {o}. Where do they go?", "A {o} is most often stored where?",
    "Where does a {o} live when it is not in use?", "In which place would a {o} be found?",
]


def _nonce_objects(rng, n: int) -> list[tuple[str, str]]:
    """n made-up object names; the place is a hidden function of the name's suffix."""
    seen, out = set(), []
    while len(out) < n:
        place = _PLACES[len(out) % len(_PLACES)]
        stem = _ONSETS[int(rng.integers(len(_ONSETS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
        name = stem + _SUFFIX[place][int(rng.integers(2))]
        if name not in seen:
            seen.add(name)
            out.append((name, place))
    return out


def _csqa(rng, n_total):
    objs = _nonce_objects(rng, max(60, n_total // 6))
    rows = []
    for i in range(n_total):
        o, place = objs[int(rng.integers(len(objs)))]
        q = _CSQA_TEMPLATES[int(rng.integers(len(_CSQA_TEMPLATES)))].format(o=o) + "\nAnswer:"
        choices, label = _place_answer(rng, place, _PLACES, 5)
        rows.append((q, choices, label))
    return rows


def _obqa(rng, n_total):
    """Two facts in random order: the asked object's box number, and where another object is; the
    answer is read off the fact (4 digits, the distractors never in the prompt)."""
    objs = [o for o, _ in _nonce_objects(rng, 200)]
    digits = [str(d) for d in range(10)]
    rows = []
    for i in range(n_total):
        o1, o2 = (objs[k] for k in rng.choice(len(objs), 2, replace=False))
        box = digits[int(rng.integers(len(digits)))]
        place = _PLACES[int(rng.integers(len(_PLACES)))]
        facts = [f"The {o1} is in box {box}.", f"The {o2} is in the {place}."]
        if rng.integers(2):
            facts.reverse()
        q = f"Fact: {facts[0]} Fact: {facts[1]}\nQuestion: Which box holds the {o1}?\nAnswer: box"
        choices, label = _place_answer(rng, box, digits, 4)
        rows.append((q, choices, label))
    return rows


def _sciq(rng, sents, n_total):
    titles = {src: sorted({s["title"] for s in sents if s["source"] == src}) for src in ("reference", "docstring")}
    rows = []
    for s in sents[:n_total]:
        choices, label = _place_answer(rng, s["title"], titles[s["source"]], 4)
        q = f"Passage: {s['text']}\nQuestion: Which part of the Python documentation is this from?\nAnswer:"
        rows.append((q, choices, label))
    return rows


_STOP = {"the", "a", "an", "of", "to", "is", "in", "and", "or", "be", "it", "for", "as", "by", "on",
         "that", "this", "are", "with", "if", "not", "can", "at", "its", "from"}


def _content_words(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if i >= 3 and w.isalpha() and w.lower() not in _STOP and len(w) > 3]


_WINO_SKIP = {"when", "which", "will", "then", "than", "there", "their", "they", "have", "been", "into",
              "such", "only", "also", "that", "this", "with", "from"}


def _by_paragraph(sents) -> dict[int, list[int]]:
    """paragraph id → indices of its sentences in `sents`, in order."""
    by_para: dict[int, list[int]] = {}
    for k, s in enumerate(sents):
        by_para.setdefault(s["para"], []).append(k)
    return by_para


def _winogrande(rng, sents, n_total):
    """Referent choice, as WinoGrande: a context sentence (another sentence of the same paragraph,
    the preceding one where there is one), then a sentence up to a content word; the options are
    that word and another content word mentioned earlier (in the context or the sentence so far),
    each followed by the rest of the sentence. The blank is, where the sentence has one, a word
    mentioned before, so that both options are earlier mentions. The context sentence also keeps
    these items from repeating a hellaswag item's text with another context/continuation split
    (lm-eval pools such requests across tasks and then scores the shorter continuation wrongly)."""
    by_para = _by_paragraph(sents)
    eligible = [k for k, s in enumerate(sents) if len(by_para[s["para"]]) > 1]
    order = [eligible[int(i)] for i in rng.permutation(len(eligible))]
    rows, k = [], 0
    while len(rows) < n_total:
        if not order or k >= 20 * len(order):
            raise ValueError(f"data: winogrande yields only {len(rows)} items from the held-out text, asked {n_total}")
        kk = order[k % len(order)]
        k += 1
        idx = by_para[sents[kk]["para"]]
        pos = idx.index(kk)
        ctx = sents[idx[pos - 1] if pos > 0 else idx[pos + 1]]["text"]
        words, ctx_words = sents[kk]["text"].rstrip(".").split(), ctx.rstrip(".").split()
        cands = []
        for j in _content_words(words):
            earlier = [w for w in dict.fromkeys(ctx_words + words[:j]) if w.isalpha() and len(w) > 3
                       and w != words[j] and w.lower() not in _STOP and w.lower() not in _WINO_SKIP]
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
        choices, label = _place_answer(rng, words[j] + rest, [alt + rest], 2)
        rows.append((ctx + " " + " ".join(words[:j]), choices, label))
    return rows


def _zeroshot(task: str, rng, sents, n_total):
    """The zero-shot stand-ins, from held-out sentences (see the module docstring)."""
    if task == "winogrande":
        return _winogrande(rng, sents, n_total)
    vocab = sorted({w for s in sents for w in s["text"].rstrip(".").split() if w.isalpha() and len(w) > 3})
    by_para = _by_paragraph(sents)
    order = rng.permutation(len(sents))
    rows, k = [], 0
    while len(rows) < n_total:
        s = sents[int(order[k % len(order)])]
        k += 1
        words = s["text"].rstrip(".").split()
        cw = _content_words(words)
        if task in ("hellaswag",):
            # the real ending vs endings of other held-out sentences with their words shuffled:
            # a small LM cannot judge topical fit (tried: at chance) but can judge fluency
            cut = int(len(words) * 0.6)
            if len(words) - cut < 3:
                continue
            ending = " ".join(words[cut:]) + "."
            others = []
            while len(others) < 3:
                o = sents[int(rng.integers(len(sents)))]["text"].rstrip(".").split()
                oe = o[int(len(o) * 0.6):]
                oe = " ".join(oe[j] for j in rng.permutation(len(oe))) + "."
                if oe != ending and oe not in others:
                    others.append(oe)
            choices, label = _place_answer(rng, ending, others, 4)
            rows.append((" ".join(words[:cut]), choices, label))
        elif task in ("arc_easy", "arc_challenge", "openbookqa"):
            if not cw:
                continue
            j = cw[int(rng.integers(len(cw)))]
            target = words[j]
            if task == "arc_easy":
                pool = [vocab[int(t)] for t in rng.choice(len(vocab), 12, replace=False)]
            else:
                para_words = {w for t in by_para[s["para"]] for w in sents[t]["text"].rstrip(".").split()}
                pool = sorted(w for w in para_words | set(words) if w.isalpha() and len(w) > 3 and w != target)
                if len(pool) < 3:
                    continue
            prefix = " ".join(words[:j])
            choices, label = _place_answer(rng, target, pool, 4)
            if task == "openbookqa":
                prev = [sents[t]["text"] for t in by_para[s["para"]] if sents[t]["text"] != s["text"]]
                if not prev:
                    continue
                prefix = prev[0] + " " + prefix
            rows.append((prefix, choices, label))
        elif task == "boolq":
            n = min(len(words), int(rng.integers(6, 10)))
            claim = [w.lower() if i == 0 else w for i, w in enumerate(words[:n])]
            idx = [i for i in range(1, n) if words[i].isalpha()]
            if not idx:
                continue
            bad = list(claim)
            bad[idx[int(rng.integers(len(idx)))]] = vocab[int(rng.integers(len(vocab)))]
            if bad == claim:
                continue
            q = f"{s['text']}\nQuestion: is it true that"
            choices, label = _place_answer(rng, " ".join(claim) + "?", [" ".join(bad) + "?"], 2)
            rows.append((q, choices, label))
        elif task == "rte":
            # entailed: a span of the premise; not entailed: the same span with two words
            # replaced by words of another sentence (a span of another sentence: at chance)
            n = int(rng.integers(5, 8))
            if len(words) < n + 1:
                continue
            a = int(rng.integers(0, len(words) - n + 1))
            span = words[a:a + n]
            o = [w for w in sents[int(rng.integers(len(sents)))]["text"].rstrip(".").split() if w.isalpha()]
            if len(o) < 2:
                continue
            bad = list(span)
            for j, w in zip(rng.choice(n, 2, replace=False), rng.choice(len(o), 2, replace=False)):
                bad[int(j)] = o[int(w)]
            if bad == span:
                continue
            q = f"{s['text']}\nIn other words,"
            choices, label = _place_answer(rng, " ".join(span) + ".", [" ".join(bad) + "."], 2)
            rows.append((q, choices, label))
        else:
            raise ValueError(f"task: unknown generated zero-shot task '{task}' (known: {GENERATED_ZEROSHOT})")
    return rows


def _split_sizes(p) -> dict[str, int]:
    return {"train": p.data.n_train, "validation": p.data.n_validation, "test": p.data.n_test}


def _generate_finetune(task: str, p) -> dict[str, list[dict]]:
    """train/validation/test for a fine-tune stand-in; splits never share a sentence/question."""
    sizes = _split_sizes(p)
    n_total = sum(sizes.values())
    rng = np.random.default_rng([p.data.seed, 2, GENERATED_FINETUNE.index(task)])
    if task in ("cola", "mrpc"):
        pool = sentences(p.data.seed, "pretrain")
        sents = [pool[k] for k in rng.permutation(len(pool))]
        rows = _cola(rng, sents, n_total) if task == "cola" else _mrpc(rng, sents, n_total)
    elif task == "sciq":
        # reference sentences first (section titles), then module docstrings (module names)
        pool = sentences(p.data.seed, "pretrain")
        ref = [s for s in pool if s["source"] == "reference"]
        doc = [s for s in pool if s["source"] == "docstring"]
        sents = [ref[k] for k in rng.permutation(len(ref))] + [doc[k] for k in rng.permutation(len(doc))]
        sents = [sents[k] for k in rng.permutation(min(len(sents), n_total))]
        rows = _sciq(rng, sents, n_total)
    elif task == "csqa":
        rows = _csqa(rng, n_total * 2)
    elif task == "obqa":
        rows = _obqa(rng, n_total * 2)
    else:
        raise ValueError(f"task: unknown generated fine-tune task '{task}' (known: {GENERATED_FINETUNE})")
    # splits disjoint by query text (generated worlds can repeat a question: keep first use)
    uniq = list({q: (q, c, l) for q, c, l in reversed(rows)}.values())[::-1]
    if len(uniq) < n_total:
        raise ValueError(f"data: task '{task}' yields only {len(uniq)} distinct examples, "
                         f"n_train+n_validation+n_test = {n_total}")
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [_ex(task, split, i, *uniq[start + i]) for i in range(n)]
        start += n
    return out


def _generate_zeroshot(task: str, p) -> list[dict]:
    rng = np.random.default_rng([p.data.seed, 3, GENERATED_ZEROSHOT.index(task)])
    sents = sentences(p.data.seed, "heldout")
    return [_ex(task, "test", i, *r) for i, r in enumerate(_zeroshot(task, rng, sents, p.data.n_test))]


# --------------------------------------------------------------------------- hub adapters (7B path)
def _hub_cola(d):
    return {"query": f"Sentence: {d['sentence']}\nQuestion: Is this a well-formed English sentence?\nAnswer:",
            "choices": ["no", "yes"], "label": int(d["label"])}


def _hub_mrpc(d):
    return {"query": f"Sentence 1: {d['sentence1']}\nSentence 2: {d['sentence2']}\n"
                     "Question: Do both sentences say the same thing?\nAnswer:",
            "choices": ["no", "yes"], "label": int(d["label"])}


def _hub_csqa(d):
    labels = list(d["choices"]["label"])
    return {"query": f"Question: {d['question']}\nAnswer:", "choices": list(d["choices"]["text"]),
            "label": labels.index(d["answerKey"])}


def _hub_obqa(d):
    labels = list(d["choices"]["label"])
    return {"query": f"Question: {d['question_stem']}\nAnswer:", "choices": list(d["choices"]["text"]),
            "label": labels.index(d["answerKey"].strip())}


def _hub_scienceqa(d):
    if d.get("image") is not None:            # text-only variant: image questions are dropped
        return None
    ctx = f"Context: {d['hint']}\n" if d.get("hint") else ""
    return {"query": f"{ctx}Question: {d['question']}\nAnswer:", "choices": list(d["choices"]),
            "label": int(d["answer"])}


# params task name -> (hub path, hub config, {our split: hub split}, adapter). Untested offline.
HUB_ADAPTERS = {
    "cola": ("nyu-mll/glue", "cola", {"train": "train", "validation": "validation", "test": "validation"}, _hub_cola),
    "mrpc": ("nyu-mll/glue", "mrpc", {"train": "train", "validation": "validation", "test": "test"}, _hub_mrpc),
    "commonsense_qa": ("tau/commonsense_qa", None, {"train": "train", "validation": "validation",
                                                    "test": "validation"}, _hub_csqa),
    "openbookqa": ("allenai/openbookqa", "main", {"train": "train", "validation": "validation", "test": "test"},
                   _hub_obqa),
    "scienceqa": ("derek-thomas/ScienceQA", None, {"train": "train", "validation": "validation", "test": "test"},
                  _hub_scienceqa),
}
# glue's cola test labels are hidden (-1), so its test split is glue's validation split (as the
# paper reports on it) and validation is carved from train below; commonsense_qa likewise.


def _load_hub(task: str, split: str, p) -> list[dict]:
    if task not in HUB_ADAPTERS:
        raise ValueError(f"task: no hub adapter for '{task}' (known: {sorted(HUB_ADAPTERS)})")
    import datasets
    path, config, splits, adapt = HUB_ADAPTERS[task]
    hub_split = splits[split]
    ds = datasets.load_dataset(path, config, split=hub_split, revision=None)
    rows = [r for r in (adapt(d) for d in ds) if r is not None]
    if splits["test"] == "validation" and split in ("train", "validation"):
        # validation carved (seeded) from train when the hub validation split serves as test
        rows = [r for r in (adapt(d) for d in datasets.load_dataset(path, config, split="train")) if r is not None]
        perm = np.random.default_rng([p.data.seed, 4]).permutation(len(rows))
        n_val = min(p.data.n_validation, len(rows) // 10)
        keep = perm[:n_val] if split == "validation" else perm[n_val:]
        rows = [rows[k] for k in sorted(keep)]
    limit = _split_sizes(p)[split]
    return [{"id": f"{task}-{split}-{i}", **r} for i, r in enumerate(rows[:limit] if split != "train" else rows)]


# --------------------------------------------------------------------------- public API
def data_key(params) -> str:
    d = params.data
    return mio.cache_key({"seed": d.seed, "finetune": d.finetune_tasks, "zeroshot": d.zeroshot_tasks,
                          "n": [d.n_train, d.n_validation, d.n_test, d.n_calibration, d.n_heldout,
                                d.calibration_seq_len], "source": d.source, "corpus": corpus_version(),
                          "generators": DATA_VERSION})


def _check_task(params, task: str, split: str) -> str:
    if task in params.data.finetune_tasks:
        if split not in FINETUNE_SPLITS:
            raise ValueError(f"split: must be one of {FINETUNE_SPLITS} for fine-tune task '{task}', got {split!r}")
        return "finetune"
    if task in params.data.zeroshot_tasks:
        if split != "test":
            raise ValueError(f"split: zero-shot task '{task}' has only the 'test' split, got {split!r}")
        return "zeroshot"
    raise ValueError(f"task: '{task}' is in neither data.finetune_tasks {params.data.finetune_tasks} "
                     f"nor data.zeroshot_tasks {params.data.zeroshot_tasks} of {params.source}")


def ensure(params) -> Path:
    """Generate (once) every task split and text split for these data params; return the root.

    Layout: <root>/<kind>/<task>/<split>.jsonl, <root>/texts/<split>.jsonl,
    <root>/lm_eval_tasks/*.yaml (lm-eval configs pointing at the JSONL, see evaluation.py),
    <root>/DONE (written last: a root without it is rebuilt)."""
    root = mio.cache_dir("data", data_key(params))
    if (root / "DONE").exists():
        return root
    from mdlcap import evaluation
    import fcntl
    with open(mio.cache_dir("data") / f".lock-{root.name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "DONE").exists():
            return root
        if params.data.source == "generated":
            for task in params.data.finetune_tasks:
                for split, rows in _generate_finetune(task, params).items():
                    _write_jsonl(root / "finetune" / task / f"{split}.jsonl", rows)
            for task in params.data.zeroshot_tasks:
                _write_jsonl(root / "zeroshot" / task / "test.jsonl", _generate_zeroshot(task, params))
        else:
            for task in params.data.finetune_tasks:
                for split in FINETUNE_SPLITS:
                    _write_jsonl(root / "finetune" / task / f"{split}.jsonl", _load_hub(task, split, params))
        for split in TEXT_SPLITS:
            _write_jsonl(root / "texts" / f"{split}.jsonl", [{"text": t} for t in _make_texts(params, split)])
        evaluation.write_task_yamls(params, root)
        mio.atomic_write_text(root / "DONE", "ok\n")
    return root


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    mio.atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def task_path(params, task: str, split: str) -> Path:
    kind = _check_task(params, task, split)
    return ensure(params) / kind / task / f"{split}.jsonl"


def load_task(params, task: str, split: str) -> list[dict[str, Any]]:
    """Examples of a task split: [{"id", "query", "choices", "label"}, ...].

    Fine-tune tasks (data.finetune_tasks) have train/validation/test; zero-shot tasks
    (data.zeroshot_tasks) have test only. A name in both lists resolves to the fine-tune task.
    Under `data.source: hub` the zero-shot tasks are lm-eval's own (no local file)."""
    kind = _check_task(params, task, split)
    if kind == "zeroshot" and params.data.source == "hub":
        raise ValueError(f"task: zero-shot task '{task}' is lm-eval's built-in under data.source=hub; "
                         "evaluate it with mdlcap.evaluation.lm_eval_accuracy")
    return _read_jsonl(task_path(params, task, split))


def _make_texts(params, split: str) -> list[str]:
    """Passages of roughly calibration_seq_len tokens or more (about 4 characters a token)."""
    if params.data.source == "hub" and split == "calibration":
        return _c4_texts(params)
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


def _c4_texts(params) -> list[str]:
    """C4 calibration passages for the 7B runs (as Wanda/SparseGPT), untested offline."""
    import datasets
    ds = datasets.load_dataset("allenai/c4", data_files="en/c4-train.00000-of-01024.json.gz", split="train")
    rng = np.random.default_rng([params.data.seed, 6])
    out = []
    for k in rng.permutation(len(ds)):
        t = ds[int(k)]["text"]
        if len(t) >= 5 * params.data.calibration_seq_len:
            out.append(t)
        if len(out) == params.data.n_calibration:
            break
    return out


def texts(params, split: str) -> list[str]:
    """Text passages: "calibration" (C4 stand-in, for pruning) or "heldout" (perplexity)."""
    if split not in TEXT_SPLITS:
        raise ValueError(f"split: must be one of {TEXT_SPLITS}, got {split!r}")
    return [r["text"] for r in _read_jsonl(ensure(params) / "texts" / f"{split}.jsonl")]


def lm_batches(tokenizer, texts: list[str], seq_len: int, batch_size: int) -> list[dict]:
    """Next-token batches: the texts joined by EOS, cut into seq_len windows (last partial dropped)."""
    import torch
    if seq_len < 2:
        raise ValueError(f"seq_len: must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"texts: {len(stream)} tokens in all, fewer than seq_len={seq_len}")
    ids = torch.tensor(stream[: n * seq_len]).view(n, seq_len)
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size]),
             "labels": ids[i:i + batch_size].clone()} for i in range(0, n, batch_size)]


def encode_example(tokenizer, example: dict, max_len: int = 128) -> tuple[list[int], list[int]]:
    """Token ids of query + " " + gold answer, and labels (-100 except on the answer), split
    between context and continuation the way lm-eval scores a choice."""
    ctx = tokenizer(example["query"])["input_ids"]
    ans = tokenizer(" " + example["choices"][example["label"]], add_special_tokens=False)["input_ids"]
    ids = (ctx + ans)[-max_len:]
    labels = ([-100] * len(ctx) + ans)[-max_len:]
    return ids, labels


def task_batches(tokenizer, examples: list[dict], batch_size: int, max_len: int = 128) -> list[dict]:
    """Batches for `model(**batch)` whose `.loss` is the LM loss on the gold answer tokens only
    (labels -100 on the query and the padding). Right-padded; truncated from the left."""
    import torch
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = []
    for i in range(0, len(examples), batch_size):
        enc = [encode_example(tokenizer, ex, max_len) for ex in examples[i:i + batch_size]]
        L = max(len(ids) for ids, _ in enc)
        ids = torch.full((len(enc), L), pad, dtype=torch.long)
        lab = torch.full((len(enc), L), -100, dtype=torch.long)
        att = torch.zeros((len(enc), L), dtype=torch.long)
        for r, (x, y) in enumerate(enc):
            ids[r, :len(x)] = torch.tensor(x)
            lab[r, :len(y)] = torch.tensor(y)
            att[r, :len(x)] = 1
        out.append({"input_ids": ids, "attention_mask": att, "labels": lab})
    return out
