"""Fast paths of the ShiftQuant recipe's step (L1 normalization, ShiftQuant) give the torch code's bits.

Each test compares a native kernel or a streamlined Python path with the torch expression it replaces
(``torch.equal`` on the float bits), over many shapes and values, edge values included; the end-to-end
tests run the same call with the kernels and with ``TETRAD_NATIVE=0`` (the golden torch code).
"""

from __future__ import annotations

import math
import os
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st

import host.quant.l1norm as L
from host import quant as Q
from host.quant import native

fast = settings(max_examples=int(os.environ.get("TEST_EXAMPLES", 60)), deadline=None)
CL = torch.channels_last


def torch_code():
    """Run the block with the kernels turned off (the golden torch code)."""
    return mock.patch.dict(os.environ, {"TETRAD_NATIVE": "0"})


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same float32 bits (the sign of a zero and NaN payloads included), shape and dtype."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.fixture(scope="module")
def lib():
    k = native.kernels()
    if k is None:
        pytest.skip("native kernels unavailable")
    return k


@pytest.fixture(scope="module")
def baseline_kernels(tmp_path_factory):
    """The kernels built without the AVX2 clones (what a CPU without AVX2 runs)."""
    cache = tmp_path_factory.mktemp("baseline_sq")
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE_CACHE": str(cache)}):
        return native._load(native._build(("TETRAD_NO_VECTOR_CLONES",)))


def _cl_tensor(shape, gen, zeros: float, scale: float = 1.0) -> torch.Tensor:
    """A channels-last float32 tensor with a fraction of +-0 and a few large and tiny values."""
    t = torch.randn(shape, generator=gen) * scale
    t[torch.rand(shape, generator=gen) < zeros] = 0.0
    t[torch.rand(shape, generator=gen) < zeros / 2] = -0.0
    t[torch.rand(shape, generator=gen) < 0.01] *= 1e30
    t[torch.rand(shape, generator=gen) < 0.01] *= 1e-40
    return t.contiguous(memory_format=CL)


def _channel(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, 1, 1).contiguous()


shapes = st.tuples(st.integers(1, 5), st.sampled_from([1, 3, 8, 12, 16, 24, 32, 40]), st.integers(1, 7),
                   st.integers(1, 7))


@fast
@given(shape=shapes, zeros=st.floats(0, 0.5), seed=st.integers(0, 2 ** 16))
def test_l1_channels_last_passes_match_torch(lib, baseline_kernels, shape, zeros, seed):
    """The AVX2 channels-last passes (|x - mu|, yhat and y, dx) against the torch expressions of the
    L1 norm's torch path, and the same bits as the generic kernels; -1 (nothing done) where c is not a
    multiple of 8 and in the build without AVX2."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    rows = n * h * w
    x = _cl_tensor(shape, gen, zeros)
    mu = x.mean((0, 2, 3), keepdim=True).contiguous()
    sigma = _channel(torch.rand(c, generator=gen) * 3 + 1e-3)
    wt, bs = _channel(torch.randn(c, generator=gen)), _channel(torch.randn(c, generator=gen))
    applies = c % 8 == 0 and lib.tetrad_sq_l1_absdev_cl(x.data_ptr(), 0, 8, mu.data_ptr(), None) == 0
    outs = [torch.empty_like(x) for _ in range(3)]

    got = lib.tetrad_sq_l1_absdev_cl(x.data_ptr(), rows, c, mu.data_ptr(), outs[0].data_ptr())
    assert baseline_kernels.tetrad_sq_l1_absdev_cl(x.data_ptr(), rows, c, mu.data_ptr(), outs[0].data_ptr()) == -1
    if not applies:
        assert got == -1
        return
    assert got == 0 and bits_equal(outs[0], (x - mu).abs())

    for wp, bp in ((wt, bs), (wt, None), (None, bs), (None, None)):
        y = None if wp is None and bp is None else outs[1]
        assert lib.tetrad_sq_l1_fwd_cl(x.data_ptr(), rows, c, mu.data_ptr(), sigma.data_ptr(),
                                       None if wp is None else wp.data_ptr(), None if bp is None else bp.data_ptr(),
                                       outs[0].data_ptr(), None if y is None else y.data_ptr()) == 0
        yhat = (x - mu) / sigma
        assert bits_equal(outs[0], yhat)
        if y is not None:
            want = yhat if wp is None else yhat * wp
            want = want if bp is None else want + bp
            assert bits_equal(y, want)

    g, yhat = _cl_tensor(shape, gen, 0.0), _cl_tensor(shape, gen, zeros)
    mg, msgn, km = (_channel(torch.randn(c, generator=gen)) for _ in range(3))
    assert lib.tetrad_sq_l1_bwd_dx_cl(g.data_ptr(), yhat.data_ptr(), rows, c, mg.data_ptr(), msgn.data_ptr(),
                                      km.data_ptr(), sigma.data_ptr(), outs[2].data_ptr()) == 0
    want = ((g - mg) - km * (torch.sign(yhat) - msgn)) / sigma
    assert bits_equal(outs[2], want)
    generic = torch.empty_like(x)
    lib.tetrad_l1_bwd_dx_f32(g.data_ptr(), yhat.data_ptr(), rows, c, 1, mg.data_ptr(), msgn.data_ptr(),
                             km.data_ptr(), sigma.data_ptr(), generic.data_ptr())
    assert bits_equal(outs[2], generic)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_l1_channels_last_absdev_flags_nonfinite(lib, bad):
    """The channels-last |x - mu| pass reports a NaN/Inf anywhere (first, middle, last lane), not the
    largest finite floats."""
    x = torch.full((3, 16, 2, 5), 3.4e38).contiguous(memory_format=CL)
    mu = torch.zeros(1, 16, 1, 1)
    out = torch.empty_like(x)
    if lib.tetrad_sq_l1_absdev_cl(x.data_ptr(), 30, 16, mu.data_ptr(), out.data_ptr()) < 0:
        pytest.skip("no AVX2")
    flat = x.permute(0, 2, 3, 1).reshape(-1)      # storage order
    for i in (0, 7, 8, 233, flat.numel() - 1):
        y = x.clone(memory_format=CL)
        y.permute(0, 2, 3, 1).reshape(-1)[i] = bad
        assert y.permute(0, 2, 3, 1).reshape(-1)[i].item() != 3.4e38 or math.isnan(bad)
        assert lib.tetrad_sq_l1_absdev_cl(y.data_ptr(), 30, 16, mu.data_ptr(), out.data_ptr()) == 1


_KAPPAS = [L.KAPPA, 1.0, 0.3, 1.7e-30, 3.0e30, 1 / 3]
_EPS = [1e-5, 1e-3, 0.1, 1e-45, 7.0]


@fast
@given(c=st.integers(1, 70), seed=st.integers(0, 2 ** 16), kappa=st.sampled_from(_KAPPAS),
       eps=st.sampled_from(_EPS))
def test_l1_sigma_kernel_matches_torch(lib, baseline_kernels, c, seed, kappa, eps):
    """scale = s1 * kappa and sigma = scale + eps as torch's s1.mul_(kappa), clone, add_(eps)."""
    gen = torch.Generator().manual_seed(seed)
    s1 = (torch.rand(c, generator=gen) * torch.exp2(torch.randint(-140, 120, (c,), generator=gen).float()))
    s1[0] = 0.0
    s1 = _channel(s1)
    want = s1.clone().mul_(kappa)
    want_sigma = want.clone().add_(eps)
    for k in (lib, baseline_kernels):
        scale, sigma = torch.empty_like(s1), torch.empty_like(s1)
        k.tetrad_sq_l1_sigma_f32(s1.data_ptr(), c, kappa, eps, scale.data_ptr(), sigma.data_ptr())
        assert bits_equal(scale, want) and bits_equal(sigma, want_sigma)
    with mock.patch.object(native, "kernels", lambda: lib):
        scale, sigma = L._sigma_native(lib, s1, kappa, eps)
    assert bits_equal(scale, want) and bits_equal(sigma, want_sigma)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 49, 100, 196, 784, 3136, 12544, 50176, 99991, 2 ** 24 - 1, 2 ** 24])
def test_l1_backward_stats_kernel_matches_torch(lib, baseline_kernels, n):
    """msgn = sgn_sum.to(float32).div_(n) for every attainable sum (all of [-n, n] for small n, the ends
    and a random sample for large n) and km = kappa * mgy, as torch computes them."""
    gen = torch.Generator().manual_seed(n)
    if n <= 50176:
        s = torch.arange(-n, n + 1, dtype=torch.int64)
    else:
        s = torch.cat([torch.tensor([-n, -n + 1, -1, 0, 1, n - 1, n]),
                       torch.randint(-n, n + 1, (20000,), generator=gen)])
    c = s.numel()
    mgy = torch.randn(c, generator=gen) * torch.exp2(torch.randint(-130, 120, (c,), generator=gen).float())
    mgy[:3] = torch.tensor([0.0, -0.0, 3.4e38])
    for kappa in (L.KAPPA, 1.0, 0.7):
        want_m = s.to(torch.float32).div_(n)
        want_k = kappa * mgy
        for k in (lib, baseline_kernels):
            msgn, km = torch.empty(c), torch.empty(c)
            k.tetrad_sq_l1_bwd_stats_f32(s.data_ptr(), c, n, mgy.data_ptr(), kappa, msgn.data_ptr(), km.data_ptr())
            assert bits_equal(msgn, want_m) and bits_equal(km, want_k)


def _l1_bn_step(x, w, b, rm, rs, dy, momentum, eps, kappa):
    """One training forward and backward of l1_batch_norm: y, dx, dw, db and the running buffers."""
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rs = None if rs is None else rs.clone()
    y = Q.l1_batch_norm(x, rm, rs, w, b, training=True, momentum=momentum, eps=eps, kappa=kappa)
    y.backward(dy)
    return [y, x.grad] + [t.grad if t is not None and t.requires_grad else t for t in (w, b)] + [rm, rs]


@fast
@given(shape=shapes, layout=st.sampled_from(["nchw", "cl"]), affine=st.sampled_from(["wb", "w", "b", ""]),
       running=st.booleans(), zeros=st.floats(0, 0.5), seed=st.integers(0, 2 ** 16),
       momentum=st.sampled_from([0.1, 0.0, 1.0, 0.37]), eps=st.sampled_from([1e-5, 1e-3, 0.5]),
       kappa=st.sampled_from([L.KAPPA, 1.0]))
def test_l1_batch_norm_fast_path_matches_torch_code(shape, layout, affine, running, zeros, seed, momentum, eps,
                                                    kappa):
    """l1_batch_norm's training step with every fast path (the streamlined checks, the native passes and
    per-channel kernels) against the torch code: the same y, dx, dw, db and running buffers, bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=gen) * 3 + 0.5
    x[torch.rand(shape, generator=gen) < zeros] = 0.0
    dy = torch.randn(shape, generator=gen)
    if layout == "cl":
        x, dy = x.contiguous(memory_format=CL), dy.contiguous(memory_format=CL)
    w = torch.randn(c, generator=gen) if "w" in affine else None
    b = torch.randn(c, generator=gen) if "b" in affine else None
    rm, rs = (torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5) if running else (None, None)
    got = _l1_bn_step(x, w, b, rm, rs, dy, momentum, eps, kappa)
    with torch_code():
        want = _l1_bn_step(x, w, b, rm, rs, dy, momentum, eps, kappa)
    for a, e in zip(got, want):
        assert (a is None) == (e is None)
        if a is not None:
            assert bits_equal(a, e) and a.stride() == e.stride()


@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan"), float("inf"), True, "1e-5", None, 2])
def test_l1_argument_checks_unchanged(value):
    """The fast path of the eps/kappa/momentum checks accepts exactly what the full checks accept: the same
    errors for bad values, and an int or a float subclass still passes where it is valid."""
    x = torch.randn(2, 3, 4, 4)
    for kw in ("eps", "kappa", "momentum"):
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > 0 if kw != "momentum" else 0 <= value <= 1))
        if ok:
            Q.l1_batch_norm(x, None, None, training=True, **{kw: value})
        else:
            with pytest.raises(ValueError, match="l1_batch_norm"):
                Q.l1_batch_norm(x, None, None, training=True, **{kw: value})


def _unsigned_or_symmetric_reference(xd, bits):
    """forward_operand's int_unsigned choice as written before (two reductions); an error is returned."""
    try:
        return Q.int_unsigned(xd, bits) if float(xd.min()) >= 0 else Q.int_symmetric(xd, bits)
    except (TypeError, ValueError, RuntimeError) as e:
        return e


@fast
@given(shape=shapes, layout=st.sampled_from(["nchw", "cl"]), kind=st.sampled_from(["relu", "signed", "zeros"]),
       bits=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2 ** 16))
def test_int_unsigned_choice_with_one_reduction_matches(shape, layout, kind, bits, seed):
    """The activation quantizer's unsigned-or-symmetric choice from the input check's range: the same
    quantizer, codes (values, dtype, strides) and step as the choice by ``xd.min()``."""
    from host.nn.quantizers import _int_unsigned_or_symmetric
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    x = x.relu() if kind == "relu" else (x * 0.0 if kind == "zeros" else x)
    if kind == "zeros":
        x.view(-1)[::2] = -0.0
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    got, want = _int_unsigned_or_symmetric(x, bits), _unsigned_or_symmetric_reference(x, bits)
    assert got.method == want.method and got.grid == want.grid
    assert got.codes.dtype == want.codes.dtype and torch.equal(got.codes, want.codes)
    assert got.codes.stride() == want.codes.stride() and bits_equal(got.step, want.step)


@pytest.mark.parametrize("case", ["nan", "+inf", "-inf", "int", "empty"])
def test_int_unsigned_choice_errors_unchanged(case):
    """Input the check refuses raises what the two-reduction choice raised (the same quantizer's error)."""
    from host.nn.quantizers import _int_unsigned_or_symmetric
    x = torch.rand(2, 3, 4, 4)
    if case in ("nan", "+inf", "-inf"):
        x.view(-1)[5] = {"nan": float("nan"), "+inf": float("inf"), "-inf": -float("inf")}[case]
    elif case == "int":
        x = (x * 10).to(torch.int32)
    else:
        x = torch.empty(0, 3)
    want = _unsigned_or_symmetric_reference(x, 4)
    assert isinstance(want, Exception)
    with pytest.raises(type(want)) as err:
        _int_unsigned_or_symmetric(x, 4)
    assert str(err.value) == str(want)


@fast
@given(shape=shapes, layout=st.sampled_from(["nchw", "cl"]), seed=st.integers(0, 2 ** 16),
       bits=st.sampled_from([1, 4, 8, 15]))
def test_int_unsigned_given_range_matches(shape, layout, seed, bits):
    """int_unsigned with the caller's (min, max) gives what it computes itself; a non-finite range falls
    back to its own check (its error)."""
    from host.quant.core import check_input_range
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen) * torch.exp2(torch.randint(-20, 20, (), generator=gen).float())
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    _, lo, hi = check_input_range(x, "t", any_order=True)
    a, b = Q.int_unsigned(x, bits, x_range=(lo, hi)), Q.int_unsigned(x, bits)
    assert torch.equal(a.codes, b.codes) and a.codes.stride() == b.codes.stride() and bits_equal(a.step, b.step)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="int_unsigned: input has 1 NaN/Inf"):
        Q.int_unsigned(x, bits, x_range=(lo, float("inf")))


@fast
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), exp=st.integers(-149, 127), e_max=st.integers(0, 5),
       axis=st.sampled_from(["row", "col"]), scale=st.sampled_from(["float", "pow2"]),
       seed=st.integers(0, 2 ** 16))
def test_shiftquant_at_every_magnitude_matches_torch_code(rows, cols, exp, e_max, axis, scale, seed):
    """ShiftQuant with the kernels (the cached format, the ascending-table normal test) against the torch
    code at magnitudes across the whole float32 exponent range: the same codes, scale and exponents."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 2.0 ** exp).float()

    def run():
        try:
            q = Q.shiftquant(x, 4, axis=axis, e_max=e_max, scale=scale, seed=seed)
        except ValueError as e:
            return e
        return q
    got = run()
    with torch_code():
        want = run()
    if isinstance(want, Exception):
        assert type(got) is type(want) and str(got) == str(want)
        return
    assert torch.equal(got.codes, want.codes) and bits_equal(got.scale, want.scale)
    assert torch.equal(got.exponents, want.exponents) and got.fmt == want.fmt and got.seed == want.seed


@fast
@given(rows=st.integers(1, 300), cols=st.integers(1, 40), max_code=st.sampled_from([7, 127]),
       max_shift=st.sampled_from([0, 3, 15]), seed=st.integers(0, 2 ** 16))
def test_shift_values_kernel_matches_b_values(lib, baseline_kernels, rows, cols, max_code, max_shift, seed):
    """float32 ``code << shift[col]`` and its maximum: b_values(...).to(float32) and its abs max (int8
    codes -128..127 included); a shift outside [0, 15] is refused (-1), nothing written."""
    from host.backends.torch_backend import b_values
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(-max_code - 1, max_code + 1, (rows, cols), generator=gen, dtype=torch.int8)
    shift = torch.randint(0, max_shift + 1, (1, cols), generator=gen, dtype=torch.int8)
    want = b_values(g, "shift", shift.expand(g.shape))
    for k in (lib, baseline_kernels):
        out = torch.empty(rows, cols)
        vmax = k.tetrad_sq_shift_values_f32(g.data_ptr(), rows, cols, shift.data_ptr(), out.data_ptr())
        assert bits_equal(out, want.to(torch.float32)) and vmax == int(want.abs().max())
        for bad in (-1, 16):
            s2 = shift.clone()
            s2[0, seed % cols] = bad
            out.fill_(7.0)
            assert k.tetrad_sq_shift_values_f32(g.data_ptr(), rows, cols, s2.data_ptr(), out.data_ptr()) == -1
            assert bool((out == 7.0).all())


@fast
@given(n=st.integers(1, 6), c=st.integers(1, 5), hw=st.integers(1, 9), m=st.integers(1, 12),
       k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
       x_max=st.sampled_from([15, 127]), g_max=st.sampled_from([7, 127]), e_max=st.sampled_from([0, 3, 15]),
       per_element=st.booleans(), float_out=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_qconv2d_weight_shift_fast_path_matches_torch_code(n, c, hw, m, k, stride, pad, x_max, g_max, e_max,
                                                          per_element, float_out, seed):
    """qconv2d_weight of a ShiftQuant operand with the one-pass float32 values against the torch code: the
    same result (values, dtype, strides) whether the float32 bound holds or not (int8 codes up to 127,
    shifts up to 15, so some cases take the float64 or integer paths), and for a per-element shift."""
    import host.gemm as G
    if hw + 2 * pad < k:
        return
    gen = torch.Generator().manual_seed(seed)
    geom = ((k, k), (1, 1), (pad, pad), (stride, stride))
    ho = (hw + 2 * pad - k) // stride + 1
    x = torch.randint(0, x_max + 1, (n, c, hw, hw), generator=gen, dtype=torch.int8)
    x = x.contiguous(memory_format=CL) if seed % 2 else x
    g = torch.randint(-g_max, g_max + 1, (n * ho * ho, m), generator=gen, dtype=torch.int8)
    shift = torch.randint(0, e_max + 1, (n * ho * ho, m) if per_element else (1, m), generator=gen,
                          dtype=torch.int8)

    def run():
        return G.qconv2d_weight(x, g, (m, c, k, k), geom, b_format="shift", b_shift=shift, backend="cpu",
                                float_out=float_out)
    got = run()
    with torch_code():
        want = run()
    assert got.dtype == want.dtype and got.stride() == want.stride() and torch.equal(got, want)


@fast
@given(rows=st.integers(1, 200), cols=st.sampled_from([1, 3, 7, 8, 9, 16, 24, 32, 40, 64, 65]),
       axis=st.sampled_from([0, 1]), e_max=st.sampled_from([1, 3, 15]), zeros=st.floats(0, 1),
       exp=st.integers(-140, 120), seed=st.integers(0, 2 ** 16))
def test_shift_channels_with_finiteness_matches(lib, baseline_kernels, rows, cols, axis, e_max, zeros, exp, seed):
    """ShiftQuant's channel maxima, r and exponents with the finiteness test in the same pass: the same as
    the torch code (|A| amax along the axis, channel_exponents), the AVX2 column copies (8-64 channels)
    and the baseline build alike."""
    from host.quant.shiftquant import channel_exponents
    gen = torch.Generator().manual_seed(seed)
    a = (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 2.0 ** exp).float()
    a[torch.rand(rows, cols, generator=gen) < zeros] = 0.0
    a[torch.rand(rows, cols, generator=gen) < zeros / 2] = -0.0
    n = rows if axis == 0 else cols
    want_r_ch = a.abs().amax(dim=1 - axis)
    want_e = channel_exponents(want_r_ch, e_max)
    for k in (lib, baseline_kernels):
        r_ch, e = torch.empty(n), torch.empty(n, dtype=torch.int8)
        r = k.tetrad_sq_shift_channels_f32(a.data_ptr(), rows, cols, axis, e_max, r_ch.data_ptr(), e.data_ptr())
        assert bits_equal(r_ch, want_r_ch) and r == float(want_r_ch.max()) and torch.equal(e, want_e)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("cols", [5, 8, 16, 24, 32, 64, 70])
def test_shift_channels_flags_nonfinite_anywhere(lib, baseline_kernels, bad, cols):
    """A NaN or Inf anywhere (vector lanes and scalar tails, first and last element) gives -1."""
    a = torch.full((9, cols), -3.4e38)
    for idx in (0, cols - 1, 4 * cols + 3, a.numel() - 1):
        b = a.clone()
        b.view(-1)[idx] = bad
        for k in (lib, baseline_kernels):
            for axis in (0, 1):
                n = 9 if axis == 0 else cols
                r_ch, e = torch.empty(n), torch.empty(n, dtype=torch.int8)
                assert k.tetrad_sq_shift_channels_f32(b.data_ptr(), 9, cols, axis, 3, r_ch.data_ptr(),
                                                      e.data_ptr()) == -1.0
    r_ch, e = torch.empty(9), torch.empty(9, dtype=torch.int8)
    assert lib.tetrad_sq_shift_channels_f32(a.data_ptr(), 9, cols, 0, 3, r_ch.data_ptr(), e.data_ptr()) > 0


@pytest.mark.parametrize("case", ["nan", "inf", "nan_bad_bits", "bad_axis", "f16_nan", "clean_bad_e", "e0_nan",
                                  "e0_inf"])
def test_shiftquant_deferred_finiteness_errors_unchanged(case):
    """ShiftQuant's NaN/Inf test made in the native channel pass: the same errors as the torch code's input
    check, in the same order (a NaN/Inf is reported before a bad argument)."""
    x = torch.randn(6, 10)
    if "nan" in case:
        x[2, 3] = float("nan")
    elif "inf" in case:
        x[5, 9] = -float("inf")
    if case == "f16_nan":
        x = x.half()
    kw = {"bits": 4, "axis": "col", "e_max": 3, "seed": 1}
    if case == "nan_bad_bits":
        kw["bits"] = 99
    elif case == "bad_axis":
        kw["axis"] = "diag"
    elif case == "clean_bad_e":
        kw["e_max"] = 16
    elif case.startswith("e0"):
        kw.update(e_max=0, axis="row", bits=8)

    def run():
        try:
            Q.shiftquant(x, **kw)
        except ValueError as e:
            return str(e)
        return None
    got = run()
    with torch_code():
        want = run()
    assert want is not None and got == want


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_grad_operands_nonfinite_gradient_error_unchanged(bad):
    """The bifurcated ShiftQuant gradient without the separate NaN/Inf reduction: the same error."""
    from host.nn.quantizers import grad_operands
    from host.recipes import get_recipe
    g = torch.randn(40, 16)
    g[7, 5] = bad

    def run():
        try:
            grad_operands(g, get_recipe("shiftquant4"), seed_b=3, seed_u=4, rows_per_sample=4)
        except ValueError as e:
            return str(e)
        return None
    got = run()
    with torch_code():
        want = run()
    assert want is not None and got == want


@fast
@given(n=st.integers(1, 300), exp=st.integers(-149, 127), special=st.sampled_from(["", "inf", "-inf", "nan", "zeros"]),
       seed=st.integers(0, 2 ** 16))
def test_minmax_kernel_matches_aminmax(lib, baseline_kernels, n, exp, special, seed):
    """The input check's one-pass min/max: torch.aminmax's values (up to the sign of a zero extreme, which
    its callers never look at), Infs as extremes, and a NaN reported."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=gen, dtype=torch.float64) * 2.0 ** exp).float()
    pos = int(torch.randint(0, n, (), generator=gen))
    if special == "zeros":
        x[torch.rand(n, generator=gen) < 0.5] = -0.0
        x[pos] = 0.0
    elif special:
        x[pos] = float(special)
    lo, hi = torch.aminmax(x)
    for k in (lib, baseline_kernels):
        out = torch.empty(2)
        nan = k.tetrad_sq_minmax_f32(x.data_ptr(), n, out.data_ptr())
        assert nan == (special == "nan")
        if not nan:
            assert float(out[0]) == float(lo) and float(out[1]) == float(hi)


@fast
@given(shape=shapes, layout=st.sampled_from(["nchw", "cl"]), special=st.sampled_from(["", "inf", "nan"]),
       seed=st.integers(0, 2 ** 16))
def test_check_input_range_native_matches(shape, layout, special, seed):
    """check_input_range with the native min/max (any_order) against the torch code: the same (lo, hi)
    values and the same NaN/Inf errors."""
    from host.quant.core import check_input_range
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    if special:
        x.view(-1)[int(torch.randint(0, x.numel(), (), generator=gen))] = float(special)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)

    def run():
        try:
            _, lo, hi = check_input_range(x, "q", any_order=True)
            return lo, hi
        except ValueError as e:
            return str(e)
    got = run()
    with torch_code():
        want = run()
    assert got == want


@fast
@given(rows=st.integers(1, 300), cols=st.sampled_from([1, 5, 8, 16, 24, 32, 64, 128, 2048]),
       axis=st.sampled_from([0, 1, 2]), bits=st.sampled_from([4, 8, 16]), wide=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_sr_scaled_codes_avx2_multiply_matches(lib, baseline_kernels, rows, cols, axis, bits, wide, seed):
    """ShiftQuant's scaled SR with the AVX2 multiply pass: the codes of tetrad_sr_scaled_codes_f32 and of
    the torch code (sr_codes of a2 * m), int8 and int16 codes, rows crossing the 1024-element blocks."""
    from host.quant.core import sr_codes
    gen = torch.Generator().manual_seed(seed % 2 ** 31)
    a = torch.randn(rows, cols, generator=gen) * 3
    n = rows if axis == 0 else cols if axis == 1 else 1
    mult = torch.exp2(torch.randint(-2, 3, (n,), generator=gen).float()) * 1.37
    lo, hi = (-32767, 32767) if wide else (-7, 7)
    dt = torch.int16 if wide else torch.int8
    m = mult.reshape(-1, 1) if axis == 0 else mult.reshape(1, -1) if axis == 1 else mult[0]
    with torch_code():
        want = sr_codes(a * m, seed, bits, lo, hi)
    for k in (lib, baseline_kernels):
        got = torch.empty(rows, cols, dtype=dt)
        k.tetrad_sq_sr_scaled_codes_f32(a.data_ptr(), rows, cols, mult.data_ptr(), axis, seed, bits, lo, hi,
                                        2 if wide else 1, got.data_ptr())
        old = torch.empty(rows, cols, dtype=dt)
        k.tetrad_sr_scaled_codes_f32(a.data_ptr(), rows, cols, mult.data_ptr(), axis, seed, bits, lo, hi,
                                     2 if wide else 1, old.data_ptr())
        assert torch.equal(got, old) and torch.equal(got, want.to(dt))


def _elementwise_out_reference(x, dtype):
    """host.quant.core.elementwise_out as written before its channels-last fast path."""
    if not x.is_contiguous():
        perm = sorted(range(x.dim()), key=lambda d: (x.stride(d), x.shape[d]), reverse=True)
        if x.permute(perm).is_contiguous():
            out = torch.empty_like(x, dtype=dtype)
            if out.stride() == x.stride():
                return x, out
        x = x.contiguous()
    return x, torch.empty(x.shape, dtype=dtype, device=x.device)


@fast
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 5), st.integers(1, 5)),
       layout=st.sampled_from(["nchw", "cl", "perm", "sliced"]), seed=st.integers(0, 2 ** 16))
def test_elementwise_out_channels_last_fast_path(shape, layout, seed):
    """elementwise_out's channels-last shortcut gives the same source tensor and output layout as the
    stride sort it skips (size-1 dims, other permutations and non-dense views included)."""
    from host.quant.core import elementwise_out
    x = torch.randn(shape)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    elif layout == "perm":
        x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    elif layout == "sliced":
        x = torch.randn(shape[0], shape[1], shape[2] * 2, shape[3]).contiguous(memory_format=CL)[:, :, ::2]
    src, out = elementwise_out(x, torch.int8)
    rsrc, rout = _elementwise_out_reference(x, torch.int8)
    assert src.stride() == rsrc.stride() and torch.equal(src, rsrc) and (src is x) == (rsrc is x)
    assert out.shape == rout.shape and out.stride() == rout.stride() and out.dtype == rout.dtype
