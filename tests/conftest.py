"""Shared test helpers: run a notebook at smoke size through papermill, once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "params/smoke.yaml"
SMOKE_DIR = ROOT / "results" / "smoke"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MDLCAP_ROOT", str(ROOT))


def lm_batches(n: int = 2, B: int = 3, T: int = 8, *, vocab: int = 64, n_loss: int | None = None,
               seed: int = 0) -> list[dict]:
    """n random token batches (B x T) whose last `n_loss` labels (default T // 2) carry the loss and
    the rest are prompt (-100), as mdlcap.default.data.task_batches builds them."""
    import torch
    g = torch.Generator().manual_seed(seed)
    n_loss = T - T // 2 if n_loss is None else n_loss
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (B, T), generator=g)
        lab = ids.clone()
        lab[:, : T - n_loss] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab})
    return out


def run_notebook(stem: str, params: str = SMOKE, **parameters) -> Path:
    """Execute notebooks/<stem>.ipynb with papermill;
    return the notebook's output folder.

    The executed copy goes to results/<run>/<stem>.ipynb, as `make all` writes it.
    """
    import papermill as pm

    out_dir = ROOT / "results" / Path(params).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(ROOT / "notebooks" / f"{stem}.ipynb"),
        str(out_dir / f"{Path(stem).name}.ipynb"),
        parameters={"params_path": params, **parameters},
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )
    return out_dir / Path(stem).name


@pytest.fixture(scope="session")
def smoke_prepared() -> Path:
    """The smoke-size default model and data (notebook 00), built once per test session."""
    return run_notebook("00_prepare")


@pytest.fixture(scope="session")
def smoke_scores(smoke_prepared) -> Path:
    """Layer scores at smoke size (notebook 02), on top of the smoke default model."""
    return run_notebook("02_curvature_scores")
