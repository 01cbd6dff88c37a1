"""hw.quant.LogQuantizer against host.quant.luq(alpha_mode="pow2"), bit for bit (Amaranth simulator)."""

import random

import pytest
import torch

from host.quant.luq import luq
from hw import numerics as nx
from hw.quant import LogQuantizer
from sim.quant import run_quantizer
from sim.quant.protocol import run_amaranth
from sim.quant.testdata import fixed_tensor
from sim.quant.units import LogQuantCodec


def assert_same(hw, gold):
    assert torch.equal(hw.codes, gold.codes), f"{int((hw.codes != gold.codes).sum())} codes differ"
    assert hw.codes.dtype == gold.codes.dtype
    assert hw.alpha.dtype == gold.alpha.dtype and torch.equal(hw.alpha, gold.alpha), (hw.alpha, gold.alpha)
    assert (hw.seed, hw.rand_bits, hw.fmt, hw.method) == (gold.seed, gold.rand_bits, gold.fmt, gold.method)


def compare(xi, exp=-9, *, seed=99, lanes=1, in_width=16, bubbles=(0.8, 0.7), **cfg):
    x = (xi.double() * 2.0 ** exp).float()
    hw = run_quantizer("luq", x, seed=seed, lanes=lanes, in_width=in_width, valid_prob=bubbles[0],
                       ready_prob=bubbles[1], bubble_seed=seed, **cfg)
    assert_same(hw, luq(x, seed=seed, alpha_mode="pow2", **cfg))
    return hw


@pytest.mark.parametrize("cfg", [
    dict(max_exp=6, lanes=8),
    dict(max_exp=7, lanes=16, rand_bits=4, in_width=24),
], ids=["fp4-lanes8", "ref17-lanes16-r4-w24"])
def test_10k_elements_bit_exact(cfg):
    cfg = dict(cfg)
    xi = fixed_tensor(64, 160, cfg.get("in_width", 16), seed=21)
    assert xi.numel() >= 10_000
    compare(xi, **cfg)


@pytest.mark.parametrize("kind", ["zero", "outlier", "extreme", "heavy"])
def test_special_tensors(kind):
    xi = fixed_tensor(12, 24, 16, seed=4, kind=kind)
    for max_exp in (6, 7):
        compare(xi, max_exp=max_exp, lanes=4)


def test_all_zero_gives_zero_codes_and_alpha_one():
    hw = compare(torch.zeros(3, 8, dtype=torch.int64))
    assert not hw.codes.any() and float(hw.alpha) == 1.0


def test_max_element_gets_the_top_code_exactly():
    xi = torch.zeros(1, 16, dtype=torch.int64)
    xi[0, 3] = -(1 << 15)                  # a power of two: alpha * 2**max_exp == max|x|
    xi[0, 5] = 3
    hw = compare(xi, exp=0)
    assert hw.codes[0, 3] == -7 and float(hw.alpha) == 2.0 ** (15 - 6)


@pytest.mark.parametrize("seed", range(4))
def test_random_configurations(seed):
    rng = random.Random(seed)
    for _ in range(4):
        w = rng.choice([4, 8, 12, 16, 24])
        lanes = rng.choice([1, 2, 8])
        xi = fixed_tensor(rng.randint(1, 9), lanes * rng.randint(1, 5), w, seed=rng.getrandbits(16),
                          kind=rng.choice(["mixed", "heavy", "outlier", "extreme"]))
        if rng.random() < 0.3:
            xi = xi.reshape(-1)
        compare(xi, exp=rng.randint(-40, 20), seed=rng.getrandbits(32), lanes=lanes, in_width=w,
                max_exp=rng.choice([6, 7]), rand_bits=rng.choice([4, 8, 16]))


def test_back_to_back_tensors_in_one_simulation():
    dut = LogQuantizer(in_width=16, lanes=2)
    codec = LogQuantCodec(dut)
    a = fixed_tensor(4, 16, 16, seed=1)
    b = fixed_tensor(2, 16, 16, seed=2) // 1024
    jobs = [codec.job(t, seed=s, valid_prob=0.8, ready_prob=0.8) for t, s in ((a, 5), (b, 6))]
    for t, s, res in zip((a, b), (5, 6), run_amaranth(dut, jobs)):
        assert_same(codec.decode(res, tuple(t.shape), 0, seed=s), luq(t.float(), seed=s, alpha_mode="pow2"))


def test_latency_and_throughput():
    dut = LogQuantizer(in_width=16, lanes=4)
    codec = LogQuantCodec(dut)
    xi = fixed_tensor(16, 32, 16, seed=4)
    res = run_amaranth(dut, codec.job(xi, seed=3))
    beats = xi.numel() // 4
    cin = res.in_cycles
    assert cin[:beats] == list(range(cin[0], cin[0] + beats))
    p2 = cin[beats:]
    assert p2 == list(range(p2[0], p2[0] + beats))
    assert res.out_cycles["o"] == [c + dut.latency for c in p2]
    assert res.out_cycles["info"][0] - cin[beats - 1] == dut.gap
    assert_same(codec.decode(res, tuple(xi.shape), 0, seed=3), luq(xi.float(), seed=3, alpha_mode="pow2"))


def test_codes_fit_the_log4_format():
    hw = compare(fixed_tensor(8, 32, 16, seed=8, kind="heavy"), lanes=4)
    fmt = nx.LOG4
    assert int(hw.codes.abs().max()) <= fmt.max_code
    assert all(fmt.decode(fmt.encode(int(c))) == int(c) for c in hw.codes.unique())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_configurations_sweep(seed):
    test_random_configurations(100 + seed)
