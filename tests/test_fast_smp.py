"""The SMP (``luq4-smp2``) and LBT step-time shortcuts give the bits of the code they replace.

Each shortcut is compared, ``torch.equal`` on values, dtype and shape (or the same error), with the torch
expression or the per-sample path it replaces; tests/test_step_exact.py pins the whole training step.
"""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st

import host.gemm as G
import host.nn.operand as OP
from host.backends import use_backend
from host.backends.torch_backend import b_values
from host.nn.operand import Operand, matmul, summed_log_values
from host.quant import native

fast = settings(max_examples=int(os.environ.get("TEST_EXAMPLES", 60)), deadline=None)


def torch_code():
    """Run the block with the kernels turned off (the golden torch code)."""
    return mock.patch.dict(os.environ, {"TETRAD_NATIVE": "0"})


@pytest.fixture(scope="module")
def baseline_kernels(tmp_path_factory):
    """The kernels built without the AVX2 clones (what a CPU without AVX2 runs)."""
    cache = tmp_path_factory.mktemp("baseline")
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE_CACHE": str(cache)}):
        return native._load(native._build(("TETRAD_NO_VECTOR_CLONES",)))


def _log_codes(gen, shape, lo=-7, hi=7, zeros=0.3):
    c = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)
    return c * (torch.rand(shape, generator=gen) >= zeros)


# --------------------------------------------------------------------------- summed LOG values

def _summed_reference(codes: torch.Tensor) -> torch.Tensor:
    """The torch expression: each sample's ``b_values``, summed in int16."""
    out = torch.zeros(codes.shape[1:], dtype=torch.int16)
    for s in codes.unbind(0):
        out += b_values(s, "log", None).to(torch.int16)
    return out


@fast
@given(samples=st.integers(1, 5), rows=st.integers(0, 70), cols=st.integers(1, 40), seed=st.integers(0, 2 ** 31),
       top=st.sampled_from([7, 8]), layout=st.sampled_from(["rows", "transposed"]),
       build=st.sampled_from(["native", "baseline"]))
def test_summed_log_values_match_torch(samples, rows, cols, seed, top, layout, build, baseline_kernels):
    """Codes in [-7, 7] (the AVX2 shuffle) and with +-8 (the table, block by block), any length (tails of
    the 16-code blocks), a transposed view (storage order), both builds."""
    gen = torch.Generator().manual_seed(seed)
    codes = _log_codes(gen, (samples, rows, cols), -top, top)
    if layout == "transposed":
        codes = codes.transpose(1, 2)
    with mock.patch.object(native, "kernels", lambda: baseline_kernels) if build == "baseline" \
            else mock.patch.object(native, "kernels", native.kernels):
        got = summed_log_values(codes)
    want = _summed_reference(codes)
    assert got.dtype == torch.int16 and got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("bad", [9, -9, 127, -128])
def test_summed_log_values_reject_codes_like_b_values(bad):
    codes = torch.zeros((2, 5, 40), dtype=torch.int8)
    codes[1, 4, 39] = bad              # past the AVX2 blocks' end: the scalar tail's check
    codes[0, 0, 3] = 7
    with pytest.raises(ValueError, match="LOG codes must lie in"):
        summed_log_values(codes)
    with pytest.raises(ValueError, match="LOG codes must lie in"):
        _summed_reference(codes)


def test_summed_log_values_decline():
    codes = torch.zeros((2, 3, 4), dtype=torch.int8)
    assert summed_log_values(codes.to(torch.int16)) is None
    assert summed_log_values(codes[0]) is None
    assert summed_log_values(torch.zeros((256, 1, 1), dtype=torch.int8)) is None
    with torch_code():
        assert summed_log_values(codes) is None


# --------------------------------------------------------------------------- one GEMM for the SMP samples

def _smp_operand(gen, rows, cols, samples=2, scale=0.0123):
    return Operand(_log_codes(gen, (samples, rows, cols)), "log", scale=torch.tensor(scale), sample_mean=True)


@pytest.mark.parametrize("shape", [(5, 9, 3), (64, 128, 10), (33, 1, 17), (300, 2000, 16)])
@pytest.mark.parametrize("samples", [2, 3])
def test_matmul_sums_smp_samples_exactly(shape, samples, monkeypatch, one_torch_thread):
    """The merged GEMM against the per-sample loop (``_summed_samples`` off): the same floats, also past
    the float32 bound of one GEMM (K = 2000, INT8 codes), for the U orientation (``A @ G``) and the B one
    (``W @ G.t()``: transposed sample views)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(m * k + n)
    a = Operand(torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8), scale=torch.tensor(0.37))
    w = Operand(torch.randint(-8, 8, (m, n), generator=gen, dtype=torch.int8), scale=torch.tensor(-1.5e-3))
    b = _smp_operand(gen, k, n, samples)
    calls = []
    real = OP._summed_samples
    monkeypatch.setattr(OP, "_summed_samples", lambda *x: calls.append(1) or real(*x))
    with use_backend("cpu"):
        got = (matmul(a, b), matmul(w, b.t()))
        assert len(calls) == 2, "the merged path did not run"
        monkeypatch.setattr(OP, "_summed_samples", lambda *x: None)
        want = (matmul(a, b), matmul(w, b.t()))
    for g_, w_ in zip(got, want):
        assert g_.dtype == w_.dtype and torch.equal(g_, w_)


def test_matmul_keeps_per_sample_gemms_when_recording():
    gen = torch.Generator().manual_seed(1)
    a = Operand(torch.randint(-8, 8, (4, 6), generator=gen, dtype=torch.int8), scale=torch.tensor(0.5))
    b = _smp_operand(gen, 6, 3)
    with use_backend("cpu"), G.record_gemms() as log:
        matmul(a, b, tag="x")
    assert [r.tag for r in log] == ["x#0", "x#1"] and all(r.b_format == "log" for r in log)


# --------------------------------------------------------------------------- DSQ (lbt4/lbt5): one quantization pass

def _dsq_case(gen, shape, kind, signed, scale):
    x = torch.randn(shape, generator=gen) * scale
    if kind == "act" and not signed:
        x = x.relu_()
    x[..., 0] = 0.0
    return x


@fast
@given(kind=st.sampled_from(["weight", "act"]), signed=st.booleans(), bits=st.sampled_from([2, 4, 5, 8]),
       clip=st.floats(0.05, 4.0), scale=st.sampled_from([0.1, 1.0, 10.0]), seed=st.integers(0, 2 ** 31),
       x_cl=st.booleans(), g_cl=st.booleans(), like=st.booleans())
def test_dsq_ste_quantize_is_the_two_calls(kind, signed, bits, clip, scale, seed, x_cl, g_cl, like):
    """``dsq_ste_quantize`` against ``dsq_*_ste`` and ``dsq_*``: the forward value, the codes and step, and
    both gradients for an incoming gradient in either layout; ``grad_like_input`` changes only the
    layout of ``x``'s gradient (to ``x``'s own)."""
    from host import quant as Q
    gen = torch.Generator().manual_seed(seed)
    x0 = _dsq_case(gen, (3, 5, 4, 6), kind, signed, scale)
    if x_cl:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    g = torch.randn(x0.shape, generator=gen)
    if g_cl:
        g = g.contiguous(memory_format=torch.channels_last)

    def run(fused):
        x = x0.clone(memory_format=torch.preserve_format).requires_grad_()
        s = torch.tensor(clip, requires_grad=True)
        if fused:
            out, q = Q.dsq_ste_quantize(x, s, bits, kind, signed=signed, grad_like_input=like)
        elif kind == "weight":
            out, q = Q.dsq_weight_ste(x, s, bits), Q.dsq_weight(x.detach(), s, bits)
        else:
            out, q = Q.dsq_activation_ste(x, s, bits, signed=signed), \
                Q.dsq_activation(x.detach(), s, bits, signed=signed)
        out.backward(g)
        return out, q, x.grad, s.grad

    got, want = run(True), run(False)
    assert torch.equal(got[0], want[0]) and got[0].stride() == want[0].stride()
    assert got[1].codes.dtype == want[1].codes.dtype and torch.equal(got[1].codes, want[1].codes)
    assert torch.equal(got[1].step, want[1].step) and got[1].grid == want[1].grid
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
    if like:
        assert got[2].stride() == x0.stride()
    else:
        assert got[2].stride() == want[2].stride()


def test_dsq_ste_quantize_errors():
    from host import quant as Q
    x = torch.ones(4)
    with pytest.raises(ValueError, match="kind"):
        Q.dsq_ste_quantize(x, 1.0, 4, "activation")
    with pytest.raises(ValueError, match="signed"):
        Q.dsq_ste_quantize(x, 1.0, 4, "act", signed=1)
    with pytest.raises(ValueError, match="u_a must be finite and > 0"):
        Q.dsq_ste_quantize(x, -1.0, 4, "act")
