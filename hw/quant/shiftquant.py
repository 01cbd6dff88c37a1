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
    (3 for pow2, 12 for float: see ``_float_datapath`` for the stages). Between passes: ``info.valid`` rises :attr:`gap` cycles after the last
    pass-1 beat (pow2: 3; float: ``in_width + 32``, of which ``in_width + 26`` are the division).

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
        self.latency = 3 if self.scale == "pow2" else 12
        self.gap = 3 if self.scale == "pow2" else 3 + self.div_steps + 3

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
        rows_m1 = Signal(DIM_BITS)                  # rows - 1
        bpr_m1 = Signal(DIM_BITS)                   # beats per row - 1 = cols / lanes - 1
        rdn = Signal()
        row = Signal(DIM_BITS)
        cbeat = Signal(DIM_BITS)
        row_end = cbeat == bpr_m1
        last_beat = (row == rows_m1) & row_end

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
        # The stages advance while the one-beat skid buffer behind ``o`` is empty: their enable is a
        # local register, not ``o.ready`` from the consumer.
        skid_v = Signal()
        en = Signal()
        m.d.comb += en.eq(~skid_v)
        n_st = self.latency - 1                      # registered stages before the output register
        sv = Signal(n_st)                            # valid per stage
        s_x = [[Signal(signed(w), name=f"s{s}_x{l}") for l in range(L)] for s in range(n_st)]
        s_d = [[Signal(self.rand_bits, name=f"s{s}_d{l}") for l in range(L)] for s in range(n_st)]
        s_e = [[Signal(self.e_bits, name=f"s{s}_e{l}") for l in range(L)] for s in range(n_st)]
        s_last = Signal(n_st)
        self._ri1 = [Signal(w, name=f"s1_ri{l}") for l in range(L)]

        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        with m.FSM(name="fsm") as fsm:
            with m.State("IDLE"):
                m.d.comb += [rng.seed.eq(self.cfg.seed), rng.restart.eq(self.start)]
                with m.If(self.start):
                    m.d.sync += [rows_m1.eq(self.cfg.rows - 1), bpr_m1.eq((self.cfg.cols >> lane_bits) - 1),
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
                # the terms are a thermometer code (true for kk below the answer), so their count is
                # the bit length of their concatenation: a priority encoder, not an adder tree
                m.d.sync += k.eq(self.k_min + bit_length(m, Cat(*terms), "k_therm"))
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
                with m.If((sv == 0) & ~self.o.valid & ~skid_v):
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
            # stage 1: channel exponents from the channel maxima (pow2); float mode registers the
            # maxima read from the memory first and derives the exponents in its stage 2
            for l in range(L):
                ri = rp.data if row_axis else rp.data.word_select(l, w)
                if self.scale == "pow2":
                    m.d.sync += s_e[1][l].eq(self._channel_exp(ri, r))
                else:
                    m.d.sync += self._ri1[l].eq(ri)
                m.d.sync += [s_x[1][l].eq(s_x[0][l]), s_d[1][l].eq(s_d[0][l])]
            m.d.sync += [sv[1].eq(sv[0]), s_last[1].eq(s_last[0])]

        if self.scale == "pow2":
            codes = []
            for l in range(L):
                sh = Signal(signed(9), name=f"shift{l}")
                m.d.comb += sh.eq(k - s_e[1][l])
                codes.append(requantize(
                    m, s_x[1][l], sh, qmax=qmax, rdn=rdn, draw=s_d[1][l], rand_bits=self.rand_bits,
                    shift_min=self.k_min - self.e_max, shift_max=self.k_max, name=f"rq{l}"))
            exps, last, valid = [s_e[1][l] for l in range(L)], s_last[1], sv[1]
        else:
            codes, exps, last, valid = self._float_datapath(m, en, sv, s_x, s_d, s_e, s_last, c_man,
                                                            c_exp, bl, rdn, r)

        # ---------------- output register and skid buffer
        skid_codes = [Signal(signed(self.bits), name=f"skid_code{l}") for l in range(L)]
        skid_exps = [Signal(self.e_bits, name=f"skid_exp{l}") for l in range(L)]
        skid_last = Signal()
        push = en & valid
        with m.If(~self.o.valid | self.o.ready):
            m.d.sync += [self.o.valid.eq(skid_v | push), skid_v.eq(0)]
            with m.If(skid_v):
                m.d.sync += self.o.payload.last.eq(skid_last)
                m.d.sync += [self.o.payload.codes[l].eq(skid_codes[l]) for l in range(L)]
                m.d.sync += [self.o.payload.exps[l].eq(skid_exps[l]) for l in range(L)]
            with m.Else():
                m.d.sync += self.o.payload.last.eq(last)
                m.d.sync += [self.o.payload.codes[l].eq(codes[l]) for l in range(L)]
                m.d.sync += [self.o.payload.exps[l].eq(exps[l]) for l in range(L)]
        with m.Elif(push):
            m.d.sync += [skid_v.eq(1), skid_last.eq(last)]
            m.d.sync += [skid_codes[l].eq(codes[l]) for l in range(L)]
            m.d.sync += [skid_exps[l].eq(exps[l]) for l in range(L)]
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
        r_top = Signal()
        r_trunc = Signal(24)
        r_up = Signal()
        with m.State("DIV_ROUND"):
            # round bit, sticky bit, ties to even (registered; the increment is the next state's)
            top = quo[26]                                  # 27-bit quotient: drop 3 bits, else 2
            trunc = Mux(top, quo[3:27], quo[2:26])
            rbit = Mux(top, quo[2], quo[1])
            sticky = Mux(top, quo[:2] != 0, quo[0]) | (rem != 0)
            m.d.sync += [r_top.eq(top), r_trunc.eq(trunc), r_up.eq(rbit & (sticky | trunc[0]))]
            m.next = "DIV_ROUND2"
        with m.State("DIV_ROUND2"):
            d = Mux(r_top, 3, 2)
            cm = (r_trunc + r_up)[:25]
            ovf = cm[24]
            m.d.sync += [c_man.eq(Mux(r == 0, 0, Mux(ovf, 1 << 23, cm[:24]))),
                         c_exp.eq(d + ovf - T)]
            m.next = "INFO"

    def _channel_exp(self, ri, r):
        """``e = #{e in 1..E_max : r_i * 2**e <= r}``."""
        if not self.e_max:
            return Const(0, 1)
        return sum(((ri << ee) <= r).as_unsigned() for ee in range(1, self.e_max + 1))

    def _float_datapath(self, m, en, sv, s_x, s_d, s_e, s_last, c_man, c_exp, bl, rdn, r):
        """Stages 2..10 of float mode: ``P = x * C``; ``V = RN24(P)``; requantize
        ``V * 2**-(bl - ec - e)``. Returns the output stage's ``(codes, exps, last, valid)``.

        Stages (each one register): 2 channel exponent ``e``, ``|x|``; 3 the two partial products
        ``|x| * C[:12]``, ``|x| * C[12:]`` and the shift ``bl - ec - e``; 4 ``|P|``; 5 the rounding
        position ``d = max(bitlen(|P|) - 24, 0)``; 6 truncation, round/sticky/LSB; 7 ``RN24(|P|)``;
        8 the signed ``V``; 9 ``V * 2**(b+1-s)`` (integer part, ``b+1`` fraction bits, the sticky bit
        of the rest); 10 the rounding increment and the clamp decisions; then the output register.
        """
        w, L, T, b, qmax = self.in_width, self.lanes, self.div_t, self.rand_bits, self.qmax
        n_st = self.latency - 1
        pw = w + 25
        sh_min = T - 4 - self.e_max
        sh_max = w + T - 2
        assert sh_min > 0, "float mode: the requantization shift is a right shift"
        qbits = qmax.bit_length() + 1
        # the signed V of stage 8 has pw + 1 bits; requantize() widens it to wx with one sign bit
        wx = max(pw + 1, sh_max) + 1

        def line(name, shape, first, last_stage):
            """A delay line: ``{stage: Signal}`` for stages ``first..last_stage``."""
            return {j: Signal(shape, name=f"s{j}_{name}") for j in range(first, last_stage + 1)}

        with m.If(en):
            for j in range(2, n_st):
                m.d.sync += [sv[j].eq(sv[j - 1]), s_last[j].eq(s_last[j - 1])]
        codes, exps = [], []
        for l in range(L):
            e = line(f"e{l}", self.e_bits, 2, n_st - 1)
            d = line(f"d{l}", b, 2, 10)
            neg = line(f"neg{l}", 1, 2, 8)
            sh = line(f"sh{l}", range(sh_max + 1), 3, 9)
            lomask = line(f"lomask{l}", wx, 4, 9)
            ax = Signal(w, name=f"s2_ax{l}")
            pp_lo = Signal(w + 12, name=f"s3_pplo{l}")
            pp_hi = Signal(w + 12, name=f"s3_pphi{l}")
            a = line(f"ap{l}", pw - 1, 4, 6)
            dsh = Signal(range(pw), name=f"s5_rnd{l}")
            trunc = Signal(pw - 1, name=f"s6_trunc{l}")
            rb_up = Signal(name=f"s6_up{l}")
            onehot = Signal(pw, name=f"s6_inc{l}")
            pr = Signal(pw, name=f"s7_pr{l}")
            v = Signal(signed(pw + 1), name=f"s8_v{l}")
            ip = Signal(signed(wx), name=f"s9_ip{l}")
            ft = Signal(b + 1, name=f"s9_ft{l}")
            sticky_lo = Signal(name=f"s9_sticky{l}")
            sel_max = Signal(name=f"s10_max{l}")
            sel_min = Signal(name=f"s10_min{l}")
            q_small = Signal(signed(qbits), name=f"s10_q{l}")
            with m.If(en):
                for line_ in (e, d, neg, sh, lomask, a):
                    ks = sorted(line_)
                    for j0, j1 in zip(ks, ks[1:]):
                        m.d.sync += line_[j1].eq(line_[j0])
                # stage 2: channel exponent, |x| and its sign
                x1 = s_x[1][l]
                m.d.sync += [e[2].eq(self._channel_exp(self._ri1[l], r)), d[2].eq(s_d[1][l]),
                             ax.eq(abs_unsigned(x1)), neg[2].eq(x1[-1])]
                # stage 3: |x| * C as two registered partial products; the requantization shift
                m.d.sync += [pp_lo.eq(ax * c_man[:12]), pp_hi.eq(ax * c_man[12:]),
                             sh[3].eq((bl - c_exp - e[2]).as_unsigned()[:len(sh[3])])]
                # stage 4: |P| (< 2**(pw-2)); the mask of V's bits below the requantizer's kept
                # fraction (the shift is known here, V is not yet)
                lo = Signal(range(sh_max + 1), name=f"rq_lo{l}")
                m.d.comb += lo.eq(Mux(sh[3] > b + 1, sh[3] - (b + 1), 0))
                m.d.sync += [a[4].eq(pp_lo + (pp_hi << 12)),
                             lomask[4].eq(~(Const(-1, signed(wx + 1)) << lo)[:wx])]
                # stage 5: rounding position to 24 significant bits
                lp = bit_length(m, a[4], f"ap_bitlen{l}")
                m.d.sync += dsh.eq(Mux(lp > 24, lp - 24, 0))
                # stage 6: truncation, round bit, sticky bit, LSB (ties to even)
                mask = Signal(pw - 1, name=f"rn_mask{l}")
                m.d.comb += mask.eq(~(Const(-1, signed(pw)) << dsh)[:pw - 1])
                smask = Signal(pw - 1, name=f"rn_smask{l}")
                m.d.comb += smask.eq(mask >> 1)
                a5 = a[5]
                rbit = Cat(Const(0, 1), a5).bit_select(dsh, 1)      # a[d - 1], 0 for d = 0
                lsb = a5.bit_select(dsh, 1)
                sticky = (a5 & smask) != 0
                m.d.sync += [trunc.eq(a5 & ~mask), rb_up.eq(rbit & (sticky | lsb)),
                             onehot.eq(Const(1, pw) << dsh)]
                # stage 7: RN24(|P|)
                m.d.sync += pr.eq(trunc + Mux(rb_up, onehot, 0))
                # stage 8: V = sign * RN24(|P|)
                m.d.sync += v.eq(Mux(neg[8 - 1], -pr, pr))
                # stage 9: z = floor(V * 2**(b+1-s)): integer part, b+1 fraction bits, sticky of the rest
                vx = Signal(signed(wx), name=f"rq_vx{l}")
                m.d.comb += vx.eq(v)
                z = Signal(signed(wx + b + 1), name=f"rq_z{l}")
                m.d.comb += z.eq((vx << (b + 1)) >> sh[8])
                m.d.sync += [ip.eq(z >> (b + 1)), ft.eq(z.as_unsigned()[:b + 1]),
                             sticky_lo.eq((vx.as_unsigned() & lomask[8]) != 0)]
                # stage 10: up = SR or RDN increment; clamp(ip + up, -qmax, qmax) decisions
                dd = d[9]
                r_odd = Cat(Const(1, 1), dd[:b - 1], ~dd[b - 1])
                up_sr = (ft + r_odd)[b + 1]
                stk = (ft[:b] != 0) | sticky_lo if b > 0 else sticky_lo
                up_rdn = ft[b] & (stk | ip[0])
                up = Signal(name=f"rq_up{l}")
                m.d.comb += up.eq(Mux(rdn, up_rdn, up_sr))
                m.d.sync += [sel_max.eq((ip > qmax) | ((ip == qmax) & up)),
                             sel_min.eq((ip < -qmax - 1) | ((ip == -qmax - 1) & ~up)),
                             q_small.eq(ip[:qbits] + up)]
            codes.append(Mux(sel_max, qmax, Mux(sel_min, -qmax, q_small)))
            exps.append(e[n_st - 1])
        return codes, exps, s_last[n_st - 1], sv[n_st - 1]
