"""WaveDrom waveforms of the quantizer units, recorded from Amaranth simulation of the real gateware.

``python -m sim.quant.waves [shiftquant|luq|l1norm|rng] [--png docs/img]`` prints a WaveDrom JSON (paste
into https://wavedrom.com/editor.html) and, with ``--png``, draws it (:mod:`sim.waveplot`); the figures
in docs/HARDWARE.md come from this module.
"""

from __future__ import annotations

import json
import sys

from sim.quant.packing import unpack_struct, unpack_lanes
from sim.quant.protocol import AmaranthIO, Job, drive

__all__ = ["record", "wavedrom", "figure"]


class _RecordingIO(AmaranthIO):
    def __init__(self, ctx, dut, watch):
        super().__init__(ctx, dut)
        self.watch = watch
        self.rows = []

    async def settle(self):
        self.rows.append({name: self.get(name) for name in self.watch})


def record(dut, job: Job, watch: list[str]) -> list[dict]:
    """Run ``job`` and return, per cycle of the stream phase, the values of ``watch`` (flat names)."""
    from amaranth.sim import Simulator
    box = {}

    async def tb(ctx):
        io = _RecordingIO(ctx, dut, watch)
        await drive(io, job)
        box["rows"] = io.rows

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return box["rows"]


def _wave_bits(vals):
    out, prev = "", None
    for v in vals:
        c = "1" if v else "0"
        out += "." if c == prev else c
        prev = c
    return out


def _wave_data(vals, labels):
    wave, data, prev = "", [], object()
    for v, lab in zip(vals, labels):
        if lab is None:
            wave += "x" if prev is not None else "."
            prev = None
        elif v == prev:
            wave += "."
        else:
            wave += "="
            data.append(lab)
            prev = v
    return wave, data


def wavedrom(rows, signals, title: str, start: int = 0, stop: int | None = None) -> dict:
    """``signals``: list of ``(label, name, kind, fmt)``; kind "bit" or "data" (``fmt(value) -> str``,
    or ``None`` for don't-care)."""
    rows = rows[start:stop]
    sig = [{"name": "clk", "wave": "p" + "." * (len(rows) - 1)}]
    for label, name, kind, fmt in signals:
        vals = [r[name] for r in rows]
        if kind == "bit":
            sig.append({"name": label, "wave": _wave_bits(vals)})
        else:
            labels = [fmt(v, r) for v, r in zip(vals, rows)]
            wave, data = _wave_data(vals, labels)
            sig.append({"name": label, "wave": wave, "data": data})
    return {"signal": sig, "head": {"text": title}, "config": {"hscale": 1}}


def figure(unit: str) -> dict:
    """The documentation figure for one unit (small tensors, back-to-back streams)."""
    import torch
    from hw.quant import L1Norm, LogQuantizer, RandomStream, ShiftQuantizer
    from sim.quant.units import L1NormCodec, LogQuantCodec, ShiftQuantCodec

    def lanes_fmt(width, n):
        return lambda v, r: ",".join(str(x) for x in unpack_lanes(v, width, n, True))

    if unit == "shiftquant":
        dut = ShiftQuantizer(in_width=16, lanes=2, max_channels=16)
        x = torch.tensor([[300, -41, 7, 2], [-9, 12, 0, 3]])
        job = ShiftQuantCodec(dut).job(x, seed=7, rounding="sr")
        watch = ["start", "i__valid", "i__ready", "i__payload", "info__valid", "info__payload",
                 "o__valid", "o__ready", "o__payload", "busy"]
        rows = record(dut, job, watch)
        info = lambda v, r: (lambda d: f"r={d['max_abs']} k={d['scale_exp']}")(unpack_struct(dut.info_layout, v)) \
            if r["info__valid"] else None
        out = lambda v, r: (lambda d: f"q={d['codes']} e={d['exps']}")(unpack_struct(dut.out_layout, v)) \
            if r["o__valid"] else None
        sig = [("i.valid", "i__valid", "bit", None), ("i.ready", "i__ready", "bit", None),
               ("i.payload", "i__payload", "data",
                lambda v, r: lanes_fmt(16, 2)(v, r) if r["i__valid"] else None),
               ("info.valid", "info__valid", "bit", None), ("info.payload", "info__payload", "data", info),
               ("o.valid", "o__valid", "bit", None), ("o.payload", "o__payload", "data", out),
               ("busy", "busy", "bit", None)]
        return wavedrom(rows, sig, "ShiftQuantizer (pow2, lanes=2): pass 1, info, pass 2 (latency 3)")
    if unit == "luq":
        dut = LogQuantizer(in_width=16, lanes=2)
        x = torch.tensor([[1000, -5, 300, 64]])
        job = LogQuantCodec(dut).job(x, seed=3)
        watch = ["i__valid", "i__ready", "i__payload", "info__valid", "info__payload", "o__valid",
                 "o__payload", "busy"]
        rows = record(dut, job, watch)
        info = lambda v, r: (lambda d: f"r={d['max_abs']} k={d['alpha_exp']}")(unpack_struct(dut.info_layout, v)) \
            if r["info__valid"] else None
        out = lambda v, r: str(unpack_struct(dut.out_layout, v)["codes"]) if r["o__valid"] else None
        sig = [("i.valid", "i__valid", "bit", None), ("i.ready", "i__ready", "bit", None),
               ("i.payload", "i__payload", "data",
                lambda v, r: lanes_fmt(16, 2)(v, r) if r["i__valid"] else None),
               ("info.valid", "info__valid", "bit", None), ("info.payload", "info__payload", "data", info),
               ("o.valid", "o__valid", "bit", None), ("o.codes", "o__payload", "data", out),
               ("busy", "busy", "bit", None)]
        return wavedrom(rows, sig, "LogQuantizer (lanes=2): pass 1, info (alpha = 2**k), pass 2 (latency 3)")
    if unit == "l1norm":
        dut = L1Norm(in_width=8, lanes=2, max_n=8, recip_bits=6)
        x = torch.tensor([[20, -4, 9, 1], [3, 3, -8, 0], [-1, 6, 2, 2]], dtype=torch.int8)
        codec = L1NormCodec(dut)
        job = codec.job(x, dim=-1, seed=1)
        watch = ["i__valid", "i__ready", "i__payload", "stats__valid", "stats__payload", "o__valid",
                 "o__payload", "busy"]
        rows = record(dut, job, watch)
        st = lambda v, r: (lambda d: f"S={d['sum']} D={d['abs_dev']} R={d['recip']}")(
            unpack_struct(dut.stats_layout, v)) if r["stats__valid"] else None
        out = lambda v, r: str(unpack_struct(dut.out_layout, v)["codes"]) if r["o__valid"] else None
        sig = [("i.valid", "i__valid", "bit", None), ("i.ready", "i__ready", "bit", None),
               ("i.payload", "i__payload", "data",
                lambda v, r: lanes_fmt(8, 2)(v, r) if r["i__valid"] else None),
               ("stats.valid", "stats__valid", "bit", None), ("stats.payload", "stats__payload", "data", st),
               ("o.valid", "o__valid", "bit", None), ("o.codes", "o__payload", "data", out),
               ("busy", "busy", "bit", None)]
        return wavedrom(rows, sig, "L1Norm (lanes=2, n=4, B_r=6): three rows in flight; a row every "
                                   "max(n/lanes, B_r + 5) = 11 cycles, output 6 cycles after its stats beat")
    if unit == "rng":
        from amaranth.sim import Simulator
        dut = RandomStream(rand_bits=16, lanes=2)
        rows = []

        async def tb(ctx):
            ctx.set(dut.seed, 1)
            ctx.set(dut.restart, 1)
            rows.append({"restart": 1, "valid": ctx.get(dut.o.valid), "ready": 0, "p": 0})
            await ctx.tick()
            ctx.set(dut.restart, 0)
            for c in range(12):
                rdy = int(c not in (7, 8))
                ctx.set(dut.o.ready, rdy)
                rows.append({"restart": 0, "valid": ctx.get(dut.o.valid), "ready": rdy,
                             "p": ctx.get(dut.o.payload.as_value())})
                await ctx.tick()
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(tb)
        sim.run()
        sig = [("restart", "restart", "bit", None), ("o.valid", "valid", "bit", None),
               ("o.ready", "ready", "bit", None),
               ("o.payload", "p", "data", lambda v, r: ",".join(f"{d:04x}" for d in unpack_lanes(v, 16, 2, False))
                if r["valid"] else None)]
        return wavedrom(rows, sig, "RandomStream (16-bit draws, lanes=2): restart, 5-cycle latency, "
                                   "back-pressure")
    raise ValueError(f"unknown unit {unit!r}; choose shiftquant, luq, l1norm or rng")


UNITS = ("rng", "shiftquant", "luq", "l1norm")


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m sim.quant.waves",
                                 description="Record the quantizer units' waveforms in Amaranth simulation; "
                                             "print them as WaveDrom JSON and optionally draw PNGs.")
    ap.add_argument("units", nargs="*", metavar="UNIT",
                    help=f"units to record, any of {', '.join(UNITS)} (default: all)")
    ap.add_argument("--png", metavar="DIR", help="also write DIR/quant_<unit>_waveform.png")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    bad = [u for u in args.units if u not in UNITS]
    if bad:
        ap.error(f"unknown unit(s) {', '.join(bad)}; choose from {', '.join(UNITS)}")
    for unit in args.units or UNITS:
        doc = figure(unit)
        print(json.dumps(doc))
        if args.png:
            from sim.waveplot import plot_wavedrom
            plot_wavedrom(doc, f"{args.png}/quant_{unit}_waveform.png")


if __name__ == "__main__":
    main()
