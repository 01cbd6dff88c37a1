"""ShiftQuantizer: ShiftQuant (ALGORITHMS.md §3, proposed reading) in gateware, bit-exact with
``host.quant.shiftquant`` for fixed-point input.

Input format. Element values are ``A = x * 2**E_x``: ``x`` a signed ``in_width``-bit integer and ``E_x``
one tensor exponent that the unit never sees -- every quantity it computes is invariant under a power of
two scaling of the whole tensor (the golden model's codes and exponents are; its ``scale`` is
``2**(k + E_x)`` for ``scale="pow2"`` and ``RN(r * 2**E_x / q_max)`` for ``scale="float"``).

Arithmetic (``docs/numerics/shiftquant_l1norm.md``, "Exact arithmetic"), with ``r_i = max_j |x_ij|`` per
channel and ``r = max_i r_i``:

* exponent ``e_i = #{e in 1..E_max : r_i * 2**e <= r}`` -- the largest ``e <= E_max`` with
  ``r_i 2**e <= r``, as ``E_max`` comparators (``r_i = 0`` gives ``E_max``);
* ``scale="pow2"``: ``k`` = smallest integer with ``q_max * 2**k >= r`` (comparisons with constants);
  ``v = x * 2**(e_i - k)`` exactly;
* ``scale="float"``: ``c = RN24(q_max * 2**bl / r)`` (``bl = bitlen(r)``; one sequential division per
  tensor) held as ``C * 2**ec`` with a 24-bit ``C``; ``v = RN24(x * C) * 2**(ec + e_i - bl)`` -- one
  ``in_width x 24`` multiply per element and a rounding to 24 significant bits (ties to even), which is
  float32's ``RN(A * c_i)`` exactly;
* ``q = clamp(SR(v), -q_max, q_max)`` (``SR(v) = floor(v + u)``, draw ``i`` for element ``i``) or
  ``clamp(RDN(v))`` (ties to even).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import numerics as nx
from hw.quant.common import (
    abs_unsigned, bit_length, check_choice, check_int, check_lanes, check_rand_bits, max_tree,
    requantize,
)
from hw.quant.rng import RandomStream

__all__ = ["ShiftQuantizer"]

_WHO = "ShiftQuantizer"
DIM_BITS = 16          # rows, cols < 2**16


class ShiftQuantizer(wiring.Component):
    """Per-channel power-of-two-scaled symmetric quantizer (ShiftQuant), two passes over a stream.

    The tensor (``rows x cols``, row-major, ``lanes`` consecutive elements of one row per beat) is sent
    **twice** on ``i``: pass 1 measures the channel maxima, pass 2 quantizes. Between the passes the unit
    emits one ``info`` beat (the tensor max and the shared scale) and waits until it is taken. Pass 2
    produces one ``o`` beat per input beat: the codes and, per element, its channel's exponent ``e``
    (so the pair is directly the PE operand ``(mantissa, shift = e_max - e)``).

    Parameters
    ----------
    in_width : int
        Width of the signed input integers ``x``, ``4..24`` (24: every input is exact in float32).
    bits : int
        Code width, ``2..8``; codes lie on ``[-(2**(bits-1)-1), 2**(bits-1)-1]``.
    e_max : int
        Largest channel exponent ``E_max``, ``0..15`` (``hw.numerics.ShiftFormat``).
    axis : {"row", "col"}
        Channel = row (one exponent per row) or column (one per column).
    scale : {"pow2", "float"}
        Shared scale as a power of two (shifts only) or ``r / q_max`` (one 24-bit multiply per element).
    lanes : {1, 2, 4, 8, 16}
        Elements per beat; ``cols`` must be a multiple of ``lanes``.
    rand_bits : {4, 8, 16}
        Bits per random draw (SR).
    max_channels : int
        Capacity of the channel-maximum memory: rows (``axis="row"``) or columns (``axis="col"``,
        a multiple of ``lanes``), ``1..65535``.

    Members
    -------
    start : In(1)
        Pulse (while idle) to begin a tensor; ``cfg`` is sampled then.
    cfg : In(StructLayout)
        ``rows``, ``cols`` (``1..65535``, ``cols % lanes == 0``), ``seed`` (32-bit stream seed),
        ``rdn`` (1: round to nearest even, 0: stochastic rounding).
    busy : Out(1)
        High from ``start`` until the last ``o`` beat has been taken.
    i : In(stream.Signature(ArrayLayout(signed(in_width), lanes)))
        The tensor, pass 1 then pass 2 (identical data).
    info : Out(stream.Signature(StructLayout))
        One beat per tensor after pass 1: ``max_abs`` (``r``), ``scale_exp`` (``k``: the pow2 scale is
        ``2**k`` input LSBs), ``recip``/``recip_exp`` (``C``, ``ec``: float mode's ``c = C * 2**ec``),
        ``max_bits`` (``bitlen(r)``).
    o : Out(stream.Signature(StructLayout))
        ``codes`` (``lanes`` x ``signed(bits)``), ``exps`` (``lanes`` x ``unsigned``: the channel
        exponent of each element), ``last`` (final beat of the tensor).

    Latency
    -------
    Pass 2: an input beat accepted in cycle ``t`` is on ``o`` in cycle ``t + `` :attr:`latency`
    (3 for pow2, 5 for float). Between passes: ``info.valid`` rises :attr:`gap` cycles after the last
    pass-1 beat (pow2: 3; float: ``in_width + 31``, of which ``in_width + 26`` are the division).

    Throughput
    ----------
    One beat (``lanes`` elements) per clock in both passes, when ``o`` is not back-pressured.
    """

    def __init__(self, *, in_width: int = 16, bits: int = 4, e_max: int = 3, axis: str = "row",
                 scale: str = "pow2", lanes: int = 1, rand_bits: int = nx.DEFAULT_RAND_BITS,
                 max_channels: int = 1024):
        self._MustUse__silence = True      # an object whose arguments are rejected is not 'unused'
        self.in_width = check_int(_WHO, "in_width", in_width, 4, 24)
        self.bits = check_int(_WHO, "bits", bits, 2, 8)
        self.e_max = check_int(_WHO, "e_max", e_max, 0, 15)
        self.axis = check_choice(_WHO, "axis", axis, ("row", "col"))
        self.scale = check_choice(_WHO, "scale", scale, ("pow2", "float"))
        self.lanes = check_lanes(_WHO, lanes)
        self.rand_bits = check_rand_bits(_WHO, rand_bits)
        self.max_channels = check_int(_WHO, "max_channels", max_channels, 1, 2 ** DIM_BITS - 1)
        if self.axis == "col" and self.max_channels % self.lanes:
            raise ValueError(f"{_WHO}: max_channels must be a multiple of lanes ({self.lanes}) for "
                             f"axis='col', got {self.max_channels}")
        self.qmax = 2 ** (self.bits - 1) - 1
        self.e_bits = max(1, self.e_max.bit_length())
        w = self.in_width
        self.pq = self.qmax.bit_length()
        # k = smallest integer with q_max * 2**k >= r, for 1 <= r <= 2**(w-1)
        self.k_min = -(self.pq - 1)
        self.k_max = w
        # float mode: quotient q_max * 2**(w + T) / Dn has 26..27 bits
        self.div_t = 26 - self.pq
        self.div_steps = self.pq + w + self.div_t
        self.latency = 3 if self.scale == "pow2" else 5
        self.gap = 3 if self.scale == "pow2" else 3 + self.div_steps + 2

        self.cfg_layout = data.StructLayout({
            "rows": unsigned(DIM_BITS), "cols": unsigned(DIM_BITS), "seed": unsigned(32),
            "rdn": unsigned(1)})
        self.info_layout = data.StructLayout({
            "max_abs": unsigned(w), "scale_exp": signed(8), "recip": unsigned(24),
            "recip_exp": signed(8), "max_bits": unsigned((w).bit_length())})
        self.out_layout = data.StructLayout({
            "codes": data.ArrayLayout(signed(self.bits), self.lanes),
            "exps": data.ArrayLayout(unsigned(self.e_bits), self.lanes),
            "last": unsigned(1)})
        super().__init__({
            "start": In(1),
            "cfg": In(self.cfg_layout),
            "busy": Out(1),
            "i": In(stream.Signature(data.ArrayLayout(signed(w), self.lanes))),
            "info": Out(stream.Signature(self.info_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })
        self._MustUse__silence = False

    def config(self) -> dict:
        """Construction parameters (for reports and the simulation helper)."""
        return dict(in_width=self.in_width, bits=self.bits, e_max=self.e_max, axis=self.axis,
                    scale=self.scale, lanes=self.lanes, rand_bits=self.rand_bits,
                    max_channels=self.max_channels)

    def elaborate(self, platform):
        m = Module()
        w, L, qmax = self.in_width, self.lanes, self.qmax
        lane_bits = (L - 1).bit_length()
        row_axis = self.axis == "row"

        m.submodules.rng = rng = RandomStream(rand_bits=self.rand_bits, lanes=L)

        # ---------------- configuration and counters
        rows = Signal(DIM_BITS)
        bpr = Signal(DIM_BITS)                      # beats per row = cols / lanes
        rdn = Signal()
        row = Signal(DIM_BITS)
        cbeat = Signal(DIM_BITS)
        last_beat = (row == rows - 1) & (cbeat == bpr - 1)
        row_end = cbeat == bpr - 1

        def advance_counters():
            with m.If(row_end):
                m.d.sync += [cbeat.eq(0), row.eq(row + 1)]
            with m.Else():
                m.d.sync += cbeat.eq(cbeat + 1)

        # ---------------- channel-maximum memory
        if row_axis:
            mem = memory.Memory(shape=unsigned(w), depth=self.max_channels, init=[])
        else:
            mem = memory.Memory(shape=unsigned(w * L), depth=self.max_channels // L, init=[])
        m.submodules.chmax = mem
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=(wp,))
        m.d.comb += rp.en.eq(0)                  # reads only where a state enables them

        r = Signal(w)                                # tensor max |x|
        k = Signal(signed(8))
        bl = Signal(range(w + 1))
        c_man = Signal(24)
        c_exp = Signal(signed(8))

        # ---------------- pass 1 stage registers
        p1_valid = Signal()
        p1_abs = [Signal(w, name=f"p1_abs{l}") for l in range(L)]
        p1_bmax = Signal(w)
        p1_first = Signal()                          # first row (col axis) / first beat of row (row axis)
        p1_rowend = Signal()
        p1_addr = Signal(range(max(self.max_channels, 2)))
        row_run = Signal(w)

        x_in = [self.i.payload[l] for l in range(L)]
        abs_in = [abs_unsigned(x) for x in x_in]

        # ---------------- pass 2 pipeline
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        n_st = self.latency - 1                      # registered stages before the output register
        sv = Signal(n_st)                            # valid per stage
        s_x = [[Signal(signed(w), name=f"s{s}_x{l}") for l in range(L)] for s in range(n_st)]
        s_d = [[Signal(self.rand_bits, name=f"s{s}_d{l}") for l in range(L)] for s in range(n_st)]
        s_e = [[Signal(self.e_bits, name=f"s{s}_e{l}") for l in range(L)] for s in range(n_st)]
        s_last = Signal(n_st)

        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        with m.FSM(name="fsm") as fsm:
            with m.State("IDLE"):
                m.d.comb += [rng.seed.eq(self.cfg.seed), rng.restart.eq(self.start)]
                with m.If(self.start):
                    m.d.sync += [rows.eq(self.cfg.rows), bpr.eq(self.cfg.cols >> lane_bits),
                                 rdn.eq(self.cfg.rdn), row.eq(0), cbeat.eq(0), r.eq(0), busy.eq(1)]
                    m.next = "P1"
            with m.State("P1"):
                m.d.comb += self.i.ready.eq(1)
                m.d.comb += [rp.addr.eq(cbeat), rp.en.eq(1)]
                with m.If(self.i.valid):
                    m.d.sync += [p1_abs[l].eq(abs_in[l]) for l in range(L)]
                    m.d.sync += [p1_bmax.eq(max_tree(abs_in)),
                                 p1_first.eq((row == 0) if not row_axis else (cbeat == 0)),
                                 p1_rowend.eq(row_end),
                                 p1_addr.eq(row if row_axis else cbeat)]
                    advance_counters()
                    with m.If(last_beat):
                        m.next = "P1_DRAIN"
            with m.State("P1_DRAIN"):
                m.next = "CALC"
            with m.State("CALC"):
                # k = -(pq-1) + #{k' in [k_min, k_max) : q_max * 2**k' < r}, i.e. the smallest k with
                # q_max * 2**k >= r (comparisons with constants; r = 0 gives k_min).
                terms = []
                for kk in range(self.k_min, self.k_max):
                    sh = kk - self.k_min                  # compare r * 2**-k_min > q_max * 2**(kk - k_min)
                    terms.append(((r << -self.k_min) > (qmax << sh)))
                m.d.sync += k.eq(self.k_min + sum(t.as_unsigned() for t in terms))
                blv = bit_length(m, r, "r_bitlen")
                m.d.sync += bl.eq(blv)
                if self.scale == "float":
                    m.next = "DIV_INIT"
                else:
                    m.next = "INFO"
            if self.scale == "float":
                self._divider_states(m, r, bl, c_man, c_exp)
            with m.State("INFO"):
                m.d.comb += self.info.valid.eq(1)
                with m.If(self.info.ready):
                    m.d.sync += [row.eq(0), cbeat.eq(0)]
                    m.next = "P2"
            with m.State("P2"):
                take = Signal()
                m.d.comb += [take.eq(en & rng.o.valid), self.i.ready.eq(take)]
                m.d.comb += [rp.addr.eq(row if row_axis else cbeat), rp.en.eq(en)]
                with m.If(take & self.i.valid):
                    m.d.comb += rng.o.ready.eq(1)
                    advance_counters()
                    with m.If(last_beat):
                        m.next = "P2_DRAIN"
            with m.State("P2_DRAIN"):
                m.d.comb += rp.en.eq(en)         # hold the last beat's channel maxima while stalled
                with m.If((sv == 0) & ~self.o.valid):
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"

        m.d.comb += [
            self.info.payload.max_abs.eq(r), self.info.payload.scale_exp.eq(k),
            self.info.payload.recip.eq(c_man), self.info.payload.recip_exp.eq(c_exp),
            self.info.payload.max_bits.eq(bl),
        ]

        # ---------------- pass 1 second stage: maxima into memory
        m.d.sync += p1_valid.eq(self.i.valid & self.i.ready & fsm.ongoing("P1"))
        with m.If(p1_valid):
            m.d.sync += r.eq(Mux(p1_bmax > r, p1_bmax, r))
            if row_axis:
                cur = Mux(p1_first | (p1_bmax > row_run), p1_bmax, row_run)
                m.d.sync += row_run.eq(cur)
                m.d.comb += [wp.addr.eq(p1_addr), wp.data.eq(cur), wp.en.eq(p1_rowend)]
            else:
                new = []
                for l in range(L):
                    old = Mux(p1_first, 0, rp.data.word_select(l, w))
                    new.append(Mux(p1_abs[l] > old, p1_abs[l], old))
                m.d.comb += [wp.addr.eq(p1_addr), wp.data.eq(Cat(*new)), wp.en.eq(1)]

        # ---------------- pass 2 datapath
        accept2 = Signal()
        m.d.comb += accept2.eq(self.i.valid & self.i.ready & fsm.ongoing("P2"))
        with m.If(en):
            # stage 0: the accepted beat (memory read of its channel maxima is in flight)
            m.d.sync += sv[0].eq(accept2)
            m.d.sync += [s_x[0][l].eq(x_in[l]) for l in range(L)]
            m.d.sync += [s_d[0][l].eq(rng.o.payload[l]) for l in range(L)]
            m.d.sync += s_last[0].eq(last_beat)
            # stage 1: channel exponents from the channel maxima
            for l in range(L):
                ri = rp.data if row_axis else rp.data.word_select(l, w)
                e = sum(((ri << ee) <= r).as_unsigned() for ee in range(1, self.e_max + 1)) \
                    if self.e_max else Const(0, 1)
                m.d.sync += [s_e[1][l].eq(e), s_x[1][l].eq(s_x[0][l]), s_d[1][l].eq(s_d[0][l])]
            m.d.sync += [sv[1].eq(sv[0]), s_last[1].eq(s_last[0])]

        if self.scale == "pow2":
            with m.If(en):
                codes = []
                for l in range(L):
                    sh = Signal(signed(9), name=f"shift{l}")
                    m.d.comb += sh.eq(k - s_e[1][l])
                    codes.append(requantize(
                        m, s_x[1][l], sh, qmax=qmax, rdn=rdn, draw=s_d[1][l], rand_bits=self.rand_bits,
                        shift_min=self.k_min - self.e_max, shift_max=self.k_max, name=f"rq{l}"))
                m.d.sync += [self.o.payload.codes[l].eq(codes[l]) for l in range(L)]
                m.d.sync += [self.o.payload.exps[l].eq(s_e[1][l]) for l in range(L)]
                m.d.sync += [self.o.payload.last.eq(s_last[1]), self.o.valid.eq(sv[1])]
        else:
            self._float_datapath(m, en, sv, s_x, s_d, s_e, s_last, c_man, c_exp, bl, rdn)
        return m

    def _divider_states(self, m, r, bl, c_man, c_exp):
        """FSM states computing ``c = RN24(q_max * 2**bl / r) = C * 2**ec`` by restoring division.

        With ``Dn = r << (w - bl)`` (``r`` normalized to ``w`` bits) ``q_max * 2**bl / r =
        q_max * 2**w / Dn`` lies in ``(q_max, 2 q_max]``; the integer quotient ``Q`` of
        ``q_max * 2**(w + T)`` by ``Dn`` (``T = 26 - bitlen(q_max)``) then has 26 or 27 bits, enough for
        24 significant bits, a round bit and (with the remainder) a sticky bit.
        """
        w, T, steps = self.in_width, self.div_t, self.div_steps
        dn = Signal(w)
        rem = Signal(w + 1)
        quo = Signal(steps)
        num = Signal(steps)
        cnt = Signal(range(steps + 1))
        with m.State("DIV_INIT"):
            m.d.sync += [dn.eq((r << (w - bl).as_unsigned())[:w]), rem.eq(0), quo.eq(0),
                         num.eq(self.qmax << (w + T)), cnt.eq(steps)]
            m.next = "DIV"
        with m.State("DIV"):
            rem2 = Cat(num[-1], rem[:w])
            ge = rem2 >= dn
            m.d.sync += [rem.eq(Mux(ge, rem2 - dn, rem2)), quo.eq(Cat(ge, quo[:-1])),
                         num.eq(num << 1), cnt.eq(cnt - 1)]
            with m.If(cnt == 1):
                m.next = "DIV_ROUND"
        with m.State("DIV_ROUND"):
            top = quo[26]                                  # 27-bit quotient: drop 3 bits, else 2
            d = Mux(top, 3, 2)
            trunc = Mux(top, quo[3:27], quo[2:26])
            rbit = Mux(top, quo[2], quo[1])
            sticky = Mux(top, quo[:2] != 0, quo[0]) | (rem != 0)
            up = rbit & (sticky | trunc[0])
            cm = (trunc + up)[:25]
            ovf = cm[24]
            m.d.sync += [c_man.eq(Mux(r == 0, 0, Mux(ovf, 1 << 23, cm[:24]))),
                         c_exp.eq(d + ovf - T)]
            m.next = "INFO"

    def _float_datapath(self, m, en, sv, s_x, s_d, s_e, s_last, c_man, c_exp, bl, rdn):
        """Stages 2..4 of float mode: ``P = x * C``; ``V = RN24(P)``; requantize ``V * 2**-(bl - ec - e)``."""
        w, L, T = self.in_width, self.lanes, self.div_t
        pw = w + 25
        s_p = [Signal(signed(pw), name=f"s2_p{l}") for l in range(L)]
        s_v = [Signal(signed(pw + 1), name=f"s3_v{l}") for l in range(L)]
        s_sh = [Signal(signed(9), name=f"s3_sh{l}") for l in range(L)]
        sh_min = T - 4 - self.e_max
        sh_max = w + T - 2
        with m.If(en):
            m.d.sync += [sv[2].eq(sv[1]), sv[3].eq(sv[2]), s_last[2].eq(s_last[1]),
                         s_last[3].eq(s_last[2])]
            codes = []
            for l in range(L):
                # stage 2: exact product
                m.d.sync += [s_p[l].eq(s_x[1][l] * c_man), s_e[2][l].eq(s_e[1][l]),
                             s_d[2][l].eq(s_d[1][l])]
                # stage 3: round |P| to 24 significant bits, ties to even (float32's RN)
                neg = s_p[l][-1]
                a = Signal(pw - 1, name=f"ap{l}")
                m.d.comb += a.eq(abs_unsigned(s_p[l])[:pw - 1])
                lp = bit_length(m, a, f"ap_bitlen{l}")
                dsh = Signal(range(pw), name=f"rn_d{l}")
                m.d.comb += dsh.eq(Mux(lp > 24, lp - 24, 0))
                mask = Signal(pw - 1, name=f"rn_mask{l}")
                m.d.comb += mask.eq(~(Const(-1, signed(pw)) << dsh)[:pw - 1])
                low = a & mask
                half = (Const(1, pw) << dsh) >> 1
                rb_up = (dsh != 0) & ((low > half) | ((low == half) & (a >> dsh)[0]))
                pr = Signal(pw, name=f"rn_pr{l}")
                m.d.comb += pr.eq((a & ~mask) + Mux(rb_up, Const(1, pw) << dsh, 0))
                m.d.sync += [s_v[l].eq(Mux(neg, -pr, pr)),
                             s_sh[l].eq(bl - c_exp - s_e[2][l]),
                             s_e[3][l].eq(s_e[2][l]), s_d[3][l].eq(s_d[2][l])]
                # output: requantize
                codes.append(requantize(
                    m, s_v[l], s_sh[l], qmax=self.qmax, rdn=rdn, draw=s_d[3][l],
                    rand_bits=self.rand_bits, shift_min=sh_min, shift_max=sh_max, name=f"rq{l}"))
            m.d.sync += [self.o.payload.codes[l].eq(codes[l]) for l in range(L)]
            m.d.sync += [self.o.payload.exps[l].eq(s_e[3][l]) for l in range(L)]
            m.d.sync += [self.o.payload.last.eq(s_last[3]), self.o.valid.eq(sv[3])]
