"""L1 normalization (host/quant/l1norm.py) against ALGORITHMS.md §3, properties §3(f)6–8."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hw import numerics as nx
from host.quant.l1norm import (
    KAPPA, L1NormFunction, L1NormIntResult, l1_batch_norm, l1_layer_norm, l1_norm, l1_norm_int,
)

F64 = torch.float64
fast = settings(max_examples=30, deadline=None)


def plain_l1_norm(x, dims, w=None, b=None, eps=1e-5, kappa=KAPPA):
    """The float formula with ordinary autograd (|.| differentiated by torch) -- the reference."""
    mu = x.mean(dims, keepdim=True)
    sigma = kappa * (x - mu).abs().mean(dims, keepdim=True) + eps
    y = (x - mu) / sigma
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


# --------------------------------------------------------------------------- §3(f)6 forward

@pytest.mark.parametrize("kappa", [KAPPA, 1.0])
def test_batch_norm_forward_mean_and_mad(kappa):
    """Per channel: mean(y) = beta and mean|y - beta| = |gamma| sigma_1/(kappa sigma_1 + eps), i.e.
    |gamma|/kappa up to eps (relative deviation eps/(kappa sigma_1))."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 6, 7, generator=g, dtype=F64) * 3 + 1.5
    w = torch.randn(5, generator=g, dtype=F64)
    b = torch.randn(5, generator=g, dtype=F64)
    eps = 1e-3
    y = l1_batch_norm(x, None, None, w, b, training=True, eps=eps, kappa=kappa)
    dims = (0, 2, 3)
    torch.testing.assert_close(y.mean(dims), b, rtol=0, atol=1e-12)
    mad = (y - b.reshape(1, 5, 1, 1)).abs().mean(dims)
    s1 = (x - x.mean(dims, keepdim=True)).abs().mean(dims)
    torch.testing.assert_close(mad, w.abs() * s1 / (kappa * s1 + eps), rtol=1e-12, atol=0)
    rel = (mad / (w.abs() / kappa) - 1).abs()
    assert bool((rel <= eps / (kappa * s1) * 1.0001).all()) and float(rel.max()) > 0


@fast
@given(seed=st.integers(0, 2 ** 31), shape=st.lists(st.integers(2, 6), min_size=1, max_size=3),
       gamma=st.floats(-3, 3), beta=st.floats(-3, 3))
def test_layer_norm_forward_mean_and_mad(seed, shape, gamma, beta):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, *shape, generator=g, dtype=F64) * 10
    w = torch.full(shape, gamma, dtype=F64)
    b = torch.full(shape, beta, dtype=F64)
    eps = 1e-5
    y = l1_layer_norm(x, shape, w, b, eps=eps)
    dims = tuple(range(1, x.dim()))
    torch.testing.assert_close(y.mean(dims), torch.full((4,), beta, dtype=F64), rtol=0, atol=1e-12)
    s1 = (x - x.mean(dims, keepdim=True)).abs().mean(dims)
    torch.testing.assert_close((y - beta).abs().mean(dims), abs(gamma) * s1 / (KAPPA * s1 + eps),
                               rtol=1e-12, atol=1e-14)


def test_forward_matches_plain_formula_and_half_dtype():
    x = torch.randn(3, 4, 10, dtype=F64)
    w, b = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    torch.testing.assert_close(l1_layer_norm(x, 10, w, b), plain_l1_norm(x, (2,), w, b), rtol=1e-13, atol=1e-13)
    y16 = l1_layer_norm(x.half(), (4, 10))
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), plain_l1_norm(x.half().float(), (1, 2)), rtol=2e-3, atol=2e-3)


def test_constant_set_gives_beta():
    x = torch.full((2, 6), 3.0)
    y = l1_layer_norm(x, 6, torch.ones(6), torch.full((6,), 0.25))
    assert torch.equal(y, torch.full((2, 6), 0.25))


# --------------------------------------------------------------------------- §3(f)7 backward

@pytest.mark.parametrize("kappa", [KAPPA, 1.0])
def test_gradcheck_layer_norm(kappa):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 7, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(2, 7, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(2, 7, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: l1_layer_norm(x, (2, 7), w, b, eps=1e-3, kappa=kappa),
                                    (x, w, b))


def test_gradcheck_batch_norm_and_generic_dims():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 2, 3, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: l1_batch_norm(x, None, None, w, b, training=True, eps=1e-3), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: l1_norm(x, (0, 3), eps=1e-4), (x,))
    # no affine at all, 2-D BN input
    x2 = torch.randn(9, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: l1_batch_norm(x, None, None, training=True), (x2,))


@fast
@given(seed=st.integers(0, 2 ** 31), n=st.integers(2, 40), eps=st.sampled_from([1e-5, 1e-3, 0.5]))
def test_analytic_backward_matches_autograd_of_the_formula(seed, n, eps):
    """The closed-form backward equals torch.autograd through the plain formula (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, generator=g, dtype=F64)
    w, b = torch.randn(n, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64)
    dy = torch.randn(3, n, generator=g, dtype=F64)
    grads = []
    for f in (lambda *a: l1_layer_norm(*a[:1], n, *a[1:], eps=eps),
              lambda *a: plain_l1_norm(a[0], (1,), a[1], a[2], eps=eps)):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        f(xs, ws, bs).backward(dy)
        grads.append((xs.grad, ws.grad, bs.grad))
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


def test_backward_formula_explicitly():
    """dL/dx = (1/sigma)[g - mean g - kappa mean(g yhat)(sgn - mean sgn)] written out."""
    x = torch.randn(37, dtype=F64, requires_grad=True)
    dy = torch.randn(37, dtype=F64)
    eps = 1e-3
    l1_norm(x, 0, eps=eps).backward(dy)
    xd = x.detach()
    xc = xd - xd.mean()
    sigma = KAPPA * xc.abs().mean() + eps
    yhat, sgn = xc / sigma, torch.sign(xc)
    ref = (dy - dy.mean() - KAPPA * (dy * yhat).mean() * (sgn - sgn.mean())) / sigma
    torch.testing.assert_close(x.grad, ref, rtol=1e-13, atol=1e-14)
    # the Function directly (what host.nn layers call), weight/bias in broadcast shape
    xs = xd.reshape(1, 37).requires_grad_()
    w = torch.full((1, 37), 2.0, dtype=F64, requires_grad=True)
    L1NormFunction.apply(xs, w, None, (1,), eps, KAPPA).backward(dy.reshape(1, 37))
    torch.testing.assert_close(xs.grad, 2 * ref.reshape(1, 37), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(w.grad, dy.reshape(1, 37) * yhat.reshape(1, 37), rtol=1e-13, atol=1e-14)


# --------------------------------------------------------------------------- BN running statistics

def test_batch_norm_running_stats_and_eval():
    g = torch.Generator().manual_seed(3)
    rm, rs = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    w, b = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    exp_m, exp_s = rm.clone(), rs.clone()
    for _ in range(3):
        x = torch.randn(6, 4, 3, generator=g, dtype=F64) * 2 + 0.7
        mu = x.mean((0, 2))
        s = KAPPA * (x - mu.reshape(1, 4, 1)).abs().mean((0, 2))
        l1_batch_norm(x, rm, rs, w, b, training=True, momentum=0.2)
        exp_m, exp_s = 0.8 * exp_m + 0.2 * mu, 0.8 * exp_s + 0.2 * s
    torch.testing.assert_close(rm, exp_m, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(rs, exp_s, rtol=1e-14, atol=1e-14)
    x = torch.randn(5, 4, 3, generator=g, dtype=F64, requires_grad=True)
    y = l1_batch_norm(x, rm, rs, w, b, training=False, eps=1e-5)
    v = (1, 4, 1)
    torch.testing.assert_close(y, w.reshape(v) * (x - rm.reshape(v)) / (rs.reshape(v) + 1e-5) + b.reshape(v))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (w / (rs + 1e-5)).reshape(v).expand(5, 4, 3))
    rm0 = rm.clone()
    l1_batch_norm(x.detach(), rm, rs, w, b, training=False)
    assert torch.equal(rm, rm0)                           # eval never updates


# --------------------------------------------------------------------------- float path errors

def test_float_path_bad_arguments():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="l1_norm"):
        l1_layer_norm(torch.tensor([[1.0, float("nan")]]), 2)
    with pytest.raises(TypeError, match="l1_norm"):
        l1_norm(torch.ones(2, 3, dtype=torch.int32), 1)
    with pytest.raises(ValueError, match="normalized_shape"):
        l1_layer_norm(x, 4)
    with pytest.raises(ValueError, match="weight"):
        l1_layer_norm(x, 3, torch.ones(4))
    with pytest.raises(ValueError, match="eps"):
        l1_layer_norm(x, 3, eps=0.0)
    with pytest.raises(ValueError, match="kappa"):
        l1_layer_norm(x, 3, kappa=-1.0)
    with pytest.raises(ValueError, match="dim"):
        l1_norm(x, 2)
    with pytest.raises(ValueError, match="running"):
        l1_batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="momentum"):
        l1_batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=1.5)
    with pytest.raises(ValueError, match="shape"):
        l1_batch_norm(x, torch.zeros(2), torch.ones(2), training=True)
    with pytest.raises(ValueError, match="l1_batch_norm"):
        l1_batch_norm(torch.randn(3), None, None, training=True)


# --------------------------------------------------------------------------- §3(f)8 integer path

def scalar_l1_norm_int(codes, dims, *, scale=None, out_bits=8, out_frac_bits=None, rounding="rdn",
                       eps=1e-5, kappa=KAPPA, f_k=16, b_r=16, gamma=None, beta=None, f_g=16, f_a=16,
                       seed=None, rand_bits=16):
    """Independent scalar model of the documented integer arithmetic (Python ints / Fractions only)."""
    shape = list(codes.shape)
    nd = len(shape)
    q = codes.tolist()
    f_y = out_bits - 3 if out_frac_bits is None else out_frac_bits
    qmax = 2 ** (out_bits - 1) - 1
    n = math.prod(shape[d] for d in dims)
    idx_all = list(__import__("itertools").product(*[range(s) for s in shape]))

    def get(t, idx):
        for i in idx:
            t = t[i]
        return t

    key = lambda idx: tuple(idx[d] for d in range(nd) if d not in dims)
    groups = {}
    for idx in idx_all:
        groups.setdefault(key(idx), []).append(idx)
    k_int = round(Fraction(kappa) * 2 ** f_k)
    e_int = round(Fraction(eps) / Fraction(1.0 if scale is None else scale) * n * n * 2 ** f_k)
    gam = None if gamma is None else torch.broadcast_to(gamma.double(), shape).tolist()
    bet = None if beta is None else torch.broadcast_to(beta.double(), shape).tolist()
    draws = nx.rng_draws(seed, len(idx_all), rand_bits) if rounding == "sr" else None
    out = torch.zeros(shape, dtype=torch.int64)
    stats = {}
    for kk, members in groups.items():
        s = sum(get(q, i) for i in members)
        d = sum(abs(n * get(q, i) - s) for i in members)
        den = k_int * d + e_int
        if den == 0:
            r, w = 0, 0
        else:
            ll = den.bit_length()
            r = round_half_up(Fraction(n * 2 ** (b_r + ll - n.bit_length()), den))
            w = b_r + ll - n.bit_length() - f_k
        stats[kk] = (s, d, r, w)
        for idx in members:
            t = n * get(q, idx) - s
            h = math.floor(Fraction(t * r) * Fraction(2) ** (f_y + f_a - w))
            if gam is not None:
                h = math.floor(Fraction(h * round(Fraction(get(gam, idx)) * 2 ** f_g), 2 ** f_g))
            if bet is not None:
                h += round(Fraction(get(bet, idx)) * 2 ** (f_y + f_a))
            v = Fraction(h, 2 ** f_a)
            if rounding == "rdn":
                c = round(v)
            else:
                flat = sum(idx[j] * math.prod(shape[j + 1:]) for j in range(nd))
                c = math.floor(v + Fraction(nx.draw_to_uniform(draws[flat], rand_bits)))
            out[idx] = max(-qmax, min(qmax, c))
    return out, stats


def round_half_up(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2))


def int_inputs(seed, shape, lo=-8, hi=8, dtype=torch.int8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), case=st.sampled_from(["ln", "bn", "mid"]),
       rounding=st.sampled_from(["rdn", "sr"]), out_bits=st.sampled_from([4, 8]),
       affine=st.booleans(), small_recip=st.booleans())
def test_int_path_matches_scalar_reference(seed, case, rounding, out_bits, affine, small_recip):
    """Bit-exact against an independent scalar model of the documented integer steps (the contract a
    hardware L1Norm unit follows): statistics, reciprocal and codes."""
    shape, dims = {"ln": ((3, 10), (1,)), "bn": ((4, 3, 2, 2), (0, 2, 3)), "mid": ((2, 5, 3), (1,))}[case]
    q = int_inputs(seed, shape)
    g = torch.Generator().manual_seed(seed + 1)
    aff_shape = {"ln": (10,), "bn": (3, 1, 1), "mid": (5, 1)}[case]
    gamma = torch.randn(aff_shape, generator=g) if affine else None
    beta = torch.randn(aff_shape, generator=g) if affine else None
    kw = dict(scale=0.05, out_bits=out_bits, rounding=rounding, gamma=gamma, beta=beta,
              recip_bits=5 if small_recip else 16)
    res = l1_norm_int(q, dim=dims, seed=99, **kw)
    kw["b_r"] = kw.pop("recip_bits")
    ref, stats = scalar_l1_norm_int(q, dims, seed=99, **kw)
    assert torch.equal(res.codes.long(), ref)
    got = sorted(zip(res.sum.flatten().tolist(), res.abs_dev.flatten().tolist(),
                     res.recip.flatten().tolist(), res.recip_shift.flatten().tolist()))
    assert got == sorted(stats.values())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n=st.integers(2, 300), lo=st.integers(-128, 0), hi=st.integers(1, 128))
def test_int_statistics_are_exact(seed, n, lo, hi):
    """mu = sum/n and sigma_1 = abs_dev/n² equal the exact rationals mean(q) and mean|q - mean(q)|."""
    q = int_inputs(seed, (3, n), lo, hi, torch.int16)
    res = l1_norm_int(q, dim=1)
    assert res.n == n and res.sum.shape == (3, 1)
    for row, s, d in zip(q.tolist(), res.sum.flatten().tolist(), res.abs_dev.flatten().tolist()):
        mu = Fraction(sum(row), n)
        assert Fraction(s, n) == mu
        assert Fraction(d, n * n) == sum(abs(Fraction(v) - mu) for v in row) / n


def _error_bound(gy_steps, yhat, kw):
    """First-order fixed-point error (output steps) of the documented integer path; ``gy_steps`` is
    gamma * yhat in output steps (beta is added exactly up to 2**-(F_a+1))."""
    b_r, f_k, f_g, f_a = kw.get("recip_bits", 16), 16, 16, 16
    return gy_steps.abs() * (2.0 ** -b_r + 2.0 ** -f_k / KAPPA) * 1.01 + yhat.abs() * 2.0 ** (
        kw["f_y"] - f_g - 1) + 3 * 2.0 ** -f_a + 1e-9


@pytest.mark.parametrize("rounding", ["rdn", "sr"])
@pytest.mark.parametrize("case", ["ln", "bn"])
@pytest.mark.parametrize("recip_bits", [16, 6])
def test_int_output_within_one_step_of_float(rounding, case, recip_bits):
    """Quantized output vs the float L1 norm (float64, exact kappa, on x = s_x * q), in output steps:
    |code - clamp(y/s_y)| <= 1/2 + delta (RDN) or < 1 + delta (SR), delta the documented fixed-point bound.
    recip_bits = 6 shows the bound tracks the reciprocal precision."""
    g = torch.Generator().manual_seed(7)
    if case == "ln":
        shape, dims, aff = (16, 96), (1,), (96,)
    else:
        shape, dims, aff = (8, 6, 5, 5), (0, 2, 3), (6, 1, 1)
    q = torch.randint(-7, 8, shape, generator=g, dtype=torch.int8)
    q[0] = 3                                             # a constant set (LN row / BN sample) included
    gamma = 0.5 + torch.rand(aff, generator=g, dtype=F64)
    beta = 0.3 * torch.randn(aff, generator=g, dtype=F64)
    s_x, eps = 0.02, 1e-4
    res = l1_norm_int(q, dim=dims, scale=s_x, eps=eps, out_bits=8, rounding=rounding, gamma=gamma,
                      beta=beta, recip_bits=recip_bits, seed=5)
    assert isinstance(res, L1NormIntResult) and float(res.step) == 2.0 ** -5
    yhat = l1_norm(q.double() * s_x, dims, eps=eps)
    y = yhat * gamma + beta
    y_steps = y / float(res.step)
    err = (res.codes.double() - y_steps.clamp(-127, 127)).abs()
    delta = _error_bound(yhat * gamma / float(res.step), yhat, dict(recip_bits=recip_bits, f_y=5))
    limit = 0.5 + delta if rounding == "rdn" else 1 + delta
    assert bool((err <= limit).all()), float((err - limit).max())
    if rounding == "rdn" and recip_bits == 16:
        assert float(err.max()) <= 0.51
    if recip_bits == 6 and rounding == "rdn":
        assert float(err.max()) > 0.51                   # coarse reciprocal is visible, but bounded


def test_int_sr_is_unbiased_and_reproducible():
    """SR output: E[code] = h/2**F_a (z-score against p(1-p)) and the same seed gives the same codes."""
    q = int_inputs(3, (4, 50))
    r1 = l1_norm_int(q, dim=1, rounding="sr", seed=1, out_bits=4)
    assert torch.equal(r1.codes, l1_norm_int(q, dim=1, rounding="sr", seed=1, out_bits=4).codes)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = l1_norm_int(q, dim=1, rounding="sr", generator=g1)
    assert a.seed is not None and torch.equal(a.codes, l1_norm_int(q, dim=1, rounding="sr", generator=g2).codes)
    y = l1_norm(q.double(), 1) / 0.5                     # out_bits 4 -> step 1/2
    v = y.clamp(-7, 7)
    f = v - torch.floor(v)
    tot = torch.zeros_like(v)
    trials = 400
    for s in range(trials):
        tot += l1_norm_int(q, dim=1, rounding="sr", seed=s, out_bits=4).codes.double()
    z = float((tot - trials * v).sum() / math.sqrt(trials * float((f * (1 - f)).sum())))
    assert abs(z) < 5, z
    assert r1.seed == 1 and l1_norm_int(q, dim=1).seed is None


def test_int_constant_rows_and_zero_eps():
    q = torch.tensor([[5, 5, 5, 5], [1, -1, 1, -1]], dtype=torch.int8)
    res = l1_norm_int(q, dim=1, eps=0.0, beta=torch.tensor(0.5))
    assert int(res.recip[0, 0]) == 0 and res.codes[0].tolist() == [16, 16, 16, 16]   # beta / 2**-5
    # +-1 row: mu = 0, sigma_1 = 1, yhat = +-1/kappa = +-0.7979 = +-25.53 steps, + beta = 16 steps
    assert res.codes[1].tolist() == [42, -10, 42, -10]
    assert l1_norm_int(q, dim=1, eps=0.0).codes[1].tolist() == [26, -26, 26, -26]


def test_int_result_dequantize_and_types():
    q = int_inputs(0, (2, 3, 8))
    res = l1_norm_int(q, dim=-1, out_bits=4)
    assert res.codes.dtype == torch.int8 and res.codes.shape == q.shape
    assert res.grid == nx.int_grid(4) and int(res.codes.abs().max()) <= 7
    torch.testing.assert_close(res.dequantize(), res.codes.float() * 0.5)
    assert res.mean().shape == (2, 3, 1) and res.mad().shape == (2, 3, 1)
    torch.testing.assert_close(res.mean(), q.double().mean(-1, keepdim=True))
    r16 = l1_norm_int(q.to(torch.int64), dim=-1, out_bits=12)
    assert r16.codes.dtype == torch.int16


def test_int_path_bad_arguments():
    q = torch.randint(-7, 8, (3, 4), dtype=torch.int8)
    with pytest.raises(TypeError, match="l1_norm_int"):
        l1_norm_int(q.float(), dim=1)
    with pytest.raises(TypeError, match="l1_norm_int"):
        l1_norm_int(q.bool(), dim=1)
    with pytest.raises(ValueError, match="dim"):
        l1_norm_int(q, dim=2)
    with pytest.raises(ValueError, match="out_bits"):
        l1_norm_int(q, dim=1, out_bits=1)
    with pytest.raises(ValueError, match="rounding"):
        l1_norm_int(q, dim=1, rounding="up")
    with pytest.raises(ValueError, match="recip_bits"):
        l1_norm_int(q, dim=1, recip_bits=0)
    with pytest.raises(ValueError, match="eps"):
        l1_norm_int(q, dim=1, eps=-1.0)
    with pytest.raises(ValueError, match="scale"):
        l1_norm_int(q, dim=1, scale=0.0)
    with pytest.raises(ValueError, match="gamma"):
        l1_norm_int(q, dim=1, gamma=torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="l1_norm_int"):
        l1_norm_int(torch.zeros(0, 3, dtype=torch.int8), dim=1)
    with pytest.raises(ValueError, match="overflow"):
        l1_norm_int(torch.full((1, 2 ** 20), 2 ** 30, dtype=torch.int64), dim=1)


# ---------------------------------------------------------------------------------------------------
# Step-time shortcuts: tiled per-channel operations, the forward's statistics reused (same bits)
# ---------------------------------------------------------------------------------------------------

def _plain_per_channel(op, x, v, left=False):
    return op(v, x) if left else op(x, v)


@pytest.mark.parametrize("shape", [(64, 8, 28, 28), (3, 5, 7, 2), (2, 16, 1, 1), (4, 3, 5, 5)])
@pytest.mark.parametrize("layout", ["cl", "nchw"])
def test_per_channel_ops_are_the_plain_ops(shape, layout):
    import host.quant.l1norm as L
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 1e3
    x.view(-1)[::7] = -0.0
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    v = torch.randn((1, shape[1], 1, 1), generator=g)
    v.view(-1)[0] = 0.0
    for op in (torch.sub, torch.div, torch.mul, torch.add):
        for left in (False, True):
            got, want = L._per_channel(op, x, v, left), _plain_per_channel(op, x, v, left)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)) and got.stride() == want.stride()


@pytest.fixture(scope="module")
def baseline_kernels(tmp_path_factory):
    """The kernels built without the AVX2 clones (what a CPU without AVX2 runs)."""
    import os
    from unittest import mock
    from host.quant import native
    cache = tmp_path_factory.mktemp("baseline")
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE_CACHE": str(cache)}):
        return native._load(native._build(("TETRAD_NO_VECTOR_CLONES",)))


@pytest.mark.parametrize("layout", ["cl", "nchw", "cl-dy-nchw"])
@pytest.mark.parametrize("dtype,affine,shape", [(torch.float32, True, (6, 8, 9, 7)), (torch.float32, False, (6, 8, 9, 7)),
                                                (torch.float32, True, (5, 1, 4, 3)), (torch.float32, True, (7, 3, 1, 1)),
                                                (torch.float32, True, (64, 8, 28, 28)),
                                                (torch.float16, True, (6, 8, 9, 7)), (torch.float64, True, (6, 8, 9, 7))])
@pytest.mark.parametrize("build", ["native", "baseline"])
def test_batch_norm_shortcuts_keep_every_bit(layout, dtype, affine, shape, build, monkeypatch, request):
    """Forward, backward (dx, dweight, dbias) and running statistics of l1_batch_norm as the plain code
    computed them (torch passes with plain broadcasts, TETRAD_NATIVE=0, the statistics computed again from
    x): the fused kernels of host.quant.native (both builds), the tiled per-channel operations and the
    reused statistics. Zeros (sign 0), NCHW and channels-last, a gradient in the other layout (torch path)."""
    import host.quant.l1norm as L
    from host.quant import native
    n, c, h, w_ = shape

    def run(plain):
        g = torch.Generator().manual_seed(2)
        x = (torch.randn(shape, generator=g) * 3 + 1).to(dtype)
        x.view(-1)[::11] = 0.0
        x.view(-1)[3::17] = x.view(-1)[2::17][: x.view(-1)[3::17].numel()]
        if layout != "nchw":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(c, generator=g, dtype=dtype).requires_grad_() if affine else None
        b = torch.randn(c, generator=g, dtype=dtype).requires_grad_() if affine else None
        rm, rs = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
        dy = torch.randn(shape, generator=g).to(dtype)
        dy.view(-1)[::5] = 0.0
        if layout == "cl":
            dy = dy.contiguous(memory_format=torch.channels_last)
        if plain:
            with monkeypatch.context() as m:
                m.setattr(L, "_per_channel", _plain_per_channel)
                m.setenv("TETRAD_NATIVE", "0")
                y = l1_batch_norm(x, None, None, w, b, training=True, momentum=0.3)
                y.backward(dy)
                # the running statistics as the plain code computed them: from x again
                with torch.no_grad():
                    xd = x.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
                    mu = xd.mean((0, 2, 3))
                    scale = (xd - mu.reshape(1, c, 1, 1)).abs().mean((0, 2, 3)).mul_(KAPPA)
                    rm.mul_(0.7).add_(mu.to(rm.dtype), alpha=0.3)
                    rs.mul_(0.7).add_(scale.to(rs.dtype), alpha=0.3)
        else:
            with monkeypatch.context() as m:
                if build == "baseline":
                    lib = request.getfixturevalue("baseline_kernels")
                    m.setattr(native, "kernels", lambda: lib)
                y = l1_batch_norm(x, rm, rs, w, b, training=True, momentum=0.3)
                y.backward(dy)
        out = [y.detach(), x.grad, rm, rs]
        return out + ([w.grad, b.grad] if affine else [])

    for a, b in zip(run(False), run(True)):
        assert a.dtype == b.dtype and torch.equal(a, b) and a.stride() == b.stride()
