"""Simulation of the quantizer units (``hw.quant``): the ``run_quantizer`` helper, the shared stream
driver, and the Amaranth -> Verilog -> cocotb runner for Icarus and Verilator.

``run_quantizer`` (and the rest of :mod:`sim.quant.api`) is imported lazily, so the light modules
(``sim.quant.protocol``) do not pull in torch and Amaranth.
"""

__all__ = ["run_quantizer", "QUANTIZERS", "make_unit"]


def __getattr__(name):
    if name in __all__:
        from sim.quant import api
        return getattr(api, name)
    raise AttributeError(f"module 'sim.quant' has no attribute {name!r}")
