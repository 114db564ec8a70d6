"""The one cache: every generated model, data set and expensive result goes through here.

Rules, the same for every kind of entry:
  root       $MDLCAP_CACHE, else <repository>/.cache/mdlcap (git-ignored); one folder per namespace.
  key        `key(namespace, spec)`: a short hash of the spec (what changes the result) together
             with the namespace's code version from `CODE_VERSIONS`, the single table of versions.
             Bump a namespace's version when a code change alters what its entries hold.
  atomicity  a file entry is written to a temp file and renamed into place; a folder entry is
             built in a temp folder (named with the builder's pid) and renamed when complete, under
             a per-key file lock, so concurrent builders wait and an interrupted build leaves
             nothing that looks finished. Temp folders of dead builders are removed.

    cached("scores", spec, compute)              -> compute()'s JSON value, computed once
    cached("precision", spec, compute, load=..., dump=..., suffix=".safetensors")
    cached_dir("models", spec, build)            -> Path of a folder that build(tmp_path) filled

Why not a library (joblib.Memory, diskcache): their keys hash function code and arguments,
so a refactor invalidates everything while a data-generator change invalidates nothing;
the key here is what the study says changes a result, and the version table says it in one place.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mdlcap import files

T = TypeVar("T")

# One version per namespace: the code that fills it. Bump on a change of what an entry holds.
CODE_VERSIONS = {
    "corpus": "5",       # the pretraining corpus and its split (the default model's key follows); 5: + stdlib code
    "models": "2",       # pretraining recipe of the embedded default model
    "data": "7",      # the generated task splits and text splits; 7: csqa's suffix rule has exceptions
    "scores": "3",       # per-layer gains and influence scores (2: LayerIF on a LoRA, DataInf per tensor, no offset;
                         # 3: diag_fisher/kfac/ekfac = true Fisher of the mean loss over loss tokens)
    "finetune": "4",     # one fine-tuning cell (task, allocation, seed); 2: per-item correctness and per-step losses;
                         # 3: the held-out loss along training; 4: its plateau read by late_improvement
    "pruning": "2",      # one pruning configuration's evaluation; 2: per-window held-out losses, per-item zero-shot
    "precision": "3",    # CAQ: trained weights and per-(model, seed) study tables
    "online": "1",       # notebook 08: one fine-tuning record per (task, rank method, seed) with its rank trajectory
}


def root() -> Path:
    """The cache root: $MDLCAP_CACHE, else <repository>/.cache/mdlcap."""
    return Path(os.environ.get("MDLCAP_CACHE", files.project_root() / ".cache" / "mdlcap"))


def folder(namespace: str) -> Path:
    """The namespace's folder under the root (created)."""
    d = root() / _check_namespace(namespace)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _check_namespace(namespace: str) -> str:
    if namespace not in CODE_VERSIONS:
        raise ValueError(f"namespace: must be one of {sorted(CODE_VERSIONS)}, got {namespace!r}")
    return namespace


def key(namespace: str, spec: Mapping[str, Any]) -> str:
    """Short stable hash of `spec` and the namespace's code version."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"spec: must be a mapping of what changes the result, got {type(spec).__name__}")
    return files.cache_key({"namespace": _check_namespace(namespace), "code": CODE_VERSIONS[namespace],
                            "spec": dict(spec)})


def path(namespace: str, spec: Mapping[str, Any], suffix: str = ".json", prefix: str = "") -> Path:
    """Where the file entry of (namespace, spec) lives."""
    return folder(namespace) / f"{prefix}{key(namespace, spec)}{suffix}"


def _read_json(p: Path) -> Any:
    return files.read_json(p)["value"]


def cached(namespace: str, spec: Mapping[str, Any], compute: Callable[[], T], *,
           load: Callable[[Path], T] | None = None, dump: Callable[[Path, T], Any] | None = None,
           suffix: str = ".json", prefix: str = "") -> T:
    """compute() once per (namespace, spec): later calls read the entry back.

    By default the value must be JSON-serialisable and is stored with its spec beside it. With
    `load`/`dump` (both or neither) any format: `dump(tmp_path, value)` writes a file that is then
    renamed into place atomically, `load(path)` reads it.
    """
    if (load is None) != (dump is None):
        raise ValueError("load, dump: give both (a custom file format) or neither (JSON)")
    p = path(namespace, spec, suffix, prefix)
    if p.exists():
        return _read_json(p) if load is None else load(p)
    value = compute()
    if dump is None:
        files.atomic_write_json(p, {"namespace": namespace, "spec": dict(spec), "value": value})
    else:
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            dump(tmp, value)
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


DONE = ".complete"


def cached_dir(namespace: str, spec: Mapping[str, Any], build: Callable[[Path], Any], *,
               force: bool = False) -> Path:
    """A folder entry: build(tmp) fills a temp folder once per (namespace, spec), which is then
    renamed into place. Builders of one key wait on its lock; `force` rebuilds."""
    final = folder(namespace) / key(namespace, spec)
    if (final / DONE).exists() and not force:
        return final
    with open(final.parent / f".lock-{final.name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / DONE).exists() and not force:
            return final
        for stale in final.parent.glob(f".tmp-{final.name}-*"):
            pid = stale.name.rsplit("-", 1)[1]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            files.atomic_write_json(tmp / DONE, {"namespace": namespace, "spec": dict(spec)})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
