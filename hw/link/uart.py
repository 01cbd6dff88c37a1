"""UART PHY, 8N1: a transmitter and a receiver (2-FF synchronizer, mid-bit sampling) and the pair.

The bit period is ``divisor = round(clk_freq / baud)`` clock cycles (at least 4). The receiver
detects the falling edge of the start bit, waits ``divisor // 2`` cycles to the middle of it, checks
it is still low (else it was a glitch), then samples each data bit (LSB first) and the stop bit one
``divisor`` apart. A byte whose stop bit is low (a framing error) is dropped and counted.
There is no receive FIFO: the byte stays on ``rx`` until the next byte's stop bit; a consumer that
falls behind by more than a byte loses data (``overrun`` counts it), which the link's CRC then catches.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from hw.gemm.formats import check_int

__all__ = ["uart_divisor", "UartTx", "UartRx", "UartPhy"]


def uart_divisor(clk_freq_hz: int, baud: int) -> int:
    """Clock cycles per bit; ValueError if the rate is off by more than 2 % or below 4 cycles."""
    clk_freq_hz = check_int("clk_freq_hz", clk_freq_hz, 1_000)
    baud = check_int("baud", baud, 300)
    div = round(clk_freq_hz / baud)
    if div < 4:
        raise ValueError(f"baud {baud} is too fast for a {clk_freq_hz} Hz clock (needs >= 4 cycles per bit, "
                         f"max baud {clk_freq_hz // 4})")
    err = abs(clk_freq_hz / div - baud) / baud
    if err > 0.02:
        raise ValueError(f"baud {baud} from a {clk_freq_hz} Hz clock is off by {err:.1%} (> 2 %)")
    return div


class UartTx(wiring.Component):
    """8N1 transmitter.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send; one is taken whenever the line is idle.
    tx : Out(1)
        The serial line (idle high).
    busy : Out(1)
        A byte is being shifted out.

    Latency / throughput: the start bit begins the cycle after a byte is taken; ``10 * divisor`` cycles per byte.
    """

    def __init__(self, divisor: int):
        self.divisor = check_int("divisor", divisor, 4)
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        m.d.comb += [self.tx.eq(shreg[0]), self.busy.eq(bits != 0), self.i.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.i.valid):
                m.d.sync += [shreg.eq(Cat(0, self.i.payload, 1)), bits.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1), timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UartRx(wiring.Component):
    """8N1 receiver with a 2-FF synchronizer and mid-bit sampling.

    Members
    -------
    rx : In(1)
        The serial line (asynchronous).
    o : Out(stream.Signature(8))
        Received bytes; ``valid`` rises at the middle of the stop bit.
    framing_errors, overruns : Out(16)
        Bytes dropped for a low stop bit / bytes that replaced one not yet taken (wrapping counters).

    Latency: a byte is on ``o`` ``9.5 * divisor + 3`` cycles after its start bit's falling edge.
    """

    def __init__(self, divisor: int):
        self.divisor = check_int("divisor", divisor, 4)
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)),
                          "framing_errors": Out(16), "overruns": Out(16)})

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self.divisor))
        bit = Signal(range(10))
        shreg = Signal(8)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"           # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), bit.eq(bit + 1), timer.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.sync += self.overruns.eq(self.overruns + 1)
                    with m.Else():
                        m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m


class UartPhy(wiring.Component):
    """A :class:`UartTx` and a :class:`UartRx` at one rate: ``tx``/``rx`` pins and byte streams.

    Parameters
    ----------
    clk_freq_hz, baud : int
        The divisor is :func:`uart_divisor` ``(clk_freq_hz, baud)``.

    Members
    -------
    rx : In(1), tx : Out(1)
        Serial lines.
    i : In(stream.Signature(8))
        Bytes to transmit.
    o : Out(stream.Signature(8))
        Bytes received.
    framing_errors, overruns : Out(16)
        From the receiver.
    """

    def __init__(self, clk_freq_hz: int, baud: int):
        self.divisor = uart_divisor(clk_freq_hz, baud)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "i": In(stream.Signature(8)),
                          "o": Out(stream.Signature(8)), "framing_errors": Out(16), "overruns": Out(16)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.utx = utx = UartTx(self.divisor)
        m.submodules.urx = urx = UartRx(self.divisor)
        wiring.connect(m, wiring.flipped(self.i), utx.i)
        wiring.connect(m, urx.o, wiring.flipped(self.o))
        m.d.comb += [self.tx.eq(utx.tx), urx.rx.eq(self.rx),
                     self.framing_errors.eq(urx.framing_errors), self.overruns.eq(urx.overruns)]
        return m
