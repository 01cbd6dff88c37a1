"""CommandDecoder: executes checked request frames (:mod:`hw.wire`) on the GEMM engine and the
quantizer units, and answers every one of them.

One frame at a time: the decoder takes a frame event from :class:`~hw.link.framer.FrameReceiver`,
reads its payload from the receiver's buffer, drives :class:`~hw.gemm.GemmEngine` (LOAD_A/LOAD_B/GEMM/
READ_C) or a quantizer unit, and sends exactly one response through
:class:`~hw.link.framer.FrameTransmitter`; the buffer is released (``buf_free``) only when it is idle
again.

Matrix loads span frames. ``WRITE`` with ``offset == 0`` issues the engine's LOAD command for the whole
stored matrix; later chunks must continue at the next element (``offset`` = elements so far), else
``BAD_STATE``. A new ``offset == 0`` load while one is incomplete first pads the old one with zeros
(so the engine's stream stays aligned); GEMM and READ during an incomplete load answer ``BAD_STATE``.

Narrow devices. With an engine whose ``dim_bits`` is below the wire's 16-bit dimension fields, a
WRITE, GEMM or READ naming a dimension of ``2**dim_bits`` or more is answered ``OUT_OF_RANGE`` (it
could not fit the buffers anyway), and the decoder's element counters are ``2 * dim_bits`` wide: a
device with small buffers pays for small counters only. Without quantizer units QUANT answers
``UNSUPPORTED`` and none of its datapath is built.

Retries. The decoder remembers the sequence number and CRC-32 of the last executed frame and its
answer. A frame with the same sequence number *and* CRC is a retry of it: ``WRITE`` and ``GEMM`` (the
operations with side effects) are not applied again, their stored answer is re-sent; HELLO, READ,
COUNTERS and QUANT have no side effects and are simply executed again.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import wire
from hw.gemm.engine import CHECK_LATENCY, Op as EngOp

from .framer import event_layout, response_layout

__all__ = ["CommandDecoder"]

_HDR_BYTES = 12          # the longest request header (WRITE)
SETTLE_CYCLES = 3        # header complete -> products -> check flags -> the verdict, each registered
_TBL = 32                # response register file (status + fields)


class CommandDecoder(wiring.Component):
    """Request frames -> engine commands, quantizer jobs and responses.

    Parameters
    ----------
    engine : hw.gemm.GemmEngine
        The engine it drives (its layouts and sizes; the caller adds it as a submodule).
    shiftq : hw.quant.ShiftQuantizer or None
        ``QUANT`` unit 0 (``lanes=1``, ``bits=4``, ``axis="row"``).
    luq : hw.quant.LogQuantizer or None
        ``QUANT`` unit 1 (``lanes=1``).
    hello : dict
        The :data:`hw.wire.HELLO_FIELDS` values this device reports.
    max_payload : int
        Request payload buffer bytes (the receiver's).

    Members
    -------
    frame : In(stream.Signature(event_layout))
        Frame events from the receiver.
    buf_free : Out(1)
        Idle: the receiver may store the next payload.
    r_addr : Out(range(max_payload)), r_data : In(8)
        The receiver's payload buffer.
    tx_start : Out(stream.Signature(response_layout)), tx : Out(stream.Signature(8))
        Responses, to the transmitter.
    cmd, a, b : Out(stream...), c : In(stream...)
        The engine's ``cmd``, ``a_in``, ``b_in`` and ``c_out`` streams.
    eng_busy, eng_error : In(1), eng_cycles : In(32)
        The engine's status.
    sq_*, lq_*
        The quantizer units' ``start``, ``cfg``, ``busy``, ``i``, ``info``, ``o`` (when built).
    busy : Out(1)
        A frame is being executed or answered.
    counters : Out(ArrayLayout(32, 7))
        :data:`hw.wire.COUNTER_FIELDS`, in order.

    Latency
    -------
    Every request waits ``SETTLE_CYCLES`` (3) after its header is read, while its checks and then
    the verdict on it are registered. The response header follows within a few cycles for
    HELLO/COUNTERS; WRITE answers after its elements are in the engine (3 cycles per B operand, 2 per A element: each buffer byte is
    registered before it is offered), GEMM after the engine finishes, READ streams C at 4 bytes per
    element, QUANT feeds one int16 element per 4 cycles and streams codes as pass 2 produces them.
    The engine's rejection of a LOAD or READ is read ``CHECK_LATENCY`` cycles after its command.

    Timing: what DISPATCH does is decided a cycle ahead (one flip-flop per outcome); the loop ends
    of READ and QUANT are registered a step ahead, so the state transitions start from flip-flops;
    the response table is a shift register, so the byte offered comes from its first entry, not
    from a 32-way selection; the ULX3S flow also recodes this FSM one-hot
    (:data:`hw.build.ONE_HOT_DECODER`).
    """

    def __init__(self, engine, *, shiftq=None, luq=None, hello: dict, max_payload: int):
        self.engine = engine
        self.shiftq = shiftq
        self.luq = luq
        self.max_payload = max_payload
        self.hello_bytes = wire.pack_hello(**hello)
        self.quant_max = hello["quant_max"]
        sig = {
            "frame": In(stream.Signature(event_layout)),
            "buf_free": Out(1),
            "r_addr": Out(range(max_payload)),
            "r_data": In(8),
            "tx_start": Out(stream.Signature(response_layout)),
            "tx": Out(stream.Signature(8)),
            "cmd": Out(stream.Signature(engine.cmd_layout)),
            "a": Out(stream.Signature(signed(4))),
            "b": Out(stream.Signature(engine.operand)),
            "c": In(stream.Signature(signed(engine.acc_width))),
            "eng_busy": In(1),
            "eng_error": In(1),
            "eng_cycles": In(32),
            "busy": Out(1),
            "counters": Out(data.ArrayLayout(32, len(wire.COUNTER_FIELDS))),
        }
        for pfx, unit in (("sq", shiftq), ("lq", luq)):
            if unit is None:
                continue
            if unit.lanes != 1:
                raise ValueError(f"CommandDecoder: quantizer units must have lanes=1, got {unit.lanes}")
            sig.update({
                f"{pfx}_start": Out(1),
                f"{pfx}_cfg": Out(unit.cfg_layout),
                f"{pfx}_busy": In(1),
                f"{pfx}_i": Out(stream.Signature(data.ArrayLayout(signed(unit.in_width), 1))),
                f"{pfx}_info": In(stream.Signature(unit.info_layout)),
                f"{pfx}_o": In(stream.Signature(unit.out_layout)),
            })
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        eng = self.engine
        db = eng.dim_bits
        cw = min(32, 2 * db)                  # element counts: at most (2**db - 1)**2
        has_units = self.shiftq is not None or self.luq is not None
        ev = Signal(event_layout)
        hdr = [Signal(8, name=f"hdr{j}") for j in range(_HDR_BYTES)]
        tbl = [Signal(8, name=f"tbl{j}") for j in range(_TBL)]
        hello = Array(Const(b, 8) for b in self.hello_bytes)

        def u16(j):
            return Cat(hdr[j], hdr[j + 1])

        shift = [tbl[j].eq(tbl[j + 1]) for j in range(_TBL - 1)]   # the next byte to tbl[0]

        def put(offset, value, nbytes):
            """Write ``value`` little-endian into the response table."""
            return [tbl[offset + j].eq(value[8 * j:8 * j + 8] if len(value) > 8 * j else 0)
                    for j in range(nbytes)]

        # ---- counters ----
        cyc, busy_c, stall_c, ok_c, bad_c, dup_c, gemm_c = (Signal(32, name=n) for n in (
            "cnt_cycles", "cnt_busy", "cnt_stalled", "cnt_ok", "cnt_bad", "cnt_dup", "cnt_gemm"))
        m.d.sync += cyc.eq(cyc + 1)
        with m.If(self.busy):
            m.d.sync += busy_c.eq(busy_c + 1)
        with m.If(self.tx.valid & ~self.tx.ready):
            m.d.sync += stall_c.eq(stall_c + 1)
        for j, s in enumerate((cyc, busy_c, stall_c, ok_c, bad_c, dup_c, gemm_c)):
            m.d.comb += self.counters[j].eq(s)

        # ---- response state ----
        resp_len = Signal(16)
        tbl_len = Signal(6)
        use_hello = Signal()
        kind = Signal(2)                      # after the table: 0 done, 1 READ data, 2 QUANT pass 2
        idx = Signal(range(max(len(self.hello_bytes), _TBL) + 1))
        # the table byte being offered, registered: the table shifts down one byte as each is taken,
        # so it comes from tbl[0] (or the HELLO constant at idx), not from a 32-way selection
        tb = Signal(8)
        t_last = Signal()                     # tb is the table's last byte
        record = Signal()                     # remember this answer for retries
        status = Signal(8)

        # ---- retry memory ----
        last_valid = Signal()
        last_seq = Signal(8)
        last_crc = Signal(32)
        last_status = Signal(8)
        last_info = Signal(32)
        last_len = Signal(3)

        # ---- matrix load state ----
        ld_active = Signal()
        ld_target = Signal()
        ld_trans = Signal()
        ld_d0 = Signal(db)
        ld_d1 = Signal(db)
        ld_left = Signal(cw)
        ld_next = Signal(cw)

        # ---- request fields (WRITE / GEMM / READ / QUANT share the header bytes) ----
        w_target, w_trans, w_d0, w_d1 = hdr[0], hdr[1], u16(2), u16(4)
        w_offset = Cat(hdr[6], hdr[7], hdr[8], hdr[9])
        w_count = u16(10)
        w_total = Signal(cw)
        m.d.sync += w_total.eq(w_d0[:db] * w_d1[:db])
        w_bytes = Signal(17)      # registered with the products: the length check is then one compare
        m.d.sync += w_bytes.eq(Mux(w_target == wire.Target.A, (w_count + 1) >> 1, w_count))
        # the payload length past each header, registered from the event (final long before the
        # checks), so no adder sits in front of a length compare
        len_w = Signal(signed(18))
        len_q = Signal(signed(18))
        m.d.sync += [len_w.eq(ev.length - wire.WRITE_HDR.size), len_q.eq(ev.length - wire.QUANT_HDR.size)]
        g_m, g_k, g_n, g_flags = u16(0), u16(2), u16(4), hdr[6]
        r_m, r_n, r_flags = u16(0), u16(2), hdr[4]
        r_off = Cat(hdr[5], hdr[6], hdr[7], hdr[8])
        r_cnt = Cat(hdr[9], hdr[10])
        rn = Signal(cw)
        r_end = Signal(33)
        m.d.sync += [rn.eq(r_m[:db] * r_n[:db]), r_end.eq(r_off + r_cnt)]

        def dims_ok(*dims):
            """Every dimension field is below ``2**db`` (the engine's command fields)."""
            if db >= 16:
                return Const(1)
            return ~Cat(*(d[db:] for d in dims)).any()
        q_unit, q_rdn, q_rows, q_cols = hdr[0], hdr[1], u16(2), u16(4)
        q_seed = Cat(hdr[6], hdr[7], hdr[8], hdr[9])
        q_n = Signal(32)
        q_n_m2 = Signal(32)
        q_last = Signal()     # QUANT pass 2: the element being sent is the last (`outn == q_n - 1`)
        if has_units:
            m.d.sync += [q_n.eq(q_rows * q_cols), q_n_m2.eq(q_n - 2)]

        # ---- element feeder (WRITE data, pads, quantizer input) ----
        p = Signal(range(self.max_payload + 1))   # buffer byte pointer
        left = Signal(max(16, cw))            # elements still to feed (QUANT: at most 32767)
        nib = Signal()
        lo = Signal(8)
        hi = Signal(8)
        fd = Signal(8)        # the WRITE data byte being fed, registered
        pad = Signal()
        feed_b = Signal()
        m.d.comb += self.r_addr.eq(p)

        wait = Signal(3)
        creg = Signal(32)
        have = Signal()
        bsel = Signal(2)
        outn = Signal(max(cw, 16 if has_units else 1))
        # READ: `outn >= r_end` as a flag set when the window's last element is taken (1 <= r_end <
        # 2**cw, checked in DISPATCH), so the engine's `c_out.ready` comes from flip-flops
        past = Signal()
        r_last = Signal(cw)
        m.d.sync += r_last.eq(r_end[:cw] - 1)
        # likewise `outn >= r_off` (set when the element before the window is taken) and `rn - 1`
        ge_off = Signal()
        # and `outn == rn - 1` (the element offered is C's last), `outn == rn` (C is drained), each
        # set a step ahead so the state register sees flip-flops
        c_last = Signal()
        drained = Signal()
        r_first_m1 = Signal(cw)
        rn_m1 = Signal(cw)
        rn_m2 = Signal(cw)
        m.d.sync += [r_first_m1.eq(r_off[:cw] - 1), rn_m1.eq(rn - 1), rn_m2.eq(rn_m1 - 1)]
        qsel = Signal()                       # 0 shiftquant, 1 luq
        feed_done = Signal()

        units = {}
        if self.shiftq is not None:
            units[wire.QuantUnit.SHIFTQUANT] = ("sq", self.shiftq)
        if self.luq is not None:
            units[wire.QuantUnit.LUQ] = ("lq", self.luq)
        unit_built = Signal()
        with m.Switch(q_unit):
            for u in units:
                with m.Case(int(u)):
                    m.d.comb += unit_built.eq(1)
        q_rows_ok = Signal()      # registered with the products (a compare behind the unit's decode)
        if self.shiftq is not None:
            m.d.sync += q_rows_ok.eq((q_unit != wire.QuantUnit.SHIFTQUANT)
                                     | (q_rows <= self.shiftq.max_channels))
        else:
            m.d.comb += q_rows_ok.eq(1)
        for pfx, unit in units.values():
            cfg = getattr(self, f"{pfx}_cfg")
            if pfx == "sq":
                m.d.comb += [cfg.rows.eq(q_rows), cfg.cols.eq(q_cols), cfg.seed.eq(q_seed),
                             cfg.rdn.eq(q_rdn[0])]
            else:
                m.d.comb += [cfg.beats.eq(q_n), cfg.seed.eq(q_seed)]
        q_i_valid = Signal()
        q_i_data = Signal(16)
        q_i_ready = Signal()
        for u, (pfx, unit) in units.items():
            i = getattr(self, f"{pfx}_i")
            sel = qsel == (1 if pfx == "lq" else 0)
            m.d.comb += [i.valid.eq(q_i_valid & sel), i.payload[0].eq(q_i_data)]
            with m.If(sel):
                m.d.comb += q_i_ready.eq(i.ready)

        step_feed = Signal()
        m.d.comb += step_feed.eq(Mux(feed_b, self.b.ready, self.a.ready))

        def zero_feed():
            """Feed ``left`` zero elements to the engine (padding a load); one per cycle."""
            with m.If(feed_b):
                m.d.comb += [self.b.valid.eq(1), self.b.payload.eq(0)]
            with m.Else():
                m.d.comb += [self.a.valid.eq(1), self.a.payload.eq(0)]
            with m.If(step_feed):
                m.d.sync += left.eq(left - 1)

        ph = Signal(2)

        def feed16():
            """Stream ``left`` little-endian int16 elements from the buffer at byte ``p`` (4 cycles each).

            Both bytes are registered before the element is offered: the buffer's block RAM output
            (about 6 ns clock-to-out on the ECP5) then drives no quantizer logic."""
            with m.Switch(ph):
                with m.Case(0):                 # the low byte's address is on the port
                    m.d.sync += [ph.eq(1), p.eq(p + 1)]
                with m.Case(1):                 # low byte arrives; the high byte's address
                    m.d.sync += [lo.eq(self.r_data), ph.eq(2)]
                with m.Case(2):                 # high byte arrives
                    m.d.sync += [hi.eq(self.r_data), ph.eq(3)]
                with m.Case(3):
                    m.d.comb += [q_i_valid.eq(1), q_i_data.eq(Cat(lo, hi))]
                    with m.If(q_i_ready):
                        m.d.sync += [ph.eq(0), p.eq(p + 1), left.eq(left - 1)]
                        with m.If(left == 1):
                            m.d.sync += feed_done.eq(1)

        def short(code, nbytes=1, info=None, rec=False):
            """Answer with a status byte (and ``info``)."""
            stmts = [status.eq(code), tbl[0].eq(code), resp_len.eq(nbytes), tbl_len.eq(nbytes),
                     use_hello.eq(0), kind.eq(0), record.eq(rec)]
            if info is not None:
                stmts += put(1, info, nbytes - 1)
            m.d.sync += stmts
            m.next = "RESP_HDR"

        # ---- request checks, registered ----
        # Every compare of a header field (or of the products registered from them above) is a flag
        # one cycle later, and the verdict below is registered from the flags a cycle after that.
        # FETCH ends SETTLE_CYCLES before DISPATCH, when the verdict is final; the load-state fields
        # the flags compare with (ld_*) change only while a request is handled.
        def flag(name, expr):
            f = Signal(name=name)
            m.d.sync += f.eq(expr)
            return f
        wf_len_bad = flag("wf_len_bad", len_w != w_bytes)
        wf_range_bad = flag("wf_range_bad", (w_target > 1) | (w_d0 == 0) | (w_d1 == 0) | ~dims_ok(w_d0, w_d1))
        wf_first = flag("wf_first", w_offset == 0)
        wf_state_bad = flag("wf_state_bad", ~ld_active | (w_target != ld_target) | (w_offset != ld_next)
                            | (w_trans[0] != ld_trans) | (w_d0 != ld_d0) | (w_d1 != ld_d1))
        wf_over = flag("wf_over", w_count > ld_left)
        gf_len_bad = flag("gf_len_bad", ev.length != wire.GEMM_REQ.size)
        gf_range_bad = flag("gf_range_bad", ~dims_ok(g_m, g_k, g_n))
        rf_len_bad = flag("rf_len_bad", ev.length != wire.READ_REQ.size)
        rf_range_bad = flag("rf_range_bad", ~dims_ok(r_m, r_n) | (rn == 0) | (r_cnt == 0)
                            | (r_cnt > wire.READ_MAX) | (r_end > rn))
        qf_range_bad = flag("qf_range_bad", (q_n == 0) | ~q_rows_ok | (q_n > self.quant_max))
        qf_len_bad = flag("qf_len_bad", len_q != Cat(Const(0, 1), q_n))
        is_dup = flag("is_dup", last_valid & (ev.seq == last_seq) & (ev.crc == last_crc)
                      & ((ev.op == wire.Op.WRITE) | (ev.op == wire.Op.GEMM)))
        settle = Signal(range(SETTLE_CYCLES + 1))

        # ---- the verdict, registered ----
        # What DISPATCH does, decided a cycle ahead from the flags (final after the second SETTLE
        # cycle): DISPATCH then acts on one flip-flop per outcome instead of the status and opcode
        # compares and the flags' priority chains, which, routed across the device to the response
        # table, were the ULX3S build's critical path.
        v_answer = Signal()       # answer at once: status v_code, v_len bytes (the info bytes zero)
        v_code = Signal(8)
        v_len = Signal(3)
        v_rec = Signal()
        go = {n: Signal(name=f"go_{n}") for n in (
            "dup", "hello", "counters", "pad", "load", "write", "gemm", "read") + ("quant",) * has_units}
        m.d.sync += [v_answer.eq(0), v_code.eq(0), v_len.eq(1), v_rec.eq(0)]
        m.d.sync += [g.eq(0) for g in go.values()]

        def verdict(code, nbytes=1, rec=False):
            m.d.sync += [v_answer.eq(1), v_code.eq(code), v_len.eq(nbytes), v_rec.eq(rec)]

        def checked(checks, outcome, nbytes=1, rec=False):
            """The first failing ``(bad, status)`` check answers; with none failing, go to ``outcome``."""
            for j, (bad, code) in enumerate(checks):
                with (m.If if j == 0 else m.Elif)(bad):
                    verdict(code, nbytes, rec)
            with m.Else():
                m.d.sync += go[outcome].eq(1)

        with m.If(ev.status != wire.Status.OK):
            verdict(ev.status)
        with m.Elif(is_dup):
            m.d.sync += go["dup"].eq(1)
        with m.Else():
            with m.Switch(ev.op):
                with m.Case(wire.Op.HELLO):
                    m.d.sync += go["hello"].eq(1)
                with m.Case(wire.Op.COUNTERS):
                    m.d.sync += go["counters"].eq(1)
                with m.Case(wire.Op.WRITE):
                    with m.If(wf_len_bad):
                        verdict(wire.Status.BAD_LENGTH, rec=True)
                    with m.Elif(wf_range_bad):
                        verdict(wire.Status.OUT_OF_RANGE, rec=True)
                    with m.Elif(wf_first):
                        # a new load while one is incomplete pads the old one first
                        m.d.sync += go["pad"].eq(ld_active), go["load"].eq(~ld_active)
                    with m.Elif(wf_state_bad):
                        verdict(wire.Status.BAD_STATE, rec=True)
                    with m.Elif(wf_over):
                        verdict(wire.Status.OUT_OF_RANGE, rec=True)
                    with m.Else():
                        m.d.sync += go["write"].eq(1)
                with m.Case(wire.Op.GEMM):
                    checked([(gf_len_bad, wire.Status.BAD_LENGTH), (ld_active, wire.Status.BAD_STATE),
                             (gf_range_bad, wire.Status.OUT_OF_RANGE)], "gemm", 5, rec=True)
                with m.Case(wire.Op.READ):
                    checked([(rf_len_bad, wire.Status.BAD_LENGTH), (ld_active, wire.Status.BAD_STATE),
                             (rf_range_bad, wire.Status.OUT_OF_RANGE)], "read")
                with m.Case(wire.Op.QUANT):
                    if not has_units:
                        verdict(wire.Status.UNSUPPORTED)
                    else:
                        checked([(~unit_built, wire.Status.UNSUPPORTED), (qf_range_bad, wire.Status.OUT_OF_RANGE),
                                 (qf_len_bad, wire.Status.BAD_LENGTH)], "quant")
                with m.Default():
                    verdict(wire.Status.UNKNOWN_OP)

        m.d.comb += [self.busy.eq(1), self.buf_free.eq(0)]
        with m.FSM(name="dec"):
            with m.State("IDLE"):
                m.d.comb += [self.busy.eq(0), self.buf_free.eq(1), self.frame.ready.eq(1)]
                with m.If(self.frame.valid):
                    m.d.sync += [ev.eq(self.frame.payload), p.eq(0), idx.eq(0)]
                    with m.If(self.frame.payload.status == wire.Status.OK):
                        m.d.sync += ok_c.eq(ok_c + 1)
                    with m.Else():
                        m.d.sync += bad_c.eq(bad_c + 1)
                    m.next = "FETCH"
            with m.State("FETCH"):
                # read the first _HDR_BYTES payload bytes (one cycle behind the address)
                m.d.comb += self.buf_free.eq(0)
                m.d.sync += p.eq(p + 1)
                with m.Switch(p):
                    for j in range(1, _HDR_BYTES + 1):
                        with m.Case(j):
                            m.d.sync += hdr[j - 1].eq(self.r_data)
                with m.If(p == _HDR_BYTES):
                    m.d.sync += settle.eq(SETTLE_CYCLES - 1)
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                m.d.sync += settle.eq(settle - 1)
                with m.If(settle == 0):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                # exactly one outcome flag is set (the verdict above covers every case)
                with m.If(v_answer):
                    m.d.sync += [status.eq(v_code), tbl[0].eq(v_code), resp_len.eq(v_len),
                                 tbl_len.eq(v_len), use_hello.eq(0), kind.eq(0), record.eq(v_rec)]
                    m.d.sync += put(1, Const(0, 32), 4)
                    m.next = "RESP_HDR"
                with m.If(go["dup"]):
                    m.d.sync += dup_c.eq(dup_c + 1)
                    m.d.sync += [status.eq(last_status), tbl[0].eq(last_status), resp_len.eq(last_len),
                                 tbl_len.eq(last_len), use_hello.eq(0), kind.eq(0), record.eq(0)]
                    m.d.sync += put(1, last_info, 4)
                    m.next = "RESP_HDR"
                with m.If(go["hello"]):
                    m.d.sync += [status.eq(0), resp_len.eq(len(self.hello_bytes)),
                                 tbl_len.eq(len(self.hello_bytes)), use_hello.eq(1), kind.eq(0),
                                 record.eq(0)]
                    m.next = "RESP_HDR"
                with m.If(go["counters"]):
                    n = 1 + 4 * len(wire.COUNTER_FIELDS)
                    m.d.sync += [status.eq(0), tbl[0].eq(0), resp_len.eq(n), tbl_len.eq(n),
                                 use_hello.eq(0), kind.eq(0), record.eq(0)]
                    for j, s in enumerate((cyc, busy_c, stall_c, ok_c, bad_c, dup_c, gemm_c)):
                        m.d.sync += put(1 + 4 * j, s, 4)
                    m.next = "RESP_HDR"
                with m.If(go["pad"]):
                    # pad the incomplete load so the engine's stream stays aligned
                    m.d.sync += [pad.eq(1), feed_b.eq(ld_target), left.eq(ld_left), ld_active.eq(0)]
                    m.next = "PAD"
                with m.If(go["load"]):
                    m.next = "LOAD_ISSUE"
                with m.If(go["write"]):
                    m.next = "WRITE_DATA"
                with m.If(go["gemm"]):
                    m.next = "GEMM_ISSUE"
                with m.If(go["read"]):
                    m.next = "READ_ISSUE"
                if has_units:
                    with m.If(go["quant"]):
                        m.d.sync += qsel.eq(q_unit == wire.QuantUnit.LUQ)
                        m.next = "QUANT_START"

            # ---------------- WRITE ----------------
            with m.State("PAD"):
                zero_feed()
                with m.If(step_feed & (left == 1)):
                    m.next = "LOAD_ISSUE"
            with m.State("LOAD_ISSUE"):
                c = self.cmd.payload
                tr = w_trans[0]
                with m.If(w_target == wire.Target.A):
                    m.d.comb += [c.op.eq(EngOp.LOAD_A), c.m.eq(Mux(tr, w_d1, w_d0)),
                                 c.k.eq(Mux(tr, w_d0, w_d1)), c.trans_a.eq(tr)]
                with m.Else():
                    m.d.comb += [c.op.eq(EngOp.LOAD_B), c.k.eq(Mux(tr, w_d1, w_d0)),
                                 c.n.eq(Mux(tr, w_d0, w_d1)), c.trans_b.eq(tr)]
                m.d.comb += self.cmd.valid.eq(1)
                with m.If(self.cmd.ready):
                    m.d.sync += [wait.eq(CHECK_LATENCY - 1), ld_target.eq(w_target[0]), ld_trans.eq(tr), ld_d0.eq(w_d0),
                                 ld_d1.eq(w_d1)]
                    m.next = "LOAD_CHECK"
            with m.State("LOAD_CHECK"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    with m.If(self.eng_error):
                        # rejected (does not fit): the engine still takes the elements; pad them now
                        m.d.sync += [pad.eq(1), feed_b.eq(ld_target), left.eq(w_total)]
                        m.next = "LOAD_REJECT"
                    with m.Elif(w_count > w_total):
                        m.d.sync += [pad.eq(1), feed_b.eq(ld_target), left.eq(w_total)]
                        m.next = "LOAD_REJECT"
                    with m.Else():
                        m.d.sync += [ld_active.eq(1), ld_left.eq(w_total), ld_next.eq(0)]
                        m.next = "WRITE_DATA"
            with m.State("LOAD_REJECT"):
                zero_feed()
                with m.If(step_feed & (left == 1)):
                    short(wire.Status.OUT_OF_RANGE, rec=True)
            with m.State("WRITE_DATA"):
                m.d.sync += [p.eq(wire.WRITE_HDR.size), left.eq(w_count), nib.eq(0),
                             feed_b.eq(ld_target)]
                with m.If(w_count == 0):
                    m.next = "WRITE_DONE"
                with m.Else():
                    m.next = "FEED_RD"
            with m.State("FEED_RD"):
                m.next = "FEED_LATCH"
            with m.State("FEED_LATCH"):
                # the byte is registered before it is offered: the block RAM's slow clock-to-out
                # then drives no engine logic (the B format check, the A/B write ports)
                m.d.sync += fd.eq(self.r_data)
                m.next = "FEED_GO"
            with m.State("FEED_GO"):
                with m.If(feed_b):
                    m.d.comb += [self.b.valid.eq(1), self.b.payload.m.eq(fd[:4])]
                    if len(self.b.payload.s):
                        m.d.comb += self.b.payload.s.eq(fd[4:4 + len(self.b.payload.s)])
                    with m.If(self.b.ready):
                        m.d.sync += [left.eq(left - 1), p.eq(p + 1)]
                        m.next = "FEED_RD"
                        with m.If(left == 1):
                            m.next = "WRITE_DONE"
                with m.Else():
                    m.d.comb += [self.a.valid.eq(1), self.a.payload.eq(Mux(nib, fd[4:], fd[:4]))]
                    with m.If(self.a.ready):
                        m.d.sync += [left.eq(left - 1), nib.eq(~nib)]
                        with m.If(nib):
                            m.d.sync += p.eq(p + 1)
                            m.next = "FEED_RD"
                        with m.If(left == 1):
                            m.next = "WRITE_DONE"
            with m.State("WRITE_DONE"):
                m.d.sync += [ld_left.eq(ld_left - w_count), ld_next.eq(ld_next + w_count)]
                with m.If(ld_left == w_count):
                    m.d.sync += ld_active.eq(0)
                m.d.sync += wait.eq(2)
                m.next = "WRITE_ACK"
            with m.State("WRITE_ACK"):
                # a B operand outside the formats raises the engine's error while loading
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    short(Mux(self.eng_error, wire.Status.OUT_OF_RANGE, wire.Status.OK), rec=True)

            # ---------------- GEMM ----------------
            with m.State("GEMM_ISSUE"):
                c = self.cmd.payload
                m.d.comb += [c.op.eq(EngOp.GEMM), c.m.eq(g_m), c.k.eq(g_k), c.n.eq(g_n),
                             c.trans_a.eq(g_flags[0]), c.trans_b.eq(g_flags[1]),
                             c.accumulate.eq(g_flags[2]), self.cmd.valid.eq(1)]
                with m.If(self.cmd.ready):
                    m.next = "GEMM_WAIT"
            with m.State("GEMM_WAIT"):
                with m.If(~self.eng_busy):
                    m.d.sync += gemm_c.eq(self.eng_cycles)
                    short(Mux(self.eng_error, wire.Status.OUT_OF_RANGE, wire.Status.OK), 5,
                          self.eng_cycles, rec=True)

            # ---------------- READ ----------------
            with m.State("READ_ISSUE"):
                c = self.cmd.payload
                m.d.comb += [c.op.eq(EngOp.READ_C), c.m.eq(r_m), c.n.eq(r_n), c.trans_c.eq(r_flags[0]),
                             self.cmd.valid.eq(1)]
                with m.If(self.cmd.ready):
                    m.d.sync += wait.eq(CHECK_LATENCY - 1)
                    m.next = "READ_CHECK"
            with m.State("READ_CHECK"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    with m.If(self.eng_error):
                        short(wire.Status.OUT_OF_RANGE)
                    with m.Else():
                        m.d.sync += [status.eq(0), tbl[0].eq(0), resp_len.eq(1 + 4 * r_cnt), tbl_len.eq(1),
                                     use_hello.eq(0), kind.eq(1), record.eq(0), have.eq(0), bsel.eq(0),
                                     outn.eq(0), past.eq(0), drained.eq(0), c_last.eq(rn_m1 == 0),
                                     ge_off.eq(r_off[:cw] == 0)]
                        m.next = "RESP_HDR"
            with m.State("READ_DATA"):
                # The whole C stream is drained (so the engine returns to idle); only the window
                # offset .. offset+count-1 is sent. Elements after the window drain while the last one
                # is being sent, and its final byte waits for the drain: the answer is complete only
                # when the decoder is about to become idle, so the host's next frame never finds it busy.
                m.d.comb += self.c.ready.eq(~have | past)
                with m.If(self.c.valid & self.c.ready):
                    m.d.sync += [outn.eq(outn + 1), drained.eq(c_last), c_last.eq(outn == rn_m2)]
                    with m.If(outn == r_last):
                        m.d.sync += past.eq(1)
                    with m.If(outn == r_first_m1):
                        m.d.sync += ge_off.eq(1)
                    with m.If(~have & ge_off & ~past):         # r_off <= outn < r_end
                        m.d.sync += [creg.eq(self.c.payload), have.eq(1), bsel.eq(0)]
                    with m.Elif(~have & c_last):
                        m.next = "FINISH"
                hold = (bsel == 3) & past & ~drained
                m.d.comb += [self.tx.valid.eq(have & ~hold), self.tx.payload.eq(creg.word_select(bsel, 8))]
                with m.If(self.tx.valid & self.tx.ready):
                    m.d.sync += bsel.eq(bsel + 1)
                    with m.If(bsel == 3):
                        m.d.sync += have.eq(0)
                        with m.If(drained):
                            m.next = "FINISH"

            # ---------------- QUANT (only with quantizer units) ----------------
            if has_units:
                with m.State("QUANT_START"):
                    for pfx, unit in units.values():
                        with m.If(qsel == (1 if pfx == "lq" else 0)):
                            m.d.comb += getattr(self, f"{pfx}_start").eq(1)
                    m.d.sync += [p.eq(wire.QUANT_HDR.size), left.eq(q_n), feed_done.eq(0), ph.eq(0)]
                    m.next = "QUANT_P1"
                with m.State("QUANT_P1"):
                    with m.If(~feed_done):
                        feed16()
                    with m.If(feed_done):
                        m.next = "QUANT_INFO"
                with m.State("QUANT_INFO"):
                    for pfx, unit in units.values():
                        info = getattr(self, f"{pfx}_info")
                        with m.If(qsel == (1 if pfx == "lq" else 0)):
                            m.d.comb += info.ready.eq(1)
                            with m.If(info.valid):
                                pl = info.payload
                                if pfx == "sq":
                                    n_info = wire.SHIFT_INFO.size
                                    m.d.sync += (put(1, pl.max_abs, 2) + put(3, pl.scale_exp, 1)
                                                 + put(4, pl.recip, 3) + put(7, pl.recip_exp, 1)
                                                 + put(8, pl.max_bits, 1))
                                else:
                                    n_info = wire.LUQ_INFO.size
                                    m.d.sync += put(1, pl.max_abs, 2) + put(3, pl.alpha_exp, 1)
                                m.d.sync += [status.eq(0), tbl[0].eq(0), resp_len.eq(1 + n_info + q_n),
                                             tbl_len.eq(1 + n_info), use_hello.eq(0), kind.eq(2), record.eq(0),
                                             p.eq(wire.QUANT_HDR.size), left.eq(q_n), feed_done.eq(0), outn.eq(0),
                                             q_last.eq(q_n == 1), ph.eq(0)]
                                m.next = "RESP_HDR"
                with m.State("QUANT_P2"):
                    with m.If(~feed_done):
                        feed16()
                    for pfx, unit in units.values():
                        o = getattr(self, f"{pfx}_o")
                        with m.If(qsel == (1 if pfx == "lq" else 0)):
                            code = o.payload.codes[0]
                            if pfx == "sq":
                                byte = Cat(Value.cast(code)[:4], Value.cast(o.payload.exps[0])[:4])
                            else:
                                byte = Value.cast(code).as_signed()
                            m.d.comb += [self.tx.valid.eq(o.valid), self.tx.payload.eq(byte),
                                         o.ready.eq(self.tx.ready)]
                            with m.If(o.valid & self.tx.ready):
                                # `q_last` is set a step ahead, so no 32-bit compare (and no
                                # subtractor) sits in front of the state register
                                m.d.sync += [outn.eq(outn + 1), q_last.eq(outn == q_n_m2)]
                                with m.If(q_last):
                                    m.next = "QUANT_END"
                with m.State("QUANT_END"):
                    busy_q = Const(0)
                    for pfx, unit in units.values():
                        busy_q = busy_q | getattr(self, f"{pfx}_busy")
                    with m.If(~busy_q):
                        m.next = "FINISH"

            # ---------------- responses ----------------
            with m.State("RESP_HDR"):
                m.d.comb += [self.tx_start.valid.eq(1), self.tx_start.payload.op.eq(ev.op | wire.RESPONSE),
                             self.tx_start.payload.seq.eq(ev.seq), self.tx_start.payload.length.eq(resp_len)]
                with m.If(self.tx_start.ready):
                    m.d.sync += [idx.eq(1), tb.eq(Mux(use_hello, hello[0], tbl[0])), t_last.eq(tbl_len == 1)]
                    m.d.sync += shift
                    # remembered for retries now, before the table shifts (the next request is
                    # dispatched only after this answer is sent)
                    with m.If(record):
                        m.d.sync += [last_valid.eq(1), last_seq.eq(ev.seq), last_crc.eq(ev.crc),
                                     last_status.eq(status), last_len.eq(resp_len[:3]),
                                     last_info.eq(Cat(tbl[1], tbl[2], tbl[3], tbl[4]))]
                    m.next = "TABLE"
            with m.State("TABLE"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(tb)]
                with m.If(self.tx.ready):
                    m.d.sync += [idx.eq(idx + 1), tb.eq(Mux(use_hello, hello[idx], tbl[0])),
                                 t_last.eq(idx == tbl_len - 1)]
                    m.d.sync += shift
                    with m.If(t_last):
                        with m.Switch(kind):
                            with m.Case(1):
                                m.next = "READ_DATA"
                            if has_units:
                                with m.Case(2):
                                    m.next = "QUANT_P2"
                            with m.Default():
                                m.next = "FINISH"
            with m.State("FINISH"):
                m.next = "IDLE"
        return m
