"""cocotb testbench of ProcessingElement.

Environment: ``TETRAD_VECTORS`` (JSON: ``formats``, ``acc_width``, ``beats`` from
:func:`sim.vectors.pe_vectors`) and ``TETRAD_RESULTS`` (the observed ``out`` of every cycle).

Driver: one beat per cycle on ``a_in`` (with the row edge's ``x3 = 3a``), ``b_in``, ``last_in``.
Monitor: ``out`` in every cycle. Model: :func:`sim.vectors.pe_expected`. Checker: cycle by cycle,
including that ``out`` is zero whenever no tile ends (the array's drain relies on it).
"""

from __future__ import annotations

import json
import os

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from hw.gemm import formats as fm
from hw.gemm.pe import ProcessingElement, a_operand, a_operand_layout
from sim.tb.common import start
from sim.vectors import load, pe_expected

EXTRA = ProcessingElement.LATENCY + 2


@cocotb.test()
async def pe_vectors(dut):
    vec = load(os.environ["TETRAD_VECTORS"])
    formats = tuple(vec["formats"])
    a_layout = a_operand_layout(formats)
    b_layout = fm.operand_layout(formats)
    dut.a_in.value = 0
    dut.b_in.value = 0
    dut.last_in.value = 0
    await start(dut)
    observed = []

    async def monitor():
        while True:
            await ReadOnly()
            observed.append(dut.out.value.to_signed())
            await RisingEdge(dut.clk)

    cocotb.start_soon(monitor())
    await RisingEdge(dut.clk)                 # the monitor's first sample is this cycle
    observed.clear()
    for beat in vec["beats"] + [{"a": 0, "m": 0, "s": 0, "last": 0}] * EXTRA:
        dut.a_in.value = a_layout.const(a_operand(beat["a"], formats)).as_value().value
        dut.b_in.value = b_layout.const({"m": beat["m"], "s": beat["s"]}).as_value().value
        dut.last_in.value = beat["last"]
        await RisingEdge(dut.clk)
    # observed[t] was sampled in the cycle in which beat t was applied
    observed = observed[:len(vec["beats"]) + EXTRA]
    with open(os.environ["TETRAD_RESULTS"], "w") as f:
        json.dump(observed, f)
    expected = pe_expected(vec["beats"], ProcessingElement.LATENCY, EXTRA)
    bad = [t for t, (o, e) in enumerate(zip(observed, expected)) if o != e]
    assert not bad, f"{len(bad)} cycles differ; first at {bad[0]}: out={observed[bad[0]]}, expected {expected[bad[0]]}"
