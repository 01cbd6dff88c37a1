"""Per-step scalar work done on Python floats instead of 0-d tensors (step-time round 3): each is checked bit
for bit against the torch expression it replaces.

- ``host.quant.core.round_to_dtype`` vs ``float(torch.tensor(v, dtype=float64).to(dtype))``;
- the per-tensor scales of ``int_symmetric`` / ``int_unsigned`` (``r / q_max``, torch's ``q_max / r`` =
  ``r.reciprocal() * q_max``, the subnormal flush) vs the 0-d tensor code;
- ShiftQuant's ``c_hat = RN(q_max / m_r)`` and ``s_0 = RN(r / q_max)``;
- LUQ's ``alpha`` fast paths (exact power-of-two division, the skipped overflow check) vs the exact
  ``Fraction`` path;
- ``check_input_range(any_order=True)`` on channels-last tensors (storage-order reduction);
- ``host.quant.core.scalar_tensor`` (``torch.full``) vs ``torch.tensor`` for the quantizers' 0-d scales;
- ``host.quant.l1norm._broadcasts`` vs ``torch.broadcast_shapes``; ``native.enabled`` following the
  environment.
"""

from __future__ import annotations

import math
import os
import random
import struct
from fractions import Fraction
from unittest import mock

import pytest
import torch

import importlib
from host import quant as Q
from host.quant import native
from host.quant.core import check_input_range, round_to_dtype
from host.quant.l1norm import _broadcasts

luq_mod = importlib.import_module("host.quant.luq")    # the module (host.quant.luq is also the function)

FLOATS = (torch.float32, torch.float64)


def _bits(v: float) -> bytes:
    return struct.pack("<d", v)


def _t_bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _samples(n=20000, seed=0):
    rnd = random.Random(seed)
    out = [0.0, -0.0, 5e-324, 1e-45, 1.4e-45, 7e-46, 7.1e-46, 1e-40, 1.1754943508222875e-38,
           3.4028234663852886e38, 3.4028235677973366e38, 3.40282357e38, 1e39, -1e39, math.inf, -math.inf,
           1.7976931348623157e308]
    for _ in range(n):
        out.append(rnd.uniform(-1, 1) * 2.0 ** rnd.randint(-160, 130))
        f = struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0]
        if not math.isnan(f):
            out.append(f)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_round_to_dtype_matches_torch(dtype):
    for v in _samples(4000 if dtype in FLOATS else 500):
        ref = float(torch.tensor(v, dtype=torch.float64).to(dtype))
        assert _bits(round_to_dtype(v, dtype)) == _bits(ref), v


@pytest.mark.parametrize("dtype", FLOATS)
def test_scalar_tensor_matches_torch_tensor(dtype):
    """scalar_tensor (torch.full) gives torch.tensor's 0-d tensor, bits included (signed zeros, subnormals,
    infinities, NaN), for every value the dtype holds exactly and for round_to_dtype's results -- what the
    quantizers pass it (their scales, SAWB's float64 clip, LUQ's alpha)."""
    values = [round_to_dtype(v, dtype) for v in _samples(4000)] + [math.nan, -math.nan]
    for v in values:
        a, b = Q.core.scalar_tensor(v, dtype), torch.tensor(v, dtype=dtype)
        assert a.dtype == b.dtype and a.shape == b.shape == () and torch.equal(_t_bits(a), _t_bits(b)), v


def _old_int_symmetric_scale(x: torch.Tensor, qm: int):
    """The 0-d tensor code this round replaced (per tensor)."""
    xc = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    lo, hi = (float(v) for v in torch.aminmax(xc))
    r = torch.tensor(max(-lo, hi), dtype=xc.dtype)
    step = r / qm
    flush = step < torch.finfo(step.dtype).tiny
    step = torch.where(flush, torch.ones_like(step), step)
    inv = torch.where(flush, torch.ones_like(r), qm / r)
    return step, inv


def _old_int_unsigned_scale(x: torch.Tensor, qm: int):
    xc = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    _, hi = torch.aminmax(xc)
    step = hi / qm
    if float(step) < torch.finfo(step.dtype).tiny:
        return torch.ones_like(step), torch.ones_like(hi)
    return step, qm / hi


def _inputs(seed):
    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(300):
        dt = rnd.choice([torch.float32, torch.float64, torch.float16])
        e = rnd.choice([0, -20, -120, -126, -130, -140, -149, 20, 100, 120, -1000, -1070, 300, 1000])
        shape = rnd.choice([(7,), (3, 5), (4, 3, 5, 5)])
        x = torch.randn(shape, dtype=torch.float64, generator=g) * 2.0 ** e
        u = rnd.random()
        if u < 0.1:
            x = torch.zeros(shape, dtype=torch.float64) * torch.sign(torch.randn(shape, generator=g))
        elif u < 0.2:
            x = torch.sign(torch.randn(shape, dtype=torch.float64, generator=g)) * 2.0 ** e
        x = x.to(dt)
        if not torch.isfinite(x).all():
            continue
        if x.dim() == 4 and rnd.random() < 0.5:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x


@pytest.mark.parametrize("native_on", ["1", "0"])
def test_int_symmetric_and_unsigned_scales_match_tensor_code(native_on):
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE": native_on}):
        for x in _inputs(1):
            for bits in (2, 4, 8, 16):
                q = Q.int_symmetric(x, bits)
                qm = 2 ** (bits - 1) - 1
                step, inv = _old_int_symmetric_scale(x, qm)
                assert q.step.dtype == step.dtype and q.step.shape == ()
                assert torch.equal(_t_bits(q.step), _t_bits(step)), (x.dtype, bits)
                ref = torch.round(x.to(step.dtype) * inv).clamp_(-qm, qm).to(q.codes.dtype)
                assert torch.equal(q.codes, ref)
                xa = x.abs()
                qu = Q.int_unsigned(xa, bits)
                qmu = 2 ** bits - 1
                step, inv = _old_int_unsigned_scale(xa, qmu)
                assert torch.equal(_t_bits(qu.step), _t_bits(step))
                ref = torch.round(xa.to(step.dtype) * inv).clamp_(0, qmu).to(qu.codes.dtype)
                assert torch.equal(qu.codes, ref)


def test_int_unsigned_still_rejects_negative_and_nan():
    with pytest.raises(ValueError, match="int_unsigned: the unsigned grid needs x >= 0"):
        Q.int_unsigned(torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="int_unsigned: input has 1 NaN/Inf"):
        Q.int_unsigned(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="int_symmetric: input has 1 NaN/Inf"):
        Q.int_symmetric(torch.tensor([1.0, float("inf")]))


def test_shiftquant_scalars_match_tensor_division():
    rnd = random.Random(2)
    for _ in range(20000):
        dt = rnd.choice(FLOATS)
        qmax = rnd.choice([1, 7, 127, 32767])
        r = float(torch.tensor(rnd.uniform(0.5, 1) * 2.0 ** rnd.randint(-149, 127), dtype=dt))
        if r == 0.0 or not math.isfinite(r):
            continue
        m_r, _ = math.frexp(r)
        c_ref = float(torch.tensor(float(qmax), dtype=dt) / torch.tensor(m_r, dtype=dt))
        s_ref = torch.tensor(r, dtype=dt) / qmax
        assert _bits(round_to_dtype(float(qmax) / m_r, dt)) == _bits(c_ref)
        assert _bits(round_to_dtype(r / qmax, dt)) == _bits(float(s_ref))


def _old_round_up_to(value: Fraction, dtype) -> float:
    t = torch.tensor(float(value), dtype=dtype)
    inf = torch.tensor(math.inf, dtype=dtype)
    while Fraction(float(t)) < value:
        t = torch.nextafter(t, inf)
    return float(t)


def test_luq_round_up_to_matches_nextafter_loop():
    rnd = random.Random(3)
    for _ in range(5000):
        v = Fraction(rnd.getrandbits(60) + 1, 2 ** 60) * Fraction(2) ** rnd.randint(-155, 125)
        if rnd.random() < 0.3:
            v = Fraction(float(v)) + Fraction(1, 2 ** 300)
        for dt in FLOATS:
            assert _bits(luq_mod._round_up_to(v, dt)) == _bits(_old_round_up_to(v, dt))


def test_luq_alpha_fast_paths_match_exact_path():
    rnd = random.Random(4)
    for _ in range(3000):
        dt = rnd.choice(FLOATS)
        m = float(torch.tensor(rnd.uniform(0.5, 1) * 2.0 ** rnd.randint(-149, 127), dtype=dt))
        if dt == torch.float64 and rnd.random() < 0.5:
            m = rnd.uniform(0.5, 1) * 2.0 ** rnd.randint(-1074, 1023)
        if m == 0.0 or not math.isfinite(m):
            continue
        for e in (6, 7):
            got = luq_mod._alpha_value(m, e, "float", dt)
            assert _bits(got) == _bits(_old_round_up_to(Fraction(m) / 2 ** e, dt))
    # the overflow check still raises where the top level is not finite (pow2 alpha near the top)
    big = torch.tensor([3.3e38, -1.0])
    with pytest.raises(ValueError, match="overflows"):
        Q.luq_alpha(big, max_exp=6, alpha_mode="pow2")
    Q.luq_alpha(big, max_exp=6, alpha_mode="float")


def test_check_input_range_any_order_channels_last():
    g = torch.Generator().manual_seed(5)
    for _ in range(50):
        x = torch.randn(4, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
        _, lo, hi = check_input_range(x, "t", any_order=True)
        assert (lo, hi) == tuple(float(v) for v in torch.aminmax(x.contiguous()))
    z = (torch.zeros(2, 3, 4, 4) * torch.sign(torch.randn(2, 3, 4, 4, generator=g))).contiguous(
        memory_format=torch.channels_last)
    _, lo, hi = check_input_range(z, "t", any_order=True)
    assert lo == 0.0 and hi == 0.0
    bad = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    bad[1, 2, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="t: input has 1 NaN/Inf"):
        check_input_range(bad, "t", any_order=True)


def test_sawb_any_order_range_same_result(monkeypatch):
    """SAWB reads its range in storage order (``any_order``): the same result as from the range of the
    tensor as it is (the code before; mixed signed zeros included)."""
    sawb_mod = importlib.import_module("host.quant.sawb")
    g = torch.Generator().manual_seed(6)
    cases = []
    for i in range(20):
        x = torch.rand(8, 4, 6, 6, generator=g)
        if i % 3 == 0:
            x = x - 0.5
        if i % 5 == 0:
            x = torch.zeros(8, 4, 6, 6) * torch.sign(torch.randn(8, 4, 6, 6, generator=g))
        cases.append(x.contiguous(memory_format=torch.channels_last))
    fast = [[Q.sawb(x, 4, kind=k, seen_negative=s) for k in ("weight", "activation") for s in (False, True)]
            for x in cases]
    real = sawb_mod.check_input_range
    monkeypatch.setattr(sawb_mod, "check_input_range", lambda *a, **kw: real(*a, **{**kw, "any_order": False}))
    for x, got in zip(cases, fast):
        ref = [Q.sawb(x, 4, kind=k, seen_negative=s) for k in ("weight", "activation") for s in (False, True)]
        for a, b in zip(got, ref):
            assert torch.equal(a.codes, b.codes) and a.codes.stride() == b.codes.stride()
            assert torch.equal(_t_bits(a.step), _t_bits(b.step)) and torch.equal(_t_bits(a.clip), _t_bits(b.clip))
            assert (a.seen_negative, a.qmin, a.qmax, a.clip_fallback) == (b.seen_negative, b.qmin, b.qmax,
                                                                           b.clip_fallback)


def test_broadcasts_matches_torch():
    shapes = [(), (1,), (3,), (1, 3, 1, 1), (2, 3, 4, 5), (3, 1, 1), (4, 1), (5,), (2, 1, 4, 1), (7, 2, 3, 4, 5),
              (0,), (1, 0), (2, 3, 4, 6)]
    for a in shapes:
        for b in shapes:
            try:
                torch.broadcast_shapes(a, b)
                ok = True
            except RuntimeError:
                ok = False
            assert _broadcasts(torch.Size(a), torch.Size(b)) == ok, (a, b)


def test_native_enabled_follows_environment(monkeypatch):
    monkeypatch.delenv("TETRAD_NATIVE", raising=False)
    assert native.enabled()
    monkeypatch.setenv("TETRAD_NATIVE", "0")
    assert not native.enabled()
    monkeypatch.setenv("TETRAD_NATIVE", "1")
    assert native.enabled()
    with mock.patch.dict(os.environ, {"TETRAD_NATIVE": "0"}):
        assert not native.enabled()
    assert native.enabled()
