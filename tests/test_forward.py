"""Tests of the forward quantizers (host/quant/forward.py): symmetric INT, DSQ (LBT reference,
ALGORITHMS.md §1(a) "Forward quantizers", property §1(f)6) and the StatQuant INT8 baseline (§2(a))."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from hw import numerics as nx
from host.quant.forward import (UINT8, dsq_activation, dsq_activation_ste, dsq_weight, dsq_weight_ste,
                                init_activation_clip, init_weight_clip, int8_per_tensor, int_symmetric,
                                int_unsigned)

finite = st.floats(min_value=-2.0 ** 60, max_value=2.0 ** 60, allow_nan=False, allow_infinity=False,
                   width=32)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------------------------------------------
# int_symmetric
# ---------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=finite),
       bits=st.integers(2, 8), gran=st.sampled_from(["tensor", "row", "col"]))
def test_int_symmetric_grid_and_error(arr, bits, gran):
    x = torch.from_numpy(arr)
    q = int_symmetric(x, bits, granularity=gran)
    qm = 2 ** (bits - 1) - 1
    assert q.grid == nx.int_grid(bits) and q.offset is None and q.method == "int_symmetric"
    assert q.codes.dtype == torch.int8 and q.codes.shape == x.shape
    assert int(q.codes.min()) >= -qm and int(q.codes.max()) <= qm
    assert q.step.shape == {"tensor": (), "row": (x.shape[0], 1), "col": (1, x.shape[1])}[gran]
    assert torch.all(q.step > 0) and torch.all(torch.isfinite(q.step))
    err = (x.double() - q.dequantize().double()).abs()
    assert torch.all(err <= q.step.double() * (0.5 + 1e-5) + 1e-37)       # RDN, nothing clipped
    # the largest magnitude of every slice maps to +-q_max (or the slice is all zero)
    dims = {"tensor": None, "row": 1, "col": 0}[gran]
    amax = x.abs().amax() if dims is None else x.abs().amax(dim=dims, keepdim=True)
    top = (x.abs() == amax) & (amax / qm >= torch.finfo(torch.float32).tiny)   # else flushed: codes 0
    assert torch.all(q.codes[(amax / qm < torch.finfo(torch.float32).tiny).expand_as(x)] == 0)
    assert torch.all(q.codes[top].abs() == qm)


@settings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
                      elements=st.floats(0.0, 2.0 ** 60, width=32)), bits=st.integers(1, 8))
def test_int_unsigned_grid_and_error(arr, bits):
    x = torch.from_numpy(arr)
    q = int_unsigned(x, bits)
    qm = 2 ** bits - 1
    assert q.grid == nx.IntGrid(bits, signed=False) and q.offset is None and q.method == "int_unsigned"
    assert q.codes.shape == x.shape and q.step.shape == ()
    assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= qm
    err = (x.double() - q.dequantize().double()).abs()
    assert torch.all(err <= q.step.double() * (0.5 + 1e-5) + 1e-37)       # RDN, nothing clipped
    if float(x.max()) / qm >= torch.finfo(torch.float32).tiny:
        assert torch.all(q.codes[x == x.max()] == qm)
        # the same arithmetic as int_symmetric, on twice the levels: never a coarser step
        assert float(q.step) <= float(int_symmetric(x, bits + 1).step) * (1 + 1e-6)
    else:
        assert torch.all(q.codes == 0) and float(q.step) == 1.0


def test_int_unsigned_values_and_errors():
    q = int_unsigned(torch.tensor([0.0, 0.5, 1.5, 2.5, 7.0, 15.0]), 4)
    assert float(q.step) == 1.0 and q.codes.tolist() == [0, 0, 2, 2, 7, 15]     # half to even
    assert q.codes.dtype == torch.int8 and int_unsigned(torch.ones(3), 8).codes.dtype == torch.int16
    with pytest.raises(ValueError, match="int_unsigned: the unsigned grid needs x >= 0"):
        int_unsigned(torch.tensor([1.0, -1e-30]))
    with pytest.raises(ValueError, match="int_unsigned: bits"):
        int_unsigned(torch.ones(3), 0)
    with pytest.raises(ValueError, match="int_unsigned.*NaN"):
        int_unsigned(torch.tensor([1.0, float("nan")]))


def test_int_symmetric_round_half_to_even():
    q = int_symmetric(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -3.5, 9.0]), 4, scale=1.0)
    assert q.codes.tolist() == [0, 2, 2, 0, -2, 4, -4, 7]                  # 9 saturates at q_max


def test_int_symmetric_given_scales_and_zero_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 4.0]])
    q = int_symmetric(x, 4, granularity="row")
    assert q.step.flatten().tolist() == [1.0, float(np.float32(4.0 / 7))] and q.codes[0].tolist() == [0, 0, 0]
    q = int_symmetric(x, 4, granularity="col", scale=[1.0, 0.5, 0.25])
    assert q.codes.tolist() == [[0, 0, 0], [1, -4, 7]]
    q = int_symmetric(torch.zeros(5), 8)
    assert float(q.step) == 1.0 and torch.all(q.codes == 0) and torch.all(q.dequantize() == 0)
    q = int_symmetric(torch.tensor([1e-44, -3e-39]), 4)          # max/q_max subnormal: flushed
    assert float(q.step) == 1.0 and torch.all(q.codes == 0)
    w = randn(6, 3, 3, 3, seed=1)                                          # conv weight, per out-channel
    q = int_symmetric(w, 4, granularity="row")
    assert q.step.shape == (6, 1, 1, 1)
    assert torch.equal(q.step.flatten(), w.abs().amax(dim=(1, 2, 3)) / 7)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: int_symmetric(torch.randn(4), 1), ValueError, "int_symmetric: bits"),
    (lambda: int_symmetric(torch.randn(4), 4, granularity="channel"), ValueError, "granularity"),
    (lambda: int_symmetric(torch.randn(4), 4, granularity="row"), ValueError, "dimensions"),
    (lambda: int_symmetric(torch.randn(2, 3, 4), 4, granularity="col"), ValueError, "dimensions"),
    (lambda: int_symmetric(torch.randn(4), 4, scale=0.0), ValueError, "scale must be finite and > 0"),
    (lambda: int_symmetric(torch.randn(4), 4, scale=float("nan")), ValueError, "scale"),
    (lambda: int_symmetric(torch.randn(2, 3), 4, granularity="row", scale=[1.0]), ValueError, "needs 2"),
    (lambda: int_symmetric(torch.randn(4), 4, scale="1"), ValueError, "scale"),
    (lambda: int_symmetric(torch.tensor([1.0, float("nan")])), ValueError, "int_symmetric: .*NaN/Inf"),
    (lambda: int_symmetric(torch.arange(4)), TypeError, "int_symmetric"),
])
def test_int_symmetric_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------------
# DSQ forward quantizers (LBT reference)
# ---------------------------------------------------------------------------------------------------

class _RoundSTE(torch.autograd.Function):
    """The reference's RoundFunction: round(x*n)/n forward, identity backward."""

    @staticmethod
    def forward(ctx, x, n):
        return torch.round(x * n) / n

    @staticmethod
    def backward(ctx, g):
        return g, None


def ref_w_quan(w, s, bits):
    """Transcription of the reference DSQConv_a.w_quan(...) * sW (differentiable)."""
    out = (w / torch.abs(s) + 1) * 0.5
    out = _RoundSTE.apply(torch.clamp(out, min=0, max=1), 2 ** bits - 2)
    return (2 * out - 1) * s


def ref_a_quan(x, u, bits, signed=False):
    """Transcription of a_quan(x, u, 0) * u (unsigned) or a_quan(x, u, -u) * u (mobile, signed)."""
    lo = -u if signed else 0
    out = (x - lo) / (u - lo)
    out = _RoundSTE.apply(torch.clamp(out, min=0, max=1), 2 ** bits - (2 if signed else 1))
    return (2 * out - 1) * u if signed else out * u


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_dsq_weight_matches_reference_and_grid(bits):
    """§1(f)6: Q_W * q_max / s_W is an integer with |.| <= q_max; codes are exactly the reference's
    k - q_max; dequantize() agrees with the reference value to float rounding."""
    w = randn(64, 33, seed=bits, scale=0.1)
    s = init_weight_clip(w) * 0.8                  # some weights saturate
    q = dsq_weight(w, s, bits)
    qm = 2 ** (bits - 1) - 1
    ref = ref_w_quan(w, s, bits)
    scaled = ref * qm / s
    assert torch.allclose(scaled, scaled.round(), atol=1e-4)
    assert float(scaled.round().abs().max()) == qm
    k = torch.round(((w / s + 1) * 0.5).clamp(0, 1) * (2 ** bits - 2))
    assert torch.equal(q.codes.float(), k - qm)
    assert q.grid == nx.int_grid(bits) and float(q.step) == float(np.float32(float(s) / qm))
    assert len(torch.unique(q.codes)) <= 2 ** bits - 1
    assert torch.allclose(q.dequantize(), ref, rtol=1e-6, atol=1e-7 * float(s))


@pytest.mark.parametrize("bits", [2, 4, 5, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_dsq_activation_matches_reference_and_grid(bits, signed):
    """§1(f)6: Q_A * (2**b - 1)/u_A is an integer in [0, 2**b - 1] (unsigned); the signed variant is
    on the symmetric grid."""
    x = randn(50, 40, seed=bits)
    x = x if signed else torch.relu(x)
    u = init_activation_clip(x, signed=signed)
    q = dsq_activation(x, u, bits, signed=signed)
    ref = ref_a_quan(x, u, bits, signed)
    if signed:
        qm = 2 ** (bits - 1) - 1
        assert q.grid == nx.int_grid(bits)
        k = torch.round(((x + u) / (u + u)).clamp(0, 1) * (2 ** bits - 2)) - qm
        div = qm
    else:
        div = 2 ** bits - 1
        assert q.grid == nx.IntGrid(bits, signed=False)
        k = torch.round((x / u).clamp(0, 1) * div)
        assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= div
    scaled = ref * div / u
    assert torch.allclose(scaled, scaled.round(), atol=1e-4)
    assert torch.equal(q.codes.float(), k) and torch.equal(scaled.round(), k)
    assert torch.allclose(q.dequantize(), ref, rtol=1e-6, atol=1e-7 * float(u))


def test_dsq_round_half_to_even_on_k():
    """RDN ties are broken to even k (the reference rounds n*t, not the centred code): at 4 bits,
    w = ±s/2 gives n t = 3.5 / 10.5, so k = 4 / 10 and codes -3 / +3 (a centred round would give
    -4 / 4); x = u/2 gives 7.5 -> 8 on the unsigned grid."""
    assert dsq_weight(torch.tensor([-0.5, 0.5]), 1.0, 4).codes.tolist() == [-3, 3]
    assert dsq_weight(torch.tensor([-0.5, 0.5]), 1.0, 2).codes.tolist() == [-1, 1]   # 0.5 -> 0, 1.5 -> 2
    assert dsq_activation(torch.tensor([7.5, 0.0, 20.0, -3.0]), 15.0, 4).codes.tolist() == [8, 0, 15, 0]


def test_dsq_weight_ste_hand_derived_gradients():
    """dQ/dW = [0 <= t <= 1]; dQ/ds = code/q_max - [0 <= t <= 1] W/s, worked by hand at 4 bits, s = 1:

    w     t      k   code  dQ/dw  dQ/ds
    -2   -0.5    0   -7    0      -1
    -0.5  0.25   4   -3    1      -3/7 + 0.5
    0.3   0.65   9    2    1       2/7 - 0.3
    1.0   1.0   14    7    1       1 - 1 = 0      (the clamp passes the gradient at its bounds)
    1.5   1.25  14    7    0       1
    """
    w = torch.tensor([-2.0, -0.5, 0.3, 1.0, 1.5], requires_grad=True)
    s = torch.tensor(1.0, requires_grad=True)
    y = dsq_weight_ste(w, s, 4)
    assert y.tolist() == pytest.approx([-1.0, -3 / 7, 2 / 7, 1.0, 1.0])
    y.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert float(s.grad) == pytest.approx(-1 + (-3 / 7 + 0.5) + (2 / 7 - 0.3) + 0 + 1, abs=1e-6)


def test_dsq_activation_ste_hand_derived_gradients():
    """Unsigned, 4 bits, u = 2: x = -1 (below: dQ/du = 0), 0.3 (k = round(2.25) = 2:
    dQ/du = 2/15 - 0.15), 5 (above: dQ/du = 1, PACT-like); dQ/dx = [0, 1, 0]."""
    x = torch.tensor([-1.0, 0.3, 5.0], requires_grad=True)
    u = torch.tensor([2.0], requires_grad=True)                  # a 1-element parameter shape
    y = dsq_activation_ste(x, u, 4)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 0.0]
    assert u.grad.shape == (1,)
    assert float(u.grad) == pytest.approx(2 * (2 / 15 - 0.15) + 3 * 1.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["weight", "act", "act_signed"])
def test_ste_gradients_match_reference_autograd(kind):
    """The explicit backward equals autograd through the reference's own formula (STE round,
    torch.clamp, divide and multiply by the learned clip); forward equals dequantize() exactly."""
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(40, 30, generator=gen)
    g = torch.randn(40, 30, generator=gen)
    if kind == "act":
        x0 = torch.relu(x0)
    clip0 = 1.3
    xa, ca = x0.clone().requires_grad_(), torch.tensor(clip0, requires_grad=True)
    xb, cb = x0.clone().requires_grad_(), torch.tensor(clip0, requires_grad=True)
    if kind == "weight":
        ya, yb = dsq_weight_ste(xa, ca, 4), ref_w_quan(xb, cb, 4)
        assert torch.equal(ya, dsq_weight(x0, clip0, 4).dequantize())
    else:
        signed = kind == "act_signed"
        ya, yb = dsq_activation_ste(xa, ca, 4, signed), ref_a_quan(xb, cb, 4, signed)
        assert torch.equal(ya, dsq_activation(x0, clip0, 4, signed).dequantize())
    assert torch.allclose(ya, yb, rtol=1e-6, atol=1e-6)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    # the reference's chain (x/s, +1, *0.5, *n/n, *2, *s) multiplies g by 1 +- a few ulp
    assert torch.equal(xa.grad == 0, xb.grad == 0)
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-6, atol=0)
    assert torch.equal(xa.grad, g * (xa.grad != 0))                # exactly g where not clipped
    assert 0 < int((xa.grad == 0).sum()) < x0.numel()             # some clipped, some not
    assert float(ca.grad) == pytest.approx(float(cb.grad), rel=1e-4, abs=1e-4)


def test_ste_dtypes_and_no_grad_clip():
    w = randn(8, 8, seed=3).half().requires_grad_()
    y = dsq_weight_ste(w, 2.0, 4)                                  # float clip: no gradient for it
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert w.grad.dtype == torch.float16
    x = randn(5, seed=4).double().requires_grad_()
    u = torch.tensor(1.0, requires_grad=True)                      # float32 clip, float64 input
    dsq_activation_ste(x, u, 4, signed=True).sum().backward()
    assert u.grad.dtype == torch.float32 and x.grad.dtype == torch.float64


def test_init_clips():
    w = randn(100, 10, seed=5, scale=0.05)
    assert torch.equal(init_weight_clip(w), w.std() * 3)
    x = torch.relu(randn(1000, seed=6))
    assert float(init_activation_clip(x)) == pytest.approx(float(x.std()) * 3 / math.sqrt(1 - 2 / math.pi),
                                                           rel=1e-6)
    assert float(init_activation_clip(x, signed=True)) == pytest.approx(float(x.std()) * 3, rel=1e-6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: dsq_weight(torch.randn(4), 0.0), ValueError, "dsq_weight: s_w must be finite and > 0"),
    (lambda: dsq_weight(torch.randn(4), -1.0), ValueError, "dsq_weight: s_w"),
    (lambda: dsq_weight(torch.randn(4), float("inf")), ValueError, "s_w"),
    (lambda: dsq_weight(torch.randn(4), torch.ones(2)), ValueError, "single"),
    (lambda: dsq_weight(torch.randn(4), "1"), ValueError, "s_w"),
    (lambda: dsq_weight(torch.randn(4), 1.0, 17), ValueError, "dsq_weight: bits"),
    (lambda: dsq_weight(torch.tensor([float("nan")]), 1.0), ValueError, "dsq_weight: .*NaN/Inf"),
    (lambda: dsq_activation(torch.randn(4), -2.0), ValueError, "dsq_activation: u_a"),
    (lambda: dsq_activation(torch.randn(4), 2.0, signed=1), ValueError, "signed must be a bool"),
    (lambda: dsq_activation(torch.arange(4), 2.0), TypeError, "dsq_activation"),
    (lambda: dsq_weight_ste(torch.randn(4), torch.tensor(0.0)), ValueError, "dsq_weight_ste: s_w"),
    (lambda: dsq_weight_ste(torch.randn(4), -1.0), ValueError, "dsq_weight_ste: s_w"),
    (lambda: dsq_activation_ste(torch.tensor([float("inf")]), 1.0), ValueError, "dsq_activation_ste"),
    (lambda: dsq_activation_ste(torch.randn(4), 1.0, 1), ValueError, "dsq_activation_ste: bits"),
    (lambda: init_weight_clip(torch.ones(5)), ValueError, "init_weight_clip: .*constant"),
    (lambda: init_activation_clip(torch.tensor([3.0])), ValueError, "at least 2"),
    (lambda: init_activation_clip(torch.randn(4), signed="yes"), ValueError, "signed"),
])
def test_dsq_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------------
# StatQuant INT8 baseline
# ---------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(np.float32, st.integers(1, 200), elements=finite))
def test_int8_weights_zero_aligned_no_clipping(arr):
    """PTQ (§2(a), §2(f)4-5): codes in [0, 255]; real zero is code z = floor(-m s) and dequantizes to
    exactly 0; nothing is clipped (every error is at most half a step)."""
    x = torch.from_numpy(np.append(arr, np.float32(0.0)))
    q = int8_per_tensor(x)
    assert q.grid == UINT8 and q.codes.dtype == torch.int16 and q.method == "int8_per_tensor"
    assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= 255
    mn, mx = float(x.min()), float(x.max())
    m, M = min(mn - 1e-8, 0.0), max(mx + 1e-8, 0.0)
    z = math.floor(-m * (255 / (M - m)))                          # -m * s, as the reference
    deq = q.dequantize()
    if z > 0:
        assert int(q.codes[-1]) == z and float(deq[-1]) == 0.0
    err = (x.double() - deq.double()).abs()
    assert torch.all(err <= float(q.step) * (0.5 + 1e-4) + 2e-8)


def test_int8_activations_min_max():
    x = randn(1000, seed=8) * 3 + 1
    q = int8_per_tensor(x, zero_aligned=False)
    assert int(q.codes[x.argmin()]) == 0 and int(q.codes[x.argmax()]) == 255
    assert float(q.offset) == float(np.float32(float(x.min()) - 1e-8))
    assert float(q.step) == float(np.float32((float(x.max()) - float(x.min()) + 2e-8) / 255))
    assert torch.all((x - q.dequantize()).abs() <= float(q.step) * (0.5 + 1e-4))


def test_int8_round_half_to_even_and_edge_cases():
    x = torch.linspace(-1, 1, 101)
    step, z = float(int8_per_tensor(x).step), 127
    assert int(int8_per_tensor(x).codes[50]) == z
    ties = [np.float32((k + 0.5) * step) for k in range(-20, 20)]
    ties = [t for t in ties if float(np.float32(t) / np.float32(step)) % 1 == 0.5]
    assert len(ties) > 10
    q = int8_per_tensor(torch.cat([x, torch.tensor(ties)]))
    assert float(q.step) == step                                 # range unchanged
    expect = [int(np.round(float(np.float32(t) / np.float32(step)))) + z for t in ties]
    assert q.codes[101:].tolist() == expect                       # np.round is half to even too
    q = int8_per_tensor(torch.zeros(7))                          # all zero: z = 127, exact 0
    assert torch.all(q.codes == 127) and torch.all(q.dequantize() == 0)
    q = int8_per_tensor(torch.tensor([0.0, 1.0, 2.0]))            # z = 0: [PROPOSED] s' = s fallback
    assert q.codes[0] == 0 and q.codes[2] == 255 and math.isfinite(float(q.step))
    assert float(q.offset) == float(np.float32(-1e-8))
    q = int8_per_tensor(torch.tensor([-3.0, -1.0]), zero_aligned=True)   # all negative: z = 255
    assert int(q.codes[0]) == 0 and float(int8_per_tensor(torch.tensor([-3.0, 0.0])).dequantize()[1]) == 0.0


@pytest.mark.parametrize("call,exc,match", [
    (lambda: int8_per_tensor(torch.tensor([1.0, float("nan")])), ValueError, "int8_per_tensor: .*NaN/Inf"),
    (lambda: int8_per_tensor(torch.arange(3)), TypeError, "int8_per_tensor"),
    (lambda: int8_per_tensor(torch.randn(3), zero_aligned=None), ValueError, "zero_aligned"),
    (lambda: int8_per_tensor(torch.empty(0)), ValueError, "empty"),
    (lambda: int8_per_tensor(torch.tensor([-1e308, 1e308], dtype=torch.float64)), ValueError, "overflows"),
])
def test_int8_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), bits=st.integers(2, 8), log_scale=st.integers(-30, 30))
def test_int_symmetric_equals_shiftquant_with_one_group(seed, bits, log_scale):
    """One definition of per-tensor symmetric RDN in the project: ShiftQuant with E_max = 0."""
    from host.quant.shiftquant import shiftquant
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(37, 53, generator=g) * 2.0 ** log_scale
    a = int_symmetric(x, bits)
    b = shiftquant(x, bits, e_max=0, rounding="rdn")
    assert torch.equal(a.codes, b.codes)
    assert float(a.step) == float(b.scale)
