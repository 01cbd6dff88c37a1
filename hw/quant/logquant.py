"""LogQuantizer: LUQ (ALGORITHMS.md §4) with a power-of-two alpha in gateware, bit-exact with
``host.quant.luq(x, alpha_mode="pow2", max_source="absmax")`` for fixed-point input.

Input values are ``A = x * 2**E_x`` (``x`` a signed ``in_width``-bit integer, one tensor exponent that
the unit never sees). With ``r = max|x|``:

* ``alpha = 2**k`` input LSBs, ``k = ceil(log2 r) - max_exp = bitlen(r - 1) - max_exp`` -- the smallest
  power of two ``>= r / 2**max_exp`` (golden: ``2**(k + E_x)``; an all-zero tensor gives ``alpha = 1``
  there, every code 0 here);
* per element, ``a = |x|``, ``P = max(bitlen(a) - 1, k)``, ``f = a / 2**P`` minus its leading one when
  ``a >= 2**P`` (so ``f in [0, 1)`` is the position inside the bin ``[2**P, 2**(P+1))`` or, below
  ``alpha``, the underflow fraction ``a / alpha``);
* ``up = floor(f + u)`` with the contract's ``u`` of draw ``i`` -- only ``f`` truncated to ``b + 1``
  fraction bits matters, so it is the carry of a ``(b+1)``-bit add;
* ``|code| = (P - k + 1) * [a >= 2**P] + up``, ``code = sign(x) * |code|`` (0 for 0): the LOG code of
  ``hw.numerics.LogFormat`` (``value = sign * alpha * 2**(|code|-1)``).

This is the golden model's "as if in exact arithmetic" decision (stochastic underflow below alpha,
log-domain SR inside a binade), computed on integers.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import numerics as nx
from hw.quant.common import abs_unsigned, bit_length, check_int, check_lanes, check_rand_bits, max_tree
from hw.quant.rng import RandomStream

__all__ = ["LogQuantizer"]

_WHO = "LogQuantizer"


class LogQuantizer(wiring.Component):
    """LUQ with power-of-two alpha: stochastic underflow + logarithmic SR to LOG4 codes, two passes.

    The tensor (any length, ``lanes`` elements per beat, row-major) is sent **twice** on ``i``: pass 1
    finds ``max|x|``, then one ``info`` beat (``max_abs``, ``alpha_exp``) is emitted and must be taken,
    then pass 2 produces one ``o`` beat of codes per input beat.

    Parameters
    ----------
    in_width : int
        Width of the signed input integers, ``4..24``.
    max_exp : {6, 7}
        Top exponent (``LogFormat``): 6 = strict FP4 [1,3,0] (codes ``-7..7``), 7 = the reference code's
        17-level variant (codes ``-8..8``).
    lanes : {1, 2, 4, 8, 16}
        Elements per beat.
    rand_bits : {4, 8, 16}
        Bits per random draw.

    Members
    -------
    start : In(1)
        Pulse (while idle) to begin; ``cfg`` is sampled then.
    cfg : In(StructLayout)
        ``beats`` (number of beats per pass, ``>= 1``), ``seed`` (32-bit stream seed).
    busy : Out(1)
    i : In(stream.Signature(ArrayLayout(signed(in_width), lanes)))
        The tensor, pass 1 then pass 2.
    info : Out(stream.Signature(StructLayout))
        ``max_abs`` (``r``) and ``alpha_exp`` (``k``; ``alpha = 2**k`` input LSBs).
    o : Out(stream.Signature(StructLayout))
        ``codes`` (``lanes`` x ``signed(4)`` for max_exp 6, ``signed(5)`` for 7) and ``last``.

    Latency
    -------
    Pass 2: beat accepted in cycle ``t`` is on ``o`` in cycle ``t + 6`` (stages: ``|x|``, bit length,
    bin and shift, fraction, magnitude, code; :attr:`latency`). ``info.valid`` rises 3 cycles after
    the last pass-1 beat (:attr:`gap`). A one-beat skid buffer behind ``o`` keeps ``o.ready`` off the
    pipeline's enable: ``i.ready`` never depends combinationally on ``o.ready``.

    Throughput
    ----------
    One beat (``lanes`` elements) per clock in both passes.
    """

    latency = 6
    gap = 3

    def __init__(self, *, in_width: int = 16, max_exp: int = 6, lanes: int = 1,
                 rand_bits: int = nx.DEFAULT_RAND_BITS):
        self._MustUse__silence = True      # an object whose arguments are rejected is not 'unused'
        self.in_width = check_int(_WHO, "in_width", in_width, 4, 24)
        if isinstance(max_exp, bool) or max_exp not in (6, 7):
            raise ValueError(f"{_WHO}: max_exp must be 6 (strict FP4) or 7 (reference code), got {max_exp!r}")
        self.max_exp = max_exp
        self.fmt = nx.LogFormat(max_exp)
        self.lanes = check_lanes(_WHO, lanes)
        self.rand_bits = check_rand_bits(_WHO, rand_bits)
        self.code_bits = self.fmt.code_bits
        w = self.in_width
        self.cfg_layout = data.StructLayout({"beats": unsigned(32), "seed": unsigned(32)})
        self.info_layout = data.StructLayout({"max_abs": unsigned(w), "alpha_exp": signed(8)})
        self.out_layout = data.StructLayout({
            "codes": data.ArrayLayout(signed(self.code_bits), self.lanes), "last": unsigned(1)})
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
        return dict(in_width=self.in_width, max_exp=self.max_exp, lanes=self.lanes, rand_bits=self.rand_bits)

    def elaborate(self, platform):
        m = Module()
        w, L, b = self.in_width, self.lanes, self.rand_bits
        m.submodules.rng = rng = RandomStream(rand_bits=b, lanes=L)

        beats_m1 = Signal(32)          # cfg.beats - 1, stored at start (no subtractor per beat)
        cnt = Signal(32)
        last_beat = cnt == beats_m1
        r = Signal(w)
        k = Signal(signed(8))
        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        x_in = [self.i.payload[l] for l in range(L)]
        abs_in = [abs_unsigned(x) for x in x_in]
        p1_valid = Signal()
        p1_bmax = Signal(w)

        # Pass-2 pipeline: s0 (|x|, sign, draw) -> s1 (bitlen) -> s2 (shift, base) -> s3 (fraction)
        # -> s4 (magnitude) -> o (code), with a one-beat skid buffer behind ``o`` so that the stages'
        # enable is a local register (``~skid_v``), not ``o.ready`` from the consumer.
        n_st = self.latency - 1
        sv = [Signal(name=f"s{j}_v") for j in range(n_st)]
        skid_v = Signal()
        en = Signal()
        m.d.comb += en.eq(~skid_v)
        idle_pipe = ~skid_v & ~self.o.valid
        for v in sv:
            idle_pipe = idle_pipe & ~v

        with m.FSM(name="fsm") as fsm:
            with m.State("IDLE"):
                m.d.comb += [rng.seed.eq(self.cfg.seed), rng.restart.eq(self.start)]
                with m.If(self.start):
                    m.d.sync += [beats_m1.eq(self.cfg.beats - 1), cnt.eq(0), r.eq(0), busy.eq(1)]
                    m.next = "P1"
            with m.State("P1"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(last_beat):
                        m.next = "P1_DRAIN"
            with m.State("P1_DRAIN"):
                m.next = "CALC"
            with m.State("CALC"):
                # k = bitlen(r - 1) - max_exp = ceil(log2 r) - max_exp (r >= 1); r = 0 -> -max_exp
                blr = bit_length(m, Mux(r == 0, 0, r - 1)[:w], "rm1_bitlen")
                m.d.sync += k.eq(blr - self.max_exp)
                m.next = "INFO"
            with m.State("INFO"):
                m.d.comb += self.info.valid.eq(1)
                with m.If(self.info.ready):
                    m.d.sync += cnt.eq(0)
                    m.next = "P2"
            with m.State("P2"):
                take = Signal()
                m.d.comb += [take.eq(en & rng.o.valid), self.i.ready.eq(take)]
                with m.If(take & self.i.valid):
                    m.d.comb += rng.o.ready.eq(1)
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(last_beat):
                        m.next = "P2_DRAIN"
            with m.State("P2_DRAIN"):
                with m.If(idle_pipe):
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
        m.d.comb += [self.info.payload.max_abs.eq(r), self.info.payload.alpha_exp.eq(k)]

        m.d.sync += [p1_valid.eq(self.i.valid & self.i.ready & fsm.ongoing("P1")),
                     p1_bmax.eq(max_tree(abs_in))]
        with m.If(p1_valid):
            m.d.sync += r.eq(Mux(p1_bmax > r, p1_bmax, r))

        # constants of pass 2, from k (k is set in CALC; these follow one cycle later, in INFO)
        w_k = Signal(range(w + 16), name="w_minus_k")      # w - k for k in -8..w
        m.d.sync += w_k.eq((w - k).as_unsigned()[:len(w_k)])

        accept2 = self.i.valid & self.i.ready & fsm.ongoing("P2")
        s_last = [Signal(name=f"s{j}_last") for j in range(n_st)]
        s0_a = [Signal(w, name=f"s0_a{l}") for l in range(L)]
        s1_a = [Signal(w, name=f"s1_a{l}") for l in range(L)]
        s2_a = [Signal(w, name=f"s2_a{l}") for l in range(L)]
        s1_bl = [Signal(range(w + 1), name=f"s1_bl{l}") for l in range(L)]
        s2_sh = [Signal(range(w + 1), name=f"s2_sh{l}") for l in range(L)]
        s2_base = [Signal(4, name=f"s2_base{l}") for l in range(L)]
        s3_base = [Signal(4, name=f"s3_base{l}") for l in range(L)]
        s3_ft = [Signal(b + 1, name=f"s3_ft{l}") for l in range(L)]
        s4_mag = [Signal(4, name=f"s4_mag{l}") for l in range(L)]
        neg = [[Signal(name=f"s{j}_neg{l}") for l in range(L)] for j in range(n_st)]
        draw = [[Signal(b, name=f"s{j}_d{l}") for l in range(L)] for j in range(4)]

        def code_of(l):
            return Mux(neg[4][l], -s4_mag[l], s4_mag[l])

        with m.If(en):
            m.d.sync += [sv[0].eq(accept2), s_last[0].eq(last_beat)]
            for j in range(1, n_st):
                m.d.sync += [sv[j].eq(sv[j - 1]), s_last[j].eq(s_last[j - 1])]
            for l in range(L):
                m.d.sync += [s0_a[l].eq(abs_in[l]), neg[0][l].eq(x_in[l][-1]),
                             draw[0][l].eq(rng.o.payload[l])]
                for j in range(1, n_st):
                    m.d.sync += neg[j][l].eq(neg[j - 1][l])
                for j in range(1, 4):
                    m.d.sync += draw[j][l].eq(draw[j - 1][l])
                # s1: bitlen(a)
                m.d.sync += [s1_a[l].eq(s0_a[l]), s1_bl[l].eq(bit_length(m, s0_a[l], f"a_bitlen{l}"))]
                # s2: P = max(bitlen - 1, k); shift w - P; base = P - k + 1 = bitlen - k (a >= alpha)
                bl = s1_bl[l]
                normal = Signal(name=f"normal{l}")              # a != 0 and bitlen(a) - 1 >= k
                m.d.comb += normal.eq((bl > k) & (bl != 0))
                ge = Signal(name=f"pos_ge_k{l}")                # bitlen(a) - 1 >= k (a may be 0)
                m.d.comb += ge.eq(bl > k)
                m.d.sync += [
                    s2_a[l].eq(s1_a[l]),
                    s2_sh[l].eq(Mux(ge, (w + 1 - bl).as_unsigned(), w_k)[:len(s2_sh[l])]),
                    s2_base[l].eq(Mux(normal, (bl - k)[:4], 0)),
                ]
                # s3: f * 2**w (leading one dropped by truncation), top b+1 fraction bits
                frac = Signal(w, name=f"frac{l}")
                m.d.comb += frac.eq((s2_a[l] << s2_sh[l])[:w])
                ft = frac[w - b - 1:] if w >= b + 1 else Cat(Const(0, b + 1 - w), frac)
                m.d.sync += [s3_ft[l].eq(ft), s3_base[l].eq(s2_base[l])]
                # s4: up = floor(f + u) (the carry of a (b+1)-bit add); |code| = base + up
                d = draw[3][l]
                r_odd = Cat(Const(1, 1), d[:b - 1], ~d[b - 1])
                up = (s3_ft[l] + r_odd)[b + 1]
                m.d.sync += s4_mag[l].eq(s3_base[l] + up)

        # output register and skid buffer
        skid_codes = [Signal(signed(self.code_bits), name=f"skid_code{l}") for l in range(L)]
        skid_last = Signal()
        push = en & sv[-1]
        with m.If(~self.o.valid | self.o.ready):
            m.d.sync += [self.o.valid.eq(skid_v | push), skid_v.eq(0)]
            with m.If(skid_v):
                m.d.sync += self.o.payload.last.eq(skid_last)
                m.d.sync += [self.o.payload.codes[l].eq(skid_codes[l]) for l in range(L)]
            with m.Else():
                m.d.sync += self.o.payload.last.eq(s_last[-1])
                m.d.sync += [self.o.payload.codes[l].eq(code_of(l)) for l in range(L)]
        with m.Elif(push):
            m.d.sync += [skid_v.eq(1), skid_last.eq(s_last[-1])]
            m.d.sync += [skid_codes[l].eq(code_of(l)) for l in range(L)]
        return m
