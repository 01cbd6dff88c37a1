"""Digilent Arty A7-35T: XC7A35T, 100 MHz oscillator, FTDI FT2232H UART (channel B) on A9/D10.

The priority board. There is no open xc7 place and route (TOOLCHAIN.md §4.5): without Vivado,
``hw.build`` writes the Vivado project and reports yosys ``synth_xilinx`` resources only.
"""

from . import Board


def _platform(toolchain=None):
    from amaranth_boards.arty_a7 import ArtyA7_35Platform
    return ArtyA7_35Platform() if toolchain is None else ArtyA7_35Platform(toolchain=toolchain)


BOARD = Board(
    name="arty",
    description="Digilent Arty A7-35T (xc7a35t, 100 MHz, FTDI UART)",
    platform=_platform,
    family="xc7",
    device="xc7a35ticsg324-1L",
    # 20,800 LUT6, 41,600 FF, 90 DSP48E1, 50 RAMB36 (100 RAMB18).
    limits={"lut": 20800, "ff": 41600, "dsp": 90, "bram": 50},
    # INT4-only cells (~34 LUT per PE in an array): 256 MACs per cycle. See docs/BOARDS.md for why
    # the unified int4+log4+shift cell (~63 LUT per PE) does not fit at this size.
    rows=16, cols=16,
    accel={"formats": ("int4",), "k_max": 1024, "a_depth": 4096, "b_depth": 4096, "c_depth": 1024},
    clock_mhz=100.0,
    baud=2_000_000,       # FT2232H: 12 MHz / n; 2 Mbaud divides 100 MHz exactly (50 clocks per bit)
    uart="uart",
)
