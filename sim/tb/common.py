"""Shared cocotb parts: clock and reset, a stream driver and a stream monitor.

Amaranth flattens a stream member ``x`` of the top-level component into the ports ``x__valid``,
``x__ready`` and ``x__payload`` (one vector, the layout's bits). Values are driven as integers already
packed by :mod:`sim.program`.

Timing discipline (TOOLCHAIN.md §6 #5): inputs are written right after a rising edge, outputs are
sampled in the ReadOnly phase just before the next one, so a sampled ``valid & ready`` is exactly a
transfer at that edge, on Icarus and Verilator alike. The ReadOnly phase is only ever left through
the next ``RisingEdge``: leaving it with ``NextTimeStep`` can land on a rising edge's time step, where
a write races the edge.
"""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

CLOCK_NS = 10


async def start(dut, reset_cycles: int = 2):
    """Start the clock and hold the synchronous reset for ``reset_cycles`` edges."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.rst.value = 1
    for _ in range(reset_cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def port(dut, name):
    return getattr(dut, name)


class StreamDriver:
    """Drives ``<name>__valid`` / ``<name>__payload`` and waits for ``<name>__ready``."""

    def __init__(self, dut, name: str):
        self.dut = dut
        self.valid = port(dut, f"{name}__valid")
        self.ready = port(dut, f"{name}__ready")
        self.payload = port(dut, f"{name}__payload")
        self.valid.value = 0

    async def send(self, raws):
        """Transfer each raw value in turn, one per cycle when the receiver keeps ``ready`` high.
        Must be called right after a rising edge; returns right after the edge of the last transfer."""
        raws = list(raws)
        if not raws:
            return
        self.valid.value = 1
        for raw in raws:
            self.payload.value = raw
            while True:
                await ReadOnly()
                taken = bool(self.ready.value)
                await RisingEdge(self.dut.clk)
                if taken:
                    break
        self.valid.value = 0


class StreamMonitor:
    """Records every transfer (``valid & ready`` at a rising edge) on ``<name>__*`` as an int."""

    def __init__(self, dut, name: str, *, width: int | None = None, signed: bool = False):
        self.dut = dut
        self.valid = port(dut, f"{name}__valid")
        self.payload = port(dut, f"{name}__payload")
        try:
            self.ready = port(dut, f"{name}__ready")
        except AttributeError:        # an always_ready stream has no ready port
            self.ready = None
        self.signed = signed
        self.items: list[int] = []
        self._task = None

    def start(self):
        self._task = cocotb.start_soon(self._run())
        return self

    async def _run(self):
        while True:
            await ReadOnly()
            if self.valid.value == 1 and (self.ready is None or self.ready.value == 1):
                v = self.payload.value
                self.items.append(v.to_signed() if self.signed else v.to_unsigned())
            await RisingEdge(self.dut.clk)
