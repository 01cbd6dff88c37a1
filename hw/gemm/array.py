"""Output-stationary systolic array of processing elements, with its input skew and result drain."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import formats as fm
from .pe import ProcessingElement

__all__ = ["SystolicArray", "delay"]

MAX_SIDE = 64


def delay(m: Module, value, cycles: int, *, name: str, reset_less: bool = True):
    """``value`` delayed by ``cycles`` registers (``cycles = 0`` returns it unchanged). Data delays are
    reset-less so that synthesis can pack them into shift-register LUTs (SRL16/SRLC32)."""
    for n in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{n + 1}", reset_less=reset_less)
        m.d.sync += reg.eq(value)
        value = reg
    return value


def or_tree(m: Module, values, *, fan_in: int, name: str):
    """OR-reduce equally shaped values through registered levels of ``fan_in`` inputs (one LUT6
    level each for ``fan_in = 6``). Returns ``(result, levels)``; every input has the same latency."""
    level = 0
    values = list(values)
    while len(values) > 1:
        level += 1
        merged = []
        for g in range(0, len(values), fan_in):
            group = values[g:g + fan_in]
            reg = Signal.like(values[0], name=f"{name}_l{level}_{g // fan_in}", reset_less=True)
            acc = Value.cast(group[0])
            for v in group[1:]:
                acc = acc | Value.cast(v)
            m.d.sync += reg.eq(acc)
            merged.append(reg)
        values = merged
    return values[0], level


class SystolicArray(wiring.Component):
    """``rows x cols`` output-stationary INT4 GEMM array.

    One beat of ``a`` is a column ``A[:, k]`` of the current tile (``rows`` INT4 values), one beat of
    ``b`` the matching row ``B[k, :]`` (``cols`` ``(m, s)`` operands); the two streams are consumed
    together. A tile is ``K`` such beat pairs, ``K >= 1``, the last one flagged by ``a.payload.last``.
    Cell ``(i, j)`` accumulates ``C[i, j] = sum_k A[i, k] * (m[k, j] << s[k, j])``.

    Inside the array row ``i`` of ``a`` is delayed by ``i`` cycles and column ``j`` of ``b`` by ``j``
    cycles (the input skew), so ``A[i, k]`` and ``B[k, j]`` meet in cell ``(i, j)``. A bubble (no beat
    accepted) enters as ``a = 0`` and adds nothing, so the cells need no valid flag.

    Drain: each cell shows its finished sum for one cycle and zero otherwise (see
    :class:`~hw.gemm.pe.ProcessingElement`); because of the skew, the cells of one column finish in
    consecutive cycles, so a registered OR tree per column collects them one per cycle, and a final
    per-column delay of ``cols - 1 - j`` cycles lines the columns up. The next tile streams in while
    the previous one drains. The only stall: the ``last`` beats of two tiles are accepted at least
    ``rows`` cycles apart, because a tile leaves as ``rows`` result beats; with ``K >= rows`` this never
    stalls.

    Parameters
    ----------
    rows, cols : int
        Array size, each ``1..64``.
    k_max : int
        Longest reduction per tile that must be exact; sets the accumulator width.
    formats : collection of str
        B formats the cells support (:data:`hw.gemm.formats.B_FORMATS`).
    acc_width : int or None
        Accumulator bits; ``None`` derives the minimum from ``k_max`` and ``formats``.
    or_fan_in : int
        Inputs per level of the drain OR trees, ``2..16``; 6 fills a 6-input LUT.

    Members
    -------
    a : In(stream.Signature(StructLayout({"data": ArrayLayout(signed(4), rows), "last": 1})))
        Columns of the A tile, INT4.
    b : In(stream.Signature(ArrayLayout(operand, cols)))
        Rows of the B tile as ``(m, s)`` operands (:func:`hw.gemm.formats.operand_layout`).
    c : Out(stream.Signature(ArrayLayout(signed(acc_width), cols), always_ready=True))
        Result rows, ``rows`` beats per tile in row order, in consecutive cycles. There is no
        back-pressure: the consumer takes one beat per cycle.

    Latency
    -------
    Row ``i`` of a tile's result leaves :attr:`latency` ``+ i`` cycles after the tile's ``last`` beat
    was accepted; :attr:`latency` is ``cols + 3 + L`` with ``L = ceil(log_or_fan_in(rows))`` OR levels
    (one edge register stage, so the operand streams' logic and the stall decision reach only
    registers, then the skew, the PE pipeline and the drain).

    Throughput
    ----------
    One beat pair (``rows * cols`` multiply-accumulates) per cycle while ``K >= rows``; otherwise one
    tile per ``rows`` cycles.
    """

    def __init__(self, rows: int, cols: int, *, k_max: int, formats=fm.DEFAULT_FORMATS,
                 acc_width: int | None = None, or_fan_in: int = 6):
        self.rows = fm.check_int("rows", rows, 1, MAX_SIDE)
        self.cols = fm.check_int("cols", cols, 1, MAX_SIDE)
        self.or_fan_in = fm.check_int("or_fan_in", or_fan_in, 2, 16)
        self.k_max, self.formats, self.acc_width = ProcessingElement.resolve_config(
            k_max, formats, acc_width)
        self.operand = fm.operand_layout(self.formats)
        levels, n = 0, self.rows
        while n > 1:
            n = -(-n // self.or_fan_in)
            levels += 1
        self.or_levels = levels
        # + 1: the edge registers of the accepted beat (a zeroed in bubbles, b, last)
        self.latency = self.cols + ProcessingElement.LATENCY + levels
        self.a_layout = data.StructLayout({"data": data.ArrayLayout(signed(4), self.rows), "last": 1})
        self.b_layout = data.ArrayLayout(self.operand, self.cols)
        self.c_layout = data.ArrayLayout(signed(self.acc_width), self.cols)
        super().__init__({
            "a": In(stream.Signature(self.a_layout)),
            "b": In(stream.Signature(self.b_layout)),
            "c": Out(stream.Signature(self.c_layout, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols

        # Flow control: the two streams move together; a `last` beat waits until the previous
        # tile's `last` is `rows` cycles old, so the result beats of two tiles never overlap.
        cool = Signal(range(rows))
        blocked = Signal()
        take = Signal()
        m.d.comb += [
            blocked.eq(self.a.payload.last & (cool != 0)),
            self.a.ready.eq(self.b.valid & ~blocked),
            self.b.ready.eq(self.a.valid & ~blocked),
            take.eq(self.a.valid & self.b.valid & ~blocked),
        ]
        ends = Signal()
        m.d.comb += ends.eq(take & self.a.payload.last)
        with m.If(ends):
            m.d.sync += cool.eq(rows - 1)
        with m.Elif(cool != 0):
            m.d.sync += cool.eq(cool - 1)

        pes = [[ProcessingElement(k_max=self.k_max, formats=self.formats, acc_width=self.acc_width)
                for _ in range(cols)] for _ in range(rows)]
        for i in range(rows):
            for j in range(cols):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        # Row edge: register the beat (data zeroed in bubbles), form 3a once per row, skew row i by
        # i cycles.
        a_layout = pes[0][0].a_layout
        ends_r = Signal(name="ends_edge")
        m.d.sync += ends_r.eq(ends)
        for i in range(rows):
            edge = Signal(a_layout, name=f"a_edge_{i}")
            value = Signal(signed(4), name=f"a_edge_v{i}", reset_less=True)
            m.d.sync += value.eq(Mux(take, self.a.payload.data[i], 0))
            m.d.comb += edge.v.eq(value)
            if "x3" in a_layout.members:
                # 3v as a shift and an add: a `* 3` is mapped to a (slow, far) DSP block on ECP5
                m.d.comb += edge.x3.eq((value << 1) + value)
            edge_last = Signal(name=f"last_edge_{i}")
            m.d.comb += edge_last.eq(ends_r)
            m.d.comb += [
                pes[i][0].a_in.eq(delay(m, edge, i, name=f"skew_a{i}")),
                pes[i][0].last_in.eq(delay(m, edge_last, i, name=f"skew_l{i}", reset_less=False)),
            ]
        for j in range(cols):
            edge = Signal(self.operand, name=f"b_edge_{j}", reset_less=True)
            m.d.sync += edge.eq(self.b.payload[j])
            m.d.comb += pes[0][j].b_in.eq(delay(m, edge, j, name=f"skew_b{j}"))

        # Systolic wiring: a and last flow right, b flows down.
        for i in range(rows):
            for j in range(cols):
                if j + 1 < cols:
                    m.d.comb += [pes[i][j + 1].a_in.eq(pes[i][j].a_out),
                                 pes[i][j + 1].last_in.eq(pes[i][j].last_out)]
                if i + 1 < rows:
                    m.d.comb += pes[i + 1][j].b_in.eq(pes[i][j].b_out)

        # Drain: per column, OR the cells (at most one is non-zero per cycle), then deskew.
        for j in range(cols):
            col, levels = or_tree(m, [pes[i][j].out for i in range(rows)],
                                  fan_in=self.or_fan_in, name=f"drain{j}")
            assert levels == self.or_levels
            m.d.comb += self.c.payload[j].eq(delay(m, col, cols - 1 - j, name=f"deskew{j}"))

        # Output valid: the tile-end event, delayed like row 0 of the last column, held for `rows`.
        # `c.valid` is a flip-flop, computed a cycle ahead from the event one register earlier: it
        # enables every C register of the engine's drain across the die, so no logic may precede it.
        first_early = delay(m, ends, self.latency - 1, name="c_first", reset_less=False)
        first_row = Signal()
        m.d.sync += first_row.eq(first_early)
        left = Signal(range(rows))
        with m.If(first_row):
            m.d.sync += left.eq(rows - 1)
        with m.Elif(left != 0):
            m.d.sync += left.eq(left - 1)
        # valid(t+1) = first_row(t+1) | left(t+1) != 0, with left(t+1) != 0 exactly when a tile starts
        # at t (and rows > 1) or more than one row is still to come
        m.d.sync += self.c.valid.eq(first_early | (first_row if rows > 1 else 0) | (left > 1))
        return m
