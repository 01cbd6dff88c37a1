"""The LUQ-family (SAWB forward, LUQ gradient) step-time shortcuts give the bits of the code they replace.

Each shortcut is compared, ``torch.equal`` / ``==`` on values (or the same error), with the torch expression
it replaces; tests/test_step_exact.py pins the whole training step.
"""

from __future__ import annotations

import importlib
import math
import os
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from host.nn.operand import Operand as Operand_
from host.quant import native

S = importlib.import_module("host.quant.sawb")   # the module (host.quant.sawb the name is the function)

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


# --------------------------------------------------------------------------- SAWB's range and norms

def _wide(gen, n, spread):
    """float32 values over 2 * spread binades, with zeros and -0.0: float64 sums of these round, so their
    order shows in the bits."""
    x = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-spread, spread + 1, (n,), generator=gen).float())
    x[torch.rand(n, generator=gen) < 0.05] = 0.0
    x[torch.rand(n, generator=gen) < 0.05] = -0.0
    return x.float()


def _torch_stats(x):
    """The torch code: check_input_range's (lo, hi) and the float64 norms of a float64 copy."""
    with torch_code():
        xc, lo, hi = S.check_input_range(x, "sawb", any_order=True)
        xd = xc.to(torch.float64)
        return lo, hi, float(torch.linalg.vector_norm(xd, 2)), float(torch.linalg.vector_norm(xd, 1))


@fast
@given(n=st.one_of(st.integers(1, 70), st.integers(70, 5000), st.sampled_from([32767, 32768, 100352, 200704])),
       spread=st.sampled_from([0, 3, 20, 60]), seed=st.integers(0, 2 ** 31),
       build=st.sampled_from(["native", "baseline"]))
def test_sawb_stats_match_torch(n, spread, seed, build, baseline_kernels, one_torch_thread):
    """Lengths 1..70 (every tail of the 4-element blocks), up to ATen's grain size and past it, wide and
    narrow value ranges, both builds."""
    x = _wide(torch.Generator().manual_seed(seed), n, spread)
    lib = baseline_kernels if build == "baseline" else native.kernels()
    lo, hi, s1, s2 = S._stats_call(lib, x)
    want = _torch_stats(x)
    assert (lo, hi, math.sqrt(s2), s1) == want


@pytest.mark.parametrize("values", [[3.4028235e38, -3.4028235e38, 1e-45, -1e-45], [0.0, -0.0, 0.0, -0.0, -0.0],
                                    [-2.5], [1e-45] * 9, [-1.0, 1.0] * 37, [3.0e38] * 70])
def test_sawb_stats_edge_values(values, baseline_kernels):
    """The largest and the smallest subnormal floats, signed zeros only, one element, equal magnitudes."""
    x = torch.tensor(values, dtype=torch.float32)
    for lib in (native.kernels(), baseline_kernels):
        lo, hi, s1, s2 = S._stats_call(lib, x)
        want = _torch_stats(x)
        assert (lo, hi) == want[:2] and (math.sqrt(s2), s1) == want[2:]


@pytest.mark.parametrize("shape", [(64, 8, 14, 14), (3, 5, 2, 7), (1, 1, 1, 1), (2, 3, 1, 1)])
def test_sawb_range_and_norms_channels_last(shape, one_torch_thread):
    """A channels-last activation is read in storage order, as torch reduces it."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = _wide(gen, math.prod(shape), 20).reshape(shape).to(memory_format=torch.channels_last)
    got = S._range_and_norms(x)
    assert got[0] is x and got[1:] == _torch_stats(x)
    assert S._native_stats(x) is not None, "the kernel did not run"


def test_sawb_range_and_norms_declines(one_torch_thread):
    """Another dtype or layout, NaN/Inf, the kernels off: the torch code (which raises for bad input)."""
    gen = torch.Generator().manual_seed(3)
    x = _wide(gen, 600, 10).reshape(20, 30)
    assert S._native_stats(x.double()) is None
    assert S._native_stats(x.t()) is None
    assert S._native_stats(x[:, ::2]) is None
    for bad in (math.nan, math.inf, -math.inf):
        y = x.clone()
        y[7, 29] = bad
        assert S._native_stats(y) is None
        with pytest.raises(ValueError, match="NaN/Inf"):
            S.sawb(y)
    with torch_code():
        assert S._native_stats(x) is None


def test_sawb_stats_need_one_thread_past_the_grain():
    """Several torch threads split ATen's 1-norm of a large tensor: the kernel declines there."""
    x = _wide(torch.Generator().manual_seed(4), S._ATEN_GRAIN, 10)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert S._native_stats(x) is None
        assert S._native_stats(x[:-1]) is not None
        torch.set_num_threads(1)
        assert S._native_stats(x) is not None
    finally:
        torch.set_num_threads(n)


def _l1_in(order, a):
    """float64 sum of |a| in ``order``: "seq" (element order), or "lanesK" (K lane sums, then combined)."""
    a = np.abs(a)
    if order == "seq":
        return float(np.cumsum(a)[-1])
    k = int(order[5:])
    m = len(a) - len(a) % k
    lanes = np.cumsum(a[:m].reshape(-1, k), axis=0)[-1]
    s = lanes[0]
    for v in lanes[1:]:
        s = s + v
    for v in a[m:]:
        s = s + v
    return float(s)


def test_order_check_tells_the_orders_apart(one_torch_thread):
    """The load-time check's probes sum differently in the other orders (1-norm: 2, 4, 8, 16 lanes; sum of
    squares: element order, 2, 8, 16 lanes), so a torch that reduced in one of them would turn the kernel
    off; on this torch the check passes."""
    p1, p2 = (p.double().numpy() for p in S._order_probes())
    assert S._kernel_order_is_torchs(native.kernels())
    l1 = _l1_in("seq", p1)
    assert all(_l1_in(f"lanes{k}", p1) != l1 for k in (2, 4, 8, 16))
    sq = p2 * p2
    l2 = _l1_in("lanes4", sq)
    assert all(_l1_in(o, sq) != l2 for o in ("seq", "lanes2", "lanes8", "lanes16"))


@fast
@given(shape=st.sampled_from([(64, 1568), (1568, 64), (16, 8, 3, 3), (7,), (64, 16, 7, 7)]),
       kind=st.sampled_from(["weight", "activation"]), relu=st.booleans(), cl=st.booleans(),
       seed=st.integers(0, 2 ** 31))
def test_sawb_matches_torch_code(shape, kind, relu, cl, seed, one_torch_thread):
    """Whole SAWB results with the kernel's statistics against the torch code's."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.03
    if relu:
        x = x.relu()
    if cl and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    a = S.sawb(x, 4, kind=kind)
    with torch_code():
        b = S.sawb(x, 4, kind=kind)
    assert torch.equal(a.codes, b.codes) and a.codes.stride() == b.codes.stride()
    assert torch.equal(a.step, b.step) and torch.equal(a.clip, b.clip)
    assert (a.qmin, a.qmax, a.clip_fallback, a.seen_negative) == (b.qmin, b.qmax, b.clip_fallback, b.seen_negative)


# --------------------------------------------------------------------------- naive-log4's flush below alpha

L = importlib.import_module("host.quant.luq")


def _near_alpha(gen, shape, alpha):
    """Values at, just below and just above alpha (both signs), zeros, -0.0 and spread values."""
    x = torch.randn(shape, generator=gen) * alpha * 4
    a = torch.tensor(alpha, dtype=torch.float32)
    picks = torch.stack([a, torch.nextafter(a, torch.tensor(0.0)), torch.nextafter(a, torch.tensor(1e30)),
                         torch.tensor(0.0), torch.tensor(-0.0)])
    sel = torch.rand(shape, generator=gen) < 0.3
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
    vals = picks[torch.randint(0, 5, shape, generator=gen)] * sign
    return torch.where(sel, vals, x).float()


@fast
@given(shape=st.sampled_from([(1,), (7,), (33,), (64, 64), (64, 16, 14, 14), (3, 5, 2, 7)]),
       alpha=st.sampled_from([1e-3, 0.75, 3.0e-38]), seed=st.integers(0, 2 ** 31),
       build=st.sampled_from(["native", "baseline"]))
def test_flush_below_matches_masked_fill(shape, alpha, seed, build, baseline_kernels):
    """The kernel against ``codes.masked_fill_(x.abs() < alpha, 0)``: values on alpha and one ulp either
    side, signed zeros, any length (the vector loops' tails), both builds."""
    gen = torch.Generator().manual_seed(seed)
    x = _near_alpha(gen, shape, alpha)
    codes = torch.randint(-8, 9, shape, generator=gen, dtype=torch.int8)
    a = torch.tensor(alpha, dtype=torch.float32)
    want = codes.clone().masked_fill_(torch.abs(x) < a, 0)
    got = codes.clone()
    L._flush_below(x, a, got, baseline_kernels if build == "baseline" else native.kernels())
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(64, 16, 14, 14), (64, 64), (5,)])
def test_naive_log_luq_matches_torch_code(shape):
    """``luq(rounding="rdn", underflow="flush")`` (naive-log4's gradient quantizer) with the kernels against
    the torch code, a channels-last gradient included."""
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-12, 1, shape, generator=gen).float())
    if x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    a = L.luq(x, rounding="rdn", underflow="flush")
    with torch_code():
        b = L.luq(x, rounding="rdn", underflow="flush")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.alpha, b.alpha)
    assert int((a.codes == 0).sum()) > int((x == 0).sum())     # the flush did something


# --------------------------------------------------------------------------- conv B kernel: byte operands in blocks

HF = importlib.import_module("host.nn.functional")


def _dgrad_reference(qw, gb, x_shape, geom):
    """The definition: the B GEMM through ``matmul`` folded by ``F.fold`` (ATen's col2im)."""
    from host.nn.operand import matmul
    (kh, kw), dil, pad, st_ = geom
    n, c, h, w = x_shape
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // st_[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // st_[1] + 1
    rows = matmul(qw.t(), gb.t()).t()
    return torch.nn.functional.fold(rows.reshape(n, ho * wo, -1).transpose(1, 2), (h, w), (kh, kw),
                                    dilation=dil, padding=pad, stride=st_)


@fast
@given(m=st.sampled_from([16, 32, 48, 64, 8, 24, 15]), c=st.integers(1, 17), hw=st.sampled_from([(14, 14), (7, 7), (1, 9),
       (5, 3), (9, 1)]), n=st.integers(1, 3), fmt=st.sampled_from(["log", "log8", "int"]),
       geom=st.sampled_from([((3, 3), (1, 1), (1, 1), (1, 1)), ((1, 1), (1, 1), (0, 0), (1, 1)),
                             ((3, 3), (1, 1), (1, 1), (2, 2)), ((2, 3), (2, 1), (0, 2), (1, 1))]),
       seed=st.integers(0, 2 ** 31), sparse=st.booleans(), wbits=st.sampled_from([4, 5]))
def test_conv_dgrad_byte_blocks_match_the_fold(m, c, hw, n, fmt, geom, seed, sparse, wbits, baseline_kernels,
                                               one_torch_thread):
    """The vpmaddubsw operands built eight positions at a time (M a multiple of 16, LOG codes in [-7, 7] or
    int codes, no shift; the others keep the scalar loop): positions past a row's end and past the last
    row (zero), one-position rows, the benchmark CNN's shapes; 4-bit weights (offset 8) and 5-bit ones
    (offset 16, lbt5), their extremes included, with +128 values (the per-occurrence fix, where the int16
    bound allows them); NCHW and channels-last results, both builds, bit for bit the GEMM and F.fold."""
    gen = torch.Generator().manual_seed(seed)
    h, w = hw
    kh, kw = geom[0]
    if h + 2 * geom[2][0] < geom[1][0] * (kh - 1) + 1 or w + 2 * geom[2][1] < geom[1][1] * (kw - 1) + 1:
        return
    ho = (h + 2 * geom[2][0] - geom[1][0] * (kh - 1) - 1) // geom[3][0] + 1
    wo = (w + 2 * geom[2][1] - geom[1][1] * (kw - 1) - 1) // geom[3][1] + 1
    wh = 2 ** (wbits - 1)
    wq = torch.randint(-wh, wh, (m, c * kh * kw), generator=gen, dtype=torch.int8)
    wq.view(-1)[:2] = torch.tensor([-wh, wh - 1], dtype=torch.int8)
    lim = {"log": 7, "log8": 7, "int": min(128, 32767 // (m * wh))}[fmt]
    gq = torch.randint(-lim, lim if fmt == "int" else lim + 1, (n * ho * wo, m), generator=gen, dtype=torch.int8)
    if sparse:
        gq = gq * (torch.rand(gq.shape, generator=gen) < 0.3)
    if fmt == "log8":                  # a few +128 values: listed and fixed one by one
        gq[torch.rand(gq.shape, generator=gen) < 0.02] = 8
        gq.view(-1)[0] = 8
    qw = Operand_(wq, scale=torch.tensor(0.37))
    gb = Operand_(gq, "int" if fmt == "int" else "log", scale=torch.tensor(-0.011))
    want = _dgrad_reference(qw, gb, (n, c, h, w), geom)
    for lib in (native.kernels(), baseline_kernels):
        with mock.patch.object(native, "kernels", lambda: lib):
            got = HF.conv_dgrad_native(qw, gb, (n, c, h, w), geom)
            cl = HF.conv_dgrad_native(qw, gb, (n, c, h, w), geom, channels_last=True)
        assert got is not None or fmt == "log8"      # declined only where a value 128 breaks the int16 bound
        for r in (got, cl):
            if r is not None:
                assert torch.equal(r.view(torch.int32), want.view(torch.int32))
