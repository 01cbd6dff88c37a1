"""sim.run_gemm: bit-exact against host.gemm.int_gemm on Icarus, Verilator and Amaranth sim, and the
error behaviour of the driver. Small shapes run by default; the large sweeps are marked slow."""

import random

import pytest
import torch

import sim
from host.gemm import int_gemm
from sim.model import check_results
from sim.program import EngineConfig
from sim.vectors import _random_b_value, _worst_matrices, engine_program

SIMULATORS = ["amaranth", "icarus", "verilator"]
FORMATS = ["int4", "log4", "shift"]
SMALL = dict(rows=3, cols=2, k_max=64, a_depth=1024, b_depth=1024, c_depth=256)


def reference(a, b):
    return int_gemm(a, b, out_dtype=torch.int64)


def worst(fmt, m, k, n):
    a, b = _worst_matrices(fmt, m, k, n, random.Random(0))
    return torch.tensor(a), torch.tensor(b)


def random_operands(fmt, m, k, n, seed):
    rng = random.Random(seed)
    a = torch.tensor([[rng.randint(-8, 7) for _ in range(k)] for _ in range(m)])
    b = torch.tensor([[_random_b_value(rng, fmt) for _ in range(n)] for _ in range(k)])
    return a, b


@pytest.mark.parametrize("b_format", FORMATS)
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_run_gemm_worst_cases(simulator, b_format):
    """-8 * -8 (and each format's extreme) accumulated K_max times, all-max, alternating signs and
    all zeros, in a 6 x 64 x 5 GEMM (tiled over the 3 x 2 array in both directions)."""
    a, b = worst(b_format, 6, SMALL["k_max"], 5)
    c, cycles = sim.run_gemm(a, b, b_format=b_format, simulator=simulator, **SMALL)
    assert torch.equal(c, reference(a, b))
    assert c.abs().max() == 8 * int(b.abs().max()) * SMALL["k_max"]     # the bound was reached
    assert cycles > 2 * 3 * SMALL["k_max"]


@pytest.mark.parametrize("simulator", ["amaranth", "icarus"])
def test_run_gemm_features(simulator):
    """Transposed operands (read transposed by the engine, not by the host), accumulate onto an
    existing result, a reduction longer than K_max (split by the driver), K = 1, shapes smaller
    than, equal to and larger than the array."""
    cases = [
        ("log4", 2, 1, 1, dict()),                       # smaller than the array, K = 1
        ("int4", 3, 5, 2, dict(trans_a=True)),           # exactly one tile
        ("shift", 7, 9, 5, dict(trans_b=True)),          # tiled both ways
        ("log4", 4, 150, 3, dict(trans_a=True, trans_b=True)),   # K > k_max: 3 passes
        ("int4", 5, 6, 4, dict(c=True)),                 # accumulate onto C
    ]
    for i, (fmt, m, k, n, opts) in enumerate(cases):
        a, b = random_operands(fmt, m, k, n, seed=i)
        kwargs = dict(SMALL, b_format=fmt, simulator=simulator)
        a_in = a.T.contiguous() if opts.get("trans_a") else a
        b_in = b.T.contiguous() if opts.get("trans_b") else b
        expect = reference(a, b)
        if opts.get("c"):
            c0 = torch.randint(-5000, 5000, (m, n), generator=torch.Generator().manual_seed(i))
            kwargs["c"] = c0
            expect = expect + c0
        c, _ = sim.run_gemm(a_in, b_in, trans_a=opts.get("trans_a", False),
                            trans_b=opts.get("trans_b", False), **kwargs)
        assert torch.equal(c, expect), (fmt, m, k, n, opts)


SHAPES = [(1, 1), (1, 4), (3, 2), (4, 4)]


def _program_on(simulator, rows, cols, k_max=32, seed=21, cfg=None):
    cfg = cfg or EngineConfig(rows=rows, cols=cols, k_max=k_max, a_depth=512, b_depth=512, c_depth=128)
    steps = engine_program(cfg, seed=seed)
    if simulator == "amaranth":
        from sim.amaranth_sim import run_program
        results = run_program(cfg, steps)
    else:
        from sim.cocotb_sim import run_program
        results = run_program(cfg, steps, simulator, check=True)
    assert check_results(cfg, steps, results) == []
    return results


@pytest.mark.parametrize("simulator", ["amaranth", "icarus"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_array_shapes_regression(simulator, shape):
    """Every array shape of the default suite runs the engine regression program (every format at
    K = K_max with worst cases, shapes around the array size, K from 1 to K_max, every transpose,
    accumulate, rejected commands), checked against int_gemm."""
    _program_on(simulator, *shape)


def test_same_vectors_same_results_on_all_simulators():
    """One program, three simulators: identical results, identical cycle counts."""
    runs = [_program_on(s, 3, 2, cfg=EngineConfig(**SMALL)) for s in SIMULATORS]
    flat = [[(r.error, r.cycles, r.data) for r in res] for res in runs]
    assert flat[0] == flat[1] == flat[2]


# ---- errors ---------------------------------------------------------------------------------------

def test_run_gemm_refuses_gemm_larger_than_buffers():
    a = torch.ones((200, 64), dtype=torch.int64)
    b = torch.ones((64, 4), dtype=torch.int64)
    with pytest.raises(ValueError, match=r"too large for the built A buffer: op\(a\) 200x64 needs "
                                         r"5896 words per bank, the 3x2 engine has a_depth=1024"):
        sim.run_gemm(a, b, simulator="icarus", **SMALL)
    with pytest.raises(ValueError, match=r"too large for the built C buffer"):
        sim.run_gemm(torch.ones((40, 2), dtype=torch.int64), torch.ones((2, 40), dtype=torch.int64),
                     simulator="amaranth", **SMALL)


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((torch.full((2, 2), 8), torch.ones(2, 2, dtype=torch.int64)), {}, ValueError, r"a value 8 .* outside INT4"),
    ((torch.ones(2, 2, dtype=torch.int64), torch.full((2, 2), 3)), dict(b_format="log4"), ValueError,
     r"b value 3 .* not representable in log4"),
    ((torch.ones(2, 2, dtype=torch.int64), torch.full((2, 2), 9 * 8)), dict(b_format="shift"), ValueError,
     r"not representable in shift"),
    ((torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64)), dict(b_format="fp4"),
     ValueError, r"unknown b_format 'fp4'"),
    ((torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64)), dict(simulator="vcs"),
     ValueError, r"unknown simulator 'vcs'"),
    ((torch.ones(2, 2), torch.ones(2, 2, dtype=torch.int64)), {}, TypeError, r"integer tensor"),
    ((torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64)), {}, ValueError,
     r"inner dimensions differ"),
    ((torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64)), dict(rows=0), ValueError,
     r"rows must be 1\.\.64, got 0"),
    ((torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64)),
     dict(c=torch.full((2, 2), 2 ** 20)), ValueError, r"leaves no room"),
])
def test_run_gemm_errors(args, kwargs, exc, match):
    kw = dict(SMALL, simulator="amaranth")
    kw.update(kwargs)
    with pytest.raises(exc, match=match):
        sim.run_gemm(*args, **kw)


# ---- slow sweeps -----------------------------------------------------------------------------------

# K = K_max = 1024 (the default build) moves 2 x 8k operands through LOAD, one per cycle: that is a
# minute of Icarus or Amaranth simulation per 8 x 8 GEMM, so 16 x 16 at K = 1024 runs on Verilator
# and at K = 64 on the other two (same build, K <= K_max).
LARGE = [((8, 8), sim, 1024) for sim in SIMULATORS] + [((16, 16), "verilator", 1024)] + \
        [((16, 16), sim, 64) for sim in ("icarus", "amaranth")]


@pytest.mark.slow
@pytest.mark.timeout(2400)       # the first 16 x 16 call builds the engine for Verilator (10+ min)
@pytest.mark.parametrize("b_format", FORMATS)
@pytest.mark.parametrize("shape,simulator,k", LARGE,
                         ids=[f"{s[0]}x{s[1]}-{sim}-K{k}" for s, sim, k in LARGE])
def test_run_gemm_large_worst_cases(shape, simulator, k, b_format):
    """The default build (K_max = 1024): worst cases (-8 * -8 and each format's extremes, all-max,
    alternating, zeros) accumulated K times on 8 x 8 and 16 x 16, tiled in both directions on
    Verilator."""
    rows, cols = shape
    m, n = (rows + 1, cols + 1) if simulator == "verilator" else (rows, cols)
    a, b = worst(b_format, m, k, n)
    c, _ = sim.run_gemm(a, b, b_format=b_format, rows=rows, cols=cols, simulator=simulator)
    assert torch.equal(c, reference(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_run_gemm_k_sweep(simulator):
    """K from 1 to K_max on the 3 x 2 build, every format, random operands."""
    for k in (1, 2, 3, 5, 16, 31, 63, 64):
        fmt = FORMATS[k % 3]
        a, b = random_operands(fmt, 4, k, 3, seed=k)
        c, _ = sim.run_gemm(a, b, b_format=fmt, simulator=simulator, **SMALL)
        assert torch.equal(c, reference(a, b)), k


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES + [(8, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_array_shapes_regression_verilator(shape):
    _program_on("verilator", *shape)
