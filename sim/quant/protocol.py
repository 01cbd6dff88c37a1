"""One stream driver/monitor for every quantizer unit, written once over a small signal adapter so the
same code runs under Amaranth's simulator and under cocotb (Icarus, Verilator).

A :class:`Job` is pure data (packed integers), so it can be handed to a cocotb subprocess as JSON:

* ``cfg`` -- the packed ``cfg`` port value, held for the whole job, and one ``start`` pulse;
* ``writes`` -- per-cycle port assignments applied before ``start`` (e.g. loading an affine memory);
* ``inputs`` -- packed payloads for the input stream ``i``, in order;
* ``outputs`` -- for each output stream, how many beats to collect.

The driver keeps ``lib.stream`` rules: a payload is held until it is accepted; ``valid`` and ``ready``
are randomized (``valid_prob``, ``ready_prob``) to exercise back-pressure, or held high for timing runs.
It records the cycle of every transfer so tests can check latency and throughput.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

__all__ = ["Job", "JobResult", "drive", "AmaranthIO", "run_amaranth"]


@dataclass
class Job:
    cfg: int
    inputs: list[int]
    outputs: dict[str, int]
    writes: list[dict[str, int]] = field(default_factory=list)
    valid_prob: float = 1.0
    ready_prob: float = 1.0
    seed: int = 0
    max_cycles: int = 10_000_000

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        return cls(**d)


@dataclass
class JobResult:
    outputs: dict[str, list[int]]
    out_cycles: dict[str, list[int]]
    in_cycles: list[int]
    cycles: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "JobResult":
        return cls(**d)


async def drive(io, job: Job) -> JobResult:
    """Run one job on a unit through ``io`` (an adapter with ``set``, ``get``, ``settle``, ``tick``).

    Port names are flat Verilog-style names: ``i__payload``, ``o__valid``, ``cfg``...
    """
    rng = random.Random(job.seed)
    outs = {name: [] for name in job.outputs}
    out_cycles = {name: [] for name in job.outputs}
    in_cycles = []
    for name in job.outputs:
        io.set(f"{name}__ready", 0)
    io.set("i__valid", 0)
    io.set("start", 0)
    io.set("cfg", job.cfg)
    for wr in job.writes:
        for k, v in wr.items():
            io.set(k, v)
        await io.tick()
    io.set("start", 1)
    await io.tick()
    io.set("start", 0)
    cycle = 0
    idx = 0
    presenting = False
    n_in = len(job.inputs)
    while True:
        if not presenting and idx < n_in and (job.valid_prob >= 1.0 or rng.random() < job.valid_prob):
            presenting = True
            io.set("i__payload", job.inputs[idx])
        io.set("i__valid", int(presenting))
        readies = {}
        for name in job.outputs:
            rd = int(job.ready_prob >= 1.0 or rng.random() < job.ready_prob)
            readies[name] = rd
            io.set(f"{name}__ready", rd)
        await io.settle()
        if presenting and io.get("i__ready"):
            in_cycles.append(cycle)
            idx += 1
            presenting = False
        done = idx == n_in
        for name, want in job.outputs.items():
            if readies[name] and io.get(f"{name}__valid"):
                outs[name].append(io.get(f"{name}__payload"))
                out_cycles[name].append(cycle)
            if len(outs[name]) < want:
                done = False
        await io.tick()
        cycle += 1
        if done and not io.get("busy"):
            break
        if cycle > job.max_cycles:
            raise TimeoutError(f"job did not finish in {job.max_cycles} cycles: {idx}/{n_in} inputs taken, "
                               + ", ".join(f"{k}: {len(v)}/{job.outputs[k]}" for k, v in outs.items()))
    io.set("i__valid", 0)
    for name in job.outputs:
        io.set(f"{name}__ready", 0)
    return JobResult(outputs=outs, out_cycles=out_cycles, in_cycles=in_cycles, cycles=cycle)


class AmaranthIO:
    """Adapter for an Amaranth testbench context: flat names map onto the component's members."""

    def __init__(self, ctx, dut):
        self.ctx = ctx
        self.dut = dut
        self._cache = {}

    def _sig(self, name):
        s = self._cache.get(name)
        if s is None:
            obj = self.dut
            for part in name.split("__"):
                obj = getattr(obj, part)
            s = obj.as_value() if hasattr(obj, "as_value") else obj
            self._cache[name] = s
        return s

    def set(self, name, value):
        self.ctx.set(self._sig(name), value)

    def get(self, name):
        v = self.ctx.get(self._sig(name))
        return v

    async def settle(self):
        pass

    async def tick(self):
        await self.ctx.tick()


def run_amaranth(dut, job, vcd: str | None = None):
    """Run ``job`` (or a list of jobs, back to back in one simulation) on ``dut`` in Amaranth's
    simulator (100 MHz clock); returns a :class:`JobResult` (or a list of them)."""
    from amaranth.sim import Simulator

    jobs = job if isinstance(job, (list, tuple)) else [job]
    results = []

    async def tb(ctx):
        io = AmaranthIO(ctx, dut)
        for j in jobs:
            results.append(await drive(io, j))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return results if isinstance(job, (list, tuple)) else results[0]
