"""cocotb test module for the quantizer units: runs the job named by ``$TETRAD_QUANT_JOB`` through the
shared stream driver (:func:`sim.quant.protocol.drive`) and writes the collected beats to
``$TETRAD_QUANT_RESULT``. Launched by :func:`sim.quant.runner.run_cocotb`."""

import json
import os
import sys

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from cocotb.types import Logic

# Import the driver as a top-level module from this directory: importing it through the ``sim`` package
# would run ``sim/__init__.py`` and ``sim/quant/__init__.py`` (torch, Amaranth) inside the simulator,
# several seconds of start-up per run for nothing.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import Job, drive  # noqa: E402


class CocotbIO:
    """Adapter: writes at the falling edge, reads after the delta cycles settle (ReadOnly)."""

    def __init__(self, dut):
        self.dut = dut
        self._h = {}
        self._last = {}

    def _handle(self, name):
        h = self._h.get(name)
        if h is None:
            h = self._h[name] = getattr(self.dut, name)
        return h

    def set(self, name, value):
        # every VPI write costs time: skip writes of an unchanged value (all writes go through here)
        if self._last.get(name) != value:
            self._last[name] = value
            self._handle(name).value = value

    def get(self, name):
        v = self._handle(name).value
        return int(v) if isinstance(v, Logic) else v.to_unsigned()

    async def settle(self):
        await ReadOnly()

    async def tick(self):
        await FallingEdge(self.dut.clk)


@cocotb.test()
async def run_job(dut):
    job = Job.from_json(json.loads(open(os.environ["TETRAD_QUANT_JOB"]).read()))
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    res = await drive(CocotbIO(dut), job)
    with open(os.environ["TETRAD_QUANT_RESULT"], "w") as f:
        json.dump(res.to_json(), f)
