"""Quantized training layers: drop-in modules whose F, B and U GEMMs are :func:`host.gemm.qgemm` calls.

====================================  =============================================================
:class:`QuantLinear`                  ``nn.Linear`` drop-in (``from_float``)
:class:`QuantConv2d`                  ``nn.Conv2d`` drop-in via im2col (``groups=1``)
:class:`L1BatchNorm2d`                L1 BatchNorm (ShiftQuant recipes), ``from_float``
:class:`L1LayerNorm`                  L1 LayerNorm, ``from_float``
:func:`quantize_model`                convert a float model for a recipe (edge layers, norms)
:class:`QuantLinearFunction`,         the autograd functions (F in forward, B and U in backward)
:class:`QuantConv2dFunction`
:class:`Operand`, :func:`matmul`      GEMM operands (codes + scale data) and the exact rescaled GEMM
:mod:`host.nn.models`                 the small CNN / MLP / character Transformer used by the demo
====================================  =============================================================
"""

from host.nn.convert import quant_layers, quant_parameters, quantize_model, set_quant_phase, set_quant_seed
from host.nn.functional import QuantConv2dFunction, QuantLinearFunction
from host.nn.layers import QuantConv2d, QuantLayer, QuantLinear, quant_seed
from host.nn.norm import L1BatchNorm2d, L1LayerNorm
from host.nn.operand import Operand, matmul

__all__ = [
    "QuantLinear", "QuantConv2d", "QuantLayer", "L1BatchNorm2d", "L1LayerNorm",
    "QuantLinearFunction", "QuantConv2dFunction", "Operand", "matmul",
    "quantize_model", "quant_layers", "quant_parameters", "set_quant_phase", "set_quant_seed", "quant_seed",
]
