"""GemmEngine: configuration checks, an Amaranth-sim regression program (tiling, transposes,
accumulate, rejected commands) checked against the golden model, the cycle counter, and the cocotb
test running the same program on Icarus and Verilator."""

import gc
import warnings

import pytest
import torch

from hw.gemm.engine import GemmEngine
from sim.amaranth_sim import run_program
from sim.model import check_results
from sim.program import EngineConfig, Step, encode_b
from sim.vectors import engine_program

# The small engine of the default suite (shared with test_sim_run_gemm.py: one build per simulator).
SMALL = EngineConfig(rows=3, cols=2, k_max=64, a_depth=1024, b_depth=1024, c_depth=256)


def test_engine_program_amaranth():
    steps = engine_program(SMALL, seed=11)
    results = run_program(SMALL, steps)
    assert check_results(SMALL, steps, results) == []
    assert sum(r.error for r in results) == 6          # the six commands that must be rejected


def test_engine_program_amaranth_4x4():
    cfg = EngineConfig(rows=4, cols=4, k_max=32, a_depth=512, b_depth=512, c_depth=128)
    steps = engine_program(cfg, seed=12)
    assert check_results(cfg, steps, run_program(cfg, steps)) == []


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 2), (2, 1), (2, 3)])
def test_engine_program_edge_shapes(rows, cols):
    """One- and two-row arrays: the drain's row flags (`d_row_last`, set a beat ahead) wrap every
    beat or every other beat."""
    cfg = EngineConfig(rows=rows, cols=cols, k_max=32, a_depth=512, b_depth=512, c_depth=256)
    steps = engine_program(cfg, seed=14)
    assert check_results(cfg, steps, run_program(cfg, steps)) == []


def test_engine_cycle_counter():
    """`cycles` of a GEMM: one beat per cycle over all tiles, plus a fixed overhead paid once per GEMM
    (command checks, buffer read, feed FIFO, array fill and the last tile's drain): rows + cols + L + 16."""
    cfg = SMALL
    m, k, n = 3 * cfg.rows, 40, 2 * cfg.cols
    tiles = 3 * 2
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-8, 8, (m, k), generator=g)
    b = torch.randint(-8, 8, (k, n), generator=g)
    steps = [Step("LOAD_A", m=m, k=k, a=a.flatten().tolist()),
             Step("LOAD_B", k=k, n=n, b=encode_b(b.flatten().tolist(), "int4")),
             Step("GEMM", m=m, k=k, n=n), Step("READ_C", m=m, n=n, read=m * n)]
    results = run_program(cfg, steps)
    assert check_results(cfg, steps, results) == []
    cycles = results[2].cycles
    or_levels = 1                                        # ceil(log6(3))
    assert cycles == tiles * k + cfg.rows + cfg.cols + or_levels + 16


class _WritesDuringReads(GemmEngine):
    """An engine whose ``hazard`` claims a collision whenever LOAD_A takes an element: the
    simulators' hazard checks must stop such a run (the real engine never raises it)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.hazard.eq(self.a_in.valid & self.a_in.ready)   # the later assignment wins
        return m


def test_hazard_check_stops_a_run():
    """``run_program`` asserts ``hazard`` never rises: the evidence that the buffers may be built
    without read-during-write logic (hw.gemm.buffer.NO_RW_CHECK) comes from every engine test."""
    cfg = SMALL
    steps = [Step("LOAD_A", m=cfg.rows, k=4, a=[1] * (cfg.rows * 4))]
    engine = _WritesDuringReads(cfg.rows, cfg.cols, k_max=cfg.k_max, formats=cfg.formats,
                                a_depth=cfg.a_depth, b_depth=cfg.b_depth, c_depth=cfg.c_depth,
                                dim_bits=cfg.dim_bits)
    with pytest.raises(AssertionError, match=r"GemmEngine\.hazard rose at cycle \d+"):
        run_program(cfg, steps, engine=engine)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rows=0, cols=2), r"rows must be 1\.\.64, got 0"),
    (dict(rows=4, cols=4, a_depth=2), r"a_depth must be 4\.\.1048576, got 2"),
    (dict(rows=4, cols=4, c_depth=0), r"c_depth must be 1\.\.1048576, got 0"),
    (dict(rows=4, cols=4, k_max=70000), r"k_max must be 1\.\.65535, got 70000"),
    (dict(rows=4, cols=4, dim_bits=3), r"dim_bits must be 4\.\.20, got 3"),
    (dict(rows=4, cols=4, formats=["int2"]), r"unknown B format 'int2'"),
    (dict(rows=4, cols=4, k_max=1024, acc_width=20, formats=["log4"]), r"acc_width 20 is too narrow"),
])
def test_engine_bad_configuration(kwargs, match):
    # A component that fails validation was still registered as "must be elaborated"; collect it
    # here, with that warning silenced, rather than in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            GemmEngine(**kwargs)
        gc.collect()


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_engine_cocotb(simulator):
    """The cocotb testbench (sim/tb/tb_engine.py: driver, c_out monitor, model, checker) on the
    engine's Verilog, with the Amaranth test's program; the results must also equal Amaranth's."""
    from sim.cocotb_sim import run_program as run_cocotb_program
    steps = engine_program(SMALL, seed=11)
    results = run_cocotb_program(SMALL, steps, simulator, check=True)
    assert check_results(SMALL, steps, results) == []
    reference = run_program(SMALL, steps)
    assert [(r.error, r.cycles, r.data) for r in results] == \
           [(r.error, r.cycles, r.data) for r in reference]


# The regression program at K_max = 1024 is ~100k cycles of LOAD traffic: Verilator only; Icarus and
# Amaranth run it on builds with a shorter K_max.
LARGE = [((8, 8), "verilator", 1024), ((16, 16), "verilator", 1024), ((8, 8), "icarus", 64),
         ((8, 8), "amaranth", 64), ((16, 16), "icarus", 64), ((16, 16), "amaranth", 32)]


@pytest.mark.slow
@pytest.mark.timeout(2400)       # a cold Verilator build of the 16 x 16 engine is 10+ min on 2 busy cores
@pytest.mark.parametrize("shape,simulator,k_max", LARGE,
                         ids=[f"{s[0]}x{s[1]}-{sim}-kmax{k}" for s, sim, k in LARGE])
def test_engine_program_large(shape, simulator, k_max):
    cfg = EngineConfig(rows=shape[0], cols=shape[1], k_max=k_max)
    steps = engine_program(cfg, seed=13)
    if simulator == "amaranth":
        results = run_program(cfg, steps)
    else:
        from sim.cocotb_sim import run_program as run_cocotb_program
        results = run_cocotb_program(cfg, steps, simulator, check=True)
    assert check_results(cfg, steps, results) == []
