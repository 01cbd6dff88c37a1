"""L1Norm: fully quantized L1 normalization of rows in gateware, bit-exact with
``host.quant.l1norm.l1_norm_int`` (ALGORITHMS.md §3, proposed reading; docs/numerics/shiftquant_l1norm.md).

Per row (a normalization set of ``n`` integer codes ``q_j``), in exact integers:

1. ``S = sum q_j``  (while the row streams in);
2. ``t_j = n q_j - S``, ``D = sum |t_j|``  (so ``mu = S/n``, ``sigma_1 = D/n**2``);
3. ``Den = K D + E`` (``K = round(kappa 2**F_k)``, ``E = round(eps/s_x n**2 2**F_k)``, host constants),
   ``R = round_half_up(n 2**(B_r + L - L_n) / Den)`` with ``L = bitlen(Den)``, ``L_n = bitlen(n)``:
   **one reciprocal per row**, a restoring division of the two operands normalized to the same width,
   ``B_r + 2`` quotient bits -- ``R`` in ``(2**(B_r-1), 2**(B_r+1))``, relative error ``<= 2**-B_r``;
   ``w = B_r + L - L_n - F_k``; ``Den = 0`` gives ``R = 0``;
4. ``h_j = floor(t_j R 2**(F_y + F_a - w))``; optional affine ``h <- floor(h G_j 2**-F_g) + B_j``;
5. clamp ``h`` to ``+-(q_max + 1) 2**F_a``, round ``h / 2**F_a`` (RDN ties to even, or SR with draw ``i``
   for element ``i``, row-major), clamp to ``+-q_max``.
"""

from __future__ import annotations

import math
from fractions import Fraction

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import numerics as nx
from hw.quant.common import (
    abs_unsigned, bit_length, check_int, check_lanes, check_rand_bits, requantize,
)
from hw.quant.rng import RandomStream

__all__ = ["L1Norm"]

_WHO = "L1Norm"


def _sum_tree(values):
    values = list(values)
    while len(values) > 1:
        nxt = [a + b for a, b in zip(values[0::2], values[1::2])]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


class L1Norm(wiring.Component):
    """Fully quantized L1 normalization of the rows of a stream (LayerNorm-style sets).

    Rows of ``n`` input codes arrive on ``i`` (``lanes`` codes of one row per beat); for each row the
    unit emits one ``stats`` beat (``sum``, ``abs_dev``, ``recip``, ``recip_shift``) and ``n/lanes``
    ``o`` beats of output codes (the first together with or after the stats beat). Four row slots let
    the input, the statistics pass, the reciprocal and the output pass work on four rows at once. A set over other dimensions (BatchNorm's ``(N, H, W)`` per channel) is the same unit fed
    with the permuted tensor (``sim.quant.run_quantizer`` does this).

    Parameters
    ----------
    in_width : int
        Signed input code width, ``2..16``.
    lanes : {1, 2, 4, 8, 16}
        Codes per beat; ``n`` must be a multiple.
    max_n : int
        Largest row length (row buffer capacity), a multiple of ``lanes``, ``lanes..65535``.
    out_bits : int
        Output code width ``2..16`` (symmetric grid ``+-(2**(out_bits-1)-1)``).
    out_frac_bits : int or None
        ``F_y`` (output step ``2**-F_y``), ``-16..30``; default ``out_bits - 3``.
    kappa_frac_bits, recip_bits, acc_frac_bits : int
        ``F_k`` (``1..30``), ``B_r`` (``2..30``), ``F_a`` (``1..30``), as in ``l1_norm_int``.
    affine : bool
        Build the per-position ``gamma``/``beta`` (``G_j``, ``B_j`` for position ``j`` in the row)
        memory, loaded through ``aff_*``.
    gamma_frac_bits : int
        ``F_g`` (``0..30``).
    gamma_bits, beta_bits : int or None
        Signed widths of ``G`` and ``B`` (defaults ``F_g + 3``: ``|gamma| < 4``; ``F_y + F_a + 4``).
    kappa_min, kappa_max : float
        Range of ``kappa`` the datapath is sized for (``K`` must lie in
        ``[ceil(kappa_min 2**F_k), floor(kappa_max 2**F_k)]``); defaults 0.5 and 4.
    rand_bits : {4, 8, 16}

    Members
    -------
    start : In(1)
        Pulse while idle; ``cfg`` is sampled then.
    cfg : In(StructLayout)
        ``n`` (row length), ``rows`` (``>= 1``), ``kappa`` (``K``), ``eps`` (``E``), ``seed``, ``rdn``.
    busy : Out(1)
    i : In(stream.Signature(ArrayLayout(signed(in_width), lanes)))
        Input codes, row after row.
    stats : Out(stream.Signature(StructLayout))
        Per row: ``sum`` (``S``), ``abs_dev`` (``D``), ``recip`` (``R``), ``recip_shift`` (``w``).
    o : Out(stream.Signature(StructLayout))
        ``codes`` (``lanes`` x ``signed(out_bits)``), ``last`` (last beat of a row).
    aff_we, aff_addr, aff_data : In
        Affine memory write port (``affine=True``): beat ``aff_addr`` gets ``aff_data.gamma`` and
        ``aff_data.beta`` (``lanes`` entries each). Write while idle.

    Latency
    -------
    ``stats.valid`` rises ``n/lanes + B_r + 9`` cycles after a row's last input beat when the stages
    are free (statistics pass ``n/lanes + 3``, reciprocal ``B_r + 5``, hand-overs). The row's first ``o``
    beat follows its ``stats`` beat by :attr:`latency_out` = 6 cycles (read, ``t``, ``t*R``, shift,
    affine/clamp, rounding), then one beat per clock.

    Throughput
    ----------
    Four rows are in flight, one per stage (input, statistics pass, reciprocal, output pass), each in
    its own buffer slot. A new row completes every ``max(n/lanes, B_r + 5)`` cycles: for
    ``n/lanes >= B_r + 5`` the output runs at one beat (``lanes`` elements) per clock across rows, with
    input accepted at the same rate.
    """

    def __init__(self, *, in_width: int = 8, lanes: int = 1, max_n: int = 1024, out_bits: int = 8,
                 out_frac_bits: int | None = None, kappa_frac_bits: int = 16, recip_bits: int = 16,
                 acc_frac_bits: int = 16, affine: bool = False, gamma_frac_bits: int = 16,
                 gamma_bits: int | None = None, beta_bits: int | None = None, kappa_min: float = 0.5,
                 kappa_max: float = 4.0, rand_bits: int = nx.DEFAULT_RAND_BITS):
        self._MustUse__silence = True      # an object whose arguments are rejected is not 'unused'
        self.in_width = check_int(_WHO, "in_width", in_width, 2, 16)
        self.lanes = check_lanes(_WHO, lanes)
        self.max_n = check_int(_WHO, "max_n", max_n, self.lanes, 65535)
        if self.max_n % self.lanes:
            raise ValueError(f"{_WHO}: max_n must be a multiple of lanes ({self.lanes}), got {self.max_n}")
        self.out_bits = check_int(_WHO, "out_bits", out_bits, 2, 16)
        self.f_y = self.out_bits - 3 if out_frac_bits is None else \
            check_int(_WHO, "out_frac_bits", out_frac_bits, -16, 30)
        self.f_k = check_int(_WHO, "kappa_frac_bits", kappa_frac_bits, 1, 30)
        self.b_r = check_int(_WHO, "recip_bits", recip_bits, 2, 30)
        self.f_a = check_int(_WHO, "acc_frac_bits", acc_frac_bits, 1, 30)
        if not isinstance(affine, bool):
            raise ValueError(f"{_WHO}: affine must be a bool, got {affine!r}")
        self.affine = affine
        self.f_g = check_int(_WHO, "gamma_frac_bits", gamma_frac_bits, 0, 30)
        self.gamma_bits = check_int(_WHO, "gamma_bits", self.f_g + 3 if gamma_bits is None else gamma_bits,
                                    2, 40)
        self.beta_bits = check_int(_WHO, "beta_bits",
                                   max(self.f_y + self.f_a + 4, 2) if beta_bits is None else beta_bits, 2, 64)
        if not (isinstance(kappa_min, (int, float)) and isinstance(kappa_max, (int, float))
                and 0 < kappa_min <= kappa_max and math.isfinite(kappa_max)):
            raise ValueError(f"{_WHO}: need 0 < kappa_min <= kappa_max (finite), got {kappa_min!r}, {kappa_max!r}")
        self.rand_bits = check_rand_bits(_WHO, rand_bits)
        self.k_min = max(1, math.ceil(Fraction(kappa_min) * 2 ** self.f_k))
        self.k_max = math.floor(Fraction(kappa_max) * 2 ** self.f_k)
        if self.k_max < self.k_min:
            raise ValueError(f"{_WHO}: kappa_max * 2**kappa_frac_bits must be >= 1")

        W, L = self.in_width, self.lanes
        self.qmax = 2 ** (self.out_bits - 1) - 1
        self.nb = self.max_n.bit_length()
        self.s_width = W + self.nb                       # |S| <= n 2**(W-1)
        self.t_width = W + self.nb + 1                   # |t| <= n 2**W
        self.d_width = W + 2 * self.nb                   # D <= n**2 2**W
        self.kw = self.k_max.bit_length()
        self.den_width = self.kw + self.d_width + 1
        self.eps_width = self.den_width - 1
        self.qw = self.b_r + 2                           # quotient bits of R
        # |h| <= n 2**(F_k+F_y+F_a) / (2 K) (1 + 2**(1-B_r)) + 1  (|t| <= D/2, Den >= K D)
        hb = Fraction(self.max_n * 2, 1) * Fraction(2) ** (self.f_k + self.f_y + self.f_a) \
            / (4 * self.k_min) * (1 + Fraction(2) ** (1 - self.b_r)) + 2
        self.h_width = math.ceil(hb).bit_length() + 1
        self.sh_c = self.f_y + self.f_a - self.b_r + self.f_k       # shift = sh_c + L_n - L
        self.sh_min = self.sh_c + 1 - self.den_width
        self.sh_max = self.sh_c + self.nb - 1
        self.recip_shift_range = (self.b_r + 1 - self.nb - self.f_k, self.b_r + self.den_width - 1 - self.f_k)
        self.latency_out = 6
        self.slots = 4                                   # rows in flight: input, statistics, reciprocal, output
        lo, hi = self.recip_shift_range
        self.rsh_bits = max(abs(lo), abs(hi) + 1).bit_length() + 1

        self.cfg_layout = data.StructLayout({
            "n": unsigned(16), "rows": unsigned(32), "kappa": unsigned(self.kw),
            "eps": unsigned(self.eps_width), "seed": unsigned(32), "rdn": unsigned(1)})
        self.stats_layout = data.StructLayout({
            "sum": signed(self.s_width), "abs_dev": unsigned(self.d_width),
            "recip": unsigned(self.qw), "recip_shift": signed(self.rsh_bits)})
        self.out_layout = data.StructLayout({
            "codes": data.ArrayLayout(signed(self.out_bits), L), "last": unsigned(1)})
        self.aff_layout = data.StructLayout({
            "gamma": data.ArrayLayout(signed(self.gamma_bits), L),
            "beta": data.ArrayLayout(signed(self.beta_bits), L)})
        self.depth = self.max_n // L
        members = {
            "start": In(1),
            "cfg": In(self.cfg_layout),
            "busy": Out(1),
            "i": In(stream.Signature(data.ArrayLayout(signed(W), L))),
            "stats": Out(stream.Signature(self.stats_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        }
        if affine:
            members.update({"aff_we": In(1), "aff_addr": In(range(max(self.depth, 2))),
                            "aff_data": In(self.aff_layout)})
        super().__init__(members)
        self._MustUse__silence = False

    def config(self) -> dict:
        return dict(in_width=self.in_width, lanes=self.lanes, max_n=self.max_n, out_bits=self.out_bits,
                    out_frac_bits=self.f_y, kappa_frac_bits=self.f_k, recip_bits=self.b_r,
                    acc_frac_bits=self.f_a, affine=self.affine, gamma_frac_bits=self.f_g,
                    gamma_bits=self.gamma_bits, beta_bits=self.beta_bits, rand_bits=self.rand_bits,
                    kappa_min=self.k_min / 2 ** self.f_k, kappa_max=self.k_max / 2 ** self.f_k)

    def elaborate(self, platform):
        m = Module()
        W, L, b = self.in_width, self.lanes, self.rand_bits
        lane_bits = (L - 1).bit_length()
        depth = self.depth
        abits = max(depth - 1, 1).bit_length()
        NS = self.slots
        m.submodules.rng = rng = RandomStream(rand_bits=b, lanes=L)

        # ------------------------------------------------------------------ configuration
        n = Signal(16)
        nbeats = Signal(16)
        ln = Signal(range(17))
        kap = Signal(self.kw)
        eps = Signal(self.eps_width)
        rdn = Signal()
        busy = Signal()
        m.d.comb += self.busy.eq(busy)
        rows_in = Signal(32)          # rows still to be received
        rows_out = Signal(32)         # rows still to be emitted

        # ------------------------------------------------------------------ row slots
        # A row moves through four stages, each working on a different slot at the same time:
        # input (phase 0 -> 1), statistics pass (1 -> 2), reciprocal (2 -> 3), output pass (3 -> 0).
        buf = memory.Memory(shape=unsigned(W * L), depth=NS * depth, init=[])
        m.submodules.buf = buf
        bw = buf.write_port()
        rs = buf.read_port()          # statistics pass
        ro = buf.read_port()          # output pass
        m.d.comb += [rs.en.eq(0), ro.en.eq(0)]
        phase = [Signal(2, name=f"phase{j}") for j in range(NS)]
        sl_s = [Signal(signed(self.s_width), name=f"slot{j}_sum") for j in range(NS)]
        sl_d = [Signal(self.d_width, name=f"slot{j}_absdev") for j in range(NS)]
        sl_r = [Signal(self.qw, name=f"slot{j}_recip") for j in range(NS)]
        sl_w = [Signal(signed(self.rsh_bits), name=f"slot{j}_w") for j in range(NS)]
        shl_w = max(self.sh_max, 0).bit_length() or 1
        shr_w = max(-self.sh_min, 0).bit_length() or 1
        sl_shl = [Signal(shl_w, name=f"slot{j}_shl") for j in range(NS)]
        sl_shr = [Signal(shr_w, name=f"slot{j}_shr") for j in range(NS)]

        def sel(sigs, idx):
            """Multiplexer over the per-slot registers."""
            out = sigs[0]
            for j in range(1, NS):
                out = Mux(idx == j, sigs[j], out)
            return out

        def phase_is(idx, value):
            return sel(phase, idx) == value

        def addr(beat, slot):
            return Cat(beat[:abits], slot) if depth > 1 else slot

        # ------------------------------------------------------------------ stage 1: input
        in_sel = Signal(range(NS))
        wa = Signal(16)
        s_acc = Signal(signed(self.s_width))
        a_valid = Signal()
        a_sum = Signal(signed(W + lane_bits + 1))
        a_last = Signal()
        a_sel = Signal(range(NS))
        in_ok = busy & (rows_in != 0) & phase_is(in_sel, 0)
        m.d.comb += self.i.ready.eq(in_ok)
        acc_in = self.i.valid & in_ok
        in_last = wa == nbeats - 1
        m.d.comb += [bw.addr.eq(addr(wa, in_sel)), bw.data.eq(self.i.payload.as_value()), bw.en.eq(acc_in)]
        m.d.sync += [a_valid.eq(acc_in), a_last.eq(acc_in & in_last), a_sel.eq(in_sel),
                     a_sum.eq(_sum_tree([self.i.payload[l] for l in range(L)]))]
        with m.If(acc_in):
            m.d.sync += wa.eq(Mux(in_last, 0, wa + 1))
            with m.If(in_last):
                # move to the next slot at once so the next row's first beat cannot land in this one
                m.d.sync += [rows_in.eq(rows_in - 1), in_sel.eq(Mux(in_sel == NS - 1, 0, in_sel + 1))]
        with m.If(a_valid):
            with m.If(a_last):
                m.d.sync += s_acc.eq(0)
                for j in range(NS):
                    with m.If(a_sel == j):
                        m.d.sync += [sl_s[j].eq(s_acc + a_sum), phase[j].eq(1)]
            with m.Else():
                m.d.sync += s_acc.eq(s_acc + a_sum)

        def t_of(data, s):
            """``t = n q - S`` for every lane of a buffer word."""
            out = []
            for l in range(L):
                t = Signal(signed(self.t_width))
                m.d.comb += t.eq(n * data.word_select(l, W).as_signed() - s)
                out.append(t)
            return out

        # ------------------------------------------------------------------ stage 2: statistics pass
        # Reads never stall; every beat carries its slot, its row's S and a last flag, so the next row's
        # pass can start in the cycle after this row's last read.
        st_sel = Signal(range(NS))
        st_ra = Signal(16)
        b0_v, b0_last = Signal(), Signal()
        b0_sel = Signal(range(NS))
        b0_s = Signal(signed(self.s_width))
        b1_v, b1_last = Signal(), Signal()
        b1_sel = Signal(range(NS))
        b1_sum = Signal(self.t_width + lane_bits)
        d_acc = Signal(self.d_width)
        st_go = busy & phase_is(st_sel, 1)
        st_last = st_ra == nbeats - 1
        m.d.comb += [rs.addr.eq(addr(st_ra, st_sel)), rs.en.eq(1)]
        m.d.sync += [b0_v.eq(st_go), b0_last.eq(st_last), b0_sel.eq(st_sel), b0_s.eq(sel(sl_s, st_sel))]
        with m.If(st_go):
            m.d.sync += st_ra.eq(Mux(st_last, 0, st_ra + 1))
            with m.If(st_last):
                m.d.sync += st_sel.eq(Mux(st_sel == NS - 1, 0, st_sel + 1))
        m.d.sync += [b1_v.eq(b0_v), b1_last.eq(b0_last), b1_sel.eq(b0_sel),
                     b1_sum.eq(_sum_tree([abs_unsigned(t) for t in t_of(rs.data, b0_s)]))]
        with m.If(b1_v):
            with m.If(b1_last):
                m.d.sync += d_acc.eq(0)
                for j in range(NS):
                    with m.If(b1_sel == j):
                        m.d.sync += [sl_d[j].eq(d_acc + b1_sum), phase[j].eq(2)]
            with m.Else():
                m.d.sync += d_acc.eq(d_acc + b1_sum)

        # ------------------------------------------------------------------ stage 3: one reciprocal per row
        qw, dw = self.qw, self.den_width
        dv_sel = Signal(range(NS))
        den = Signal(dw)
        lden = Signal(range(dw + 1))
        xreg = Signal(qw)                       # low quotient-many bits of X still to bring in
        yreg = Signal(dw + 1)
        rem = Signal(dw + 2)
        quo = Signal(qw)
        dcnt = Signal(range(qw + 1))
        with m.FSM(name="recip"):
            with m.State("WAIT"):
                with m.If(busy & phase_is(dv_sel, 2)):
                    m.d.sync += den.eq(kap * sel(sl_d, dv_sel) + eps)
                    m.next = "NORM"
            with m.State("NORM"):
                # normalize n and Den to dw bits; R = floor(X / Y), X = Nn 2**(B_r+1) + Dn, Y = 2 Dn
                lv = bit_length(m, den, "den_bitlen")
                dn = Signal(dw)
                nn = Signal(dw)
                m.d.comb += [dn.eq((den << (dw - lv).as_unsigned())[:dw]),
                             nn.eq((n << (dw - ln).as_unsigned())[:dw])]
                x_full = Signal(dw + qw + 1)
                m.d.comb += x_full.eq((nn << (self.b_r + 1)) + dn)
                m.d.sync += [lden.eq(lv), yreg.eq(dn << 1), rem.eq(x_full >> qw),
                             xreg.eq(x_full[:qw]), quo.eq(0), dcnt.eq(qw)]
                m.next = "DIV"
            with m.State("DIV"):
                rem2 = Cat(xreg[-1], rem[:-1])
                ge = rem2 >= yreg
                m.d.sync += [rem.eq(Mux(ge, rem2 - yreg, rem2)), quo.eq(Cat(ge, quo[:-1])),
                             xreg.eq(xreg << 1), dcnt.eq(dcnt - 1)]
                with m.If(dcnt == 1):
                    m.next = "SHIFT"
            with m.State("SHIFT"):
                zero = den == 0
                wv = Signal(signed(self.rsh_bits + 2))
                m.d.comb += wv.eq(self.b_r + lden - ln - self.f_k)
                sh = Signal(signed(self.rsh_bits + 8))
                m.d.comb += sh.eq(self.f_y + self.f_a - wv)
                for j in range(NS):
                    with m.If(dv_sel == j):
                        m.d.sync += [
                            sl_r[j].eq(Mux(zero, 0, quo)), sl_w[j].eq(Mux(zero, 0, wv)),
                            sl_shl[j].eq(Mux(zero | (sh < 0), 0, sh.as_unsigned())[:shl_w]),
                            sl_shr[j].eq(Mux(zero | (sh > 0), 0, (-sh).as_unsigned())[:shr_w]),
                            phase[j].eq(3)]
                m.d.sync += dv_sel.eq(Mux(dv_sel == NS - 1, 0, dv_sel + 1))
                m.next = "WAIT"

        # ------------------------------------------------------------------ stage 4: output pass
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        out_sel = Signal(range(NS))
        ra = Signal(16)
        stats_sent = Signal()
        ready3 = busy & phase_is(out_sel, 3)
        m.d.comb += self.stats.valid.eq(ready3 & (ra == 0) & ~stats_sent)
        m.d.comb += [self.stats.payload.sum.eq(sel(sl_s, out_sel)),
                     self.stats.payload.abs_dev.eq(sel(sl_d, out_sel)),
                     self.stats.payload.recip.eq(sel(sl_r, out_sel)),
                     self.stats.payload.recip_shift.eq(sel(sl_w, out_sel))]
        with m.If(self.stats.valid & self.stats.ready):
            m.d.sync += stats_sent.eq(1)
        # a row's first beat goes out together with (or after) its stats beat
        issue = Signal()
        m.d.comb += issue.eq(ready3 & en & rng.o.valid & ((ra != 0) | stats_sent | self.stats.ready))
        out_last = ra == nbeats - 1
        m.d.comb += [ro.addr.eq(addr(ra, out_sel)), ro.en.eq(en), rng.o.ready.eq(issue)]
        with m.If(issue):
            m.d.sync += ra.eq(Mux(out_last, 0, ra + 1))
            with m.If(out_last):
                # every read of this slot is issued: free it for the input stage
                for j in range(NS):
                    with m.If(out_sel == j):
                        m.d.sync += phase[j].eq(0)
                m.d.sync += [out_sel.eq(Mux(out_sel == NS - 1, 0, out_sel + 1)), stats_sent.eq(0),
                             rows_out.eq(rows_out - 1)]

        # ------------------------------------------------------------------ control
        dv = Signal(5)                # pipeline valid: d0 issued, d1 t, d2 t*R, d3 h, d4 affine/clamp
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += [rng.seed.eq(self.cfg.seed), rng.restart.eq(self.start)]
                with m.If(self.start):
                    m.d.sync += [n.eq(self.cfg.n), nbeats.eq(self.cfg.n >> lane_bits),
                                 kap.eq(self.cfg.kappa), eps.eq(self.cfg.eps), rdn.eq(self.cfg.rdn),
                                 rows_in.eq(self.cfg.rows), rows_out.eq(self.cfg.rows), busy.eq(1),
                                 in_sel.eq(0), st_sel.eq(0), dv_sel.eq(0), out_sel.eq(0), wa.eq(0),
                                 st_ra.eq(0), ra.eq(0), s_acc.eq(0), d_acc.eq(0), stats_sent.eq(0)]
                    m.d.sync += [phase[j].eq(0) for j in range(NS)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.sync += ln.eq(bit_length(m, n, "n_bitlen"))
                with m.If((rows_out == 0) & (dv == 0) & ~self.o.valid):
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"

        # ------------------------------------------------------------------ output pass datapath
        if self.affine:
            amem = memory.Memory(shape=unsigned(len(self.aff_data.as_value())), depth=depth, init=[])
            m.submodules.affine = amem
            aw = amem.write_port()
            ar = amem.read_port()
            m.d.comb += [aw.addr.eq(self.aff_addr), aw.data.eq(self.aff_data.as_value()),
                         aw.en.eq(self.aff_we & ~busy), ar.addr.eq(ra), ar.en.eq(en)]
            aff_now = data.View(self.aff_layout, ar.data)
        tr_w = self.t_width + self.qw + 1
        hw_ = self.h_width
        # per-beat row parameters travel with the beat, so consecutive rows follow back to back
        d0_s = Signal(signed(self.s_width))
        d0_r, d1_r = Signal(self.qw), Signal(self.qw)
        d_shl = [Signal(shl_w, name=f"d{s}_shl") for s in range(3)]
        d_shr = [Signal(shr_w, name=f"d{s}_shr") for s in range(3)]
        d_last = Signal(5)
        d_draw = [[Signal(b, name=f"d{s}_draw{l}") for l in range(L)] for s in range(5)]
        d1_t = [Signal(signed(self.t_width), name=f"d1_t{l}") for l in range(L)]
        d2_tr = [Signal(signed(tr_w), name=f"d2_tr{l}") for l in range(L)]
        d3_h = [Signal(signed(hw_), name=f"d3_h{l}") for l in range(L)]
        lim = (self.qmax + 1) << self.f_a
        cw = lim.bit_length() + 1
        d4_h = [Signal(signed(cw), name=f"d4_h{l}") for l in range(L)]
        if self.affine:
            gw, bwid = self.gamma_bits, self.beta_bits
            d_g = [[Signal(signed(gw), name=f"d{s}_g{l}") for l in range(L)] for s in (1, 2, 3)]
            d_b = [[Signal(signed(bwid), name=f"d{s}_b{l}") for l in range(L)] for s in (1, 2, 3)]
        t_out = t_of(ro.data, d0_s)
        with m.If(en):
            m.d.sync += [dv.eq(Cat(issue, dv[:-1])), d_last.eq(Cat(out_last, d_last[:-1]))]
            m.d.sync += [d0_s.eq(sel(sl_s, out_sel)), d0_r.eq(sel(sl_r, out_sel)), d1_r.eq(d0_r),
                         d_shl[0].eq(sel(sl_shl, out_sel)), d_shr[0].eq(sel(sl_shr, out_sel))]
            for s in range(1, 3):
                m.d.sync += [d_shl[s].eq(d_shl[s - 1]), d_shr[s].eq(d_shr[s - 1])]
            m.d.sync += [d_draw[0][l].eq(rng.o.payload[l]) for l in range(L)]
            for s in range(1, 5):
                m.d.sync += [d_draw[s][l].eq(d_draw[s - 1][l]) for l in range(L)]
            codes = []
            for l in range(L):
                m.d.sync += d1_t[l].eq(t_out[l])
                m.d.sync += d2_tr[l].eq(d1_t[l] * d1_r)
                # h = floor(t R 2**sh): a left shift (exact: |h| is bounded) or an arithmetic right shift
                m.d.sync += d3_h[l].eq(((d2_tr[l] >> d_shr[2]) << d_shl[2])[:hw_])
                if self.affine:
                    m.d.sync += [d_g[0][l].eq(aff_now.gamma[l]), d_b[0][l].eq(aff_now.beta[l])]
                    for s in range(1, 3):
                        m.d.sync += [d_g[s][l].eq(d_g[s - 1][l]), d_b[s][l].eq(d_b[s - 1][l])]
                    hv = ((d3_h[l] * d_g[2][l]) >> self.f_g) + d_b[2][l]
                else:
                    hv = d3_h[l]
                m.d.sync += d4_h[l].eq(Mux(hv > lim, lim, Mux(hv < -lim, -lim, hv)))
                codes.append(requantize(m, d4_h[l], self.f_a, qmax=self.qmax, rdn=rdn, draw=d_draw[4][l],
                                        rand_bits=b, shift_min=self.f_a, shift_max=self.f_a,
                                        name=f"rq{l}"))
            m.d.sync += [self.o.payload.codes[l].eq(codes[l]) for l in range(L)]
            m.d.sync += [self.o.valid.eq(dv[4]), self.o.payload.last.eq(d_last[4])]
        return m
