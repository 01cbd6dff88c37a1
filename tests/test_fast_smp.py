"""The SMP (``luq4-smp2``) and LBT step-time shortcuts give the bits of the code they replace.

Each shortcut is compared, ``torch.equal`` on values, dtype and shape (or the same error), with the torch
expression or the per-sample path it replaces; tests/test_step_exact.py pins the whole training step.
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- the conv B kernel on SMP pairs

def _dgrad_reference(qw, gb, x_shape, geom, per_sample=True):
    """The definition: the B GEMM through ``matmul`` -- one GEMM per SMP sample, int64 sum, ``/ 2``, the
    float32 rescale -- folded by ``F.fold`` (ATen's col2im)."""
    (kh, kw), dil, pad, st_ = geom
    n, c, h, w = x_shape
    ho, wo = G._geom_out(h, w, geom)
    with mock.patch.object(OP, "_summed_samples", lambda *a: None) if per_sample else mock.patch.object(
            OP, "_summed_samples", OP._summed_samples), use_backend("cpu"):
        rows = matmul(qw.t(), gb.t()).t()
    return torch.nn.functional.fold(rows.reshape(n, ho * wo, -1).transpose(1, 2), (h, w), (kh, kw),
                                    dilation=dil, padding=pad, stride=st_)


_SCALES = [None, 1.0, 0.0123, -3.7e-5, 1e-30, 3.1e30, 2.0 ** -149, 3 * 2.0 ** -149, 2.0 ** -126, float("inf")]


@st.composite
def smp_dgrad_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    geom = ((kh, kw), (draw(st.integers(1, 2)), 1), (draw(st.integers(0, 2)), draw(st.integers(0, 1))),
            (draw(st.integers(1, 2)), draw(st.integers(1, 2))))
    n, c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
    ho, wo = G._geom_out(h, w, geom)
    if ho < 1 or wo < 1:
        geom = ((1, 1), (1, 1), (0, 0), (1, 1))
        (kh, kw), ho, wo = geom[0], h, w
    m = draw(st.sampled_from([1, 3, 16, 17, 32]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    wlim = draw(st.sampled_from([7, 8, 127]))          # [-7, 7] (SAWB sym15), [-8, 7] (AVX2 bytes), INT8
    wq = torch.randint(-wlim, min(wlim, 127) + 1, (m, c * kh * kw), generator=gen, dtype=torch.int8)
    codes = _log_codes(gen, (2, n * ho * wo, m), zeros=draw(st.sampled_from([0.0, 0.3, 0.9])))
    top = draw(st.sampled_from(["none", "few", "many"]))            # pairs (7, 7) and (-7, -7): values +-128
    if top != "none":
        hit = torch.rand(codes.shape[1:], generator=gen) < (0.02 if top == "few" else 0.4)
        sign = torch.where(torch.rand(codes.shape[1:], generator=gen) < 0.5, 7, -7).to(torch.int8)
        codes[:, hit] = sign[hit]
    sw_, sg = draw(st.sampled_from(_SCALES)), draw(st.sampled_from(_SCALES))
    scale = (lambda v: None if v is None else torch.tensor(v))
    qw = Operand(wq, scale=scale(sw_))
    gb = Operand(codes, "log", scale=scale(sg), sample_mean=True)
    return qw, gb, (n, c, h, w), geom


@fast
@given(case=smp_dgrad_cases(), build=st.sampled_from(["native", "baseline"]), cl=st.booleans())
def test_conv_dgrad_native_smp_pairs_are_the_fold_of_the_gemms(case, build, cl, baseline_kernels):
    """Two SMP samples in the B kernel's pair format against the per-sample GEMMs and F.fold: the same
    bits (NCHW and channels-last), or declined only where s / 2 is not a float32 number, past the int16
    value range / float32 bound, or for the channels-last result of a strided fold or an infinite scale."""
    import host.nn.functional as HF
    qw, gb, x_shape, geom = case
    want = _dgrad_reference(qw, gb, x_shape, geom)
    assert torch.equal(_dgrad_reference(qw, gb, x_shape, geom, per_sample=False).view(torch.int32),
                       want.view(torch.int32))
    with mock.patch.object(native, "kernels", lambda: baseline_kernels) if build == "baseline" \
            else mock.patch.object(native, "kernels", native.kernels), use_backend("cpu"):
        got = HF.conv_dgrad_native(qw, gb, x_shape, geom, channels_last=cl)
    sa = 1.0 if qw.scale is None else qw.scale
    sb = 1.0 if gb.scale is None else gb.scale
    s = float(torch.as_tensor(sa, dtype=torch.float32) * torch.as_tensor(sb, dtype=torch.float32)) \
        if (qw.scale is not None or gb.scale is not None) else 1.0
    halvable = float(torch.tensor(s * 0.5, dtype=torch.float32)) == s * 0.5
    bound = qw.ints.shape[0] * int(qw.ints.abs().max()) * 128
    if got is None:
        assert not halvable or bound > 2 ** 24 or (cl and (geom[3] != (1, 1) or not math.isfinite(s)))
        return
    assert halvable
    assert got.shape == want.shape and torch.equal(got.view(torch.int32), want.view(torch.int32))
    if cl:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_conv_dgrad_native_smp_pairs_decline():
    """Codes outside [-7, 7], other sample counts, int16 codes: the GEMM path (which handles or rejects
    them); also with the kernels off and while recording."""
    import host.nn.functional as HF
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    qw = Operand(torch.ones((4, 18), dtype=torch.int8), scale=torch.tensor(0.5))
    codes = torch.ones((2, 2 * 16, 4), dtype=torch.int8)
    x_shape = (2, 2, 4, 4)
    with use_backend("cpu"):
        assert HF.conv_dgrad_native(qw, Operand(codes, "log", scale=torch.tensor(0.25), sample_mean=True),
                                    x_shape, geom) is not None
        bad = codes.clone()
        bad[1, -1, -1] = 8
        for other in (bad, codes[:1], torch.cat([codes, codes]), codes.to(torch.int16)):
            assert HF.conv_dgrad_native(qw, Operand(other, "log", scale=torch.tensor(0.25), sample_mean=True),
                                        x_shape, geom) is None
        gb = Operand(codes, "log", scale=torch.tensor(0.25), sample_mean=True)
        with G.record_gemms():
            assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is None
        with torch_code():
            assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is None


@fast
@given(rows=st.integers(0, 300), seed=st.integers(0, 2 ** 31))
def test_smp_pack_log2_is_the_pair_index(rows, seed):
    import host.nn.functional as HF
    gen = torch.Generator().manual_seed(seed)
    codes = _log_codes(gen, (2, rows, 3))
    got = HF._smp_pair_codes(Operand(codes, "log", sample_mean=True))
    want = ((codes[0].to(torch.int32) + 7) * 15 + codes[1].to(torch.int32) + 7).to(torch.uint8).view(torch.int8)
    assert got.dtype == torch.int8 and torch.equal(got, want)


# --------------------------------------------------------------------------- DSQ's forward pass in one kernel

_DSQ_SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -3e-39, 3e38, -3e38, 0.5, 1.0, -1.0, 7.5, 1e-7]


def _dsq_input(gen, shape, kind, signed, scale, layout):
    x = torch.randn(shape, generator=gen) * scale
    if kind == "act" and not signed:
        x = x.relu_()
    flat = x.view(-1)
    k = min(len(_DSQ_SPECIAL), flat.numel())
    flat[:k] = torch.tensor(_DSQ_SPECIAL[:k])
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x.transpose(1, 3)        # not dense in either layout: the torch code
    return x


def _dsq_run(x0, clip, bits, kind, signed, g, like=False):
    """The STE output, the codes and step, and both gradients (or the error) of dsq_ste_quantize."""
    from host import quant as Q
    x = x0.clone(memory_format=torch.preserve_format).requires_grad_()
    s = torch.tensor(clip, requires_grad=True)
    try:
        out, q = Q.dsq_ste_quantize(x, s, bits, kind, signed=signed, grad_like_input=like)
    except ValueError as e:
        return str(e)
    out.backward(g)
    return out, q.codes, q.step, x.grad, s.grad


@fast
@given(kind=st.sampled_from(["weight", "act"]), signed=st.booleans(), bits=st.integers(2, 8),
       clip=st.sampled_from([1e-30, 1e-3, 0.37, 1.0, 2.5, 1e30, 3e38]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       seed=st.integers(0, 2 ** 31), layout=st.sampled_from(["contiguous", "channels_last", "strided", "2d"]),
       g_layout=st.sampled_from(["contiguous", "channels_last", "dim0_fastest"]), like=st.booleans(),
       shape=st.sampled_from([(2, 3, 5, 4), (2, 16, 4, 5), (3, 8, 4, 4), (1, 9, 3, 3)]),
       build=st.sampled_from(["native", "baseline"]))
def test_dsq_kernels_match_torch(kind, signed, bits, clip, scale, seed, layout, g_layout, like, shape, build,
                                 baseline_kernels):
    """``tetrad_dsq_fwd_f32`` and ``tetrad_dsq_bwd_f32`` against the torch code (``TETRAD_NATIVE=0``): the
    STE value's bits (-0.0 included), codes, step, and both gradients' bits and strides (the clip's sums
    over the kernel's products), for every kind and bit width (int16 codes, 8-bit unsigned activations,
    fall back), zeros of both signs, subnormals, values whose t overflows, dense, non-dense and 2-D
    inputs, an incoming gradient in each layout the kernel maps (or not), ``grad_like_input``, shapes with
    and without whole 8 x 8 tiles (the AVX2 transposes) and their tails, both builds."""
    gen = torch.Generator().manual_seed(seed)
    x = _dsq_input(gen, shape, kind, signed, scale, "contiguous" if layout == "2d" else layout)
    if layout == "2d":
        x = x.reshape(shape[0] * shape[1], -1)
    g = torch.randn(x.shape, generator=gen) * scale
    if g_layout == "channels_last" and g.dim() == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    elif g_layout == "dim0_fastest":          # a linear layer's dX (a transposed GEMM result), a weight gradient
        g = g.movedim(0, -1).contiguous().movedim(-1, 0)
    with mock.patch.object(native, "kernels", lambda: baseline_kernels) if build == "baseline" \
            else mock.patch.object(native, "kernels", native.kernels):
        got = _dsq_run(x, clip, bits, kind, signed, g, like)
    with torch_code():
        want = _dsq_run(x, clip, bits, kind, signed, g, like)
    if isinstance(want, str):
        assert got == want
        return
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                           b.view(torch.int32) if b.dtype == torch.float32 else b)


def test_dsq_forward_kernel_runs_and_its_mask():
    """The kernel path is taken for 4-bit tensors and its mask is _dsq_codes' (0 <= t <= 1)."""
    from host.quant import forward as FW
    gen = torch.Generator().manual_seed(0)
    for kind, s in (("weight", 0.3), ("act", 1.1), ("act_signed", 0.8)):
        x = torch.randn((4, 8, 3, 3), generator=gen)
        x[0, 0, 0] = torch.tensor([-0.0, 0.3, 2.0])
        got = FW._dsq_native(x, torch.tensor(s), 4, kind, "t")
        assert got is not None
        codes, mask, div = FW._dsq_codes(x, torch.tensor(s), 4, kind, want_mask=True)
        assert torch.equal(got[4], mask) and torch.equal(got[3], codes.to(torch.int8)) and got[5] == div


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("clip", [1.0, -1.0])
def test_dsq_forward_kernel_errors_match_torch(bad, clip):
    x = torch.randn(64)
    x[37] = bad
    got = _dsq_run(x, clip, 4, "act", False, torch.ones(64))
    with torch_code():
        want = _dsq_run(x, clip, 4, "act", False, torch.ones(64))
    assert isinstance(want, str) and got == want


# --------------------------------------------------------------------------- LBT's gradient quantizer

def _lbt_fields(q):
    if isinstance(q, str):
        return q
    return (q.codes.dtype, q.codes, q.step, q.seed, q.gamma, q.g_max, q.clip, q.inv_step, q.clipped_count,
            q.flushed)


def _lbt_call(g, bits, gamma, seed, rand_bits):
    from host import quant as Q
    try:
        return _lbt_fields(Q.lbt(g, bits, gamma=gamma, seed=seed, rand_bits=rand_bits))
    except ValueError as e:
        return str(e)


@fast
@given(rows=st.integers(1, 300), cols=st.integers(1, 40), bits=st.integers(2, 16),
       gamma=st.sampled_from([1.0, 0.9, 0.5, 0.05, 1e-6]), scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e30]),
       seed=st.integers(0, 2 ** 32 - 1), rand_bits=st.sampled_from([4, 8, 16]),
       layout=st.sampled_from(["rows", "transposed", "zeros", "nan"]), build=st.sampled_from(["native", "baseline"]))
def test_lbt_kernels_match_torch(rows, cols, bits, gamma, scale, seed, rand_bits, layout, build, baseline_kernels):
    """``lbt`` with its native count and multiply-SR pass against the torch code: codes (and dtype), step,
    seed, g_max, clip, inv_step, the clipped count and the flush, or the same error; every bit width
    (int8 and int16 codes), clip ratios that clip many elements, tiny and huge gradients, an all-zero
    gradient (flushed), a transposed view (the torch path) and NaN; both builds."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn((rows, cols), generator=gen) * scale
    g.view(-1)[:: 7] = 0.0
    if layout == "transposed":
        g = g.t()
    elif layout == "zeros":
        g.zero_()
    elif layout == "nan":
        g.view(-1)[-1] = float("nan")
    with mock.patch.object(native, "kernels", lambda: baseline_kernels) if build == "baseline" \
            else mock.patch.object(native, "kernels", native.kernels):
        got = _lbt_call(g, bits, gamma, seed, rand_bits)
    with torch_code():
        want = _lbt_call(g, bits, gamma, seed, rand_bits)
    if isinstance(want, str):
        assert got == want
        return
    for a, b in zip(got, want):
        assert (torch.equal(a, b) and a.dtype == b.dtype) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("c", [0.5, 0.1, 1 / 3, 0.30000001192092896 + 1e-12, 0.29999998, 0.0, 1e-45, 5e-324])
def test_count_above_rounds_the_clip_like_torch(c):
    """A clip that is not a float32 number: torch compares with it rounded to float32; so does the kernel."""
    from host.quant.lbt import _count_above
    x = torch.tensor([0.3, -0.3, 0.30000001192092896, 0.29999998, 1 / 3, -1 / 3, 0.1, 0.5, -0.0, 1e-45, -1e-45]
                     * 7, dtype=torch.float32)
    got = _count_above(x, c, 1.0)
    with torch_code():
        want = _count_above(x, c, 1.0)
    assert got == want == int(torch.count_nonzero(x.abs() > c))


# --------------------------------------------------------------------------- LUQ SMP: two samples in one pass

def _smp_fields(q):
    return q.codes.dtype, q.codes, q.alpha, q.seed, q.rand_bits, q.draw_stride


def _threshold_inputs(alpha_max, n, seed, stride):
    """Elements on (and one float either side of) the SR thresholds ``alpha * 2**k * (2 - u)`` /
    ``alpha * (1 - u)`` of sample 0's draws (even elements) and of sample 1's (odd elements)."""
    from host.quant.rng import uniform_torch
    alpha = alpha_max / 64
    u0 = uniform_torch(seed, (n,), dtype=torch.float64)
    u1 = uniform_torch(seed, (n,), 16, stride, dtype=torch.float64)
    u = torch.where(torch.arange(n) % 2 == 0, u0, u1)
    k = torch.arange(n) % 7
    lead = torch.where(k == 0, 1.0, 2.0).double()
    x = (alpha * torch.exp2((k - 1).clamp(min=0).double()) * (lead - u)).float()
    x = torch.where(torch.arange(n) % 3 == 1, torch.nextafter(x, torch.tensor(0.0)), x)
    x = torch.where(torch.arange(n) % 3 == 2, torch.nextafter(x, torch.tensor(1e9)), x)
    x = torch.where(torch.arange(n) % 5 == 0, -x, x)
    x[0] = alpha_max
    return x


@pytest.mark.parametrize("alpha_max", [64.0, 3.0, 1e-30])
@pytest.mark.parametrize("n", [5, 1024, 2500])
@pytest.mark.parametrize("build", ["native", "baseline"])
def test_luq_smp_two_samples_on_thresholds_match_torch(alpha_max, n, build, baseline_kernels):
    """The fused two-sample kernel on elements at both samples' SR thresholds (the exact re-decision and
    sign of each sample's listed elements), across blocks of 1024 draws and a tail, both builds."""
    from host.quant.luq import luq_smp, smp_draw_stride
    seed = 11
    x = _threshold_inputs(alpha_max, n, seed, smp_draw_stride(n))
    with mock.patch.object(native, "kernels", lambda: baseline_kernels) if build == "baseline" \
            else mock.patch.object(native, "kernels", native.kernels):
        got = _smp_fields(luq_smp(x, 2, seed=seed))
    with torch_code():
        want = _smp_fields(luq_smp(x, 2, seed=seed))
    for a, b in zip(got, want):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_luq_smp_two_samples_kernel_lists_threshold_elements():
    """The test above reaches the exact re-decision for both samples (it is not vacuous)."""
    from host.quant.luq import luq_alpha, smp_draw_stride
    n, seed = 2500, 11
    stride = smp_draw_stride(n)
    x = _threshold_inputs(3.0, n, seed, stride)
    alpha = luq_alpha(x)
    codes = torch.empty((2, n), dtype=torch.int8)
    idx, uu = torch.empty(2 * n, dtype=torch.int64), torch.empty(2 * n)
    k = native.kernels().tetrad_luq_smp2_codes_f32(x.data_ptr(), n, float(alpha), seed, stride, 16,
                                                   codes.data_ptr(), idx.data_ptr(), uu.data_ptr())
    listed = idx[:k]
    assert (listed < n).sum() > n // 40 and (listed >= n).sum() > n // 40


@fast
@given(rows=st.integers(1, 90), cols=st.integers(1, 30), seed=st.integers(0, 2 ** 32 - 1),
       bits=st.sampled_from([4, 8, 16]), max_exp=st.sampled_from([6, 7]), mode=st.sampled_from(["float", "pow2"]),
       scale=st.sampled_from([1e-35, 1e-3, 1.0, 1e30]), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_luq_smp_two_samples_match_torch(rows, cols, seed, bits, max_exp, mode, scale, dtype):
    from host.quant.luq import luq_smp
    gen = torch.Generator().manual_seed(seed % 2 ** 31)
    x = (torch.randn((rows, cols), generator=gen) * torch.rand((rows, 1), generator=gen) ** 4 * scale).to(dtype)
    x.view(-1)[::3] = 0.0
    def call():
        try:
            return _smp_fields(luq_smp(x, 2, seed=seed, rand_bits=bits, max_exp=max_exp, alpha_mode=mode))
        except ValueError as e:     # (float16 overflow: Inf)
            return str(e)

    got = call()
    with torch_code():
        want = call()
    if isinstance(want, str):
        assert got == want
        return
    for a, b in zip(got, want):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
