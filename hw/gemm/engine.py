"""GemmEngine: operand buffers, tiling controller, result buffer and cycle counter around the array."""

from __future__ import annotations

import enum

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from . import formats as fm
from .array import MAX_SIDE, SystolicArray
from .pe import ProcessingElement
from .buffer import NO_RW_CHECK, READ_LATENCY, WRITE_LATENCY, OperandBuffer, buffer_words, ceil_div_const, pow2_ceil
from .tiling import LoadWriter, TileReader

__all__ = ["GemmEngine", "Op", "command_layout", "CHECK_LATENCY"]

#: Cycles from the cycle a command is accepted on ``cmd`` to the first cycle in which ``error``
#: describes it (the checks: derive, size, verify, check). The link decoder waits exactly this long.
CHECK_LATENCY = 5

#: Beats the feed FIFO between the operand buffers and the array holds (its output register and 16
#: distributed-RAM words). A beat is counted from its issue to the array taking it (7 cycles at full
#: rate) and a new one is issued only while at most ``FEED_DEPTH - 3`` are counted, so one beat per
#: cycle is kept with room to spare.
FEED_DEPTH = 17


class Op(enum.IntEnum):
    """Command opcodes of :class:`GemmEngine`."""
    LOAD_A = 0      #: store the A matrix (``a_in`` elements, row-major in its stored shape)
    LOAD_B = 1      #: store the B matrix (``b_in`` operands, row-major in its stored shape)
    GEMM = 2        #: ``C = op(A) @ op(B)`` (or ``C += ...``)
    READ_C = 3      #: stream ``C`` (or ``C^T``) out on ``c_out``, row-major
    LOAD_C = 4      #: store ``C`` (``c_in`` values, row-major), to accumulate onto


def command_layout(dim_bits: int) -> data.StructLayout:
    """The command payload. ``m, k, n`` are the GEMM's dimensions: ``op(A)`` is ``m x k``, ``op(B)``
    is ``k x n``, ``C`` is ``m x n``; ``trans_a`` means A is stored ``k x m`` (``op(A) = A^T``),
    ``trans_b`` that B is stored ``n x k``. LOAD_A reads ``m, k, trans_a``; LOAD_B ``k, n, trans_b``;
    READ_C ``m, n`` and ``trans_c`` (emit ``C^T``); LOAD_C ``m, n``; GEMM all of them and
    ``accumulate``."""
    return data.StructLayout({
        "op": unsigned(3),
        "m": unsigned(dim_bits),
        "k": unsigned(dim_bits),
        "n": unsigned(dim_bits),
        "trans_a": 1,
        "trans_b": 1,
        "trans_c": 1,
        "accumulate": 1,
    })


class GemmEngine(wiring.Component):
    """A complete INT4 GEMM unit: ``C = op(A) @ op(B)`` from on-chip buffers, any size that fits.

    The host (or the board's command decoder) writes A and B into block-RAM buffers in their own
    row-major order, issues GEMM, and reads C back. ``op(A)`` may be ``A`` or ``A^T`` and ``op(B)``
    ``B`` or ``B^T`` without moving data (the buffers' skewed layout, :mod:`hw.gemm.buffer`, reads rows
    and columns equally fast), and READ_C may emit ``C^T``; so the three training GEMMs
    ``F = X W^T``, ``dX = G W`` (as ``dX^T = W^T G^T``, with the gradient on the B side) and
    ``dW = G^T X`` (as ``dW^T = X^T G``) all run on the buffers as written.

    The tiling controller walks ``ceil(m/rows) x ceil(n/cols)`` output tiles (rows of tiles outer),
    streaming ``k`` beats per tile into the :class:`~hw.gemm.array.SystolicArray` back to back; a
    tile's results drain into the C buffer while the next tile computes. With ``accumulate`` the
    results are added to the C already in the buffer (a read-modify-write in the drain), which is how
    a driver splits a reduction longer than ``k_max``.

    Every command is checked before it runs: zero dimensions, ``k > k_max``, a matrix larger than its
    buffer, or a B operand outside the configured formats (detected while loading) make the command
    a no-op that raises ``error``. A rejected LOAD still consumes its elements so the streams stay
    aligned; a rejected GEMM leaves C untouched. ``error`` describes the most recent command.

    Parameters
    ----------
    rows, cols : int
        Array size (``1..64`` each).
    k_max : int
        Longest reduction of one GEMM command; sets the accumulator width. ``1..2**dim_bits - 1``.
    formats : collection of str
        B formats (:data:`hw.gemm.formats.B_FORMATS`).
    acc_width : int or None
        Accumulator bits (``None``: the minimum for ``k_max`` and ``formats``).
    a_depth, b_depth : int
        Words per bank of the A (``rows`` banks of INT4) and B (``cols`` banks of operands) buffers.
        A stored ``R x C`` matrix needs ``ceil(R/P) * ceil(C/P) * P2`` words per bank
        (:func:`hw.gemm.buffer.buffer_words`).
    c_depth : int
        Words of the C buffer, one word per ``cols`` results: ``C`` needs ``m * ceil(n/cols)`` words.
    dim_bits : int
        Width of the dimension fields of a command (``4..20``).

    Members
    -------
    cmd : In(stream.Signature(command_layout(dim_bits)))
        Commands (:class:`Op`); one is accepted whenever the engine is idle.
    a_in : In(stream.Signature(signed(4)))
        A elements for LOAD_A.
    b_in : In(stream.Signature(operand_layout(formats)))
        B operands ``(m, s)`` for LOAD_B.
    c_in : In(stream.Signature(signed(acc_width)))
        C elements for LOAD_C.
    c_out : Out(stream.Signature(signed(acc_width)))
        C elements for READ_C.
    busy : Out(1)
        A command is executing.
    error : Out(1)
        The most recent command was rejected.
    cycles : Out(32)
        Clock cycles the most recent GEMM kept the engine busy: from the cycle its command was
        accepted to the cycle before the engine accepts the next command, inclusive.
    hazard : Out(1)
        Verification only, never high: a block RAM read meets a write to the same buffer in one
        cycle (C: any read of the word being written, used or not; A/B: any write requested or
        still in the buffer's write registers while a beat is read).
        The buffers are marked ``no_rw_check`` (:data:`NO_RW_CHECK`), so synthesis builds them
        without read-during-write logic; the simulation tests assert this output stays low, which
        is what makes that legal. The top level leaves it unconnected and synthesis removes it.

    Latency
    -------
    A GEMM of ``T = ceil(m/rows) * ceil(n/cols)`` tiles takes about
    ``T * max(k, rows) + cols + rows + L + 17`` cycles (``L`` the drain OR-tree depth; exactly
    ``T * k + rows + cols + L + 16`` when ``k >= rows``): the array latency and the drain of the last
    tile are paid once per GEMM, not per tile. Of the fixed part, 4 cycles are the command checks
    (derive, size, verify, check; ``error`` describes a command :data:`CHECK_LATENCY` cycles after
    its accept), 1 the tile readers' event register, 3 the operand buffer read, 2 the feed FIFO
    in front of the array (:data:`FEED_DEPTH`), 1 the array's edge register, 2 the C
    read-modify-write. READ_C: an element
    leaves 3 cycles after its read is issued (block RAM, C word register, lane register), through
    a one-element skid buffer so that ``c_out.ready`` drives no pipeline enable; the engine stays
    busy 1 cycle after the last element leaves (its empty test is registered).

    Throughput
    ----------
    One ``rows x cols`` multiply-accumulate beat per cycle while ``k >= rows``; LOAD takes one element
    per cycle and READ_C emits one per cycle.
    """

    def __init__(self, rows: int, cols: int, *, k_max: int = 1024, formats=fm.DEFAULT_FORMATS,
                 acc_width: int | None = None, a_depth: int = 4096, b_depth: int = 4096,
                 c_depth: int = 1024, dim_bits: int = 16, or_fan_in: int = 6):
        # Validate everything before building anything.
        self.dim_bits = fm.check_int("dim_bits", dim_bits, 4, 20)
        self.rows = fm.check_int("rows", rows, 1, MAX_SIDE)
        self.cols = fm.check_int("cols", cols, 1, MAX_SIDE)
        k_max, self.formats, self.acc_width = ProcessingElement.resolve_config(k_max, formats, acc_width)
        self.k_max = fm.check_int("k_max", k_max, 1, 2 ** self.dim_bits - 1)
        self.a_depth = fm.check_int("a_depth", a_depth, pow2_ceil(self.rows), 2 ** 20)
        self.b_depth = fm.check_int("b_depth", b_depth, pow2_ceil(self.cols), 2 ** 20)
        self.c_depth = fm.check_int("c_depth", c_depth, 1, 2 ** 20)
        self.array = SystolicArray(self.rows, self.cols, k_max=self.k_max, formats=self.formats,
                                   acc_width=self.acc_width, or_fan_in=or_fan_in)
        self.operand = self.array.operand
        self.cmd_layout = command_layout(self.dim_bits)
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "a_in": In(stream.Signature(signed(4))),
            "b_in": In(stream.Signature(self.operand)),
            "c_in": In(stream.Signature(signed(self.acc_width))),
            "c_out": Out(stream.Signature(signed(self.acc_width))),
            "busy": Out(1),
            "error": Out(1),
            "cycles": Out(32),
            "hazard": Out(1),
        })

    # -- capacity, in the same terms the driver uses -------------------------------------------------
    def a_words(self, m: int, k: int) -> int:
        """Words per A bank that an ``m x k`` ``op(A)`` occupies (either orientation)."""
        return buffer_words(m, k, self.rows)

    def b_words(self, k: int, n: int) -> int:
        """Words per B bank that a ``k x n`` ``op(B)`` occupies (either orientation)."""
        return buffer_words(k, n, self.cols)

    def c_words(self, m: int, n: int) -> int:
        """C buffer words that an ``m x n`` result occupies."""
        return m * -(-n // self.cols)

    def elaborate(self, platform):
        m = Module()
        rows, cols, W = self.rows, self.cols, self.acc_width
        db = self.dim_bits
        m.submodules.array = array = self.array
        m.submodules.abuf = abuf = OperandBuffer(rows, self.a_depth, signed(4))
        m.submodules.bbuf = bbuf = OperandBuffer(cols, self.b_depth, self.operand)
        m.submodules.ard = ard = TileReader(rows, addr_bits=abuf.addr_bits, dim_bits=db)
        m.submodules.brd = brd = TileReader(cols, addr_bits=bbuf.addr_bits, dim_bits=db)
        m.submodules.awr = awr = LoadWriter(rows, addr_bits=abuf.addr_bits, dim_bits=db)
        m.submodules.bwr = bwr = LoadWriter(cols, addr_bits=bbuf.addr_bits, dim_bits=db)
        c_word = data.ArrayLayout(signed(W), cols)
        m.submodules.cmem = cmem = memory.Memory(shape=unsigned(c_word.size), depth=self.c_depth, init=[],
                                                attrs=NO_RW_CHECK)
        c_wr = cmem.write_port(granularity=W)
        c_rd = cmem.read_port()
        c_addr_bits = len(c_rd.addr)

        # ---- the command and what follows from it (registered, so the checks are off the path) ----
        cmd = Signal(self.cmd_layout)
        mt = Signal(db)        # ceil(m / rows): A tiles, and A's block count along m
        nt = Signal(db)        # ceil(n / cols)
        kba = Signal(db)       # ceil(k / rows)
        kbb = Signal(db)       # ceil(k / cols)
        ok = Signal()
        ok_r = Signal()        # `ok`, registered in state VERIFY
        b_poison = Signal()    # a LOAD_B saw an operand outside the formats
        # last-index values, registered (static while a command runs), so the loop-end compares
        # are plain equalities with no subtractor in front
        # named explicitly: tuple unpacking leaves Amaranth no name to infer ($signal breaks VCD readers)
        m_m1, n_m1, k_m1 = Signal(db, name="m_m1"), Signal(db, name="n_m1"), Signal(db, name="k_m1")
        mt_m1, nt_m1 = Signal(db, name="mt_m1"), Signal(db, name="nt_m1")
        m.d.sync += [
            mt.eq(ceil_div_const(cmd.m, rows, db)), nt.eq(ceil_div_const(cmd.n, cols, db)),
            kba.eq(ceil_div_const(cmd.k, rows, db)), kbb.eq(ceil_div_const(cmd.k, cols, db)),
            m_m1.eq(cmd.m - 1), n_m1.eq(cmd.n - 1), k_m1.eq(cmd.k - 1),
            mt_m1.eq(mt - 1), nt_m1.eq(nt - 1),
        ]
        # the buffer demands are registered (state SIZE) before they are compared (state CHECK)
        need_a = Signal(2 * db + pow2_ceil(rows).bit_length())
        need_b = Signal(2 * db + pow2_ceil(cols).bit_length())
        need_c = Signal(2 * db)
        has_m, has_k, has_n = cmd.m != 0, cmd.k != 0, cmd.n != 0
        fits_a = need_a <= self.a_depth
        fits_b = need_b <= self.b_depth
        fits_c = need_c <= self.c_depth
        with m.Switch(cmd.op):
            with m.Case(Op.LOAD_A):
                m.d.comb += ok.eq(has_m & has_k & fits_a)
            with m.Case(Op.LOAD_B):
                m.d.comb += ok.eq(has_k & has_n & fits_b)
            with m.Case(Op.GEMM):
                m.d.comb += ok.eq(has_m & has_k & has_n & (cmd.k <= self.k_max) & fits_a & fits_b
                                  & fits_c & ~b_poison)
            with m.Case(Op.READ_C, Op.LOAD_C):
                m.d.comb += ok.eq(has_m & has_n & fits_c)

        # ---- operand loading ------------------------------------------------------------------
        for wr, buf, trans, dims, cb in (
                (awr, abuf, cmd.trans_a, (cmd.m, cmd.k), (mt, kba)),
                (bwr, bbuf, cmd.trans_b, (cmd.k, cmd.n), (kbb, nt))):
            # The stored matrix is op(X) or its transpose; elements arrive in its row-major order.
            m.d.comb += [
                wr.rows.eq(Mux(trans, dims[1], dims[0])),
                wr.cols.eq(Mux(trans, dims[0], dims[1])),
                wr.cb.eq(Mux(trans, cb[0], cb[1])),
                buf.w_bank.eq(wr.bank), buf.w_addr.eq(wr.addr),
            ]
        m.d.comb += [abuf.w_data.eq(self.a_in.payload), bbuf.w_data.eq(self.b_in.payload)]
        b_ok = Signal()
        b_bad = Signal()       # the previous cycle's LOAD_B element was outside the formats
        m.d.comb += b_ok.eq(0)
        for f in self.formats:
            m_min, m_max, s_max, _ = fm.format_bounds(f)
            with m.If((self.b_in.payload.m >= m_min) & (self.b_in.payload.m <= m_max)
                      & (self.b_in.payload.s <= s_max)):
                m.d.comb += b_ok.eq(1)

        # ---- GEMM issue: walk tiles (m outer, n inner) and k, read both buffers, feed the array ----
        # The read pipeline never stalls: a beat is issued only while a slot is reserved for it in
        # the feed FIFO in front of the array, so the issue decision is two flip-flops (`issuing`,
        # `room`) and neither the array's stall nor a FIFO flag reaches the tile counters, the
        # readers or the block RAM enables (on a 16 x 16 ECP5 build that stall's fan-out, through
        # the issue loop into the tile readers, was the critical path).
        k = Signal(db)
        tm = Signal(db)
        tn = Signal(db)
        # The loop-end conditions `k == k_m1`, `tn == nt_m1`, `tm == mt_m1` are flags, each set one
        # step ahead (when the counter takes the value before its last), so the issue decision
        # starts from flip-flops: a 16-bit compare in front of it made the tile readers' enables the
        # critical path.
        k_end, n_end, m_end = Signal(name="k_end"), Signal(name="n_end"), Signal(name="m_end")
        k_m2, nt_m2, mt_m2 = Signal(db, name="k_m2"), Signal(db, name="nt_m2"), Signal(db, name="mt_m2")
        k_one, nt_one, mt_one = Signal(name="k_one"), Signal(name="nt_one"), Signal(name="mt_one")
        m.d.sync += [k_m2.eq(k_m1 - 1), nt_m2.eq(nt_m1 - 1), mt_m2.eq(mt_m1 - 1),
                     k_one.eq(k_m1 == 0), nt_one.eq(nt_m1 == 0), mt_one.eq(mt_m1 == 0)]
        issuing = Signal()
        advance = Signal()     # issue the next beat this cycle
        room = Signal()        # a feed FIFO slot is free for a beat issued this cycle
        occ = Signal(range(FEED_DEPTH + 1))   # beats issued and not yet taken by the array
        beat_layout = data.StructLayout({"a": array.a_layout, "b": array.b_layout})
        m.submodules.feed = feed = SyncFIFOBuffered(width=beat_layout.size, depth=FEED_DEPTH)
        fifo_out = data.View(beat_layout, feed.r_data)
        popped = Signal()
        m.d.comb += [
            advance.eq(issuing & room),
            feed.r_en.eq(array.a.ready),
            popped.eq(feed.r_rdy & array.a.ready),
            array.a.valid.eq(feed.r_rdy), array.b.valid.eq(feed.r_rdy),
            array.a.payload.eq(fifo_out.a),
            # The FIFO's output register holds no defined value before its first read, and the array
            # registers B unconditionally (it zeroes A in bubbles): B is zeroed too, so a simulator's
            # X never reaches a product (on the device any value times the zero A is zero).
            array.b.payload.eq(Mux(feed.r_rdy, fifo_out.b, 0)),
        ]
        m.d.sync += occ.eq(occ + advance - popped)
        # `occ` grows by one a cycle at most, so `occ <= FEED_DEPTH - 3` registered now still holds
        # `occ <= FEED_DEPTH - 2` when `room` is used, and the beat then issued leaves the FIFO a free
        # slot: it never overflows, and `room` is a flip-flop (a beat is counted for about 7 cycles,
        # issue to array, so at full rate `occ` stays far below the margin).
        m.d.sync += room.eq(occ <= FEED_DEPTH - 3)
        # The tile readers' events are registered: a reader updates one cycle after the issue loop
        # decided, and its address is read (the operand buffers read every cycle) in that cycle, so the
        # issue decision drives flip-flops only and the readers' own logic starts from flip-flops.
        ev_a = {e: Signal(name=f"ev_a_{e}") for e in ("restart", "restart_k", "next_tile", "advance_k")}
        ev_b = {e: Signal(name=f"ev_b_{e}") for e in ("restart", "restart_k", "next_tile", "advance_k")}
        for ev, rd in ((ev_a, ard), (ev_b, brd)):
            m.d.sync += [getattr(rd, e).eq(sig) for e, sig in ev.items()]
        # the beat's valid and `last` travel with it: the event register (the read is issued), then
        # the buffers' READ_LATENCY stages
        r_valid, r_last = Signal(name="r_valid"), Signal(name="r_last")
        m.d.sync += [r_valid.eq(advance), r_last.eq(k_end)]
        f_valid, f_last = r_valid, r_last
        for j in range(READ_LATENCY):
            v, v_last = Signal(name=f"v{j + 1}"), Signal(name=f"v{j + 1}_last")
            m.d.sync += [v.eq(f_valid), v_last.eq(f_last)]
            f_valid, f_last = v, v_last
        beat_in = data.View(beat_layout, feed.w_data)
        m.d.comb += [
            ard.strided.eq(~cmd.trans_a), ard.tstep.eq(Mux(cmd.trans_a, 1, kba)),
            ard.kstep.eq(Mux(cmd.trans_a, mt, 1)), ard.size.eq(cmd.m),
            brd.strided.eq(cmd.trans_b), brd.tstep.eq(Mux(cmd.trans_b, kbb, 1)),
            brd.kstep.eq(Mux(cmd.trans_b, 1, nt)), brd.size.eq(cmd.n),
            abuf.r_addr.eq(ard.r_addr), abuf.r_rot.eq(ard.r_rot), abuf.r_mask.eq(ard.r_mask),
            bbuf.r_addr.eq(brd.r_addr), bbuf.r_rot.eq(brd.r_rot), bbuf.r_mask.eq(brd.r_mask),
            feed.w_en.eq(f_valid),
            beat_in.a.data.eq(abuf.r_data), beat_in.a.last.eq(f_last), beat_in.b.eq(bbuf.r_data),
        ]
        with m.If(advance):
            with m.If(k_end):
                m.d.sync += [k.eq(0), k_end.eq(k_one)]
                with m.If(n_end):
                    m.d.sync += [tn.eq(0), n_end.eq(nt_one)]
                    m.d.comb += ev_b["restart"].eq(1)
                    with m.If(m_end):
                        m.d.sync += issuing.eq(0)
                    with m.Else():
                        m.d.sync += [tm.eq(tm + 1), m_end.eq(tm == mt_m2)]
                        m.d.comb += ev_a["next_tile"].eq(1)
                with m.Else():
                    m.d.sync += [tn.eq(tn + 1), n_end.eq(tn == nt_m2)]
                    m.d.comb += [ev_b["next_tile"].eq(1), ev_a["restart_k"].eq(1)]
            with m.Else():
                m.d.sync += [k.eq(k + 1), k_end.eq(k == k_m2)]
                m.d.comb += [ev_a["advance_k"].eq(1), ev_b["advance_k"].eq(1)]

        # ---- drain: result rows into the C buffer (read-modify-write when accumulating) ----
        # The result stream's valid comes from the far side of the array, so it only enables
        # flip-flops: each branch below is taken on a flag and each next value is a register, both
        # set one beat ahead. (On a 16 x 16 ECP5 build, that valid's route plus five LUT levels of
        # compares and adders into `c_row` was the critical path.)
        d_row = Signal(range(rows))
        d_tn = Signal(db)
        d_tm = Signal(db)
        d_left = Signal(db + 1)            # rows of the current tile row still inside m
        d_row_last = Signal()              # d_row == rows - 1
        d_tn_last = Signal()               # d_tn == nt_m1
        d_tm_last = Signal()               # d_tm == mt_m1
        d_in = Signal()                    # d_row < d_left: the row lies inside m
        c_row = Signal(c_addr_bits + 1)    # C word of the current result row
        c_row_nt = Signal(c_addr_bits + 1)     # c_row + nt: the next row's word
        c_tile_1 = Signal(c_addr_bits + 1)     # the next tile's row 0 word (this tile's + 1)
        c_band_n = Signal(c_addr_bits + 1)     # the next tile row's row 0 word (this one's + nt * rows)
        band_step = Signal(c_addr_bits + 1)    # nt * rows, registered with the command
        m.d.sync += band_step.eq(nt * rows)
        d_final = Signal()
        w_valid = Signal()
        w_addr = Signal(c_addr_bits)
        w_new = Signal(c_word)
        beat = array.c.valid
        # the address and data are taken every cycle (`w_valid` says when they count), so the beat
        # does not fan out to the result word's flip-flop enables
        m.d.sync += [w_valid.eq(beat & d_in), w_addr.eq(c_row), w_new.eq(array.c.payload)]
        with m.If(beat):
            with m.If(d_row_last):
                m.d.sync += [d_row.eq(0), d_row_last.eq(rows == 1)]
                with m.If(d_tn_last):
                    m.d.sync += [d_tn.eq(0), d_tn_last.eq(nt_one),
                                 d_tm.eq(d_tm + 1), d_tm_last.eq(d_tm == mt_m2),
                                 d_left.eq(d_left - rows), d_in.eq(d_left > rows),
                                 c_row.eq(c_band_n), c_row_nt.eq(c_band_n + nt),
                                 c_tile_1.eq(c_band_n + 1), c_band_n.eq(c_band_n + band_step)]
                    with m.If(d_tm_last):
                        m.d.sync += d_final.eq(1)
                with m.Else():
                    m.d.sync += [d_tn.eq(d_tn + 1), d_tn_last.eq(d_tn == nt_m2), d_in.eq(d_left != 0),
                                 c_row.eq(c_tile_1), c_row_nt.eq(c_tile_1 + nt), c_tile_1.eq(c_tile_1 + 1)]
            with m.Else():
                m.d.sync += [d_row.eq(d_row + 1), d_row_last.eq(d_row == rows - 2 if rows > 1 else 1),
                             d_in.eq(d_row + 1 < d_left),
                             c_row.eq(c_row_nt), c_row_nt.eq(c_row_nt + nt)]
        # one more register stage before the write, so the C block RAM's clock-to-out does not meet
        # the accumulate adder in one cycle (a C word is written once per GEMM: no hazard)
        w2_valid = Signal()
        w2_addr = Signal(c_addr_bits)
        w2_new = Signal(c_word)
        old = Signal(c_word)
        m.d.sync += [w2_valid.eq(w_valid), w2_addr.eq(w_addr), w2_new.eq(w_new), old.eq(c_rd.data)]
        total = Signal(c_word)
        for j in range(cols):
            m.d.comb += total[j].eq(Mux(cmd.accumulate, old[j] + w2_new[j], w2_new[j]))
        # ---- LOAD_C: one element per cycle into its lane of the C word ----
        l_m = Signal(db)
        l_n = Signal(db)
        l_lane = Signal(range(cols))
        l_nb = Signal(c_addr_bits + 1)
        l_rowaddr = Signal(c_addr_bits + 1)
        l_take = Signal()
        l_last = Signal()
        m.d.comb += l_last.eq((l_m == m_m1) & (l_n == n_m1))
        with m.If(l_take):
            with m.If(l_n == n_m1):
                m.d.sync += [l_n.eq(0), l_lane.eq(0), l_nb.eq(0), l_m.eq(l_m + 1),
                             l_rowaddr.eq(l_rowaddr + nt)]
            with m.Else():
                m.d.sync += l_n.eq(l_n + 1)
                with m.If(l_lane == cols - 1):
                    m.d.sync += [l_lane.eq(0), l_nb.eq(l_nb + 1)]
                with m.Else():
                    m.d.sync += l_lane.eq(l_lane + 1)
        l_word = Signal(c_word)
        for j in range(cols):
            m.d.comb += l_word[j].eq(self.c_in.payload)
        with m.If(l_take):
            m.d.comb += [c_wr.addr.eq(l_rowaddr + l_nb), c_wr.data.eq(l_word),
                         c_wr.en.eq((Const(1, cols) << l_lane)[:cols])]
        with m.Else():
            m.d.comb += [c_wr.addr.eq(w2_addr), c_wr.data.eq(total), c_wr.en.eq(w2_valid.replicate(cols))]

        # ---- READ_C: one element per cycle, row-major C or C^T ----
        # Output pipeline, moved as one (``o_adv``): the block RAM read (o_v1), a register of the raw
        # C word (o_v2), then the selected lane in the output register (o_valid).
        reading = Signal()
        o_v1 = Signal()
        o_v2 = Signal()
        o_valid = Signal()
        o_adv = Signal()
        lane1 = Signal(range(cols))
        lane2 = Signal(range(cols))
        word2 = Signal(c_word)
        o_data = Signal(signed(W))
        r_m = Signal(db)
        r_n = Signal(db)
        r_lane = Signal(range(cols))
        r_nb = Signal(c_addr_bits + 1)
        r_rowaddr = Signal(c_addr_bits + 1)
        # the C word of the element being read (`r_rowaddr + r_nb`), kept as a register so no adder
        # sits in front of the block RAM address (yosys adds a read-first collision compare there)
        r_word = Signal(c_addr_bits + 1)
        r_adv = Signal()
        # A one-element skid buffer behind the output register: the pipeline moves while it is
        # empty, so ``c_out.ready`` (the consumer's logic) reaches only the output registers.
        o_skid_v = Signal()
        o_skid = Signal(signed(W))
        m.d.comb += [o_adv.eq(~o_skid_v), r_adv.eq(reading & o_adv)]
        with m.If(o_adv):
            m.d.sync += [o_v1.eq(r_adv), lane1.eq(r_lane), o_v2.eq(o_v1), lane2.eq(lane1),
                         word2.eq(c_rd.data)]
        o_push = o_adv & o_v2
        with m.If(~o_valid | self.c_out.ready):
            m.d.sync += [o_valid.eq(o_skid_v | o_push), o_skid_v.eq(0),
                         o_data.eq(Mux(o_skid_v, o_skid, word2[lane2]))]
        with m.Elif(o_push):
            m.d.sync += [o_skid_v.eq(1), o_skid.eq(word2[lane2])]

        lane_wrap = r_lane == cols - 1

        def step_n(word_base):
            """Next column: the next lane, or lane 0 of the next C word (``r_word`` from ``word_base``,
            the word of the current lane 0 ... cols-1 group)."""
            m.d.sync += r_n.eq(r_n + 1)
            with m.If(lane_wrap):
                m.d.sync += [r_lane.eq(0), r_nb.eq(r_nb + 1), r_word.eq(word_base + 1)]
            with m.Else():
                m.d.sync += [r_lane.eq(r_lane + 1), r_word.eq(word_base)]

        m_last = r_m == m_m1
        n_last = r_n == n_m1
        with m.If(r_adv):
            with m.If(cmd.trans_c):
                with m.If(m_last):
                    m.d.sync += [r_m.eq(0), r_rowaddr.eq(0)]
                    with m.If(n_last):
                        m.d.sync += reading.eq(0)
                    with m.Else():
                        step_n(r_nb)                    # back to row 0
                with m.Else():
                    m.d.sync += [r_m.eq(r_m + 1), r_rowaddr.eq(r_rowaddr + nt), r_word.eq(r_word + nt)]
            with m.Else():
                with m.If(n_last):
                    m.d.sync += [r_n.eq(0), r_lane.eq(0), r_nb.eq(0)]
                    with m.If(m_last):
                        m.d.sync += reading.eq(0)
                    with m.Else():
                        m.d.sync += [r_m.eq(r_m + 1), r_rowaddr.eq(r_rowaddr + nt),
                                     r_word.eq(r_rowaddr + nt)]
                with m.Else():
                    step_n(r_word)
        m.d.comb += [
            self.c_out.valid.eq(o_valid),
            self.c_out.payload.eq(o_data),
        ]

        # READ's exit and the C read port's owner are flip-flops, not the five-way test of the
        # output pipeline (through the FSM's state enable, that test was a critical path): the
        # pipeline, once empty, stays empty until the next READ_C, so a test one cycle old is exact.
        out_empty = Signal()       # the READ_C output pipeline was empty in the previous cycle
        m.d.sync += out_empty.eq(~reading & ~o_v1 & ~o_v2 & ~o_valid & ~o_skid_v)
        c_port_read = Signal()     # the C read port serves READ_C (state READ), else the drain
        with m.If(c_port_read):
            m.d.comb += [c_rd.addr.eq(r_word), c_rd.en.eq(o_adv)]
        with m.Else():
            m.d.comb += [c_rd.addr.eq(c_row), c_rd.en.eq(beat)]

        # ---- command sequencing ----
        counting = Signal()
        with m.If(counting):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        load_wr = Signal()     # the accepted LOAD passed its checks (else its data is discarded)
        m.d.sync += b_bad.eq(0)    # set only by LOAD_B below
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += cmd.eq(self.cmd.payload)
                    with m.If(self.cmd.payload.op == Op.GEMM):
                        m.d.sync += [self.cycles.eq(1), counting.eq(1)]
                    m.next = "DERIVE"
            with m.State("DERIVE"):
                # mt/nt/kba/kbb are registered from `cmd` in this cycle.
                m.next = "SIZE"
            with m.State("SIZE"):
                # the buffer demands, registered
                m.d.sync += [need_a.eq(mt * kba * pow2_ceil(rows)), need_b.eq(kbb * nt * pow2_ceil(cols)),
                             need_c.eq(cmd.m * nt)]
                m.next = "VERIFY"
            with m.State("VERIFY"):
                # the verdict, registered: CHECK's fan-out (error, load_wr, the GEMM and READ_C
                # set-up) starts from one flip-flop, not from the compares
                m.d.sync += ok_r.eq(ok)
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += self.error.eq(~ok_r)
                with m.Switch(cmd.op):
                    with m.Case(Op.LOAD_A):
                        m.d.comb += awr.start.eq(1)
                        m.d.sync += load_wr.eq(ok_r)
                        m.next = "LOAD_A"
                        with m.If(~has_m | ~has_k):
                            m.next = "IDLE"
                    with m.Case(Op.LOAD_B):
                        m.d.comb += bwr.start.eq(1)
                        m.d.sync += [load_wr.eq(ok_r), b_poison.eq(0)]
                        m.next = "LOAD_B"
                        with m.If(~has_k | ~has_n):
                            m.next = "IDLE"
                    with m.Case(Op.GEMM):
                        with m.If(ok_r):
                            m.d.comb += [ev_a["restart"].eq(1), ev_b["restart"].eq(1)]
                            m.d.sync += [
                                issuing.eq(1), k.eq(0), tm.eq(0), tn.eq(0),
                                k_end.eq(k_one), n_end.eq(nt_one), m_end.eq(mt_one),
                                d_row.eq(0), d_tn.eq(0), d_tm.eq(0), d_left.eq(cmd.m),
                                d_row_last.eq(rows == 1), d_tn_last.eq(nt_one), d_tm_last.eq(mt_one),
                                d_in.eq(has_m), c_row.eq(0), c_row_nt.eq(nt), c_tile_1.eq(1),
                                c_band_n.eq(band_step),
                                d_final.eq(0),
                            ]
                            m.next = "GEMM"
                        with m.Else():
                            m.d.sync += counting.eq(0)
                            m.next = "IDLE"
                    with m.Case(Op.LOAD_C):
                        m.d.sync += [l_m.eq(0), l_n.eq(0), l_lane.eq(0), l_nb.eq(0), l_rowaddr.eq(0),
                                     load_wr.eq(ok_r)]
                        m.next = "LOAD_C"
                        with m.If(~has_m | ~has_n):
                            m.next = "IDLE"
                    with m.Case(Op.READ_C):
                        with m.If(ok_r):
                            m.d.sync += [reading.eq(1), r_m.eq(0), r_n.eq(0), r_lane.eq(0),
                                         r_nb.eq(0), r_rowaddr.eq(0), r_word.eq(0),
                                         out_empty.eq(0), c_port_read.eq(1)]
                            m.next = "READ"
                        with m.Else():
                            m.next = "IDLE"
            with m.State("LOAD_A"):
                m.d.comb += [self.a_in.ready.eq(1), abuf.w_en.eq(self.a_in.valid & load_wr),
                             awr.step.eq(self.a_in.valid)]
                with m.If(self.a_in.valid & awr.last):
                    m.next = "IDLE"
            with m.State("LOAD_B"):
                m.d.comb += [self.b_in.ready.eq(1), bbuf.w_en.eq(self.b_in.valid & load_wr),
                             bwr.step.eq(self.b_in.valid)]
                m.d.sync += b_bad.eq(self.b_in.valid & ~b_ok)
                with m.If(self.b_in.valid & bwr.last):
                    m.next = "LOAD_B_END"
            with m.State("LOAD_B_END"):
                # busy one more cycle: the last element's registered check lands in `error` as the
                # engine goes idle, so `error` describes the LOAD_B when `busy` falls
                m.next = "IDLE"
            with m.State("LOAD_C"):
                m.d.comb += [self.c_in.ready.eq(1), l_take.eq(self.c_in.valid & load_wr)]
                with m.If(self.c_in.valid & ~load_wr):
                    # a rejected LOAD_C still walks its elements (l_take is off, so step here)
                    with m.If(l_n == n_m1):
                        m.d.sync += [l_n.eq(0), l_m.eq(l_m + 1)]
                    with m.Else():
                        m.d.sync += l_n.eq(l_n + 1)
                with m.If(self.c_in.valid & l_last):
                    m.next = "IDLE"
            with m.State("GEMM"):
                # Done once the last result row has been written.
                with m.If(d_final & ~w_valid & ~w2_valid):
                    m.d.sync += counting.eq(0)
                    m.next = "IDLE"
            with m.State("READ"):
                with m.If(out_empty):
                    m.d.sync += c_port_read.eq(0)
                    m.next = "IDLE"
        # The format check is registered (``b_bad``) and poisons one cycle later, so the operand's
        # source (a block RAM in the link decoder) drives one compare, not the error/poison enables.
        # Its command's CHECK is 3 cycles after the next accept at the earliest, so nothing is missed.
        with m.If(b_bad):
            m.d.sync += [b_poison.eq(1), self.error.eq(1)]
        m.d.comb += self.busy.eq(~self.cmd.ready)
        # the contract that lets the buffers go without read-during-write logic (see ``hazard``):
        # the C read port never reads the word being written, and the operand buffers are written
        # only by LOADs, never while a GEMM reads a beat
        # an operand buffer write taken this cycle or still in its write registers
        ab_write = abuf.w_en | bbuf.w_en
        ab_pending = ab_write
        for j in range(WRITE_LATENCY):
            stage = Signal(name=f"ab_write{j + 1}")
            m.d.sync += stage.eq(ab_pending)
            ab_write = ab_write | stage
            ab_pending = stage
        m.d.comb += self.hazard.eq(
            (c_rd.en & c_wr.en.any() & (c_rd.addr == c_wr.addr))
            | (ab_write & r_valid))
        return m
