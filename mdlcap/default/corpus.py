"""The pretraining corpus of the embedded default: text that ships with every Python install.

Three sources, none downloaded nor committed: the language reference (`pydoc_data.topics`,
~465 KB), the docstrings of the standard library, and the standard library's own source code
with its docstrings removed (both read with `ast`, never imported). The English part (reference
and docstrings) is cut into paragraphs, in a fixed order, and split by paragraph, from
`data.seed`, into a pretraining, a calibration and a held-out part. The code (one paragraph per
top-level function or class, ~4.7 M characters) goes to the pretraining part only: it gives the
model four times the tokens to learn from without repeating the English, while the calibration
text, the held-out text and the tasks (built from held-out prose) stay English the pretraining
never saw. Docstrings are cut out of the code, so no held-out sentence reaches the pretraining
through it.

    corpus(seed)                 {"pretrain", "calibration", "heldout"}: lists of paragraphs
    sentences(seed, split)       the plain-prose sentences of a split (the task generators' input)
    corpus_version()             what the corpus depends on besides the seed (the model key names it)

Parsing the standard library takes a while, so the paragraphs are kept in the one cache
(namespace "corpus", keyed by the Python version: the stdlib text changes with it).
"""
from __future__ import annotations

import ast
import platform
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mdlcap import cache
from mdlcap.default.jsonl import read_jsonl, write_jsonl

HELDOUT_FRACTION = 0.12
CALIBRATION_FRACTION = 0.05
MAX_DOCSTRING_CHARS = 1_500_000


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


def _stdlib_trees():
    """(top-level module name, parsed tree) of every standard-library source file the corpus
    reads (`_SKIP_DIRS` and test files left out), in a fixed order; files that do not parse are
    skipped. Parsed with `ast`, never imported."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS for p in rel[:-1]) or rel[-1].startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        yield rel[0].removesuffix(".py"), tree


def _stdlib_docstrings(max_chars: int = MAX_DOCSTRING_CHARS) -> list[tuple[str, str]]:
    """(title, docstring) for module/class/function docstrings of the standard library; the
    title names the top-level module, e.g. 'The "json" module'."""
    docs, total = [], 0
    for module, tree in _stdlib_trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) >= 80:
                    docs.append((f'The "{module}" module', d))
                    total += len(d)
        if total >= max_chars:
            break
    return docs


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]


def _stdlib_code() -> list[dict[str, str]]:
    """One paragraph per top-level function or class of the standard library's sources (the
    files `_stdlib_trees` reads), docstrings removed, as `ast.unparse` writes it (comments are
    dropped with them)."""
    out = []
    for module, tree in _stdlib_trees():
        _strip_docstrings(tree)
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                try:
                    text = ast.unparse(node)
                except (ValueError, RecursionError):
                    continue
                out.append({"source": "code", "title": f'The "{module}" module', "text": text})
    return out


@lru_cache(maxsize=1)
def code_paragraphs() -> tuple[dict[str, str], ...]:
    """The code part of the pretraining text, in a fixed order (cached like `paragraphs`)."""
    return tuple(cache.cached("corpus", {"python": platform.python_version(), "part": "code"}, _stdlib_code,
                              load=read_jsonl, dump=write_jsonl, suffix=".jsonl"))


def _parse_paragraphs() -> list[dict[str, str]]:
    paras: list[dict[str, str]] = []
    for title, text in _pydoc_topics():
        for p in re.split(r"\n\s*\n", text):
            if p.strip() and not set(p.strip()) <= set("*=-"):
                paras.append({"source": "reference", "title": title, "text": p.strip("\n")})
    for title, d in _stdlib_docstrings():
        for p in re.split(r"\n\s*\n", d):
            if p.strip():
                paras.append({"source": "docstring", "title": title, "text": p.strip("\n")})
    return paras


@lru_cache(maxsize=1)
def paragraphs() -> tuple[dict[str, str], ...]:
    """Every paragraph of the corpus, in a fixed order: reference topics, then docstrings."""
    return tuple(cache.cached("corpus", {"python": platform.python_version()}, _parse_paragraphs,
                              load=read_jsonl, dump=write_jsonl, suffix=".jsonl"))


@lru_cache(maxsize=4)
def corpus(seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """The text corpus split by paragraph: {"pretrain", "calibration", "heldout"} lists of
    {"source", "title", "text"} paragraphs (the English split by the seed; the code appended to
    "pretrain"). Deterministic for a seed and a Python version."""
    paras = paragraphs()
    rng = np.random.default_rng([seed, 1])
    u = rng.random(len(paras))
    held = u < HELDOUT_FRACTION
    calib = (u >= HELDOUT_FRACTION) & (u < HELDOUT_FRACTION + CALIBRATION_FRACTION)
    return {
        "pretrain": [p for p, h, c in zip(paras, held, calib) if not h and not c] + list(code_paragraphs()),
        "calibration": [p for p, c in zip(paras, calib) if c],
        "heldout": [p for p, h in zip(paras, held) if h],
    }


def corpus_version() -> str:
    """What the corpus depends on besides the seed: the Python version (its stdlib text) and the
    corpus code version (`cache.CODE_VERSIONS["corpus"]`)."""
    return f"py{platform.python_version()}-corpus{cache.CODE_VERSIONS['corpus']}"


_WORD = re.compile(r"^[A-Za-z][a-z]*[,;:]?$")


def prose_sentences(paragraph: str) -> list[str]:
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
        if (source and p["source"] != source) or p["source"] == "code":
            continue
        for s in prose_sentences(p["text"]):
            if s in seen:
                continue
            seen.add(s)
            out.append({"text": s, "para": i, "title": p["title"], "source": p["source"]})
    return out
