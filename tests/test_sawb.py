"""SAWB forward quantizer (host/quant/sawb.py) against ALGORITHMS.md §4(a), properties §4(f)5–6."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from hw import numerics as nx
from host.quant.core import AffineQuantized
from host.quant.sawb import SAWB_COEFFS, SawbQuantized, sawb, sawb_range

fast = settings(max_examples=60, deadline=None)

wide32 = hnp.arrays(np.float32, st.integers(1, 60),
                    elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
moderate32 = hnp.arrays(np.float32, st.integers(1, 60), elements=st.floats(-10, 10, width=32))
tensors32 = (wide32 | moderate32).map(torch.from_numpy)

CONFIGS = [dict(kind="weight", weight_grid=g) for g in ("sym15", "ref17", "int4")] + \
          [dict(kind="activation", signed_act_grid=g, seen_negative=True) for g in ("ref24", "int4", "sym15")] + \
          [dict(kind="activation")]


def reference_scale(x: torch.Tensor, c1: float, c2: float, qn: int, qp: int) -> float:
    """The §4(a) formula in numpy float64, independent of the implementation."""
    v = x.double().numpy().ravel()
    clip = c1 * math.sqrt(np.mean(v * v)) - c2 * np.mean(np.abs(v))
    if not clip > 0:   # degenerate: the smallest scale that clips nothing
        return max(v.max() / qp, v.min() / qn if qn < 0 else 0.0, 0.0)
    return 2.0 * clip / (qp - qn)


# --------------------------------------------------------------------------- §4(f)5

@fast
@given(x=tensors32, cfg=st.sampled_from(CONFIGS))
def test_codes_scale_and_rdn(x, cfg):
    q = sawb(x, **cfg)
    assert isinstance(q, SawbQuantized) and isinstance(q, AffineQuantized)
    assert q.codes.dtype == torch.int8 and q.codes.shape == x.shape and q.offset is None
    assert q.seed is None and q.rand_bits is None and q.method == "sawb"
    qn, qp = q.qmin, q.qmax
    assert (qn, qp) == sawb_range(4, kind=cfg["kind"], weight_grid=cfg.get("weight_grid", "sym15"),
                                  signed=q.seen_negative, signed_act_grid=cfg.get("signed_act_grid", "ref24"))
    # integer codes in [Qn, Qp], all held by the reported grid
    assert int(q.codes.min()) >= qn and int(q.codes.max()) <= qp
    assert q.grid.qmin <= qn and qp <= q.grid.qmax
    # scale = 2 clip / (Qp - Qn), rounded once to float32
    step = float(q.step)
    assert q.step.dtype == torch.float32 and math.isfinite(step) and step > 0
    ref = reference_scale(x, 12.1, 12.2, qn, qp)
    if 0 < float(np.float32(ref)) and ref * max(-qn, qp) < 3.4e38:   # not underflowing or capped
        assert step == pytest.approx(ref, rel=1e-6)
        assert float(q.clip) == pytest.approx(ref * (qp - qn) / 2, rel=1e-6)
    # codes = round(clamp(x / scale)) with torch.round (half to even); deterministic
    expect = torch.round(torch.clamp(x / q.step, qn, qp))
    assert torch.equal(q.codes.float(), expect)
    again = sawb(x, **cfg)
    assert torch.equal(again.codes, q.codes) and float(again.step) == step
    assert torch.equal(q.dequantize(), q.codes.float() * q.step)
    assert bool(torch.isfinite(q.dequantize()).all())


def test_reference_values_on_gaussian_weights():
    x = torch.randn(1 << 18, generator=torch.Generator().manual_seed(0))
    q = sawb(x)
    # [MEASURED] in the spec: (12.1, 12.2) gives clip ~ 2.37 sigma on Gaussian weights
    assert float(q.clip) == pytest.approx(12.1 - 12.2 * math.sqrt(2 / math.pi), abs=0.01)
    assert float(q.clip) == pytest.approx(2.37, abs=0.02)
    assert float(q.step) == pytest.approx(float(q.clip) * 2 / 14, rel=1e-6)
    assert not q.clip_fallback and q.grid == nx.INT4_SYM and (q.qmin, q.qmax) == (-7, 7)
    r = sawb(x, weight_grid="ref17")
    assert (r.qmin, r.qmax) == (-8, 8) and float(r.step) == pytest.approx(float(q.clip) / 8, rel=1e-6)
    assert set(r.codes.unique().tolist()) == set(range(-8, 9))   # 17 levels: the reference quirk
    assert r.grid == nx.IntGrid(5, signed=True, symmetric=True)
    i = sawb(x, weight_grid="int4")
    assert (i.qmin, i.qmax) == (-8, 7) and i.grid == nx.INT4
    assert float(i.step) == pytest.approx(float(q.clip) * 2 / 15, rel=1e-6)


def test_coefficient_sets():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    assert SAWB_COEFFS == {"ref": (12.1, 12.2), "alt": (12.68, 12.80)}
    ref, alt = sawb(x), sawb(x, coeffs="alt")
    assert torch.equal(ref.codes, sawb(x, coeffs=(12.1, 12.2)).codes)
    assert float(alt.step) == float(sawb(x, coeffs=[12.68, 12.8]).step)
    v = x.double()
    clip_alt = 12.68 * float(v.pow(2).mean().sqrt()) - 12.80 * float(v.abs().mean())
    assert float(alt.clip) == pytest.approx(clip_alt, rel=1e-9)
    assert float(alt.step) != float(ref.step)
    # other widths: only with explicit coefficients
    for bits in (2, 3, 5, 8):
        with pytest.raises(ValueError, match="sawb: .*4 bits only"):
            sawb(x, bits, coeffs="ref")
    e8 = sawb(x, 8, coeffs=(12.1, 12.2))
    assert (e8.qmin, e8.qmax) == (-127, 127) and e8.grid == nx.INT8_SYM
    assert float(e8.step) == pytest.approx(float(ref.clip) * 2 / 254, rel=1e-6)
    a8 = sawb(x.abs(), 8, kind="activation", coeffs=(1.0, 0.0))
    assert (a8.qmin, a8.qmax) == (0, 255) and a8.codes.dtype == torch.int16


def test_rdn_ties_go_to_even():
    # 1000 values of +-7 dominate: sqrt(mean x^2)/mean|x| < c2/c1, so clip falls back to max|x| = 7
    # and the scale is exactly 2*7/14 = 1, leaving the half-integers as exact ties.
    x = torch.tensor([7.0, -7.0] * 500 + [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])
    q = sawb(x)
    assert q.clip_fallback and float(q.step) == 1.0
    assert q.codes[-7:].tolist() == [0, 2, 2, 0, -2, -2, 4]


# --------------------------------------------------------------------------- activations (stateful range)

def test_activation_ranges_and_sticky_state():
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(1000, generator=g)
    mixed = torch.randn(1000, generator=g)
    q = sawb(pos, kind="activation")
    assert (q.qmin, q.qmax) == (0, 15) and q.grid == nx.UINT4 and not q.seen_negative
    assert float(q.step) == pytest.approx(reference_scale(pos, 12.1, 12.2, 0, 15), rel=1e-6)
    q = sawb(mixed, kind="activation")
    assert (q.qmin, q.qmax) == (-8, 15) and q.seen_negative
    assert int(q.codes.min()) < 0 and q.grid == nx.IntGrid(5, signed=True, symmetric=True)
    # the state is explicit: once a negative input has been seen the range stays signed
    state = False
    for batch, signed in ((pos, False), (mixed, True), (pos, True), (pos, True)):
        q = sawb(batch, kind="activation", seen_negative=state)
        state = q.seen_negative
        assert state is signed and q.qmin == (-8 if signed else 0) and q.qmax == 15
    assert sawb(pos, kind="activation", seen_negative=True, signed_act_grid="int4").grid == nx.INT4
    s = sawb(mixed, kind="activation", signed_act_grid="sym15")
    assert (s.qmin, s.qmax) == (-7, 7) and s.grid == nx.INT4_SYM
    w = sawb(mixed, kind="weight", seen_negative=True)        # the state is only for activations
    assert (w.qmin, w.qmax) == (-7, 7) and not w.seen_negative


# --------------------------------------------------------------------------- degenerate statistics

def test_nonpositive_clip_uses_smallest_nonclipping_scale():
    pm = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])          # clip = (12.1 - 12.2) * 1 < 0
    q = sawb(pm)
    step = np.float32(q.step)   # the smallest float32 >= 1/7
    assert q.clip_fallback and Fraction(float(step)) >= Fraction(1, 7)
    assert Fraction(float(np.nextafter(step, np.float32(0)))) < Fraction(1, 7)
    assert float(q.clip) == pytest.approx(1.0)
    assert q.codes.tolist() == [7, -7, 7, 7, -7]
    assert torch.allclose(q.dequantize(), pm, rtol=1e-6, atol=0)
    assert sawb(pm, weight_grid="int4").codes.tolist() == [7, -7, 7, 7, -7]   # +1 -> 7 (not clipped)
    assert sawb(pm, weight_grid="ref17").codes.tolist() == [8, -8, 8, 8, -8]
    c = sawb(torch.full((3, 3), 0.25), kind="activation")   # constant: also degenerate
    assert c.clip_fallback and bool((c.codes == 15).all()) and float(c.step) >= 0.25 / 15
    n = sawb(torch.tensor([7.0, -8.0, -8.0, 7.0]), weight_grid="int4")   # both ends fit [-8, 7]
    assert n.clip_fallback and float(n.step) == 1.0 and n.codes.tolist() == [7, -8, -8, 7]
    n = sawb(torch.tensor([8.0, -7.0, -7.0, 8.0]), weight_grid="int4")   # max/Qp decides
    assert n.clip_fallback and float(n.step) == pytest.approx(8 / 7) and n.codes.tolist() == [7, -6, -6, 7]
    z = sawb(torch.zeros(10))
    assert z.clip_fallback and float(z.step) == 1.0 and bool((z.codes == 0).all())
    za = sawb(torch.zeros(2, 5), kind="activation")
    assert float(za.step) == 1.0 and bool((za.dequantize() == 0).all()) and not za.seen_negative
    tiny = sawb(torch.tensor([1e-45, -1e-45, 0.0]))          # scale underflows to 0 -> 1
    assert float(tiny.step) == 1.0 and bool((tiny.codes == 0).all())
    one = sawb(torch.tensor([3.0]))
    assert one.clip_fallback and one.codes.tolist() == [7]


def test_large_and_float64_inputs_stay_finite():
    g = torch.Generator().manual_seed(3)
    big = torch.randn(1000, generator=g) * 1e37                 # x**2 overflows float32
    q = sawb(big)
    assert math.isfinite(float(q.step)) and not q.clip_fallback
    assert int(q.codes.abs().max()) == 7 and q.codes.unique().numel() > 10
    huge = torch.tensor([3e38, -3e38, 1e38])
    h = sawb(huge)
    assert math.isfinite(float(h.step)) and bool(torch.isfinite(h.dequantize()).all())
    x64 = torch.randn(500, generator=g, dtype=torch.float64)
    d = sawb(x64)
    assert d.step.dtype == torch.float64
    assert float(d.step) == pytest.approx(reference_scale(x64, 12.1, 12.2, -7, 7), rel=1e-12)
    hb = sawb(x64.to(torch.bfloat16))
    assert hb.step.dtype == torch.float32


# --------------------------------------------------------------------------- errors

def test_bad_inputs_and_arguments():
    x = torch.randn(16)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0] = bad
        with pytest.raises(ValueError, match="sawb"):
            sawb(y)
    with pytest.raises(TypeError, match="sawb"):
        sawb(torch.arange(4))
    with pytest.raises(ValueError, match="sawb.*empty"):
        sawb(torch.zeros(0))
    for args, kw in (((x, 1), dict(coeffs=(1, 1))), ((x, 17), dict(coeffs=(1, 1))), ((x, 4.0), {}),
                     ((x,), dict(kind="grad")), ((x,), dict(weight_grid="int5")),
                     ((x,), dict(signed_act_grid="ref17")), ((x,), dict(coeffs="sawb")),
                     ((x,), dict(coeffs=(1.0,))), ((x,), dict(coeffs=(1.0, float("nan")))),
                     ((x,), dict(coeffs="ref", kind="activation", seen_negative=1))):
        with pytest.raises(ValueError, match="sawb"):
            sawb(*args, **kw)


def test_scale_cap_keeps_outlier_tensors_finite():
    # one huge outlier among zeros: clip = m (12.1/sqrt(n) - 12.2/n) > m, so s would make 7 s overflow
    x = torch.zeros(44)
    x[0] = 3.0797e38
    q = sawb(x)
    assert not q.clip_fallback and float(q.clip) > 3.4e38
    assert float(q.step) * 7 <= torch.finfo(torch.float32).max
    assert bool(torch.isfinite(q.dequantize()).all()) and q.codes[0] == 6   # 3.08e38 / (3.4e38 / 7)


@pytest.mark.parametrize("shape,layout", [((7,), "c"), ((64, 1568), "c"), ((64, 8, 14, 14), "cl"),
                                          ((3, 5, 7, 9), "cl"), ((1000, 3), "t"), ((130_001,), "c")])
def test_one_float64_copy_gives_the_dtype_argument_norms(shape, layout):
    """sawb reduces one float64 copy for both norms: the same bits as ``vector_norm(x, p, dtype=float64)``
    (which converts x itself) -- contiguous, channels-last and transposed inputs, zeros, extremes."""
    g = torch.Generator().manual_seed(11)
    for scale in (1.0, 1e-30, 3e38):
        x = torch.randn(shape, generator=g) * scale
        x.view(-1)[::5] = 0.0
        x.view(-1)[1::7] = -0.0
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "t":
            x = x.t().contiguous().t()
        xd = x.to(torch.float64)
        for p in (1, 2):
            want = torch.linalg.vector_norm(x, p, dtype=torch.float64)
            assert torch.equal(torch.linalg.vector_norm(xd, p), want)
