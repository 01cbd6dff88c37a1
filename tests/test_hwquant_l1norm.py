"""hw.quant.L1Norm against host.quant.l1norm.l1_norm_int, bit for bit (Amaranth simulator):
codes and the exact per-row statistics and reciprocal."""

import random

import pytest
import torch

from host.quant.l1norm import l1_norm_int
from hw.quant import L1Norm
from sim.quant import run_quantizer
from sim.quant.protocol import run_amaranth
from sim.quant.testdata import fixed_tensor
from sim.quant.units import L1NormCodec

FIELDS = ("codes", "sum", "abs_dev", "recip", "recip_shift", "step")


def assert_same(hw, gold):
    for k in FIELDS:
        a, b = getattr(hw, k), getattr(gold, k)
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert torch.equal(a, b), f"{k} differs ({int((a != b).sum())} entries)"
    assert (hw.n, hw.grid, hw.seed, hw.rand_bits, hw.method, hw.offset) == \
        (gold.n, gold.grid, gold.seed, gold.rand_bits, gold.method, gold.offset)


def compare(q, *, dim=-1, seed=77, lanes=1, in_width=8, bubbles=(0.8, 0.7), unit=None, **cfg):
    hw = run_quantizer("l1norm", q, dim=dim, seed=seed, lanes=lanes, in_width=in_width,
                       valid_prob=bubbles[0], ready_prob=bubbles[1], bubble_seed=seed, **(unit or {}), **cfg)
    assert_same(hw, l1_norm_int(q, dim=dim, seed=seed, **cfg))
    return hw


def affine(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).clamp(-3.9, 3.9), torch.randn(n, generator=g) * 0.5


def test_10k_layernorm_affine_rdn():
    q = fixed_tensor(40, 256, 8, seed=31).to(torch.int8)
    gamma, beta = affine(256, 1)
    compare(q, lanes=8, gamma=gamma, beta=beta, scale=0.02, out_bits=8)


def test_10k_layernorm_sr_4bit_output():
    q = fixed_tensor(80, 128, 8, seed=32).to(torch.int8)
    compare(q, lanes=4, rounding="sr", out_bits=4, rand_bits=8, eps=0.5)


def test_10k_batchnorm_sets_per_channel():
    """BatchNorm statistics: one set per channel over (N, H, W) -- the helper streams the permuted tensor."""
    q = fixed_tensor(16, 640, 8, seed=33).to(torch.int8).reshape(16, 8, 8, 10)
    compare(q, dim=(0, 2, 3), lanes=16, out_bits=8, kappa=1.0)


@pytest.mark.parametrize("kind", ["zero", "outlier", "extreme", "heavy"])
def test_special_tensors(kind):
    q = fixed_tensor(6, 32, 8, seed=5, kind=kind).to(torch.int8)
    gamma, beta = affine(32, 2)
    compare(q, lanes=4, rounding="sr")
    compare(q, lanes=4, gamma=gamma, beta=beta, eps=0.0)


def test_constant_rows_eps_zero_and_positive():
    """A constant row has D = 0: with eps = 0 the reciprocal is R = 0 (output beta), with eps > 0
    Den = E alone."""
    q = torch.tensor([[5] * 8, [-128] * 8, [0] * 8, [3, -3] * 4], dtype=torch.int8)
    for eps in (0.0, 1e-5, 2.0):
        hw = compare(q, lanes=2, eps=eps)
        assert not hw.codes[:3].any()
    hw = compare(q, lanes=2, eps=0.0, gamma=torch.ones(8), beta=torch.full((8,), 1.5))
    assert (hw.recip[:3] == 0).all()


def test_minimal_rows():
    compare(torch.tensor([[7], [-8], [0]], dtype=torch.int8), in_width=4)             # n = 1
    compare(torch.tensor([[7, -8]], dtype=torch.int8), in_width=4, lanes=2)           # one beat per row


@pytest.mark.parametrize("seed", range(4))
def test_random_configurations(seed):
    rng = random.Random(seed)
    done = 0
    while done < 4:
        w = rng.choice([2, 4, 8, 12, 16])
        lanes = rng.choice([1, 2, 4])
        cfg = dict(out_bits=rng.choice([2, 4, 8, 12]), rounding=rng.choice(["rdn", "sr"]),
                   rand_bits=rng.choice([4, 8, 16]), eps=rng.choice([0.0, 1e-5, 0.3, 100.0]),
                   scale=rng.choice([None, 0.01, 3.0]), kappa=rng.choice([1.0, 1.2533141373155003, 0.6, 3.3]))
        if rng.random() < 0.5:
            cfg["recip_bits"] = rng.choice([4, 8, 20])
        if rng.random() < 0.5:
            cfg["acc_frac_bits"] = rng.choice([1, 8, 20])
        if rng.random() < 0.3:
            cfg["out_frac_bits"] = rng.choice([-3, 0, 10])
        if rng.random() < 0.3:
            cfg["kappa_frac_bits"] = rng.choice([4, 24])
        n = lanes * rng.randint(1, 12)
        q = fixed_tensor(rng.randint(1, 6), n, w, seed=rng.getrandbits(16),
                         kind=rng.choice(["mixed", "heavy", "outlier", "extreme"])).to(torch.int16)
        if rng.random() < 0.5:
            g, b = affine(n, rng.getrandbits(16))
            cfg.update(gamma=g, beta=b)
        compare(q, seed=rng.getrandbits(32), lanes=lanes, in_width=w, **cfg)
        done += 1


def test_back_to_back_jobs_in_one_simulation():
    dut = L1Norm(in_width=8, lanes=2, max_n=32, affine=True)
    codec = L1NormCodec(dut)
    a = fixed_tensor(3, 16, 8, seed=1).to(torch.int8)
    b = fixed_tensor(2, 8, 8, seed=2).to(torch.int8)
    ga, ba = affine(16, 1)
    jobs, ctxs = [], []
    for t, g, bb in ((a, ga, ba), (b, None, None)):
        jobs.append(codec.job(t, dim=-1, seed=1, gamma=g, beta=bb, valid_prob=0.8, ready_prob=0.8))
        ctxs.append(codec._ctx)
    for t, g, bb, res, ctx in zip((a, b), (ga, None), (ba, None), run_amaranth(dut, jobs), ctxs):
        assert_same(codec.decode(res, ctx), l1_norm_int(t, dim=-1, gamma=g, beta=bb))


@pytest.mark.parametrize("n, lanes, recip_bits", [(32, 1, 16), (64, 4, 8), (8, 4, 16)])
def test_latency_and_throughput(n, lanes, recip_bits):
    """Input and output at one beat per clock; a row every max(n/lanes, B_r + 5) cycles (four rows in
    flight), so long rows stream through without gaps; documented latencies."""
    dut = L1Norm(in_width=8, lanes=lanes, max_n=128, recip_bits=recip_bits)
    codec = L1NormCodec(dut)
    rows = 6
    q = fixed_tensor(rows, n, 8, seed=1).to(torch.int8)
    res = run_amaranth(dut, codec.job(q, dim=-1, seed=1))
    nb = n // lanes
    period = max(nb, recip_bits + 5)
    ins, st, out = res.in_cycles, res.out_cycles["stats"], res.out_cycles["o"]
    assert ins[:nb] == list(range(ins[0], ins[0] + nb))                         # input: one beat per clock
    assert st[0] - ins[nb - 1] == nb + recip_bits + 9                           # documented latency
    for r in range(rows):
        row = out[r * nb:(r + 1) * nb]
        assert row == list(range(st[r] + dut.latency_out, st[r] + dut.latency_out + nb))
    assert all(st[r + 1] - st[r] == period for r in range(rows - 1))
    if nb >= recip_bits + 5:
        assert out == list(range(out[0], out[0] + rows * nb))                   # no gap between rows
    assert_same(codec.decode(res), l1_norm_int(q, dim=-1, recip_bits=recip_bits))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_configurations_sweep(seed):
    test_random_configurations(100 + seed)
