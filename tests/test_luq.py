"""LUQ and SMP (host/quant/luq.py) against ALGORITHMS.md §4, properties §4(f)1–4 and 6.

Statistical tests use fixed seeds (so they are deterministic) and bounds of 5 standard errors computed
from the *analytic* distribution of the quantizer (a two-point distribution per element), so each one
fails if the property it checks breaks by more than a few standard errors. The 16-bit draw
resolution biases an SR probability by at most 2**-17 of a step, far below every standard error here.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from hw import numerics as nx
from host.quant.core import LogQuantized
from host.quant.luq import LogSMPQuantized, luq, luq_alpha, luq_smp, smp_draw_stride
from host.quant.sawb import sawb

F32, F64 = torch.float32, torch.float64
fast = settings(max_examples=60, deadline=None)
Z = 5.0   # |z| bound: two-sided false-alarm probability 6e-7 per check under the null


# --------------------------------------------------------------------------- exact scalar reference

def contract_uniforms(seed, count, bits=16, offset=0):
    """The contract's uniforms for draws ``offset ..`` of stream ``seed`` (scalar hw.numerics)."""
    return [nx.draw_to_uniform(r, bits) for r in nx.rng_draws(seed, count, bits, offset)]


def _floor_log2(y: Fraction) -> int:
    n = y.numerator.bit_length() - y.denominator.bit_length()
    return n - 1 if Fraction(2) ** n > y else n


def ref_code(x: float, alpha: float, u: float) -> int:
    """ALGORITHMS.md §4(a) in exact rational arithmetic with ``SR(v) = floor(v + u)``."""
    a, y_u = Fraction(abs(x)), Fraction(u)
    if a == 0:
        return 0
    y = a / Fraction(alpha)
    if y < 1:
        c = math.floor(y + y_u)                              # stochastic underflow
    else:
        n = _floor_log2(y)
        c = n + 1 + math.floor(y / Fraction(2) ** n - 1 + y_u)  # log-domain SR in bin n
    return c if x > 0 else -c


def ref_codes(x: torch.Tensor, alpha: float, seed: int, bits=16, offset=0):
    vals = x.reshape(-1).tolist()
    us = contract_uniforms(seed, len(vals), bits, offset)
    return [ref_code(v, alpha, u) for v, u in zip(vals, us)]


def levels(y):
    """Neighbouring levels (in units of alpha) around ``y >= 0``: (0, 1) below 1, else (2**n, 2**(n+1))."""
    y = np.asarray(y, dtype=np.float64)
    lo = np.where(y < 1, 0.0, 2.0 ** np.floor(np.log2(np.maximum(y, 1))))
    hi = np.where(y < 1, 1.0, 2 * lo)
    return lo, hi


def prev_float(v: Fraction, dtype):
    """The largest ``dtype`` number strictly below ``v`` (> 0)."""
    t = torch.tensor(float(v), dtype=dtype)
    while Fraction(float(t)) >= v:
        t = torch.nextafter(t, torch.tensor(0.0, dtype=dtype))
    return float(t)


# --------------------------------------------------------------------------- strategies

wide32 = hnp.arrays(np.float32, st.integers(1, 40),
                    elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
moderate32 = hnp.arrays(np.float32, st.integers(1, 40),
                        elements=st.floats(-200, 200, width=32) | st.sampled_from([0.0, -0.0, 1.0, -4.0, 0.5]))
tensors32 = (wide32 | moderate32).map(torch.from_numpy)


# --------------------------------------------------------------------------- §4(f)1 levels

@fast
@given(x=tensors32, max_exp=st.sampled_from([6, 7]), mode=st.sampled_from(["float", "pow2"]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_levels_sign_zero_and_top(x, max_exp, mode, seed):
    if mode == "pow2" and float(x.abs().max()) > 2.0 ** 127:
        with pytest.raises(ValueError, match="luq: the top level"):   # alpha * 2**E would be >= 2**128
            luq(x, max_exp=max_exp, alpha_mode=mode, seed=seed)
        return
    q = luq(x, max_exp=max_exp, alpha_mode=mode, seed=seed)
    assert isinstance(q, LogQuantized) and q.codes.dtype == torch.int8 and q.codes.shape == x.shape
    assert q.fmt == nx.LogFormat(max_exp) and q.seed == seed and q.rand_bits == 16
    assert int(q.codes.abs().max()) <= max_exp + 1
    d = q.dequantize()
    assert d.dtype == F32
    alpha = float(q.alpha)
    m = float(x.abs().max())
    # |Q|/alpha in {0} U {2**k : 0 <= k <= max_exp}
    ratio = {Fraction(v) / Fraction(alpha) for v in d.abs().reshape(-1).tolist()}
    assert ratio <= {Fraction(0)} | {Fraction(2) ** k for k in range(max_exp + 1)}
    # zero in, zero out; sign preserved
    assert bool((q.codes[x == 0] == 0).all())
    nz = d != 0
    assert bool((torch.sign(d[nz]) == torch.sign(x[nz])).all())
    if m == 0:
        assert alpha == 1.0 and bool((q.codes == 0).all())
        return
    if mode == "float":
        # alpha = max|x|/2**E exactly whenever it is representable; then max|Q| == max|x| exactly
        exact = Fraction(m) / 2 ** max_exp
        assert Fraction(alpha) >= exact
        if Fraction(alpha) == exact:
            assert float(d.abs().max()) == m
        else:   # tiny max: alpha rounded up to the next float (no clipping)
            assert Fraction(prev_float(Fraction(alpha), F32)) < exact and m < 2.0 ** -119
    else:
        mant, _ = math.frexp(alpha)
        assert mant == 0.5                                     # a power of two
        assert Fraction(alpha) * 2 ** max_exp >= Fraction(m)   # no clipping
        assert alpha == 2.0 ** -149 or Fraction(alpha) / 2 * 2 ** max_exp < Fraction(m)   # smallest such
    assert Fraction(float(d.abs().max())) <= Fraction(alpha) * 2 ** max_exp


def test_top_level_equals_max_exactly_float32():
    g = torch.Generator().manual_seed(1)
    for max_exp in (6, 7):
        for scale in (1e-30, 1e-3, 1.0, 7.3, 1e30):
            x = torch.randn(1000, generator=g) * scale
            q = luq(x, max_exp=max_exp, seed=3)
            m = x.abs().max()
            assert float(q.alpha) * 2 ** max_exp == float(m)          # exact in float32
            i = int(x.abs().argmax())
            assert q.codes.view(-1)[i].abs() == max_exp + 1           # deterministic top level
            assert q.dequantize().view(-1)[i] == x.view(-1)[i]


def test_exact_powers_and_zero_are_deterministic():
    x = torch.tensor([0.0, -0.0, 1.0, -2.0, 4.0, 8.0, -16.0, 32.0, 64.0, 0.0]) * 0.375
    for seed in range(20):
        q = luq(x, seed=seed)
        assert torch.equal(q.dequantize(), x)
        assert q.codes.tolist() == [0, 0, 1, -2, 3, 4, -5, 6, 7, 0]


# --------------------------------------------------------------------------- exactness

@fast
@given(x=tensors32, max_exp=st.sampled_from([6, 7]), mode=st.sampled_from(["float", "pow2"]),
       bits=st.sampled_from([4, 8, 16]), seed=st.integers(0, 2 ** 32 - 1), offset=st.integers(0, 9))
def test_codes_match_exact_rational_reference(x, max_exp, mode, bits, seed, offset):
    if mode == "pow2" and float(x.abs().max()) > 2.0 ** 127:
        mode = "float"
    q = luq(x, max_exp=max_exp, alpha_mode=mode, seed=seed, rand_bits=bits, draw_offset=offset)
    assert q.codes.reshape(-1).tolist() == ref_codes(x, float(q.alpha), seed, bits, offset)


@fast
@given(x=hnp.arrays(np.float64, st.integers(1, 30),
                    elements=st.floats(-1e300, 1e300) | st.floats(-3, 3)).map(torch.from_numpy),
       seed=st.integers(0, 2 ** 32 - 1), mode=st.sampled_from(["float", "pow2"]))
def test_float64_codes_match_exact_reference(x, seed, mode):
    if mode == "pow2" and float(x.abs().max()) > 2.0 ** 1023:
        mode = "float"
    q = luq(x, seed=seed, alpha_mode=mode)
    assert q.alpha.dtype == F64
    assert q.codes.reshape(-1).tolist() == ref_codes(x, float(q.alpha), seed)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("mode", ["float", "pow2"])
def test_values_at_and_just_below_sr_thresholds(dtype, mode):
    """Inputs exactly at an SR threshold ``alpha 2**n (2 - u)`` / ``alpha (1 - u)`` (rounds up:
    ``floor(v + u)`` with ``v + u == 1``) or just below it (rounds down). In float mode the rounded
    quotient of a just-below input often lands on the threshold, so the exact-resolution path runs."""
    seed, n = 77, 3000
    us = contract_uniforms(seed, n)
    m = float(torch.tensor(1.2345678 if mode == "float" else 1.0, dtype=dtype))
    alpha_f = float(luq_alpha(torch.tensor([m], dtype=dtype), alpha_mode=mode))
    alpha = Fraction(alpha_f)
    rng = np.random.default_rng(0)
    vals, hard = [m], 0
    for i in range(1, n):
        b, u = int(rng.integers(-1, 6)), Fraction(us[i])
        thr = alpha * (1 - u) if b < 0 else alpha * 2 ** b * (2 - u)
        v = prev_float(thr, dtype) if i % 3 else float(torch.tensor(float(thr), dtype=dtype))
        if b >= 0:   # count inputs below the threshold whose rounded quotient reaches it
            qf = torch.tensor(v, dtype=dtype) / torch.tensor(alpha_f, dtype=dtype)
            hard += Fraction(float(qf)) >= 2 ** b * (2 - u) and Fraction(v) < thr
        vals.append(-v if i % 5 == 0 else v)
    x = torch.tensor(vals, dtype=dtype)
    q = luq(x, alpha_mode=mode, seed=seed)
    assert float(q.alpha) == alpha_f
    assert q.codes.tolist() == ref_codes(x, alpha_f, seed)
    assert hard > 100 if mode == "float" else hard == 0


@fast
@given(x=tensors32, seed=st.integers(0, 2 ** 32 - 1), max_exp=st.sampled_from([6, 7]))
def test_float32_and_float64_inputs_agree(x, seed, max_exp):
    a = luq(x, seed=seed, max_exp=max_exp)
    b = luq(x.double(), seed=seed, max_exp=max_exp)
    if float(x.abs().max()) < 2.0 ** -120 and float(a.alpha) != float(b.alpha):
        return   # float32 alpha = max/2**E is an inexact subnormal and was rounded up (float64's is exact)
    assert float(a.alpha) == float(b.alpha)
    assert torch.equal(a.codes, b.codes)


def test_half_precision_inputs_are_computed_in_float32():
    x = torch.randn(300, generator=torch.Generator().manual_seed(0))
    for dt in (torch.float16, torch.bfloat16):
        xh = x.to(dt)
        q = luq(xh, seed=5)
        assert q.alpha.dtype == F32
        assert torch.equal(q.codes, luq(xh.float(), seed=5).codes)


def test_non_contiguous_and_scalar_inputs():
    x = torch.randn(30, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(luq(x.T, seed=1).codes, luq(x.T.contiguous(), seed=1).codes)
    assert torch.equal(luq(x[:, ::3], seed=1).codes, luq(x[:, ::3].contiguous(), seed=1).codes)
    q = luq(torch.tensor(-3.5), seed=0)
    assert q.codes.shape == () and q.codes.item() == -7 and q.dequantize().item() == -3.5


# --------------------------------------------------------------------------- §4(f)2 unbiasedness

def _pinned(y_values, copies, max_exp, m, dtype=F32):
    """A tensor ``[m, y_0*alpha (copies), y_1*alpha (copies), ...]`` so that alpha is set by ``m``."""
    alpha = float(luq_alpha(torch.tensor([m]), max_exp=max_exp))
    body = torch.tensor(y_values, dtype=F64).mul(alpha).to(dtype).repeat_interleave(copies)
    return torch.cat([torch.tensor([m], dtype=dtype), body])


@pytest.mark.parametrize("max_exp,mode,m", [(6, "float", 64.0), (7, "float", 128.0),
                                            (6, "float", 5.0), (6, "pow2", 5.0), (7, "pow2", 3e-3)])
def test_unbiased_per_scalar_zscore(max_exp, mode, m):
    ys = [0.0001, 0.3, 0.5, 0.99, 1.0, 1.5, 2.5, 3.7, 7.0, 50.0, 63.9]
    copies = 20000
    x = _pinned(ys, copies, max_exp, m)
    x = torch.cat([x, -x[1:]])                     # negative values too
    q = luq(x, max_exp=max_exp, alpha_mode=mode, seed=11)
    alpha = float(q.alpha)
    d = q.dequantize()[1:].double().view(2 * len(ys), copies)
    xv = x[1:].double().view(2 * len(ys), copies)[:, 0]
    y = (xv.abs() / alpha).numpy()
    lo, hi = levels(y)
    var = (y - lo) * (hi - y) * alpha ** 2       # y(1-y) alpha**2 below alpha; (x-l)(u-x) inside a bin
    mean = d.mean(dim=1).numpy()
    for i in range(len(y)):
        if var[i] == 0:
            assert bool((d[i] == xv[i]).all())    # on a level: deterministic
        else:
            z = (mean[i] - float(xv[i])) / math.sqrt(var[i] / copies)
            assert abs(z) < Z, (y[i], z)
        # and the empirical variance is the analytic one (so SR is really stochastic): for a
        # two-point variable with step w, mu4 = w**4 p(1-p)(1-3p(1-p)); se(s**2)**2 = (mu4-var**2)/S
        # plus the second-order 2 var**2/S**2 (the first-order term vanishes at p = 1/2)
        w2 = ((hi[i] - lo[i]) * alpha) ** 2
        p = (y[i] - lo[i]) / (hi[i] - lo[i])
        se2 = max(w2 ** 2 * p * (1 - p) * (1 - 3 * p * (1 - p)) - var[i] ** 2, 0) / copies
        se = math.sqrt(se2 + 2 * var[i] ** 2 / copies ** 2)
        s2 = float(d[i].var(unbiased=False))
        assert abs(s2 - var[i]) <= Z * se + 1e-30, (y[i], s2, var[i])


def test_unbiased_per_tensor_dot_product():
    """E[Q(delta)^T a] = delta^T a, z-score against Var = sum_i a_i**2 Var[Q(delta_i)]."""
    g = torch.Generator().manual_seed(4)
    k, trials = 512, 4000
    delta = torch.randn(k, generator=g) * torch.exp(2 * torch.randn(k, generator=g))  # heavy-tailed
    a = torch.randn(k, generator=g, dtype=F64)
    # One call on `trials` stacked copies: same max (so same alpha), independent draws per copy.
    q = luq(delta.repeat(trials, 1), seed=9)
    dots = q.dequantize().double() @ a
    alpha = float(q.alpha)
    y = (delta.double().abs() / alpha).numpy()
    lo, hi = levels(y)
    var = float((torch.from_numpy((y - lo) * (hi - y)) * alpha ** 2 * a ** 2).sum())
    exact = float(delta.double() @ a)
    z = (float(dots.mean()) - exact) / math.sqrt(var / trials)
    assert abs(z) < Z
    assert abs(float(dots.var()) / var - 1) < 0.15   # sd of a variance estimate ~ sqrt(2/4000)


# --------------------------------------------------------------------------- §4(f)3 underflow

@pytest.mark.parametrize("y,bits", [(0.01, 16), (0.3, 16), (0.9, 16), (0.3, 8), (0.25, 4), (0.8125, 4)])
def test_underflow_probability_binomial(y, bits):
    copies = 100000
    x = _pinned([y], copies, 6, 64.0)
    x[1::2] *= -1
    q = luq(x, seed=21, rand_bits=bits)
    c = q.codes[1:]
    assert set(c.abs().unique().tolist()) <= {0, 1}
    assert bool((c[c != 0].sign() == x[1:][c != 0].sign()).all())
    k = int((c != 0).sum())
    # with b-bit draws P(up) = #{K : (K + 1/2)/2**b >= 1 - y} / 2**b, == y on the 2**-b grid
    p = math.ceil(y * 2 ** bits - 0.5) / 2 ** bits if bits < 16 else y
    z = (k - copies * p) / math.sqrt(copies * p * (1 - p))
    assert abs(z) < Z, z
    assert abs(p - y) <= 2.0 ** -(bits + 1)


# --------------------------------------------------------------------------- §4(f)4 variance

def test_sr_mse_at_least_round_to_nearest_power_mse():
    """Paper Eq. 6: MSE(SR) >= MSE(RDN to the nearest level) for every x; the empirical MSE must also
    match the SR variance (x-l)(u-x) (z-test on the squared error), i.e. SR is really active."""
    ys = np.concatenate([np.linspace(0, 64, 257)[:-1], [0.001, 0.75, 1.49, 1.51, 47.9, 48.0, 48.1]])
    copies = 4000
    x = _pinned(ys.tolist(), copies, 6, 64.0)
    q = luq(x, seed=5)
    err2 = (q.dequantize()[1:].double() - x[1:].double()).pow(2).view(len(ys), copies)
    y = x[1:].double().view(len(ys), copies)[:, 0].numpy()   # alpha = 1
    lo, hi = levels(y)
    var_sr = (y - lo) * (hi - y)
    mse_rdn = np.minimum(y - lo, hi - y) ** 2
    assert np.all(var_sr >= mse_rdn)
    p = (y - lo) / (hi - lo)
    # squared error is (hi-y)**2 w.p. p, (y-lo)**2 w.p. 1-p: its variance per sample
    var_err2 = p * (1 - p) * ((hi - y) ** 2 - (y - lo) ** 2) ** 2
    mse = err2.mean(dim=1).numpy()
    se = np.sqrt(var_err2 / copies)
    assert np.all(np.abs(mse - var_sr) <= Z * se + 1e-12)
    assert np.all(mse >= mse_rdn - Z * se - 1e-12)
    inside = var_sr - mse_rdn > 10 * se + 1e-9        # where SR and RDN differ clearly
    assert inside.sum() > 200 and np.all(mse[inside] > mse_rdn[inside])


@pytest.mark.parametrize("n", [2, 4])
def test_smp_variance_ratio(n):
    """Var[SMP_N] / Var[single] = 1/N. Bound: 5 standard errors of the ratio of two independent
    variance estimates, se(s**2) = sqrt((mu4 - sigma**4)/S) from the analytic moments."""
    copies, y = 200000, 1.6                      # bin [1, 2): p = 0.6
    x = _pinned([y], copies, 6, 64.0)
    one = luq(x, seed=100).dequantize()[1:].double()
    avg = luq_smp(x, n, seed=200).dequantize()[1:].double()
    p = y - 1
    s2 = p * (1 - p)                                          # Bernoulli(p) * step 1
    mu4 = p * (1 - p) * (1 - 3 * p * (1 - p))
    s2n, mu4n = s2 / n, (mu4 + 3 * (n - 1) * s2 ** 2) / n ** 3  # moments of a mean of n
    ratio = float(avg.var()) / float(one.var())
    se = (1 / n) * math.sqrt((mu4 - s2 ** 2) / s2 ** 2 / copies + (mu4n - s2n ** 2) / s2n ** 2 / copies)
    assert abs(ratio - 1 / n) < Z * se, (ratio, se)
    z = (float(avg.mean()) - float(x[1])) / math.sqrt(s2n / copies)   # SMP is still unbiased
    assert abs(z) < Z


def test_smp_stream_layout_and_average():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(2))  # 35 elements: not word-aligned
    r = luq_smp(x, 3, seed=1234, max_exp=7)
    assert isinstance(r, LogSMPQuantized) and r.method == "luq_smp"
    assert r.codes.shape == (3, 7, 5) and r.shape == x.shape and r.num_samples == 3
    stride = smp_draw_stride(35)
    assert r.draw_stride == stride == 36 and stride % (64 // 16) == 0
    assert smp_draw_stride(35, 4) == 48 and smp_draw_stride(32, 16) == 32
    for j, s in enumerate(r.samples):
        assert isinstance(s, LogQuantized) and s.seed == 1234 and s.fmt == nx.LOG4_REF
        ref = luq(x, seed=1234, max_exp=7, draw_offset=j * stride)
        assert torch.equal(s.codes, ref.codes) and float(s.alpha) == float(ref.alpha)
        assert s.codes.tolist() == torch.tensor(
            ref_codes(x, float(r.alpha), 1234, 16, j * stride)).view(7, 5).tolist()
    assert torch.equal(r.samples[0].codes, luq(x, seed=1234, max_exp=7).codes)
    assert not torch.equal(r.samples[0].codes, r.samples[1].codes)
    mean = sum(s.dequantize().double() for s in r.samples) / 3
    assert torch.allclose(r.dequantize().double(), mean, rtol=2e-7, atol=0)
    r2 = luq_smp(x, 2, seed=9)
    assert torch.equal(r2.dequantize(), (r2.samples[0].dequantize() + r2.samples[1].dequantize()) / 2)
    assert torch.equal(luq_smp(x, 1, seed=9).dequantize(), luq(x, seed=9).dequantize())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(luq_smp(x, 2, generator=g1).codes, luq_smp(x, 2, generator=g2).codes)


# --------------------------------------------------------------------------- pow2 alpha

@pytest.mark.parametrize("m,max_exp,expect", [
    (64.0, 6, 1.0), (float(np.nextafter(np.float32(64), np.float32(0))), 6, 1.0),
    (float(np.nextafter(np.float32(64), np.float32(100))), 6, 2.0), (48.0, 6, 1.0), (32.0, 6, 0.5),
    (128.0, 7, 1.0), (100.0, 7, 1.0), (1e-44, 6, 2.0 ** -149), (2.0 ** 127, 6, 2.0 ** 121),
    (1.6e38, 7, 2.0 ** 120)])
def test_pow2_alpha_exact(m, max_exp, expect):
    x = torch.tensor([m / 3, -m, 0.0])
    assert float(luq_alpha(x, max_exp=max_exp, alpha_mode="pow2")) == expect
    q = luq(x, max_exp=max_exp, alpha_mode="pow2", seed=0)
    assert float(q.alpha) == expect and int(q.codes.abs().max()) <= max_exp + 1


def test_pow2_alpha_top_level_must_be_finite():
    with pytest.raises(ValueError, match="luq: the top level"):
        luq(torch.tensor([3e38, 1.0]), alpha_mode="pow2")        # alpha = 2**122, top 2**128 = inf
    assert float(luq(torch.tensor([3e38, 1.0]), seed=0).dequantize()[0]) == float(torch.tensor(3e38))


def test_pow2_alpha_float64_and_signed():
    x = torch.tensor([5.0, -300.0], dtype=F64)
    assert float(luq_alpha(x, alpha_mode="pow2")) == 8.0                      # 300/64 = 4.69 -> 8
    assert float(luq_alpha(x, alpha_mode="pow2", max_source="signed")) == 0.125  # 5/64 -> 1/8
    assert float(luq_alpha(torch.tensor([1e-320], dtype=F64), alpha_mode="pow2")) == 2.0 ** -1069
    assert float(luq_alpha(torch.tensor([1e-322], dtype=F64), alpha_mode="pow2")) == 2.0 ** -1074


# --------------------------------------------------------------------------- reproducibility

def test_reproducible_seed_and_generator():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    a, b = luq(x, seed=42), luq(x, seed=42)
    assert torch.equal(a.codes, b.codes) and a.seed == 42
    assert not torch.equal(a.codes, luq(x, seed=43).codes)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    c, d = luq(x, generator=g1), luq(x, generator=g2)
    assert c.seed == d.seed and torch.equal(c.codes, d.codes)
    assert torch.equal(luq(x, seed=c.seed).codes, c.codes)     # the recorded seed reproduces it
    torch.manual_seed(5)
    e = luq(x)
    torch.manual_seed(5)
    assert torch.equal(luq(x).codes, e.codes)
    # draw i feeds element i: a prefix (with the same max, hence the same alpha) has the same codes
    pre = x.reshape(-1)[:100].clone()
    pre[0] = x.abs().max()
    full = x.reshape(-1).clone()
    full[0] = pre[0]
    assert torch.equal(luq(pre, seed=8).codes, luq(full, seed=8).codes[:100])


# --------------------------------------------------------------------------- format / grid config

@pytest.mark.parametrize("fmt", [nx.LOG4, nx.LOG4_REF])
def test_codes_encode_round_trip(fmt):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 10
    q = luq(x, max_exp=fmt.max_exp, seed=2)
    codes = set(q.codes.unique().tolist())
    assert codes == set(range(-fmt.max_code, fmt.max_code + 1))   # every code is produced here
    for c in codes:
        pat = fmt.encode(c)
        assert 0 <= pat < 2 ** fmt.code_bits and fmt.decode(pat) == c
        assert nx.pe_operand(0 if c == 0 else int(math.copysign(fmt.magnitude(c), c))) == \
            ((0, 0) if c == 0 else (int(math.copysign(1, c)), abs(c) - 1))
    assert fmt.code_bits == (4 if fmt.max_exp == 6 else 5)


@fast
@given(x=tensors32, seed=st.integers(0, 2 ** 32 - 1))
def test_grid_config_fits_4_bits(x, seed):
    """§4(f)6: max_exp=6 and weight_grid=sym15 -> every tensor fits exactly in 4-bit codes."""
    q = luq(x, max_exp=6, seed=seed)
    assert q.codes.unique().numel() <= 16
    assert all(nx.LOG4.encode(c) < 16 for c in q.codes.unique().tolist())
    w = sawb(x, weight_grid="sym15")
    assert w.codes.unique().numel() <= 16 and w.grid == nx.INT4_SYM
    assert all(nx.INT4_SYM.contains(c) for c in w.codes.unique().tolist())


# --------------------------------------------------------------------------- signed max (reference quirk)

def test_signed_max_source_reproduces_reference_alpha_and_extra_levels():
    x = torch.tensor([1.0, -3.0, 0.5, -0.01, 0.0])
    q = luq(x, max_source="signed", seed=3)
    assert float(q.alpha) == 1.0 / 64
    # -3 = 192 alpha lies in bin [128, 256): codes 8 or 9, beyond LOG4's 7 (no clipping, more levels)
    assert q.codes[1].item() in (-8, -9) and q.codes[0].item() == 7
    assert q.codes.tolist() == ref_codes(x, float(q.alpha), 3)
    with pytest.raises(ValueError):
        nx.LOG4.encode(q.codes[1].item())
    with pytest.raises(ValueError, match="luq: max_source='signed'"):
        luq(torch.tensor([-1.0, -2.0]), max_source="signed")
    with pytest.raises(ValueError, match="luq: max_source='signed'"):
        luq(torch.tensor([0.0, -2.0]), max_source="signed")
    with pytest.raises(ValueError, match="overflows"):
        luq(torch.tensor([1e-30, -3e38]), max_source="signed")
    z = luq(torch.zeros(4), max_source="signed", seed=0)
    assert float(z.alpha) == 1.0 and bool((z.codes == 0).all())
    # when max(x) is also max|x| the two sources agree
    y = torch.tensor([4.0, -1.0, 0.3])
    assert torch.equal(luq(y, seed=1).codes, luq(y, max_source="signed", seed=1).codes)


# --------------------------------------------------------------------------- edge cases and errors

def test_all_zero_and_tiny_inputs():
    for x in (torch.zeros(3, 4), torch.tensor([0.0, -0.0]), torch.zeros(5, dtype=F64)):
        q = luq(x, seed=1)
        assert float(q.alpha) == 1.0 and bool((q.codes == 0).all())
        assert bool((q.dequantize() == 0).all()) and bool(torch.isfinite(q.dequantize()).all())
        assert bool((luq_smp(x, 2, seed=1).dequantize() == 0).all())
    # max/2**6 is an inexact subnormal: alpha rounds up, nothing is clipped, codes stay in range
    m = float.fromhex("0x1.000002p-123")                 # (2**23 + 1) * 2**-146, normal
    x = torch.tensor([m, -m / 3, m / 100])
    q = luq(x, seed=2)
    assert Fraction(float(q.alpha)) > Fraction(m) / 64
    assert float(q.alpha) == float(torch.nextafter(torch.tensor(m / 64), torch.tensor(1.0)))
    assert q.codes[0] == 7 and float(q.dequantize()[0]) >= m
    assert q.codes.tolist() == ref_codes(x, float(q.alpha), 2)
    s = torch.tensor([1e-45, -3e-45])                    # subnormal input: alpha subnormal too
    qs = luq(s, seed=0)
    assert qs.codes.tolist() == ref_codes(s, float(qs.alpha), 0)


def test_bad_inputs_and_arguments():
    x = torch.randn(8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[3] = bad
        with pytest.raises(ValueError, match="luq"):
            luq(y, seed=0)
        with pytest.raises(ValueError, match="luq_smp"):
            luq_smp(y, seed=0)
    with pytest.raises(TypeError, match="luq"):
        luq(torch.arange(8), seed=0)
    with pytest.raises(TypeError, match="luq"):
        luq([1.0, 2.0], seed=0)
    with pytest.raises(ValueError, match="luq.*empty"):
        luq(torch.zeros(0), seed=0)
    for kw in (dict(max_exp=5), dict(max_exp=True), dict(max_exp=3), dict(alpha_mode="log2"),
               dict(max_source="max"), dict(rand_bits=5), dict(rand_bits=32), dict(seed=-1),
               dict(seed=2 ** 32), dict(seed=1.5), dict(draw_offset=-1), dict(seed=1, generator=torch.Generator())):
        with pytest.raises(ValueError, match="luq"):
            luq(x, **kw)
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="luq_smp: samples"):
            luq_smp(x, n, seed=0)
    with pytest.raises(ValueError, match="luq"):
        luq_alpha(x, max_exp=8)


def test_smp_with_signed_source_and_large_codes():
    x = torch.tensor([1e-30, -3e20, 2e-31], dtype=F64)   # signed quirk: codes far beyond the format
    r = luq_smp(x, 2, max_source="signed", seed=4)
    assert int(r.codes.abs().max()) > 62
    assert torch.equal(r.dequantize(), (r.samples[0].dequantize() + r.samples[1].dequantize()) / 2)
    for j, s in enumerate(r.samples):
        assert s.codes.tolist() == ref_codes(x, float(r.alpha), 4, 16, j * r.draw_stride)


# --------------------------------------------------------------------------- rounding="rdn" (naive baseline)

def ref_code_rdn(x: float, alpha: float) -> int:
    """Nearest level of {0} ∪ {alpha 2**k} in linear value, ties away from zero (exact rationals)."""
    a = Fraction(abs(x))
    if a == 0:
        return 0
    y = a / Fraction(alpha)
    if y < 1:
        c = 1 if y >= Fraction(1, 2) else 0
    else:
        n = _floor_log2(y)
        c = n + 1 + (1 if y >= Fraction(3, 2) * 2 ** n else 0)
    return c if x > 0 else -c


@fast
@given(x=tensors32, max_exp=st.sampled_from([6, 7]), mode=st.sampled_from(["float", "pow2"]))
def test_rdn_codes_are_the_nearest_level(x, max_exp, mode):
    if mode == "pow2" and float(x.abs().max()) > 2.0 ** 127:
        with pytest.raises(ValueError, match="luq: the top level"):   # as for SR: alpha * 2**E >= 2**128
            luq(x, max_exp=max_exp, alpha_mode=mode, rounding="rdn")
        return
    q = luq(x, max_exp=max_exp, alpha_mode=mode, rounding="rdn")
    alpha = float(q.alpha)
    assert q.seed is None and q.rand_bits is None
    assert q.codes.tolist() == [ref_code_rdn(v, alpha) for v in x.reshape(-1).tolist()]
    assert int(q.codes.abs().max()) <= max_exp + 1
    # nearest in linear value: no level is strictly closer than the chosen one
    y = (x.double().abs() / alpha).numpy()
    lo, hi = levels(y)
    got = q.dequantize().double().abs().numpy() / alpha
    assert np.all(np.abs(got - y) <= np.minimum(y - lo, hi - y) * (1 + 1e-12) + 1e-300)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_rdn_levels_ties_and_thresholds(dtype):
    """Ties (alpha/2, 1.5 * 2**n alpha) round up; the float just below rounds down; exact powers stay."""
    alpha = 1.0
    ys = [64.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.9, 6.0, 12.0, 47.0, 48.0, 63.0]
    below = [prev_float(Fraction(v), dtype) for v in (0.5, 1.5, 3.0, 6.0, 48.0)]
    x = torch.tensor(ys + below, dtype=dtype)
    q = luq(x, rounding="rdn")
    assert float(q.alpha) == alpha
    mags = [0 if c == 0 else 2.0 ** (c - 1) for c in q.codes.tolist()]
    assert mags == [64, 0, 0, 1, 1, 1, 2, 2, 4, 4, 8, 16, 32, 64, 64] + [0, 1, 2, 4, 32]
    assert q.codes.tolist() == [ref_code_rdn(v, alpha) for v in x.tolist()]
    neg = luq(-x, rounding="rdn")
    assert neg.codes.tolist() == [-c for c in q.codes.tolist()]


def test_rdn_is_deterministic_and_ignores_the_stream():
    x = torch.randn(64, 33) * torch.rand(64, 1) ** 4
    a = luq(x, rounding="rdn")
    for kw in (dict(seed=3), dict(generator=torch.Generator().manual_seed(9)), dict(rand_bits=4),
               dict(draw_offset=77)):
        assert torch.equal(luq(x, rounding="rdn", **kw).codes, a.codes)
    # equals SR with every draw at 1/2 -- and differs from a real SR sample
    assert not torch.equal(luq(x, seed=3).codes, a.codes)
    assert torch.equal(luq(x.double(), rounding="rdn").codes, a.codes)


def test_rdn_is_biased_sr_is_not():
    """The point of the baseline (LUQ §3): RDN's per-element mean error is large and systematic."""
    torch.manual_seed(0)
    g = torch.randn(4096) * torch.rand(4096) ** 6          # heavy-tailed: most mass below alpha
    q = luq(g, rounding="rdn").dequantize().double()
    gd = g.double()
    alpha = float(luq_alpha(g))
    small = gd.abs() < alpha / 2
    assert int(small.sum()) > 100 and bool((q[small] == 0).all())   # deterministic underflow to zero
    # the bias of sum |x| (a dot product with sign(x)): RDN misses it by many SR standard errors
    a = torch.sign(gd)
    exact = float(gd @ a)
    rdn_err = float(q @ a) - exact
    sr = torch.stack([luq(g, seed=s).dequantize().double() @ a for s in range(200)])
    se = float(sr.std()) / math.sqrt(200)
    assert abs(float(sr.mean()) - exact) < Z * se
    assert abs(rdn_err) > 20 * se
    # per element: E[RDN(x)] - x is the deterministic error, nonzero for almost every x
    assert float((q - gd).abs().mean()) > 0.1 * alpha


@pytest.mark.parametrize("dtype", [F32, F64])
def test_rdn_flush_underflow(dtype):
    """underflow='flush': |x| < alpha -> 0 (the threshold without stochastic underflow), the rest as 'nearest'."""
    x = torch.tensor([64.0, 0.0, 0.25, 0.5, 0.75, prev_float(Fraction(1), dtype), 1.0, 1.5, 5.0, -0.9, -1.0],
                     dtype=dtype)
    near = luq(x, rounding="rdn")
    flush = luq(x, rounding="rdn", underflow="flush")
    assert torch.equal(luq(x, rounding="rdn", underflow="nearest").codes, near.codes)
    assert flush.codes.tolist() == [7, 0, 0, 0, 0, 0, 1, 2, 3, 0, -1]
    assert near.codes.tolist() == [7, 0, 0, 1, 1, 1, 1, 2, 3, -1, -1]
    g = torch.randn(2000) * torch.rand(2000) ** 6
    qf, qn = luq(g, rounding="rdn", underflow="flush"), luq(g, rounding="rdn")
    small = g.abs() < luq_alpha(g)
    assert int(small.sum()) > 100 and bool((qf.codes[small] == 0).all())
    assert torch.equal(qf.codes[~small], qn.codes[~small])


def test_rdn_bad_arguments():
    x = torch.randn(8)
    for bad in ("RDN", "nearest", None, "sr2"):
        with pytest.raises(ValueError, match="luq: rounding"):
            luq(x, rounding=bad)
    with pytest.raises(ValueError, match="luq.*NaN"):
        luq(torch.tensor([1.0, float("nan")]), rounding="rdn")
    with pytest.raises(ValueError, match="luq: max_exp"):
        luq(x, rounding="rdn", max_exp=5)
    with pytest.raises(ValueError, match="luq: underflow must be one of"):
        luq(x, rounding="rdn", underflow="zero")
    with pytest.raises(ValueError, match="luq: underflow applies to rounding='rdn'"):
        luq(x, seed=0, underflow="flush")
    z = luq(torch.zeros(5), rounding="rdn")
    assert z.codes.tolist() == [0] * 5
