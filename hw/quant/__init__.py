"""Quantizer gateware: the contract's random stream and the ShiftQuant, L1 norm and LUQ units.

Every unit here is bit-exact with its golden model in ``host.quant`` for fixed-point input (see each
module's docstring and docs/HARDWARE.md); ``sim.quant.run_quantizer`` runs them in simulation.
"""

from hw.quant.l1norm import L1Norm
from hw.quant.logquant import LogQuantizer
from hw.quant.rng import RandomStream
from hw.quant.shiftquant import ShiftQuantizer

__all__ = ["RandomStream", "ShiftQuantizer", "L1Norm", "LogQuantizer"]
