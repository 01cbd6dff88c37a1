"""Accelerator: the whole device a host talks to -- link, command decoder, GEMM engine, quantizer
units and counters -- parametric in array and buffer sizes.

::

    uart_rx -> UartRx -> FrameReceiver (sync hunt, CRC-8 header, CRC-32, payload buffer)
                              |  frame events + buffer
                         CommandDecoder -> GemmEngine (LOAD_A/LOAD_B/GEMM/READ_C)
                              |         -> ShiftQuantizer, LogQuantizer (QUANT)
    uart_tx <- UartTx <- FrameTransmitter

With ``uart=False`` the PHY is left out and the link is a pair of byte streams (``rx``/``tx``): the
simulated board (:mod:`sim.board`) drives those, one byte per cycle at most, so simulation does not
spend ``10 * clk/baud`` cycles per byte on serial bit timing. Everything above the PHY is the same RTL.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw import wire
from hw.gemm import formats as fm
from hw.gemm.engine import GemmEngine
from hw.link import CommandDecoder, FrameReceiver, FrameTransmitter, UartPhy, uart_divisor
from hw.skid import SkidBuffer

__all__ = ["Accelerator"]


class Accelerator(wiring.Component):
    """The Tetrad device: an INT4 GEMM engine and quantizer units behind the framed byte link.

    ``Accelerator(rows=4, cols=4, *, k_max=1024, a_depth=4096, b_depth=4096, c_depth=1024,
    formats=("int4", "log4", "shift"), clk_freq_hz=100_000_000, baud=3_000_000, quant_units=True,
    uart=True, max_payload=4096, frame_timeout=None, shift_scale="float", dim_bits=16)``

    Parameters
    ----------
    rows, cols : int
        Systolic array size (``1..64``); ``rows * cols`` MACs per cycle.
    k_max : int
        Longest reduction of one GEMM command (the host splits longer ones); sets the accumulator width.
    a_depth, b_depth, c_depth : int
        Engine buffer depths (:class:`hw.gemm.GemmEngine`): words per bank of A (``rows`` banks) and
        B (``cols`` banks), and C words (``cols`` results each).
    formats : collection of str
        B operand formats built into the PEs (:data:`hw.gemm.formats.B_FORMATS`).
    clk_freq_hz : int
        The clock (reported by HELLO; sets the UART divisor).
    baud : int
        UART rate (with ``uart=True``); ``clk_freq_hz / baud`` must be >= 4 cycles and within 2 %.
    quant_units : bool
        Build the QUANT units (ShiftQuantizer ``bits=4, e_max=3, axis="row"`` and LogQuantizer
        ``max_exp=6``, both ``in_width=16, lanes=1``). ``False``: HELLO reports ``quant_units = 0``,
        every QUANT is answered ``UNSUPPORTED`` and the decoder builds none of the QUANT datapath.
    uart : bool
        ``True``: serial pins ``uart_rx``/``uart_tx``. ``False``: byte streams ``rx``/``tx`` (simulation).
    max_payload : int
        Request payload buffer in bytes (``64..65535``); bounds WRITE chunks and QUANT tensors.
    frame_timeout : int or None
        Cycles of silence after which a partial frame is dropped (answered TIMEOUT). Default: 64 byte
        times at ``baud`` with the UART, 20,000 cycles without.
    shift_scale : {"float", "pow2"}
        The ShiftQuantizer's scale mode (the golden model's default is "float").
    dim_bits : int
        Width of the engine's dimension fields (``4..20``; ``k_max`` must be below ``2**dim_bits``).
        The wire's dimension fields are 16 bits: with fewer, a WRITE/GEMM/READ naming a dimension of
        ``2**dim_bits`` or more is answered ``OUT_OF_RANGE`` (never truncated), and the decoder's
        element counters are ``2 * dim_bits`` wide. A device whose buffers hold no longer dimension
        loses nothing (the iCEBreaker's 64-word buffers: ``dim_bits=7``, ``k_max=64``).

    Members
    -------
    uart_rx : In(1), uart_tx : Out(1)
        Serial lines (``uart=True``).
    rx : In(stream.Signature(8)), tx : Out(stream.Signature(8))
        Link bytes (``uart=False``).
    busy : Out(1)
        A frame is being executed or answered (an LED).
    engine_busy : Out(1)
        The GEMM engine is executing a command.
    error : Out(1)
        The most recent frame was not OK (bad CRC/length, timeout, busy, ...) (an LED).
    rx_activity, tx_activity : Out(1)
        A link byte was received / sent this cycle (stretch them for LEDs).
    rx_frame : Out(1)
        The receiver is inside a frame (its inter-byte timeout is running).
    """

    def __init__(self, rows: int = 4, cols: int = 4, *, k_max: int = 1024, a_depth: int = 4096,
                 b_depth: int = 4096, c_depth: int = 1024, formats=fm.DEFAULT_FORMATS,
                 clk_freq_hz: int = 100_000_000, baud: int = 3_000_000, quant_units: bool = True,
                 uart: bool = True, max_payload: int = 4096, frame_timeout: int | None = None,
                 shift_scale: str = "float", dim_bits: int = 16):
        self._MustUse__silence = True      # an object whose arguments are rejected is not 'unused'
        if not isinstance(uart, bool):
            raise ValueError(f"uart must be a bool, got {uart!r}")
        if not isinstance(quant_units, bool):
            raise ValueError(f"quant_units must be a bool, got {quant_units!r}")
        if shift_scale not in ("float", "pow2"):
            raise ValueError(f"shift_scale must be 'float' or 'pow2', got {shift_scale!r}")
        self.clk_freq_hz = fm.check_int("clk_freq_hz", clk_freq_hz, 1_000)
        self.uart = uart
        self.baud = fm.check_int("baud", baud, 300)
        self.divisor = uart_divisor(self.clk_freq_hz, self.baud) if uart else None
        self.max_payload = fm.check_int("max_payload", max_payload, 64, wire.MAX_LEN)
        if frame_timeout is None:
            frame_timeout = 64 * 10 * self.divisor if uart else 20_000
        self.frame_timeout = fm.check_int("frame_timeout", frame_timeout, 16, 2 ** 32 - 1)
        self.quant_units = quant_units
        self.shift_scale = shift_scale
        fm.check_int("k_max", k_max, 1, 0xFFFF)          # HELLO reports it in 16 bits
        # the engine validates rows, cols, k_max, formats, depths, dim_bits
        self.engine = GemmEngine(rows, cols, k_max=k_max, formats=formats, a_depth=a_depth,
                                 b_depth=b_depth, c_depth=c_depth, dim_bits=dim_bits)
        self.rows, self.cols, self.k_max = self.engine.rows, self.engine.cols, self.engine.k_max
        self.formats = self.engine.formats
        self.a_depth, self.b_depth, self.c_depth = a_depth, b_depth, c_depth
        self.quant_max = (self.max_payload - wire.QUANT_HDR.size) // 2
        self.hello = dict(
            version=wire.VERSION, rows=self.rows, cols=self.cols,
            formats=sum(wire.FORMAT_BITS[f] for f in self.formats), k_max=self.k_max,
            a_depth=a_depth, b_depth=b_depth, c_depth=c_depth, max_payload=self.max_payload,
            acc_width=self.engine.acc_width, dim_bits=self.engine.dim_bits, clk_hz=self.clk_freq_hz,
            quant_units=3 if quant_units else 0, shift_scale=1 if shift_scale == "float" else 0,
            quant_max=self.quant_max if quant_units else 0, baud=self.baud if uart else 0)
        sig = {"busy": Out(1), "engine_busy": Out(1), "error": Out(1), "rx_activity": Out(1),
               "tx_activity": Out(1), "rx_frame": Out(1)}
        if uart:
            sig.update({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)})
        else:
            sig.update({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})
        super().__init__(sig)
        self._MustUse__silence = False

    def elaborate(self, platform):
        from hw.quant import LogQuantizer, ShiftQuantizer

        m = Module()
        m.submodules.engine = eng = self.engine
        m.submodules.rxf = rxf = FrameReceiver(max_payload=self.max_payload, timeout=self.frame_timeout)
        m.submodules.txf = txf = FrameTransmitter()
        shiftq = luq = None
        if self.quant_units:
            m.submodules.shiftq = shiftq = ShiftQuantizer(
                in_width=16, bits=4, e_max=3, axis="row", scale=self.shift_scale, lanes=1,
                max_channels=max(1, self.quant_max))
            m.submodules.luq = luq = LogQuantizer(in_width=16, max_exp=6, lanes=1)
        m.submodules.dec = dec = CommandDecoder(eng, shiftq=shiftq, luq=luq, hello=self.hello,
                                                max_payload=self.max_payload)

        if self.uart:
            m.submodules.phy = phy = UartPhy(self.clk_freq_hz, self.baud)
            m.d.comb += [phy.rx.eq(self.uart_rx), self.uart_tx.eq(phy.tx)]
            rx_bytes, tx_bytes = phy.o, phy.i
        else:
            rx_bytes, tx_bytes = wiring.flipped(self.rx), wiring.flipped(self.tx)
        wiring.connect(m, rx_bytes, rxf.i)
        wiring.connect(m, txf.o, tx_bytes)
        m.d.comb += [
            self.rx_activity.eq(rxf.i.valid & rxf.i.ready),
            self.tx_activity.eq(txf.o.valid & txf.o.ready),
            self.rx_frame.eq(rxf.in_frame),
        ]

        wiring.connect(m, rxf.frame, dec.frame)
        m.d.comb += [rxf.buf_free.eq(dec.buf_free), rxf.r_addr.eq(dec.r_addr), dec.r_data.eq(rxf.r_data)]
        wiring.connect(m, dec.tx_start, txf.start)
        wiring.connect(m, dec.tx, txf.i)
        wiring.connect(m, dec.cmd, eng.cmd)
        wiring.connect(m, dec.a, eng.a_in)
        wiring.connect(m, dec.b, eng.b_in)
        wiring.connect(m, eng.c_out, dec.c)
        m.d.comb += [dec.eng_busy.eq(eng.busy), dec.eng_error.eq(eng.error), dec.eng_cycles.eq(eng.cycles),
                     eng.c_in.valid.eq(0)]
        for pfx, unit in (("sq", shiftq), ("lq", luq)):
            if unit is None:
                continue
            m.d.comb += [unit.start.eq(getattr(dec, f"{pfx}_start")), unit.cfg.eq(getattr(dec, f"{pfx}_cfg")),
                         getattr(dec, f"{pfx}_busy").eq(unit.busy)]
            # a register slice: the decoder's feed FSM and the unit's input handshake (which reaches
            # its random stream) are apart by flip-flops
            m.submodules[f"{pfx}_in"] = slice_ = SkidBuffer(unit.i.payload.shape())
            wiring.connect(m, getattr(dec, f"{pfx}_i"), slice_.i)
            wiring.connect(m, slice_.o, unit.i)
            wiring.connect(m, unit.info, getattr(dec, f"{pfx}_info"))
            wiring.connect(m, unit.o, getattr(dec, f"{pfx}_o"))

        m.d.comb += [self.busy.eq(dec.busy), self.engine_busy.eq(eng.busy)]
        with m.If(dec.frame.valid & dec.frame.ready):
            m.d.sync += self.error.eq(dec.frame.payload.status != wire.Status.OK)
        return m
