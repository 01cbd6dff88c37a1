"""The ECP5 PLL of a board's clock (hw.clocking): divider search within the device's ranges, and
clear errors for what no setting can make."""

import pytest

from hw.clocking import VCO_MHZ, Ecp5Pll, ecp5_pll_params


@pytest.mark.parametrize("f_in,f_out", [(25.0, 100.0), (25.0, 50.0), (12.0, 96.0), (100.0, 125.0),
                                        (25.0, 125.0)])
def test_pll_params_make_the_frequency_within_the_device_ranges(f_in, f_out):
    p = ecp5_pll_params(f_in, f_out)
    assert p.f_in_mhz / p.clki_div * p.clkfb_div == pytest.approx(f_out)
    assert p.f_out_mhz == pytest.approx(f_out)
    assert p.f_out_mhz * p.clkop_div == pytest.approx(p.f_vco_mhz)
    assert VCO_MHZ[0] <= p.f_vco_mhz <= VCO_MHZ[1]


def test_pll_params_prefer_the_fastest_vco():
    p = ecp5_pll_params(25.0, 100.0)
    assert (p.clki_div, p.clkfb_div, p.clkop_div, p.f_vco_mhz) == (1, 4, 8, 800.0)


def test_pll_refuses_what_it_cannot_make():
    with pytest.raises(ValueError, match="nearest is"):
        ecp5_pll_params(25.0, 100.003)
    with pytest.raises(ValueError, match="output must be"):
        ecp5_pll_params(25.0, 1000.0)
    with pytest.raises(ValueError, match="input must be"):
        ecp5_pll_params(1.0, 100.0)
    with pytest.raises(TypeError, match="Ecp5PllParams"):
        Ecp5Pll(None, (1, 4, 6))


def test_fastest_pll_clock_at_or_below_a_limit():
    from hw.clocking import ecp5_pll_fastest
    assert ecp5_pll_fastest(25.0, 100.0) == 100.0
    assert abs(ecp5_pll_fastest(25.0, 83.53) - 250 / 3) < 1e-9        # 25 / 3 * 10
    assert ecp5_pll_fastest(25.0, 80.4) == 80.0                       # 25 / 5 * 16
    assert ecp5_pll_fastest(25.0, 1.0) is None
