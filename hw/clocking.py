"""The design clock on a board: the oscillator as it is, or an ECP5 PLL (EHXPLLL) that multiplies it.

Board glue, used by :mod:`hw.build` only: the accelerator itself runs in the ``sync`` domain and
never knows where its clock comes from.

The divider search follows the rules of Lattice TN1263 (ECP5 sysCLOCK PLL) as prjtrellis' ``ecppll``
applies them: the phase detector runs at ``f_in / CLKI_DIV`` in 3.125..400 MHz, the VCO at 400..800
MHz, and with CLKOP as the feedback path ``f_out = f_in / CLKI_DIV * CLKFB_DIV`` and ``f_vco = f_out *
CLKOP_DIV``. nextpnr-ecp5 derives the CLKOP frequency constraint from the input pin's constraint and
these dividers, so the design is placed and routed against the PLL's output frequency.

>>> p = ecp5_pll_params(25.0, 100.0)
>>> (p.clki_div, p.clkfb_div, p.clkop_div, p.f_out_mhz, p.f_vco_mhz)
(1, 4, 8, 100.0, 800.0)
"""

from __future__ import annotations

import dataclasses

from amaranth.hdl import ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer

__all__ = ["Ecp5PllParams", "ecp5_pll_params", "ecp5_pll_fastest", "Ecp5Pll"]

PFD_MHZ = (3.125, 400.0)
VCO_MHZ = (400.0, 800.0)
OUT_MHZ = (3.125, 400.0)


@dataclasses.dataclass(frozen=True)
class Ecp5PllParams:
    """Dividers of one EHXPLLL with CLKOP fed back, and the frequencies they give."""

    clki_div: int
    clkfb_div: int
    clkop_div: int
    f_in_mhz: float
    f_out_mhz: float
    f_vco_mhz: float


def _pll_settings(f_in_mhz: float):
    """Every EHXPLLL divider setting within the device's ranges: ``(clki, clkfb, clkop, f_out, f_vco)``."""
    if not 8.0 <= f_in_mhz <= 400.0:
        raise ValueError(f"ECP5 PLL input must be 8..400 MHz, got {f_in_mhz}")
    for clki_div in range(1, 129):
        f_pfd = f_in_mhz / clki_div
        if not PFD_MHZ[0] <= f_pfd <= PFD_MHZ[1]:
            continue
        for clkfb_div in range(1, 81):
            f_out = f_pfd * clkfb_div
            if not OUT_MHZ[0] <= f_out <= OUT_MHZ[1]:
                continue
            for clkop_div in range(1, 129):
                f_vco = f_out * clkop_div
                if VCO_MHZ[0] <= f_vco <= VCO_MHZ[1]:
                    yield clki_div, clkfb_div, clkop_div, f_out, f_vco


def ecp5_pll_params(f_in_mhz: float, f_out_mhz: float, *, tolerance: float = 1e-3) -> Ecp5PllParams:
    """The EHXPLLL dividers that make ``f_out_mhz`` from ``f_in_mhz`` (within ``tolerance`` MHz, so
    a frequency written to 4 decimals, such as 83.3333, names 250/3 MHz), preferring the highest VCO
    frequency (lowest jitter); a ValueError naming the nearest reachable frequency when none does."""
    if not OUT_MHZ[0] <= f_out_mhz <= OUT_MHZ[1]:
        raise ValueError(f"ECP5 PLL output must be {OUT_MHZ[0]}..{OUT_MHZ[1]} MHz, got {f_out_mhz}")
    best, nearest = None, None
    for clki_div, clkfb_div, clkop_div, f_out, f_vco in _pll_settings(f_in_mhz):
        err = abs(f_out - f_out_mhz)
        if nearest is None or err < abs(nearest - f_out_mhz):
            nearest = f_out
        if err <= tolerance and (best is None or f_vco > best.f_vco_mhz):
            best = Ecp5PllParams(clki_div, clkfb_div, clkop_div, f_in_mhz, f_out, f_vco)
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_out_mhz} MHz from {f_in_mhz} MHz; "
                         f"the nearest is {nearest:.4f} MHz")
    return best


def ecp5_pll_fastest(f_in_mhz: float, f_limit_mhz: float) -> float | None:
    """The highest PLL output frequency from ``f_in_mhz`` that is at most ``f_limit_mhz`` (``None``
    if there is none): the clock to rebuild with when a design's fmax falls short of its clock."""
    return max((f for *_, f, _ in _pll_settings(f_in_mhz) if f <= f_limit_mhz), default=None)


class Ecp5Pll(Elaboratable):
    """Drives the clock and reset of ``domain`` from an EHXPLLL, held in reset until the PLL locks.

    The domain itself is defined by the caller (the board top), which owns it.

    Parameters
    ----------
    clk_in : Signal
        The oscillator, straight from its input buffer.
    params : Ecp5PllParams
        From :func:`ecp5_pll_params`.
    domain : str
        The clock domain driven (``"sync"``).

    Attributes
    ----------
    locked : Signal, out
        The PLL's LOCK output; ``sync`` leaves reset two cycles after it rises.
    """

    def __init__(self, clk_in, params: Ecp5PllParams, *, domain: str = "sync"):
        if not isinstance(params, Ecp5PllParams):
            raise TypeError(f"params must be an Ecp5PllParams, got {type(params).__name__}")
        self.clk_in = clk_in
        self.params = params
        self.domain = domain
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        p = self.params
        clk = ClockSignal(self.domain)
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{p.f_in_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{p.f_out_mhz:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=p.clki_div, p_CLKFB_DIV=p.clkfb_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
            # zero phase shift: the coarse phase counter equals the divider minus one
            p_CLKOP_CPHASE=p.clkop_div - 1, p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP",
            i_RST=0, i_STDBY=0, i_CLKI=self.clk_in, i_CLKFB=clk,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=self.locked,
        )
        # the design leaves reset synchronously to its own clock, after lock
        m.submodules.reset_sync = ResetSynchronizer(~self.locked, domain=self.domain)
        return m
