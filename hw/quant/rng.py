"""The contract's random stream in gateware: counter-based ``wang64-ctr`` (``hw.numerics``).

Word ``w`` of stream ``seed`` is ``mix64(seed << 32 | w)`` (Thomas Wang's ``hash64shift``, seven
multiply-free steps of 64-bit add/xor with constant shifts); draw ``i`` is field ``i mod D`` of word
``i div D`` with ``D = 64 / rand_bits``. Because a word depends only on its index, ``H`` hash pipelines
can produce words ``h, h + H, h + 2H, ...`` side by side and the concatenation is the same stream a
single pipeline (or ``hw.numerics.rng_draws``) produces -- this is how :class:`RandomStream` serves
``lanes`` draws per clock for any lane count.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import numerics as nx

__all__ = ["RandomStream", "mix64_steps", "MIX64_STAGES", "LANES_ALLOWED"]

LANES_ALLOWED = (1, 2, 4, 8, 16)
_M = nx.RNG_MASK64


def mix64_steps():
    """The hash as a list of register-to-register steps, each a function of a 64-bit Amaranth value.

    The seven operations of ``hw.numerics.rng_mix64`` are grouped so that every step holds one carry
    chain (the xor-shift before an add is one LUT level in front of it): 4 steps. ``* 265`` and ``* 21``
    are written as the shift-and-add sums the contract defines them as, so no DSP is inferred.
    """
    def s0(x):
        return ((~x) + (x << 21))[:64]

    def s1(x):
        x = x ^ (x >> 24)
        return (x + (x << 3) + (x << 8))[:64]

    def s2(x):
        x = x ^ (x >> 14)
        return (x + (x << 2) + (x << 4))[:64]

    def s3(x):
        x = x ^ (x >> 28)
        return (x + (x << 31))[:64]

    return [s0, s1, s2, s3]


MIX64_STAGES = len(mix64_steps())


class RandomStream(wiring.Component):
    """Source of the contract's random draws, ``lanes`` consecutive draws per beat.

    Beat ``j`` carries draws ``j*lanes .. j*lanes + lanes - 1`` of stream ``seed`` (lane ``l`` holds draw
    ``j*lanes + l``), exactly ``hw.numerics.rng_draws(seed, ..., rand_bits)``. ``H = max(1,
    lanes*rand_bits/64)`` hash pipelines run side by side, pipeline ``h`` hashing words ``h, h+H, ...``;
    when a beat needs fewer than 64 bits one word is served over ``64 / (lanes*rand_bits)`` beats.

    The pipelines stall as a whole when the output is not taken (a global clock enable), so the stream
    obeys ``lib.stream`` back-pressure and never drops or repeats a draw.

    Parameters
    ----------
    rand_bits : {4, 8, 16}
        Bits per draw (``hw.numerics.RAND_BITS_ALLOWED``).
    lanes : {1, 2, 4, 8, 16}
        Draws per beat.

    Members
    -------
    seed : In(32)
        Stream seed, sampled while ``restart`` is high.
    restart : In(1)
        Synchronous restart: the next beat after it is draw 0 of ``seed``. Any buffered draws are dropped.
    o : Out(stream.Signature(ArrayLayout(unsigned(rand_bits), lanes)))
        The draws.

    Latency
    -------
    ``o.valid`` rises :attr:`latency` (= 5) cycles after the cycle in which ``restart`` is high.

    Throughput
    ----------
    One beat (``lanes`` draws) per clock, indefinitely (words wrap after ``2**32`` words per seed, the
    contract's stream length).
    """

    latency = MIX64_STAGES + 1

    def __init__(self, *, rand_bits: int = nx.DEFAULT_RAND_BITS, lanes: int = 1):
        self._MustUse__silence = True      # an object whose arguments are rejected is not 'unused'
        if rand_bits not in nx.RAND_BITS_ALLOWED:
            raise ValueError(f"RandomStream: rand_bits must be one of {nx.RAND_BITS_ALLOWED}, got {rand_bits!r}")
        if lanes not in LANES_ALLOWED:
            raise ValueError(f"RandomStream: lanes must be one of {LANES_ALLOWED}, got {lanes!r}")
        self.rand_bits = rand_bits
        self.lanes = lanes
        self.beat_bits = lanes * rand_bits
        self.hashes = max(1, self.beat_bits // 64)
        self.beats_per_group = max(1, 64 // self.beat_bits)
        super().__init__({
            "seed": In(32),
            "restart": In(1),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(rand_bits), lanes))),
        })
        self._MustUse__silence = False

    def elaborate(self, platform):
        m = Module()
        steps = mix64_steps()
        n_st = len(steps)
        H = self.hashes
        h_bits = (H - 1).bit_length()

        seed = Signal(32)
        group = Signal(32 - h_bits)              # index of the next group of H words to hash
        pipe = [[Signal(64, name=f"h{h}_s{s}") for s in range(n_st - 1)] for h in range(H)]
        pv = Signal(n_st - 1)                    # valid bit per register stage (shared by the H pipes)
        buf = Signal(64 * H)
        buf_valid = Signal()
        slot = Signal(range(self.beats_per_group))

        # Output: beat `slot` of the buffered group (fields in draw order, LSB first).
        if self.beats_per_group > 1:
            m.d.comb += self.o.payload.eq(buf.word_select(slot, self.beat_bits))
        else:
            m.d.comb += self.o.payload.eq(buf)
        m.d.comb += self.o.valid.eq(buf_valid)

        pop = self.o.valid & self.o.ready
        last_slot = slot == self.beats_per_group - 1
        buf_free = ~buf_valid | (pop & last_slot)
        # Global enable: the pipes move when their last stage is empty or can drain into the buffer.
        adv = ~pv[-1] | buf_free

        with m.If(self.restart):
            m.d.sync += [seed.eq(self.seed), group.eq(0), pv.eq(0), buf_valid.eq(0), slot.eq(0)]
        with m.Else():
            with m.If(pop):
                m.d.sync += slot.eq(Mux(last_slot, 0, slot + 1))
                with m.If(last_slot):
                    m.d.sync += buf_valid.eq(0)
            with m.If(adv):
                m.d.sync += [group.eq(group + 1), pv.eq(Cat(1, pv[:-1]))]
                for h in range(H):
                    word = Cat(Const(h, h_bits), group) if h_bits else group
                    m.d.sync += pipe[h][0].eq(steps[0](Cat(word, seed)))
                    for s in range(1, n_st - 1):
                        m.d.sync += pipe[h][s].eq(steps[s](pipe[h][s - 1]))
                with m.If(pv[-1]):
                    m.d.sync += [buf.eq(Cat(*[steps[-1](pipe[h][-1]) for h in range(H)])),
                                 buf_valid.eq(1)]
        return m

