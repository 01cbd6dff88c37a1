"""The per-call overhead cuts of the training step (measurements shared along one call path, cached
per-dtype constants): each gives the same results and the same errors as the code it replaces.

``qgemm`` measures a LOG/shift B operand's code range and largest shift once and hands them to
``TorchBackend``'s ``b_values``, which measured them again before; the results must not change for any
format, layout (transposed views, broadcast shifts) or width, and the errors must stay the same. The input
check's native min/max pass is read back through a ctypes pair instead of a float32 tensor.
"""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from host.backends import use_backend
from host.backends.torch_backend import b_values, stored_values
from host.gemm import _DTYPE_ABS_MAX, _b_abs_bound, _dtype_abs_max, _int_range, qgemm
from host.quant import native
from host.quant.core import _native_range, codes_dtype

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _old_dtype_abs_max(t: torch.Tensor) -> int:
    info = torch.iinfo(t.dtype)
    return max(abs(info.min), info.max)


def _old_b_abs_bound(b, b_format, b_shift) -> int:
    """host.gemm._b_abs_bound as it was: its own reductions."""
    if b.numel() == 0:
        return 0
    lo, hi = torch.aminmax(b)
    c = max(abs(int(lo)), abs(int(hi)))
    if b_format == "int":
        return c
    if b_format == "log":
        return 0 if c == 0 else 1 << (c - 1)
    return c << (int(stored_values(b_shift).max()) if b_shift.numel() else 0)


def _old_out_dtype(a, b, b_format, b_shift) -> torch.dtype:
    """qgemm's accumulator choice as it was."""
    k = a.shape[1]
    b_bound = _old_dtype_abs_max(b) if b_format == "int" else _old_b_abs_bound(b, b_format, b_shift)
    bound = k * _old_dtype_abs_max(a) * b_bound
    if bound > 2 ** 31 - 1:
        a_max = max(abs(int(v)) for v in torch.aminmax(a)) if a.numel() else 0
        bound = k * a_max * _old_b_abs_bound(b, b_format, b_shift)
    return torch.int32 if bound <= 2 ** 31 - 1 else torch.int64


def test_dtype_abs_max_table():
    for dt in _INT_DTYPES:
        t = torch.zeros(1, dtype=dt)
        assert _dtype_abs_max(t) == _old_dtype_abs_max(t) == _DTYPE_ABS_MAX[dt]
    with pytest.raises(TypeError):
        _dtype_abs_max(torch.zeros(1))        # torch.iinfo's error for a float dtype, as before


@st.composite
def _b_operands(draw):
    """``(a, b, b_format, b_shift)``: int8 A codes and a B operand of any format, B possibly a transposed
    view, the shift per row, per column or per element (broadcast as the layers hand it)."""
    fmt = draw(st.sampled_from(["int", "log", "shift"]))
    m, k, n = draw(st.integers(1, 9)), draw(st.integers(0, 40)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2 ** 31))
    g = torch.Generator().manual_seed(seed)
    a_lim = draw(st.sampled_from([1, 7, 127]))
    a = torch.randint(-a_lim, a_lim + 1, (m, k), generator=g, dtype=torch.int64).to(torch.int8)
    if fmt == "log":
        lim = draw(st.sampled_from([0, 1, 7, 8]))
        dtype = torch.int8
    else:
        lim = draw(st.sampled_from([0, 7, 127] + ([1000] if fmt == "int" else [])))
        dtype = torch.int8 if lim <= 127 else torch.int16
    trans = draw(st.booleans())
    shape = (n, k) if trans else (k, n)
    b = torch.randint(-lim, lim + 1, shape, generator=g, dtype=torch.int64).to(dtype)
    b = b.t() if trans else b
    shift = None
    if fmt == "shift":
        s_lim = draw(st.sampled_from([0, 3, 4, 5, 7]))   # 7 << 4 fits int8, 7 << 5 does not
        kind = draw(st.sampled_from(["row", "col", "elem"]))
        s_shape = {"row": (k, 1), "col": (1, n), "elem": (k, n)}[kind]
        shift = torch.randint(0, s_lim + 1, s_shape, generator=g, dtype=torch.int64).to(
            draw(st.sampled_from([torch.int8, torch.int32])))
    return a, b, fmt, shift


@settings(max_examples=200, deadline=None)
@given(_b_operands(), st.booleans())
def test_qgemm_shared_measurements(op, float_out):
    """qgemm's result (values and dtype) is the int64 product of the values, with the accumulator the
    previous code chose; b_values with qgemm's measurements is b_values without them."""
    a, b, fmt, shift = op
    full_shift = None if shift is None else shift.expand(b.shape)
    ref_vals = b_values(b, fmt, full_shift)
    ref = a.to(torch.int64) @ ref_vals.to(torch.int64)
    with use_backend("cpu"):
        out = qgemm(a, b, b_format=fmt, b_shift=shift, float_out=float_out)
    want_dtype = _old_out_dtype(a, b, fmt, full_shift)
    assert out.dtype == want_dtype or float_out and out.dtype == torch.float32
    assert torch.equal(out.to(torch.int64), ref)
    if b.numel():
        code_range = _int_range(b)
        shift_max = None if shift is None else int(shift.max())
        fast = b_values(b, fmt, full_shift, code_range=code_range, shift_max=shift_max)
        assert fast.dtype == ref_vals.dtype and fast.stride() == ref_vals.stride()
        assert torch.equal(fast, ref_vals)
        assert _b_abs_bound(b, fmt, full_shift, code_range, shift_max) == _old_b_abs_bound(b, fmt, full_shift)


def test_qgemm_errors_unchanged():
    a = torch.ones(2, 3, dtype=torch.int8)
    b = torch.ones(3, 4, dtype=torch.int8)
    with use_backend("cpu"):
        with pytest.raises(ValueError, match=r"^qgemm: b_shift must be >= 0$"):
            qgemm(a, b, b_format="shift", b_shift=torch.tensor([[0], [-1], [2]], dtype=torch.int8),
                  float_out=True)
        bad = b.clone()
        bad[1, 2] = 9
        bad[0, 0] = -3
        with pytest.raises(ValueError, match=r"^LOG codes must lie in \[-8, 8\], got \[-3, 9\]$"):
            qgemm(a, bad, b_format="log", float_out=True)
        with pytest.raises(ValueError, match="inner dimensions differ"):
            qgemm(a, b.t(), float_out=True)
        with pytest.raises(TypeError, match="integer dtype"):
            qgemm(a, b.float(), float_out=True)


def _old_native_range(xs: torch.Tensor):
    """host.quant.core._native_range as it was: the kernel's results in a float32 tensor, read by tolist()."""
    lib = native.kernels()
    out = torch.empty(2, dtype=torch.float32)
    if lib.tetrad_sq_minmax_f32(xs.data_ptr(), xs.numel(), out.data_ptr()):
        return None
    lo, hi = out.tolist()
    return lo, hi


_SPECIALS = [0.0, -0.0, 1e-45, -1e-45, 1.17549435e-38, 3.4028234663852886e38, -3.4028234663852886e38, float("inf"),
             float("-inf"), float("nan")]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2 ** 31), st.lists(st.sampled_from(_SPECIALS), max_size=4),
       st.sampled_from([1e-3, 1.0, 1e30]))
def test_native_range_readback(n, seed, specials, mag):
    """The min/max pass read back through a ctypes pair: the same Python floats (bits, zero signs
    included) as the float32 tensor it replaced, None for a NaN, and torch's aminmax values."""
    if native.kernels() is None:
        pytest.skip("native kernels unavailable")
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * mag
    for i, v in enumerate(specials[:n]):
        x[(i * 7919) % n] = v
    got, want = _native_range(x), _old_native_range(x)
    if want is None:
        assert got is None and bool(torch.isnan(x).any())
        return
    assert got is not None and all(type(v) is float for v in got)
    assert [struct.pack("<d", v) for v in got] == [struct.pack("<d", v) for v in want]
    lo, hi = torch.aminmax(x)
    assert got == (float(lo), float(hi))


def _old_codes_dtype(qmin: int, qmax: int) -> torch.dtype:
    for dt in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    return torch.int64


@settings(max_examples=300, deadline=None)
@given(st.integers(-2 ** 40, 2 ** 40), st.integers(-2 ** 40, 2 ** 40))
def test_codes_dtype_table(a, b):
    """codes_dtype from its precomputed bounds is the torch.iinfo loop it replaced, at every boundary."""
    for qmin, qmax in ((min(a, b), max(a, b)), (-128, 127), (-129, 127), (-128, 128), (0, 32767), (0, 32768),
                       (-2 ** 31, 2 ** 31 - 1), (-2 ** 31 - 1, 0), (0, 2 ** 31)):
        assert codes_dtype(qmin, qmax) == _old_codes_dtype(qmin, qmax)
