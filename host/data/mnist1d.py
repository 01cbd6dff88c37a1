"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

Only ``mnist1d.data.make_dataset`` with the package's default arguments (seed 42, 5,000 sequences of
length 40, 80/20 split) is called: it builds the data from the package's templates with numpy's seeded
generator. ``get_dataset`` -- which downloads a pickle -- is never used.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

from host.data import DataSplits

__all__ = ["load_mnist1d", "PIP_LINE"]

PIP_LINE = "pip install mnist1d==0.0.2.post1"


@functools.lru_cache(maxsize=2)
def _generate(num_samples: int):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError(f"dataset 'mnist1d' needs the mnist1d package (it generates the data offline): "
                          f"{PIP_LINE}") from e
    state = np.random.get_state()            # make_dataset reseeds numpy's global generator
    args = get_dataset_args()
    args.num_samples = num_samples
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


def load_mnist1d(num_samples: int = 5000) -> DataSplits:
    """MNIST-1D: 4,000 train / 1,000 test sequences ``(1, 40)`` (standardized by the generator), 10 classes.

    ``num_samples`` other than the package default 5,000 gives a different (smaller) dataset: for tests only.
    """
    x, y, xt, yt = _generate(num_samples)
    tr = TensorDataset(torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.int64))
    te = TensorDataset(torch.tensor(xt, dtype=torch.float32).unsqueeze(1), torch.tensor(yt, dtype=torch.int64))
    return DataSplits("mnist1d", tr, te, 10, (1, 40),
                      info={"source": "mnist1d.data.make_dataset(get_dataset_args()), seed 42", "train": len(y),
                            "test": len(yt)})
