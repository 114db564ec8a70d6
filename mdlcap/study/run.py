"""One notebook run: its output folder, tables (CSV), figures (PNG) and manifest.

    run = mdlcap.study.run.start(params_path, "01_derivations")
    run.save_table(df, "closed_form_vs_cvxpy")      # results/<run>/01_derivations/closed_form_vs_cvxpy.csv
    run.save_figure(fig, "gamma_sweep")             # results/<run>/01_derivations/gamma_sweep.png
    run.finish()                                    # results/<run>/01_derivations/manifest.json

Every write is atomic, so an interrupted run never corrupts what an earlier run wrote.

`start()` also makes the run reproducible on any machine: it pins the thread counts every reported
number depends on (torch intra-op, the BLAS and OpenMP pools, numba) to `run.threads` of the params
file (default 1: a float reduction split over another number of threads sums in another order,
and a model pretrained on 2 threads is not the one pretrained on 1), seeds the RNGs, and asks
torch for deterministic algorithms on CUDA. The manifest records what was in force (`determinism`)
and what the run was computed from (`inputs`: hashes of the notebook, the params file, the package
sources the notebook imports and the upstream notebooks' outputs; see `mdlcap.study.pipeline`).
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import io
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mdlcap import files as mio
from mdlcap.study import pipeline
from mdlcap.study.params import Params, load

PACKAGES = ["mdlcap", "torch", "transformers", "tokenizers", "peft", "accelerate", "lm_eval",
            "datasets", "cvxpy", "numba", "numpy", "scipy", "pandas", "matplotlib", "scikit-learn", "papermill", "threadpoolctl"]
# Thread pools read these when a library loads: set for the libraries a run loads after start().
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")


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


def usable_cpus() -> int:
    """CPUs this process may run on (taskset / cgroup affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):          # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor(); "" when unknown).
    Float reductions depend on the kernels a CPU dispatches to, so two runs on different CPUs
    may differ in their last digits (README, known limits)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                          "machine": platform.machine(), "cpu_model": cpu_model(), "cpu_count": usable_cpus(),
                          "cpu_count_machine": os.cpu_count()}
    try:
        import torch
        hw["torch_threads"] = torch.get_num_threads()
        hw["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()   # the SIMD kernels torch runs
        hw["cuda"] = torch.cuda.is_available()
        if hw["cuda"]:
            hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return hw


def resolve_device(params: Params) -> str:
    """params.run.device, "auto" resolved (mdlcap.models.resolve_device)."""
    from mdlcap.models import resolve_device as resolve
    return resolve(params)


@dataclass
class Run:
    params: Params
    notebook: str
    root: Path                       # results/<run>/
    dir: Path                        # results/<run>/<notebook>/
    started: str = field(default_factory=_now)
    t0: float = field(default_factory=time.perf_counter)
    extra: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)   # file name -> sha256, for the manifest
    inputs: dict[str, Any] = field(default_factory=dict)    # what the run is computed from (pipeline.inputs)

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
        """Write a matplotlib figure as PNG (atomic), show that PNG in the notebook, close the figure.

        Shown as the saved image, so the executed notebook and its HTML hold exactly the figure
        the results folder does, whatever the matplotlib backend (the notebooks use Agg)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        path = self._record(mio.atomic_write_bytes(self.dir / f"{name}.png", buf.getvalue()))
        show_png(buf.getvalue())
        import matplotlib.pyplot as plt
        plt.close(fig)                   # displayed once: the inline backend would show it again
        return path

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
            "determinism": determinism(self.params),
            "inputs": self.inputs,
            "started": self.started,
            "finished": _now(),
            "wall_seconds": round(time.perf_counter() - self.t0, 1),   # start() to finish()
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
        with open(self.root / ".manifest.lock", "w") as lock:     # `make -j` finishes notebooks at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = mio.read_json(top) if top.exists() else {}
            merged.update({k: m[k] for k in ("run", "params_file", "params_sha256", "params", "git",
                                             "packages", "hardware", "device", "determinism")})
            merged.setdefault("notebooks", {})[self.notebook] = {k: m[k] for k in ("started", "finished", "wall_seconds")}
            mio.atomic_write_json(top, merged)
        return path


def start(params_path: str | os.PathLike, notebook: str, results_root: str | os.PathLike | None = None) -> Run:
    """Load params, make results/<run>/<notebook>/, seed the RNGs and return the Run."""
    params = load(params_path)
    base = Path(results_root) if results_root else mio.project_root() / "results"
    root = base / params.run.name
    d = root / notebook
    d.mkdir(parents=True, exist_ok=True)
    pin_threads(params.run.threads)
    seed_everything(params.run.seed)
    if resolve_device(params) == "cuda":
        deterministic_cuda()
    inputs = pipeline.inputs(mio.project_root(), notebook, params.source, base, params.run.name)
    return Run(params=params, notebook=notebook, root=root, dir=d, inputs=inputs)


def pin_threads(n: int) -> None:
    """Every thread pool a reported number can depend on runs `n` threads.

    Environment variables for the libraries not loaded yet, threadpoolctl for the BLAS/OpenMP pools
    already loaded (numpy's OpenBLAS is), torch's intra-op count, numba's if it is loaded (then its
    variable stays as it is: numba refuses a changed NUMBA_NUM_THREADS once its pool runs)."""
    for var in THREAD_ENV:
        if not (var == "NUMBA_NUM_THREADS" and "numba" in sys.modules):
            os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n)          # not a context: the limits stay for the whole run
    import torch
    torch.set_num_threads(n)
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def deterministic_cuda() -> None:
    """Deterministic kernels on CUDA (cuBLAS workspace, no cuDNN autotuning). CPU kernels are
    deterministic at a fixed thread count already, so CPU runs are left as they are."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def determinism(params: Params) -> dict[str, Any]:
    """The settings in force that results depend on, for the manifest."""
    import torch
    from threadpoolctl import threadpool_info
    out: dict[str, Any] = {
        "threads": params.run.threads,
        "seed": params.run.seed,
        "torch_threads": torch.get_num_threads(),
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "threadpools": sorted({f"{i.get('internal_api')}:{i.get('num_threads')}" for i in threadpool_info()}),
        "env": {v: os.environ.get(v) for v in (*THREAD_ENV, "PYTHONHASHSEED")},
    }
    if "numba" in sys.modules:
        import numba
        out["numba_threads"] = numba.get_num_threads()
    return out


def show_png(data: bytes) -> None:
    """Display PNG bytes inline when running in a notebook kernel (no-op elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        display(Image(data=data, format="png"))


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

