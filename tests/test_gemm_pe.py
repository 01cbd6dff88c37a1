"""ProcessingElement: configuration checks, Amaranth-sim unit test and cocotb test (same vectors)."""

import json

import gc
import warnings

import pytest
from amaranth.sim import Simulator

from hw import numerics as nx
from hw.gemm import formats as fm
from hw.gemm.pe import ProcessingElement, a_operand
from sim.vectors import pe_expected, pe_vectors

FORMAT_SETS = [("int4",), ("log4",), ("shift",), ("int4", "log4", "shift")]
K_MAX = 16
EXTRA = ProcessingElement.LATENCY + 2


def run_pe_amaranth(formats, beats):
    pe = ProcessingElement(k_max=K_MAX, formats=formats)
    sim = Simulator(pe)
    sim.add_clock(1e-8)
    observed = []

    async def bench(ctx):
        for beat in beats + [{"a": 0, "m": 0, "s": 0, "last": 0}] * EXTRA:
            ctx.set(pe.a_in, a_operand(beat["a"], formats))
            ctx.set(pe.b_in, {"m": beat["m"], "s": beat["s"]})
            ctx.set(pe.last_in, beat["last"])
            observed.append(ctx.get(pe.out))      # out in the cycle this beat is applied
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    return observed


@pytest.mark.parametrize("formats", FORMAT_SETS, ids="-".join)
def test_pe_amaranth(formats):
    beats = pe_vectors(formats, K_MAX, seed=len(formats))
    observed = run_pe_amaranth(formats, beats)
    assert observed == pe_expected(beats, ProcessingElement.LATENCY, EXTRA)


def test_pe_worst_case_reaches_accumulator_bound():
    """-8 * -8 (and each format's largest product) accumulated k_max times is exact and needs the
    full derived width: one bit less could not hold it."""
    for formats in FORMAT_SETS:
        _, _, acc_width = ProcessingElement.resolve_config(K_MAX, formats)
        worst = max(8 * fb[3] << fb[2] for fb in map(fm.format_bounds, formats)) * K_MAX
        assert worst <= 2 ** (acc_width - 1) - 1
        assert worst > 2 ** (acc_width - 2) - 1


@pytest.mark.parametrize("k_max,formats,width", [
    (1024, ("int4",), 18), (256, ("int4",), 16), (1024, ("log4",), 21), (1024, ("shift",), 20),
    (1024, ("int4", "log4", "shift"), 21), (4608, ("int4",), 20)])
def test_pe_width_follows_contract(k_max, formats, width):
    _, _, acc_width = ProcessingElement.resolve_config(k_max, formats)
    expected = max(nx.accumulator_width(k_max, 8, fm.format_bounds(f)[3], fm.format_bounds(f)[2])
                   for f in formats)
    assert acc_width == expected == width


@pytest.mark.parametrize("kwargs,match", [
    (dict(k_max=0), r"k_max must be 1\.\.16777216, got 0"),
    (dict(k_max=16, formats=("int8",)), r"unknown B format 'int8'"),
    (dict(k_max=16, formats=()), r"at least one"),
    (dict(k_max=1024, formats=("int4",), acc_width=17), r"acc_width 17 is too narrow for k_max=1024.*at least 18"),
    (dict(k_max=16, acc_width=65), r"acc_width must be 2\.\.64, got 65"),
    (dict(k_max=16.5), r"k_max must be an int"),
])
def test_pe_bad_configuration(kwargs, match):
    # A component that fails validation was still registered as "must be elaborated"; collect it
    # here, with that warning silenced, rather than in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            ProcessingElement(**kwargs)
        gc.collect()


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_pe_cocotb(simulator, tmp_path):
    """The cocotb testbench (sim/tb/tb_pe.py) on the PE's Verilog: the same vectors as the
    Amaranth test, checked by the testbench's own model and compared across simulators."""
    from sim.runner import run_cocotb, verilog_for
    formats = ("int4", "log4", "shift")
    beats = pe_vectors(formats, K_MAX, seed=3)
    vec, res = tmp_path / "vec.json", tmp_path / "res.json"
    vec.write_text(json.dumps({"formats": list(formats), "beats": beats}))
    vfile = verilog_for(lambda: ProcessingElement(k_max=K_MAX, formats=formats), f"pe_k{K_MAX}_unified")
    run_cocotb(simulator, vfile, "tb_pe", env={"TETRAD_VECTORS": str(vec), "TETRAD_RESULTS": str(res)})
    observed = json.loads(res.read_text())
    assert observed == pe_expected(beats, ProcessingElement.LATENCY, EXTRA)
    assert observed == run_pe_amaranth(formats, beats)
