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
    assert plat.default_clk_frequency == pytest.approx(b.clock_mhz * 1e6)
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
    with pytest.raises(ValueError, match="family"):
        Board(**{**good.__dict__, "family": "xc9"})
    with pytest.raises(ValueError, match="limits lack"):
        Board(**{**good.__dict__, "limits": {"lut": 1}})
    with pytest.raises(ValueError, match="rows must be 1..64"):
        Board(**{**good.__dict__, "rows": 0})
