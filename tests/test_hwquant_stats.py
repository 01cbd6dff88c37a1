"""Statistics of the gateware's own outputs (Amaranth simulator, >= 16k samples each): LUQ and
ShiftQuant(SR) are unbiased (z-tests against the analytic variance), LUQ's stochastic underflow fires with
probability |x|/alpha, and the output levels are the specified ones."""

import math

import pytest
import torch

from hw import numerics as nx
from sim.quant import run_quantizer

Z_MAX = 4.5          # per-value two-sided z bound (deterministic seeds; ~1e-5 false-alarm rate each)


def _repeat(values, copies, seed):
    """values repeated ``copies`` times with random signs, shuffled; returns (tensor, index of value)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(len(values)).repeat_interleave(copies)
    idx = idx[torch.randperm(len(idx), generator=g)]
    sign = torch.where(torch.rand(len(idx), generator=g) < 0.5, -1, 1)
    return torch.tensor(values, dtype=torch.int64)[idx] * sign, idx, sign


def test_luq_unbiased_underflow_and_levels():
    alpha_lsb = 512                                   # r = 2**15, max_exp 6 -> alpha = 2**9
    ys = [0.05, 0.195, 0.5, 0.77, 0.999, 1.37, 1.5, 2.9, 5.5, 11.0, 23.7, 33.3, 47.1, 63.0]
    mags = [round(y * alpha_lsb) for y in ys]
    copies = 1200
    x, idx, sign = _repeat(mags, copies, seed=1)
    x = torch.cat([torch.tensor([1 << 15]), x])       # the max element fixes alpha
    x = x[: len(x) // 16 * 16].reshape(-1, 16)
    assert x.numel() >= 16_000
    q = run_quantizer("luq", x.float(), seed=4242, lanes=16, in_width=17)
    codes = q.codes.reshape(-1)[1:]
    idx, sign = idx[: len(codes)], sign[: len(codes)]
    assert float(q.alpha) == alpha_lsb
    # levels: |Q|/alpha in {0, 2**0 .. 2**max_exp}, sign preserved, top level = max|x| exactly
    mag = torch.where(codes == 0, 0.0, torch.exp2((codes.abs() - 1).double()))
    assert set(codes.abs().unique().tolist()) <= set(range(nx.LOG4.max_code + 1))
    assert ((codes == 0) | (torch.sign(codes) == sign)).all()
    assert int(q.codes.reshape(-1)[0]) == nx.LOG4.max_code
    for j, m in enumerate(mags):
        y = m / alpha_lsb
        sel = mag[idx == j]
        n = len(sel)
        lo = 0.0 if y < 1 else 2.0 ** math.floor(math.log2(y))
        hi = 1.0 if y < 1 else 2 * lo
        assert set(sel.unique().tolist()) <= {lo, hi}                     # only the two neighbours
        var = (y - lo) * (hi - y)
        z = (float(sel.mean()) - y) / math.sqrt(var / n)
        assert abs(z) < Z_MAX, (y, float(sel.mean()), z)
        if y < 1:                                                         # stochastic underflow: P = y
            p = float((sel > 0).double().mean())
            assert abs(p - y) / math.sqrt(y * (1 - y) / n) < Z_MAX, (y, p)


def test_luq_levels_on_heavy_tailed_tensor():
    g = torch.Generator().manual_seed(3)
    x = (torch.distributions.Cauchy(0.0, 30.0).sample((64, 64)).clamp(-32767, 32767)).round()
    q = run_quantizer("luq", x, seed=5, lanes=16)
    a = float(q.alpha)
    top = a * 2 ** 6
    assert top >= float(x.abs().max()) > top / 2                        # no clipping; smallest such pow2
    deq = q.dequantize()
    nz = deq[deq != 0].abs() / a
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)          # powers of two
    assert ((x == 0) <= (q.codes == 0)).all()                           # zero stays zero


@pytest.mark.parametrize("scale", ["pow2", pytest.param("float", marks=pytest.mark.slow)])
def test_shiftquant_sr_unbiased(scale):
    """Rows of copies of one value each; the row max sets the channel exponent. E[q] = v (the exact
    scaled value) with Var = p(1-p), p = frac(v)."""
    vals = [1 << 15, 12345, 3001, 777, 250, 99, 31, 7]        # rows, decreasing magnitude
    cols = 2048
    g = torch.Generator().manual_seed(7)
    rows = []
    for v in vals:
        sign = torch.where(torch.rand(cols, generator=g) < 0.5, -1, 1)
        rows.append(sign * v)
    x = torch.stack(rows).float()
    assert x.numel() >= 16_000
    q = run_quantizer("shiftquant", x, seed=99, lanes=16, in_width=17, scale=scale, e_max=3, rounding="sr")
    s = q.scale.double() * torch.exp2(-q.exponents.double())               # per-channel step
    for i, v in enumerate(vals):
        step = float(s[i, 0])
        target = v / step
        if scale == "float":
            # the golden datapath's rounded multiply: v_ij = RN24(x * c_i)
            r = float(x.abs().max())
            m_r, e_r = math.frexp(r)
            c = float(torch.tensor(7.0) / torch.tensor(m_r, dtype=torch.float32))
            target = float(torch.tensor(float(v)) * torch.tensor(math.ldexp(c, int(q.exponents[i, 0]) - e_r)))
        qi = (q.codes[i].double() * torch.sign(x[i]).double())                # sign-folded magnitudes
        p = target - math.floor(target)
        assert set(qi.unique().tolist()) <= {math.floor(target), math.ceil(target)}
        if 0 < p:
            z = (float(qi.mean()) - target) / math.sqrt(p * (1 - p) / cols)
            assert abs(z) < Z_MAX, (v, target, float(qi.mean()), z)
        else:
            assert (qi == target).all()
