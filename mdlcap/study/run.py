"""One notebook run: its output folder, tables (CSV), figures (PNG) and manifest.

    run = mdlcap.study.run.start(params_path, "01_derivations")
    run.save_table(df, "closed_form_vs_cvxpy")      # results/<run>/01_derivations/closed_form_vs_cvxpy.csv
    run.save_figure(fig, "gamma_sweep")             # results/<run>/01_derivations/gamma_sweep.png
    run.finish()                                    # results/<run>/01_derivations/manifest.json

Every write is atomic, so an interrupted run never corrupts what an earlier run wrote.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mdlcap import files as mio
from mdlcap.study.params import Params, load

PACKAGES = ["mdlcap", "torch", "transformers", "tokenizers", "peft", "accelerate", "lm_eval",
            "datasets", "cvxpy", "numba", "numpy", "scipy", "pandas", "matplotlib", "scikit-learn", "papermill"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision(root: Path | None = None) -> dict[str, Any]:
    root = root or mio.project_root()
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"revision": rev.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                          "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch
        hw["torch_threads"] = torch.get_num_threads()
        hw["cuda"] = torch.cuda.is_available()
        if hw["cuda"]:
            hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return hw


def resolve_device(params: Params) -> str:
    if params.run.device != "auto":
        return params.run.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Run:
    params: Params
    notebook: str
    root: Path                       # results/<run>/
    dir: Path                        # results/<run>/<notebook>/
    started: str = field(default_factory=_now)
    extra: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)   # file name -> sha256, for the manifest

    def _record(self, path: Path) -> Path:
        self.outputs[path.name] = mio.file_sha256(path)
        return path

    @property
    def name(self) -> str:
        return self.params.run.name

    @property
    def smoke(self) -> bool:
        return self.params.run.smoke

    @property
    def device(self) -> str:
        return resolve_device(self.params)

    def path(self, name: str) -> Path:
        return self.dir / name

    def save_table(self, df, name: str, index: bool = False) -> Path:
        """Write a pandas DataFrame as CSV (atomic)."""
        buf = io.StringIO()
        df.to_csv(buf, index=index, float_format="%.6g")
        return self._record(mio.atomic_write_text(self.dir / f"{name}.csv", buf.getvalue()))

    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        """Write a matplotlib figure as PNG (atomic)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        return self._record(mio.atomic_write_bytes(self.dir / f"{name}.png", buf.getvalue()))

    def save_json(self, obj: Any, name: str) -> Path:
        return self._record(mio.atomic_write_json(self.dir / f"{name}.json", obj))

    def manifest(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "notebook": self.notebook,
            "params_file": self.params.source,
            "params_sha256": mio.file_sha256(self.params.source) if Path(self.params.source).exists() else None,
            "params": self.params.to_dict(),
            "git": git_revision(),
            "packages": package_versions(),
            "hardware": hardware(),
            "device": self.device,
            "started": self.started,
            "finished": _now(),
            # sha256 of every table/figure/json this run wrote: the report's check that
            # committed results were produced by a run and not edited by hand
            "outputs": dict(sorted(self.outputs.items())),
            **({"extra": self.extra} if self.extra else {}),
        }

    def finish(self) -> Path:
        """Write this notebook's manifest and merge it into results/<run>/manifest.json."""
        m = self.manifest()
        path = mio.atomic_write_json(self.dir / "manifest.json", m)
        top = self.root / "manifest.json"
        merged = mio.read_json(top) if top.exists() else {}
        merged.update({k: m[k] for k in ("run", "params_file", "params_sha256", "params", "git",
                                         "packages", "hardware", "device")})
        merged.setdefault("notebooks", {})[self.notebook] = {"started": m["started"], "finished": m["finished"]}
        mio.atomic_write_json(top, merged)
        return path


def start(params_path: str | os.PathLike, notebook: str, results_root: str | os.PathLike | None = None) -> Run:
    """Load params, make results/<run>/<notebook>/, seed the RNGs and return the Run."""
    params = load(params_path)
    base = Path(results_root) if results_root else mio.project_root() / "results"
    root = base / params.run.name
    d = root / notebook
    d.mkdir(parents=True, exist_ok=True)
    seed_everything(params.run.seed)
    return Run(params=params, notebook=notebook, root=root, dir=d)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass


def load_table(path: str | os.PathLike):
    import pandas as pd
    return pd.read_csv(path)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
