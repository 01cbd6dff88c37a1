"""hw.quant.ShiftQuantizer against host.quant.shiftquant, bit for bit (Amaranth simulator).

Every comparison checks codes, channel exponents, scale and the result's metadata. The cocotb runs
(Icarus, Verilator) of the same unit are in test_hwquant_cocotb.py, the statistics in
test_hwquant_stats.py."""

import math
import random

import pytest
import torch

from host.quant.shiftquant import shiftquant
from hw.quant import ShiftQuantizer
from sim.quant import run_quantizer
from sim.quant.protocol import run_amaranth
from sim.quant.testdata import fixed_tensor
from sim.quant.units import ShiftQuantCodec


def assert_same(hw, gold):
    assert torch.equal(hw.codes, gold.codes), f"{int((hw.codes != gold.codes).sum())} codes differ"
    assert hw.codes.dtype == gold.codes.dtype
    assert torch.equal(hw.exponents, gold.exponents)
    assert hw.scale.dtype == gold.scale.dtype and torch.equal(hw.scale, gold.scale), (hw.scale, gold.scale)
    assert (hw.seed, hw.rand_bits, hw.axis, hw.fmt, hw.method) == \
        (gold.seed, gold.rand_bits, gold.axis, gold.fmt, gold.method)


def compare(xi, exp=-9, *, seed=1234, lanes=1, in_width=16, bubbles=(0.8, 0.7), **cfg):
    x = (xi.double() * 2.0 ** exp).float()
    hw = run_quantizer("shiftquant", x, seed=seed, lanes=lanes, in_width=in_width,
                       valid_prob=bubbles[0], ready_prob=bubbles[1], bubble_seed=seed, **cfg)
    assert_same(hw, shiftquant(x, seed=seed, **cfg))
    return hw


# ≥ 10,000 elements per configuration: every row type of sim.quant.testdata (heavy tails, zero rows,
# zero crossings, extreme values, channels that clamp at E_max) in one 64 x 160 tensor.
@pytest.mark.parametrize("cfg", [
    dict(axis="row", scale="pow2", rounding="sr", lanes=8),
    dict(axis="col", scale="float", rounding="rdn", lanes=16),
    dict(axis="row", scale="float", rounding="sr", lanes=4, in_width=24, e_max=7, rand_bits=8),
], ids=["row-pow2-sr", "col-float-rdn", "row-float-sr-w24"])
def test_10k_elements_bit_exact(cfg):
    cfg = dict(cfg)
    w = cfg.get("in_width", 16)
    xi = fixed_tensor(64, 160, w, seed=11)
    assert xi.numel() >= 10_000
    compare(xi, **cfg)


@pytest.mark.parametrize("kind, scale", [("zero", "pow2"), ("outlier", "float"), ("extreme", "pow2"),
                                         ("heavy", "float"), ("extreme", "float")])
def test_special_tensors(kind, scale):
    xi = fixed_tensor(12, 24, 16, seed=3, kind=kind)
    for axis, rounding in (("row", "sr"), ("col", "rdn")):
        compare(xi, scale=scale, axis=axis, rounding=rounding, lanes=4)


def test_all_zero_gives_zero_codes_unit_scale_and_emax():
    hw = compare(torch.zeros(4, 8, dtype=torch.int64), scale="float", e_max=5)
    assert not hw.codes.any() and float(hw.scale) == 1.0 and (hw.exponents == 5).all()


def test_single_outlier_sets_the_scale():
    xi = torch.zeros(16, 16, dtype=torch.int64)
    xi[5, 7] = -(1 << 15)
    hw = compare(xi, scale="float", exp=0)
    assert hw.codes[5, 7] == -7 and int(hw.codes.abs().sum()) == 7
    hw = compare(xi, scale="pow2", exp=0)     # 2**15 / 2**ceil(log2(2**15 / 7)) = 4: half the grid
    assert hw.codes[5, 7] == -4 and int(hw.codes.abs().sum()) == 4


@pytest.mark.parametrize("seed", range(4))
def test_random_configurations(seed):
    """Small tensors over the parameter space: widths, code bits, E_max, draw widths, lanes."""
    rng = random.Random(seed)
    for _ in range(4):
        w = rng.choice([4, 8, 12, 16, 24])
        lanes = rng.choice([1, 2, 8])
        cfg = dict(bits=rng.choice([2, 3, 4, 5, 8]), e_max=rng.choice([0, 1, 3, 7, 15]),
                   axis=rng.choice(["row", "col"]), scale=rng.choice(["pow2", "float"]),
                   rounding=rng.choice(["sr", "rdn"]), rand_bits=rng.choice([4, 8, 16]))
        xi = fixed_tensor(rng.randint(1, 9), lanes * rng.randint(1, 5), w, seed=rng.getrandbits(16),
                          kind=rng.choice(["mixed", "heavy", "outlier", "extreme"]))
        compare(xi, exp=rng.randint(-40, 20), seed=rng.getrandbits(32), lanes=lanes, in_width=w, **cfg)


def test_nd_input_and_channel_exponent_shapes():
    xi = fixed_tensor(6, 24, 16, seed=5).reshape(6, 2, 3, 4)
    hw = compare(xi, axis="col", scale="pow2", lanes=4)
    assert hw.exponents.shape == (1, 2, 3, 4)
    hw = compare(xi, axis="row", scale="float", lanes=4)
    assert hw.exponents.shape == (6, 1, 1, 1)


def test_float_scale_rn24_ties():
    """Elements whose product x*C is exactly half-way between two 24-bit significands (the multiply's
    round-to-nearest-even ties), for every rounding position the search finds."""
    rng = random.Random(5)
    r = (1 << 23) - 12345
    m_r, _ = math.frexp(r)
    c = float(torch.tensor(7.0) / torch.tensor(m_r, dtype=torch.float32))
    cm, _ = math.frexp(c)
    cmant = int(cm * 2 ** 24)
    ties = {}
    for _ in range(200_000):
        d = rng.randint(1, 22)
        x = rng.randint(1 << (d - 1), 1 << (d + 1))
        p = x * cmant
        dd = p.bit_length() - 24
        if dd >= 1 and p & ((1 << dd) - 1) == 1 << (dd - 1):
            ties.setdefault(dd, []).append(x)
    assert len(ties) >= 8
    xs = [r] + [x for v in ties.values() for x in v[:6]]
    xs += [-x for x in xs[1:]]
    xs += [0] * (-len(xs) % 8)
    xi = torch.tensor(xs, dtype=torch.int64).reshape(1, -1)
    for rounding in ("sr", "rdn"):
        compare(xi, exp=-20, in_width=24, scale="float", rounding=rounding, axis="col", lanes=8)


def test_emax0_is_per_tensor_quantization():
    xi = fixed_tensor(8, 32, 16, seed=9)
    hw = compare(xi, e_max=0, scale="float", rounding="sr", lanes=4)
    assert not hw.exponents.any()


def test_back_to_back_tensors_in_one_simulation():
    """The unit returns to idle and starts the next tensor clean (channel maxima are not carried over)."""
    dut = ShiftQuantizer(in_width=16, axis="col", lanes=4, max_channels=64)
    codec = ShiftQuantCodec(dut)
    a = fixed_tensor(5, 16, 16, seed=1)
    b = fixed_tensor(3, 16, 16, seed=2, kind="outlier") // 64
    jobs = [codec.job(t, seed=s, rounding="sr", valid_prob=0.8, ready_prob=0.8) for t, s in ((a, 1), (b, 2))]
    for t, s, res in zip((a, b), (1, 2), run_amaranth(dut, jobs)):
        hw = codec.decode(res, tuple(t.shape), 0, seed=s, rounding="sr")
        assert_same(hw, shiftquant(t.float(), seed=s, axis="col", scale="pow2"))


@pytest.mark.parametrize("scale", ["pow2", "float"])
def test_latency_and_throughput(scale):
    """Back to back streams: pass 2 accepts one beat per clock, the codes follow ``latency`` cycles later,
    one beat per clock; ``info`` follows the last pass-1 beat after ``gap`` cycles."""
    dut = ShiftQuantizer(in_width=16, scale=scale, lanes=4, max_channels=64)
    codec = ShiftQuantCodec(dut)
    xi = fixed_tensor(16, 32, 16, seed=4)
    res = run_amaranth(dut, codec.job(xi, seed=3, rounding="sr"))
    beats = xi.numel() // 4
    cin = res.in_cycles
    assert cin == list(range(cin[0], cin[0] + beats)) + cin[beats:]          # pass 1: one per clock
    p2 = cin[beats:]
    assert p2 == list(range(p2[0], p2[0] + beats))                           # pass 2: one per clock
    out = res.out_cycles["o"]
    assert out == [c + dut.latency for c in p2]                              # fixed latency
    assert res.out_cycles["info"][0] - cin[beats - 1] == dut.gap
    hw = codec.decode(res, tuple(xi.shape), 0, seed=3, rounding="sr")
    assert_same(hw, shiftquant(xi.float(), seed=3, scale=scale))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_configurations_sweep(seed):
    test_random_configurations(100 + seed)
