"""hw.quant.RandomStream: the contract's random stream (hw.numerics) in gateware, bit for bit, for every
lane count and draw width, under back-pressure and restarts (Amaranth simulator)."""

import random

import pytest
from amaranth.sim import Simulator

from hw import numerics as nx
from hw.quant.rng import RandomStream


def collect(dut, seed, n_draws, *, ready_prob=1.0, restart_after=None, seed2=None, bubble_seed=0):
    """Draws taken from the stream; optionally restart (with ``seed2``) after ``restart_after`` beats.
    Returns (draws before restart, draws after restart, cycle of the first valid after start)."""
    out = {"a": [], "b": [], "first": None}

    async def tb(ctx):
        rng = random.Random(bubble_seed)
        ctx.set(dut.seed, seed)
        ctx.set(dut.restart, 1)
        await ctx.tick()
        ctx.set(dut.restart, 0)
        cyc, key, beats = 1, "a", 0
        while len(out["b" if restart_after is not None else "a"]) < n_draws:
            rdy = ready_prob >= 1 or rng.random() < ready_prob
            ctx.set(dut.o.ready, rdy)
            if ctx.get(dut.o.valid):
                if out["first"] is None:
                    out["first"] = cyc
                if rdy:
                    out[key].extend(ctx.get(dut.o.payload))
                    beats += 1
            if restart_after is not None and key == "a" and beats == restart_after:
                ctx.set(dut.o.ready, 0)
                ctx.set(dut.seed, seed2)
                ctx.set(dut.restart, 1)
                await ctx.tick()
                ctx.set(dut.restart, 0)
                key = "b"
                continue
            await ctx.tick()
            cyc += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out


@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_stream_equals_contract(lanes, bits):
    seed = 0x9E3779B9 ^ (lanes * 131 + bits)
    n = 96 * lanes
    out = collect(RandomStream(rand_bits=bits, lanes=lanes), seed, n, ready_prob=0.6, bubble_seed=lanes)
    assert out["a"][:n] == nx.rng_draws(seed, n, bits)


def test_lanes_reproduce_single_lane_stream():
    """Counter-based: 1, 4 and 16 lanes produce the same draw sequence for one seed."""
    seed = 12345
    ref = collect(RandomStream(rand_bits=8, lanes=1), seed, 512)["a"][:512]
    for lanes in (4, 16):
        assert collect(RandomStream(rand_bits=8, lanes=lanes), seed, 512)["a"][:512] == ref


def test_seed_extremes_and_words_beyond_first():
    for seed in (0, 2 ** 32 - 1):
        out = collect(RandomStream(rand_bits=16, lanes=4), seed, 4 * 300)
        assert out["a"][:1200] == nx.rng_draws(seed, 1200, 16)


def test_restart_mid_stream_starts_at_draw_zero():
    out = collect(RandomStream(rand_bits=4, lanes=2), 7, 200, ready_prob=0.7, restart_after=13, seed2=99)
    assert out["a"][:26] == nx.rng_draws(7, 26, 4)
    assert out["b"][:200] == nx.rng_draws(99, 200, 4)


def test_latency_is_documented_value():
    dut = RandomStream(rand_bits=16, lanes=1)
    out = collect(dut, 1, 8)
    assert out["first"] == RandomStream.latency == 5


@pytest.mark.parametrize("kw, msg", [
    (dict(rand_bits=5), "rand_bits must be one of"),
    (dict(rand_bits=32), "rand_bits must be one of"),
    (dict(lanes=3), "lanes must be one of"),
    (dict(lanes=0), "lanes must be one of"),
    (dict(lanes=32), "lanes must be one of"),
])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RandomStream(**kw)
