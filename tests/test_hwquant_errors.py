"""Bad parameters and bad inputs: clear ValueErrors (naming the value and the allowed range) at
construction of the units or from sim.quant.run_quantizer -- never a silent wrong result."""

import pytest
import torch

from hw.quant import L1Norm, LogQuantizer, ShiftQuantizer
from sim.quant import run_quantizer


@pytest.mark.parametrize("kw, msg", [
    (dict(in_width=3), r"in_width must be an int in 4\.\.24, got 3"),
    (dict(in_width=25), r"in_width must be an int in 4\.\.24, got 25"),
    (dict(in_width=16.0), r"in_width must be an int in 4\.\.24"),
    (dict(bits=1), r"bits must be an int in 2\.\.8, got 1"),
    (dict(bits=9), r"bits must be an int in 2\.\.8, got 9"),
    (dict(e_max=-1), r"e_max must be an int in 0\.\.15, got -1"),
    (dict(e_max=16), r"e_max must be an int in 0\.\.15, got 16"),
    (dict(axis="channel"), r"axis must be one of \['row', 'col'\]"),
    (dict(scale="fp32"), r"scale must be one of \['pow2', 'float'\]"),
    (dict(lanes=3), r"lanes must be one of \(1, 2, 4, 8, 16\), got 3"),
    (dict(rand_bits=12), r"rand_bits must be one of \(4, 8, 16\), got 12"),
    (dict(max_channels=0), r"max_channels must be an int in 1\.\.65535, got 0"),
    (dict(axis="col", lanes=4, max_channels=10), r"max_channels must be a multiple of lanes"),
])
def test_shiftquantizer_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ShiftQuantizer(**kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(max_exp=5), r"max_exp must be 6 \(strict FP4\) or 7"),
    (dict(in_width=30), r"in_width must be an int in 4\.\.24, got 30"),
    (dict(lanes=5), r"lanes must be one of"),
    (dict(rand_bits=2), r"rand_bits must be one of"),
])
def test_logquantizer_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LogQuantizer(**kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(in_width=1), r"in_width must be an int in 2\.\.16, got 1"),
    (dict(in_width=17), r"in_width must be an int in 2\.\.16, got 17"),
    (dict(max_n=0), r"max_n must be an int in 1\.\.65535, got 0"),
    (dict(max_n=10, lanes=4), r"max_n must be a multiple of lanes"),
    (dict(out_bits=1), r"out_bits must be an int in 2\.\.16, got 1"),
    (dict(recip_bits=1), r"recip_bits must be an int in 2\.\.30, got 1"),
    (dict(acc_frac_bits=0), r"acc_frac_bits must be an int in 1\.\.30, got 0"),
    (dict(out_frac_bits=31), r"out_frac_bits must be an int in -16\.\.30, got 31"),
    (dict(kappa_min=2.0, kappa_max=1.0), r"need 0 < kappa_min <= kappa_max"),
    (dict(affine="yes"), r"affine must be a bool"),
])
def test_l1norm_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        L1Norm(**kw)


X = torch.randn(4, 8).mul(64).round()


@pytest.mark.parametrize("name, x, kw, exc, msg", [
    ("gelu", X, {}, ValueError, r"name must be one of \['shiftquant', 'luq', 'l1norm'\]"),
    ("luq", X, dict(simulator="modelsim"), ValueError, r"simulator must be one of"),
    ("shiftquant", torch.zeros(4, 0), {}, ValueError, r"empty"),
    ("shiftquant", torch.zeros(0, 4), {}, ValueError, r"empty"),
    ("luq", torch.zeros(0), {}, ValueError, r"empty"),
    ("shiftquant", torch.ones(8), {}, ValueError, r">= 2 dimensions"),
    ("shiftquant", X[:, :6], dict(lanes=4), ValueError, r"row length 6 must be a multiple of lanes=4"),
    ("luq", X[:, :3], dict(lanes=8), ValueError, r"element count 12 must be a multiple of lanes=8"),
    ("shiftquant", torch.tensor([[1.0, 2.0 ** -20]]), {}, ValueError, r"needs more than in_width=16 bits"),
    ("luq", torch.tensor([[70000.0, 1.0]]), {}, ValueError, r"needs more than in_width=16 bits"),
    ("luq", torch.tensor([[2.0 ** 120]]), {}, ValueError, r"tensor exponent"),
    ("shiftquant", torch.tensor([[float("nan"), 1.0]]), {}, ValueError, r"NaN"),
    ("shiftquant", X.double(), dict(scale="float"), ValueError, r"pass a float32 tensor"),
    ("shiftquant", X, dict(rounding="up"), ValueError, r"rounding must be one of"),
    ("shiftquant", X, dict(e_max=16), ValueError, r"e_max must be an int in 0\.\.15, got 16"),
    ("shiftquant", X, dict(bits=12), ValueError, r"bits must be an int in 2\.\.8, got 12"),
    ("shiftquant", X, dict(in_width=2), ValueError, r"in_width must be an int in 4\.\.24, got 2"),
    ("shiftquant", X, dict(max_channels=2), ValueError, r"4 rows exceed the unit's max_channels=2"),
    ("shiftquant", X, dict(colour="red"), TypeError, r"unexpected keyword argument"),
    ("luq", X, dict(alpha_mode="float"), ValueError, r"alpha_mode='pow2' only"),
    ("luq", X, dict(max_source="signed"), ValueError, r"max_source='absmax' only"),
    ("luq", X, dict(draw_offset=64), ValueError, r"draw_offset must be 0"),
    ("luq", X, dict(max_exp=8), ValueError, r"max_exp must be 6"),
    ("l1norm", X, dict(dim=-1), TypeError, r"expected integer codes"),
    ("l1norm", X.to(torch.int8), {}, ValueError, r"dim is required"),
    ("l1norm", torch.zeros(3, 0, dtype=torch.int8), dict(dim=-1), ValueError, r"empty"),
    ("l1norm", X.to(torch.int8), dict(dim=0, rounding="sr"), ValueError, r"trailing dims"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, lanes=16), ValueError, r"set size n = 8 must be a multiple of lanes=16"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, max_n=4), ValueError, r"set size n = 8 exceeds the unit's max_n=4"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, in_width=4), ValueError, r"do not fit in_width=4"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, kappa=10.0), ValueError, r"outside the unit's range"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, eps=1e30), ValueError, r"needs more than the unit's"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, gamma=torch.full((8,), 9.0)), ValueError, r"does not fit"),
    ("l1norm", X.to(torch.int8), dict(dim=0, gamma=torch.arange(8.0).reshape(1, 8) / 4), ValueError,
     r"per-set affine"),
    ("l1norm", X.to(torch.int8), dict(dim=-1, gamma=torch.ones(8), affine=False), ValueError,
     r"affine=False"),
])
def test_run_quantizer_rejects(name, x, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        run_quantizer(name, x, seed=1, **kw)
