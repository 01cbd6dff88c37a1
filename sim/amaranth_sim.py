"""Execute a program (:mod:`sim.program`) on a GemmEngine in Amaranth's own simulator.

The testbench speaks the same cycle-level protocol as the cocotb testbench (``sim/tb/tb_engine.py``):
hold reset two cycles; per step, hand over the command, stream the step's elements (one per cycle,
``valid`` held high), collect READ_C results with ``ready`` held high, then wait for ``busy`` to fall
and sample ``error`` and ``cycles``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from amaranth.hdl import Value
from amaranth.sim import Simulator

from .program import EngineConfig, Step, StepResult, pack_command, pack_operand

__all__ = ["run_program"]

#: Clock period used by every back end (the value only labels the waveform: 100 MHz).
CLOCK_PERIOD_S = 10e-9


def run_program(config: EngineConfig, steps: list[Step], *, vcd: str | None = None,
                engine=None, stats: dict | None = None) -> list[StepResult]:
    """Run ``steps`` on a fresh engine built from ``config`` and return one result per step.

    ``vcd`` writes a waveform; ``stats``, if given, receives ``cycles`` (simulated clock cycles) and
    ``wall_s``."""
    dut = engine if engine is not None else config.engine()
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD_S)
    results: list[StepResult] = []
    counter = {"cycles": 0}

    async def send(ctx, stream, raw_values):
        ctx.set(stream.valid, 1)
        for raw in raw_values:
            ctx.set(Value.cast(stream.payload), raw)
            await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)

    async def bench(ctx):
        ctx.set(dut.c_out.ready, 0)
        await ctx.tick().repeat(2)         # the simulator starts out of reset; mirror the HDL flow
        for step in steps:
            ctx.set(Value.cast(dut.cmd.payload), pack_command(step.fields(), config.dim_bits))
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            if step.op == "LOAD_A":
                await send(ctx, dut.a_in, [v & 0xF for v in step.a])
            elif step.op == "LOAD_B":
                await send(ctx, dut.b_in, [pack_operand(p, config.formats) for p in step.b])
            elif step.op == "LOAD_C":
                mask = (1 << config.acc_width) - 1
                await send(ctx, dut.c_in, [v & mask for v in step.c])
            out = []
            if step.read:
                ctx.set(dut.c_out.ready, 1)
                while len(out) < step.read:
                    if not ctx.get(dut.busy):        # the engine rejected the READ_C: nothing comes
                        break
                    _, _, valid, payload = await ctx.tick().sample(dut.c_out.valid, dut.c_out.payload)
                    if valid:
                        out.append(payload)
                ctx.set(dut.c_out.ready, 0)
            while ctx.get(dut.busy):
                await ctx.tick()
            results.append(StepResult(error=ctx.get(dut.error), cycles=ctx.get(dut.cycles), data=out))

    async def clock_count(ctx):
        async for _, _, hazard in ctx.tick().sample(dut.hazard):
            counter["cycles"] += 1
            if hazard:
                counter["hazard"] = counter.get("hazard", counter["cycles"])

    sim.add_testbench(bench)
    sim.add_process(clock_count)
    t0 = time.monotonic()
    with (sim.write_vcd(vcd) if vcd else nullcontext()):
        sim.run()
    if "hazard" in counter:
        # the synthesized buffers have no read-during-write logic (hw.gemm.buffer.NO_RW_CHECK):
        # this program would read undefined data on a device
        raise AssertionError(f"GemmEngine.hazard rose at cycle {counter['hazard']}: a used block RAM "
                             "read met a write to the same buffer")
    if stats is not None:
        stats["cycles"] = counter["cycles"]
        stats["wall_s"] = time.monotonic() - t0
    return results
