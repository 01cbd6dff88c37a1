"""The fused C kernels (host/quant/native.c) give the torch code's bits exactly, and their absence changes
nothing but speed.

Each comparison runs the same call with the kernels and with ``TETRAD_NATIVE=0`` (the torch code, the
definition) and asserts ``torch.equal`` -- values, dtype and shape -- or the same error.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import host.gemm as G
import host.nn.functional as HF
from host.backends.torch_backend import b_values
from host.nn.operand import Operand, matmul
from hw import numerics as nx
from host import quant as Q
from host.quant import native
from host.quant.core import check_input, check_input_range, sr_codes
from host.quant.luq import _narrow_codes_native, luq, luq_smp
from host.quant.sawb import SIGNED_ACT_GRIDS, WEIGHT_GRIDS
from host.quant.rng import uniform, uniform_torch

fast = settings(max_examples=int(os.environ.get("TEST_EXAMPLES", 80)), deadline=None)


def torch_code():
    """Run the block with the kernels turned off (the golden torch code)."""
    return mock.patch.dict(os.environ, {"TETRAD_NATIVE": "0"})


def both(fn):
    """``(fn() with the kernels, fn() with the torch code)``; an exception is returned, not raised."""
    def run():
        try:
            return fn()
        except (ValueError, TypeError) as e:
            return e
    fast_result = run()
    with torch_code():
        return fast_result, run()


def assert_same(a, b):
    """The same error, or the same codes, seed and scale data."""
    if isinstance(b, Exception):
        assert type(a) is type(b) and str(a) == str(b), (a, b)
        return
    assert not isinstance(a, Exception), a
    assert a.codes.dtype == b.codes.dtype and torch.equal(a.codes, b.codes)
    assert a.seed == b.seed and a.rand_bits == b.rand_bits
    for name in ("alpha", "step", "offset", "scale", "exponents"):
        va, vb = getattr(a, name, None), getattr(b, name, None)
        assert (va is None) == (vb is None) and (va is None or torch.equal(va, vb)), name


def test_kernels_build_here():
    """The suite's machines have a C compiler (make installs g++): the fast path is what runs."""
    assert native.kernels() is not None
    with torch_code():
        assert native.kernels() is None


# --------------------------------------------------------------------------- random stream

@fast
@given(seed=st.integers(0, 2 ** 32 - 1), count=st.integers(1, 3000), offset=st.integers(0, 5000),
       bits=st.sampled_from(nx.RAND_BITS_ALLOWED), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_uniform_matches_torch(seed, count, offset, bits, dtype):
    u = uniform(seed, (count,), bits, offset, dtype=dtype)
    assert u.dtype == dtype and u.shape == (count,)
    assert torch.equal(u, uniform_torch(seed, (count,), bits, offset, dtype=dtype))


@pytest.mark.parametrize("bits", nx.RAND_BITS_ALLOWED)
def test_uniform_end_of_stream_and_shapes(bits):
    per_word = 64 // bits
    last = nx.RNG_MAX_WORDS * per_word
    for shape, offset in [((3, 5, 7), last - 105), ((2, 1), last - 2), ((4096,), 12345)]:
        assert torch.equal(uniform(77, shape, bits, offset), uniform_torch(77, shape, bits, offset))
    for bad in [dict(seed=77, offset=last - 1, shape=(2,)), dict(seed=2 ** 32, offset=0, shape=(2,)),
                dict(seed=-1, offset=0, shape=(2,)), dict(seed=1, offset=-1, shape=(2,))]:
        a, b = both(lambda: uniform(bad["seed"], bad["shape"], bits, bad["offset"]))
        assert isinstance(b, ValueError) and type(a) is type(b) and str(a) == str(b)
    a, b = both(lambda: uniform(1, (2,), 5))
    assert isinstance(b, ValueError) and str(a) == str(b)


# --------------------------------------------------------------------------- LUQ

special = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1.5, -3.0, 6.0, 96.0, 1e-45, -1e-40, 1.17e-38,
                           3.4e38, -3.4e38, 2.0 ** -126, 1e-30, 65504.0])
elements = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.floats(-200, 200, width=32) | special
tensors32 = hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=12), elements=elements)


@fast
@given(x=tensors32, max_exp=st.sampled_from([6, 7]), mode=st.sampled_from(["float", "pow2"]),
       rounding=st.sampled_from(["sr", "rdn"]), underflow=st.sampled_from([None, "nearest", "flush"]),
       seed=st.integers(0, 2 ** 32 - 1), bits=st.sampled_from(nx.RAND_BITS_ALLOWED),
       offset=st.integers(0, 40))
def test_luq_matches_torch(x, max_exp, mode, rounding, underflow, seed, bits, offset):
    t = torch.from_numpy(x)
    kw = dict(max_exp=max_exp, alpha_mode=mode, rounding=rounding)
    if rounding == "sr":        # SR underflow is stochastic: no underflow option
        kw.update(seed=seed, rand_bits=bits, draw_offset=offset)
    else:
        kw.update(underflow=underflow)
    assert_same(*both(lambda: luq(t, **kw)))


@fast
@given(x=tensors32, samples=st.integers(1, 3), seed=st.integers(0, 2 ** 32 - 1),
       bits=st.sampled_from(nx.RAND_BITS_ALLOWED))
def test_luq_smp_matches_torch(x, samples, seed, bits):
    t = torch.from_numpy(x)
    assert_same(*both(lambda: luq_smp(t, samples, seed=seed, rand_bits=bits)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_luq_errors_match_torch(bad):
    x = torch.tensor([1.0, bad, -2.0])
    a, b = both(lambda: luq(x, seed=3))
    assert isinstance(b, ValueError) and type(a) is type(b) and str(a) == str(b)
    for kw in [dict(seed=2 ** 32), dict(seed=1, rand_bits=5), dict(seed=1, draw_offset=-1),
               dict(seed=1, draw_offset=nx.RNG_MAX_WORDS * 4 - 1)]:
        a, b = both(lambda: luq(torch.ones(3), **kw))
        assert isinstance(b, ValueError) and type(a) is type(b) and str(a) == str(b), kw


def test_luq_generator_draws_the_same_seed():
    x = torch.linspace(-3, 5, 101)
    a = luq(x, generator=torch.Generator().manual_seed(5))
    with torch_code():
        b = luq(x, generator=torch.Generator().manual_seed(5))
    assert_same(a, b)


@pytest.mark.parametrize("alpha_max", [64.0, 48.0, 40.1])
@pytest.mark.parametrize("rounding", ["sr", "rdn"])
@pytest.mark.parametrize("n", [4000, 1029])
def test_luq_threshold_elements_match_torch(alpha_max, rounding, n, baseline_kernels):
    """Elements on or next to an SR threshold ``alpha * 2**k * (2 - u)`` / ``alpha * (1 - u)``: the kernel
    hands them to the exact re-decision, which must see (and fix) some of them."""
    seed = 11
    alpha = alpha_max / 64                                   # max_exp 6, float alpha: max|x| / 64
    u = torch.full((n,), 0.5, dtype=torch.float64) if rounding == "rdn" else \
        uniform_torch(seed, (n,), dtype=torch.float64)
    k = torch.arange(n) % 7
    lead = torch.where(k == 0, 1.0, 2.0).double()
    thr = alpha * torch.exp2((k - 1).clamp(min=0).double()) * (lead - u)
    x = thr.float()
    x = torch.where(torch.arange(n) % 3 == 1, torch.nextafter(x, torch.tensor(0.0)), x)
    x = torch.where(torch.arange(n) % 3 == 2, torch.nextafter(x, torch.tensor(1e9)), x)
    x = torch.where(torch.arange(n) % 2 == 0, -x, x)
    x[0] = alpha_max
    kw = dict(seed=seed) if rounding == "sr" else dict(rounding="rdn")
    assert_same(*both(lambda: luq(x, **kw)))
    q = luq(x, **kw)
    for lib in (native.kernels(), baseline_kernels):    # (blocks of 1024 draws, a tail of 5)
        codes = _narrow_codes_native(lib, x, q.alpha, seed if rounding == "sr" else None, 16, 0)
        assert torch.equal(codes, q.codes)
    # (the buffers are named: a temporary's memory would be freed before the kernel writes to it)
    out, amb, amb_u = torch.empty(n, dtype=torch.int8), torch.empty(n, dtype=torch.int64), torch.empty(n)
    count = native.kernels().tetrad_luq_codes_f32(x.data_ptr(), n, float(q.alpha), seed, 0, 16,
                                                  rounding == "rdn", out.data_ptr(), amb.data_ptr(),
                                                  amb_u.data_ptr())
    assert count > n // 40
    if alpha_max != 64.0:   # an inexact quotient rounded onto the threshold from below: decided down
        idx = amb[:count]
        assert (q.codes.view(-1)[idx].abs() < out[idx]).any()


# --------------------------------------------------------------------------- stochastic rounding to codes

@fast
@given(v=hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=40),
                    elements=st.floats(-3e4, 3e4, width=32) | st.floats(-9, 9, width=32) | special),
       seed=st.integers(0, 2 ** 32 - 1), bits=st.sampled_from(nx.RAND_BITS_ALLOWED),
       grid=st.sampled_from([(-7, 7), (-8, 7), (0, 15), (0, 255), (-127, 127), (-32767, 32767)]))
def test_sr_codes_matches_torch(v, seed, bits, grid):
    t = torch.from_numpy(v)
    a, b = both(lambda: sr_codes(t, seed, bits, *grid))
    assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.fixture(scope="module")
def baseline_kernels(tmp_path_factory):
    """The kernels built without the AVX2 clones (what a CPU without AVX2 runs)."""
    cache = tmp_path_factory.mktemp("baseline")
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE_CACHE": str(cache)}):
        return native._load(native._build(("TETRAD_NO_VECTOR_CLONES",)))


@fast
@given(v=hnp.arrays(np.float32, st.integers(1, 3000),
                    elements=st.floats(-3e4, 3e4, width=32) | st.floats(-9, 9, width=32) | special),
       seed=st.integers(0, 2 ** 32 - 1), bits=st.sampled_from(nx.RAND_BITS_ALLOWED),
       grid=st.sampled_from([(-7, 7), (0, 15), (-127, 127), (-32767, 32767)]))
def test_sr_codes_baseline_build_matches_torch(baseline_kernels, v, seed, bits, grid):
    t = torch.from_numpy(v)
    with torch_code():
        want = sr_codes(t, seed, bits, *grid)
    got = torch.empty_like(want)
    baseline_kernels.tetrad_sr_codes_f32(t.data_ptr(), t.numel(), seed, 0, bits, *grid, want.element_size(),
                                         got.data_ptr())
    assert torch.equal(got, want)


@fast
@given(seed=st.integers(0, 2 ** 32 - 1), bits=st.sampled_from(nx.RAND_BITS_ALLOWED),
       grid=st.sampled_from([(-7, 7), (-8, 7), (0, 15), (-127, 127), (-128, 127), (0, 127)]),
       offset=st.integers(0, 4100), n=st.integers(1, 2100), scale=st.sampled_from([1.0, 2.0 ** -20, 1e-40]),
       data=st.data())
def test_sr_codes_int8_on_and_beside_the_thresholds(baseline_kernels, seed, bits, grid, offset, n, scale, data):
    """int8 codes: the kernels' integer form of SR, (floor(v * 2**(bits+1)) + m) >> (bits+1), the AVX2
    draws and the fused AVX2 pass (16-bit draws from a word boundary), against
    stochastic_round(v, u).clamp(lo, hi) with the uniforms of draws ``offset ..``, for v on
    and one float32 step beside k - u (where v + u is an integer), k up to past both ends of the grid
    (the clamp of v to [lo - 1, hi + 1]), scaled down to tiny and subnormal v; both builds."""
    lo, hi = grid
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31)))
    for off in (offset, offset - offset % 4):      # and from a word boundary (the fused AVX2 draws)
        k = torch.randint(lo - 3, hi + 4, (n,), generator=g, dtype=torch.float64)
        u64 = uniform_torch(seed, (n,), bits, off, dtype=torch.float64)
        v = ((k - u64) * scale).to(torch.float32)
        step = torch.randint(-1, 2, (n,), generator=g)
        v = torch.where(step < 0, torch.nextafter(v, torch.tensor(-np.inf)),
                        torch.where(step > 0, torch.nextafter(v, torch.tensor(np.inf)), v))
        with torch_code():
            want = Q.stochastic_round(v, uniform(seed, (n,), bits, off, dtype=torch.float32)).clamp_(lo, hi)
        want = want.to(torch.int8)
        for lib in (native.kernels(), baseline_kernels):
            got = torch.empty(n, dtype=torch.int8)
            lib.tetrad_sr_codes_f32(v.data_ptr(), n, seed, off, bits, lo, hi, 1, got.data_ptr())
            assert torch.equal(got, want)


@fast
@given(c=hnp.arrays(np.int8, st.tuples(st.integers(1, 70), st.integers(1, 70)), elements=st.integers(-8, 8)),
       narrow=st.booleans(), layout=st.sampled_from(["contiguous", "transposed", "strided"]))
def test_log_b_values_match_torch(c, narrow, layout):
    """b_values of LOG codes: the int8 table lookup of tetrad_log_values_i8 (|c| <= 7; whole 32-code AVX2
    blocks and the scalar tail) and the torch lookup it replaces, for contiguous, transposed and strided
    code tensors; codes of magnitude 8 (int16 values) and out-of-range codes keep the torch path's result
    and error."""
    t = torch.from_numpy(c)
    if narrow:
        t = t.clamp(-7, 7)
    t = {"contiguous": t, "transposed": t.t(), "strided": t[:, ::2]}[layout]
    a, b = both(lambda: b_values(t, "log", None))
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    bad = t.clone()
    bad[0, 0] = 9
    a, b = both(lambda: b_values(bad, "log", None))
    assert isinstance(b, ValueError) and str(a) == str(b)


grads = hnp.arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24)),
                   elements=st.floats(-1e3, 1e3, width=32) | st.floats(width=32, allow_nan=False,
                                                                        allow_infinity=False) | special)


@fast
@given(g=grads, seed=st.integers(0, 2 ** 32 - 1), bits=st.sampled_from(nx.RAND_BITS_ALLOWED),
       which=st.sampled_from(["shiftquant-row", "shiftquant-col", "int_sr", "lbt", "ptq", "psq-row", "psq-col",
                              "bhq", "psq8-col", "lbt-transposed", "shiftquant-transposed"]))
def test_sr_quantizers_match_torch(g, seed, bits, which):
    """Every quantizer whose SR goes through sr_codes, whole (codes, seed, scales, errors)."""
    t = torch.from_numpy(g)
    calls = {
        "shiftquant-row": lambda: Q.shiftquant(t, 4, axis="row", e_max=3, rounding="sr", seed=seed, rand_bits=bits),
        "shiftquant-col": lambda: Q.shiftquant(t, 4, axis="col", e_max=3, rounding="sr", seed=seed, rand_bits=bits),
        "int_sr": lambda: Q.shiftquant(t, 8, axis="row", e_max=0, rounding="sr", seed=seed, rand_bits=bits),
        "lbt": lambda: Q.lbt(t, 4, gamma=0.5, seed=seed, rand_bits=bits),
        "lbt-transposed": lambda: Q.lbt(t.t(), 4, gamma=0.5, seed=seed, rand_bits=bits),
        "shiftquant-transposed": lambda: Q.shiftquant(t.t(), 4, axis="row", e_max=3, seed=seed, rand_bits=bits),
        "ptq": lambda: Q.ptq(t, 4, seed=seed, rand_bits=bits),
        "psq-row": lambda: Q.psq(t, 4, axis="row", seed=seed, rand_bits=bits),
        "psq-col": lambda: Q.psq(t, 4, axis="col", seed=seed, rand_bits=bits),
        "psq8-col": lambda: Q.psq(t, 8, axis="col", seed=seed, rand_bits=bits),
        "bhq": lambda: Q.bhq(t, 5, seed=seed, rand_bits=bits),
    }
    assert_same(*both(calls[which]))


@pytest.mark.parametrize("shape", [(3000, 8), (50, 77), (7, 1500), (1, 2049), (2049, 1), (64, 8, 5, 7)])
@pytest.mark.parametrize("e_max,axis,bits", [(0, "row", 8), (3, "row", 4), (3, "col", 4), (2, "col", 12),
                                             (15, "row", 16)])
def test_shiftquant_scaled_sr_kernel_matches_torch(shape, e_max, axis, bits, baseline_kernels, monkeypatch):
    """ShiftQuant's channel maxima and exponents (tetrad_sq_shift_channels_f32) and fused multiply-and-round
    (tetrad_sr_scaled_codes_f32): per-row, per-column and
    one multiplier, rows and draw blocks (1024) crossing each other, int8 and int16 codes, zeros, -0.0,
    whole channels of zeros, a wide spread of channel magnitudes; both builds."""
    g = torch.Generator().manual_seed(sum(shape) + e_max)
    t = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-20, 20, shape, generator=g).float())
    t.view(-1)[::9] = 0.0
    t.view(-1)[4::13] = -0.0
    t.reshape(shape[0], -1)[:, 0] = 0.0 if axis == "col" else t.reshape(shape[0], -1)[:, 0]
    t[0] = 0.0
    assert_same(*both(lambda: Q.shiftquant(t, bits, axis=axis, e_max=e_max, rounding="rdn")))   # maxima only
    for rb in nx.RAND_BITS_ALLOWED:
        call = lambda: Q.shiftquant(t, bits, axis=axis, e_max=e_max, rounding="sr", seed=12345, rand_bits=rb)
        assert_same(*both(call))
        monkeypatch.setattr(native, "kernels", lambda: baseline_kernels)
        fast_result = call()
        monkeypatch.undo()
        with torch_code():
            assert_same(fast_result, call())


@st.composite
def channel_maxima(draw):
    """Per-channel maxima as ShiftQuant sees them: zeros, subnormals, the largest floats, and channels that
    are r / 2**k exactly (the exponent boundaries) or one ulp either side of them."""
    n = draw(st.integers(1, 70))
    mags = draw(hnp.arrays(np.float32, n, elements=st.floats(0, width=32, allow_nan=False,
                                                                 allow_infinity=False)))
    r = torch.from_numpy(mags.copy())
    if draw(st.booleans()):
        top = float(r.max()) or 1.0
        k = torch.from_numpy(draw(hnp.arrays(np.int32, n, elements=st.integers(0, 20)))).float()
        ulp = torch.from_numpy(draw(hnp.arrays(np.int32, n, elements=st.integers(-1, 1))))
        r = torch.ldexp(torch.full((n,), top), -k).float()
        r = (r.view(torch.int32) + ulp).view(torch.float32).clamp(min=0.0)
        r = r.nan_to_num(posinf=torch.finfo(torch.float32).max)
        r[0] = top
    return r


@fast
@given(r=channel_maxima(), e_max=st.integers(0, 15), build=st.sampled_from(["native", "baseline"]))
def test_shift_exponents_kernel_matches_torch(r, e_max, build, baseline_kernels):
    """channel_exponents in one pass (tetrad_shift_exponents_f32) gives the torch code's int8 exponents:
    ties at the exponent boundaries, zero channels, subnormal and overflowing r_i * 2**k; both builds."""
    with torch_code():
        want = Q.channel_exponents(r, e_max)
    lib = native.kernels() if build == "native" else baseline_kernels
    with mock.patch.object(native, "kernels", lambda: lib):
        got = Q.channel_exponents(r, e_max)
    assert got.dtype == want.dtype == torch.int8 and torch.equal(got, want)


@fast
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), data=st.data(), e_max=st.integers(1, 15),
       axis=st.sampled_from([0, 1]), build=st.sampled_from(["native", "baseline"]))
def test_shift_channels_kernel_matches_torch(rows, cols, data, e_max, axis, build, baseline_kernels):
    """ShiftQuant's steps 1-2 in one call (tetrad_sq_shift_channels_f32): the channel maxima, r and the
    exponents of the torch code (a.abs().amax, max, channel_exponents): +-0, whole zero channels, an
    all-zero matrix, subnormals and the largest floats; per row and per column, both builds."""
    a = torch.from_numpy(data.draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(
        width=32, allow_nan=False, allow_infinity=False))).copy())
    if data.draw(st.booleans()):
        a[:, data.draw(st.integers(0, cols - 1))] = -0.0
    if data.draw(st.booleans()):
        a.zero_()
    r_want = a.abs().amax(dim=1 - axis)
    with torch_code():
        e_want = Q.channel_exponents(r_want, e_max)
    lib = native.kernels() if build == "native" else baseline_kernels
    r_ch, e = torch.empty(r_want.shape), torch.full(r_want.shape, -1, dtype=torch.int8)
    r = lib.tetrad_sq_shift_channels_f32(a.data_ptr(), rows, cols, axis, e_max, r_ch.data_ptr(), e.data_ptr())
    assert r == float(r_want.max())
    assert torch.equal(r_ch.view(torch.int32), r_want.view(torch.int32))      # bits, the sign of 0 included
    assert torch.equal(e, e_want)


@fast
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6)),
       zeros=st.floats(0, 1), layout=st.sampled_from(["nchw", "cl"]),
       build=st.sampled_from(["native", "baseline"]), seed=st.integers(0, 2 ** 16))
def test_l1_sign_sum_gives_the_sign_mean(shape, zeros, layout, build, seed, baseline_kernels):
    """The L1 backward's mean of sign(yhat) from the prep kernel's integer sums (no sign tensor):
    sgn_sum / n is torch.sign(yhat).mean(...) bit for bit (+-0 and whole channels of zeros included)."""
    import host.quant.l1norm as L
    g = torch.Generator().manual_seed(seed)
    yhat = torch.randn(shape, generator=g)
    yhat[torch.rand(shape, generator=g) < zeros] = 0.0
    yhat[torch.rand(shape, generator=g) < zeros / 2] = -0.0
    if layout == "cl":
        yhat = yhat.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last if layout == "cl"
                                                    else torch.contiguous_format)
    lay = L._native_layout(yhat, (0, 2, 3))
    lib = native.kernels() if build == "native" else baseline_kernels
    gy, sgn_sum = torch.empty_like(yhat), torch.empty(shape[1], dtype=torch.int64)
    lib.tetrad_l1_bwd_prep_f32(dy.data_ptr(), yhat.data_ptr(), *lay, None, None, gy.data_ptr(),
                               sgn_sum.data_ptr(), None)
    got = sgn_sum.to(torch.float32).reshape(1, -1, 1, 1).div_(lay[0] * lay[2])
    want = torch.sign(yhat).mean((0, 2, 3), keepdim=True)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.equal(gy, dy * yhat)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_l1_forward_finiteness_test_matches_the_input_check(bad, layout, baseline_kernels, monkeypatch):
    """The fused L1 forward tests x for NaN/Inf in its |x - mu| pass instead of the input check's
    reduction: the same error (with the count) as the torch code; the largest finite floats pass."""
    x = torch.randn(4, 3, 5, 6)
    x.view(-1)[[7, 100]] = bad
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(3), torch.randn(3)

    def call(x):
        try:
            return Q.l1_batch_norm(x, None, None, w, b, training=True)
        except ValueError as e:
            return e
    for lib in (native.kernels(), baseline_kernels):
        monkeypatch.setattr(native, "kernels", lambda: lib)
        fast_err = call(x)
        monkeypatch.undo()
        with torch_code():
            want = call(x)
        assert isinstance(want, ValueError) and "2 NaN/Inf" in str(want)
        assert type(fast_err) is type(want) and str(fast_err) == str(want)
        big = torch.full(x.shape, 3.4e38)
        big.view(-1)[::2] = -3.4e38
        big = big.contiguous(memory_format=torch.channels_last if layout == "cl" else torch.contiguous_format)
        monkeypatch.setattr(native, "kernels", lambda: lib)
        assert not isinstance(call(big), Exception)
        monkeypatch.undo()


# --------------------------------------------------------------------------- input range reuse

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_check_input_range_is_the_range_of_the_checked_tensor(dtype):
    """The quantizers take min/max from the input check instead of a second reduction: the same values."""
    x = torch.tensor([[-0.0, 3.5, -7.25], [1e-3, -1e-3, 0.0]], dtype=dtype)
    xc, lo, hi = check_input_range(x, "q")
    assert torch.equal(xc, check_input(x, "q")) and xc.dtype == check_input(x, "q").dtype
    want = torch.aminmax(xc)
    assert (lo, hi) == (float(want[0]), float(want[1])) == (-7.25, 3.5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="1 NaN/Inf"):
            check_input_range(torch.tensor([1.0, bad], dtype=dtype), "q")


# --------------------------------------------------------------------------- int8 weight-gradient convolution

def _wgrad_float64(x, g, w_shape, geom):
    """The float64 weight-gradient convolution that qconv2d_weight runs without the kernel (exact)."""
    (kh, kw), dil, pad, st = geom
    n, _, h, w = x.shape
    ho, wo = G._geom_out(h, w, geom)
    gf = g.double().reshape(n, ho, wo, -1).permute(0, 3, 1, 2)
    return torch.ops.aten.convolution_backward(gf, x.double(), torch.zeros(w_shape, dtype=torch.float64), None,
                                               list(st), list(pad), list(dil), False, [0, 0], 1,
                                               [False, True, False])[1]


@st.composite
def wgrad_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    geom = ((kh, kw), (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            (draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(1, 3)), draw(st.integers(1, 3))))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh * 2, 11)), draw(st.integers(kw * 2, 11))
    m = draw(st.sampled_from([1, 3, 8, 16, 32, 64, 65]))
    ho, wo = G._geom_out(h, w, geom)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    values = draw(st.sampled_from(["any", "extremes", "sparse"]))

    def codes(shape):
        if values == "extremes":        # every product at +-2**14 or 127**2: the largest partial sums
            return torch.tensor([-128, 127], dtype=torch.int8)[torch.randint(0, 2, shape, generator=gen)]
        t = torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)
        return t if values == "any" else t * (torch.rand(shape, generator=gen) < 0.2)
    return codes((n, c, h, w)), codes((n * ho * wo, m)), (m, c, kh, kw), geom


@fast
@given(case=wgrad_cases())
def test_conv_weight_i8_is_exact(case):
    x, g, w_shape, geom = case
    n, _, h, w = x.shape
    got = G._conv_weight_i8(x, g, w_shape, geom, *G._geom_out(h, w, geom))
    if w_shape[0] > G._WGRAD_I8_MAX_M:
        assert got is None
        return
    assert got.dtype == torch.int64 and torch.equal(got, _wgrad_float64(x, g, w_shape, geom).to(torch.int64))


@pytest.mark.parametrize("values", ["any", "extremes"])
@pytest.mark.parametrize("hw,k,dil,pad,sh", [
    ((28, 28), (3, 3), (1, 1), (1, 1), 1), ((7, 9), (3, 2), (2, 1), (2, 3), 2),
    ((5, 255), (3, 3), (1, 1), (1, 1), 1), ((4, 256), (1, 1), (1, 1), (0, 0), 1),
    ((3, 254), (1, 3), (1, 2), (0, 2), 1), ((3, 257), (1, 1), (1, 1), (0, 0), 1),
    ((6, 3), (3, 4), (1, 1), (1, 2), 1)])
def test_conv_weight_i8_rows_of_eight_channels(hw, k, dil, pad, sh, values):
    """m = 8 with stride 1 along the rows (the INT8 edge layer's case): the AVX2 path that converts each
    output row's gradient once and reads zero-padded input rows, odd and even row lengths up to its limit
    of 256 and one past it (the per-term path), padding wider than the kernel reach, dilation, any row
    stride; every product at the extremes too."""
    gen = torch.Generator().manual_seed(sum(hw) + k[1] + pad[1])
    geom = (k, dil, pad, (sh, 1))
    n, c = 2, 3
    ho, wo = G._geom_out(*hw, geom)
    shapes = ((n, c) + hw, (n * ho * wo, 8))
    if values == "extremes":
        x, g = (torch.tensor([-128, 127], dtype=torch.int8)[torch.randint(0, 2, s, generator=gen)] for s in shapes)
    else:
        x, g = (torch.randint(-128, 128, s, generator=gen, dtype=torch.int8) for s in shapes)
    got = G._conv_weight_i8(x, g, (8, c) + k, geom, ho, wo)
    assert torch.equal(got, _wgrad_float64(x, g, (8, c) + k, geom).to(torch.int64))


def test_conv_weight_i8_flushes_int32_partial_sums():
    """More positions than one int32 partial sum holds at |x g| = 2**14: the result needs int64."""
    x = torch.full((3, 1, 256, 256), -128, dtype=torch.int8)
    g = torch.full((3 * 256 * 256, 8), -128, dtype=torch.int8)
    geom = ((1, 1), (1, 1), (0, 0), (1, 1))
    got = G._conv_weight_i8(x, g, (8, 1, 1, 1), geom, 256, 256)
    assert torch.equal(got, torch.full((8, 1, 1, 1), 3 * 256 * 256 * 2 ** 14, dtype=torch.int64))
    assert int(got[0]) > 2 ** 31
    # qconv2d_weight takes the kernel past the float32 bound, and gives what the float64 convolution gives
    x[0, 0, 0, :7] = torch.tensor([5, -3, 0, 127, -128, 1, 9], dtype=torch.int8)
    a, b = both(lambda: G.qconv2d_weight(x, g, (8, 1, 1, 1), geom, backend="cpu"))
    assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)


def test_conv_weight_i8_declines_other_operands():
    x, g = torch.ones((1, 1, 4, 4), dtype=torch.int8), torch.ones((16, 2), dtype=torch.int8)
    geom = ((1, 1), (1, 1), (0, 0), (1, 1))
    assert G._conv_weight_i8(x.to(torch.int16), g, (2, 1, 1, 1), geom, 4, 4) is None
    assert G._conv_weight_i8(x, g.to(torch.int32), (2, 1, 1, 1), geom, 4, 4) is None
    with torch_code():
        assert G._conv_weight_i8(x, g, (2, 1, 1, 1), geom, 4, 4) is None
    assert torch.equal(G._conv_weight_i8(x, g, (2, 1, 1, 1), geom, 4, 4),
                       torch.full((2, 1, 1, 1), 16, dtype=torch.int64))


# --------------------------------------------------------------------------- SAWB codes

@fast
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=12),
                    elements=st.floats(-3e4, 3e4, width=32) | st.floats(-9, 9, width=32)
                    | st.floats(width=32, allow_nan=False, allow_infinity=False) | special),
       kind=st.sampled_from(["weight", "activation"]), wgrid=st.sampled_from(WEIGHT_GRIDS),
       agrid=st.sampled_from(SIGNED_ACT_GRIDS), neg=st.booleans(),
       bits=st.sampled_from([2, 3, 4, 5, 7, 8]), coeffs=st.sampled_from(["ref", "alt", (3.0, 1.0), (12.1, 12.2)]))
def test_sawb_matches_torch(x, kind, wgrid, agrid, neg, bits, coeffs):
    t = torch.from_numpy(x)
    if isinstance(coeffs, str) and bits != 4:
        coeffs = (12.1, 12.2)
    a, b = both(lambda: Q.sawb(t, bits, kind=kind, coeffs=coeffs, weight_grid=wgrid, seen_negative=neg,
                               signed_act_grid=agrid))
    assert_same(a, b)


@pytest.mark.parametrize("values", [
    [0.0, -0.0, 0.0], [1.5, -1.5, 2.5, -2.5, 0.5, -0.5, 3.5],      # ties of the rounding after an exact divide
    [3.4e38, -3.4e38, 1.0], [1e-45, -1e-45, 0.0], [7.0, -7.0] * 5, list(range(-40, 41))])
def test_sawb_edge_values_match_torch(values):
    t = torch.tensor(values, dtype=torch.float32)
    for kind in ("weight", "activation"):
        a, b = both(lambda: Q.sawb(t, 4, kind=kind))
        assert_same(a, b)
    # a strided (non-contiguous) input
    t2 = torch.tensor(values * 2, dtype=torch.float32).reshape(2, -1).t()
    a, b = both(lambda: Q.sawb(t2, 4))
    assert_same(a, b)


@pytest.mark.parametrize("shape", [(64, 8, 14, 14), (3, 5, 4, 7), (2, 1, 5, 5), (4, 6, 1, 1)])
def test_sawb_channels_last_codes_match_torch(shape):
    """A channels-last input (a convolution's, after a pooled channels-last layer) is read in place and
    its codes are channels-last, as the torch passes give them: the same values and the same strides."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).clamp_min(0).contiguous(memory_format=torch.channels_last)
    x.permute(0, 2, 3, 1).view(-1)[::13] = 2.5
    for kind in ("activation", "weight"):
        a, b = both(lambda: Q.sawb(x, 4, kind=kind))
        assert_same(a, b)
        assert a.codes.stride() == b.codes.stride()


@pytest.mark.parametrize("bits", [2, 4, 8, 9])
@pytest.mark.parametrize("case", ["randn", "ties", "extremes", "zeros", "tiny", "channels_last", "given-scale",
                                  "strided"])
def test_int_symmetric_and_unsigned_match_torch(bits, case):
    """The per-tensor multiply-round-clamp pass (tetrad_mulround_codes_f32) of int_symmetric and
    int_unsigned: the torch passes' codes, step and layout -- ties after the multiply (half to even),
    saturation, all-zero and subnormal tensors, channels-last and strided inputs, a given scale."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn((6, 5, 7, 3), generator=g) * 3
    kw = {}
    if case == "ties":
        x = (torch.randint(-40, 41, (6, 5, 7, 3), generator=g).float() + 0.5) / 4
        x.view(-1)[0] = 10.125           # max|x|: inv = q_max / 10.125
        kw = {"scale": 0.25} if bits < 9 else {}
    elif case == "extremes":
        x.view(-1)[:4] = torch.tensor([3.4e38, -3.4e38, 1e-45, -1e-45])
    elif case == "zeros":
        x = torch.zeros_like(x)
        x.view(-1)[1::2] = -0.0
    elif case == "tiny":
        x = x * 1e-41
    elif case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case == "given-scale":
        kw = {"scale": torch.tensor(0.37)}
    elif case == "strided":
        x = x.transpose(1, 3)
    a, b = both(lambda: Q.int_symmetric(x, bits, **kw))
    assert_same(a, b)
    if not isinstance(a, Exception):
        assert a.codes.stride() == b.codes.stride()
    if bits < 9:
        xu = x.abs()
        a, b = both(lambda: Q.int_unsigned(xu, bits - 1 if bits > 7 else bits))
        assert_same(a, b)
        assert a.codes.stride() == b.codes.stride()


def test_check_input_channels_last_finiteness():
    """check_input reduces a channels-last tensor in storage order: NaN/Inf still raise, anywhere."""
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert check_input(x, "q") is x
    for bad in (float("nan"), float("inf"), -float("inf")):
        for idx in ((0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 0)):
            y = x.clone()
            y[idx] = bad
            with pytest.raises(ValueError, match="NaN/Inf"):
                check_input(y, "q")


def test_abs_max_channels_last_ints():
    x = torch.randint(-100, 101, (3, 5, 4, 6), dtype=torch.int8)
    x[1, 2, 3, 4] = -128
    assert G._abs_max(x.contiguous(memory_format=torch.channels_last)) == G._abs_max(x) == 128


def test_sawb_kernel_rounds_half_to_even_like_torch(baseline_kernels):
    """Every quotient on and next to the half-integers of the codes' range, both builds."""
    q = torch.arange(-300, 301, dtype=torch.float32) / 2
    x = torch.cat([q, torch.nextafter(q, torch.tensor(1e9)), torch.nextafter(q, torch.tensor(-1e9))])
    for qn, qp in ((-7, 7), (0, 15), (-8, 15), (-128, 127)):
        want = torch.div(x, 1.0).clamp_(qn, qp).round_().to(torch.int8)
        for lib in (native.kernels(), baseline_kernels):
            got = torch.empty_like(want)
            lib.tetrad_sawb_codes_f32(x.data_ptr(), x.numel(), 1.0, qn, qp, got.data_ptr())
            assert torch.equal(got, want)


# --------------------------------------------------------------------------- convolution B GEMM + col2im

def _dgrad_reference(qw, gb, x_shape, geom):
    """The definition: the B GEMM through ``matmul`` (exact integers, float32 rescale) folded by ``F.fold``
    (ATen's col2im)."""
    (kh, kw), dil, pad, st_ = geom
    n, c, h, w = x_shape
    ho, wo = G._geom_out(h, w, geom)
    rows = matmul(qw.t(), gb.t()).t()
    return torch.nn.functional.fold(rows.reshape(n, ho * wo, -1).transpose(1, 2), (h, w), (kh, kw),
                                    dilation=dil, padding=pad, stride=st_)


@st.composite
def dgrad_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    geom = ((kh, kw), (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
            draw(st.sampled_from([(1, 1), (1, 1), (2, 2), (1, 3), (3, 2)])))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    h, w = draw(st.integers(kh * 2, 13)), draw(st.integers(kw * 2, 13))
    m = draw(st.sampled_from([1, 3, 8, 16, 17, 32, 64]))
    ho, wo = G._geom_out(h, w, geom)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))
    fmt = draw(st.sampled_from(["int", "log", "shift"]))
    values = draw(st.sampled_from(["small", "wide", "extremes", "sparse", "zeros"]))
    wlim = {"small": 8, "wide": 128, "extremes": 128, "sparse": 128, "zeros": 8}[values]
    glim = {"int": 128, "log": 9, "shift": 8}[fmt] if values != "small" else {"int": 8, "log": 8, "shift": 4}[fmt]

    def codes(shape, lim):
        if values == "extremes":
            return torch.tensor([-lim, lim - 1] if lim != 9 else [-8, 8], dtype=torch.int8)[
                torch.randint(0, 2, shape, generator=gen)]
        t = torch.randint(-lim + (lim == 9), lim, shape, generator=gen, dtype=torch.int8)
        if values == "zeros":
            return torch.zeros_like(t)
        return t * (torch.rand(shape, generator=gen) < 0.3) if values == "sparse" else t

    wq = codes((m, c * kh * kw), wlim)
    gq = codes((n * ho * wo, m), glim)
    shift = None
    if fmt == "shift":
        # one shift per column (ShiftQuant's B operand) as the kernel gets it (row stride 0) or written out
        # for every element (row stride m), or a shift of its own for every element
        layout = draw(st.sampled_from(["column", "column-expanded", "element"]))
        smax = draw(st.sampled_from([1, 4, 8, 13]))
        shift = torch.randint(0, smax, (1, m) if layout != "element" else gq.shape, generator=gen,
                              dtype=torch.int8)
        if layout == "column-expanded":
            shift = shift.expand(gq.shape).contiguous()
    scales = [None, torch.tensor(1.0), torch.tensor(0.0123), torch.tensor(-3.7e-5), torch.tensor(1e-30),
              torch.tensor(3.1e30), torch.tensor(0.1, dtype=torch.float64)]
    sw_, sg = draw(st.sampled_from(scales)), draw(st.sampled_from(scales))
    qw = Operand(wq, scale=sw_)
    gb = Operand(gq, fmt, shift=shift, scale=sg)
    return qw, gb, (n, c, h, w), geom


@fast
@given(case=dgrad_cases())
def test_conv_dgrad_native_is_the_fold_of_the_gemm(case, one_torch_thread):
    qw, gb, x_shape, geom = case
    try:
        want = _dgrad_reference(qw, gb, x_shape, geom)
    except ValueError:                   # a code the torch path rejects: the kernel declines it
        assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is None
        return
    got = HF.conv_dgrad_native(qw, gb, x_shape, geom)
    # declined only past the float32 bound (or for values past int16)
    wmax = int(qw.ints.abs().max())
    gmax = int(b_values(gb.ints, gb.fmt, gb.shift).abs().max())
    if got is None:      # (a shift operand's bound: its largest code shifted by its largest shift)
        top = gmax if gb.fmt != "shift" else int(gb.ints.abs().max()) << int(gb.shift.max())
        assert qw.ints.shape[0] * wmax * top > 2 ** 24 or top > 32767
        return
    assert qw.ints.shape[0] * wmax * gmax <= 2 ** 24
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))     # the bits: -0.0, inf, NaN
    with torch_code():
        assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is None


@pytest.mark.parametrize("geom", [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (1, 1), (1, 1), (2, 2))])
def test_conv_dgrad_native_baseline_build_and_paths(baseline_kernels, geom, monkeypatch):
    """The int16 and float32 accumulations, both builds, a stride-1 and a strided fold; negative scale
    (products -0.0 on zero integers)."""
    gen = torch.Generator().manual_seed(5)
    n, c, h, w, m = 3, 5, 9, 10, 16
    ho, wo = G._geom_out(h, w, geom)
    for lim in (8, 128):                 # 16 * 7 * 64 <= 32767: int16; 16 * 127 * 64 > 32767: float32
        wq = torch.randint(-lim + 1, lim, (m, c * 9), generator=gen, dtype=torch.int8)
        gq = torch.randint(-7, 8, (n * ho * wo, m), generator=gen, dtype=torch.int8)
        gq[: n * ho * wo // 2] = 0
        qw, gb = Operand(wq, scale=torch.tensor(-0.37)), Operand(gq, "log", scale=torch.tensor(0.011))
        want = _dgrad_reference(qw, gb, (n, c, h, w), geom)
        assert torch.equal(HF.conv_dgrad_native(qw, gb, (n, c, h, w), geom), want)
        monkeypatch.setattr(native, "kernels", lambda: baseline_kernels)
        assert torch.equal(HF.conv_dgrad_native(qw, gb, (n, c, h, w), geom), want)
        monkeypatch.undo()


@pytest.mark.parametrize("m", [16, 17, 32, 3])
@pytest.mark.parametrize("geom", [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (1, 1), (1, 1), (2, 2)),
                                  ((2, 3), (2, 1), (0, 2), (1, 1))])
@pytest.mark.parametrize("values", ["log-few-128", "log-many-128", "log-no-128", "int-wide", "shift-128"])
def test_conv_dgrad_native_byte_products(values, geom, m, baseline_kernels, monkeypatch, one_torch_thread):
    """The vpmaddubsw columns (AVX2; weights in [-8, 7], gradient values in [-128, 128]): the offset
    weights, the +128 values corrected one by one, or too many of them (then the int16 columns), wrapping
    int16 lanes, odd M; NCHW and channels-last results; the baseline build has no such path. Bit for bit
    the GEMM and F.fold."""
    gen = torch.Generator().manual_seed(m + len(values))
    n, c, h, w = 3, 5, 9, 8
    ho, wo = G._geom_out(h, w, geom)
    kh, kw = geom[0]
    wq = torch.randint(-8, 8, (m, c * kh * kw), generator=gen, dtype=torch.int8)
    wq[0, :2] = torch.tensor([-8, 7], dtype=torch.int8)
    rows = n * ho * wo
    shift = None
    if values.startswith("log"):
        gq = torch.randint(-8, 8, (rows, m), generator=gen, dtype=torch.int8)
        frac = {"log-few-128": 0.01, "log-many-128": 0.3, "log-no-128": 0.0}[values]
        gq[torch.rand((rows, m), generator=gen) < frac] = 8
        fmt = "log"
    elif values == "int-wide":
        gq = torch.randint(-128, 128, (rows, m), generator=gen, dtype=torch.int8)
        gq[0, 0], gq[1, 0] = -128, 127
        fmt = "int"
        wq = wq.clamp(-2, 1)          # M * 2 * 128 stays within the int16 bound for M <= 32 (-128 * -2 ok)
        if m > 32:
            pytest.skip("bound")
    else:
        gq = torch.randint(-7, 8, (rows, m), generator=gen, dtype=torch.int8)
        shift = torch.randint(0, 4, (1, m), generator=gen, dtype=torch.int8).expand(gq.shape).contiguous()
        gq[::7, 0], shift = 1, shift.clone()
        shift[::7, 0] = 7                # 1 << 7 = +128
        fmt = "shift"
    if m * 8 * 128 > 32767 and fmt != "int":
        wq = wq.clamp(-7, 7)          # the int16 bound M * max|w| * 128 <= 32767 (M = 32)
    qw, gb = Operand(wq, scale=torch.tensor(0.37)), Operand(gq, fmt, shift=shift, scale=torch.tensor(-0.011))
    want = _dgrad_reference(qw, gb, (n, c, h, w), geom)
    bound = m * int(wq.abs().max()) * int(b_values(gq, fmt, shift).abs().max())
    assert bound <= 32767
    for lib in ("native", "baseline"):
        if lib == "baseline":
            monkeypatch.setattr(native, "kernels", lambda: baseline_kernels)
        got = HF.conv_dgrad_native(qw, gb, (n, c, h, w), geom)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
        cl = HF.conv_dgrad_native(qw, gb, (n, c, h, w), geom, channels_last=True)
        if geom[3] != (1, 1):
            assert cl is None
        else:
            assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
            assert torch.equal(cl.view(torch.int32), want.view(torch.int32))
    monkeypatch.undo()


def test_conv_dgrad_native_declines():
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    qw = Operand(torch.ones((4, 18), dtype=torch.int8), scale=torch.tensor(0.5))
    gb = Operand(torch.ones((2 * 16, 4), dtype=torch.int8), "log", scale=torch.tensor(0.25))
    x_shape = (2, 2, 4, 4)
    assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is not None
    bad = Operand(torch.full((2 * 16, 4), 9, dtype=torch.int8), "log", scale=torch.tensor(0.25))
    assert HF.conv_dgrad_native(qw, bad, x_shape, geom) is None          # the torch path raises
    with pytest.raises(ValueError, match="LOG codes"):
        _dgrad_reference(qw, bad, x_shape, geom)
    for other in (Operand(gb.ints.to(torch.int16), "log", scale=gb.scale),
                  Operand(gb.ints, "log", scale=torch.full((1, 4), 0.25)),
                  Operand(gb.ints, "int", scale=gb.scale, offset=torch.tensor(1.0)),
                  Operand(gb.ints.unsqueeze(0), "log", scale=gb.scale, sample_mean=True),
                  Operand(gb.ints.float(), "float")):
        assert HF.conv_dgrad_native(qw, other, x_shape, geom) is None
    with G.record_gemms():
        assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is None        # records need the GEMM
    with torch_code():
        assert HF.conv_dgrad_native(qw, gb, x_shape, geom) is None


# --------------------------------------------------------------------------- fallback

def test_no_compiler_falls_back_to_torch(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_COMPILERS", ("no-such-compiler-here",))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("TETRAD_NATIVE_CACHE", str(tmp_path))
    x = torch.linspace(-2, 3, 50)
    with pytest.warns(RuntimeWarning, match="fused kernels unavailable"):
        q = luq(x, seed=9)
    assert native.kernels() is None
    assert torch.equal(uniform(3, (70,)), uniform_torch(3, (70,)))
    with torch_code():
        assert_same(q, luq(x, seed=9))


def test_falls_back_to_the_baseline_build(monkeypatch, tmp_path):
    """A compiler that rejects the AVX2 clones: the baseline build is loaded, with the same results."""
    calls, build = [], native._build

    def no_clones(defines=()):
        calls.append(defines)
        if not defines:
            raise RuntimeError("cc failed: target_clones is not supported")
        return build(defines)

    monkeypatch.setattr(native, "_build", no_clones)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("TETRAD_NATIVE_CACHE", str(tmp_path))
    assert native.kernels() is not None
    assert calls == [(), ("TETRAD_NO_VECTOR_CLONES",)]
    v = torch.linspace(-9, 9, 3001)
    a, b = both(lambda: sr_codes(v, 5, 16, -7, 7))
    assert torch.equal(a, b)


def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("TETRAD_NATIVE_CACHE", str(tmp_path))
    path = native._build()
    assert path.parent == tmp_path and path.exists()
    mtime = path.stat().st_mtime_ns
    assert native._build() == path and path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [path.name]     # no temporary file left behind
