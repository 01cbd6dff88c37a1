"""The CPU step-time shortcuts change no bit of a training trajectory.

host.nn / host.gemm compute the training GEMMs of a convolution without im2col where that is exact
(float32 or float64 convolutions, zero-point terms as convolutions or batch sums), hand float32 results
holding the exact integers straight to the float rescale, and fold the B GEMM's columns with strided adds
in ATen's col2im order; host/quant/native.c fuses the quantizers' random stream and rounding and computes
the INT8 edge layer's weight gradient in integers instead of a float64 convolution, SAWB's quantize pass,
and the convolutions' B GEMM together with its col2im (host.nn.functional.conv_dgrad_native). Each is exact
by construction; this test pins the whole: for every recipe, a few training steps of the benchmark CNN
with the shortcuts and with the plain reference paths (im2col GEMMs through ``qgemm``, integer results
converted to float, ``F.fold``, the torch quantizers) give identical weights, buffers and gradients
(``torch.equal``), on whatever CPU runs it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import host.gemm as G
import host.nn.functional as HF
from host.backends import TorchBackend, use_backend
from host.nn import quantize_model
from host.nn.models import build_model
from host.recipes import get_recipe, recipe_names

STEPS = 3


def _no_shortcuts(monkeypatch):
    """The reference paths: no float32 hand-over, no zero-point sums as convolutions, ``F.fold``."""
    monkeypatch.setattr(HF, "_COL2IM_MIN_NUMEL", float("inf"))
    monkeypatch.setattr(HF, "_conv_sums_ok", lambda: False)
    monkeypatch.setattr(HF, "_DX_IN_X_LAYOUT", False)   # dX in NCHW whatever consumes it
    monkeypatch.setenv("TETRAD_NATIVE", "0")       # the torch quantizers, not host/quant/native.c
    for name in ("qconv2d", "qconv2d_weight"):
        fn = getattr(HF, name)
        monkeypatch.setattr(HF, name, lambda *a, _fn=fn, float_out=False, **kw: _fn(*a, float_out=False, **kw))
    gemm = TorchBackend.gemm
    monkeypatch.setattr(TorchBackend, "gemm", lambda self, *a, float32_ok=False, **kw: gemm(self, *a, **kw))


def _train(recipe: str, x, y) -> dict:
    torch.manual_seed(0)
    model = quantize_model(build_model("cnn", (1, 28, 28), 10), get_recipe(recipe), seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = {}
    with use_backend("cpu"):
        for i in range(STEPS):
            idx = torch.randint(0, len(y), (64,), generator=torch.Generator().manual_seed(i))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            out.update({f"grad.{k}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
            opt.step()
            out[f"loss.{i}"] = loss.detach()
    out.update({k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)})
    return out


@pytest.fixture(scope="module")
def batch_source():
    g = torch.Generator().manual_seed(3)
    x = torch.rand((256, 1, 28, 28), generator=g)
    x[x < 0.5] = 0.0                                  # image-like: many exact zeros
    return x, torch.randint(0, 10, (256,), generator=g)


@pytest.mark.parametrize("recipe", [r for r in recipe_names() if r != "fp32"])
def test_shortcuts_keep_the_trajectory(recipe, batch_source, monkeypatch, one_torch_thread):
    fast = _train(recipe, *batch_source)
    _no_shortcuts(monkeypatch)
    ref = _train(recipe, *batch_source)
    assert fast.keys() == ref.keys()
    bad = [k for k in ref if not torch.equal(fast[k], ref[k])]
    assert not bad, f"{recipe}: {bad}"
