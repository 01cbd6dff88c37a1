"""Execute a program (:mod:`sim.program`) on the engine's Verilog in Icarus or Verilator via cocotb."""

from __future__ import annotations

import json
import os
import tempfile
import time

from .program import EngineConfig, Step, StepResult, dump_program
from .runner import SIM_BUILD, run_cocotb, verilog_for

__all__ = ["run_program", "engine_verilog"]


def engine_verilog(config: EngineConfig):
    """The engine's Verilog for ``config`` (generated once per configuration and gateware digest)."""
    return verilog_for(config.engine, config.key)


def run_program(config: EngineConfig, steps: list[Step], simulator: str, *, check: bool = False,
                stats: dict | None = None, waves: bool = False) -> list[StepResult]:
    """Run ``steps`` on ``simulator`` (``"icarus"`` or ``"verilator"``); one result per step.

    ``check`` makes the cocotb test itself compare every step with the model (a failing comparison
    raises RuntimeError). ``stats`` receives ``cycles`` (simulated clock cycles) and ``wall_s`` (the
    wall time of the cocotb test itself: no build, no simulator start-up), and ``total_s``."""
    t0 = time.monotonic()
    vfile = engine_verilog(config)
    SIM_BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SIM_BUILD, prefix="prog-") as tmp:
        prog = os.path.join(tmp, "program.json")
        res = os.path.join(tmp, "results.json")
        dump_program(prog, config, steps)
        env = {"TETRAD_PROGRAM": prog, "TETRAD_RESULTS": res, "TETRAD_CHECK": "1" if check else "0"}
        run_cocotb(simulator, vfile, "tb_engine", env=env, waves=waves)
        with open(res) as f:
            raw = json.load(f)
    if stats is not None:
        stats.update(raw["stats"])
        stats["total_s"] = time.monotonic() - t0
    return [StepResult(**r) for r in raw["results"]]
