"""Scripted byte exchanges with the :class:`hw.top.Accelerator` (``uart=False``) in Amaranth's simulator,
for the link's unit tests: send a request, collect its response frame, next request.

Each script item is ``bytes`` (sent as they are; a response is awaited only if ``expect`` says so) or
``("wait", cycles)`` (let the clock run, e.g. past the receiver's timeout).
"""

from __future__ import annotations

from hw import wire

__all__ = ["run_script"]


def run_script(dut, script, *, max_cycles: int = 200_000, expect=None):
    """Run ``script`` on ``dut``; returns ``(frames, raw_tx_bytes, cycles)``.

    ``expect`` (list parallel to ``script``): how many response frames to wait for after each item
    (default: 1 for bytes items)."""
    from amaranth.sim import Simulator

    frames: list = []
    raw = bytearray()
    state = {"cycles": 0}
    dec = wire.FrameDecoder()

    async def tb(ctx):
        ctx.set(dut.tx.ready, 1)
        cyc = 0
        for n, item in enumerate(script):
            if isinstance(item, tuple) and item[0] == "wait":
                for _ in range(item[1]):
                    _, _, tv, tp = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
                    cyc += 1
                    if tv:
                        raw.append(tp)
                        frames.extend(dec.feed(bytes((tp,))))
                continue
            want = len(frames) + (expect[n] if expect is not None else 1)
            i = 0
            data = bytes(item)
            while i < len(data) or len(frames) < want:
                if i < len(data):
                    ctx.set(dut.rx.valid, 1)
                    ctx.set(dut.rx.payload, data[i])
                else:
                    ctx.set(dut.rx.valid, 0)
                _, _, rr, tv, tp = await ctx.tick().sample(dut.rx.ready, dut.tx.valid, dut.tx.payload)
                cyc += 1
                if i < len(data) and rr:
                    i += 1
                if tv:
                    raw.append(tp)
                    frames.extend(dec.feed(bytes((tp,))))
                if cyc > max_cycles:
                    raise TimeoutError(f"no answer to script item {n} within {max_cycles} cycles "
                                       f"({len(frames)} frames so far)")
            ctx.set(dut.rx.valid, 0)
        state["cycles"] = cyc

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return frames, bytes(raw), state["cycles"]
