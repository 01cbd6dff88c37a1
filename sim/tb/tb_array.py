"""cocotb testbench of SystolicArray.

Environment: ``TETRAD_VECTORS`` (JSON: ``rows``, ``cols``, ``formats``, ``acc_width``, ``tiles`` from
:func:`sim.vectors.array_tiles`, ``seed``) and ``TETRAD_RESULTS`` (observed result rows and the cycle
of each).

Driver: :class:`TileDriver` streams each tile's ``K`` beat pairs on ``a`` and ``b`` together, with
random bubbles. Monitor: :class:`~sim.tb.common.StreamMonitor` on ``c`` (no ready: always taken).
Model: :func:`sim.vectors.array_expected`. Checker: result rows in order, bit for bit.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from amaranth.hdl import signed
from amaranth.lib import data

from hw.gemm import formats as fm
from sim.program import unpack_signed
from sim.tb.common import StreamMonitor, start
from sim.vectors import array_expected, load


class TileDriver:
    """Drives ``a`` and ``b`` as one joint transfer per beat (the array takes them together)."""

    def __init__(self, dut, rows, cols, formats, seed):
        self.dut = dut
        self.a_layout = data.StructLayout({"data": data.ArrayLayout(signed(4), rows), "last": 1})
        self.b_layout = data.ArrayLayout(fm.operand_layout(formats), cols)
        self.rng = random.Random(seed)
        dut.a__valid.value = 0
        dut.b__valid.value = 0
        dut.a__payload.value = 0
        dut.b__payload.value = 0

    async def send_tile(self, tile):
        dut = self.dut
        k = tile["k"]
        for x in range(k):
            while self.rng.random() < tile["gap"]:
                dut.a__valid.value = 0
                dut.b__valid.value = 0
                await RisingEdge(dut.clk)
            dut.a__payload.value = self.a_layout.const(
                {"data": [row[x] for row in tile["a"]], "last": int(x == k - 1)}).as_value().value
            dut.b__payload.value = self.b_layout.const(
                [{"m": m, "s": s} for m, s in tile["b"][x]]).as_value().value
            dut.a__valid.value = 1
            dut.b__valid.value = 1
            while True:
                await ReadOnly()
                taken = dut.a__ready.value == 1 and dut.b__ready.value == 1
                await RisingEdge(dut.clk)
                if taken:
                    break
        dut.a__valid.value = 0
        dut.b__valid.value = 0


@cocotb.test()
async def array_tiles(dut):
    vec = load(os.environ["TETRAD_VECTORS"])
    rows, cols, width = vec["rows"], vec["cols"], vec["acc_width"]
    driver = TileDriver(dut, rows, cols, tuple(vec["formats"]), vec.get("seed", 0))
    await start(dut)
    monitor = StreamMonitor(dut, "c").start()
    for tile in vec["tiles"]:
        await driver.send_tile(tile)
    expected = array_expected(vec["tiles"])
    for _ in range(4 * (rows + cols) + 16):
        if len(monitor.items) >= len(expected):
            break
        await RisingEdge(dut.clk)
    observed = [[unpack_signed(raw >> (j * width), width) for j in range(cols)] for raw in monitor.items]
    with open(os.environ["TETRAD_RESULTS"], "w") as f:
        json.dump(observed, f)
    assert len(observed) == len(expected), f"{len(observed)} result rows, expected {len(expected)}"
    bad = [i for i, (o, e) in enumerate(zip(observed, expected)) if o != e]
    assert not bad, f"{len(bad)} rows differ; first {bad[0]}: {observed[bad[0]]} != {expected[bad[0]]}"
