"""cocotb test module of the simulated board (:mod:`sim.board`): serves the Accelerator's byte streams
on a loopback TCP port until SIGTERM/SIGINT or until the launching process goes away."""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer
from cocotb.types import Logic

from sim.board import LinkSocket, _announce, _Stopper, pump


_PERIOD_NS = 10


class _CocotbIO:
    """Writes and reads right after the falling edge (see :meth:`settle`); a write asked for in a
    read-only phase is applied after the next falling edge."""

    def __init__(self, dut):
        self.dut = dut
        self.h = {}
        self.last = {}
        self.pending = {}
        self.readonly = False

    def _handle(self, name):
        h = self.h.get(name)
        if h is None:
            h = self.h[name] = getattr(self.dut, name)
        return h

    def _write(self, name, value):
        if self.last.get(name) != value:
            self.last[name] = value
            self._handle(name).value = value

    def set(self, name, value):
        if self.readonly:
            self.pending[name] = value
        else:
            self._write(name, value)

    def get(self, name):
        v = self._handle(name).value
        return int(v) if isinstance(v, Logic) else v.to_unsigned()

    async def settle(self):
        # The pump reads only tx.valid/tx.payload/rx.ready/busy, none of which depends combinationally on
        # the inputs it writes in the same cycle (rx.ready is constant, tx.valid/payload and busy come
        # from registers), so the values read right after the falling edge are the ones the next rising
        # edge sees: no ReadOnly phase needed, which halves the triggers per simulated cycle.
        pass

    async def tick(self):
        await FallingEdge(self.dut.clk)
        self.readonly = False
        if self.pending:
            for k, v in self.pending.items():
                self._write(k, v)
            self.pending.clear()

    async def ticks(self, n):
        # one timer instead of n edge callbacks (ClockCycles wakes Python on every edge): to just
        # after the (n-1)th falling edge, then to the nth
        if n > 1:
            await Timer(_PERIOD_NS * (n - 1) + 2, unit="ns")
        await self.tick()


@cocotb.test()
async def board(dut):
    Clock(dut.clk, _PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    dut.rx__valid.value = 0
    dut.tx__ready.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    link = LinkSocket(int(os.environ.get("TETRAD_BOARD_PORT", "0")))
    _announce(link.port)
    try:
        await pump(_CocotbIO(dut), link, _Stopper(), idle_cycles=int(os.environ.get("TETRAD_BOARD_IDLE", "200")))
    finally:
        link.close()
