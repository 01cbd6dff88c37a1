"""SkidBuffer (hw.skid): every element through, in order, under random stalls on both sides;
one element per cycle when nothing stalls."""

import random

import pytest
from amaranth.sim import Simulator

from hw.skid import SkidBuffer


def _run(p_valid, p_ready, n=300, seed=0):
    dut = SkidBuffer(16)
    rng = random.Random(seed)
    data = [rng.randrange(1 << 16) for _ in range(n)]
    got, cycles = [], [0]

    async def tb(ctx):
        k = 0
        while len(got) < n:
            offer = k < n and rng.random() < p_valid
            ready = rng.random() < p_ready
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload, data[k])
            ctx.set(dut.o.ready, ready)
            took_in = offer and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid) and ready:
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
            cycles[0] += 1
            k += took_in
            assert cycles[0] < 20 * n, "stalled"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return data, got, cycles[0]


@pytest.mark.parametrize("p_valid,p_ready,seed", [(1.0, 1.0, 0), (0.7, 0.5, 1), (1.0, 0.3, 2), (0.3, 1.0, 3)])
def test_every_element_passes_in_order(p_valid, p_ready, seed):
    data, got, _ = _run(p_valid, p_ready, seed=seed)
    assert got == data


def test_full_throughput_with_one_cycle_latency():
    data, got, cycles = _run(1.0, 1.0, n=200)
    assert got == data and cycles == 200 + 1
