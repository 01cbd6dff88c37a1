"""A stream register slice (skid buffer): cuts every combinational path between two stream ends."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Passes a stream through unchanged, with ``o.valid``, ``o.payload`` and ``i.ready`` all driven
    by flip-flops, so neither side's logic reaches into the other's.

    Parameters
    ----------
    shape : shape-castable
        The payload shape.

    Members
    -------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))

    Latency and throughput
    ----------------------
    An element leaves one cycle after it enters; one element per cycle when ``o.ready`` stays high.
    A second register (the skid) holds the element that arrives in the cycle ``o`` stalls.
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        skid_v = Signal()
        skid = Signal(self.shape)
        m.d.comb += self.i.ready.eq(~skid_v)
        take = self.i.valid & ~skid_v
        with m.If(~self.o.valid | self.o.ready):
            m.d.sync += [self.o.valid.eq(skid_v | take), skid_v.eq(0),
                         self.o.payload.eq(Mux(skid_v, skid, self.i.payload))]
        with m.Elif(take):
            m.d.sync += [skid_v.eq(1), skid.eq(self.i.payload)]
        return m
