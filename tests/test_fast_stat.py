"""The StatQuant (``psq4``, ``bhq5``) fast paths against the torch code they replace, bit for bit.

Each kernel of the ``stat`` block of ``host/quant/native.c`` is checked here against the torch expression
it stands for, with the AVX2 build and with the baseline build (what a CPU without AVX2 runs), on random
and extreme values, edge shapes included; ``tests/test_step_exact.py`` checks whole training steps.
"""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st

import host.gemm as G
from host.quant import native
from hw import numerics as nx

fast = settings(max_examples=int(os.environ.get("TEST_EXAMPLES", 80)), deadline=None)


def torch_code():
    """Run the block with the kernels turned off (the golden torch code)."""
    return mock.patch.dict(os.environ, {"TETRAD_NATIVE": "0"})


@pytest.fixture(scope="module")
def baseline_kernels(tmp_path_factory):
    """The kernels built without the AVX2 clones (what a CPU without AVX2 runs)."""
    cache = tmp_path_factory.mktemp("baseline")
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE_CACHE": str(cache)}):
        return native._load(native._build(("TETRAD_NO_VECTOR_CLONES",)))


@pytest.fixture(params=["avx2", "baseline"])
def kernels(request, baseline_kernels):
    """Each build in turn as ``native.kernels()``."""
    if request.param == "avx2":
        yield
        return
    with mock.patch.object(native, "kernels", lambda: baseline_kernels):
        yield


# --------------------------------------------------------------------------- U GEMM: UINT8 x UINT8 weight gradient

def _wgrad_float64(x, g, w_shape, geom):
    """The float64 weight-gradient convolution that qconv2d_weight runs without the kernel (exact)."""
    n, _, h, w = x.shape
    ho, wo = G._geom_out(h, w, geom)
    (_, _), dil, pad, stride = geom
    gf = g.double().reshape(n, ho, wo, -1).permute(0, 3, 1, 2)
    return torch.ops.aten.convolution_backward(gf, x.double(), torch.zeros(w_shape, dtype=torch.float64), None,
                                               list(stride), list(pad), list(dil), False, [0, 0], 1,
                                               [False, True, False])[1]


def _codes(shape, values, gen):
    """int16 codes in [0, 255] (``"any"``), at 0/255 (``"extremes"``: the largest partial sums), mostly 0
    (``"sparse"``), or signed in [-255, 255] (``"signed"``: the kernel's whole range)."""
    if values == "extremes":
        return torch.tensor([0, 255], dtype=torch.int16)[torch.randint(0, 2, shape, generator=gen)]
    if values == "signed":
        return torch.randint(-255, 256, shape, generator=gen, dtype=torch.int16)
    t = torch.randint(0, 256, shape, generator=gen, dtype=torch.int16)
    return t if values == "any" else t * (torch.rand(shape, generator=gen) < 0.2)


@st.composite
def wgrad_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    geom = ((kh, kw), (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            (draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(1, 3)), draw(st.integers(1, 3))))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh * 2, 11)), draw(st.integers(kw * 2, 11))
    m = draw(st.sampled_from([1, 3, 8, 16, 24, 32, 64, 65, 72]))
    ho, wo = G._geom_out(h, w, geom)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    values = draw(st.sampled_from(["any", "extremes", "sparse", "signed"]))
    return _codes((n, c, h, w), values, gen), _codes((n * ho * wo, m), values, gen), (m, c, kh, kw), geom


def _u8(x, g, w_shape, geom):
    n, _, h, w = x.shape
    return G._conv_weight_u8(x, g, w_shape, geom, *G._geom_out(h, w, geom), G._abs_max(x), G._abs_max(g))


@fast
@given(case=wgrad_cases())
def test_conv_weight_u8_is_exact(case):
    x, g, w_shape, geom = case
    got = _u8(x, g, w_shape, geom)
    assert got.dtype == torch.int64 and torch.equal(got, _wgrad_float64(x, g, w_shape, geom).to(torch.int64))


@pytest.mark.parametrize("values", ["any", "extremes", "signed"])
@pytest.mark.parametrize("m", [8, 16, 32, 64, 5])
@pytest.mark.parametrize("hw,k,dil,pad,sh", [
    ((28, 28), (3, 3), (1, 1), (1, 1), 1), ((7, 7), (3, 3), (1, 1), (1, 1), 1),
    ((7, 9), (3, 2), (2, 1), (2, 3), 2), ((5, 127), (3, 3), (1, 1), (1, 1), 1),
    ((4, 128), (1, 1), (1, 1), (0, 0), 1), ((3, 129), (1, 1), (1, 1), (0, 0), 1),
    ((3, 126), (1, 3), (1, 2), (0, 2), 1), ((6, 3), (3, 4), (1, 1), (1, 2), 1)])
def test_conv_weight_u8_rows(kernels, hw, k, dil, pad, sh, values, m):
    """Stride 1 along the rows with m a multiple of 8 (the benchmark CNN's layers): the AVX2 path that lays
    each output row's gradient out once and reads zero-padded input rows -- odd and even row lengths up
    to its limit of 128 and one past it (the portable path), padding wider than the kernel reach,
    dilation, any row stride -- and m = 5 (the portable path); every product at the extremes too; both
    builds."""
    gen = torch.Generator().manual_seed(sum(hw) + k[1] + pad[1] + m)
    geom = (k, dil, pad, (sh, 1))
    n, c = 2, 3
    ho, wo = G._geom_out(*hw, geom)
    x, g = _codes((n, c) + hw, values, gen), _codes((n * ho * wo, m), values, gen)
    got = _u8(x, g, (m, c) + k, geom)
    assert torch.equal(got, _wgrad_float64(x, g, (m, c) + k, geom).to(torch.int64))


@pytest.mark.parametrize("n,hw", [(2, 200), (4, 100)])
def test_conv_weight_u8_flushes_int32_partial_sums(kernels, n, hw):
    """More positions than one int32 partial sum holds at x g = 255**2: the result needs int64. A sample
    of 200 x 200 positions is flushed row by row, one of 100 x 100 sample by sample (the AVX2 path)."""
    x = torch.full((n, 1, hw, hw), 255, dtype=torch.int16)
    g = torch.full((n * hw * hw, 8), 255, dtype=torch.int16)
    geom = ((1, 1), (1, 1), (0, 0), (1, 1))
    got = G._conv_weight_u8(x, g, (8, 1, 1, 1), geom, hw, hw, 255, 255)
    assert torch.equal(got, torch.full((8, 1, 1, 1), n * hw * hw * 255 ** 2, dtype=torch.int64))
    assert int(got[0]) > 2 ** 31


def test_qconv2d_weight_takes_the_u8_kernel_with_the_same_result():
    """qconv2d_weight takes the kernel past the float32 bound and gives what the float64 convolution gives
    (the same integers and dtype), as the torch code does with the kernels off."""
    gen = torch.Generator().manual_seed(3)
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    x = _codes((64, 8, 14, 14), "any", gen).contiguous(memory_format=torch.channels_last)
    g = _codes((64 * 14 * 14, 16), "any", gen)
    calls = []
    real = G._conv_weight_u8
    with mock.patch.object(G, "_conv_weight_u8", lambda *a: calls.append(1) or real(*a)):
        a = G.qconv2d_weight(x, g, (16, 8, 3, 3), geom, backend="cpu")
    with torch_code():
        b = G.qconv2d_weight(x, g, (16, 8, 3, 3), geom, backend="cpu")
    assert calls and a.dtype == b.dtype and torch.equal(a, b)


def test_conv_weight_u8_declines_other_operands():
    x, g = torch.ones((1, 1, 4, 4), dtype=torch.int16), torch.ones((16, 2), dtype=torch.int16)
    geom = ((1, 1), (1, 1), (0, 0), (1, 1))
    assert G._conv_weight_u8(x.to(torch.int8), g, (2, 1, 1, 1), geom, 4, 4, 1, 1) is None
    assert G._conv_weight_u8(x, g.to(torch.int32), (2, 1, 1, 1), geom, 4, 4, 1, 1) is None
    assert G._conv_weight_u8(x, g, (2, 1, 1, 1), geom, 4, 4, 256, 1) is None
    assert G._conv_weight_u8(x, g, (2, 1, 1, 1), geom, 4, 4, 1, 256) is None
    with torch_code():
        assert G._conv_weight_u8(x, g, (2, 1, 1, 1), geom, 4, 4, 1, 1) is None
    assert torch.equal(G._conv_weight_u8(x, g, (2, 1, 1, 1), geom, 4, 4, 1, 1),
                       torch.full((2, 1, 1, 1), 16, dtype=torch.int64))


# --------------------------------------------------------------------------- PSQ: slice extrema and the affine SR pass

def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@st.composite
def matrices(draw):
    """float32 matrices with the values gradients have: exact zeros of either sign, ties, tiny and huge
    magnitudes, whole rows/columns of zeros, shapes below, at and past the 8-lane vectors."""
    rows, cols = draw(st.integers(1, 40)), draw(st.sampled_from([1, 3, 7, 8, 9, 16, 24, 31, 64, 100]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    kind = draw(st.sampled_from(["normal", "sparse", "ties", "wide", "signed_zeros"]))
    a = torch.randn((rows, cols), generator=gen)
    if kind == "sparse":
        a = a * (torch.rand((rows, cols), generator=gen) < 0.1)
    elif kind == "ties":
        a = torch.randint(-2, 3, (rows, cols), generator=gen).float()
    elif kind == "wide":
        a = a * torch.exp2(torch.randint(-140, 120, (rows, cols), generator=gen).float())
    elif kind == "signed_zeros":
        a = torch.where(torch.rand((rows, cols), generator=gen) < 0.5, -0.0, 0.0) \
            * (torch.rand((rows, cols), generator=gen) < 0.7)
        a = torch.where(torch.rand((rows, cols), generator=gen) < 0.1, torch.randn((rows, cols), generator=gen), a)
    if draw(st.booleans()):     # a whole row and a whole column of one zero
        z = -0.0 if draw(st.booleans()) else 0.0
        a[draw(st.integers(0, rows - 1))] = z
        a[:, draw(st.integers(0, cols - 1))] = z
    return a


def _check_extrema(a, axis, got):
    dim = 1 if axis == "row" else 0
    mn, mx = a.amin(dim=dim, keepdim=True), a.amax(dim=dim, keepdim=True)
    slices = a if axis == "row" else a.t()
    mixed = [bool((s == 0).all()) and len(set(_bits(s).tolist())) > 1 for s in slices]
    if any(mixed):                    # zeros of both signs in a zero slice: declined
        assert got is None
        return
    assert got is not None
    assert torch.equal(got[0], mn) and torch.equal(got[1], mx)
    const = (mn == mx).reshape(-1)    # a constant slice: its value with its sign, as torch gives it
    assert torch.equal(_bits(got[0]).reshape(-1)[const], _bits(mn).reshape(-1)[const])


@fast
@given(a=matrices(), axis=st.sampled_from(["row", "col"]))
def test_native_extrema_match_torch(a, axis):
    from host.quant.statquant import _native_extrema
    _check_extrema(a, axis, _native_extrema(a, axis))


@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (3, 7), (64, 6272), (64, 12545), (50176, 8), (12544, 16),
                                   (3136, 32), (64, 10), (5, 9)])
@pytest.mark.parametrize("axis", ["row", "col"])
def test_native_extrema_shapes(kernels, shape, axis):
    """The benchmark CNN's gradient shapes and edge shapes, both builds."""
    from host.quant.statquant import _native_extrema
    gen = torch.Generator().manual_seed(shape[0] + shape[1])
    a = torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.5)
    _check_extrema(a, axis, _native_extrema(a, axis))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 5, -1])
@pytest.mark.parametrize("axis", ["row", "col"])
def test_native_extrema_decline_nan_inf(kernels, bad, where, axis):
    from host.quant.statquant import _native_extrema
    a = torch.randn((9, 16))
    a.view(-1)[where] = bad
    assert _native_extrema(a, axis) is None


def test_native_extrema_decline_other_layouts():
    from host.quant.statquant import _native_extrema
    a = torch.randn((8, 16))
    assert _native_extrema(a.t(), "row") is None
    assert _native_extrema(a.double(), "row") is None
    assert _native_extrema(a.reshape(2, 4, 16), "row") is None
    with torch_code():
        assert _native_extrema(a, "row") is None


@fast
@given(a=matrices(), axis=st.sampled_from(["row", "col"]), bits=st.sampled_from([2, 4, 5, 7, 8, 12, 15, 16]),
       seed=st.integers(0, 2 ** 32 - 1), rand_bits=st.sampled_from(nx.RAND_BITS_ALLOWED))
def test_affine_sr_matches_torch(a, axis, bits, seed, rand_bits):
    """The fused (y2 - lo)·scale and SR against the torch passes, with the scale data PSQ computes."""
    from host.quant.statquant import _affine_sr
    dim = 1 if axis == "row" else 0
    B = 2 ** bits - 1
    lo = a.amin(dim=dim, keepdim=True) - 1e-3
    scale = B / (a.amax(dim=dim, keepdim=True) + 1e-3 - lo)
    got = _affine_sr(a, lo, scale, seed, rand_bits, axis, B)
    with torch_code():
        ref = _affine_sr(a, lo, scale, seed, rand_bits, axis, B)
    assert got.dtype == ref.dtype and torch.equal(got, ref)


@pytest.mark.parametrize("shape", [(64, 6272), (50176, 8), (7, 9), (1, 1000)])
@pytest.mark.parametrize("bits,axis", [(4, "row"), (8, "col"), (5, "row"), (8, "row"), (4, "col")])
def test_affine_sr_shapes(kernels, shape, bits, axis):
    """The benchmark CNN's B- and U-path shapes (int8 and int16 codes), both builds; v beyond [0, B] at
    the ends is clamped as the torch code clamps it."""
    from host.quant.statquant import _affine_sr
    gen = torch.Generator().manual_seed(bits + shape[1])
    a = torch.randn(shape, generator=gen)
    dim = 1 if axis == "row" else 0
    B = 2 ** bits - 1
    lo = a.amin(dim=dim, keepdim=True) + 1e-2            # a little inside the range: v < 0 and v > B occur
    scale = B / (a.amax(dim=dim, keepdim=True) - 1e-2 - lo)
    got = _affine_sr(a, lo, scale, 12345, 16, axis, B)
    with torch_code():
        ref = _affine_sr(a, lo, scale, 12345, 16, axis, B)
    assert got.dtype == ref.dtype and torch.equal(got, ref)


def _same_quantized(a, b):
    assert a.codes.dtype == b.codes.dtype and torch.equal(a.codes, b.codes)
    assert a.seed == b.seed and a.method == b.method
    for name in ("step", "offset"):
        assert torch.equal(_bits(getattr(a, name)), _bits(getattr(b, name))), name


@fast
@given(a=matrices(), axis=st.sampled_from(["row", "col"]), bits=st.sampled_from([4, 5, 8]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_psq_matches_torch(a, axis, bits, seed):
    """PSQ with the kernels and with the torch code: the same codes, and step/offset to the bit (the sign
    of a zero offset included)."""
    from host.quant.statquant import psq
    got = psq(a, bits, axis=axis, seed=seed)
    with torch_code():
        ref = psq(a, bits, axis=axis, seed=seed)
    _same_quantized(got, ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_psq_errors_and_generator_match_torch(bad):
    """A NaN/Inf input raises the same error before the seed is drawn (the generator is not advanced)."""
    from host.quant.statquant import psq
    a = torch.randn((6, 16))
    a[2, 3] = bad
    results = []
    for ctx in (mock.patch.dict(os.environ, {}), torch_code()):
        gen = torch.Generator().manual_seed(7)
        with ctx, pytest.raises(ValueError) as e:
            psq(a, 4, axis="col", generator=gen)
        results.append((str(e.value), gen.get_state()))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])


# ------------------------------------------------------------------- B GEMM: zero-points, per-sample scales, col2im

def _dgrad_reference(qw, gb, x_shape, geom):
    """The generic path: matmul's integer GEMM, rescale and zero-point terms, then F.fold (ATen's col2im)."""
    import torch.nn.functional as F
    from host.nn.operand import matmul
    (kh, kw), dil, pad, stride = geom
    n, c, h, w = x_shape
    ho, wo = G._geom_out(h, w, geom)
    rows = matmul(qw.t(), gb.t()).t()
    return F.fold(rows.reshape(n, ho * wo, -1).transpose(1, 2), (h, w), (kh, kw), dilation=dil, padding=pad,
                  stride=stride)


@st.composite
def dgrad_cases(draw, min_n: int = 1):
    from host.nn.operand import Operand
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    geom = ((kh, kw), (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            (draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(1, 3)), draw(st.integers(1, 3))))
    n, c, m = draw(st.integers(min_n, min_n + 2)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 8, 16, 32]))
    h, w = draw(st.integers(kh * 2, 11)), draw(st.integers(kw * 2, 11))
    ho, wo = G._geom_out(h, w, geom)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    gbits = draw(st.sampled_from([4, 5, 8]))
    wq = torch.randint(0, 256, (m, c * kh * kw), generator=gen, dtype=torch.int16)
    gq = torch.randint(0, 2 ** gbits, (n * ho * wo, m), generator=gen, dtype=torch.int8 if gbits < 8 else torch.int16)
    samples = n * ho * wo // draw(st.sampled_from([1, ho * wo]))     # per position or per sample
    per = n * ho * wo // samples
    g_step = (torch.rand((samples, 1), generator=gen) * 1e-3).repeat_interleave(per, dim=0)
    g_off = (torch.randn((samples, 1), generator=gen) * 1e-2).repeat_interleave(per, dim=0)
    if draw(st.booleans()):       # a constant sample: zero offset, PSQ's tiny step
        g_off[:per] = 0.0
        g_step[:per] = 2e-8 / 15
    qw = Operand(wq, scale=torch.rand((), generator=gen) * 1e-2, offset=-torch.rand((), generator=gen) * 1e-1)
    return qw, Operand(gq, scale=g_step, offset=g_off), (n, c, h, w), geom


@fast
@given(case=dgrad_cases(), channels_last=st.booleans())
def test_conv_dgrad_affine_matches_matmul_and_fold(case, channels_last):
    """Any geometry (stride, dilation, padding beyond the kernel's reach), per-position or per-sample
    scales, a constant sample; the result in either layout."""
    from host.nn.fast_stat import conv_dgrad_affine
    qw, gb, x_shape, geom = case
    got = conv_dgrad_affine(qw, gb, x_shape, geom, channels_last)
    ref = _dgrad_reference(qw, gb, x_shape, geom)
    assert got is not None and torch.equal(_bits(got), _bits(ref))
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("c,hw,m", [(8, 14, 16), (16, 7, 32), (3, 9, 8)])
def test_conv_dgrad_affine_benchmark_layers(kernels, c, hw, m):
    """The benchmark CNN's inner layers (3x3, padding 1) with PSQ-like operands, both builds."""
    from host.nn.fast_stat import conv_dgrad_affine
    from host.nn.operand import Operand
    from host.quant.statquant import psq
    gen = torch.Generator().manual_seed(c + hw)
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    n = 4
    g = torch.randn((n * hw * hw, m), generator=gen) * (torch.rand((n * hw * hw, m), generator=gen) < 0.6)
    q = psq(g.reshape(n, -1), 4, axis="row", seed=5)
    gb = Operand(q.codes.reshape(g.shape), scale=q.step.repeat_interleave(hw * hw, dim=0),
                 offset=q.offset.repeat_interleave(hw * hw, dim=0))
    qw = Operand(torch.randint(0, 256, (m, c * 9), generator=gen, dtype=torch.int16),
                 scale=torch.tensor(3e-3), offset=torch.tensor(-0.2))
    got = conv_dgrad_affine(qw, gb, (n, c, hw, hw), geom)
    assert torch.equal(_bits(got), _bits(_dgrad_reference(qw, gb, (n, c, hw, hw), geom)))


def test_conv_dgrad_affine_declines():
    from host.gemm import record_gemms
    from host.nn.fast_stat import conv_dgrad_affine
    from host.nn.operand import Operand
    geom = ((1, 1), (1, 1), (0, 0), (1, 1))
    qw = Operand(torch.ones((2, 3), dtype=torch.int16), scale=torch.tensor(0.5), offset=torch.tensor(-1.0))
    gb = Operand(torch.ones((4, 2), dtype=torch.int8), scale=torch.full((4, 1), 0.25), offset=torch.zeros((4, 1)))
    assert conv_dgrad_affine(qw, gb, (1, 3, 2, 2), geom) is not None
    assert conv_dgrad_affine(Operand(qw.ints, scale=qw.scale), gb, (1, 3, 2, 2), geom) is None     # no offset
    assert conv_dgrad_affine(qw, Operand(gb.ints, scale=torch.tensor(0.25)), (1, 3, 2, 2), geom) is None
    assert conv_dgrad_affine(qw, gb, (1, 3, 2, 3), geom) is None                                    # shapes
    with torch_code():
        assert conv_dgrad_affine(qw, gb, (1, 3, 2, 2), geom) is None
    with record_gemms():
        assert conv_dgrad_affine(qw, gb, (1, 3, 2, 2), geom) is None


# --------------------------------------------------------------------------- U GEMM: zero-point sums over the batch

@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced", "one_sample"])
def test_batch_sum_matches_torch(kernels, dtype, layout):
    """The same integers, shape and strides as torch.sum(dim=0, keepdim=True, dtype=int64), the extremes
    of the dtype included; what the kernel does not take (channels-last, transposed, sliced, int32) goes
    to torch."""
    from host.nn.fast_stat import batch_sum
    gen = torch.Generator().manual_seed(1)
    info = torch.iinfo(dtype)
    t = torch.randint(info.min, info.max, (64, 3, 5, 7), generator=gen, dtype=torch.int64).to(dtype)
    t[:, 0, 0, 0] = info.min
    t[:, 1, 0, 0] = info.max
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = t.transpose(0, 1)
    elif layout == "sliced":
        t = t[:, :, 1:]
    elif layout == "one_sample":
        t = t[:1]
    got, ref = batch_sum(t), t.sum(dim=0, keepdim=True, dtype=torch.int64)
    assert got.dtype == torch.int64 and got.shape == ref.shape and got.stride() == ref.stride()
    assert torch.equal(got, ref)


def test_batch_sum_of_gradient_codes():
    """mask_product's use: the (N, positions, M) view of the U-path codes."""
    from host.nn.fast_stat import batch_sum
    g = torch.randint(0, 256, (64 * 196, 16), dtype=torch.int16).reshape(64, 196, 16)
    assert torch.equal(batch_sum(g), g.sum(dim=0, keepdim=True, dtype=torch.int64))


# --------------------------------------------------------------------------- F GEMM: zero-points on both sides

def _fwd_reference(qx, qw, geom):
    """QuantConv2dFunction's generic zero-point path: matmul with the qconv2d product and _ConvSumsF."""
    from host.gemm import qconv2d
    from host.nn.functional import _ConvSumsF
    from host.nn.operand import matmul
    n, _, h, w = qx.ints.shape
    m = qw.ints.shape[0]
    ho, wo = G._geom_out(h, w, geom)
    qw_mat = qw.map_layout(lambda t: t.reshape(m, -1))
    return matmul(qx, qw_mat.t(), a_shape=(n * ho * wo, qw_mat.shape[1]),
                  product=lambda bs, shift, t, fmt: qconv2d(qx.ints, qw.ints, geom, tag=t, float_out=True),
                  conv_sums=_ConvSumsF(qx.ints, qw.ints, geom))


@st.composite
def fwd_cases(draw):
    from host.nn.operand import Operand
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    geom = ((kh, kw), (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            (draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(1, 3)), draw(st.integers(1, 3))))
    n, c, m = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 3, 8, 16, 32]))
    h, w = draw(st.integers(kh * 2, 11)), draw(st.integers(kw * 2, 11))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    dtype = draw(st.sampled_from([torch.int8, torch.int16]))
    hi = 128 if dtype == torch.int8 else 256
    x = torch.randint(0, hi, (n, c, h, w), generator=gen, dtype=dtype)
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    wq = torch.randint(0, hi, (m, c, kh, kw), generator=gen, dtype=dtype)

    def scalar(scale):
        return (torch.rand((), generator=gen) - 0.5) * scale
    qx = Operand(x, scale=scalar(1e-2).abs(), offset=scalar(1.0))
    qw = Operand(wq, scale=scalar(1e-3).abs(), offset=scalar(0.5))
    return qx, qw, geom


@fast
@given(case=fwd_cases())
def test_conv_forward_affine_matches_matmul(case):
    """Any geometry, int8/int16 codes, contiguous or channels-last activations, offsets of either sign."""
    from host.nn.fast_stat import conv_forward_affine
    qx, qw, geom = case
    got = conv_forward_affine(qx, qw, geom)
    ref = _fwd_reference(qx, qw, geom)
    assert got is not None and got.shape == ref.shape and torch.equal(_bits(got), _bits(ref))


@pytest.mark.parametrize("c,hw,m", [(1, 28, 8), (8, 14, 16), (16, 7, 32)])
def test_conv_forward_affine_benchmark_layers(kernels, c, hw, m):
    """The benchmark CNN's layers with UINT8 codes (the INT8 forward's grid), both builds."""
    from host.nn.fast_stat import conv_forward_affine
    from host.nn.operand import Operand
    gen = torch.Generator().manual_seed(c)
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    x = torch.randint(0, 256, (4, c, hw, hw), generator=gen, dtype=torch.int16)
    x = x.contiguous(memory_format=torch.channels_last)
    qx = Operand(x, scale=torch.tensor(0.013), offset=torch.tensor(-0.37))
    qw = Operand(torch.randint(0, 256, (m, c, 3, 3), generator=gen, dtype=torch.int16),
                 scale=torch.tensor(0.0021), offset=torch.tensor(-0.26))
    assert torch.equal(_bits(conv_forward_affine(qx, qw, geom)), _bits(_fwd_reference(qx, qw, geom)))


def test_conv_forward_affine_declines():
    from host.gemm import record_gemms
    from host.nn.fast_stat import conv_forward_affine
    from host.nn.operand import Operand
    geom = ((1, 1), (1, 1), (0, 0), (1, 1))
    qx = Operand(torch.ones((1, 2, 3, 3), dtype=torch.int16), scale=torch.tensor(0.5), offset=torch.tensor(-1.0))
    qw = Operand(torch.ones((4, 2, 1, 1), dtype=torch.int16), scale=torch.tensor(0.25), offset=torch.tensor(0.5))
    assert conv_forward_affine(qx, qw, geom) is not None
    assert conv_forward_affine(Operand(qx.ints, scale=qx.scale), qw, geom) is None          # no zero-point
    assert conv_forward_affine(Operand(qx.ints.int(), scale=qx.scale, offset=qx.offset), qw, geom) is None
    with torch_code():
        assert conv_forward_affine(qx, qw, geom) is None
    with record_gemms():
        assert conv_forward_affine(qx, qw, geom) is None


# --------------------------------------------------------------------------- the INT8 forward quantizer

@st.composite
def int8_inputs(draw):
    """Weights and activations: signed, non-negative (post-ReLU, z = 0 for weights), all negative,
    constant, values on exact ties of the grid, huge/tiny magnitudes, channels-last."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    shape = draw(st.sampled_from([(7,), (3, 5), (4, 3, 5, 6), (64, 8, 14, 14), (2, 1, 28, 28)]))
    kind = draw(st.sampled_from(["signed", "relu", "negative", "constant", "ties", "wide"]))
    x = torch.randn(shape, generator=gen)
    if kind == "relu":
        x = x.clamp_min(0)
    elif kind == "negative":
        x = -x.abs() - 1e-3
    elif kind == "constant":
        x = torch.full(shape, float(x.reshape(-1)[0]))
    elif kind == "ties":       # multiples of half a step of a range [-1, 1]: round-half-to-even matters
        x = torch.randint(-255, 256, shape, generator=gen).float() / 255.0
    elif kind == "wide":
        x = x * 2.0 ** draw(st.integers(-60, 60))
    if len(shape) == 4 and draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@fast
@given(x=int8_inputs(), zero_aligned=st.booleans())
def test_int8_per_tensor_matches_torch(x, zero_aligned):
    """The same codes (values, dtype and strides), step and offset as the torch passes."""
    from host.quant.forward import int8_per_tensor
    got = int8_per_tensor(x, zero_aligned=zero_aligned)
    with torch_code():
        ref = int8_per_tensor(x, zero_aligned=zero_aligned)
    assert got.codes.dtype == ref.codes.dtype and got.codes.stride() == ref.codes.stride()
    assert torch.equal(got.codes, ref.codes)
    assert torch.equal(_bits(got.step), _bits(ref.step)) and torch.equal(_bits(got.offset), _bits(ref.offset))


@pytest.mark.parametrize("zero_aligned", [True, False])
def test_int8_per_tensor_both_builds(kernels, zero_aligned):
    from host.quant.forward import int8_per_tensor
    x = torch.randn((64, 16, 7, 7), generator=torch.Generator().manual_seed(2))
    got = int8_per_tensor(x, zero_aligned=zero_aligned)
    with torch_code():
        ref = int8_per_tensor(x, zero_aligned=zero_aligned)
    assert torch.equal(got.codes, ref.codes) and torch.equal(_bits(got.step), _bits(ref.step))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_int8_per_tensor_errors_match_torch(bad):
    from host.quant.forward import int8_per_tensor
    x = torch.randn(10)
    x[3] = bad
    msgs = []
    for ctx in (mock.patch.dict(os.environ, {}), torch_code()):
        with ctx, pytest.raises(ValueError) as e:
            int8_per_tensor(x)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


# ------------------------------------------------------------------- BHQ's B path: GEMM, inverse transform, col2im

@fast
@given(case=dgrad_cases(min_n=3), channels_last=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_conv_dgrad_transformed_matches_matmul_post_and_fold(case, channels_last, seed):
    """The generic path -- matmul, BHQ's b_post (T⁻¹ in float64), F.fold -- against the fused one, with
    the transform BHQ builds from random sample ranges (BHQ needs at least 3 samples)."""
    import torch.nn.functional as F
    from host.nn.fast_stat import conv_dgrad_transformed
    from host.nn.operand import matmul
    from host.nn.quantizers import InverseTransform
    from host.quant.statquant import block_householder
    qw, gb, (n, c, h, w), geom = case
    gen = torch.Generator().manual_seed(seed)
    t = block_householder(torch.randn((n, 5), generator=gen) * torch.rand((n, 1), generator=gen) * 10)
    assert t is not None
    post = InverseTransform(t, n)
    (kh, kw), dil, pad, stride = geom
    ho, wo = G._geom_out(h, w, geom)
    rows = post(matmul(qw.t(), gb.t()).t())
    ref = F.fold(rows.reshape(n, ho * wo, -1).transpose(1, 2), (h, w), (kh, kw), dilation=dil, padding=pad,
                 stride=stride)
    got = conv_dgrad_transformed(qw, gb, post, (n, c, h, w), geom, channels_last)
    assert got is not None and torch.equal(_bits(got), _bits(ref))
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_conv_dgrad_transformed_benchmark_layer_both_builds(kernels):
    """conv2 of the benchmark CNN with BHQ's own 5-bit operand and transform."""
    import torch.nn.functional as F
    from host.nn.fast_stat import conv_dgrad_transformed
    from host.nn.operand import Operand, matmul
    from host.nn.quantizers import InverseTransform
    from host.quant.statquant import bhq
    gen = torch.Generator().manual_seed(9)
    n, c, hw, m = 16, 8, 14, 16
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    g = torch.randn((n * hw * hw, m), generator=gen) * torch.rand((n, 1), generator=gen).repeat_interleave(hw * hw, 0)
    q = bhq(g.reshape(n, -1), 5, seed=3)
    assert q.transform is not None
    gb = Operand(q.codes.reshape(g.shape), scale=q.step.reshape(-1, 1).repeat_interleave(hw * hw, dim=0),
                 offset=q.offset.reshape(-1, 1).repeat_interleave(hw * hw, dim=0))
    qw = Operand(torch.randint(0, 256, (m, c * 9), generator=gen, dtype=torch.int16),
                 scale=torch.tensor(3e-3), offset=torch.tensor(-0.2))
    post = InverseTransform(q.transform, n)
    rows = post(matmul(qw.t(), gb.t()).t())
    ref = F.fold(rows.reshape(n, hw * hw, -1).transpose(1, 2), (hw, hw), (3, 3), padding=(1, 1))
    got = conv_dgrad_transformed(qw, gb, post, (n, c, hw, hw), geom)
    assert torch.equal(_bits(got), _bits(ref))
    assert conv_dgrad_transformed(qw, gb, lambda t: t, (n, c, hw, hw), geom) is None     # another b_post


# --------------------------------------------------------------------------- PSQ/BHQ: the per-slice scale data

@fast
@given(data=st.data(), count=st.integers(1, 70), bits=st.sampled_from([2, 4, 5, 8, 16]))
def test_native_params_match_torch(data, count, bits):
    """lo, scale and step from the slice extrema, to the bit: constant slices (±0 included), ranges from
    below the margin to near the float32 limit, and beyond it (declined: the torch code raises)."""
    from host.quant.statquant import _native_params, _params
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
    a = torch.tensor(data.draw(st.lists(floats, min_size=count, max_size=count)), dtype=torch.float32)
    b = torch.tensor(data.draw(st.lists(floats, min_size=count, max_size=count)), dtype=torch.float32)
    const = torch.tensor(data.draw(st.lists(st.booleans(), min_size=count, max_size=count)))
    mn, mx = torch.minimum(a, b), torch.where(const, torch.minimum(a, b), torch.maximum(a, b))
    mn, mx = mn.reshape(-1, 1), mx.reshape(-1, 1)
    y2 = torch.zeros((count, 3))
    B = 2 ** bits - 1
    got = _native_params(y2, (mn, mx), B)
    try:
        ref = _params(y2, (mn, mx), B, "psq", "x")
    except ValueError:
        assert got is None
        return
    assert got is not None
    for g, r in zip(got, ref):
        assert g.shape == r.shape and torch.equal(_bits(g), _bits(r))


@pytest.mark.parametrize("values", [[0.0, 0.0], [-0.0, -0.0], [1e-30, 1e-30], [-3.0, 5.0], [1e-9, 2e-9],
                                    [-3e38, 3e38], [0.1, 0.1 + 2 ** -26]])
def test_native_params_edges(kernels, values):
    from host.quant.statquant import _native_params, _params
    mn, mx = torch.tensor([[values[0]]]), torch.tensor([[values[1]]])
    y2 = torch.zeros((1, 4))
    try:
        ref = _params(y2, (mn, mx), 15, "psq", "x")
    except ValueError:
        assert _native_params(y2, (mn, mx), 15) is None
        return
    for g, r in zip(_native_params(y2, (mn, mx), 15), ref):
        assert torch.equal(_bits(g), _bits(r))


# --------------------------------------------------------------------------- U GEMM: the activation codes' window sums

@fast
@given(case=fwd_cases())
def test_window_sums_match_torch(case):
    """Any geometry, int8/int16 codes (their extremes included), contiguous or channels-last."""
    from host.nn.fast_stat import window_sums
    from host.nn.functional import im2col
    qx, _, geom = case
    x = qx.ints
    x[0, 0, 0, 0] = torch.iinfo(x.dtype).min
    xs = x.sum(dim=0, keepdim=True, dtype=torch.int64)
    ref = im2col(xs, *geom).sum(dim=0, dtype=torch.int64).reshape(-1, 1)
    got = window_sums(x, geom)
    assert got.dtype == ref.dtype and got.shape == ref.shape and torch.equal(got, ref)
    with torch_code():
        assert torch.equal(window_sums(x, geom), ref)


@pytest.mark.parametrize("bits", [8, 13, 14])
@pytest.mark.parametrize("seed", [0, 12345, 2 ** 32 - 1])
def test_affine_sr_int16_on_and_beside_the_thresholds(kernels, bits, seed):
    """int16 codes (the U path's 8-bit grid; 13 bits: the AVX2 form's widest; 14: past it, the other
    form) with v on the 2**-17 grid of the SR thresholds, one float32 ulp either side, and beyond both
    ends of the grid: the same codes as the torch passes."""
    from host.quant.statquant import _affine_sr
    B = 2 ** bits - 1
    k = torch.arange(-2, B + 3, dtype=torch.float64)
    frac = torch.tensor([0.0, 0.5, 2.0 ** -17, 1 - 2.0 ** -17, 0.25 + 2.0 ** -17], dtype=torch.float64)
    v = (k[:, None] + frac[None, :]).reshape(-1).float()
    v = torch.cat([v, torch.nextafter(v, torch.full_like(v, -1e9)), torch.nextafter(v, torch.full_like(v, 1e9))])
    a = v[: v.numel() // 8 * 8].reshape(-1, 8)
    lo, scale = torch.zeros((1, 8)), torch.ones((1, 8))
    got = _affine_sr(a, lo, scale, seed, 16, "col", B)
    with torch_code():
        ref = _affine_sr(a, lo, scale, seed, 16, "col", B)
    assert got.dtype == ref.dtype == torch.int16 and torch.equal(got, ref)


@pytest.mark.parametrize("zero_aligned", [True, False])
@pytest.mark.parametrize("zeros", ["+0", "-0", "mixed"])
def test_int8_per_tensor_channels_last_zero_extremes(zero_aligned, zeros):
    """int8_per_tensor reduces a channels-last tensor in storage order, where a zero extreme may come out
    as the other zero: the codes, step and offset are those of the same values laid out contiguously."""
    from host.quant.forward import int8_per_tensor
    gen = torch.Generator().manual_seed(4)
    x = torch.rand((4, 3, 5, 5), generator=gen) * (torch.rand((4, 3, 5, 5), generator=gen) < 0.5)
    signs = {"+0": 0.0, "-0": -0.0, "mixed": None}[zeros]
    z = torch.where(torch.rand(x.shape, generator=gen) < 0.5, -0.0, 0.0) if signs is None \
        else torch.full(x.shape, signs)
    x = torch.where(x == 0, z, x)
    for t in (x, -x):                            # a zero minimum, then a zero maximum
        a = int8_per_tensor(t.contiguous(memory_format=torch.channels_last), zero_aligned=zero_aligned)
        b = int8_per_tensor(t.contiguous(), zero_aligned=zero_aligned)
        assert torch.equal(a.codes, b.codes)
        assert torch.equal(_bits(a.step), _bits(b.step)) and torch.equal(_bits(a.offset), _bits(b.offset))
