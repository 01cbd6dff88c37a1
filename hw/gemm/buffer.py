"""Banked operand buffer with a skewed (diagonal) layout: one matrix, readable by rows and by columns.

The array needs ``P`` operands per cycle (``P = rows`` for A, ``cols`` for B): a column slice of the
tile when the operand is stored untransposed (``A[m0:m0+P, k]`` of a row-major ``M x K`` matrix), a row
slice when it is stored transposed (``X[k, m0:m0+P]`` of a row-major ``K x M`` matrix, ``A = X^T``).
Element ``(r, c)`` of the stored ``R x C`` matrix lives in bank ``(r + c) mod P`` at address

    ((r // P) * ceil(C / P) + c // P) * P2 + c mod P          (P2 = P rounded up to a power of two)

so ``P`` consecutive rows of one column hit ``P`` different banks at one common address, and ``P``
consecutive columns of one row hit ``P`` different banks at addresses that differ only in their low
bits, ``(b - r) mod P`` for bank ``b``. In both cases lane ``i`` comes from bank ``(i + k) mod P``, a
rotation by the reduction index. That is what makes transposed operands free: the host writes every
matrix in its own row-major order and the GEMM command says how to read it.

Capacity: a stored ``R x C`` matrix needs ``ceil(R / P) * ceil(C / P) * P2`` words per bank.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from . import formats as fm

__all__ = ["NO_RW_CHECK", "READ_LATENCY", "WRITE_LATENCY", "OperandBuffer", "ceil_div_const", "buffer_words",
           "pow2_ceil"]

#: Attributes of a memory whose user never uses a read that meets a write to the same word in one
#: cycle. Simulation keeps Amaranth's read-before-write semantics; ``hw.build`` marks such a memory's
#: read-during-write result don't-care for synthesis, which then maps it to bare block RAM instead of
#: emulating read-before-write (on the ECP5, two flip-flops and a bypass multiplexer per data bit, fed
#: by an address compare: a 16 x 16 accelerator's critical path ran through that compare).
NO_RW_CHECK = {"no_rw_check": 1}

#: Cycles from an :class:`OperandBuffer` write (``w_en``) to the word landing in its bank.
WRITE_LATENCY = 2
#: Cycles from an :class:`OperandBuffer` read (``r_addr``) to its ``r_data``.
READ_LATENCY = 3


def pow2_ceil(n: int) -> int:
    """The smallest power of two ``>= n``."""
    return 1 << max(0, (n - 1).bit_length())


def buffer_words(rows: int, cols: int, lanes: int) -> int:
    """Words per bank that a stored ``rows x cols`` matrix occupies in a ``lanes``-bank buffer."""
    return -(-rows // lanes) * -(-cols // lanes) * pow2_ceil(lanes)


def ceil_div_const(x, divisor: int, x_bits: int):
    """``ceil(x / divisor)`` for an unsigned value ``x < 2**x_bits`` and a constant divisor.

    A power of two is a shift; any other divisor uses a multiplication by a rounded reciprocal
    (constant shift-and-add logic, no divider), exact for every ``x`` in range (checked here
    exhaustively for small ranges and by the unit tests for the configured ones)."""
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    y = x + (divisor - 1)                     # floor((x + d - 1) / d) == ceil(x / d)
    if divisor & (divisor - 1) == 0:
        return y >> (divisor.bit_length() - 1)
    y_bits = x_bits + 1
    shift = y_bits + divisor.bit_length()
    recip = -(-(1 << shift) // divisor)       # ceil(2**shift / d): exact floor for y < 2**y_bits
    return (y * recip) >> shift


class OperandBuffer(wiring.Component):
    """``lanes`` banks of ``depth`` words of ``shape``, in the skewed layout of this module.

    Parameters
    ----------
    lanes : int
        Banks, and operands delivered per read (``1..64``).
    depth : int
        Words per bank (``1..2**20``); maps to block RAM.
    shape : shape-castable
        One element (``signed(4)`` for A, the ``(m, s)`` operand layout for B).

    Members
    -------
    w_en : In(1)
        Write ``w_data`` to bank ``w_bank`` at ``w_addr`` this cycle.
    w_bank, w_addr, w_data : In
        Write bank, address and element.
    r_addr : In(ArrayLayout(unsigned(addr_bits), lanes))
        Read address of each bank, read every cycle (the read pipeline never stalls).
    r_rot : In(range(lanes))
        Lane ``i`` takes bank ``(i + r_rot) mod lanes``.
    r_mask : In(lanes)
        Lanes to deliver; the others read as zero (operands beyond the matrix edge).
    r_data : Out(ArrayLayout(shape, lanes))
        The lanes of the read issued :data:`READ_LATENCY` (3) cycles ago. A read issued in the
        cycle a write lands (``WRITE_LATENCY`` cycles after its ``w_en``) is undefined after synthesis
        (:data:`NO_RW_CHECK`): the user must not use it.

    Latency
    -------
    A write lands in its bank two cycles after ``w_en`` (:data:`WRITE_LATENCY`: the write is
    registered, decoded to its bank and registered again).
    Three cycles from a read to ``r_data`` (:data:`READ_LATENCY`): the block RAM's read register,
    then two registers of the raw bank words (the block RAM's slow clock-to-out meets one
    flip-flop, not the rotation and mask logic or a long route); rotation and mask are
    combinational after them.
    """

    def __init__(self, lanes: int, depth: int, shape):
        self.lanes = fm.check_int("lanes", lanes, 1, 64)
        self.depth = fm.check_int("depth", depth, 1, 2 ** 20)
        self.shape = shape
        self.addr_bits = max(1, (self.depth - 1).bit_length())
        self.lane_block = pow2_ceil(self.lanes)
        super().__init__({
            "w_en": In(1),
            "w_bank": In(range(self.lanes)),
            "w_addr": In(self.addr_bits),
            "w_data": In(shape),
            "r_addr": In(data.ArrayLayout(unsigned(self.addr_bits), self.lanes)),
            "r_rot": In(range(self.lanes)),
            "r_mask": In(self.lanes),
            "r_data": Out(data.ArrayLayout(shape, self.lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        width = Shape.cast(self.shape).width
        banks = []
        # The write is registered twice: once as it arrives, so the loader's logic ends in flip-flops
        # next to it instead of being routed across the device, then again after the bank decode, so
        # each block RAM's write enable is a flip-flop of its own (placed next to it). The long route
        # from the loader to the banks then runs from one flip-flop through one LUT.
        w_en1 = Signal(name="w_en_q")
        w_bank1 = Signal.like(self.w_bank, name="w_bank_q")
        w_addr1 = Signal.like(self.w_addr, name="w_addr_q")
        w_data1 = Signal(width, name="w_data_q")
        w_addr = Signal.like(self.w_addr, name="w_addr_q2")
        w_data = Signal(width, name="w_data_q2")
        m.d.sync += [w_en1.eq(self.w_en), w_bank1.eq(self.w_bank), w_addr1.eq(self.w_addr),
                     w_data1.eq(self.w_data), w_addr.eq(w_addr1), w_data.eq(w_data1)]
        for b in range(self.lanes):
            mem = memory.Memory(shape=unsigned(width), depth=self.depth, init=[], attrs=NO_RW_CHECK)
            m.submodules[f"bank{b}"] = mem
            wr = mem.write_port()
            rd = mem.read_port()
            w_en = Signal(name=f"bank{b}_we")
            m.d.sync += w_en.eq(w_en1 & (w_bank1 == b))
            m.d.comb += [
                wr.addr.eq(w_addr), wr.data.eq(w_data), wr.en.eq(w_en),
            rd.addr.eq(self.r_addr[b]),
            ]
            # two registers after the block RAM: its slow clock-to-out (5.8 ns on the ECP5) then
            # drives one flip-flop of fan-out one, placed next to it, and the second register's
            # fan-out to every lane's rotation starts a fresh cycle
            word = Signal(width, name=f"bank{b}_q")
            word2 = Signal(width, name=f"bank{b}_q2")
            m.d.sync += [word.eq(rd.data), word2.eq(word)]
            banks.append(word2)

        # The rotation and the lane mask belong to the read in flight: register them with it.
        rot, mask = self.r_rot, self.r_mask
        for j in range(READ_LATENCY):
            rot_q = Signal.like(self.r_rot, name=f"rot{j + 1}")
            mask_q = Signal.like(self.r_mask, name=f"mask{j + 1}")
            m.d.sync += [rot_q.eq(rot), mask_q.eq(mask)]
            rot, mask = rot_q, mask_q
        with m.Switch(rot):
            for r in range(self.lanes):
                with m.Case(r):
                    for i in range(self.lanes):
                        m.d.comb += Value.cast(self.r_data[i]).eq(
                            Mux(mask[i], banks[(i + r) % self.lanes], 0))
        return m
