"""Framing of the board link (:mod:`hw.wire`): the receiver that finds, checks and buffers request
frames, and the transmitter that wraps a response payload in a frame.

Receiver resynchronization. The receiver hunts for ``SYNC0 SYNC1``, collects the header and checks
its CRC-8 before believing the length; a bad check sends it back to hunting at once (from the failing
byte, which may itself be ``SYNC0``). A length above ``max_payload`` is answered ``BAD_LENGTH`` and
the rest of that frame is hunted through. A frame that stops arriving for ``timeout`` cycles (bytes
dropped) is abandoned and answered ``TIMEOUT``, so the device is never stuck waiting for a payload.
Only a frame whose CRC-32 matches is handed over as ``OK``: nothing is applied before that.

False synchronization inside garbage needs two sync bytes and a matching CRC-8 (1 in 2**24 per
position); even then the CRC-32 rejects it and the inter-byte timeout bounds the time lost.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import wire
from hw.gemm.formats import check_int
from hw.skid import SkidBuffer

from .crc import crc8_step, crc32_step

__all__ = ["event_layout", "response_layout", "FrameReceiver", "FrameTransmitter"]

#: What the receiver reports per frame.
event_layout = data.StructLayout({
    "op": unsigned(8), "seq": unsigned(8), "length": unsigned(16), "crc": unsigned(32),
    "status": unsigned(4),
})

#: The header of a response, for the transmitter.
response_layout = data.StructLayout({"op": unsigned(8), "seq": unsigned(8), "length": unsigned(16)})


class FrameReceiver(wiring.Component):
    """Request frames in, checked frame events out, payload in a buffer.

    Parameters
    ----------
    max_payload : int
        Payload buffer bytes (``16..65535``); longer frames are answered ``BAD_LENGTH``.
    timeout : int
        Cycles without a byte after which a partial frame is abandoned (``>= 16``).

    Members
    -------
    i : In(stream.Signature(8))
        Link bytes (always ready).
    frame : Out(stream.Signature(event_layout))
        One event per frame with an intact header: ``status`` OK (payload in the buffer), BAD_CRC,
        BAD_LENGTH, TIMEOUT or BUSY (intact, but arrived while the buffer was in use: not stored).
        An event that arrives while one is still pending is dropped.
    buf_free : In(1)
        The consumer does not need the buffer (it is idle); sampled when a payload begins.
    r_addr : In(range(max_payload)), r_data : Out(8)
        Payload buffer read port; one cycle latency.
    in_frame : Out(1)
        A frame has begun (sync seen) and is not complete: the inter-byte timeout is running.

    Latency: the event is valid the cycle after the last CRC byte.
    """

    def __init__(self, *, max_payload: int = 4096, timeout: int = 100_000):
        self.max_payload = check_int("max_payload", max_payload, 16, wire.MAX_LEN)
        self.timeout = check_int("timeout", timeout, 16, 2 ** 32 - 1)
        super().__init__({
            "i": In(stream.Signature(8)),
            "frame": Out(stream.Signature(event_layout)),
            "buf_free": In(1),
            "r_addr": In(range(self.max_payload)),
            "r_data": Out(8),
            "in_frame": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buf = buf = memory.Memory(shape=unsigned(8), depth=self.max_payload, init=[])
        wp = buf.write_port()
        rp = buf.read_port()
        m.d.comb += [rp.addr.eq(self.r_addr), self.r_data.eq(rp.data)]

        byte = self.i.payload
        take = Signal()
        m.d.comb += [self.i.ready.eq(1), take.eq(self.i.valid)]
        op = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        idx = Signal(16)
        c8 = Signal(8)
        c32 = Signal(32)
        rx_crc = Signal(32)
        store = Signal()
        idle = Signal(range(self.timeout + 1))
        hunting = Signal()

        with m.If(self.frame.valid & self.frame.ready):
            m.d.sync += self.frame.valid.eq(0)

        def emit(status):
            with m.If(~self.frame.valid | self.frame.ready):
                m.d.sync += [self.frame.valid.eq(1), self.frame.payload.op.eq(op),
                             self.frame.payload.seq.eq(seq), self.frame.payload.length.eq(length),
                             self.frame.payload.crc.eq(~c32), self.frame.payload.status.eq(status)]

        m.d.comb += self.in_frame.eq(~hunting)
        with m.If(take | hunting):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self.timeout):
            m.d.sync += idle.eq(idle + 1)
        timed_out = idle == self.timeout

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += hunting.eq(1)
                with m.If(take & (byte == wire.SYNC[0])):
                    m.next = "SYNC1"
            with m.State("SYNC1"):
                with m.If(take):
                    with m.If(byte == wire.SYNC[1]):
                        m.d.sync += [idx.eq(0), c8.eq(0), c32.eq(0xFFFFFFFF)]
                        m.next = "HDR"
                    with m.Elif(byte != wire.SYNC[0]):
                        m.next = "HUNT"
                with m.Elif(timed_out):
                    m.next = "HUNT"
            with m.State("HDR"):
                with m.If(take):
                    m.d.sync += [c8.eq(crc8_step(c8, byte)), c32.eq(crc32_step(c32, byte)),
                                 idx.eq(idx + 1)]
                    with m.Switch(idx):
                        with m.Case(0):
                            m.d.sync += op.eq(byte)
                        with m.Case(1):
                            m.d.sync += seq.eq(byte)
                        with m.Case(2):
                            m.d.sync += length[:8].eq(byte)
                        with m.Case(3):
                            m.d.sync += length[8:].eq(byte)
                            m.next = "HCHK"
                with m.Elif(timed_out):
                    m.next = "HUNT"
            with m.State("HCHK"):
                with m.If(take):
                    with m.If(byte != c8):
                        m.next = "HUNT"
                        with m.If(byte == wire.SYNC[0]):
                            m.next = "SYNC1"
                    with m.Elif(length > self.max_payload):
                        emit(wire.Status.BAD_LENGTH)
                        m.next = "HUNT"
                    with m.Else():
                        m.d.sync += [c32.eq(crc32_step(c32, byte)), idx.eq(0),
                                     store.eq(self.buf_free & ~self.frame.valid)]
                        with m.If(length == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
                with m.Elif(timed_out):
                    m.next = "HUNT"
            with m.State("PAYLOAD"):
                m.d.comb += [wp.addr.eq(idx), wp.data.eq(byte), wp.en.eq(take & store)]
                with m.If(take):
                    m.d.sync += [c32.eq(crc32_step(c32, byte)), idx.eq(idx + 1)]
                    with m.If(idx == length - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "CRC"
                with m.Elif(timed_out):
                    emit(wire.Status.TIMEOUT)
                    m.next = "HUNT"
            with m.State("CRC"):
                full = Cat(rx_crc[8:], byte)
                with m.If(take):
                    m.d.sync += [rx_crc.eq(full), idx.eq(idx + 1)]
                    with m.If(idx == 3):
                        with m.If(full != ~c32):
                            emit(wire.Status.BAD_CRC)
                        with m.Elif(store):
                            emit(wire.Status.OK)
                        with m.Else():
                            emit(wire.Status.BUSY)
                        m.next = "HUNT"
                with m.Elif(timed_out):
                    emit(wire.Status.TIMEOUT)
                    m.next = "HUNT"
        return m


class FrameTransmitter(wiring.Component):
    """Response frames: a header on ``start``, then exactly ``length`` payload bytes on ``i``.

    Members
    -------
    start : In(stream.Signature(response_layout))
        A response header; taken when idle.
    i : In(stream.Signature(8))
        Its payload bytes.
    o : Out(stream.Signature(8))
        The frame bytes (sync, header, check, payload, CRC-32).
    busy : Out(1)
        A frame is being sent.

    Throughput: one byte per cycle when ``o`` is ready; 11 bytes of overhead per frame.

    Latency: payload bytes pass a two-entry skid buffer (one cycle), so ``i.ready`` is a register
    and no combinational path runs from ``o.ready`` (the UART) back to the producer.
    """

    def __init__(self):
        super().__init__({
            "start": In(stream.Signature(response_layout)),
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.in_skid = skid = SkidBuffer(8)
        wiring.connect(m, wiring.flipped(self.i), skid.i)
        pin = skid.o
        hdr = Signal(response_layout)
        c8 = Signal(8)
        c32 = Signal(32)
        idx = Signal(16)
        hbytes = [Const(wire.SYNC[0], 8), Const(wire.SYNC[1], 8), hdr.op, hdr.seq,
                  hdr.length[:8], hdr.length[8:], c8]
        cur = Signal(8)
        with m.Switch(idx):
            for j, v in enumerate(hbytes):
                with m.Case(j):
                    m.d.comb += cur.eq(v)
        fin = Signal(32)
        m.d.comb += fin.eq(~c32)
        sent = self.o.valid & self.o.ready
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.start.ready.eq(1)
                with m.If(self.start.valid):
                    m.d.sync += [hdr.eq(self.start.payload), idx.eq(0), c8.eq(0), c32.eq(0xFFFFFFFF)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1), self.o.payload.eq(cur)]
                with m.If(sent):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If((idx >= 2) & (idx <= 5)):
                        m.d.sync += c8.eq(crc8_step(c8, cur))
                    with m.If(idx >= 2):
                        m.d.sync += c32.eq(crc32_step(c32, cur))
                    with m.If(idx == 6):
                        m.d.sync += idx.eq(0)
                        with m.If(hdr.length == 0):
                            m.next = "TRAILER"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(pin.valid),
                             self.o.payload.eq(pin.payload), pin.ready.eq(self.o.ready)]
                with m.If(sent):
                    m.d.sync += [c32.eq(crc32_step(c32, pin.payload)), idx.eq(idx + 1)]
                    with m.If(idx == hdr.length - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "TRAILER"
            with m.State("TRAILER"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1),
                             self.o.payload.eq(fin.word_select(idx[:2], 8))]
                with m.If(sent):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == 3):
                        m.next = "IDLE"
        return m
