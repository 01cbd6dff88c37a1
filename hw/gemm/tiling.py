"""Read-address generation for one side (A or B) of a tiled GEMM over an :class:`OperandBuffer`."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import formats as fm
from .buffer import pow2_ceil

__all__ = ["TileReader", "LoadWriter"]


class TileReader(wiring.Component):
    """Walks the tiles of one GEMM operand and produces the buffer read of every reduction step.

    The side's operand is ``op(X)``, with tiles of ``lanes`` along its non-reduction dimension ``T``
    (``M`` for A, ``N`` for B) and the reduction index ``k``. With the skewed buffer layout
    (:mod:`hw.gemm.buffer`) the read of tile ``t`` at step ``k`` is

    * *strided* (the stored matrix is ``T x K``, read down a column): every bank at
      ``(t * ceil(K/P) + k // P) * P2 + k mod P``;
    * *contiguous* (the stored matrix is ``K x T``, read along a row): bank ``b`` at
      ``((k // P) * ceil(T/P) + t) * P2 + (b - k) mod P``;

    and in both cases lane ``i`` is bank ``(i + k) mod P``. Both are ``hi * P2 + lo`` with
    ``hi = t * tstep + (k // P) * kstep``, kept incrementally, so there is no multiplier.

    Parameters
    ----------
    lanes : int
        ``P``, the buffer's banks (array rows for A, columns for B).
    addr_bits : int
        Buffer address width.
    dim_bits : int
        Width of the dimension ``T``.

    Members
    -------
    strided : In(1)
        Read mode (static during a GEMM).
    tstep, kstep : In(addr_bits)
        ``hi`` increments per tile and per ``P`` reduction steps (static during a GEMM).
    size : In(dim_bits)
        ``T``; lanes at or beyond it are masked (static during a GEMM).
    restart, restart_k, next_tile, advance_k : In(1)
        Events, at most one per cycle: back to tile 0; back to ``k = 0`` of this tile; on to the next
        tile at ``k = 0``; on to ``k + 1``.
    r_addr, r_rot, r_mask : Out
        The read of the current step, for :class:`~hw.gemm.buffer.OperandBuffer`.
    """

    def __init__(self, lanes: int, *, addr_bits: int, dim_bits: int):
        self.lanes = fm.check_int("lanes", lanes, 1, 64)
        self.addr_bits = fm.check_int("addr_bits", addr_bits, 1, 32)
        self.dim_bits = fm.check_int("dim_bits", dim_bits, 1, 32)
        self.lo_bits = (pow2_ceil(self.lanes) - 1).bit_length()
        super().__init__({
            "strided": In(1),
            "tstep": In(self.addr_bits),
            "kstep": In(self.addr_bits),
            "size": In(self.dim_bits),
            "restart": In(1),
            "restart_k": In(1),
            "next_tile": In(1),
            "advance_k": In(1),
            "r_addr": Out(data.ArrayLayout(self.addr_bits, self.lanes)),
            "r_rot": Out(range(self.lanes)),
            "r_mask": Out(self.lanes),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        tile_base = Signal(self.addr_bits)
        kpart = Signal(self.addr_bits)
        kmod = Signal(range(P))
        left = Signal(self.dim_bits + 1)          # lanes of the current tile still inside T

        with m.If(self.restart):
            m.d.sync += [tile_base.eq(0), kpart.eq(0), kmod.eq(0), left.eq(self.size)]
        with m.Elif(self.next_tile):
            m.d.sync += [tile_base.eq(tile_base + self.tstep), kpart.eq(0), kmod.eq(0),
                         left.eq(left - P)]
        with m.Elif(self.restart_k):
            m.d.sync += [kpart.eq(0), kmod.eq(0)]
        with m.Elif(self.advance_k):
            if P == 1:
                m.d.sync += kpart.eq(kpart + self.kstep)
            else:
                with m.If(kmod == P - 1):
                    m.d.sync += [kmod.eq(0), kpart.eq(kpart + self.kstep)]
                with m.Else():
                    m.d.sync += kmod.eq(kmod + 1)

        hi = (tile_base + kpart)[:self.addr_bits - self.lo_bits]
        for b in range(P):
            lo = Signal(self.lo_bits, name=f"lo{b}")
            if P > 1:
                with m.If(self.strided):
                    m.d.comb += lo.eq(kmod)
                with m.Else():
                    with m.Switch(kmod):
                        for r in range(P):
                            with m.Case(r):
                                m.d.comb += lo.eq((b - r) % P)
            m.d.comb += self.r_addr[b].eq(Cat(lo, hi))
        m.d.comb += self.r_rot.eq(kmod)
        for i in range(P):
            m.d.comb += self.r_mask[i].eq(left > i)
        return m


class LoadWriter(wiring.Component):
    """Places the elements of a stored ``R x C`` matrix, arriving in row-major order, in the skewed
    layout of :mod:`hw.gemm.buffer`: element ``(r, c)`` goes to bank ``(r + c) mod P`` at
    ``((r // P) * cb + c // P) * P2 + c mod P``.

    Members
    -------
    rows, cols : In(dim_bits)
        ``R`` and ``C`` (static during a load, and in the cycle before ``start``: ``R - 1`` and
        ``C - 1`` are registered, so no subtractor sits in front of the end-of-row compare).
    cb : In(addr_bits)
        ``ceil(C / P)`` (static during a load).
    start : In(1)
        Back to element ``(0, 0)``.
    step : In(1)
        The current element was written; go on to the next.
    bank, addr : Out
        Where the current element goes.
    last : Out(1)
        The current element is the last of the matrix.
    """

    def __init__(self, lanes: int, *, addr_bits: int, dim_bits: int):
        self.lanes = fm.check_int("lanes", lanes, 1, 64)
        self.addr_bits = fm.check_int("addr_bits", addr_bits, 1, 32)
        self.dim_bits = fm.check_int("dim_bits", dim_bits, 1, 32)
        self.lo_bits = (pow2_ceil(self.lanes) - 1).bit_length()
        super().__init__({
            "rows": In(self.dim_bits),
            "cols": In(self.dim_bits),
            "cb": In(self.addr_bits),
            "start": In(1),
            "step": In(1),
            "bank": Out(range(self.lanes)),
            "addr": Out(self.addr_bits),
            "last": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        r = Signal(self.dim_bits)
        c = Signal(self.dim_bits)
        rm = Signal(range(P))
        cm = Signal(range(P))
        rowbase = Signal(self.addr_bits)
        cblk = Signal(self.addr_bits)
        # named explicitly: tuple unpacking leaves Amaranth no name to infer ($signal breaks VCD readers)
        rows_m1, rows_m2 = Signal(self.dim_bits, name="rows_m1"), Signal(self.dim_bits, name="rows_m2")
        cols_m1, cols_m2 = Signal(self.dim_bits, name="cols_m1"), Signal(self.dim_bits, name="cols_m2")
        m.d.sync += [rows_m1.eq(self.rows - 1), cols_m1.eq(self.cols - 1),
                     rows_m2.eq(self.rows - 2), cols_m2.eq(self.cols - 2)]
        # `c == cols_m1` and `r == rows_m1` as flags set a step ahead: the end-of-row decision then
        # drives the row registers' enables from flip-flops, not from a 16-bit compare
        c_end = Signal()
        r_end = Signal()

        with m.If(self.start):
            m.d.sync += [r.eq(0), c.eq(0), rm.eq(0), cm.eq(0), rowbase.eq(0), cblk.eq(0),
                         c_end.eq(cols_m1 == 0), r_end.eq(rows_m1 == 0)]
        with m.Elif(self.step):
            with m.If(c_end):
                m.d.sync += [c.eq(0), cm.eq(0), cblk.eq(0), r.eq(r + 1),
                             c_end.eq(cols_m1 == 0), r_end.eq(r == rows_m2)]
                with m.If(rm == P - 1):
                    m.d.sync += [rm.eq(0), rowbase.eq(rowbase + self.cb)]
                with m.Else():
                    m.d.sync += rm.eq(rm + 1)
            with m.Else():
                m.d.sync += [c.eq(c + 1), c_end.eq(c == cols_m2)]
                with m.If(cm == P - 1):
                    m.d.sync += [cm.eq(0), cblk.eq(cblk + 1)]
                with m.Else():
                    m.d.sync += cm.eq(cm + 1)

        total = rm + cm
        m.d.comb += [
            self.addr.eq(Cat(cm, (rowbase + cblk)[:self.addr_bits - self.lo_bits])),
            self.last.eq(r_end & c_end),
        ]
        if P & (P - 1) == 0:
            m.d.comb += self.bank.eq(total)        # wraps modulo P by truncation
        else:
            with m.If(total >= P):
                m.d.comb += self.bank.eq(total - P)
            with m.Else():
                m.d.comb += self.bank.eq(total)
        return m
