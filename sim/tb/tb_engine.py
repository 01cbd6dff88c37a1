"""cocotb testbench of GemmEngine: executes a program (:mod:`sim.program`) and, when asked, checks it.

Environment (set by :func:`sim.cocotb_sim.run_program`):

``TETRAD_PROGRAM``  the program JSON (engine configuration + steps)
``TETRAD_RESULTS``  where to write the per-step results JSON
``TETRAD_CHECK``    ``1``: compare every step with :class:`sim.model.EngineModel` (the checker)

Driver: :class:`EngineDriver` hands over each command and streams its elements. Monitor:
:class:`~sim.tb.common.StreamMonitor` on ``c_out``. Model: :class:`sim.model.EngineModel` (golden
``int_gemm``). Checker: :func:`sim.model.check_results`.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.program import StepResult, load_program, pack_command, pack_operand
from cocotb.utils import get_sim_time

from sim.tb.common import CLOCK_NS, StreamDriver, StreamMonitor, start


class EngineDriver:
    """Applies program steps to the engine's command and data streams (the same protocol as
    :mod:`sim.amaranth_sim`)."""

    def __init__(self, dut, config):
        self.dut = dut
        self.cfg = config
        self.cmd = StreamDriver(dut, "cmd")
        self.data = {"LOAD_A": StreamDriver(dut, "a_in"), "LOAD_B": StreamDriver(dut, "b_in"),
                     "LOAD_C": StreamDriver(dut, "c_in")}
        dut.c_out__ready.value = 0
        for name in ("cmd", "a_in", "b_in", "c_in"):
            getattr(dut, f"{name}__payload").value = 0

    def raw_elements(self, step):
        if step.op == "LOAD_A":
            return [v & 0xF for v in step.a]
        if step.op == "LOAD_B":
            return [pack_operand(p, self.cfg.formats) for p in step.b]
        if step.op == "LOAD_C":
            mask = (1 << self.cfg.acc_width) - 1
            return [v & mask for v in step.c]
        return []

    async def run_step(self, step, monitor):
        dut = self.dut
        await self.cmd.send([pack_command(step.fields(), self.cfg.dim_bits)])
        if step.op in self.data:
            await self.data[step.op].send(self.raw_elements(step))
        start_count = len(monitor.items)
        if step.read:
            dut.c_out__ready.value = 1
            while len(monitor.items) - start_count < step.read:
                await ReadOnly()
                if not dut.busy.value:           # the engine rejected the READ_C: nothing comes
                    await RisingEdge(dut.clk)
                    break
                await RisingEdge(dut.clk)
            dut.c_out__ready.value = 0
        while True:
            await ReadOnly()
            if not dut.busy.value:
                break
            await RisingEdge(dut.clk)
        result = StepResult(error=int(dut.error.value), cycles=int(dut.cycles.value),
                            data=monitor.items[start_count:start_count + step.read])
        # Leave the ReadOnly phase by the next rising edge, never by NextTimeStep: that can land on
        # the time step of a rising edge, where a write would race the edge (the DUT sees the new
        # value at this edge while the driver samples `ready` after it).
        await RisingEdge(dut.clk)
        return result


async def watch_hazard(dut, seen: list):
    """Record the first cycle ``hazard`` is high (a used block RAM read meeting a write: the
    synthesized buffers have no read-during-write logic, see ``hw.gemm.buffer.NO_RW_CHECK``)."""
    cycle = 0
    while not seen:
        await RisingEdge(dut.clk)
        await ReadOnly()
        cycle += 1
        if str(dut.hazard.value) == "1":
            seen.append(cycle)


@cocotb.test()
async def engine_program(dut):
    """Run the program named by TETRAD_PROGRAM; write the results; check them against the model."""
    config, steps = load_program(os.environ["TETRAD_PROGRAM"])
    t0 = time.monotonic()
    driver = EngineDriver(dut, config)          # drives every input to idle before the reset
    await start(dut)
    monitor = StreamMonitor(dut, "c_out", signed=True).start()
    hazard: list[int] = []
    cocotb.start_soon(watch_hazard(dut, hazard))
    results = []
    for step in steps:
        results.append(await driver.run_step(step, monitor))
    stats = {"wall_s": time.monotonic() - t0,
             "cycles": int(get_sim_time(unit="ns")) // CLOCK_NS}
    with open(os.environ["TETRAD_RESULTS"], "w") as f:
        json.dump({"results": [r.__dict__ for r in results], "stats": stats}, f)
    assert not hazard, f"GemmEngine.hazard rose at cycle {hazard[0]} of the run"
    if os.environ.get("TETRAD_CHECK") == "1":
        from sim.model import check_results
        problems = check_results(config, steps, results)
        assert not problems, "; ".join(problems[:5])
