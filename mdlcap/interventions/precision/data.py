"""Image classification data for the precision study (notebook 06).

Default: scikit-learn's bundled `digits` set (1797 8x8 greyscale images; ships with the
package, no download). A user who has the standard files of a larger set points
`params.precision.data_path` at the folder holding them:

  mnist / fashion_mnist   IDX files  train-images-idx3-ubyte, train-labels-idx1-ubyte,
                          t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz)
  cifar10                 the BINARY version `cifar-10-batches-bin/` (data_batch_1..5.bin,
                          test_batch.bin). The python version holds pickles, and unpickling a
                          file runs code from it, so it is refused on purpose.
  svhn                    train_32x32.mat, test_32x32.mat (format 2, read by scipy.io.loadmat)

Every loader returns float32 arrays of shape (N, C, H, W) scaled to [0, 1] and int64 labels.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "svhn")


@dataclass
class ImageData:
    """Train / validation / test splits (validation: calibration and selection only)."""
    name: str
    source: str                 # where the arrays came from, for the notebook to print
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)

    def describe(self) -> str:
        return (f"{self.name} ({self.source}): train {len(self.y_train)}, validation {len(self.y_val)}, "
                f"test {len(self.y_test)}, input {self.shape}, {self.n_classes} classes")


# --------------------------------------------------------------------------- file formats
def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (MNIST layout): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    path = Path(path)
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"data_path: '{path}' is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"data_path: '{path}' holds IDX type {raw[2]:#x}; only unsigned bytes (0x08) are supported")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    need = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != need:
        raise ValueError(f"data_path: '{path}' has {len(raw)} bytes, its header promises {need}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def _find(folder: Path, stem: str) -> Path:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    # torchvision spells them train-images.idx3-ubyte in some releases
    alt = stem.replace("-idx", ".idx")
    for cand in (folder / alt, folder / f"{alt}.gz"):
        if cand.is_file():
            return cand
    raise ValueError(f"data_path: '{folder}' has no file '{stem}' (or '{stem}.gz')")


def load_idx_pair(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST / Fashion-MNIST from IDX files → x_train, y_train, x_test, y_test."""
    folder = _folder(folder)
    xtr = read_idx(_find(folder, "train-images-idx3-ubyte"))
    ytr = read_idx(_find(folder, "train-labels-idx1-ubyte"))
    xte = read_idx(_find(folder, "t10k-images-idx3-ubyte"))
    yte = read_idx(_find(folder, "t10k-labels-idx1-ubyte"))
    if xtr.ndim != 3 or ytr.ndim != 1 or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"data_path: IDX files in '{folder}' do not pair up as images (N,H,W) and labels (N,)")
    f = lambda x: (x.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return f(xtr), ytr.astype(np.int64), f(xte), yte.astype(np.int64)


def load_cifar10_bin(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    folder = _folder(folder)
    if (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    if (folder / "data_batch_1").is_file() and not (folder / "data_batch_1.bin").is_file():
        raise ValueError(f"data_path: '{folder}' looks like the python (pickle) version of CIFAR-10; "
                         "it is refused because unpickling runs code from the file. Use the binary "
                         "version cifar-10-batches-bin")

    def read(name: str):
        p = folder / name
        if not p.is_file():
            raise ValueError(f"data_path: '{folder}' has no file '{name}' (CIFAR-10 binary version)")
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size % 3073:
            raise ValueError(f"data_path: '{p}' size {raw.size} is not a multiple of 3073 bytes")
        rec = raw.reshape(-1, 3073)
        return (rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0), rec[:, 0].astype(np.int64)

    parts = [read(f"data_batch_{i}.bin") for i in range(1, 6)]
    xte, yte = read("test_batch.bin")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


def load_svhn_mat(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SVHN cropped digits (format 2): X (32, 32, 3, N) uint8, y (N, 1) with label 10 meaning 0."""
    from scipy.io import loadmat

    folder = _folder(folder)

    def read(name: str):
        p = folder / name
        if not p.is_file():
            raise ValueError(f"data_path: '{folder}' has no file '{name}' (SVHN format 2)")
        m = loadmat(p)
        if "X" not in m or "y" not in m:
            raise ValueError(f"data_path: '{p}' lacks the arrays 'X' and 'y'")
        x = np.transpose(m["X"], (3, 2, 0, 1)).astype(np.float32) / 255.0
        y = m["y"].reshape(-1).astype(np.int64) % 10
        return x, y

    xtr, ytr = read("train_32x32.mat")
    xte, yte = read("test_32x32.mat")
    return xtr, ytr, xte, yte


def _folder(path: str | Path | None) -> Path:
    if path is None or str(path) == "":
        raise ValueError("data_path: must name a local folder for this data set (params.precision.data_path)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"data_path: '{p}' is not an existing folder")
    return p


# --------------------------------------------------------------------------- entry point
def load_image_data(dataset: str = "digits", data_path: str | Path | None = None, *, seed: int = 0,
                    val_fraction: float = 0.15, test_fraction: float = 0.25,
                    max_train: int | None = None) -> ImageData:
    """Load `dataset` and split off a validation set (and, for digits, a test set) by `seed`.

    digits has no official split: a stratified 60/15/25 train/validation/test split is drawn.
    The other sets keep their official test split; validation is carved from train.
    `max_train` caps the training set (a random subset) to keep CPU runs short.
    """
    from sklearn.model_selection import train_test_split

    if dataset not in DATASETS:
        raise ValueError(f"dataset: must be one of {list(DATASETS)}, got {dataset!r}")
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction: must lie in (0, 0.5), got {val_fraction}")
    if dataset == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None]
        y = d.target.astype(np.int64)
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
        source = "scikit-learn bundled digits (no download)"
    else:
        loader = {"mnist": load_idx_pair, "fashion_mnist": load_idx_pair,
                  "cifar10": load_cifar10_bin, "svhn": load_svhn_mat}[dataset]
        xtr, ytr, xte, yte = loader(data_path)
        source = f"local files in {data_path}"
    xtr, xval, ytr, yval = train_test_split(xtr, ytr, test_size=val_fraction / (1 - test_fraction)
                                            if dataset == "digits" else val_fraction,
                                            random_state=seed, stratify=ytr)
    if max_train is not None and len(ytr) > max_train:
        idx = np.random.default_rng(seed).choice(len(ytr), size=max_train, replace=False)
        xtr, ytr = xtr[idx], ytr[idx]
    return ImageData(dataset, source, xtr, ytr, xval, yval, xte, yte)
