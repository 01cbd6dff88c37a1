"""The board registry (boards/): every board is complete, instantiable, and unknown names are refused."""

import pytest

import boards
from boards import Board, board_names, get_board


def test_registry_lists_the_three_boards():
    assert {"arty", "ulx3s", "icebreaker"} <= set(board_names())


@pytest.mark.parametrize("name", board_names())
def test_board_is_complete(name):
    b = get_board(name)
    assert b.name == name
    assert b.family in boards.FAMILIES
    assert set(boards.RESOURCE_KEYS) <= set(b.limits)
    assert all(v > 0 for v in b.limits.values())
    assert 1 <= b.rows <= 64 and 1 <= b.cols <= 64
    assert b.clock_mhz > 0
    # the UART must run at an integer-ish number of clocks per bit (>= 4 for a sampling receiver)
    assert b.clock_mhz * 1e6 / b.baud >= 4


@pytest.mark.parametrize("name", board_names())
def test_platform_has_the_link_pins(name):
    b = get_board(name)
    plat = b.platform()
    # the oscillator: the design clock itself, or the PLL's input
    osc = b.osc_mhz if b.osc_mhz is not None else b.clock_mhz
    assert plat.default_clk_frequency == pytest.approx(osc * 1e6)
    res = plat.lookup(b.uart, 0)
    assert {sub.name for sub in res.ios if hasattr(sub, "name")} >= {"rx", "tx"}
    for extra in b.tie_high:
        plat.lookup(extra, 0)


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(ValueError) as exc:
        get_board("de10nano")
    msg = str(exc.value)
    assert "de10nano" in msg
    for name in board_names():
        assert name in msg


def test_board_validates_its_fields():
    good = get_board("arty")
    with pytest.raises(ValueError, match="ecp5 family only"):
        Board(**{**good.__dict__, "osc_mhz": 12.0})
    with pytest.raises(ValueError, match="family"):
        Board(**{**good.__dict__, "family": "xc9"})
    with pytest.raises(ValueError, match="limits lack"):
        Board(**{**good.__dict__, "limits": {"lut": 1}})
    with pytest.raises(ValueError, match="rows must be 1..64"):
        Board(**{**good.__dict__, "rows": 0})
    ecp5 = get_board("ulx3s")
    with pytest.raises(ValueError, match="pnr_seeds must be an integer 1..16"):
        Board(**{**ecp5.__dict__, "pnr_seeds": 0})
    with pytest.raises(ValueError, match="no place and route here"):
        Board(**{**good.__dict__, "pnr_opts": "--placer-heap-timingweight 30"})


def test_icebreaker_default_accelerator_is_the_lean_one_and_elaborates():
    """The iCEBreaker's default design (docs/BOARDS.md): 2x2 INT4, no quantizer units, 7-bit
    dimensions, multipliers on the SB_MAC16s; it elaborates, and the simulated board (``python -m
    sim.board --board icebreaker``) builds exactly it, with the byte link instead of the UART."""
    from amaranth.hdl import Fragment

    from hw.build import make_accelerator
    from sim.board import BoardConfig
    b = get_board("icebreaker")
    assert "-dsp" in b.synth_opts.split()
    acc = make_accelerator(b, b.rows, b.cols)
    h = acc.hello
    assert (h["rows"], h["cols"], h["formats"], h["quant_units"], h["dim_bits"], h["k_max"]) == (2, 2, 1, 0, 7, 64)
    assert h["clk_hz"] == 12_000_000 and h["baud"] == b.baud
    Fragment.get(acc, None)
    sim = BoardConfig.for_board("icebreaker").accelerator()
    assert sim.hello == {**h, "baud": 0}
    assert not sim.uart


def test_board_config_for_unknown_board_is_refused():
    from sim.board import BoardConfig
    with pytest.raises(ValueError, match="unknown board 'nope'"):
        BoardConfig.for_board("nope")


def test_simulated_board_uses_the_decoder_fsm_the_bitstream_has():
    """The ULX3S build recodes the decoder's FSM one-hot (its PLL holds the reset until lock), so its
    simulated board simulates that netlist; boards without a PLL keep Amaranth's binary FSM."""
    from sim.board import BoardConfig, main
    assert BoardConfig.for_board("ulx3s").decoder_fsm == "one-hot"
    assert BoardConfig.for_board("icebreaker").decoder_fsm == "binary"
    assert BoardConfig.for_board("arty").decoder_fsm == "binary"
    with pytest.raises(ValueError, match="decoder_fsm must be one of"):
        BoardConfig(decoder_fsm="gray")
    with pytest.raises(SystemExit):
        main(["--simulator", "amaranth", "--decoder-fsm", "one-hot"])
