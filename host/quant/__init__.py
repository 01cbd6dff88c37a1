"""Golden-model quantizers: the one source of truth for every format, rounding and random stream.

Each quantizer is a pure function ``f(x, bits=..., *, seed=None, generator=None, **config)`` returning a
:class:`Quantized` (integer ``.codes`` with ``x``'s shape, the scale data, ``.dequantize()``). Stochastic
rounding uses the contract's counter-based stream (``hw.numerics``): the recorded ``seed`` reproduces the
codes bit for bit on every backend. Equations, sources and every [PROPOSED] choice: docs/NUMERICS.md.

=====================  ==============================================================================
gradient quantizers    :func:`shiftquant` (ShiftQuant), :func:`luq` / :func:`luq_smp` (LUQ, SMP),
                       :func:`ptq`, :func:`psq`, :func:`bhq` (StatQuant), :func:`lbt` + :class:`LBTInterval`
forward quantizers     :func:`int_symmetric`, :func:`int_unsigned`, :func:`sawb`, :func:`dsq_weight`, :func:`dsq_activation`
                       (+ ``_ste`` training versions), :func:`int8_per_tensor`
normalization          :func:`l1_layer_norm`, :func:`l1_batch_norm`, :func:`l1_norm` (float, analytic
                       backward) and :func:`l1_norm_int` (integer, hardware-exact)
=====================  ==============================================================================
"""

from host.quant.core import AffineQuantized, LogQuantized, Quantized, ShiftQuantized, stochastic_round
from host.quant.forward import (
    dsq_activation, dsq_activation_ste, dsq_ste_quantize, dsq_weight, dsq_weight_ste, init_activation_clip,
    init_weight_clip, int8_per_tensor, int_symmetric, int_unsigned,
)
from host.quant.l1norm import KAPPA, L1NormFunction, L1NormIntResult, l1_batch_norm, l1_layer_norm, l1_norm, l1_norm_int
from host.quant.lbt import LBTInterval, LBTQuantized, clipped_fraction, lbt
from host.quant.luq import LogSMPQuantized, luq, luq_alpha, luq_smp
from host.quant.rng import resolve_seed, uniform
from host.quant.sawb import SawbQuantized, sawb
from host.quant.shiftquant import channel_exponents, shift_operands, shiftquant
from host.quant.statquant import BlockHouseholder, TransformedQuantized, bhq, psq, ptq

__all__ = [
    "Quantized", "AffineQuantized", "ShiftQuantized", "LogQuantized", "LogSMPQuantized", "SawbQuantized",
    "LBTQuantized", "TransformedQuantized", "L1NormIntResult", "BlockHouseholder",
    "shiftquant", "channel_exponents", "shift_operands",
    "luq", "luq_smp", "luq_alpha", "sawb",
    "ptq", "psq", "bhq",
    "lbt", "LBTInterval", "clipped_fraction",
    "int_symmetric", "int_unsigned", "dsq_weight", "dsq_activation", "dsq_weight_ste", "dsq_activation_ste",
    "dsq_ste_quantize", "init_weight_clip", "init_activation_clip", "int8_per_tensor",
    "l1_norm", "l1_layer_norm", "l1_batch_norm", "l1_norm_int", "L1NormFunction", "KAPPA",
    "stochastic_round", "uniform", "resolve_seed",
]
